// Nagare dashboard: Preact + htm as plain ES modules, no build step.
// Everything user-controlled is rendered as text nodes (never innerHTML), so it stays inert.
// Shared parts (API, routing, hooks, formatting, badges) are in common.js.
import {
  ApiError,
  ErrorLine,
  HANDLER_IDS,
  KEY,
  Link,
  RETRIED_RUN,
  RUN_STATUSES,
  StatusBadge,
  TASK_STATUSES,
  TERMINAL_RUN,
  TERMINAL_TASK,
  TRIGGERS,
  Toasts,
  TriggerBadge,
  WarningBadge,
  ago,
  api,
  can,
  dagHref,
  elapsed,
  enc,
  fmtBytes,
  fmtDur,
  fmtTime,
  h,
  html,
  me,
  navigate,
  parseT,
  pct,
  pushToast,
  render,
  runHref,
  seesEveryDag,
  setMe,
  setOnUnauthorized,
  storedKey,
  taskPath,
  useCallback,
  useEffect,
  useLocation,
  useMemo,
  useNow,
  usePoll,
  useRef,
  useState,
} from "./common.js";
import { BackfillButton } from "./backfill.js";
import { GitSyncStatus } from "./gitsync.js";
import { DigestMismatch } from "./masters.js";
import { RecentRuns, RunsPage as RunsListPage, StatCard, useQuery } from "./runslist.js";
import { DagEditor, DagErrors, NEW_DAG_HREF, editorHref } from "./editor.js";
import { MetricsPage } from "./metrics.js";
import { LiveLog, StaticLog } from "./logview.js";
import { KILL_RUN_MESSAGE, KILL_TASK_MESSAGE, KillButton, TaskDetails, Timeline, itemLabel, itemText } from "./runpage.js";
import { DagCalendar, DagGrid, DagVersions, useDagPageQuery } from "./dagpage.js";
import { EXPIRED, SIGNED_OUT, SignIn, UserMenu, authConfig, forgetKey, startView, usesAccounts } from "./signin.js";
import { AdminPage } from "./admin.js";
import { AuditPage } from "./audit.js";

// ------------------------------------------------------------------ auth gate

function Gate({ onConnect }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState("");
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

const EVERY_DAG_PAGES = new Set(["/metrics", "/workers"]); // pages over every DAG at once
const NAV = [["/", "Dashboard"], ["/dags", "DAGs"], ["/runs", "Runs"], ["/metrics", "Metrics"], ["/workers", "Workers"]];
// the pages only some roles have (common.js `can` reads GET /api/me's permissions)
const navFor = (config) => [...NAV.filter(([href]) => seesEveryDag() || !EVERY_DAG_PAGES.has(href)),
  ...(can("audit") ? [["/audit", "Audit"]] : []),
  ...(can("admin") && usesAccounts(config) ? [["/admin", "Users & keys"]] : [])];

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

const NotAllowed = ({ what }) => html`<main><h1>Not available to your role</h1>
  <p class="muted" data-not-allowed>Your role (${me?.role || "unknown"}) may not ${what}.</p><p><${Link} href="/">Back to the dashboard</${Link}></p></main>`;

const NoUsers = () => html`<main><h1>No users on this server</h1>
  <p class="muted" data-no-users>Users and their API keys exist with <code>auth_mode: builtin</code> or <code>oidc</code> in nagare.yaml; this server uses one API key (or none).</p>
  <p><${Link} href="/">Back to the dashboard</${Link}></p></main>`;

function App() {
  // view: probing | gate (API key) | signin (users) | ok; config: GET /api/auth/config
  const [auth, setAuth] = useState({ view: "probing", config: null, notice: "" });
  const loc = useLocation();
  const start = async (notice = "") => {
    const config = await authConfig();
    const view = await startView(config);
    setAuth({ view, config, notice });
  };
  useEffect(() => {
    // a 401 from any call: the key or the session no longer works
    setOnUnauthorized(() => {
      forgetKey();
      setMe(null);
      setAuth((a) => (usesAccounts(a.config)
        ? { ...a, view: "signin", notice: a.view === "ok" ? EXPIRED : a.notice }
        : { ...a, view: "gate" }));
    });
    start();
  }, []);
  const disconnect = () => { forgetKey(); start(); };
  const signedOut = () => { setMe(null); setAuth((a) => ({ ...a, view: "signin", notice: SIGNED_OUT })); };
  const { view, config } = auth;
  const path = loc.split("?")[0];
  const params = new URLSearchParams(loc.split("?")[1] || "");
  let page;
  if (view === "probing") page = html`<main class="boot">Loading dashboard…</main>`;
  else if (view === "gate") page = html`<${Gate} onConnect=${() => start()} />`;
  else if (view === "signin") page = html`<${SignIn} config=${config} notice=${auth.notice} onSignedIn=${() => start()} />`;
  else if (path === "/") page = html`<${Dashboard} />`;
  else if (path === "/dags/edit" || path === "/dags/new") page = can("edit") ? html`<${DagEditor} key=${loc} file=${path === "/dags/new" ? null : params.get("file")} line=${params.get("line")} />` : html`<${NotAllowed} what="edit DAG files" />`;
  else if (path === "/dags" || path === "/dags/") page = params.get("id") ? html`<${DagDetail} key=${params.get("id")} dagId=${params.get("id")} />` : html`<${DagList} />`;
  else if (path === "/runs" || path === "/runs/") page = params.get("id") ? html`<${RunDetail} key=${params.get("id")} runId=${params.get("id")} focusTask=${params.get("task")} />` : html`<${RunsPage} />`;
  else if (EVERY_DAG_PAGES.has(path) && !seesEveryDag()) page = html`<${NotAllowed} what="see pages over every DAG (your role sees only some DAGs)" />`;
  else if (path === "/metrics") page = html`<${MetricsPage} since=${params.get("since")} dag=${params.get("dag")} />`;
  else if (path === "/workers") page = html`<${WorkersPage} />`;
  else if (path === "/audit") page = can("audit") ? html`<${AuditPage} />` : html`<${NotAllowed} what="read the audit log" />`;
  else if (path === "/admin") page = !usesAccounts(config) ? html`<${NoUsers} />` : can("admin") ? html`<${AdminPage} />` : html`<${NotAllowed} what="manage users and API keys" />`;
  else page = html`<main><h1>Page not found</h1><p><${Link} href="/">Back to the dashboard</${Link}></p></main>`;
  const active = (href) => (href === "/" ? path === "/" : path.startsWith(href));
  return html`
    <header class="top">
      <${Link} href="/" class="brand">≋ NAGARE</${Link}>
      ${view === "ok" && html`<nav aria-label="Main">${navFor(config).map(([href, label]) => html`<${Link} href=${href} class=${active(href) ? "active" : ""} aria-current=${active(href) ? "page" : undefined}>${label}</${Link}>`)}</nav>`}
      ${view !== "ok" && html`<span class="spacer"></span>`}
      <${ThemeToggle} />
      ${view === "ok" && html`<${UserMenu} config=${config} onSignOut=${signedOut} onDisconnect=${disconnect} />`}
      ${view === "ok" && !usesAccounts(config) && storedKey() && html`<button class="danger" onClick=${disconnect}>Disconnect</button>`}
    </header>
    ${page}
    <${Toasts} />`;
}

// ------------------------------------------------------------------ shared pieces

function TriggerDialog({ dag, onClose }) {
  return dag.params?.length
    ? html`<${ParamsDialog} dag=${dag} onClose=${onClose} />`
    : html`<${ConfDialog} dag=${dag} onClose=${onClose} />`;
}

// A manual run of a paused DAG starts anyway: the toast says so (pausing stops only its schedule).
const triggeredText = (dag, run) => (dag.paused
  ? `Triggered ${run.run_id}. ${dag.dag_id} is paused: this manual run starts, its schedule stays off.`
  : `Triggered ${run.run_id}`);

async function startRun(dag, body, onClose) {
  const run = await api(`/api/dags/${enc(dag.dag_id)}/runs`, { method: "POST", body });
  pushToast(triggeredText(dag, run));
  onClose();
  navigate(runHref(run.run_id));
}

// A DAG without `params:`: free-form conf (any names, values become strings).
function ConfDialog({ dag, onClose }) {
  const ref = useRef(null);
  const [conf, setConf] = useState("{}");
  const [error, setError] = useState("");
  useEffect(() => { ref.current?.showModal(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    let parsed;
    try { parsed = JSON.parse(conf || "{}"); } catch { setError("Parameters must be a JSON object."); return; }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) { setError("Parameters must be a JSON object."); return; }
    try { await startRun(dag, { conf: parsed }, onClose); } catch (err) { setError(err.message); }
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

// The form field's text for a parameter's default ("" when it has none).
function paramText(p) {
  if (!("default" in p) || p.default === null) return p.type === "boolean" ? false : "";
  if (p.type === "boolean") return p.default === true;
  if (p.enum) return String(p.enum.findIndex((v) => JSON.stringify(v) === JSON.stringify(p.default)));
  if (p.type === "object" || p.type === "array") return JSON.stringify(p.default);
  return String(p.default);
}

// The form's values as the API's typed `params` (empty fields are left out: the default, or
// the server's "required"; text that is not of the type is sent as is, for the server to name).
function paramValues(params, values) {
  const out = {};
  for (const p of params) {
    const v = values[p.name];
    if (p.type === "boolean") { out[p.name] = v === true; continue; }
    if (p.enum) { if (v !== "") out[p.name] = p.enum[Number(v)]; continue; }
    if (v === "") continue;
    if (p.type === "integer" || p.type === "number") { const n = Number(v); out[p.name] = v.trim() !== "" && Number.isFinite(n) ? n : v; continue; }
    if (p.type === "object" || p.type === "array") { try { out[p.name] = JSON.parse(v); } catch { out[p.name] = v; } continue; }
    out[p.name] = v;
  }
  return out;
}

function ParamField({ p, value, error, onChange }) {
  const id = `param-${p.name}`;
  const described = [p.description && `${id}-desc`, error && `${id}-err`].filter(Boolean).join(" ") || undefined;
  const common = { id, name: p.name, "aria-describedby": described, "aria-invalid": error ? "true" : undefined, "aria-required": p.required ? "true" : undefined };
  let input;
  if (p.type === "boolean") {
    input = html`<input type="checkbox" ...${common} checked=${value === true} onChange=${(e) => onChange(e.target.checked)} />`;
  } else if (p.enum) {
    input = html`<select ...${common} value=${value} onChange=${(e) => onChange(e.target.value)}>
      ${!("default" in p) && html`<option value="">(choose)</option>`}
      ${p.enum.map((v, i) => html`<option value=${String(i)}>${typeof v === "string" ? v : JSON.stringify(v)}</option>`)}</select>`;
  } else if (p.type === "object" || p.type === "array") {
    input = html`<textarea ...${common} rows="2" spellcheck=${false} placeholder=${p.type === "object" ? "{}" : "[]"} value=${value} onInput=${(e) => onChange(e.target.value)}></textarea>`;
  } else if (p.type === "integer" || p.type === "number") {
    input = html`<input type="number" inputmode=${p.type === "integer" ? "numeric" : "decimal"} step=${p.type === "integer" ? "1" : "any"} min=${p.minimum} max=${p.maximum} ...${common} value=${value} onInput=${(e) => onChange(e.target.value)} />`;
  } else {
    input = html`<input type="text" pattern=${p.pattern || undefined} ...${common} value=${value} onInput=${(e) => onChange(e.target.value)} />`;
  }
  const label = html`<label for=${id}><span class="mono">${p.name}</span>${p.required && html`<span class="req" aria-hidden="true"> *</span><span class="visually-hidden"> (required)</span>`}<span class="muted small"> ${p.enum ? "choice" : p.type}</span></label>`;
  return html`<div class=${`field${p.type === "boolean" ? " check" : ""}`} data-param=${p.name}>
    ${p.type === "boolean" ? html`${input}${label}` : html`${label}${input}`}
    ${p.description && html`<p id=${`${id}-desc`} class="small muted hint">${p.description}</p>`}
    ${error && html`<p id=${`${id}-err`} class="error-text field-error">${error}</p>`}
  </div>`;
}

// A DAG with `params:`: a form generated from the declaration; the server's 422 messages are
// shown next to their fields.
function ParamsDialog({ dag, onClose }) {
  const ref = useRef(null);
  const [values, setValues] = useState(() => Object.fromEntries(dag.params.map((p) => [p.name, paramText(p)])));
  const [errors, setErrors] = useState({});
  const [general, setGeneral] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => { ref.current?.showModal(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    try { await startRun(dag, { params: paramValues(dag.params, values) }, onClose); }
    catch (err) {
      const known = new Set(dag.params.map((p) => p.name));
      const byField = {};
      const other = [];
      for (const d of err.details || []) (known.has(d.param) ? (byField[d.param] = d.message) : other.push(`${d.param}: ${d.message}`));
      setErrors(byField);
      setGeneral(other.length ? other.join("; ") : Object.keys(byField).length ? "Some parameters are not valid; see the messages below each field." : err.message);
      const first = dag.params.find((p) => byField[p.name]);
      if (first) setTimeout(() => document.getElementById(`param-${first.name}`)?.focus(), 0);
    } finally { setBusy(false); }
  };
  const set = (name) => (v) => { setValues((old) => ({ ...old, [name]: v })); };
  return html`<dialog ref=${ref} onClose=${onClose} aria-labelledby="trig-title" class="params-dialog">
    <form onSubmit=${submit} noValidate>
      <h2 id="trig-title">Trigger ${dag.dag_id}</h2>
      <p class="small muted">Run parameters; fields marked * are required.</p>
      ${general && html`<p class="error-text" role="alert">${general}</p>`}
      <div class="fields">${dag.params.map((p) => html`<${ParamField} key=${p.name} p=${p} value=${values[p.name]} error=${errors[p.name]} onChange=${set(p.name)} />`)}</div>
      <div class="row"><span class="spacer"></span>
        <button type="button" onClick=${() => ref.current?.close()}>Cancel</button>
        <button type="submit" class="primary" disabled=${busy}>Trigger run</button></div>
    </form></dialog>`;
}

function TriggerButtons({ dag }) {
  const [dialog, setDialog] = useState(false);
  const needsForm = (dag.params || []).some((p) => p.required);
  const quick = async () => {
    if (needsForm) { setDialog(true); return; }
    try {
      const run = await api(`/api/dags/${enc(dag.dag_id)}/runs`, { method: "POST", body: {} });
      pushToast(triggeredText(dag, run));
      navigate(runHref(run.run_id));
    } catch (e) { pushToast(`Trigger failed: ${e.message}`, true); }
  };
  return html`<span class="row" style="flex-wrap:nowrap">
    <button class="primary" onClick=${quick} aria-label=${`Trigger ${dag.dag_id}`} data-action="trigger" title=${dag.paused ? "Paused: a manual run still starts" : undefined}>▶ Trigger</button>
    <button onClick=${() => setDialog(true)} aria-label=${`Trigger ${dag.dag_id} with parameters`} title="Trigger with parameters">⋯</button>
    ${dialog && html`<${TriggerDialog} dag=${dag} onClose=${() => setDialog(false)} />`}
  </span>`;
}

// A DAG that only runs when triggered by hand (pausing it would change nothing).
const manualOnly = (dag) => !(dag.schedules || []).length && !dag.trigger;

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
  if (manualOnly(dag)) return html`<span class="small muted" data-manual-only title="No schedule and no webhook: it runs only when triggered, so there is nothing to pause">manual only</span>`;
  if (!can("operate")) return html`<span class="small muted" data-active-state>${paused ? "Paused" : "Active"}</span>`;
  return html`<label class="switch-label" title=${paused ? "Paused: its schedule and webhooks do not start runs — click to activate" : "Active: its schedule and webhooks start runs — click to pause"}>
    <input type="checkbox" role="switch" class="switch" checked=${!paused} onChange=${toggle}
    aria-label=${`${dag.dag_id} active`} /><span aria-hidden="true">${paused ? "Paused" : "Active"}</span></label>`;
}

function DagTable({ dags, reload }) {
  if (!dags) return html`<p class="muted">Loading…</p>`;
  if (!dags.length) return html`<p class="empty">No DAGs loaded. Put YAML files in the DAG folder.</p>`;
  return html`<div class="tablewrap"><table class="dags stack-sm">
    <thead><tr><th>DAG</th><th>Schedule</th><th>Next run</th><th>Last run</th><th>Active</th>${can("operate") && html`<th>Actions</th>`}</tr></thead>
    <tbody>${dags.map((d) => html`<tr key=${d.dag_id} data-dag=${d.dag_id}>
      <td class="card-title"><${Link} href=${dagHref(d.dag_id)}><strong>${d.dag_id}</strong></${Link}> <${DigestMismatch} dag=${d} />
        <div class="muted small trunc" title=${d.description}>${d.description}</div>
        ${(d.tags || []).length > 0 && html`<div class="row tags">${d.tags.map((t) => html`<span class="tag">${t}</span>`)}</div>`}</td>
      <td data-label="Schedule">${d.paused ? html`<span class="badge st-queued">paused</span> ` : ""}<span title=${d.schedule}>${d.schedule_description || d.schedule}</span></td>
      <td class="small" data-label="Next run">${d.paused ? "—" : fmtTime(d.next_run_at)}</td>
      <td data-label="Last run">${d.last_run ? html`<${Link} href=${runHref(d.last_run.run_id)}><${StatusBadge} status=${d.last_run.status} /></${Link}>` : html`<span class="muted">—</span>`}</td>
      <td data-label="Active"><${PauseSwitch} dag=${d} onChange=${reload} /></td>
      ${can("operate") && html`<td class="card-actions"><${TriggerButtons} dag=${d} /></td>`}</tr>`)}</tbody></table></div>`;
}

function retryRun(run, after) {
  return api(`/api/runs/${enc(run.run_id)}/retry`, { method: "POST" })
    .then(() => { pushToast(`Run ${run.run_id}: failed tasks requeued`); after?.(); })
    .catch((e) => pushToast(`Retry failed: ${e.message}`, true));
}

function killRun(run, after) {
  return api(`/api/runs/${enc(run.run_id)}/kill`, { method: "POST" })
    .then(() => { pushToast(`Run ${run.run_id} killed`); after?.(); })
    .catch((e) => pushToast(`Kill failed: ${e.message}`, true));
}

function RunsTable({ dagId, limit = 20, showFilters = true, dags }) {
  // filters and page live in the query string (reload, Back and a pasted link restore them)
  const [query, setQuery] = useQuery();
  const filters = {
    dag_id: dagId || query.get("dag_id") || "",
    status: query.get("status") || "",
    trigger: query.get("trigger") || "",
    waiting: showFilters && query.get("waiting") === "approval" ? "approval" : "",
  };
  const page = Math.max(1, Number(query.get("page")) || 1);
  const setPage = (p) => setQuery({ page: p === 1 ? null : p });
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => {
    const q = new URLSearchParams({ page, limit });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    try { setData(await api(`/api/runs?${q}`)); setError(null); } catch (e) { setError(e); }
  };
  const anyRunning = data?.data.some((r) => !TERMINAL_RUN.has(r.status));
  usePoll(load, anyRunning ? 2000 : 5000, [page, filters.dag_id, filters.status, filters.trigger, filters.waiting, anyRunning]);
  const now = useNow(anyRunning);
  const set = (k) => (e) => setQuery({ [k]: e.target.value, page: null });
  const setWaiting = (e) => setQuery({ waiting: e.target.checked ? "approval" : null, page: null });
  const pages = data ? Math.max(1, Math.ceil(data.total / limit)) : 1;
  return html`<div>
    ${showFilters && html`<div class="row" style="margin-bottom:8px">
      ${!dagId && html`<label class="small">DAG <select onChange=${set("dag_id")} value=${filters.dag_id} aria-label="Filter by DAG">
        <option value="">all</option>${(dags || []).map((d) => html`<option value=${d.dag_id}>${d.dag_id}</option>`)}</select></label>`}
      <label class="small">Status <select onChange=${set("status")} value=${filters.status} aria-label="Filter by status">
        <option value="">all</option>${RUN_STATUSES.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
      <label class="small">Trigger <select onChange=${set("trigger")} value=${filters.trigger} aria-label="Filter by trigger">
        <option value="">all</option>${TRIGGERS.map((s) => html`<option value=${s}>${s}</option>`)}</select></label>
      <label class="small check-filter"><input type="checkbox" checked=${filters.waiting === "approval"} onChange=${setWaiting} data-filter="waiting-approval" /> Waiting for approval</label>
    </div>`}
    <${ErrorLine} error=${error} />
    <div class="tablewrap"><table class="runs">
      <thead><tr><th>Run</th>${!dagId && html`<th>DAG</th>`}<th>Status</th><th class="hide-sm">Execution date</th><th>Trigger</th><th class="num">Elapsed</th><th><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${data && data.data.map((r) => html`<tr key=${r.run_id} data-run=${r.run_id}>
        <td class="mono trunc"><${Link} href=${runHref(r.run_id)} title=${r.run_id}>${r.run_id}</${Link}></td>
        ${!dagId && html`<td><${Link} href=${dagHref(r.dag_id)}>${r.dag_id}</${Link}></td>`}
        <td><${StatusBadge} status=${r.status} /> <${WarningBadge} run=${r} />${r.task_counts?.waiting > 0 && html` <span class="badge st-waiting" data-waiting-count title="tasks waiting (an approval, an event or a child run)">${r.task_counts.waiting} waiting</span>`}</td>
        <td class="hide-sm small">${fmtTime(r.execution_date)}</td>
        <td><${TriggerBadge} trigger=${r.trigger} /></td>
        <td class="num">${r.started_at || TERMINAL_RUN.has(r.status) ? fmtDur(elapsed(r, now)) : html`<span class="muted small" data-not-started>not started</span>`}</td>
        <td>${(r.status === "running" || r.status === "queued") && can("operate") ? html`<${KillButton} what="run" name=${r.run_id} message=${KILL_RUN_MESSAGE} onKill=${() => killRun(r, load)} action="kill-run" />` : ""}</td>
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
    const [d, e] = await Promise.all([api("/api/dags"), seesEveryDag() ? api("/api/dags/errors") : {}]);
    setDags(d); setErrors(e);
  };
  usePoll(load, 10000, []);
  return [dags, errors, load];
}

// ------------------------------------------------------------------ dashboard

function Dashboard() {
  const [stats, setStats] = useState(null);
  const [dags, errors, reload] = useDags();
  usePoll(async () => { if (seesEveryDag()) setStats(await api("/api/stats")); }, 3000, []);
  useEffect(() => { document.title = "Nagare | Dashboard"; }, []);
  const card = (label, value, extra = "", alert = false, href = "/runs") => html`<${StatCard} label=${label} value=${value} extra=${extra} alert=${alert} href=${href} />`;
  return html`<main>
    <h1>Dashboard</h1>
    ${seesEveryDag() && html`<div class="cards">
      ${card("Active runs", stats?.active_runs, stats ? `${stats.running_tasks} tasks running, ${stats.queued_tasks} queued` : "", false, "/runs?status=running")}
      ${card("Failed runs (24 h)", stats?.failed_runs_24h, "", stats?.failed_runs_24h > 0, "/runs?status=failed")}
      ${card("Total runs", stats?.total_runs)}
      ${card("Loaded DAGs", stats?.loaded_dags, stats?.dag_errors ? `${stats.dag_errors} with errors` : "", stats?.dag_errors > 0, "/dags")}
    </div>`}
    <${DagErrors} errors=${errors} />
    <section class="panel"><h2>DAGs</h2><${DagTable} dags=${dags} reload=${reload} /></section>
    <section class="panel"><div class="row"><h2>Recent runs</h2><span class="spacer"></span><${Link} href="/runs">All runs ›</${Link}></div>
      <${RecentRuns} killRun=${killRun} retryRun=${retryRun} /></section>
  </main>`;
}

function DagList() {
  const [dags, errors, reload] = useDags();
  const [edits, setEdits] = useState(false); // allow_dag_edits: the server says (GET /api/stats)
  useEffect(() => { if (can("edit")) api("/api/stats").then((s) => setEdits(s.dag_edits !== false)).catch(() => setEdits(false)); }, []);
  const [query, setQuery] = useQuery();
  const chosen = query.getAll("tag");
  const setChosen = (tags) => setQuery({ tag: tags });
  useEffect(() => { document.title = "Nagare | DAGs"; }, []);
  const tags = useMemo(() => [...new Set((dags || []).flatMap((d) => d.tags || []))].sort(), [dags]);
  const toggleTag = (tag) => {
    const next = chosen.includes(tag) ? chosen.filter((t) => t !== tag) : [...chosen, tag];
    setChosen(next);
  };
  // a DAG is shown when it has any of the chosen tags (as Airflow's tag filter)
  const shown = dags && (chosen.length ? dags.filter((d) => (d.tags || []).some((t) => chosen.includes(t))) : dags);
  return html`<main><h1>DAGs <span class="spacer"></span>${edits && can("edit") && html`<${Link} href=${NEW_DAG_HREF} class="btn" data-new-dag>New DAG</${Link}>`}</h1><${GitSyncStatus} onCommit=${reload} /><${DagErrors} errors=${errors} />
    ${tags.length > 0 && html`<div class="row tagfilter" role="group" aria-label="Filter by tag">
      <span class="small muted">Tags</span>
      ${tags.map((t) => html`<button type="button" class="chip" aria-pressed=${chosen.includes(t) ? "true" : "false"} data-tag=${t} onClick=${() => toggleTag(t)}>${t}</button>`)}
      ${chosen.length > 0 && html`<button type="button" class="link" onClick=${() => setChosen([])}>Clear</button>`}</div>`}
    <section class="panel"><${DagTable} dags=${shown} reload=${reload} /></section></main>`;
}

function RunsPage() {
  const [dags] = useDags();
  return html`<${RunsListPage} dags=${dags} killRun=${killRun} retryRun=${retryRun} />`;
}

// ------------------------------------------------------------------ graph (layered layout, SVG)

const STATUS_VAR = (s) => `var(--${s === "up_for_retry" ? "retry" : s === "upstream_failed" ? "upstream" : s || "pending"})`;
// the graph's colour of a task: an allowed failure is drawn as a warning, not as a failure
const shownStatus = (t) => (t.allowed_failure && t.status === "failed" ? "allowed" : t.status);
// a map child's status as a glyph next to its item (not by colour alone)
const CHILD_GLYPH = { success: "✓", failed: "✕", upstream_failed: "✕", cancelled: "■", skipped: "↷", queued: "…", pending: "·", up_for_retry: "↻", waiting: "⏸", running: "▶" };
const FAN_CAP = 12; // map children drawn one by one; the rest become one "+N more" node
const FAN_FIRST = new Set(["failed", "up_for_retry", "running", "upstream_failed", "cancelled"]);

// weight(id): how many columns a task's dependents sit after it (2 when a fan-out sits between).
function layers(tasks, weight = () => 1) {
  const deps = new Map(tasks.map((t) => [t.task_id, [...new Set([...(t.depends_on || []), ...(t.map_over ? [t.map_over] : [])])]]));
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const ds = (deps.get(id) || []).filter((d) => deps.has(d));
    const v = ds.length ? Math.max(...ds.map((d) => visit(d, seen) + weight(d))) : 0;
    depth.set(id, v);
    return v;
  };
  tasks.forEach((t) => visit(t.task_id));
  return { deps, depth };
}

// The drawn children of a map: failing/running ones first, then by index, at most FAN_CAP; in index order.
function fanChildren(kids) {
  if (kids.length <= FAN_CAP) return { shown: kids, more: 0 };
  const pick = [];
  for (const k of kids) if (FAN_FIRST.has(k.status) && pick.length < FAN_CAP) pick.push(k);
  for (const k of kids) { if (pick.length >= FAN_CAP) break; if (!pick.includes(k)) pick.push(k); }
  pick.sort((a, b) => a.map_index - b.map_index);
  return { shown: pick, more: kids.length - pick.length };
}

// Positions of the task nodes and of drawn map children. fans: base task_id -> [child task rows].
function graphLayout(tasks, fans) {
  const fanned = (id) => (fans && fans[id] && fans[id].length ? fans[id] : null);
  const { deps, depth } = layers(tasks, (id) => (fanned(id) ? 2 : 1));
  const W = 150, H = 40, CW = 118, CH = 24, GX = 46, GY = 20, CGY = 6;
  const cols = [];
  const put = (d, item) => (cols[d] = cols[d] || []).push(item);
  tasks.forEach((t) => {
    put(depth.get(t.task_id), { kind: "task", id: t.task_id, t, w: W, h: H, gap: GY });
    const kids = fanned(t.task_id);
    if (kids) {
      const { shown, more } = fanChildren(kids);
      shown.forEach((k) => put(depth.get(t.task_id) + 1, { kind: "child", id: k.task_id, k, base: t.task_id, w: CW, h: CH, gap: CGY }));
      if (more) put(depth.get(t.task_id) + 1, { kind: "more", id: `${t.task_id}+more`, base: t.task_id, more, kids, w: CW, h: CH, gap: CGY });
    }
  });
  const pos = new Map();
  let height = 0;
  for (let ci = 0; ci < cols.length; ci++) {
    let y = 10;
    for (const it of cols[ci] || []) {
      it.x = 10 + ci * (W + GX) + (W - it.w) / 2;
      it.y = y;
      pos.set(it.id, it);
      y += it.h + it.gap;
    }
    height = Math.max(height, y);
  }
  const width = 20 + cols.length * (W + GX) - GX;
  // a flat graph gets some room above and below, so zooming in has space to show
  const MIN_H = 150;
  if (height + 8 < MIN_H) { const dy = (MIN_H - height - 8) / 2; for (const it of pos.values()) it.y += dy; }
  height = Math.max(height + 8, MIN_H);
  // edges [fromId, toId]: a fanned map feeds each child, and each child feeds the map's dependents
  const edges = [];
  const fanOut = new Map();
  for (const col of cols) for (const it of col || []) if (it.kind !== "task") (fanOut.get(it.base) || fanOut.set(it.base, []).get(it.base)).push(it.id);
  tasks.forEach((t) => (deps.get(t.task_id) || []).forEach((d) => {
    if (!pos.has(d)) return;
    if (fanOut.has(d)) fanOut.get(d).forEach((c) => edges.push([c, t.task_id, d]));
    else edges.push([d, t.task_id, d]);
  }));
  for (const [base, ids] of fanOut) ids.forEach((c) => edges.push([base, c, base]));
  return { pos, width, height, edges };
}

const clampScale = (k) => Math.min(4, Math.max(0.2, k));

// Pan and zoom of an SVG by its viewBox; view null = fit the whole content.
function usePanZoom(width, height) {
  const [view, setView] = useState(null);
  const svg = useRef(null);
  const drag = useRef(null);
  const moved = useRef(false);
  const cur = view || { x: 0, y: 0, w: width, h: height };
  const scale = width / cur.w;
  const zoomAt = (f, px, py) => {
    const k = clampScale(scale * f);
    const g = k / scale; // effective factor after clamping
    const cx = px ?? cur.x + cur.w / 2, cy = py ?? cur.y + cur.h / 2;
    setView({ x: cx - (cx - cur.x) / g, y: cy - (cy - cur.y) / g, w: cur.w / g, h: cur.h / g });
  };
  const toUser = (e) => {
    const m = svg.current?.getScreenCTM();
    if (!m) return [undefined, undefined];
    const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(m.inverse());
    return [p.x, p.y];
  };
  const onWheel = (e) => {
    // Ctrl/⌘ + wheel (and a trackpad pinch) zooms; a plain wheel keeps scrolling the page
    if (!e.deltaY || !(e.ctrlKey || e.metaKey)) return;
    e.preventDefault();
    zoomAt(Math.exp(-e.deltaY * 0.0015), ...toUser(e));
  };
  const onPointerDown = (e) => {
    if (e.button !== 0 || e.target.closest?.(".graph-controls")) return;
    const m = svg.current?.getScreenCTM();
    drag.current = { id: e.pointerId, sx: e.clientX, sy: e.clientY, start: cur, k: m ? m.a : 1 };
    moved.current = false;
  };
  const onPointerMove = (e) => {
    const d = drag.current;
    if (!d || d.id !== e.pointerId) return;
    const dx = e.clientX - d.sx, dy = e.clientY - d.sy;
    if (!moved.current && Math.abs(dx) + Math.abs(dy) < 4) return;
    if (!moved.current) { moved.current = true; try { svg.current.setPointerCapture(e.pointerId); } catch { /* gone */ } }
    setView({ ...d.start, x: d.start.x - dx / d.k, y: d.start.y - dy / d.k });
  };
  const onPointerUp = (e) => { if (drag.current?.id === e.pointerId) drag.current = null; };
  const onKeyDown = (e) => {
    const step = 40 / scale;
    const pan = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
    if (e.key === "+" || e.key === "=") zoomAt(1.25);
    else if (e.key === "-" || e.key === "_") zoomAt(0.8);
    else if (e.key === "0") setView(null);
    else if (pan) setView({ ...cur, x: cur.x + pan[0], y: cur.y + pan[1] });
    else return;
    e.preventDefault();
  };
  return {
    svg, scale, fit: !view, viewBox: `${cur.x} ${cur.y} ${cur.w} ${cur.h}`,
    wasDrag: () => moved.current,
    zoomIn: () => zoomAt(1.25), zoomOut: () => zoomAt(0.8), reset: () => setView(null),
    handlers: { onWheel, onPointerDown, onPointerMove, onPointerUp, onPointerCancel: onPointerUp, onKeyDown },
  };
}

function DagGraph({ tasks, states, fans, onSelect }) {
  // tasks: DAG task definitions; states: task_id -> {status, label}; fans: map task_id -> child task rows
  const { pos, width, height, edges } = useMemo(() => graphLayout(tasks, fans), [tasks, fans]);
  const pz = usePanZoom(width, height);
  const select = onSelect && ((id) => { if (!pz.wasDrag()) onSelect(id); });
  const statusOf = (id) => {
    const it = pos.get(id);
    return it.kind === "child" ? it.k.status : it.kind === "more" ? null : states?.[id]?.status;
  };
  const edgeEls = edges.map(([from, to, src]) => {
    const a = pos.get(from), b = pos.get(to);
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2, mx = (x1 + x2) / 2;
    const st = a.kind === "task" ? states?.[src]?.status : statusOf(from);
    return html`<path key=${from + ">" + to} class="edge" d=${`M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`}
      style=${st ? `stroke:${STATUS_VAR(st)}` : ""} marker-end="url(#arrow)" />`;
  });
  const nodes = [...pos.values()].map((it) => {
    if (it.kind === "child") {
      const k = it.k;
      return html`<g key=${it.id} class=${"node child" + (select ? " clickable" : "")}
        data-node=${k.task_id} data-status=${k.status} data-map-child=${it.base}
        transform=${`translate(${it.x},${it.y})`} onClick=${select ? () => select(k.task_id) : undefined}>
        <title>${k.task_id}${k.item != null ? ` (${itemLabel(k.item, 200)})` : ""} — ${k.status.replaceAll("_", " ")}${k.reason ? `\n${k.reason}` : ""}</title>
        <rect width=${it.w} height=${it.h} rx="5" style=${`stroke:${STATUS_VAR(k.status)};fill:color-mix(in srgb, ${STATUS_VAR(k.status)} 14%, var(--panel))`} />
        <text x="8" y="16" class="small-node" data-node-item>${CHILD_GLYPH[k.status] || ""} [${k.map_index}] ${k.item != null ? itemLabel(k.item, 10) : k.status.replaceAll("_", " ")}</text>
        ${k.status === "running" && html`<circle class="activity" cx=${it.w - 8} cy=${it.h / 2} r="3.5" data-activity />`}
      </g>`;
    }
    if (it.kind === "more") {
      const c = counts(it.kids.filter((k) => !pos.has(k.task_id)));
      const summary = Object.entries(c).map(([s, n]) => `${n} ${s.replaceAll("_", " ")}`).join(", ");
      return html`<g key=${it.id} class=${"node more" + (select ? " clickable" : "")} data-node-more=${it.base}
        transform=${`translate(${it.x},${it.y})`} onClick=${select ? () => select(it.base) : undefined}>
        <title>${it.more} more children of ${it.base}: ${summary}</title>
        <rect width=${it.w} height=${it.h} rx="5" style="stroke-dasharray:4 3" />
        <text x="8" y="16" class="small-node">+${it.more} more</text>
      </g>`;
    }
    const t = it.t;
    const s = states?.[t.task_id];
    const color = s ? STATUS_VAR(s.status) : "var(--border)";
    const isMap = t.type === "map";
    const fanned = isMap && fans?.[t.task_id]?.length > 0;
    const label = t.task_id.length > 18 ? t.task_id.slice(0, 17) + "…" : t.task_id;
    const sub = s ? s.label || s.status : isMap ? `⇉ fan-out over ${t.map_over}` : t.type;
    return html`<g key=${it.id} class=${"node" + (select ? " clickable" : "")} data-node=${t.task_id} data-status=${s?.status}
      data-fan-out=${isMap ? (fanned ? "expanded" : "collapsed") : undefined}
      transform=${`translate(${it.x},${it.y})`} onClick=${select ? () => select(t.task_id) : undefined}>
      <title>${t.task_id} (${t.type})${s ? ` — ${s.status}` : ""}${s?.reason ? `\n${s.reason}` : ""}${isMap ? `\nfan-out: one child per item of ${t.map_over}` : ""}${t.command ? `\n${t.command.slice(0, 200)}` : ""}</title>
      ${isMap && !fanned && html`<rect x="6" y="6" width=${it.w} height=${it.h} rx="6" style=${`stroke:${color};opacity:.5`} /><rect x="3" y="3" width=${it.w} height=${it.h} rx="6" style=${`stroke:${color};opacity:.7`} />`}
      <rect width=${it.w} height=${it.h} rx="6" style=${`stroke:${color}` + (isMap ? ";stroke-dasharray:6 2" : "")} />
      <text x="10" y="17">${label}</text>
      <text x="10" y="32" style="fill:var(--muted);font-size:11px">${sub.length > 24 ? sub.slice(0, 23) + "…" : sub}</text>
      ${s?.status === "running" && html`<circle class="activity" cx=${it.w - 10} cy="10" r="4" data-activity />`}
    </g>`;
  });
  const zoomPct = Math.round(pz.scale * 100);
  return html`<div class="graph" role="group" aria-label="DAG graph">
    <div class="graph-controls" role="toolbar" aria-label="Graph zoom">
      <button type="button" onClick=${pz.zoomIn} aria-label="Zoom in" title="Zoom in (+)" disabled=${pz.scale >= 4}>+</button>
      <button type="button" onClick=${pz.zoomOut} aria-label="Zoom out" title="Zoom out (−)" disabled=${pz.scale <= 0.2}>−</button>
      <button type="button" onClick=${pz.reset} aria-label="Fit to view" title="Fit to view (0)" aria-pressed=${pz.fit}>⤢</button>
      <span class="small muted" data-zoom aria-live="polite">${pz.fit ? "fit" : `${zoomPct}%`}</span>
    </div>
    <svg ref=${pz.svg} class=${pz.fit ? "" : "zoomed"} tabindex="0" role="img"
      aria-label="DAG graph: drag to pan, Ctrl + wheel or + and − to zoom, 0 to fit"
      viewBox=${pz.viewBox} preserveAspectRatio="xMidYMid meet" data-scale=${pz.scale.toFixed(3)}
      style=${`width:min(100%, ${width}px);aspect-ratio:${width} / ${height};--graph-min:${Math.round(width * 0.85)}px`} ...${pz.handlers}>
      <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="var(--muted)" /></marker></defs>
      ${edgeEls}
      ${nodes}
    </svg></div>`;
}

function Legend() {
  return html`<div class="legend">${["success", "running", "waiting", "queued", "pending", "failed", "allowed", "up_for_retry", "upstream_failed", "cancelled", "skipped"].map((s) =>
    html`<span><span style=${`display:inline-block;width:10px;height:10px;border-radius:2px;background:${STATUS_VAR(s)}`}></span> ${s === "allowed" ? "failed · allowed" : s.replaceAll("_", " ")}</span>`)}</div>`;
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
  const [query, setQuery] = useDagPageQuery();
  const tabs = dagTabs();
  const tab = tabs.some(([t]) => t === query.get("tab")) ? query.get("tab") : "graph";
  const setTab = (t) => setQuery({ tab: t === "graph" ? null : t });
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
  useEffect(() => { if (can("source")) api(`/api/dags/${enc(dagId)}/yaml`, { text: true }).then(setYaml).catch(() => setYaml("")); }, [dagId]);
  const fans = useMemo(() => (latest ? mapChildren(latest.tasks) : null), [latest]);
  if (error) return html`<main><h1>${dagId}</h1><${ErrorLine} error=${error} /><p><${Link} href="/dags">All DAGs</${Link}></p></main>`;
  if (!dag) return html`<main><p class="muted">Loading…</p></main>`;
  const states = latest ? runStates(latest.tasks) : null;
  const live = latest && !TERMINAL_RUN.has(latest.run.status);
  // a click on a task opens it in the latest run (defect 10: the graph ignored clicks)
  const openTask = (id) => (latest ? navigate(runHref(latest.run.run_id, id)) : pushToast(`${dag.dag_id} has no run yet: trigger one to see its tasks run`));
  const wide = tab !== "graph" && tab !== "yaml";
  const panel = {
    graph: () => html`<${DagGraph} tasks=${dag.tasks} states=${states} fans=${fans} onSelect=${openTask} />
      ${latest ? html`<p class="small muted colours-from">Colours from <${Link} href=${runHref(latest.run.run_id)}>${latest.run.run_id}</${Link}>; click a task to open it there</p>` : html`<p class="small muted">No run yet</p>`}<${Legend} />`,
    grid: () => html`<${DagGrid} dagId=${dagId} size=${Number(query.get("runs")) || 25} onSize=${(n) => setQuery({ runs: n === 25 ? null : n }, true)} />`,
    calendar: () => html`<${DagCalendar} dagId=${dagId} />`,
    versions: () => html`<${DagVersions} dagId=${dagId} from=${query.get("from")} to=${query.get("to")} onPick=${(from, to) => setQuery({ from, to }, true)} />`,
    yaml: () => (yaml == null ? html`<p class="muted">Loading…</p>` : yaml ? html`<${YamlView} text=${yaml} />` : html`<p class="muted">YAML source not available.</p>`),
  }[tab];
  const tabKeys = (e) => {
    const i = tabs.findIndex(([t]) => t === tab);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (next == null) return;
    e.preventDefault();
    const [t] = tabs[(next + tabs.length) % tabs.length];
    setTab(t);
    setTimeout(() => document.getElementById(`dag-tab-${t}`)?.focus(), 0);
  };
  return html`<main>
    <h1>${dag.dag_id} <span class="badge muted">${dag.schedule_description || dag.schedule}</span>
      ${dag.paused && html`<span class="badge st-queued">paused</span>`}
      ${live && html`<span class="badge st-running pulse">live</span>`}
      <span class="spacer"></span><${PauseSwitch} dag=${dag} />${can("operate") && html` <${TriggerButtons} dag=${dag} /> <${BackfillButton} dag=${dag} />`}</h1>
    <p class="muted">${dag.description}</p>
    <p class="small muted">File ${dag.file}${can("edit") && html` · <${Link} href=${editorHref(dag.file)} data-edit-file>Edit</${Link}>`}${dag.next_run_at && !dag.paused ? ` · next run ${fmtTime(dag.next_run_at)}` : ""}${dag.trigger ? ` · webhook ${dag.trigger.method || ""} ${dag.trigger.path || ""}` : ""}</p>
    <div class=${wide ? "" : "grid2"}>
      <section class="panel"><div class="tabs" role="tablist" aria-label="DAG views" onKeyDown=${tabKeys}>
          ${tabs.map(([t, name]) => html`<button key=${t} role="tab" id=${`dag-tab-${t}`} aria-selected=${tab === t} aria-controls="dag-tabpanel"
            tabindex=${tab === t ? 0 : -1} onClick=${() => setTab(t)}>${name}</button>`)}</div>
        <div role="tabpanel" id="dag-tabpanel" aria-labelledby=${`dag-tab-${tab}`}>${panel()}</div>
      </section>
      <section class="panel"><h2>Run history</h2><${RunsTable} dagId=${dagId} limit=${10} /></section>
    </div></main>`;
}

const DAG_TABS = [["graph", "Graph"], ["grid", "Grid"], ["calendar", "Calendar"], ["versions", "Versions"], ["yaml", "YAML"]];
// the YAML tab needs the permission to read DAG sources
const dagTabs = () => DAG_TABS.filter(([t]) => t !== "yaml" || can("source"));

// base task_id -> its map children (task rows), for the fan-out in the graph.
function mapChildren(tasks) {
  const out = {};
  for (const t of tasks) if (t.map_index != null) (out[t.base_task_id] = out[t.base_task_id] || []).push(t);
  for (const ks of Object.values(out)) ks.sort((a, b) => a.map_index - b.map_index);
  return out;
}

// task_id -> {status,label}; map parents summarise their children.
function runStates(tasks) {
  const out = {};
  const kids = {};
  for (const t of tasks) {
    if (t.map_index != null) (kids[t.base_task_id] = kids[t.base_task_id] || []).push(t);
    else out[t.task_id] = { status: shownStatus(t), reason: t.reason, label: `${t.allowed_failure && t.status === "failed" ? "failed · allowed" : t.status}${t.attempt > 1 ? ` #${t.attempt}` : ""}${t.metrics ? " · " + fmtDur(t.metrics.duration_ms) : ""}` };
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
  for (const t of list) { const s = shownStatus(t); c[s] = (c[s] || 0) + 1; }
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
  const finished = run && TERMINAL_RUN.has(run.status) && !run.handlers_running && tasks && tasks.every((t) => TERMINAL_TASK.has(t.status) || t.status === "pending");
  const unknown = useRef(false); // answered 404: an unknown run is not asked for again
  const load = useCallback(async () => {
    if (unknown.current) return;
    try {
      const [r, ts] = await Promise.all([api(`/api/runs/${enc(runId)}`), api(`/api/runs/${enc(runId)}/tasks`)]);
      setRun(r); setTasks(ts); setError(null);
      if (auto.current) {
        // until the user opens or closes a task, logs of running and failed tasks open by themselves
        const want = ts.filter((t) => t.map_index == null && ["running", "failed", "up_for_retry"].includes(t.status)).slice(0, 3);
        if (want.length) setOpen((o) => (want.every((t) => o.has(t.task_id)) ? o : new Set([...o, ...want.map((t) => t.task_id)])));
      }
    } catch (e) { unknown.current = e.status === 404; setError(e); }
  }, [runId]);
  const gone = !run && error?.status === 404; // an unknown run: no point asking again
  usePoll(load, finished || gone ? 0 : 800, [runId, finished, gone]);
  // the graph of the version the run followed (the DAG may have changed since), else the loaded one
  useEffect(() => {
    if (run && !dag) (can("source") ? api(`/api/dags/${enc(run.dag_id)}/versions/${enc(run.dag_version)}`) : Promise.reject(null))
      .catch(() => api(`/api/dags/${enc(run.dag_id)}`)).then(setDag).catch(() => setDag({ tasks: [] }));
  }, [run?.dag_id]);
  useEffect(() => { document.title = `Nagare | ${runId}`; }, [runId]);
  const now = useNow(run && !TERMINAL_RUN.has(run.status));
  const children = useMemo(() => (tasks ? mapChildren(tasks) : {}), [tasks]);
  const states = useMemo(() => (tasks ? runStates(tasks) : null), [tasks]);
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
  const top = tasks.filter((t) => t.map_index == null && !HANDLER_IDS.has(t.task_id));
  const handlers = tasks.filter((t) => HANDLER_IDS.has(t.task_id));
  const selectNode = (id) => {
    const child = tasks.find((t) => t.task_id === id && t.map_index != null);
    if (child && !openGroups.has(child.base_task_id)) setOpenGroups(new Set([...openGroups, child.base_task_id]));
    if (!open.has(id)) toggle(id);
    setTimeout(() => document.getElementById(`task-${id}`)?.scrollIntoView({ block: "center" }), 50);
  };
  const running = !TERMINAL_RUN.has(run.status);
  return html`<main>
    <h1><span class="mono">${run.run_id}</span> <${StatusBadge} status=${run.status} /> <${WarningBadge} run=${run} />
      ${running && can("operate") && html`<${KillButton} what="run" name=${run.run_id} message=${KILL_RUN_MESSAGE} onKill=${() => killRun(run, load)} action="kill-run" />`}
      <span class="spacer"></span>
      ${!running && can("operate") && top.some((t) => RETRIED_RUN.has(t.status)) && html`<button onClick=${() => retryRun(run, load)} data-action="retry-run" title="Run every failed, upstream failed and cancelled task again, in this run">↻ Retry failed</button>`}
      <button onClick=${load}>↻ Refresh</button></h1>
    ${tasks.filter((t) => t.status === "waiting" && t.waiting_for?.type === "approval").map((t) => html`<${ApprovalBanner} key=${t.id} run=${run} task=${t} reload=${load} />`)}
    ${run.reason && html`<p class="reason" data-reason data-run-reason>${run.status === "skipped" ? "Skipped" : run.status === "cancelled" ? "Cancelled" : "Ended"}: ${run.reason}</p>`}
    <div class="cards">
      <div class="card"><div class="label">DAG</div><div><${Link} href=${dagHref(run.dag_id)}><strong>${run.dag_id}</strong></${Link}></div><div class="sub"><${TriggerBadge} trigger=${run.trigger} />
        ${run.dag_version && html` <${Link} href=${`${dagHref(run.dag_id)}&tab=versions&to=${enc(run.dag_version)}`} class="mono" data-run-version title=${`the version of ${run.dag_id} this run followed${dag && dag.current === false ? " (changed since)" : ""}`}>version ${run.dag_version.slice(0, 8)}</${Link}>`}
        ${dag && dag.current === false && html` <span class="small" data-version-changed>(changed since)</span>`}</div></div>
      ${run.parent && html`<${ParentCard} parent=${run.parent} />`}
      <div class="card"><div class="label">Started</div><div data-started>${run.started_at ? fmtTime(run.started_at) : "not started"}</div><div class="sub">${run.started_at ? "" : `created ${fmtTime(run.created_at)} · `}execution date ${fmtTime(run.execution_date)}</div></div>
      <div class="card"><div class="label">Duration</div><div class="value" data-duration>${run.started_at ? fmtDur(elapsed(run, now)) : "—"}</div></div>
      <div class="card"><div class="label">Tasks</div><div class="row small">${Object.entries(c).map(([s, n]) => html`<span class=${`badge st-${s}`}>${n} ${s === "allowed" ? "failed · allowed" : s.replaceAll("_", " ")}</span>`)}</div>
        <div class="progress" style="margin-top:8px" title=${`${done} of ${total} tasks finished`}><div class=${run.status === "cancelled" || (!c.failed && !c.upstream_failed && c.cancelled) ? "bar-cancelled" : c.failed || c.upstream_failed ? "bar-fail" : ""} data-progress style=${`width:${total ? (100 * done) / total : 0}%`}></div></div>
        <div class="sub">${done} of ${total} tasks finished</div></div>
    </div>
    ${Object.keys(run.params || {}).length > 0
      ? html`<section class="panel"><h2>Parameters</h2><pre class="code" data-params>${JSON.stringify(run.params, null, 2)}</pre></section>`
      : Object.keys(run.conf || {}).length > 0 && html`<section class="panel"><h2>Parameters</h2><pre class="code">${JSON.stringify(run.conf, null, 2)}</pre></section>`}
    ${run.outputs && html`<section class="panel" data-run-outputs><h2>Returns</h2>
      <p class="small muted">Its DAG's outputs, rendered when the run succeeded${run.parent ? ": the outputs of the step that called it" : ""}.</p>
      <${Outputs} task=${{ task_id: `run ${run.run_id}`, outputs: run.outputs }} /></section>`}
    <div class="grid2">
      <section class="panel"><h2>Graph</h2>${dag ? html`<${DagGraph} tasks=${dag.tasks} states=${states} fans=${children} onSelect=${selectNode} /><${Legend} />` : html`<p class="muted">Loading…</p>`}</section>
      <section class="panel"><h2>Timeline</h2><${Timeline} run=${run} tasks=${top} children=${children} now=${now} /></section>
    </div>
    <section class="panel"><h2>Tasks</h2>
      ${top.map((t) => html`<${TaskRow} key=${t.task_id} run=${run} task=${t} tasks=${tasks} open=${open.has(t.task_id)} onToggle=${() => toggle(t.task_id)} reload=${load} now=${now} />
        ${children[t.task_id] && html`<${MapGroup} run=${run} parent=${t} kids=${children[t.task_id]} expanded=${openGroups.has(t.task_id)}
          onExpand=${() => { const n = new Set(openGroups); n.has(t.task_id) ? n.delete(t.task_id) : n.add(t.task_id); setOpenGroups(n); }}
          open=${open} toggle=${toggle} reload=${load} now=${now} />`}`)}
    </section>
    ${handlers.length > 0 && html`<section class="panel" data-handlers><h2>Handlers ${run.handlers_running ? html`<span class="badge st-running pulse">running</span>` : ""}</h2>
      <p class="small muted">Run after the run ended ${run.status}; they never change its status.</p>
      ${handlers.map((t) => html`<${TaskRow} key=${t.task_id} run=${run} task=${t} tasks=${tasks} open=${open.has(t.task_id)} onToggle=${() => toggle(t.task_id)} reload=${load} now=${now} />`)}
    </section>`}
  </main>`;
}

// A child run (started by a `dag` step): the step and the run that called it.
function ParentCard({ parent }) {
  return html`<div class="card" data-parent-run><div class="label">Called by</div>
    <div class="trunc"><${Link} href=${runHref(parent.run_id, parent.task_id)} class="mono" title=${`${parent.task_id} in ${parent.run_id}`}>${parent.task_id}</${Link}></div>
    <div class="sub trunc mono" title=${parent.run_id}>in ${parent.run_id}</div></div>`;
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

// A task waiting for someone: its message, who may answer, and Approve / Reject with a comment.
const USER_KEY = "nagare_user";
const storedUser = () => { try { return localStorage.getItem(USER_KEY) || ""; } catch { return ""; } };

function ApprovalBanner({ run, task, reload }) {
  const w = task.waiting_for || {};
  const approvers = w.approvers || [];
  const [by, setBy] = useState(() => storedUser() || (approvers.length === 1 ? approvers[0] : ""));
  const [comment, setComment] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const id = `approval-${task.id}`;
  // a signed-in user or a created key answers as itself (the server ignores a typed name)
  const signedAs = me && (me.kind === "session" || me.kind === "key") ? me.name : "";
  const answer = async (verb) => {
    setBusy(true); setError(null);
    try {
      await api(`${taskPath(run.run_id, task.task_id)}/${verb}`, { method: "POST", body: { by: by.trim(), comment } });
      try { if (by.trim()) localStorage.setItem(USER_KEY, by.trim()); } catch { /* private mode */ }
      pushToast(`Task ${task.task_id} ${verb === "approve" ? "approved" : "rejected"}`);
      reload();
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  return html`<section class="approval" role="region" aria-labelledby=${`${id}-title`} data-approval=${task.task_id}>
    <h2 id=${`${id}-title`}>Waiting for approval · <span class="mono">${task.task_id}</span></h2>
    <p class="approval-message" data-approval-message>${w.message || "Approve to continue this run, or reject to fail the task."}</p>
    <p class="small muted">${approvers.length ? `Only ${approvers.join(", ")} may answer.` : "Anyone with access may answer."}${w.until ? ` Fails if unanswered by ${fmtTime(w.until)}.` : ""}</p>
    ${can("operate") ? html`<div class="approval-form">
      ${signedAs ? html`<p class="small" data-approval-as>You answer as <strong>${signedAs}</strong>.</p>`
        : html`<label><span>Your name${approvers.length ? "" : " (optional)"}</span><input value=${by} onInput=${(e) => setBy(e.target.value)} autocomplete="username" data-approval-by /></label>`}
      <label class="grow"><span>Comment (optional)</span><input value=${comment} onInput=${(e) => setComment(e.target.value)} data-approval-comment /></label>
      <div class="row">
        <button class="approve" disabled=${busy} onClick=${() => answer("approve")} data-action="approve">✓ Approve</button>
        <button class="danger" disabled=${busy} onClick=${() => answer("reject")} data-action="reject">✕ Reject</button>
      </div>
    </div>` : html`<p class="small muted" data-no-answer>Your role may not answer it.</p>`}
    <${ErrorLine} error=${error} />
  </section>`;
}

function TaskRow({ run, task, tasks, open, onToggle, reload, now }) {
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
      ${task.map_index != null && task.item != null && html`<span class="map-item mono" title=${itemText(task.item)} data-map-item>${itemLabel(task.item)}</span>`}
      <${StatusBadge} status=${task.status} allowed=${task.allowed_failure} />
      ${task.attempt > 1 && html`<span class="badge muted">attempt ${task.attempt}/${task.max_attempts}</span>`}
      ${dur != null && html`<span class="badge muted" title="duration">${fmtDur(dur)}</span>`}
      ${m && m.peak_memory_bytes > 0 && html`<span class="badge muted" title="peak memory">${fmtBytes(m.peak_memory_bytes)}</span>`}
      ${m && html`<span class="badge muted hide-sm" title="CPU time">CPU ${fmtDur(m.cpu_user_ms + m.cpu_system_ms)}</span>`}
      ${task.exit_code != null && task.status !== "skipped" && html`<span class=${`badge ${task.exit_code === 0 ? "st-success" : task.allowed_failure ? "st-allowed" : "st-failed"}`}>exit ${task.exit_code}</span>`}
      ${task.timed_out && html`<span class="badge st-failed">timed out</span>`}
      ${task.worker && task.worker !== "local" && task.worker !== "engine" && html`<span class="badge muted">${task.worker}</span>`}
      ${task.status === "waiting" && task.waiting_for?.event && html`<span class="badge st-waiting mono" title="the event it waits for (POST /api/events/NAME or nagare emit NAME)" data-waiting-event>event ${task.waiting_for.event}</span>`}
      ${task.child_run_id && html`<${Link} href=${runHref(task.child_run_id)} class="badge childrun" data-child-run=${task.child_run_id} title=${`Child run ${task.child_run_id}`} aria-label=${`Child run of ${task.task_id}`}>child run ↗</${Link}>`}
      ${outputCount(task) > 0 && html`<span class="badge muted" title="outputs published" data-output-count>${outputCount(task)} output${outputCount(task) > 1 ? "s" : ""}</span>`}
      <span class="spacer"></span>
      ${task.message && !task.reason && html`<span class="small muted trunc" title=${task.message}>${task.message}</span>`}
      ${!can("operate") ? "" : task.status === "running" || task.status === "queued" || task.status === "waiting" ? html`<${KillButton} what="task" name=${task.task_id} message=${KILL_TASK_MESSAGE} onKill=${() => act("kill")} action="kill-task" />` : ""}
      ${can("operate") && TERMINAL_TASK.has(task.status) && !isParent && !HANDLER_IDS.has(task.task_id) && run.status !== "skipped" && run.reason !== "superseded" ? html`<button onClick=${() => act("retry")} data-action="retry" aria-label=${`Retry task ${task.task_id}`}>↻ Retry</button>` : ""}
    </div>
    ${task.reason && html`<p class="reason" data-reason>${task.status === "waiting" || task.status === "queued" ? "" : task.status === "skipped" ? "skipped: " : "not run: "}${task.reason}</p>`}
    ${open && html`<div class="body"><${TaskDetails} run=${run} task=${task} tasks=${tasks} /><${Outputs} task=${task} /><${TaskLogs} run=${run} task=${task} /></div>`}
  </div>`;
}

// ------------------------------------------------------------------ outputs

const outputCount = (task) => Object.keys(task.outputs || {}).length;
const OUTPUT_SHOWN = 4000; // characters of one value shown before "Show all"

function OutputValue({ value }) {
  const [all, setAll] = useState(false);
  const compact = typeof value === "string" ? value : JSON.stringify(value);
  const text = compact.length <= 100 || typeof value === "string" ? compact : JSON.stringify(value, null, 2);
  const cut = !all && text.length > OUTPUT_SHOWN;
  return html`<pre class="code">${cut ? text.slice(0, OUTPUT_SHOWN) + "…" : text}</pre>
    ${cut && html`<button class="small" onClick=${() => setAll(true)}>Show all ${text.length.toLocaleString()} characters</button>`}`;
}

// What the task published ($NAGARE_OUTPUT, `output: NAME`); a map parent's values are lists.
function Outputs({ task }) {
  const names = Object.keys(task.outputs || {});
  if (!names.length) return null;
  const list = task.map_index == null && names.some((n) => Array.isArray(task.outputs[n]));
  return html`<section class="outputs" aria-label=${`Outputs of ${task.task_id}`} data-outputs=${task.task_id}>
    <h3>Outputs${list ? html` <span class="small muted">(one value per map child, in index order)</span>` : ""}</h3>
    <div class="tablewrap"><table>
      <thead><tr><th scope="col">Name</th><th scope="col">Value</th></tr></thead>
      <tbody>${names.map((n) => html`<tr data-output=${n}>
        <th scope="row" class="mono name">${n}</th>
        <td><${OutputValue} value=${task.outputs[n]} /></td></tr>`)}</tbody>
    </table></div>
  </section>`;
}

// ------------------------------------------------------------------ logs

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


// ------------------------------------------------------------------ workers

const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) || 0), 0);
const plural = (n, one, many = one + "s") => `${n} ${n === 1 ? one : many}`;

function WorkerStatus({ w }) {
  const st = w.left ? "left" : w.status === "online" ? "online" : "offline";
  const cls = st === "online" ? "st-success" : st === "left" ? "st-cancelled" : "st-failed";
  const why = w.left ? "left the cluster (stopped cleanly)" : st === "offline" ? "no heartbeat within the lease timeout" : "heartbeating";
  return html`<span class=${`badge ${cls}`} data-worker-status=${st} title=${why}>${st}</span>`;
}

function PoolFlag({ p }) {
  if (!p.no_live_worker) return null;
  return p.queued > 0
    ? html`<span class="badge alarm" data-no-live-worker title="This pool has no local slots and no online remote worker: its tasks cannot start">⚠ no live worker — ${plural(p.queued, "task")} waiting</span>`
    : html`<span class="badge warn" data-no-live-worker title="This pool has no local slots and no online remote worker">⚠ no live worker</span>`;
}

function WorkersPage() {
  const [workers, setWorkers] = useState(null);
  const [pools, setPools] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { document.title = "Nagare | Workers"; }, []);
  // usePoll pauses while the tab is hidden and polls at once when it is shown again
  usePoll(async () => {
    try {
      const [w, p] = await Promise.all([api("/api/workers").catch((e) => (e.status === 404 ? [] : Promise.reject(e))), api("/api/pools")]);
      setWorkers(w); setPools(p); setError(null);
    } catch (e) { setError(e); }
  }, 3000, []);
  const now = useNow();
  const ws = workers || [];
  const ps = pools || [];
  const online = ws.filter((w) => w.status === "online" && !w.left);
  const stuck = ps.filter((p) => p.no_live_worker && p.queued > 0);
  return html`<main><h1>Workers</h1><${ErrorLine} error=${error} />
    <div class="cards">
      <div class="card"><div class="label">Remote workers online</div><div class="value" data-stat="workers-online">${workers ? `${online.length} / ${ws.length}` : "—"}</div>
        <div class="sub">${workers ? `${sum(online, (w) => w.max_tasks)} task slots` : ""}</div></div>
      <div class="card"><div class="label">Local slots</div><div class="value">${pools ? sum(ps, (p) => p.local_slots) : "—"}</div><div class="sub">${sum(ps, (p) => p.busy_slots)} busy</div></div>
      <div class="card"><div class="label">Tasks running / queued</div><div class="value">${pools ? `${sum(ps, (p) => p.running)} / ${sum(ps, (p) => p.queued)}` : "—"}</div></div>
      <div class=${"card" + (stuck.length ? " alert" : "")}><div class="label">Pools without a live worker</div>
        <div class="value">${pools ? ps.filter((p) => p.no_live_worker).length : "—"}</div>
        <div class="sub">${stuck.length ? `${plural(sum(stuck, (p) => p.queued), "task")} cannot start` : "nothing waiting on them"}</div></div>
    </div>
    <section class="panel"><h2>Pools</h2><div class="tablewrap"><table>
      <thead><tr><th>Pool</th><th class="num">Local slots</th><th class="num">Remote workers</th><th class="num hide-sm">Remote capacity</th><th class="num hide-sm">Running</th><th class="num">Queued</th><th class="hide-sm"><span class="visually-hidden">Warnings</span></th></tr></thead>
      <tbody>${ps.map((p) => html`<tr key=${p.pool} data-pool=${p.pool} class=${p.no_live_worker ? (p.queued > 0 ? "no-live stuck" : "no-live") : ""}>
        <td class="mono">${p.pool}<span class="cell-sub">${p.remote_only ? "remote only" : "local + remote"}</span>${p.no_live_worker && html`<span class="show-sm"><${PoolFlag} p=${p} /></span>`}</td>
        <td class="num">${p.local_slots ? `${p.busy_slots} / ${p.local_slots}` : "0"}${p.local_slots ? html`<span class="cell-sub">busy / total</span>` : ""}</td>
        <td class="num" data-remote-workers>${p.remote_workers_online ?? 0} / ${p.remote_workers ?? 0}<span class="cell-sub">online / total</span></td>
        <td class="num hide-sm">${p.remote_capacity ?? 0}</td>
        <td class="num hide-sm">${p.running}</td><td class="num">${p.queued}</td>
        <td class="hide-sm"><${PoolFlag} p=${p} /></td></tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Remote workers</h2>
      ${workers && !workers.length ? html`<p class="empty">No remote workers connected. Tasks run on this server's local pools; start <code>nagare worker --join URL</code> to add some.</p>` : html`<div class="tablewrap"><table>
        <thead><tr><th>Worker</th><th class="hide-sm">Host</th><th>Status</th><th>Pools</th><th class="num hide-sm">Running / max</th><th>Last heartbeat</th><th class="hide-sm">Version</th></tr></thead>
        <tbody>${ws.map((w) => html`<tr key=${w.worker_id} data-worker=${w.worker_id}>
          <td class="mono">${w.worker_id}</td><td class="hide-sm">${w.hostname}</td><td><${WorkerStatus} w=${w} /><span class="show-sm cell-sub">${w.running_tasks ?? w.active_tasks ?? 0} / ${w.max_tasks} tasks</span></td>
          <td>${(w.pools || []).map((p) => html`<span class="badge muted mono" data-worker-pool=${p}>${p}</span> `)}</td>
          <td class="num hide-sm" title="tasks held (running, or prefetched and waiting for a slot) / slots" data-worker-load>${w.running_tasks ?? w.active_tasks ?? 0} / ${w.max_tasks}</td>
          <td title=${fmtTime(w.last_heartbeat)} data-heartbeat>${ago(w.last_heartbeat, now)}</td><td class="mono small hide-sm">${w.version || "—"}</td></tr>`)}</tbody></table></div>`}
    </section></main>`;
}

render(html`<${App} />`, document.getElementById("app"));
