// Nagare dashboard: the task log viewer (LogView), fed live over SSE (LiveLog) or once (StaticLog).
// The whole log stays reachable with virtualised rendering: only the rows in (and near) the
// visible window are in the DOM, so a 100,000-line log stays responsive. Wrapped rows are sized
// from the monospace character width (a line of N characters takes ceil(N / columns) rows).
// ANSI SGR colours and styles (16, 256 and true colour fg/bg, bold, dim, italic, underline, reset)
// become spans with classes or inline styles; every other escape sequence and control character
// is stripped. Text stays text (never innerHTML). Lines are fetched with `?timestamps=true`: each
// carries when it was written (to the second) and its stream (stdout, stderr, nagare), `-` for
// logs written before Nagare recorded them.
import { api, enc, html, pushToast, storedKey, taskPath, useEffect, useRef, useState } from "./common.js";

const LH = 18; // px per visual row (app.css: .logv-row line-height)
const OVERSCAN = 30; // rows rendered above and below the visible ones
const PAD = 8; // px of vertical padding inside the scroller (app.css: .logv-inner)
const PREFS = "nagare_log_prefs";
const STAMPED = /^(-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (-|stdout|stderr|nagare) /;

// ------------------------------------------------------------------ lines

/** A log line from the API (`?timestamps=true`): {n, t, ts, s}; a line without the prefix
 * (an older server) is kept whole with no time and no stream. */
export function parseStamped(data, n) {
  const m = STAMPED.exec(data);
  if (!m) return { n, t: data, ts: null, s: null };
  return { n, t: data.slice(m[0].length), ts: m[1] === "-" ? null : m[1], s: m[2] === "-" ? null : m[2] };
}

const separator = (text) => ({ n: null, t: text, ts: null, s: "sep" });

// ------------------------------------------------------------------ ANSI SGR

const ESCAPES = /\x1b(?:\[([0-9;:?<=>]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])?/g;
const CONTROLS = /[\x00-\x08\x0b-\x1f\x7f]/g;
const PLAIN = Object.freeze({ fg: null, bg: null, b: false, d: false, i: false, u: false });

/** What a terminal would show of a line that rewrites itself with carriage returns. */
const overwritten = (t) => {
  const end = t.endsWith("\r") ? t.length - 1 : t.length;
  const cr = t.lastIndexOf("\r", end - 1);
  return cr < 0 ? t.slice(0, end) : t.slice(cr + 1, end);
};

function color256(n) {
  if (!(n >= 0 && n <= 255)) return null;
  if (n < 16) return n;
  if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
  const c = n - 16;
  const v = (x) => (x ? 55 + x * 40 : 0);
  return `rgb(${v(Math.floor(c / 36))},${v(Math.floor(c / 6) % 6)},${v(c % 6)})`;
}

const rgb = (r, g, b) => ([r, g, b].every((x) => x >= 0 && x <= 255) ? `rgb(${r},${g},${b})` : null);

/** The extended colour of `38;5;n`, `38;2;r;g;b` (or their colon forms) from codes[i]. */
function extended(codes, i) {
  const mode = codes[i + 1];
  if (mode === 5) return [color256(codes[i + 2]), i + 2];
  if (mode === 2) return [rgb(codes[i + 2], codes[i + 3], codes[i + 4]), i + 4];
  return [null, i + 1];
}

/** The state after one SGR sequence (its parameters as written). */
export function applySgr(state, params) {
  const s = { ...state };
  const codes = (params === "" ? "0" : params).split(";");
  for (let i = 0; i < codes.length; i++) {
    if (codes[i].includes(":")) { // the colon forms 38:2::r:g:b and 38:5:n
      const sub = codes[i].split(":").map((x) => (x === "" ? 0 : Number(x)));
      const colour = sub[1] === 2 ? rgb(...sub.slice(-3)) : sub[1] === 5 ? color256(sub[2]) : null;
      if (sub[0] === 38) s.fg = colour; else if (sub[0] === 48) s.bg = colour;
      continue;
    }
    const c = codes[i] === "" ? 0 : Number(codes[i]);
    if (c === 0) Object.assign(s, PLAIN);
    else if (c === 1) s.b = true;
    else if (c === 2) s.d = true;
    else if (c === 3) s.i = true;
    else if (c === 4) s.u = true;
    else if (c === 22) { s.b = false; s.d = false; }
    else if (c === 23) s.i = false;
    else if (c === 24) s.u = false;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c >= 90 && c <= 97) s.fg = c - 82;
    else if (c === 39) s.fg = null;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c >= 100 && c <= 107) s.bg = c - 92;
    else if (c === 49) s.bg = null;
    else if (c === 38 || c === 48) {
      const [colour, next] = extended(codes.map(Number), i);
      if (c === 38) s.fg = colour; else s.bg = colour;
      i = next;
    } // anything else (blink, inverse, fonts…) is ignored
  }
  return Object.freeze(s);
}

/** A line as [{text, st}] segments from a start state, and the state it leaves. */
export function parseAnsi(raw, start = PLAIN) {
  const t = overwritten(raw);
  if (!t.includes("\x1b")) return { segs: [{ text: t.replace(CONTROLS, ""), st: start }], end: start };
  const segs = [];
  let st = start;
  let last = 0;
  const push = (text) => { text = text.replace(CONTROLS, ""); if (text) segs.push({ text, st }); };
  for (const m of t.matchAll(ESCAPES)) {
    push(t.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[2] === "m" && m[1] !== undefined && !/[?<=>]/.test(m[1])) st = applySgr(st, m[1]);
  }
  push(t.slice(last));
  return { segs, end: st };
}

/** The line without escapes (what search, Copy and wrapping measure). */
const plainOf = (e) => (e.p ??= parseAnsi(e.t).segs.map((s) => s.text).join(""));

function segStyle(st) {
  const cls = [];
  const style = {};
  if (typeof st.fg === "number") cls.push(`af${st.fg}`); else if (st.fg) style.color = st.fg;
  if (typeof st.bg === "number") cls.push(`ab${st.bg}`, "abg"); else if (st.bg) { style.background = st.bg; cls.push("abg"); }
  if (st.b) cls.push("a-b");
  if (st.d) cls.push("a-d");
  if (st.i) cls.push("a-i");
  if (st.u) cls.push("a-u");
  return { cls: cls.join(" "), style };
}

// ------------------------------------------------------------------ copy

/** Copy text: the Clipboard API where the page may use it (HTTPS, localhost), else a hidden
 * textarea and execCommand("copy") (plain HTTP). Resolves to true when the text was copied. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try { await navigator.clipboard.writeText(text); return true; } catch { /* try the fallback */ }
  }
  const focused = document.activeElement;
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.setAttribute("aria-hidden", "true");
  area.style.cssText = "position:fixed;top:0;left:-10000px;opacity:0";
  document.body.append(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch { ok = false; }
  area.remove();
  focused?.focus?.();
  return ok;
}

// ------------------------------------------------------------------ the viewer

const loadPrefs = () => {
  try { return { wrap: false, ts: false, ln: true, ...JSON.parse(localStorage.getItem(PREFS) || "{}") }; } catch { return { wrap: false, ts: false, ln: true }; }
};

function timeOf(iso) {
  const d = new Date(iso);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
}

/** Derived data of an entries array, extended as lines arrive (never recomputed whole). */
class Layout {
  constructor(entries) {
    this.entries = entries;
    this.states = [PLAIN]; // ANSI state at the start of each line (colours may span lines)
    this.maxLen = 0;
    this.lenUpto = 0;
    this.offs = [0]; // wrapped: the first visual row of each line
    this.cols = 0;
    this.scanned = 0;
    this.stats = { count: 0, hasTs: false, hasErr: false, lastN: 0 };
  }

  /** Lines, whether any has a time or comes from stderr, the highest line number. */
  scan() {
    const st = this.stats;
    for (; this.scanned < this.entries.length; this.scanned++) {
      const e = this.entries[this.scanned];
      if (e.s !== "sep") st.count++;
      if (e.ts) st.hasTs = true;
      if (e.s === "stderr") st.hasErr = true;
      if (e.n > st.lastN) st.lastN = e.n;
    }
    return st;
  }

  stateAt(i) {
    const { entries, states } = this;
    for (let k = states.length - 1; k < i; k++) {
      const e = entries[k];
      states.push(e.s === "sep" ? PLAIN : e.t.includes("\x1b") ? parseAnsi(e.t, states[k]).end : states[k]);
    }
    return states[i];
  }

  widest() {
    for (; this.lenUpto < this.entries.length; this.lenUpto++) this.maxLen = Math.max(this.maxLen, plainOf(this.entries[this.lenUpto]).length);
    return this.maxLen;
  }

  /** Visual rows before line i (wrapped at `cols` characters; 1 row per line otherwise). */
  rowsBefore(i, cols) {
    if (!cols) return i;
    if (cols !== this.cols) { this.cols = cols; this.offs = [0]; }
    const { offs, entries } = this;
    for (let k = offs.length - 1; k < i; k++) {
      const len = plainOf(entries[k]).replace(/\t/g, "        ").length;
      offs.push(offs[k] + Math.max(1, Math.ceil(len / cols)));
    }
    return offs[i];
  }

  /** The line at visual row `row` (binary search over the wrapped offsets). */
  lineAtRow(row, cols) {
    const n = this.entries.length;
    if (!cols) return Math.max(0, Math.min(n - 1, Math.floor(row)));
    this.rowsBefore(n, cols);
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offs[mid] <= row) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
}

function findMatches(entries, query) {
  const out = [];
  if (!query) return out;
  const q = query.toLowerCase();
  for (let i = 0; i < entries.length && out.length < 100000; i++) {
    const e = entries[i];
    const low = (e.l ??= plainOf(e).toLowerCase());
    for (let at = low.indexOf(q); at >= 0; at = low.indexOf(q, at + q.length)) out.push([i, at]);
  }
  return out;
}

/** A line's segments with the search matches marked (<mark>, the current one .cur). */
function highlighted(segs, plain, query, current) {
  const pieces = segs.map((s) => ({ ...s, mark: false }));
  if (!query) return pieces;
  const low = plain.toLowerCase();
  const q = query.toLowerCase();
  const ranges = [];
  for (let at = low.indexOf(q); at >= 0; at = low.indexOf(q, at + q.length)) ranges.push([at, at + q.length]);
  if (!ranges.length) return pieces;
  const out = [];
  let pos = 0;
  for (const s of segs) {
    const end = pos + s.text.length;
    let cut = pos;
    for (const [a, b] of ranges) {
      if (b <= cut || a >= end) continue;
      if (a > cut) out.push({ ...s, text: plain.slice(cut, a), mark: false });
      const stop = Math.min(b, end);
      out.push({ ...s, text: plain.slice(Math.max(a, cut), stop), mark: true, cur: a === current });
      cut = stop;
    }
    if (cut < end) out.push({ ...s, text: plain.slice(cut, end), mark: false });
    pos = end;
  }
  return out;
}

function Row({ e, state, query, current, prefs }) {
  const { segs } = parseAnsi(e.t, state);
  const plain = segs.map((s) => s.text).join("");
  const cls = `logv-row${e.s === "stderr" ? " err" : e.s === "nagare" ? " nag" : e.s === "sep" ? " sep" : ""}`;
  return html`<div class=${cls} data-line=${e.n ?? ""} data-stream=${e.s || ""}>${prefs.ln && html`<span class="ln" data-n=${e.n ?? ""}></span>`}${prefs.ts && html`<span class="ts" data-t=${e.ts ? timeOf(e.ts) : ""} title=${e.ts ? new Date(e.ts).toString() : "no time recorded"}></span>`}${e.s === "stderr" && html`<span class="visually-hidden">stderr: </span>`}<span class="lt">${highlighted(segs, plain, query, current).map((p) => {
    const { cls: c, style } = segStyle(p.st);
    const body = c || style.color || style.background ? html`<span class=${c} style=${style}>${p.text}</span>` : p.text;
    return p.mark ? html`<mark class=${p.cur ? "cur" : ""} data-current=${p.cur ? "" : undefined}>${body}</mark>` : body;
  })}</span></div>`;
}

export function LogView({ entries, version, status, name, label = "Task log" }) {
  const scroller = useRef(null);
  const layout = useRef(null);
  if (!layout.current || layout.current.entries !== entries) layout.current = new Layout(entries);
  const L = layout.current;
  const [view, setView] = useState({ top: 0, height: 400, width: 800, charW: 7.5 });
  const [prefs, setPrefs] = useState(loadPrefs);
  const [query, setQuery] = useState("");
  const [typed, setTyped] = useState("");
  const [cur, setCur] = useState(0);
  const stick = useRef(true);
  const autoTop = useRef(-1);
  const { count, hasTs, hasErr, lastN } = L.scan();
  const digits = String(Math.max(lastN, 9)).length;
  const showTs = prefs.ts && hasTs;
  const gutter = (prefs.ln ? digits + 1 : 0) + (showTs ? 9 : 0); // ch (app.css: .ln, .ts)
  const cols = prefs.wrap ? Math.max(8, Math.floor((view.width - 16) / view.charW) - gutter - 1) : 0;
  const matches = useMemoMatches(entries, version, query);
  const at = matches.length ? Math.min(cur, matches.length - 1) : -1;

  const setPref = (k, v) => setPrefs((p) => { const n = { ...p, [k]: v }; try { localStorage.setItem(PREFS, JSON.stringify(n)); } catch { /* private mode */ } return n; });

  // measure the character width and the scroller, again when it is resized
  useEffect(() => {
    const el = scroller.current;
    if (!el) return undefined;
    const probe = document.createElement("span");
    probe.className = "logv-probe";
    probe.textContent = "0".repeat(100);
    const measure = () => {
      el.append(probe);
      const charW = probe.getBoundingClientRect().width / 100 || 7.5;
      probe.remove();
      setView((v) => ({ ...v, charW, width: el.clientWidth, height: el.clientHeight }));
    };
    measure();
    const ro = typeof ResizeObserver === "function" ? new ResizeObserver(measure) : null;
    ro?.observe(el);
    return () => ro?.disconnect();
  }, []);

  // follow the end while the reader is there
  useEffect(() => {
    const el = scroller.current;
    if (stick.current && el) { el.scrollTop = el.scrollHeight; autoTop.current = el.scrollTop; if (el.scrollTop !== view.top) setView((v) => ({ ...v, top: el.scrollTop })); }
  });

  // debounced search
  useEffect(() => { const t = setTimeout(() => { setQuery(typed); setCur(0); }, typed ? 120 : 0); return () => clearTimeout(t); }, [typed]);

  const onScroll = () => {
    const el = scroller.current;
    stick.current = el.scrollTop === autoTop.current || el.scrollTop + el.clientHeight >= el.scrollHeight - 20;
    setView((v) => ({ ...v, top: el.scrollTop, height: el.clientHeight }));
  };

  const reveal = (k) => {
    const el = scroller.current;
    if (!el || k < 0 || k >= matches.length) return;
    const [i, col] = matches[k];
    stick.current = false;
    el.scrollTop = Math.max(0, PAD + L.rowsBefore(i, cols) * LH - el.clientHeight / 2);
    if (!cols) el.scrollLeft = Math.max(0, (gutter + col) * view.charW - el.clientWidth / 2);
    setView((v) => ({ ...v, top: el.scrollTop }));
  };
  const go = (step) => {
    if (!matches.length) return;
    const k = (at + step + matches.length) % matches.length;
    setCur(k);
    reveal(k);
  };
  useEffect(() => { if (query && matches.length) reveal(at); }, [query]);

  const onSearchKey = (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); if (typed !== query) { setQuery(typed); setCur(0); } else go(ev.shiftKey ? -1 : 1); }
    if (ev.key === "Escape") setTyped("");
  };

  const copy = async () => {
    const ok = await copyText(entries.map(plainOf).join("\n"));
    if (ok) pushToast(`Copied ${count} lines`);
    else pushToast("This browser does not allow copying from this page (plain HTTP): use Download, or select the lines and copy them yourself", true);
  };
  const download = () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([entries.map((e) => e.t).join("\n") + "\n"], { type: "text/plain" }));
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };

  // the window of rows to render
  const n = entries.length;
  const totalRows = L.rowsBefore(n, cols);
  const firstRow = Math.max(0, (view.top - PAD) / LH - OVERSCAN);
  const first = n ? L.lineAtRow(firstRow, cols) : 0;
  const lastRow = (view.top + view.height) / LH + OVERSCAN;
  let last = first;
  while (last < n && L.rowsBefore(last, cols) < lastRow) last++;
  const curMatch = at >= 0 ? matches[at] : null;
  const rows = [];
  for (let i = first; i < last; i++) {
    rows.push(html`<${Row} key=${i} e=${entries[i]} state=${L.stateAt(i)} query=${query} current=${curMatch && curMatch[0] === i ? curMatch[1] : -1} prefs=${{ ln: prefs.ln, ts: showTs }} />`);
  }
  const width = cols ? "100%" : `calc(${L.widest() + gutter + 2}ch + 16px)`;

  return html`<div class="logv">
    <div class="logv-bar small">
      <span class="muted" data-log-status>${status}</span><span class="muted">${count} lines</span>
      ${hasErr && html`<span class="logv-legend muted"><span class="swatch" aria-hidden="true"></span>stderr</span>`}
      <span class="spacer"></span>
      <span class="logv-search">
        <input type="search" value=${typed} placeholder="Search the log" aria-label="Search the log" onInput=${(ev) => setTyped(ev.target.value)} onKeyDown=${onSearchKey} />
        <span class="muted logv-count" aria-live="polite" data-match-count>${query ? (matches.length ? `${at + 1} of ${matches.length}${matches.length >= 100000 ? "+" : ""}` : "no matches") : ""}</span>
        <button onClick=${() => go(-1)} disabled=${!matches.length} aria-label="Previous match" title="Previous match (Shift+Enter)">↑</button>
        <button onClick=${() => go(1)} disabled=${!matches.length} aria-label="Next match" title="Next match (Enter)">↓</button>
      </span>
      <span class="logv-toggles" role="group" aria-label="Log display">
        <button aria-pressed=${prefs.wrap} onClick=${() => setPref("wrap", !prefs.wrap)}>Wrap</button>
        <button aria-pressed=${prefs.ln} onClick=${() => setPref("ln", !prefs.ln)}>Line numbers</button>
        <button aria-pressed=${showTs} disabled=${!hasTs} onClick=${() => setPref("ts", !prefs.ts)} title=${hasTs ? "When each line was written (to the second)" : "No times were recorded for this log (written before Nagare recorded them, or empty)"}>Times</button>
      </span>
      <button onClick=${copy}>Copy</button><button onClick=${download}>Download</button>
    </div>
    <div class=${`logv-scroll${prefs.wrap ? " wrap" : ""}`} ref=${scroller} onScroll=${onScroll} tabindex="0" role="region" aria-label=${label} style=${{ "--ln": `${digits}ch` }} data-log>
      ${n === 0 ? html`<div class="logv-empty">No output yet.</div>` : html`<div class="logv-inner" style=${{ height: `${totalRows * LH + 2 * PAD}px`, width }}>
        <div class="logv-window" style=${{ transform: `translateY(${L.rowsBefore(first, cols) * LH}px)` }}>${rows}</div>
      </div>`}
    </div>
  </div>`;
}

/** The matches of `query`, recomputed when the query or the lines change. */
function useMemoMatches(entries, version, query) {
  const memo = useRef({ key: null, value: [] });
  const key = `${version}|${entries.length}|${query}`;
  if (memo.current.key !== key || memo.current.entries !== entries) memo.current = { key, entries, value: findMatches(entries, query) };
  return memo.current.value;
}

// ------------------------------------------------------------------ live and static logs

/** The latest attempt, live: history then new lines over SSE (resumes by line id after a
 * reconnect; follows the task across retries, each attempt headed by a separator). */
export function LiveLog({ run, task }) {
  const [state, setState] = useState(() => ({ entries: [], version: 0 }));
  const [status, setStatus] = useState("connecting…");
  useEffect(() => {
    const entries = [];
    const buf = [];
    let last = 0;
    let timer = null;
    let version = 0;
    setState({ entries, version });
    const flush = () => { timer = null; if (buf.length) { for (const e of buf.splice(0)) entries.push(e); setState({ entries, version: ++version }); } };
    const push = (e) => { buf.push(e); if (!timer) timer = setTimeout(flush, 80); };
    const key = storedKey();
    const url = `${taskPath(run.run_id, task.task_id)}/logs?timestamps=true${key ? `&token=${enc(key)}` : ""}`;
    const es = new EventSource(url);
    es.onopen = () => setStatus("live");
    es.onmessage = (e) => {
      const id = Number(e.lastEventId);
      if (id && id <= last) return; // replayed after a reconnect
      if (id) last = id;
      push(parseStamped(e.data.replace(/\n/g, "\r"), id || null)); // (the server split CRs into data fields)
    };
    es.addEventListener("attempt", (e) => { last = 0; try { push(separator(`── attempt ${JSON.parse(e.data).attempt} ──`)); } catch { /* ignore */ } });
    es.addEventListener("end", (e) => {
      es.close();
      flush();
      let st = "finished";
      try { st = `finished: ${JSON.parse(e.data).status}`; } catch { /* ignore */ }
      setStatus(st);
    });
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) setStatus("disconnected"); else setStatus("reconnecting…"); };
    return () => { es.close(); clearTimeout(timer); };
  }, [task.id, task.attempt]);
  return html`<${LogView} entries=${state.entries} version=${state.version} status=${status} name=${`${run.run_id}_${task.task_id}_${task.attempt}.log`} label=${`Log of ${task.task_id}`} />`;
}

/** An earlier attempt's log, read once. */
export function StaticLog({ run, task, attempt }) {
  const [entries, setEntries] = useState(null);
  useEffect(() => {
    api(`${taskPath(run.run_id, task.task_id)}/logs?attempt=${attempt}&timestamps=true`, { text: true })
      .then((t) => setEntries(t ? t.replace(/\n$/, "").split("\n").map((line, i) => parseStamped(line, i + 1)) : []))
      .catch((e) => setEntries([separator(`(could not load the log: ${e.message})`)]));
  }, [attempt]);
  if (!entries) return html`<p class="muted">Loading…</p>`;
  return html`<${LogView} entries=${entries} version=${0} status=${`attempt ${attempt}`} name=${`${run.run_id}_${task.task_id}_${attempt}.log`} label=${`Log of ${task.task_id}, attempt ${attempt}`} />`;
}
