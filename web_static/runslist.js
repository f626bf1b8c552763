// Nagare dashboard: the runs list (search by run id; filters for DAG, state, trigger, tag and
// "waiting for approval"; run-level Kill and Retry), with every filter in the query string so
// reload, Back and a pasted link restore the view. Also the query-string state helper and the
// dashboard's stat cards (links to the filtered lists).
import {
  ErrorLine,
  Link,
  RUN_STATUSES,
  StatusBadge,
  TERMINAL_RUN,
  TRIGGERS,
  TriggerBadge,
  WarningBadge,
  api,
  can,
  dagHref,
  elapsed,
  fmtDur,
  fmtTime,
  html,
  navigate,
  runHref,
  useEffect,
  useLocation,
  useMemo,
  useNow,
  usePoll,
  useRef,
  useState,
} from "./common.js";
import { KILL_RUN_MESSAGE, KillButton } from "./runpage.js";

// ------------------------------------------------------------------ view state in the URL

// The query string of the current location, and a setter that writes a patch into it (a value
// of "" or null or [] removes the name). Filters push a history entry (Back restores them);
// `replace` is for typing, so every keystroke does not become one.
export function useQuery() {
  const loc = useLocation();
  const [path, search = ""] = loc.split("?");
  const query = useMemo(() => new URLSearchParams(search), [search]);
  const setQuery = (patch, replace = false) => navigate(withQuery(path, query, patch), replace);
  return [query, setQuery];
}

export function withQuery(path, query, patch) {
  const next = new URLSearchParams(query);
  for (const [name, value] of Object.entries(patch)) {
    next.delete(name);
    for (const v of Array.isArray(value) ? value : [value]) if (v !== "" && v != null) next.append(name, String(v));
  }
  const q = next.toString();
  return q ? `${path}?${q}` : path;
}

// ------------------------------------------------------------------ runs list

export const RUN_FILTERS = ["q", "dag_id", "status", "trigger", "tag", "waiting"];
const RETRIABLE = ["failed", "upstream_failed", "cancelled"];
const canRetry = (r) => TERMINAL_RUN.has(r.status) && RETRIABLE.some((s) => (r.task_counts?.[s] || 0) > 0);
const canKill = (r) => r.status === "running" || r.status === "queued";

// The API query of a filter state (URLSearchParams from the page's URL, or a plain object).
function apiQuery(filters, page, limit) {
  const q = new URLSearchParams({ page, limit });
  for (const name of RUN_FILTERS) for (const v of filters.getAll(name)) if (v) q.append(name, v);
  return q;
}

function SearchBox({ value, onChange }) {
  const [text, setText] = useState(value);
  const timer = useRef(null);
  useEffect(() => { if (document.activeElement?.id !== "runs-search") setText(value); }, [value]);
  useEffect(() => () => clearTimeout(timer.current), []);
  const input = (e) => {
    const v = e.target.value;
    setText(v);
    clearTimeout(timer.current);
    timer.current = setTimeout(() => onChange(v.trim()), 250);
  };
  const submit = (e) => { e.preventDefault(); clearTimeout(timer.current); onChange(text.trim(), false); };
  return html`<form role="search" class="runs-search" onSubmit=${submit}>
    <label for="runs-search" class="small">Run id</label>
    <input id="runs-search" type="search" placeholder="Search run id…" value=${text} onInput=${input} data-filter="q" autocomplete="off" spellcheck=${false} />
  </form>`;
}

function Select({ label, name, value, options, onChange }) {
  const id = `filter-${name}`;
  return html`<span class="filter"><label for=${id} class="small">${label}</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.target.value)} data-filter=${name}>
      <option value="">all</option>${options.map((o) => html`<option value=${o}>${o.replaceAll("_", " ")}</option>`)}</select></span>`;
}

function Filters({ query, setQuery, dags }) {
  const set = (name) => (value) => setQuery({ [name]: value, page: "" });
  const tags = useMemo(() => [...new Set((dags || []).flatMap((d) => d.tags || []))].sort(), [dags]);
  const any = RUN_FILTERS.some((n) => query.get(n));
  return html`<div class="row runs-filters" role="group" aria-label="Filter runs">
    <${SearchBox} value=${query.get("q") || ""} onChange=${(v, replace = true) => setQuery({ q: v, page: "" }, replace)} />
    <${Select} label="DAG" name="dag_id" value=${query.get("dag_id") || ""} options=${(dags || []).map((d) => d.dag_id)} onChange=${set("dag_id")} />
    <${Select} label="State" name="status" value=${query.get("status") || ""} options=${RUN_STATUSES} onChange=${set("status")} />
    <${Select} label="Trigger" name="trigger" value=${query.get("trigger") || ""} options=${TRIGGERS} onChange=${set("trigger")} />
    <${Select} label="Tag" name="tag" value=${query.get("tag") || ""} options=${tags} onChange=${set("tag")} />
    <label class="small check-filter"><input type="checkbox" checked=${query.get("waiting") === "approval"} data-filter="waiting-approval"
      onChange=${(e) => setQuery({ waiting: e.target.checked ? "approval" : "", page: "" })} /> Waiting for approval</label>
    ${any && html`<button type="button" class="link" data-action="clear-filters" onClick=${() => setQuery(Object.fromEntries([...RUN_FILTERS, "page"].map((n) => [n, ""])))}>Clear filters</button>`}
  </div>`;
}

function RunActions({ run, kill, retry }) {
  if (!can("operate")) return html`<span class="row run-actions"></span>`;
  return html`<span class="row run-actions">
    ${canKill(run) && html`<${KillButton} what="run" name=${run.run_id} message=${KILL_RUN_MESSAGE} onKill=${kill} action="kill" />`}
    ${canRetry(run) && html`<button onClick=${retry} aria-label=${`Retry run ${run.run_id}`} data-action="retry" title="Run every failed, upstream failed and cancelled task again, in this run">↻ Retry</button>`}
  </span>`;
}

// The table of runs (stacked cards on a phone). `query`: the filters (URLSearchParams);
// `setPage` null: no pager. killRun/retryRun come from app.js (confirmation and toasts live there).
export function RunsList({ query, limit = 25, page = 1, setPage = null, killRun, retryRun, showDag = true }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const key = apiQuery(query, page, limit).toString();
  const load = async () => {
    try { setData(await fetchRuns(key)); setError(null); } catch (e) { setError(e); }
  };
  const anyRunning = data?.data.some((r) => !TERMINAL_RUN.has(r.status));
  usePoll(load, anyRunning ? 2000 : 5000, [key, anyRunning]);
  const now = useNow(anyRunning);
  const pages = data ? Math.max(1, Math.ceil(data.total / limit)) : 1;
  return html`<div>
    <${ErrorLine} error=${error} />
    <div class="tablewrap"><table class="runs stack-sm">
      <thead><tr><th>Run</th>${showDag && html`<th>DAG</th>`}<th>Status</th><th>Execution date</th><th>Trigger</th><th class="num">Elapsed</th><th>Actions</th></tr></thead>
      <tbody>${data && data.data.map((r) => html`<tr key=${r.run_id} data-run=${r.run_id}>
        <td class="mono trunc card-title"><${Link} href=${runHref(r.run_id)} title=${r.run_id}>${r.run_id}</${Link}></td>
        ${showDag && html`<td data-label="DAG"><${Link} href=${dagHref(r.dag_id)}>${r.dag_id}</${Link}></td>`}
        <td data-label="Status"><${StatusBadge} status=${r.status} /> <${WarningBadge} run=${r} />${r.task_counts?.waiting > 0 && html` <span class="badge st-waiting" data-waiting-count title="tasks waiting (an approval, an event or a child run)">${r.task_counts.waiting} waiting</span>`}</td>
        <td class="small" data-label="Execution date">${fmtTime(r.execution_date)}</td>
        <td data-label="Trigger"><${TriggerBadge} trigger=${r.trigger} /></td>
        <td class="num" data-label="Elapsed">${r.started_at || TERMINAL_RUN.has(r.status) ? fmtDur(elapsed(r, now)) : html`<span class="muted small" data-not-started>not started</span>`}</td>
        <td class="card-actions"><${RunActions} run=${r} kill=${() => killRun(r, load)} retry=${() => retryRun(r, load)} /></td>
      </tr>`)}</tbody></table></div>
    ${data && !data.data.length && html`<p class="empty">No runs found</p>`}
    ${setPage && data && data.total > limit && html`<nav class="pager" aria-label="Pages of runs">
      <button disabled=${page <= 1} onClick=${() => setPage(page - 1)}>‹ Prev</button>
      <span class="small">Page ${page} of ${pages} · ${data.total} runs</span>
      <button disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Next ›</button></nav>`}
  </div>`;
}

const fetchRuns = (q) => api(`/api/runs?${q}`);

const NO_FILTERS = new URLSearchParams();
// The dashboard's recent runs: no filters, no pager.
export const RecentRuns = ({ killRun, retryRun }) => html`<${RunsList} query=${NO_FILTERS} limit=${10} killRun=${killRun} retryRun=${retryRun} />`;

// The /runs page: filters and page number live in the query string.
export function RunsPage({ dags, killRun, retryRun }) {
  const [query, setQuery] = useQuery();
  useEffect(() => { document.title = "Nagare | Runs"; }, []);
  const page = Math.max(1, parseInt(query.get("page") || "1", 10) || 1);
  return html`<main><h1>Runs</h1><section class="panel">
    <${Filters} query=${query} setQuery=${setQuery} dags=${dags} />
    <${RunsList} query=${query} page=${page} setPage=${(p) => setQuery({ page: p > 1 ? p : "" })} killRun=${killRun} retryRun=${retryRun} />
  </section></main>`;
}

// ------------------------------------------------------------------ dashboard stat cards

// A stat card that opens the list it counts.
export function StatCard({ label, value, extra = "", alert = false, href }) {
  return html`<${Link} href=${href} class=${"card card-link" + (alert ? " alert" : "")} data-stat-link=${label}>
    <span class="label">${label}</span><span class="value" data-stat=${label}>${value ?? "—"}</span><span class="sub">${extra}</span></${Link}>`;
}
