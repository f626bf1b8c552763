// Nagare dashboard, the run page's parts (issue 18): a confirmation dialog for destructive actions
// (ConfirmDialog, reusable), the Kill button that asks first (KillButton), the timeline of every
// attempt with wall-clock ticks and a broken axis after a late retry (Timeline), the Task details
// panel (TaskDetails), and the label of a map child's item (itemLabel).
// Everything user-controlled is rendered as text nodes (never innerHTML).
import { api, enc, fmtDur, fmtTime, html, parseT, taskPath, useEffect, useMemo, useRef, useState } from "./common.js";

// ------------------------------------------------------------------ confirmation

// A modal question before a destructive action. Cancel has the focus (Enter or Escape do not
// destroy anything); the action runs on the confirm button only, then the dialog closes.
export function ConfirmDialog({ title, message, confirmLabel, danger = true, onConfirm, onClose }) {
  const ref = useRef(null);
  const cancel = useRef(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { ref.current?.showModal(); cancel.current?.focus(); }, []);
  const confirm = async () => {
    setBusy(true);
    try { await onConfirm(); } finally { setBusy(false); ref.current?.close(); }
  };
  return html`<dialog ref=${ref} class="confirm-dialog" onClose=${onClose} aria-labelledby="confirm-title" aria-describedby="confirm-message" data-confirm>
    <h2 id="confirm-title">${title}</h2>
    <p id="confirm-message">${message}</p>
    <div class="row"><span class="spacer"></span>
      <button type="button" ref=${cancel} onClick=${() => ref.current?.close()} data-confirm-cancel>Cancel</button>
      <button type="button" class=${danger ? "danger solid" : "primary"} disabled=${busy} onClick=${confirm} data-confirm-ok>${confirmLabel}</button>
    </div></dialog>`;
}

// "■ Kill…": opens a ConfirmDialog; `onKill` runs only after the user confirms.
export function KillButton({ what, name, message, onKill, action }) {
  const [asking, setAsking] = useState(false);
  const label = `Kill ${what}`;
  return html`<span class="kill">
    <button type="button" class="danger" onClick=${() => setAsking(true)} data-action=${action}
      aria-label=${`${label} ${name}…`} aria-haspopup="dialog" title=${`${label} ${name} (asks first)`}>■ ${label}…</button>
    ${asking && html`<${ConfirmDialog} title=${`${label} ${name}?`} message=${message} confirmLabel=${`■ ${label}`}
      onConfirm=${onKill} onClose=${() => setAsking(false)} />`}</span>`;
}

export const KILL_RUN_MESSAGE = "Its running tasks are stopped and the tasks that have not started are cancelled. The run ends cancelled; Retry can run them again later.";
export const KILL_TASK_MESSAGE = "Its process is stopped (a queued or waiting task is cancelled), and the tasks that depend on it will not run. Unless another task failed, the run ends cancelled.";

// ------------------------------------------------------------------ map items

// A map child's item as a short line of text: strings as they are, anything else as JSON.
export function itemText(item) {
  return typeof item === "string" ? item : JSON.stringify(item);
}
export function itemLabel(item, max = 40) {
  const text = itemText(item).replace(/\s+/g, " ");
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

// ------------------------------------------------------------------ timeline

const statusVar = (s) => `var(--${s === "up_for_retry" ? "retry" : s === "upstream_failed" ? "upstream" : s || "pending"})`;
const STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400].map((s) => s * 1000);
const BREAK = 5; // % of the width a break in the axis takes
const clock = (ms, withDate) => new Date(ms).toLocaleString(undefined, withDate
  ? { month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" }
  : { hour: "2-digit", minute: "2-digit", second: "2-digit" });

// Intervals [start, end] -> groups of busy time separated by long idle gaps (a late manual retry):
// a gap longer than 30 s and than half the group before it breaks the axis.
export function axisGroups(intervals) {
  const xs = intervals.filter((i) => i.s != null).sort((a, b) => a.s - b.s);
  const groups = [];
  for (const { s, e } of xs) {
    const g = groups[groups.length - 1];
    if (g && s - g.b <= Math.max(30000, (g.b - g.a) * 0.5)) g.b = Math.max(g.b, e);
    else groups.push({ a: s, b: Math.max(e, s) });
  }
  // each group gets width by its duration, but at least a fifth of the rest
  const avail = 100 - BREAK * Math.max(0, groups.length - 1);
  const total = groups.reduce((n, g) => n + Math.max(g.b - g.a, 1), 0);
  const weights = groups.map((g) => Math.max(g.b - g.a, 1, total * 0.2));
  const sum = weights.reduce((n, w) => n + w, 0);
  let x = 0;
  groups.forEach((g, i) => { g.x = x; g.w = (avail * weights[i]) / sum; x += g.w + BREAK; });
  return groups;
}

function position(groups, t) {
  const g = groups.find((gr) => t <= gr.b) || groups[groups.length - 1];
  const at = Math.min(Math.max(t, g.a), g.b);
  return g.x + (g.b > g.a ? ((at - g.a) / (g.b - g.a)) * g.w : 0);
}

function ticks(g, withDate) {
  const n = Math.max(1, Math.floor(g.w / 16));
  const span = Math.max(g.b - g.a, 1);
  const step = STEPS.find((s) => span / s <= n) || STEPS[STEPS.length - 1];
  const out = [];
  for (let t = Math.ceil(g.a / step) * step; t <= g.b; t += step) out.push(t);
  if (!out.length) out.push(g.a);
  return out.map((t) => ({ t, x: g.x + ((t - g.a) / span) * g.w, label: clock(t, withDate) }));
}

// The segments of one task row: its queued time (latest attempt) and every attempt.
function segments(task, kids, attempts, now) {
  if (kids && kids.length) {
    const starts = kids.map((k) => parseT(k.started_at)).filter(Boolean);
    if (!starts.length) return [];
    const ends = kids.map((k) => parseT(k.completed_at) || (k.status === "running" ? now : parseT(k.started_at))).filter(Boolean);
    return [{ kind: "attempt", status: task.status, s: Math.min(...starts), e: Math.max(...ends), label: `${kids.length} map children` }];
  }
  const out = [];
  const tries = attempts && attempts.length ? attempts : task.started_at ? [{ attempt: task.attempt, status: task.status, started_at: task.started_at, completed_at: task.completed_at, worker: task.worker }] : [];
  const latest = tries[tries.length - 1];
  const queued = parseT(task.queued_at);
  const start = latest && latest.attempt === task.attempt ? parseT(latest.started_at) : null;
  if (queued && task.status === "queued") out.push({ kind: "queued", status: "queued", s: queued, e: now, label: task.reason || "queued" });
  else if (queued && start && start > queued) out.push({ kind: "queued", status: "queued", s: queued, e: start, label: `queued ${fmtDur(start - queued)}` });
  for (const a of tries) {
    const s = parseT(a.started_at);
    if (!s) continue;
    const live = a.status === "running" || a.status === "waiting";
    const e = parseT(a.completed_at) || (live ? now : s);
    out.push({ kind: "attempt", status: a.attempt === task.attempt ? task.status : a.status, s, e, attempt: a.attempt, worker: a.worker, exit: a.exit_code, label: a.message || "" });
  }
  return out;
}

function describe(taskId, seg) {
  const what = seg.kind === "queued" ? "queued" : seg.attempt ? `attempt ${seg.attempt} · ${seg.status.replaceAll("_", " ")}` : seg.status.replaceAll("_", " ");
  const parts = [`${taskId}: ${what}`, `${clock(seg.s)} → ${clock(seg.e)}`, fmtDur(seg.e - seg.s)];
  if (seg.worker && seg.worker !== "local") parts.push(`worker ${seg.worker}`);
  if (seg.exit != null) parts.push(`exit ${seg.exit}`);
  if (seg.label) parts.push(seg.label);
  return parts.join(" · ");
}

// Every task's queued time and attempts on wall-clock time; idle gaps (a retry hours later) are
// cut out of the axis and marked. Attempts come from GET /api/runs/{id}/attempts (one request).
export function Timeline({ run, tasks, children, now }) {
  const [attempts, setAttempts] = useState(null);
  const [hover, setHover] = useState(null);
  const changes = tasks.map((t) => `${t.task_id}:${t.attempt}:${t.status}`).join(",");
  useEffect(() => {
    let dead = false;
    api(`/api/runs/${enc(run.run_id)}/attempts`).then((xs) => { if (!dead) setAttempts(xs); }).catch(() => {});
    return () => { dead = true; };
  }, [run.run_id, changes]);
  const byTask = useMemo(() => {
    const m = {};
    for (const a of attempts || []) (m[a.task_id] = m[a.task_id] || []).push(a);
    return m;
  }, [attempts]);
  const rows = tasks.map((t) => ({ t, segs: segments(t, children[t.task_id], byTask[t.task_id], now) }));
  const all = rows.flatMap((r) => r.segs);
  if (!all.length) return html`<p class="empty" data-timeline-empty>No task has started yet.</p>`;
  const groups = axisGroups(all);
  const withDate = new Date(groups[0].a).toDateString() !== new Date(groups[groups.length - 1].b).toDateString();
  const marks = groups.flatMap((g) => ticks(g, withDate));
  const breaks = groups.slice(1).map((g, i) => ({ x: groups[i].x + groups[i].w, later: g.a - groups[i].b }));
  return html`<div class="tl" role="group" aria-label="Task timeline" data-timeline data-axis-breaks=${breaks.length}>
    ${rows.map(({ t, segs }) => html`<div class="tl-name mono trunc" title=${t.task_id}>${t.task_id}</div>
      <div class="tl-track" data-tl-task=${t.task_id}>
        ${breaks.map((b) => html`<span class="tl-break" style=${`left:${b.x}%;width:${BREAK}%`}></span>`)}
        ${segs.map((seg, i) => {
          const text = describe(t.task_id, seg);
          const left = position(groups, seg.s);
          const width = Math.max(0.6, position(groups, seg.e) - left);
          return html`<span key=${i} class=${`tl-seg tl-${seg.kind}`} role="img" aria-label=${text} title=${text}
            data-seg=${seg.kind} data-attempt=${seg.attempt} data-status=${seg.status}
            style=${`left:${left}%;width:${width}%;--c:${statusVar(seg.status)}`}
            onMouseEnter=${() => setHover(text)} onMouseLeave=${() => setHover(null)}></span>`;
        })}</div>`)}
    <div></div>
    <div class="tl-axis" aria-hidden="true">
      ${marks.map((m) => html`<span class=${`tl-tick${m.x < 8 ? " at-start" : m.x > 88 ? " at-end" : ""}`} style=${`left:${m.x}%`}>${m.label}</span>`)}
      ${breaks.map((b) => html`<span class="tl-gap" style=${`left:${b.x + BREAK / 2}%`} data-axis-break>+${fmtDur(b.later)}</span>`)}
    </div>
    <div></div>
    <p class="small muted tl-detail" data-tl-detail>${hover || html`<span class="tl-key tl-queued"></span> queued <span class="tl-key tl-attempt"></span> attempt · hover a bar for details${breaks.length ? " · the axis skips idle time where marked +time" : ""}`}</p>
  </div>`;
}

// ------------------------------------------------------------------ task details

const dagCache = new Map();
function useDag(dagId) {
  const [dag, setDag] = useState(null);
  useEffect(() => {
    if (!dagCache.has(dagId)) dagCache.set(dagId, api(`/api/dags/${enc(dagId)}`).catch(() => null));
    let dead = false;
    dagCache.get(dagId).then((d) => { if (!dead) setDag(d); });
    return () => { dead = true; };
  }, [dagId]);
  return dag;
}

const NAGARE_VARS = ["NAGARE_DAG_ID", "NAGARE_RUN_ID", "NAGARE_TASK_ID", "NAGARE_ATTEMPT", "NAGARE_TRIGGER", "NAGARE_EXECUTION_DATE", "NAGARE_SCHEDULED_TIME"];

// The environment variables Nagare gives the task, by name and where each comes from; values only
// for what is public (Nagare's own, the run's parameters), secrets always masked.
export function envNames(run, task, dag, tasks) {
  const def = (dag?.tasks || []).find((d) => d.task_id === task.base_task_id) || {};
  const rows = new Map();
  const put = (name, source, value, masked = false) => rows.set(name, { name, source, value, masked });
  const nagare = { NAGARE_DAG_ID: run.dag_id, NAGARE_RUN_ID: run.run_id, NAGARE_TASK_ID: task.task_id, NAGARE_ATTEMPT: String(task.attempt), NAGARE_TRIGGER: run.trigger, NAGARE_EXECUTION_DATE: run.execution_date };
  for (const n of NAGARE_VARS) put(n, "Nagare", nagare[n] ?? null);
  if (task.map_index != null) { put("NAGARE_MAP_INDEX", "Nagare", String(task.map_index)); put("NAGARE_MAP_ITEM", "Nagare", itemText(task.item)); }
  for (const n of dag?.env || []) put(n, "DAG env", null);
  const params = Object.keys(run.params || {}).length ? run.params : run.conf || {};
  for (const [n, v] of Object.entries(params)) put(n, "run parameter", typeof v === "string" ? v : JSON.stringify(v));
  for (const dep of def.depends_on || []) {
    const up = tasks?.find((t) => t.task_id === dep);
    for (const n of Object.keys(up?.outputs || {})) put(n, `output of ${dep}`, null);
  }
  for (const n of def.env || []) put(n, "task env", null);
  for (const n of [...(dag?.secrets || []), ...(def.secrets || [])]) put(n, "secret", null, true);
  return [...rows.values()];
}

function Time({ label, value }) {
  return html`<div><dt>${label}</dt><dd>${value ? fmtTime(value) : "—"}</dd></div>`;
}

// Pool, times, worker, every try, the rendered command and the environment's names.
export function TaskDetails({ run, task, tasks }) {
  const dag = useDag(run.dag_id);
  const [tries, setTries] = useState(null);
  useEffect(() => {
    if (!task.attempt) { setTries([]); return; }
    api(`${taskPath(run.run_id, task.task_id)}/attempts`).then(setTries).catch(() => setTries([]));
  }, [task.attempt, task.status]);
  const env = envNames(run, task, dag, tasks);
  return html`<section class="task-details" aria-label=${`Details of ${task.task_id}`} data-task-details=${task.task_id}>
    <h3>Task details</h3>
    <dl class="kv">
      <div><dt>Pool</dt><dd class="mono" data-detail-pool>${task.pool}</dd></div>
      <div><dt>Worker</dt><dd class="mono">${task.worker || "—"}</dd></div>
      <${Time} label="Queued" value=${task.queued_at} />
      <${Time} label="Started" value=${task.started_at} />
      <${Time} label="Completed" value=${task.completed_at} />
      <div><dt>Tries</dt><dd>${task.attempt} of ${task.max_attempts}</dd></div>
      ${task.map_index != null && html`<div class="wide"><dt>Item</dt><dd class="mono" data-detail-item>${itemText(task.item)}</dd></div>`}
      ${task.reason && html`<div class="wide"><dt>Why</dt><dd>${task.reason}</dd></div>`}
    </dl>
    ${tries && tries.length > 0 && html`<div class="tablewrap" tabindex="0" role="region" aria-label=${`Tries of ${task.task_id}`}><table class="tries" data-tries>
      <caption class="visually-hidden">Every try of ${task.task_id}</caption>
      <thead><tr><th scope="col">Try</th><th scope="col">Status</th><th scope="col">Started</th><th scope="col">Ended</th><th scope="col" class="num">Duration</th><th scope="col" class="hide-sm">Worker</th><th scope="col">Exit</th></tr></thead>
      <tbody>${tries.map((a) => html`<tr data-try=${a.attempt}>
        <td>${a.attempt}</td><td>${a.status.replaceAll("_", " ")}${a.timed_out ? " (timed out)" : ""}</td>
        <td class="small">${fmtTime(a.started_at)}</td><td class="small">${fmtTime(a.completed_at)}</td>
        <td class="num">${a.completed_at ? fmtDur(parseT(a.completed_at) - parseT(a.started_at)) : "—"}</td>
        <td class="mono small hide-sm">${a.worker}</td><td>${a.exit_code ?? "—"}</td></tr>`)}</tbody></table></div>`}
    <h4>Command</h4>
    <pre class="code" tabindex="0" aria-label="Rendered command" data-detail-command>${task.command || "(no command: a step of its own type)"}</pre>
    <h4>Environment <span class="small muted">(names; secret values are never shown)</span></h4>
    <div class="tablewrap" tabindex="0" role="region" aria-label=${`Environment of ${task.task_id}`}><table class="env" data-detail-env>
      <thead><tr><th scope="col">Name</th><th scope="col">From</th><th scope="col">Value</th></tr></thead>
      <tbody>${env.map((v) => html`<tr data-env=${v.name}><th scope="row" class="mono">${v.name}</th><td class="small">${v.source}</td>
        <td class="mono small">${v.masked ? html`<span class="masked" data-masked>•••••• masked</span>` : v.value == null ? html`<span class="muted">set at start</span>` : v.value}</td></tr>`)}</tbody>
    </table></div>
  </section>`;
}
