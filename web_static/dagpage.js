// Nagare dashboard, the DAG page's history tabs: the Grid (the last runs x tasks, an ARIA grid),
// the Calendar (a year of days, each with the day's outcome) and Versions (every stored version
// of the DAG, the runs that followed each, a side-by-side diff). Mounted by app.js's DagDetail.
// Everything user-controlled is rendered as text (never innerHTML), the diff included.
import {
  ErrorLine,
  Link,
  api,
  can,
  enc,
  fmtTime,
  html,
  navigate,
  runHref,
  useEffect,
  useLocation,
  useMemo,
  usePoll,
  useRef,
  useState,
} from "./common.js";

// ------------------------------------------------------------------ states: colour AND glyph

// status -> [glyph, label]; the glyph keeps a state readable without its colour
export const STATE_GLYPHS = {
  success: ["✓", "success"],
  failed: ["✕", "failed"],
  allowed: ["!", "failed · allowed"],
  running: ["▶", "running"],
  queued: ["…", "queued"],
  pending: ["·", "pending"],
  waiting: ["‖", "waiting"],
  up_for_retry: ["↻", "retrying"],
  upstream_failed: ["↑", "upstream failed"],
  cancelled: ["⊘", "cancelled"],
  skipped: ["»", "skipped"],
};
const glyph = (s) => (STATE_GLYPHS[s] || ["?", s])[0];
const label = (s) => (STATE_GLYPHS[s] || ["?", s || "—"])[1];
const cls = (s) => `st-cell s-${s || "none"}`;

export function StateLegend({ states = Object.keys(STATE_GLYPHS) }) {
  return html`<ul class="state-legend" aria-label="Legend">${states.map((s) => html`<li key=${s}>
    <span class=${cls(s)} aria-hidden="true">${glyph(s)}</span> ${label(s)}</li>`)}</ul>`;
}

// "97/100 ok" (and what the others are) for a map task's children in one run
export function mapSummary(counts) {
  if (!counts) return "";
  const total = Object.values(counts).reduce((a, n) => a + n, 0);
  const ok = counts.success || 0;
  const rest = Object.entries(counts).filter(([s]) => s !== "success").sort((a, b) => b[1] - a[1])
    .map(([s, n]) => `${n} ${label(s)}`);
  return `${ok}/${total} ok${rest.length ? `, ${rest.join(", ")}` : ""}`;
}

// ------------------------------------------------------------------ Grid

const GRID_SIZES = [25, 50, 100];
const shortRun = (run) => fmtTime(run.execution_date);

// The view of the API's matrix: rows of {task, cells: [{code status, map counts}]}
function gridModel(data) {
  const rows = data.tasks.map((t, i) => ({
    task: t.task_id,
    map: t.map,
    codes: data.matrix[i],
    counts: data.maps[t.task_id] || null,
  }));
  return { runs: data.runs, rows, codes: data.codes };
}

export function DagGrid({ dagId, size, onSize }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const last = useRef("");
  usePoll(async () => {
    try {
      const next = await api(`/api/dags/${enc(dagId)}/grid?limit=${size}`);
      const key = JSON.stringify(next);
      if (key !== last.current) { last.current = key; setData(next); } // unchanged: no re-render
      setError(null);
    } catch (e) { setError(e); }
  }, 10000, [dagId, size]);
  const model = useMemo(() => (data ? gridModel(data) : null), [data]);
  return html`<div data-grid-tab>
    <div class="row grid-tools">
      <label class="small">Runs <select value=${size} onChange=${(e) => onSize(Number(e.target.value))} data-grid-size>
        ${GRID_SIZES.map((n) => html`<option value=${n}>${n}</option>`)}</select></label>
      <span class="small muted">Newest run first · arrow keys move, Enter opens the task's log</span>
    </div>
    <${ErrorLine} error=${error} />
    ${!model ? html`<p class="muted">Loading…</p>`
      : !model.runs.length ? html`<p class="empty">No runs yet</p>`
      : html`<${GridTable} dagId=${dagId} model=${model} />`}
    <${StateLegend} />
  </div>`;
}

// The matrix as an ARIA grid: row 0 holds the runs (column headers), column 0 the tasks (row
// headers). One cell is tabbable (roving tabindex); moving it is done on the DOM directly, so a
// keypress never re-renders the 20,000 cells of a 100 x 200 grid.
function GridTable({ dagId, model }) {
  const table = useRef(null);
  const pos = useRef([1, 1]);
  const { runs, rows, codes } = model;
  const nRows = rows.length + 1, nCols = runs.length + 1;
  if (pos.current[0] >= nRows || pos.current[1] >= nCols) pos.current = [Math.min(1, nRows - 1), Math.min(1, nCols - 1)];
  const tab = (r, c) => (r === pos.current[0] && c === pos.current[1] ? 0 : -1);
  const cellAt = (r, c) => table.current?.rows[r]?.cells[c];
  const moveTo = (r, c, focus = true) => {
    r = Math.max(0, Math.min(nRows - 1, r)); c = Math.max(0, Math.min(nCols - 1, c));
    const old = cellAt(...pos.current), next = cellAt(r, c);
    if (!next) return;
    if (old) old.tabIndex = -1;
    next.tabIndex = 0;
    pos.current = [r, c];
    if (focus) { next.focus(); next.scrollIntoView({ block: "nearest", inline: "nearest" }); }
  };
  const open = (r, c) => {
    if (c === 0) return;
    const run = runs[c - 1];
    if (r === 0) { navigate(runHref(run.run_id)); return; }
    const row = rows[r - 1];
    if (row.codes[c - 1] !== ".") navigate(runHref(run.run_id, row.task));
  };
  const where = (e) => {
    const cell = e.target.closest?.("[data-r]");
    return cell ? [Number(cell.dataset.r), Number(cell.dataset.c)] : null;
  };
  const onKeyDown = (e) => {
    const [r, c] = pos.current;
    const page = 10;
    const to = {
      ArrowUp: [r - 1, c], ArrowDown: [r + 1, c], ArrowLeft: [r, c - 1], ArrowRight: [r, c + 1],
      PageUp: [r - page, c], PageDown: [r + page, c],
      Home: e.ctrlKey ? [0, 0] : [r, 0], End: e.ctrlKey ? [nRows - 1, nCols - 1] : [r, nCols - 1],
    }[e.key];
    if (to) { e.preventDefault(); moveTo(...to); return; }
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(r, c); }
  };
  const onFocusIn = (e) => { const at = where(e); if (at && (at[0] !== pos.current[0] || at[1] !== pos.current[1])) moveTo(...at, false); };
  const onClick = (e) => { const at = where(e); if (at) open(...at); };
  // the tooltip of a cell is made when the pointer reaches it (not 20,000 of them up front)
  const onOver = (e) => {
    const cell = e.target.closest?.("td[data-r]");
    if (!cell || cell.title) return;
    const r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    cell.title = `${rows[r - 1].task} · ${runs[c - 1].run_id}: ${cell.getAttribute("aria-label")}`;
  };
  const body = useMemo(() => rows.map((row, i) => {
    const r = i + 1;
    const newest = row.counts?.[0];
    return html`<tr key=${row.task} data-task-row=${row.task}>
      <th scope="row" data-r=${r} data-c="0" tabindex=${tab(r, 0)} class="grid-task">
        <span class="mono">${row.task}</span>${row.map && html` <span class="small muted" data-map-summary>⇉ ${newest ? mapSummary(newest) : "map"}</span>`}</th>
      ${runs.map((run, j) => {
        const code = row.codes[j];
        const status = codes[code] || null;
        const counts = row.counts?.[j];
        const text = status ? (counts ? `${label(status)}; children ${mapSummary(counts)}` : label(status)) : "did not exist in this run";
        return html`<td key=${run.run_id} data-r=${r} data-c=${j + 1} tabindex=${tab(r, j + 1)}
          class=${cls(status)} data-state=${status || ""} aria-label=${text}>${status ? glyph(status) : ""}</td>`;
      })}
    </tr>`;
  }), [model]);
  return html`<div class="grid-scroll">
    <table ref=${table} role="grid" class="dag-grid" aria-label=${`Task states of the last ${runs.length} runs of ${dagId}, newest first`}
      aria-rowcount=${nRows} aria-colcount=${nCols} data-grid
      onKeyDown=${onKeyDown} onFocusIn=${onFocusIn} onClick=${onClick} onMouseOver=${onOver}>
      <thead><tr>
        <th scope="col" data-r="0" data-c="0" tabindex=${tab(0, 0)} class="grid-corner">Task</th>
        ${runs.map((run, j) => html`<th key=${run.run_id} scope="col" data-r="0" data-c=${j + 1} tabindex=${tab(0, j + 1)}
          class=${"grid-run " + cls(run.status)} data-run=${run.run_id}
          aria-label=${`${run.run_id}: ${label(run.status)}, ${shortRun(run)}, version ${run.dag_version.slice(0, 8)}`}
          title=${`${run.run_id}\n${label(run.status)} · ${shortRun(run)} · version ${run.dag_version.slice(0, 8)}`}>${glyph(run.status)}</th>`)}
      </tr></thead>
      <tbody>${body}</tbody>
    </table></div>`;
}

// ------------------------------------------------------------------ Calendar

const DAY = 86_400_000;
const WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const isoDay = (d) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;

// A day's outcome from its runs by status: any failure shows, then activity, then success.
export function dayOutcome(counts) {
  if (!counts) return null;
  if (counts.failed) return "failed";
  if (counts.running || counts.queued) return "running";
  if (counts.success) return "success";
  if (counts.cancelled) return "cancelled";
  return "skipped";
}

// weeks (Monday first) of the `days` days ending today, in local time: [[Date|null x 7]]
function calendarWeeks(days, today = new Date()) {
  const end = new Date(today.getFullYear(), today.getMonth(), today.getDate());
  const start = new Date(end.getFullYear(), end.getMonth(), end.getDate() - days + 1);
  const first = new Date(start.getFullYear(), start.getMonth(), start.getDate() - ((start.getDay() + 6) % 7));
  const weeks = [];
  for (let d = first; d <= end; d = new Date(d.getFullYear(), d.getMonth(), d.getDate() + 1)) {
    const wd = (d.getDay() + 6) % 7;
    if (wd === 0) weeks.push(Array(7).fill(null));
    if (d >= start) weeks[weeks.length - 1][wd] = d;
  }
  return weeks;
}

export function DagCalendar({ dagId }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [picked, setPicked] = useState(null);
  usePoll(async () => {
    const offset = -new Date().getTimezoneOffset();
    try { setData(await api(`/api/dags/${enc(dagId)}/calendar?days=365&utc_offset_minutes=${offset}`)); setError(null); } catch (e) { setError(e); }
  }, 30000, [dagId]);
  const weeks = useMemo(() => calendarWeeks(365), [data]);
  const scroller = useRef(null);
  // the newest days are on the right: a narrow screen starts scrolled to them
  useEffect(() => { if (scroller.current) scroller.current.scrollLeft = scroller.current.scrollWidth; }, [!data]);
  if (error) return html`<${ErrorLine} error=${error} />`;
  if (!data) return html`<p class="muted">Loading…</p>`;
  const byDay = Object.fromEntries(data.days.map((d) => [d.date, d.counts]));
  const totals = {};
  let failing = 0;
  for (const d of data.days) {
    for (const [s, n] of Object.entries(d.counts)) totals[s] = (totals[s] || 0) + n;
    if (d.counts.failed) failing += 1;
  }
  const runs = Object.values(totals).reduce((a, n) => a + n, 0);
  const describe = (date) => {
    const counts = byDay[date];
    if (!counts) return `${date}: no runs`;
    return `${date}: ${Object.entries(counts).map(([s, n]) => `${n} ${label(s)}`).join(", ")}`;
  };
  const months = weeks.map((w, i) => {
    const d = w.find((x) => x && x.getDate() <= 7 && x.getDay() === 1) || (i === 0 ? w.find(Boolean) : null);
    return d ? d.toLocaleString(undefined, { month: "short" }) : "";
  });
  return html`<div data-calendar-tab>
    <p class="small" data-calendar-summary>${runs
      ? `${runs} run${runs === 1 ? "" : "s"} on ${data.days.length} day${data.days.length === 1 ? "" : "s"} in the last year: ${Object.entries(totals).map(([s, n]) => `${n} ${label(s)}`).join(", ")}${failing ? ` · ${failing} day${failing === 1 ? "" : "s"} with a failure` : ""}`
      : "No runs in the last year"}</p>
    <div class="cal-scroll" ref=${scroller} tabindex="0" role="region" aria-label="Calendar (scrolls sideways)"><table class="dag-calendar" data-calendar>
      <caption class="visually-hidden">Runs of ${dagId} per day over the last year (weeks as columns)</caption>
      <thead><tr><td></td>${months.map((m, i) => (m ? html`<th key=${i} scope="col" class="cal-month">${m}</th>` : html`<td key=${i}></td>`))}</tr></thead>
      <tbody>${WEEKDAYS.map((wd, r) => html`<tr key=${wd}>
        <th scope="row" class="cal-wd">${r % 2 === 0 ? wd : html`<span class="visually-hidden">${wd}</span>`}</th>
        ${weeks.map((w, i) => {
          const d = w[r];
          if (!d) return html`<td key=${i} class="cal-off"></td>`;
          const date = isoDay(d);
          const outcome = dayOutcome(byDay[date]);
          return html`<td key=${i} class=${"cal-day " + cls(outcome) + (picked === date ? " picked" : "")} data-date=${date}
            data-outcome=${outcome || ""} title=${describe(date)} onClick=${() => setPicked(picked === date ? null : date)}>
            <span aria-hidden="true">${outcome ? glyph(outcome) : ""}</span><span class="visually-hidden">${describe(date)}</span></td>`;
        })}</tr>`)}</tbody>
    </table></div>
    <p class="small" aria-live="polite" data-calendar-day>${picked ? describe(picked) : "Tap or point at a day for its runs by status."}</p>
    <${StateLegend} states=${["success", "failed", "running", "cancelled", "skipped"]} />
  </div>`;
}

// ------------------------------------------------------------------ Versions and their diff

// Line diff by the longest common subsequence (common head and tail trimmed first). Returns
// [{op: "same" | "del" | "add", text, a, b}] with 1-based line numbers (a: left, b: right).
export function lineDiff(left, right, maxCells = 4_000_000) {
  const A = left.split("\n"), B = right.split("\n");
  let head = 0;
  while (head < A.length && head < B.length && A[head] === B[head]) head++;
  let tail = 0;
  while (tail < A.length - head && tail < B.length - head && A[A.length - 1 - tail] === B[B.length - 1 - tail]) tail++;
  const a = A.slice(head, A.length - tail), b = B.slice(head, B.length - tail);
  const out = [];
  for (let i = 0; i < head; i++) out.push({ op: "same", text: A[i], a: i + 1, b: i + 1 });
  const n = a.length, m = b.length;
  if (n * m > maxCells) { // too big to align: everything in between changed
    a.forEach((t, i) => out.push({ op: "del", text: t, a: head + i + 1 }));
    b.forEach((t, j) => out.push({ op: "add", text: t, b: head + j + 1 }));
  } else {
    const w = m + 1;
    const L = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
      L[i * w + j] = a[i] === b[j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && a[i] === b[j]) { out.push({ op: "same", text: a[i], a: head + i + 1, b: head + j + 1 }); i++; j++; }
      else if (i < n && (j >= m || L[(i + 1) * w + j] >= L[i * w + j + 1])) { out.push({ op: "del", text: a[i], a: head + i + 1 }); i++; }
      else { out.push({ op: "add", text: b[j], b: head + j + 1 }); j++; }
    }
  }
  for (let k = 0; k < tail; k++) out.push({ op: "same", text: A[A.length - tail + k], a: A.length - tail + k + 1, b: B.length - tail + k + 1 });
  return out;
}

// Side-by-side rows: a block of deletions next to the block of additions that follows it;
// long unchanged stretches fold to `context` lines around each change.
export function sideBySide(ops, context = 3) {
  const rows = [];
  for (let k = 0; k < ops.length;) {
    if (ops[k].op === "same") { rows.push({ kind: "same", l: ops[k], r: ops[k] }); k++; continue; }
    const dels = [], adds = [];
    while (k < ops.length && ops[k].op === "del") dels.push(ops[k++]);
    while (k < ops.length && ops[k].op === "add") adds.push(ops[k++]);
    for (let x = 0; x < Math.max(dels.length, adds.length); x++) rows.push({ kind: "change", l: dels[x] || null, r: adds[x] || null });
  }
  const near = rows.map(() => false);
  rows.forEach((row, i) => { if (row.kind === "change") for (let d = -context; d <= context; d++) if (rows[i + d]) near[i + d] = true; });
  const folded = [];
  for (let i = 0; i < rows.length;) {
    if (near[i]) { folded.push(rows[i++]); continue; }
    let j = i;
    while (j < rows.length && !near[j]) j++;
    folded.push({ kind: "fold", count: j - i });
    i = j;
  }
  return folded;
}

const short = (digest) => (digest || "").slice(0, 10);

export function DagVersions({ dagId, from, to, onPick }) {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  usePoll(async () => {
    try { setList(await api(`/api/dags/${enc(dagId)}/versions`)); setError(null); } catch (e) { setError(e); }
  }, 15000, [dagId]);
  if (error) return html`<${ErrorLine} error=${error} />`;
  if (!list) return html`<p class="muted">Loading…</p>`;
  const vs = list.versions;
  const right = vs.some((v) => v.digest === to) ? to : vs[0]?.digest;
  const left = vs.some((v) => v.digest === from) ? from : (vs.find((v) => v.digest !== right) || vs[0])?.digest;
  return html`<div data-versions-tab>
    <div class="tablewrap"><table class="versions" data-versions>
      <caption class="visually-hidden">Stored versions of ${dagId}, newest first</caption>
      <thead><tr><th scope="col">Version</th><th scope="col">First seen</th><th scope="col" class="num">Runs</th><th scope="col" class="hide-sm">Last run</th>${can("source") && html`<th scope="col">Compare</th>`}</tr></thead>
      <tbody>${vs.map((v) => html`<tr key=${v.digest} data-version=${v.digest}>
        <td><span class="mono" title=${v.digest}>${short(v.digest)}</span>${v.current && html` <span class="badge st-success">loaded now</span>`}</td>
        <td class="small">${v.stored ? fmtTime(v.first_seen) : "not run yet"}</td>
        <td class="num">${v.runs}</td>
        <td class="hide-sm small">${v.last_run_id ? html`<${Link} href=${runHref(v.last_run_id)} class="mono trunc">${v.last_run_id}</${Link}>` : "—"}</td>
        ${can("source") && html`<td class="row small">
          <label><input type="radio" name="diff-from" checked=${v.digest === left} onChange=${() => onPick(v.digest, right)} aria-label=${`Compare from version ${short(v.digest)}`} /> from</label>
          <label><input type="radio" name="diff-to" checked=${v.digest === right} onChange=${() => onPick(left, v.digest)} aria-label=${`Compare to version ${short(v.digest)}`} /> to</label>
        </td>`}</tr>`)}</tbody>
    </table></div>
    <p class="small muted">A version is stored when a run first follows it; each run keeps the version it ran (its run page draws that one). The text is the stored definition, without empty fields and source line numbers.</p>
    ${vs.length < 2 ? html`<p class="empty">Only one version so far: nothing to compare.</p>`
      : !can("source") ? html`<p class="small muted" data-no-source>Your role may not read DAG definitions, so versions cannot be compared here.</p>`
      : html`<${VersionDiff} dagId=${dagId} left=${left} right=${right} />`}
  </div>`;
}

function VersionDiff({ dagId, left, right }) {
  const [texts, setTexts] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let gone = false;
    setTexts(null);
    Promise.all([left, right].map((d) => api(`/api/dags/${enc(dagId)}/versions/${enc(d)}`)))
      .then(([a, b]) => { if (!gone) { setTexts([a.text, b.text]); setError(null); } })
      .catch((e) => { if (!gone) setError(e); });
    return () => { gone = true; };
  }, [dagId, left, right]);
  const rows = useMemo(() => (texts ? sideBySide(lineDiff(texts[0], texts[1])) : null), [texts]);
  if (error) return html`<${ErrorLine} error=${error} />`;
  if (!rows) return html`<p class="muted">Loading…</p>`;
  const changes = rows.filter((r) => r.kind === "change").length;
  const side = (op, kind) => (op
    ? [html`<td class="ln">${op.a ?? op.b}</td>`, html`<td class=${"code-cell " + (kind === "change" ? (op.op === "del" ? "del" : "add") : "")}>${op.op === "del" ? "− " : op.op === "add" ? "+ " : "  "}${op.text}</td>`]
    : [html`<td class="ln"></td>`, html`<td class="code-cell blank"></td>`]);
  return html`<section aria-label="Diff" data-diff>
    <h3 class="small">${short(left)} → ${short(right)} · ${changes ? `${changes} changed line${changes === 1 ? "" : "s"}` : "no differences"}</h3>
    <div class="tablewrap" tabindex="0" role="region" aria-label="Side-by-side diff"><table class="diff">
      <caption class="visually-hidden">Definition of version ${short(left)} (left) and ${short(right)} (right); removed lines start with −, added lines with +</caption>
      <thead><tr><th scope="col" class="ln"><span class="visually-hidden">Line</span>#</th><th scope="col">${short(left)}</th><th scope="col" class="ln"><span class="visually-hidden">Line</span>#</th><th scope="col">${short(right)}</th></tr></thead>
      <tbody>${rows.map((row, i) => (row.kind === "fold"
        ? html`<tr key=${i} class="fold"><td colspan="4">… ${row.count} unchanged line${row.count === 1 ? "" : "s"} …</td></tr>`
        : html`<tr key=${i} data-change=${row.kind === "change" ? "" : undefined}>${side(row.l && (row.kind === "same" ? { ...row.l, b: undefined } : row.l), row.kind)}${side(row.r && (row.kind === "same" ? { ...row.r, a: undefined } : row.r), row.kind)}</tr>`))}</tbody>
    </table></div></section>`;
}

// ------------------------------------------------------------------ the tabs' state in the URL

// ?id=D&tab=grid&runs=50&from=..&to=.. : read, and a setter that keeps the other keys
export function useDagPageQuery() {
  const loc = useLocation();
  const q = new URLSearchParams(loc.split("?")[1] || "");
  const set = (changes, replace = false) => {
    const next = new URLSearchParams(q);
    for (const [k, v] of Object.entries(changes)) { if (v == null || v === "") next.delete(k); else next.set(k, String(v)); }
    navigate(`${location.pathname}?${next}`, replace);
  };
  return [q, set];
}
