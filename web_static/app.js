// Nagare dashboard: Preact + htm as plain ES modules, no build step.
// Everything user-controlled is rendered as text nodes (never innerHTML), so it stays inert.
import { h, render } from "./vendor/preact.module.js";
import { useState, useEffect, useRef, useCallback, useMemo } from "./vendor/preact-hooks.module.js";
import htm from "./vendor/htm.module.js";

const html = htm.bind(h);
const KEY = "nagare_api_key";
const TERMINAL_RUN = new Set(["success", "failed", "cancelled"]);
const TERMINAL_TASK = new Set(["success", "failed", "cancelled", "upstream_failed", "skipped"]);
const TASK_STATUSES = ["pending", "queued", "running", "success", "failed", "up_for_retry", "upstream_failed", "cancelled", "skipped"];
const RUN_STATUSES = ["queued", "running", "success", "failed", "cancelled"];
const TRIGGERS = ["manual", "scheduled", "webhook", "triggered", "catchup", "backfill"];

// ------------------------------------------------------------------ API and auth

let onUnauthorized = () => {};
const storedKey = () => { try { return localStorage.getItem(KEY) || ""; } catch { return ""; } };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body, text = false, key } = {}) {
  const headers = {};
  const k = key ?? storedKey();
  if (k) headers.Authorization = `Bearer ${k}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401 && key === undefined) onUnauthorized();
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    try { const j = await res.json(); message = j?.error?.message || message; } catch { /* not JSON */ }
    throw new ApiError(res.status, message);
  }
  return text ? res.text() : res.json();
}

const enc = encodeURIComponent;
const taskPath = (runId, taskId) => `/api/runs/${enc(runId)}/tasks/${enc(taskId)}`;

// ------------------------------------------------------------------ routing

function useLocation() {
  const [loc, setLoc] = useState(() => location.pathname + location.search);
  useEffect(() => {
    const on = () => setLoc(location.pathname + location.search);
    addEventListener("popstate", on);
    addEventListener("nagare:navigate", on);
    return () => { removeEventListener("popstate", on); removeEventListener("nagare:navigate", on); };
  }, []);
  return loc;
}

function navigate(to, replace = false) {
  if (to === location.pathname + location.search) return;
  history[replace ? "replaceState" : "pushState"](null, "", to);
  dispatchEvent(new Event("nagare:navigate"));
  if (!replace) scrollTo(0, 0);
}

function Link({ href, children, ...rest }) {
  const click = (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${click} ...${rest}>${children}</a>`;
}

const runHref = (id, task) => `/runs?id=${enc(id)}${task ? `&task=${enc(task)}` : ""}`;
const dagHref = (id) => `/dags?id=${enc(id)}`;

// ------------------------------------------------------------------ hooks

// Calls fn now and every ms while the tab is visible; pauses while hidden.
function usePoll(fn, ms, deps) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    let stopped = false;
    let timer = null;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) { try { await saved.current(); } catch (e) { /* shown by the page */ } }
      if (!stopped && ms) timer = setTimeout(tick, ms);
    };
    const vis = () => { if (!document.hidden && !stopped) { clearTimeout(timer); tick(); } };
    tick();
    document.addEventListener("visibilitychange", vis);
    return () => { stopped = true; clearTimeout(timer); document.removeEventListener("visibilitychange", vis); };
  }, deps);
}

function useNow(active = true) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!active) return;
    const t = setInterval(() => { if (!document.hidden) setNow(Date.now()); }, 1000);
    return () => clearInterval(t);
  }, [active]);
  return now;
}

// ------------------------------------------------------------------ toasts

let pushToast = () => {};
function Toasts() {
  const [items, setItems] = useState([]);
  pushToast = (text, bad = false) => {
    const id = Math.random();
    setItems((xs) => [...xs, { id, text, bad }]);
    setTimeout(() => setItems((xs) => xs.filter((x) => x.id !== id)), 4000);
  };
  return html`<div class="toasts" role="status" aria-live="polite">
    ${items.map((t) => html`<div key=${t.id} class=${"toast" + (t.bad ? " bad" : "")}>${t.text}</div>`)}
  </div>`;
}

// ------------------------------------------------------------------ formatting

const parseT = (s) => (s ? Date.parse(s) : null);
function fmtTime(s) {
  if (!s) return "—";
  const d = new Date(s);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function fmtDur(ms) {
  if (ms == null || isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
function fmtBytes(b) {
  if (b == null) return "—";
  if (b < 1024) return `${b} B`;
  if (b < 1024 ** 2) return `${(b / 1024).toFixed(1)} KB`;
  if (b < 1024 ** 3) return `${(b / 1024 ** 2).toFixed(1)} MB`;
  return `${(b / 1024 ** 3).toFixed(2)} GB`;
}
function ago(s, now = Date.now()) {
  if (!s) return "never";
  const d = Math.max(0, (now - parseT(s)) / 1000);
  if (d < 60) return `${Math.round(d)}s ago`;
  if (d < 3600) return `${Math.round(d / 60)}m ago`;
  if (d < 86400) return `${Math.round(d / 3600)}h ago`;
  return `${Math.round(d / 86400)}d ago`;
}
function elapsed(obj, now) {
  const start = parseT(obj.started_at || obj.created_at);
  if (!start) return null;
  const end = parseT(obj.completed_at) || (obj.status === "running" ? now : null);
  return end == null ? null : end - start;
}
const pct = (x) => (x == null ? "—" : `${(x * 100).toFixed(1)}%`);

function StatusBadge({ status }) {
  const label = status === "up_for_retry" ? "retrying" : (status || "").replaceAll("_", " ");
  return html`<span class=${`badge st-${status}` + (status === "running" ? " pulse" : "")}>${label}</span>`;
}
const TriggerBadge = ({ trigger }) => html`<span class=${`badge tr-${trigger}`}>${trigger}</span>`;

function ErrorLine({ error }) {
  return error ? html`<p class="error-text" role="alert">${String(error.message || error)}</p>` : null;
}

// ------------------------------------------------------------------ auth gate

function Gate({ onConnect, initialError }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState(initialError || "");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const key = value.trim();
    if (!key) { setError("API key is required."); return; }
    setBusy(true);
    try {
      const res = await fetch("/api/stats", { headers: { Authorization: `Bearer ${key}` } });
      if (res.status === 401) setError("Invalid API key. Please try again.");
      else if (!res.ok) setError(`Unexpected response: ${res.status}`);
      else { try { localStorage.setItem(KEY, key); } catch { /* private mode */ } onConnect(); }
    } catch { setError("Could not reach the server. Check your connection."); }
    setBusy(false);
  };
  return html`<main><form class="panel gate" onSubmit=${submit} aria-labelledby="gate-title">
    <h1 id="gate-title">Connect to Nagare</h1>
    <p class="muted">Enter your API key to access the dashboard.</p>
    <label for="gate-key">API key</label>
    <input id="gate-key" type="password" autocomplete="current-password" value=${value} onInput=${(e) => setValue(e.target.value)} autofocus />
    ${error && html`<p class="error-text" role="alert">${error}</p>`}
    <p><button class="primary" type="submit" disabled=${busy}>Connect</button></p>
  </form></main>`;
}

// ------------------------------------------------------------------ app shell

const NAV = [["/", "Dashboard"], ["/dags", "DAGs"], ["/runs", "Runs"], ["/metrics", "Metrics"], ["/workers", "Workers"]];

function ThemeToggle() {
  const dark = () => document.documentElement.dataset.theme === "dark" ||
    (!document.documentElement.dataset.theme && matchMedia("(prefers-color-scheme: dark)").matches);
  const [isDark, setDark] = useState(dark());
  const toggle = () => {
    const next = isDark ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    try { localStorage.setItem("nagare_theme", next); } catch { /* ignore */ }
    setDark(!isDark);
    dispatchEvent(new Event("nagare:theme"));
  };
  return html`<button onClick=${toggle} aria-label="Toggle light/dark theme" title="Toggle theme">${isDark ? "☀ Light" : "☾ Dark"}</button>`;
}

function App() {
  const [auth, setAuth] = useState("probing"); // probing | gate | ok
  const [gateError, setGateError] = useState("");
  const loc = useLocation();
  useEffect(() => {
    onUnauthorized = () => {
      try { localStorage.removeItem(KEY); } catch { /* ignore */ }
      setGateError(storedKey() ? "" : "");
      setAuth("gate");
    };
    fetch("/api/stats", { headers: storedKey() ? { Authorization: `Bearer ${storedKey()}` } : {} })
      .then((r) => {
        if (r.status === 401) { try { localStorage.removeItem(KEY); } catch { /* ignore */ } setAuth("gate"); } else setAuth("ok");
      })
      .catch(() => setAuth("ok"));
  }, []);
  const disconnect = () => { try { localStorage.removeItem(KEY); } catch { /* ignore */ } setGateError(""); setAuth("gate"); };
  const path = loc.split("?")[0];
  const params = new URLSearchParams(loc.split("?")[1] || "");
  let page;
  if (auth === "probing") page = html`<main class="boot">Loading dashboard…</main>`;
  else if (auth === "gate") page = html`<${Gate} initialError=${gateError} onConnect=${() => setAuth("ok")} />`;
  else if (path === "/") page = html`<${Dashboard} />`;
  else if (path === "/dags" || path === "/dags/") page = params.get("id") ? html`<${DagDetail} key=${params.get("id")} dagId=${params.get("id")} />` : html`<${DagList} />`;
  else if (path === "/runs" || path === "/runs/") page = params.get("id") ? html`<${RunDetail} key=${params.get("id")} runId=${params.get("id")} focusTask=${params.get("task")} />` : html`<${RunsPage} />`;
  else if (path === "/metrics") page = html`<${MetricsPage} />`;
  else if (path === "/workers") page = html`<${WorkersPage} />`;
  else page = html`<main><h1>Page not found</h1><p><${Link} href="/">Back to the dashboard</${Link}></p></main>`;
  const active = (href) => (href === "/" ? path === "/" : path.startsWith(href));
  return html`
    <header class="top">
      <${Link} href="/" class="brand">≋ NAGARE</${Link}>
      <nav aria-label="Main">${NAV.map(([href, label]) => html`<${Link} href=${href} class=${active(href) ? "active" : ""} aria-current=${active(href) ? "page" : undefined}>${label}</${Link}>`)}</nav>
      <${ThemeToggle} />
      ${auth === "ok" && storedKey() && html`<button class="danger" onClick=${disconnect}>Disconnect</button>`}
    </header>
    ${page}
    <${Toasts} />`;
}

// ------------------------------------------------------------------ shared pieces

function TriggerDialog({ dag, onClose }) {
  const ref = useRef(null);
  const [conf, setConf] = useState("{}");
  const [error, setError] = useState("");
  useEffect(() => { ref.current?.showModal(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    let parsed;
    try { parsed = JSON.parse(conf || "{}"); } catch { setError("Parameters must be a JSON object."); return; }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) { setError("Parameters must be a JSON object."); return; }
    try {
      const run = await api(`/api/dags/${enc(dag.dag_id)}/runs`, { method: "POST", body: { conf: parsed } });
      pushToast(`Triggered ${run.run_id}`);
      onClose();
      navigate(runHref(run.run_id));
    } catch (err) { setError(err.message); }
  };
  return html`<dialog ref=${ref} onClose=${onClose} aria-labelledby="trig-title">
    <form onSubmit=${submit}>
      <h2 id="trig-title">Trigger ${dag.dag_id}</h2>
      <label for="trig-conf" class="small muted">Run parameters (JSON object, available as environment variables)</label>
      <textarea id="trig-conf" value=${conf} onInput=${(e) => setConf(e.target.value)}></textarea>
      ${error && html`<p class="error-text" role="alert">${error}</p>`}
      <div class="row"><span class="spacer"></span>
        <button type="button" onClick=${() => ref.current?.close()}>Cancel</button>
        <button type="submit" class="primary">Trigger run</button></div>
    </form></dialog>`;
}

function TriggerButtons({ dag }) {
  const [dialog, setDialog] = useState(false);
  const quick = async () => {
    try {
      const run = await api(`/api/dags/${enc(dag.dag_id)}/runs`, { method: "POST", body: {} });
      pushToast(`Triggered ${run.run_id}`);
      navigate(runHref(run.run_id));
    } catch (e) { pushToast(`Trigger failed: ${e.message}`, true); }
  };
  return html`<span class="row" style="flex-wrap:nowrap">
    <button class="primary" onClick=${quick} aria-label=${`Trigger ${dag.dag_id}`} data-action="trigger">▶ Trigger</button>
    <button onClick=${() => setDialog(true)} aria-label=${`Trigger ${dag.dag_id} with parameters`} title="Trigger with parameters">⋯</button>
    ${dialog && html`<${TriggerDialog} dag=${dag} onClose=${() => setDialog(false)} />`}
  </span>`;
}

function PauseSwitch({ dag, onChange }) {
  const [paused, setPaused] = useState(dag.paused);
  useEffect(() => setPaused(dag.paused), [dag.paused]);
  const toggle = async () => {
    const next = !paused;
    setPaused(next);
    try {
      await api(`/api/dags/${enc(dag.dag_id)}/${next ? "pause" : "activate"}`, { method: "POST" });
      pushToast(`${dag.dag_id} ${next ? "paused" : "activated"}`);
      onChange?.();
    } catch (e) { setPaused(!next); pushToast(`Action failed: ${e.message}`, true); }
  };
  return html`<input type="checkbox" role="switch" class="switch" checked=${!paused} onChange=${toggle}
    aria-label=${`${dag.dag_id} active (unchecked = paused)`} title=${paused ? "Paused — click to activate" : "Active — click to pause"} />`;
}

function DagErrors({ errors }) {
  const files = Object.entries(errors || {});
  if (!files.length) return null;
  const n = files.reduce((a, [, v]) => a + v.length, 0);
  return html`<details class="errors" open>
    <summary>DAG load errors (${n})</summary>
    <ul>${files.map(([file, msgs]) => msgs.map((m) => html`<li><strong>${file}</strong>: ${m}</li>`))}</ul>
  </details>`;
}

function DagTable({ dags, reload }) {
  if (!dags) return html`<p class="muted">Loading…</p>`;
  if (!dags.length) return html`<p class="empty">No DAGs loaded. Put YAML files in the DAG folder.</p>`;
  return html`<div class="tablewrap"><table>
    <thead><tr><th>DAG</th><th>Schedule</th><th class="hide-sm">Next run</th><th class="hide-sm">Last run</th><th>Active</th><th>Actions</th></tr></thead>
    <tbody>${dags.map((d) => html`<tr key=${d.dag_id} data-dag=${d.dag_id}>
      <td><${Link} href=${dagHref(d.dag_id)}><strong>${d.dag_id}</strong></${Link}>
        <div class="muted small trunc" title=${d.description}>${d.description}</div></td>
      <td>${d.paused ? html`<span class="badge st-queued">paused</span> ` : ""}<span title=${d.schedule}>${d.schedule_description || d.schedule}</span></td>
      <td class="hide-sm small">${d.paused ? "—" : fmtTime(d.next_run_at)}</td>
      <td class="hide-sm">${d.last_run ? html`<${Link} href=${runHref(d.last_run.run_id)}><${StatusBadge} status=${d.last_run.status} /></${Link}>` : html`<span class="muted">—</span>`}</td>
      <td><${PauseSwitch} dag=${d} onChange=${reload} /></td>
      <td><${TriggerButtons} dag=${d} /></td></tr>`)}</tbody></table></div>`;
}

function killRun(run, after) {
  return api(`/api/runs/${enc(run.run_id)}/kill`, { method: "POST" })
    .then(() => { pushToast(`Run ${run.run_id} killed`); after?.(); })
    .catch((e) => pushToast(`Kill failed: ${e.message}`, true));
}

function RunsTable({ dagId, limit = 20, showFilters = true, dags }) {
  const [filters, setFilters] = useState({ dag_id: dagId || "", status: "", trigger: "" });
  const [page, setPage] = useState(1);
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => {
    const q = new URLSearchParams({ page, limit });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    try { setData(await api(`/api/runs?${q}`)); setError(null); } catch (e) { setError(e); }
  };
  const anyRunning = data?.data.some((r) => !TERMINAL_RUN.has(r.status));
  usePoll(load, anyRunning ? 2000 : 5000, [page, filters.dag_id, filters.status, filters.trigger, anyRunning]);
  const now = useNow(anyRunning);
  const set = (k) => (e) => { setFilters({ ...filters, [k]: e.target.value }); setPage(1); };
  const pages = data ? Math.max(1, Math.ceil(data.total / limit)) : 1;
  return html`<div>
    ${showFilters && html`<div class="row" style="margin-bottom:8px">
      ${!dagId && html`<label class="small">DAG <select onChange=${set("dag_id")} value=${filters.dag_id} aria-label="Filter by DAG">
        <option value="">all</option>${(dags || []).map((d) => html`<option value=${d.dag_id}>${d.dag_id}</option>`)}</select></label>`}
      <label class="small">Status <select onChange=${set("status")} value=${filters.status} aria-label="Filter by status">
        <option value="">all</option>${RUN_STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
      <label class="small">Trigger <select onChange=${set("trigger")} value=${filters.trigger} aria-label="Filter by trigger">
        <option value="">all</option>${TRIGGERS.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
    </div>`}
    <${ErrorLine} error=${error} />
    <div class="tablewrap"><table class="runs">
      <thead><tr><th>Run</th>${!dagId && html`<th>DAG</th>`}<th>Status</th><th class="hide-sm">Execution date</th><th>Trigger</th><th class="num">Elapsed</th><th></th></tr></thead>
      <tbody>${data && data.data.map((r) => html`<tr key=${r.run_id} data-run=${r.run_id}>
        <td class="mono trunc"><${Link} href=${runHref(r.run_id)} title=${r.run_id}>${r.run_id}</${Link}></td>
        ${!dagId && html`<td><${Link} href=${dagHref(r.dag_id)}>${r.dag_id}</${Link}></td>`}
        <td><${StatusBadge} status=${r.status} /></td>
        <td class="hide-sm small">${fmtTime(r.execution_date)}</td>
        <td><${TriggerBadge} trigger=${r.trigger} /></td>
        <td class="num">${fmtDur(elapsed(r, now))}</td>
        <td>${r.status === "running" || r.status === "queued" ? html`<button class="danger" onClick=${() => killRun(r, load)} aria-label=${`Kill run ${r.run_id}`}>■ Kill</button>` : ""}</td>
      </tr>`)}</tbody></table></div>
    ${data && !data.data.length && html`<p class="empty">No runs found</p>`}
    ${data && data.total > limit && html`<div class="pager">
      <button disabled=${page <= 1} onClick=${() => setPage(page - 1)}>‹ Prev</button>
      <span class="small">Page ${page} of ${pages} · ${data.total} runs</span>
      <button disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Next ›</button></div>`}
  </div>`;
}

function useDags() {
  const [dags, setDags] = useState(null);
  const [errors, setErrors] = useState({});
  const load = async () => {
    const [d, e] = await Promise.all([api("/api/dags"), api("/api/dags/errors")]);
    setDags(d); setErrors(e);
  };
  usePoll(load, 10000, []);
  return [dags, errors, load];
}

// ------------------------------------------------------------------ dashboard

function Dashboard() {
  const [stats, setStats] = useState(null);
  const [dags, errors, reload] = useDags();
  usePoll(async () => setStats(await api("/api/stats")), 3000, []);
  useEffect(() => { document.title = "Nagare | Dashboard"; }, []);
  const card = (label, value, extra = "", alert = false) => html`<div class=${"card" + (alert ? " alert" : "")}>
    <div class="label">${label}</div><div class="value" data-stat=${label}>${value ?? "—"}</div><div class="sub">${extra}</div></div>`;
  return html`<main>
    <h1>Dashboard</h1>
    <div class="cards">
      ${card("Active runs", stats?.active_runs, stats ? `${stats.running_tasks} tasks running, ${stats.queued_tasks} queued` : "")}
      ${card("Failed runs (24 h)", stats?.failed_runs_24h, "", stats?.failed_runs_24h > 0)}
      ${card("Total runs", stats?.total_runs)}
      ${card("Loaded DAGs", stats?.loaded_dags, stats?.dag_errors ? `${stats.dag_errors} with errors` : "", stats?.dag_errors > 0)}
    </div>
    <${DagErrors} errors=${errors} />
    <section class="panel"><h2>DAGs</h2><${DagTable} dags=${dags} reload=${reload} /></section>
    <section class="panel"><div class="row"><h2>Recent runs</h2><span class="spacer"></span><${Link} href="/runs">All runs ›</${Link}></div>
      <${RunsTable} limit=${10} showFilters=${false} /></section>
  </main>`;
}

function DagList() {
  const [dags, errors, reload] = useDags();
  useEffect(() => { document.title = "Nagare | DAGs"; }, []);
  return html`<main><h1>DAGs</h1><${DagErrors} errors=${errors} />
    <section class="panel"><${DagTable} dags=${dags} reload=${reload} /></section></main>`;
}

function RunsPage() {
  const [dags] = useDags();
  useEffect(() => { document.title = "Nagare | Runs"; }, []);
  return html`<main><h1>Runs</h1><section class="panel"><${RunsTable} dags=${dags} limit=${25} /></section></main>`;
}

// ------------------------------------------------------------------ graph (layered layout, SVG)

const STATUS_VAR = (s) => `var(--${s === "up_for_retry" ? "retry" : s === "upstream_failed" ? "upstream" : s || "pending"})`;

function layers(tasks) {
  const deps = new Map(tasks.map((t) => [t.task_id, [...(t.depends_on || []), ...(t.map_over ? [t.map_over] : [])]]));
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const ds = (deps.get(id) || []).filter((d) => deps.has(d));
    const v = ds.length ? Math.max(...ds.map((d) => visit(d, seen))) + 1 : 0;
    depth.set(id, v);
    return v;
  };
  tasks.forEach((t) => visit(t.task_id));
  return { deps, depth };
}

function DagGraph({ tasks, states, onSelect }) {
  // tasks: DAG task definitions; states: task_id -> {status, label}
  const { deps, depth } = useMemo(() => layers(tasks), [tasks]);
  const cols = [];
  tasks.forEach((t) => { const d = depth.get(t.task_id); (cols[d] = cols[d] || []).push(t); });
  const W = 150, H = 40, GX = 40, GY = 20;
  const pos = new Map();
  cols.forEach((col, ci) => col.forEach((t, ri) => pos.set(t.task_id, { x: 10 + ci * (W + GX), y: 10 + ri * (H + GY) })));
  const width = 20 + cols.length * (W + GX) - GX;
  const height = 20 + Math.max(1, ...cols.map((c) => c.length)) * (H + GY) - GY + 8;
  const edges = [];
  tasks.forEach((t) => (deps.get(t.task_id) || []).forEach((d) => {
    const a = pos.get(d), b = pos.get(t.task_id);
    if (!a || !b) return;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    const st = states?.[d]?.status;
    edges.push(html`<path class="edge" d=${`M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`}
      style=${st ? `stroke:${STATUS_VAR(st)}` : ""} marker-end="url(#arrow)" />`);
  }));
  return html`<div class="graph" role="img" aria-label="DAG graph"><svg width=${width} height=${height} viewBox=${`0 0 ${width} ${height}`}>
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="var(--muted)" /></marker></defs>
    ${edges}
    ${tasks.map((t) => {
      const p = pos.get(t.task_id);
      const s = states?.[t.task_id];
      const color = s ? STATUS_VAR(s.status) : "var(--border)";
      const isMap = t.type === "map";
      const label = t.task_id.length > 18 ? t.task_id.slice(0, 17) + "…" : t.task_id;
      return html`<g class=${"node" + (onSelect ? " clickable" : "") + (s?.status === "running" ? " pulse" : "")} data-node=${t.task_id}
        transform=${`translate(${p.x},${p.y})`} onClick=${onSelect ? () => onSelect(t.task_id) : undefined}>
        <title>${t.task_id} (${t.type})${s ? ` — ${s.status}` : ""}${t.command ? `\n${t.command.slice(0, 200)}` : ""}</title>
        ${isMap && html`<rect x="6" y="6" width=${W} height=${H} rx="6" style=${`stroke:${color};opacity:.5`} /><rect x="3" y="3" width=${W} height=${H} rx="6" style=${`stroke:${color};opacity:.7`} />`}
        <rect width=${W} height=${H} rx="6" style=${`stroke:${color}`} />
        <text x="10" y="17">${label}</text>
        <text x="10" y="32" style="fill:var(--muted);font-size:11px">${s ? s.label || s.status : isMap ? `map over ${t.map_over}` : t.type}</text>
      </g>`;
    })}
  </svg></div>`;
}

function Legend() {
  return html`<div class="legend">${["success", "running", "queued", "pending", "failed", "up_for_retry", "upstream_failed", "cancelled"].map((s) =>
    html`<span><span style=${`display:inline-block;width:10px;height:10px;border-radius:2px;background:${STATUS_VAR(s)}`}></span> ${s.replaceAll("_", " ")}</span>`)}</div>`;
}

// ------------------------------------------------------------------ YAML highlighting (as text nodes)

function YamlView({ text }) {
  const lines = text.split("\n");
  const line = (l) => {
    const parts = [];
    const c = l.match(/^(\s*)(#.*)$/);
    if (c) return [c[1], html`<span class="y-com">${c[2]}</span>`];
    const m = l.match(/^(\s*-?\s*)([A-Za-z_][\w.-]*)(:)(.*)$/);
    let rest = l;
    if (m) { parts.push(m[1], html`<span class="y-key">${m[2]}</span>`, m[3]); rest = m[4]; }
    const cm = rest.match(/^(.*?)(\s#.*)$/);
    const body = cm ? cm[1] : rest;
    const vm = body.match(/^(\s*)(".*"|'.*'|-?\d+(\.\d+)?|true|false|null)(\s*)$/);
    if (vm) parts.push(vm[1], html`<span class=${/^["']/.test(vm[2]) ? "y-str" : "y-num"}>${vm[2]}</span>`, vm[4]);
    else parts.push(body);
    if (cm) parts.push(html`<span class="y-com">${cm[2]}</span>`);
    return parts;
  };
  return html`<pre class="code" data-yaml>${lines.map((l, i) => html`${line(l)}${i < lines.length - 1 ? "\n" : ""}`)}</pre>`;
}

// ------------------------------------------------------------------ DAG detail

function DagDetail({ dagId }) {
  const [dag, setDag] = useState(null);
  const [yaml, setYaml] = useState(null);
  const [error, setError] = useState(null);
  const [tab, setTab] = useState("graph");
  const [latest, setLatest] = useState(null);
  useEffect(() => { document.title = `Nagare | ${dagId}`; }, [dagId]);
  usePoll(async () => {
    try { setDag(await api(`/api/dags/${enc(dagId)}`)); setError(null); } catch (e) { setError(e); return; }
    const runs = await api(`/api/runs?dag_id=${enc(dagId)}&limit=1`);
    const run = runs.data[0];
    if (run) {
      const tasks = await api(`/api/runs/${enc(run.run_id)}/tasks`);
      setLatest({ run, tasks });
    }
  }, latest && !TERMINAL_RUN.has(latest.run.status) ? 1500 : 5000, [dagId, latest && TERMINAL_RUN.has(latest.run.status)]);
  useEffect(() => { api(`/api/dags/${enc(dagId)}/yaml`, { text: true }).then(setYaml).catch(() => setYaml("")); }, [dagId]);
  if (error) return html`<main><h1>${dagId}</h1><${ErrorLine} error=${error} /><p><${Link} href="/dags">All DAGs</${Link}></p></main>`;
  if (!dag) return html`<main><p class="muted">Loading…</p></main>`;
  const states = latest ? runStates(latest.tasks) : null;
  const live = latest && !TERMINAL_RUN.has(latest.run.status);
  return html`<main>
    <h1>${dag.dag_id} <span class="badge muted">${dag.schedule_description || dag.schedule}</span>
      ${dag.paused && html`<span class="badge st-queued">paused</span>`}
      ${live && html`<span class="badge st-running pulse">live</span>`}
      <span class="spacer"></span><${PauseSwitch} dag=${dag} /> <${TriggerButtons} dag=${dag} /></h1>
    <p class="muted">${dag.description}</p>
    <p class="small muted">File ${dag.file}${dag.next_run_at && !dag.paused ? ` · next run ${fmtTime(dag.next_run_at)}` : ""}${dag.trigger ? ` · webhook ${dag.trigger.method || ""} ${dag.trigger.path || ""}` : ""}</p>
    <div class="grid2">
      <section class="panel"><div class="tabs" role="tablist">
          <button role="tab" aria-selected=${tab === "graph"} onClick=${() => setTab("graph")}>Graph</button>
          <button role="tab" aria-selected=${tab === "yaml"} onClick=${() => setTab("yaml")}>YAML</button></div>
        ${tab === "graph" ? html`<${DagGraph} tasks=${dag.tasks} states=${states} />
          ${latest && html`<p class="small muted">Colours from <${Link} href=${runHref(latest.run.run_id)}>${latest.run.run_id}</${Link}></p>`}<${Legend} />`
          : yaml == null ? html`<p class="muted">Loading…</p>` : yaml ? html`<${YamlView} text=${yaml} />` : html`<p class="muted">YAML source not available.</p>`}
      </section>
      <section class="panel"><h2>Run history</h2><${RunsTable} dagId=${dagId} limit=${10} /></section>
    </div></main>`;
}

// task_id -> {status,label}; map parents summarise their children.
function runStates(tasks) {
  const out = {};
  const kids = {};
  for (const t of tasks) {
    if (t.map_index != null) (kids[t.base_task_id] = kids[t.base_task_id] || []).push(t);
    else out[t.task_id] = { status: t.status, label: `${t.status}${t.attempt > 1 ? ` #${t.attempt}` : ""}${t.metrics ? " · " + fmtDur(t.metrics.duration_ms) : ""}` };
  }
  for (const [base, ks] of Object.entries(kids)) {
    const done = ks.filter((k) => k.status === "success").length;
    if (out[base]) out[base].label = `${out[base].status} · ${done}/${ks.length}`;
  }
  return out;
}

// ------------------------------------------------------------------ run detail

function counts(list) {
  const c = {};
  for (const t of list) c[t.status] = (c[t.status] || 0) + 1;
  return c;
}

function RunDetail({ runId, focusTask }) {
  const [run, setRun] = useState(null);
  const [tasks, setTasks] = useState(null);
  const [dag, setDag] = useState(null);
  const [error, setError] = useState(null);
  const [open, setOpen] = useState(() => new Set(focusTask ? [focusTask] : []));
  const [openGroups, setOpenGroups] = useState(new Set());
  const auto = useRef(!focusTask);
  const finished = run && TERMINAL_RUN.has(run.status) && tasks && tasks.every((t) => TERMINAL_TASK.has(t.status) || t.status === "pending");
  const load = useCallback(async () => {
    try {
      const [r, ts] = await Promise.all([api(`/api/runs/${enc(runId)}`), api(`/api/runs/${enc(runId)}/tasks`)]);
      setRun(r); setTasks(ts); setError(null);
      if (auto.current) {
        // until the user opens or closes a task, logs of running and failed tasks open by themselves
        const want = ts.filter((t) => t.map_index == null && ["running", "failed", "up_for_retry"].includes(t.status)).slice(0, 3);
        if (want.length) setOpen((o) => (want.every((t) => o.has(t.task_id)) ? o : new Set([...o, ...want.map((t) => t.task_id)])));
      }
    } catch (e) { setError(e); }
  }, [runId]);
  usePoll(load, finished ? 0 : 800, [runId, finished]);
  useEffect(() => { if (run && !dag) api(`/api/dags/${enc(run.dag_id)}`).then(setDag).catch(() => setDag({ tasks: [] })); }, [run?.dag_id]);
  useEffect(() => { document.title = `Nagare | ${runId}`; }, [runId]);
  const now = useNow(run && !TERMINAL_RUN.has(run.status));
  if (error && !run) return html`<main><h1 class="mono">${runId}</h1><${ErrorLine} error=${error} /><p><${Link} href="/runs">All runs</${Link}></p></main>`;
  if (!run || !tasks) return html`<main><p class="muted">Loading…</p></main>`;
  const toggle = (id) => {
    auto.current = false;
    const next = new Set(open);
    if (next.has(id)) next.delete(id); else next.add(id);
    setOpen(next);
    navigate(runHref(runId, next.has(id) ? id : null), true);
  };
  const c = counts(tasks.filter((t) => t.map_index == null || true));
  const total = tasks.length;
  const done = tasks.filter((t) => TERMINAL_TASK.has(t.status)).length;
  const top = tasks.filter((t) => t.map_index == null);
  const children = {};
  for (const t of tasks) if (t.map_index != null) (children[t.base_task_id] = children[t.base_task_id] || []).push(t);
  const running = !TERMINAL_RUN.has(run.status);
  return html`<main>
    <h1><span class="mono">${run.run_id}</span> <${StatusBadge} status=${run.status} />
      <span class="spacer"></span>
      ${running && html`<button class="danger" onClick=${() => killRun(run, load)} data-action="kill-run">■ Kill run</button>`}
      <button onClick=${load}>↻ Refresh</button></h1>
    <div class="cards">
      <div class="card"><div class="label">DAG</div><div><${Link} href=${dagHref(run.dag_id)}><strong>${run.dag_id}</strong></${Link}></div><div class="sub"><${TriggerBadge} trigger=${run.trigger} /></div></div>
      <div class="card"><div class="label">Started</div><div>${fmtTime(run.started_at || run.created_at)}</div><div class="sub">execution date ${fmtTime(run.execution_date)}</div></div>
      <div class="card"><div class="label">Duration</div><div class="value" data-duration>${fmtDur(elapsed(run, now))}</div></div>
      <div class="card"><div class="label">Tasks</div><div class="row small">${Object.entries(c).map(([s, n]) => html`<span class=${`badge st-${s}`}>${n} ${s.replaceAll("_", " ")}</span>`)}</div>
        <div class="progress" style="margin-top:8px" title=${`${done} of ${total} tasks finished`}><div class=${c.failed || c.upstream_failed || c.cancelled ? "bar-fail" : ""} style=${`width:${total ? (100 * done) / total : 0}%`}></div></div>
        <div class="sub">${done} of ${total} tasks finished</div></div>
    </div>
    ${Object.keys(run.conf || {}).length > 0 && html`<section class="panel"><h2>Parameters</h2><pre class="code">${JSON.stringify(run.conf, null, 2)}</pre></section>`}
    <div class="grid2">
      <section class="panel"><h2>Graph</h2>${dag ? html`<${DagGraph} tasks=${dag.tasks} states=${runStates(tasks)} onSelect=${(id) => { if (!open.has(id)) toggle(id); setTimeout(() => document.getElementById(`task-${id}`)?.scrollIntoView({ block: "center" }), 50); }} /><${Legend} />` : html`<p class="muted">Loading…</p>`}</section>
      <section class="panel"><h2>Timeline</h2><${Gantt} run=${run} tasks=${top} children=${children} now=${now} /></section>
    </div>
    <section class="panel"><h2>Tasks</h2>
      ${top.map((t) => html`<${TaskRow} key=${t.task_id} run=${run} task=${t} open=${open.has(t.task_id)} onToggle=${() => toggle(t.task_id)} reload=${load} now=${now} />
        ${children[t.task_id] && html`<${MapGroup} run=${run} parent=${t} kids=${children[t.task_id]} expanded=${openGroups.has(t.task_id)}
          onExpand=${() => { const n = new Set(openGroups); n.has(t.task_id) ? n.delete(t.task_id) : n.add(t.task_id); setOpenGroups(n); }}
          open=${open} toggle=${toggle} reload=${load} now=${now} />`}`)}
    </section>
  </main>`;
}

function MapGroup({ run, parent, kids, expanded, onExpand, open, toggle, reload, now }) {
  const [limit, setLimit] = useState(100);
  const c = counts(kids);
  return html`<div class="task child" data-map-group=${parent.task_id}>
    <div class="head">
      <button class="expander" onClick=${onExpand} aria-expanded=${expanded} aria-label=${`${expanded ? "Collapse" : "Expand"} map children of ${parent.task_id}`}>${expanded ? "▾" : "▸"}</button>
      <span><strong data-map-count>${kids.length}</strong> map children</span>
      ${Object.entries(c).map(([s, n]) => html`<span class=${`badge st-${s}`} data-map-status=${s}>${n} ${s.replaceAll("_", " ")}</span>`)}
    </div>
    ${expanded && html`<div class="body">
      ${kids.slice(0, limit).map((k) => html`<${TaskRow} key=${k.task_id} run=${run} task=${k} open=${open.has(k.task_id)} onToggle=${() => toggle(k.task_id)} reload=${reload} now=${now} />`)}
      ${kids.length > limit && html`<button onClick=${() => setLimit(limit + 200)}>Show more (${kids.length - limit} hidden)</button>`}
    </div>`}
  </div>`;
}

function Gantt({ run, tasks, children, now }) {
  const rows = tasks.map((t) => {
    const ks = children[t.task_id];
    const starts = (ks || [t]).map((k) => parseT(k.started_at)).filter(Boolean);
    const ends = (ks || [t]).map((k) => parseT(k.completed_at) || (k.status === "running" ? now : null)).filter(Boolean);
    const s = starts.length ? Math.min(...starts, parseT(t.started_at) || Infinity) : parseT(t.started_at);
    const e = ends.length ? Math.max(...ends, parseT(t.completed_at) || 0) : null;
    return { t, s, e: e || (s ? now : null) };
  });
  const t0 = parseT(run.started_at || run.created_at);
  const t1 = Math.max(t0 + 1000, ...rows.map((r) => r.e || 0), parseT(run.completed_at) || (TERMINAL_RUN.has(run.status) ? 0 : now));
  const span = t1 - t0;
  return html`<div class="gantt" role="list" aria-label="Task timeline">
    ${rows.map(({ t, s, e }) => html`<div class="mono trunc" title=${t.task_id}>${t.task_id}</div>
      <div class="track" title=${s ? `${fmtTime(new Date(s).toISOString())} · ${fmtDur(e - s)}` : "not started"}>
        ${s && html`<div class="bar" style=${`color:${STATUS_VAR(t.status)};left:${(100 * (s - t0)) / span}%;width:${Math.max(0.5, (100 * (e - s)) / span)}%`}></div>`}</div>`)}
    <div></div><div class="row small muted"><span>0 s</span><span class="spacer"></span><span>${fmtDur(span)}</span></div>
  </div>`;
}

function TaskRow({ run, task, open, onToggle, reload, now }) {
  const m = task.metrics;
  const act = async (what) => {
    try {
      await api(`${taskPath(run.run_id, task.task_id)}/${what}`, { method: "POST" });
      pushToast(what === "kill" ? `Task ${task.task_id} killed` : `Task ${task.task_id} requeued`);
      reload();
    } catch (e) { pushToast(`${what === "kill" ? "Kill" : "Retry"} failed: ${e.message}`, true); }
  };
  const dur = m ? m.duration_ms : elapsed(task, now);
  const isParent = task.type === "map" || (task.map_index == null && task.message && /map children/.test(task.message));
  return html`<div class=${"task" + (task.map_index != null ? "" : "")} id=${`task-${task.task_id}`} data-task=${task.task_id} data-status=${task.status}>
    <div class="head">
      <button class="expander" onClick=${onToggle} aria-expanded=${open} aria-label=${`${open ? "Hide" : "Show"} log of ${task.task_id}`}>${open ? "▾" : "▸"}</button>
      <span class="taskid mono">${task.task_id}</span>
      <${StatusBadge} status=${task.status} />
      ${task.attempt > 1 && html`<span class="badge muted">attempt ${task.attempt}/${task.max_attempts}</span>`}
      ${dur != null && html`<span class="badge muted" title="duration">${fmtDur(dur)}</span>`}
      ${m && m.peak_memory_bytes > 0 && html`<span class="badge muted" title="peak memory">${fmtBytes(m.peak_memory_bytes)}</span>`}
      ${m && html`<span class="badge muted hide-sm" title="CPU time">CPU ${fmtDur(m.cpu_user_ms + m.cpu_system_ms)}</span>`}
      ${task.exit_code != null && html`<span class=${`badge ${task.exit_code === 0 ? "st-success" : "st-failed"}`}>exit ${task.exit_code}</span>`}
      ${task.timed_out && html`<span class="badge st-failed">timed out</span>`}
      ${task.worker && task.worker !== "local" && html`<span class="badge muted">${task.worker}</span>`}
      <span class="spacer"></span>
      ${task.message && html`<span class="small muted trunc" title=${task.message}>${task.message}</span>`}
      ${task.status === "running" || task.status === "queued" ? html`<button class="danger" onClick=${() => act("kill")} data-action="kill-task" aria-label=${`Kill task ${task.task_id}`}>■ Kill</button>` : ""}
      ${TERMINAL_TASK.has(task.status) && !isParent ? html`<button onClick=${() => act("retry")} data-action="retry" aria-label=${`Retry task ${task.task_id}`}>↻ Retry</button>` : ""}
    </div>
    ${open && html`<div class="body"><${TaskLogs} run=${run} task=${task} /></div>`}
  </div>`;
}

// ------------------------------------------------------------------ logs

const WINDOW = 2000;

function TaskLogs({ run, task }) {
  const [attempt, setAttempt] = useState(task.attempt);
  const [attempts, setAttempts] = useState(null);
  useEffect(() => {
    if (task.attempt > 1) api(`${taskPath(run.run_id, task.task_id)}/attempts`).then(setAttempts).catch(() => {});
  }, [task.attempt, task.status]);
  useEffect(() => setAttempt(task.attempt), [task.attempt]);
  const latest = attempt === task.attempt;
  return html`<div>
    <details><summary class="small muted">Command</summary><pre class="code">${task.command || ""}</pre></details>
    ${task.attempt > 1 && html`<div class="tabs" role="tablist" aria-label="Attempts">${Array.from({ length: task.attempt }, (_, i) => i + 1).map((n) => {
      const a = attempts?.find((x) => x.attempt === n);
      return html`<button role="tab" aria-selected=${n === attempt} onClick=${() => setAttempt(n)}>Attempt ${n}${a ? ` · ${a.status}` : ""}</button>`;
    })}</div>`}
    ${latest ? html`<${LiveLog} key=${`${task.id}-live`} run=${run} task=${task} />` : html`<${StaticLog} key=${`${task.id}-${attempt}`} run=${run} task=${task} attempt=${attempt} />`}
  </div>`;
}

function LogView({ lines, status, name, extra }) {
  const pre = useRef(null);
  const [win, setWin] = useState(WINDOW);
  const stick = useRef(true);
  const shown = lines.length > win ? lines.slice(lines.length - win) : lines;
  const autoTop = useRef(-1); // where we scrolled ourselves: its scroll event may arrive after more lines
  useEffect(() => { const p = pre.current; if (stick.current && p) { p.scrollTop = p.scrollHeight; autoTop.current = p.scrollTop; } });
  const onScroll = () => { const p = pre.current; stick.current = p.scrollTop === autoTop.current || p.scrollTop + p.clientHeight >= p.scrollHeight - 20; };
  const text = () => lines.join("\n");
  const copy = () => navigator.clipboard?.writeText(text()).then(() => pushToast("Log copied"), () => pushToast("Copy failed", true));
  const download = () => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text() + "\n"], { type: "text/plain" }));
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };
  return html`<div>
    <div class="row small" style="margin:6px 0">
      <span class="muted">${status}</span><span class="muted">${lines.length} lines</span>${extra}<span class="spacer"></span>
      ${lines.length > win && html`<button onClick=${() => setWin(win + WINDOW * 5)}>Load ${Math.min(WINDOW * 5, lines.length - win)} earlier lines</button>`}
      <button onClick=${copy}>Copy</button><button onClick=${download}>Download</button></div>
    <pre class="log" ref=${pre} onScroll=${onScroll} tabindex="0" aria-label="Task log" data-log>${shown.length ? shown.join("\n") : "No output yet."}</pre>
  </div>`;
}

function LiveLog({ run, task }) {
  const [lines, setLines] = useState([]);
  const [status, setStatus] = useState("connecting…");
  useEffect(() => {
    const buf = [];
    let all = [];
    let last = 0;
    let timer = null;
    const flush = () => { timer = null; if (buf.length) { all = all.concat(buf.splice(0)); setLines(all); } };
    const push = (l) => { buf.push(l); if (!timer) timer = setTimeout(flush, 80); };
    const key = storedKey();
    const url = `${taskPath(run.run_id, task.task_id)}/logs${key ? `?token=${enc(key)}` : ""}`;
    const es = new EventSource(url);
    es.onopen = () => setStatus("live");
    es.onmessage = (e) => {
      const id = Number(e.lastEventId);
      if (id && id <= last) return; // replayed after a reconnect
      if (id) last = id;
      push(e.data);
    };
    es.addEventListener("attempt", (e) => { last = 0; try { push(`── attempt ${JSON.parse(e.data).attempt} ──`); } catch { /* ignore */ } });
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
  return html`<${LogView} lines=${lines} status=${status} name=${`${run.run_id}_${task.task_id}_${task.attempt}.log`} />`;
}

function StaticLog({ run, task, attempt }) {
  const [lines, setLines] = useState(null);
  useEffect(() => {
    api(`${taskPath(run.run_id, task.task_id)}/logs?attempt=${attempt}`, { text: true })
      .then((t) => setLines(t ? t.replace(/\n$/, "").split("\n") : []))
      .catch((e) => setLines([`(could not load the log: ${e.message})`]));
  }, [attempt]);
  if (!lines) return html`<p class="muted">Loading…</p>`;
  return html`<${LogView} lines=${lines} status=${`attempt ${attempt}`} name=${`${run.run_id}_${task.task_id}_${attempt}.log`} />`;
}

// ------------------------------------------------------------------ metrics

const WINDOWS = ["1h", "6h", "24h", "7d", "30d"];
let uplotModule = null;
const loadUplot = () => (uplotModule ||= import("./vendor/uPlot.esm.js").then((m) => m.default));
let uplotCss = false;

function Chart({ title, xs, ys, label, kind = "line", color = "--chart1", fmt = (v) => v }) {
  const ref = useRef(null);
  const [theme, setTheme] = useState(0);
  useEffect(() => {
    const on = () => setTheme((x) => x + 1);
    addEventListener("nagare:theme", on);
    return () => removeEventListener("nagare:theme", on);
  }, []);
  useEffect(() => {
    if (!uplotCss) {
      uplotCss = true;
      const l = document.createElement("link");
      l.rel = "stylesheet"; l.href = "/vendor/uPlot.min.css";
      document.head.appendChild(l);
    }
    let plot = null;
    let dead = false;
    loadUplot().then((uPlot) => {
      if (dead || !ref.current) return;
      const css = getComputedStyle(document.documentElement);
      const c = css.getPropertyValue(color).trim() || "#2563eb";
      const fg = css.getPropertyValue("--muted").trim();
      const grid = css.getPropertyValue("--grid").trim();
      const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
      const width = Math.max(260, ref.current.clientWidth - 4);
      plot = new uPlot({
        width, height: 200,
        series: [{}, {
          label, stroke: c, width: 2, fill: c + "33",
          paths: kind === "bars" ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined,
          points: { show: xs.length < 60 },
          value: (u, v) => (v == null ? "—" : fmt(v)),
        }],
        axes: [axis, { ...axis, size: 60, values: (u, vals) => vals.map((v) => fmt(v)) }],
        legend: { show: true },
        cursor: { drag: { x: false, y: false } },
      }, [xs, ys], ref.current);
    });
    return () => { dead = true; plot?.destroy(); };
  }, [xs, ys, theme]);
  return html`<section class="panel"><h2>${title}</h2>${xs.length ? html`<div class="chart" ref=${ref} data-chart=${title}></div>` : html`<p class="empty">No task executions in this window.</p>`}</section>`;
}

function MetricsPage() {
  const [since, setSince] = useState("24h");
  const [dagId, setDagId] = useState("");
  const [overview, setOverview] = useState(null);
  const [series, setSeries] = useState(null);
  const [error, setError] = useState(null);
  const [dags] = useDags();
  useEffect(() => { document.title = "Nagare | Metrics"; }, []);
  usePoll(async () => {
    try {
      const q = new URLSearchParams({ since });
      const ts = new URLSearchParams({ since, limit: 500 });
      if (dagId) { ts.set("dag_id", dagId); q.set("dag_id", dagId); }
      const [o, s] = await Promise.all([api(`/api/metrics/overview?${q}`), api(`/api/metrics/timeseries?${ts}`)]);
      setOverview(o); setSeries(s); setError(null);
    } catch (e) { setError(e); }
  }, 15000, [since, dagId]);
  const data = useMemo(() => {
    const pts = (series || []).filter((p) => p.completed_at || p.timestamp);
    const xs = pts.map((p) => parseT(p.completed_at || p.timestamp) / 1000);
    return {
      xs,
      dur: pts.map((p) => p.duration_ms / 1000),
      mem: pts.map((p) => (p.peak_memory_bytes || 0) / 1024 / 1024),
      cpu: pts.map((p) => p.cpu_ms ?? (p.cpu_user_ms + p.cpu_system_ms)),
    };
  }, [series]);
  const o = overview;
  return html`<main>
    <h1>Metrics <span class="spacer"></span>
      <label class="small">DAG <select value=${dagId} onChange=${(e) => setDagId(e.target.value)} aria-label="DAG filter">
        <option value="">all DAGs</option>${(dags || []).map((d) => html`<option value=${d.dag_id}>${d.dag_id}</option>`)}</select></label>
      <span class="row" role="group" aria-label="Time window">${WINDOWS.map((w) => html`<button class=${w === since ? "primary" : ""} aria-pressed=${w === since} onClick=${() => setSince(w)}>${w}</button>`)}</span></h1>
    <${ErrorLine} error=${error} />
    <div class="cards">
      <div class="card"><div class="label">Tasks tracked</div><div class="value" data-stat="tasks">${o?.total_tasks ?? "—"}</div><div class="sub">last ${since}</div></div>
      <div class="card"><div class="label">Avg task duration</div><div class="value">${o ? fmtDur(o.avg_duration_ms) : "—"}</div><div class="sub">max ${o ? fmtDur(o.max_duration_ms) : "—"}</div></div>
      <div class="card"><div class="label">Peak memory seen</div><div class="value">${o ? fmtBytes(o.max_memory_bytes) : "—"}</div></div>
      <div class="card"><div class="label">Success rate</div><div class="value">${o ? pct(o.success_rate) : "—"}</div><div class="sub">CPU total ${o ? fmtDur(o.total_cpu_ms) : "—"}</div></div>
    </div>
    <div class="grid2">
      <${Chart} title="Task duration (s)" label="duration" xs=${data.xs} ys=${data.dur} fmt=${(v) => (v < 1 ? `${+(v * 1000).toPrecision(3)} ms` : `${+v.toFixed(2)} s`)} />
      <${Chart} title="Peak memory (MB)" label="peak memory" kind="bars" color="--chart2" xs=${data.xs} ys=${data.mem} fmt=${(v) => `${+v.toPrecision(3)} MB`} />
      <${Chart} title="CPU time (ms)" label="CPU" color="--chart3" xs=${data.xs} ys=${data.cpu} fmt=${(v) => `${Math.round(v)} ms`} />
      <section class="panel"><h2>Success rate by DAG</h2>${o && o.dag_stats.length ? o.dag_stats.slice(0, 8).map((d) => html`<div class="hbar">
        <${Link} href=${dagHref(d.dag_id)} class="trunc">${d.dag_id}</${Link}>
        <div class="progress"><div class=${d.success_rate < 0.8 ? "bar-fail" : ""} style=${`width:${(d.success_rate ?? 0) * 100}%`}></div></div>
        <span class="small num">${pct(d.success_rate)}</span></div>`) : html`<p class="empty">No data.</p>`}</section>
    </div>
    <section class="panel"><h2>DAG performance</h2><div class="tablewrap"><table>
      <thead><tr><th>DAG</th><th class="num">Tasks</th><th class="num">Avg duration</th><th class="num">Max duration</th><th class="num hide-sm">Avg memory</th><th class="num hide-sm">Max memory</th><th class="num">Success</th></tr></thead>
      <tbody>${(o?.dag_stats || []).map((d) => html`<tr><td><${Link} href=${dagHref(d.dag_id)}>${d.dag_id}</${Link}></td><td class="num">${d.count}</td>
        <td class="num">${fmtDur(d.avg_duration_ms)}</td><td class="num">${fmtDur(d.max_duration_ms)}</td>
        <td class="num hide-sm">${fmtBytes(Math.round(d.avg_memory_bytes))}</td><td class="num hide-sm">${fmtBytes(d.max_memory_bytes)}</td><td class="num">${pct(d.success_rate)}</td></tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Slowest tasks</h2><div class="tablewrap"><table>
      <thead><tr><th>Task</th><th>DAG</th><th class="hide-sm">Run</th><th class="num">Duration</th><th class="num hide-sm">Peak memory</th><th>Exit</th><th class="hide-sm">Completed</th></tr></thead>
      <tbody>${(o?.slowest_tasks || []).map((t) => html`<tr><td class="mono"><${Link} href=${runHref(t.run_id, t.task_id)}>${t.task_id}</${Link}></td>
        <td><${Link} href=${dagHref(t.dag_id)}>${t.dag_id}</${Link}></td><td class="mono small trunc hide-sm"><${Link} href=${runHref(t.run_id)}>${t.run_id}</${Link}></td>
        <td class="num">${fmtDur(t.duration_ms)}</td><td class="num hide-sm">${fmtBytes(t.peak_memory_bytes)}</td><td>${t.exit_code ?? "—"}</td><td class="small hide-sm">${fmtTime(t.created_at)}</td></tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Recent task executions</h2><div class="tablewrap"><table>
      <thead><tr><th>Task</th><th class="hide-sm">Run</th><th class="num">Duration</th><th class="num hide-sm">Memory</th><th class="num hide-sm">CPU</th><th>Status</th><th class="hide-sm">Time</th></tr></thead>
      <tbody>${(series || []).slice(-50).reverse().map((p) => html`<tr><td class="mono"><${Link} href=${runHref(p.run_id, p.task_id)}>${p.task_id}</${Link}></td>
        <td class="mono small trunc hide-sm"><${Link} href=${runHref(p.run_id)}>${p.run_id}</${Link}></td><td class="num">${fmtDur(p.duration_ms)}</td>
        <td class="num hide-sm">${fmtBytes(p.peak_memory_bytes)}</td><td class="num hide-sm">${fmtDur(p.cpu_ms)}</td><td><${StatusBadge} status=${p.status} /></td><td class="small hide-sm">${fmtTime(p.completed_at)}</td></tr>`)}</tbody></table></div></section>
  </main>`;
}

// ------------------------------------------------------------------ workers

function WorkersPage() {
  const [workers, setWorkers] = useState(null);
  const [pools, setPools] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { document.title = "Nagare | Workers"; }, []);
  usePoll(async () => {
    try {
      const [w, p] = await Promise.all([api("/api/workers").catch((e) => (e.status === 404 ? [] : Promise.reject(e))), api("/api/pools")]);
      setWorkers(w); setPools(p); setError(null);
    } catch (e) { setError(e); }
  }, 5000, []);
  const now = useNow();
  const online = (workers || []).filter((w) => (w.status || "online") === "online");
  return html`<main><h1>Workers</h1><${ErrorLine} error=${error} />
    <div class="cards">
      <div class="card"><div class="label">Remote workers</div><div class="value">${workers ? workers.length : "—"}</div></div>
      <div class="card"><div class="label">Online</div><div class="value">${workers ? online.length : "—"}</div></div>
      <div class="card"><div class="label">Local slots</div><div class="value">${pools ? pools.reduce((a, p) => a + p.local_slots, 0) : "—"}</div><div class="sub">${pools ? pools.reduce((a, p) => a + p.busy_slots, 0) : 0} busy</div></div>
      <div class="card"><div class="label">Tasks running / queued</div><div class="value">${pools ? `${pools.reduce((a, p) => a + p.running, 0)} / ${pools.reduce((a, p) => a + p.queued, 0)}` : "—"}</div></div>
    </div>
    <section class="panel"><h2>Pools</h2><div class="tablewrap"><table>
      <thead><tr><th>Pool</th><th class="num">Local slots</th><th class="num">Busy</th><th class="num">Running</th><th class="num">Queued</th><th>Mode</th></tr></thead>
      <tbody>${(pools || []).map((p) => html`<tr><td class="mono">${p.pool}</td><td class="num">${p.local_slots}</td><td class="num">${p.busy_slots}</td><td class="num">${p.running}</td><td class="num">${p.queued}</td><td>${p.remote_only ? "remote only" : "local"}</td></tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Remote workers</h2>
      ${workers && !workers.length ? html`<p class="empty">No remote workers connected. Tasks run on this server's local pools; start <code>nagare worker --join URL</code> to add some.</p>` : html`<div class="tablewrap"><table>
        <thead><tr><th>Worker</th><th>Host</th><th>Status</th><th>Pools</th><th class="num">Capacity</th><th class="num">Running</th><th>Last heartbeat</th></tr></thead>
        <tbody>${(workers || []).map((w) => html`<tr><td class="mono">${w.worker_id || w.id}</td><td>${w.hostname}</td><td><${StatusBadge} status=${w.status === "online" ? "success" : "cancelled"} /> ${w.status}</td>
          <td>${(w.pools || []).join(", ")}</td><td class="num">${w.max_tasks ?? w.capacity ?? "—"}</td><td class="num">${w.active_tasks ?? w.running ?? "—"}</td><td>${ago(w.last_heartbeat, now)}</td></tr>`)}</tbody></table></div>`}
    </section></main>`;
}

render(html`<${App} />`, document.getElementById("app"));
