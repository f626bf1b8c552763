// Nagare dashboard: the audit log page (roles with the audit permission): who did what, on what,
// from where and how it ended, newest first (GET /api/audit). Filters (actor, action family,
// outcome, time range) and the page live in the query string, so reload, Back and a pasted
// link restore the view. An outcome other than "ok" (a refusal, a failure) is highlighted.
import { ErrorLine, api, fmtTime, html, useEffect, usePoll, useState } from "./common.js";
import { useQuery } from "./runslist.js";

const LIMIT = 50;
// action families (GET /api/audit?action=run. matches run.kill and run.retry)
export const FAMILIES = [
  ["auth.", "Sign-in and sign-out"], ["user.", "Users"], ["key.", "API keys"],
  ["dag.", "DAGs (trigger, pause, edit, backfill)"], ["run.", "Runs (kill, retry)"],
  ["task.", "Tasks (kill, retry, approve, reject)"], ["event.", "Events"], ["webhook.", "Webhooks"], ["git.", "Git sync"],
];
export const OUTCOMES = ["ok", "unauthorized", "forbidden", "not_found", "conflict", "unprocessable", "invalid_params", "bad_request", "too_many_requests", "error"];
export const AUDIT_FILTERS = ["actor", "action", "outcome", "since", "until"];

// A datetime-local value (the browser's time zone) as ISO 8601 for the API; "" when not a time.
export function localToIso(value) {
  if (!value) return "";
  const t = new Date(value);
  return isNaN(t.getTime()) ? "" : t.toISOString();
}

// The API query of the page's filters.
export function auditQuery(query, page) {
  const q = new URLSearchParams({ page, limit: LIMIT });
  for (const name of ["actor", "action", "outcome"]) { const v = query.get(name); if (v) q.set(name, v); }
  for (const name of ["since", "until"]) { const v = localToIso(query.get(name)); if (v) q.set(name, v); }
  return q;
}

function ActorFilter({ value, onChange }) {
  const [text, setText] = useState(value);
  useEffect(() => setText(value), [value]);
  const submit = (e) => { e.preventDefault(); onChange(text.trim()); };
  return html`<form class="filter" onSubmit=${submit} role="search">
    <label for="audit-actor" class="small">Actor</label>
    <input id="audit-actor" type="search" value=${text} placeholder="name, key:NAME, api-key…" autocomplete="off" spellcheck=${false}
      onInput=${(e) => setText(e.target.value)} onBlur=${() => text.trim() !== value && onChange(text.trim())} data-filter="actor" />
  </form>`;
}

function Filters({ query, setQuery }) {
  const set = (name) => (e) => setQuery({ [name]: e.target.value, page: "" });
  const any = AUDIT_FILTERS.some((n) => query.get(n));
  return html`<div class="row audit-filters" role="group" aria-label="Filter the audit log">
    <${ActorFilter} value=${query.get("actor") || ""} onChange=${(v) => setQuery({ actor: v, page: "" })} />
    <span class="filter"><label for="audit-action" class="small">Action</label>
      <select id="audit-action" value=${query.get("action") || ""} onChange=${set("action")} data-filter="action">
        <option value="">all</option>${FAMILIES.map(([v, label]) => html`<option value=${v}>${label}</option>`)}
        ${query.get("action") && !FAMILIES.some(([v]) => v === query.get("action")) && html`<option value=${query.get("action")}>${query.get("action")}</option>`}</select></span>
    <span class="filter"><label for="audit-outcome" class="small">Outcome</label>
      <select id="audit-outcome" value=${query.get("outcome") || ""} onChange=${set("outcome")} data-filter="outcome">
        <option value="">all</option>${OUTCOMES.map((o) => html`<option value=${o}>${o.replaceAll("_", " ")}</option>`)}</select></span>
    <span class="filter"><label for="audit-since" class="small">From</label>
      <input id="audit-since" type="datetime-local" value=${query.get("since") || ""} onChange=${set("since")} data-filter="since" /></span>
    <span class="filter"><label for="audit-until" class="small">Until</label>
      <input id="audit-until" type="datetime-local" value=${query.get("until") || ""} onChange=${set("until")} data-filter="until" /></span>
    ${any && html`<button type="button" class="link" data-action="clear-filters" onClick=${() => setQuery(Object.fromEntries([...AUDIT_FILTERS, "page"].map((n) => [n, ""])))}>Clear filters</button>`}
  </div>`;
}

function Outcome({ outcome }) {
  const ok = outcome === "ok";
  return html`<span class=${`badge ${ok ? "st-success" : "st-failed"}`} data-outcome=${outcome}>${ok ? "ok" : `✕ ${outcome.replaceAll("_", " ")}`}</span>`;
}

export function AuditPage() {
  const [query, setQuery] = useQuery();
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { document.title = "Nagare | Audit log"; }, []);
  const page = Math.max(1, parseInt(query.get("page") || "1", 10) || 1);
  const key = auditQuery(query, page).toString();
  usePoll(async () => {
    try { setData(await api(`/api/audit?${key}`)); setError(null); } catch (e) { setError(e); }
  }, 10000, [key]);
  const pages = data ? Math.max(1, Math.ceil(data.total / LIMIT)) : 1;
  const setPage = (p) => setQuery({ page: p > 1 ? p : "" });
  return html`<main class="audit"><h1>Audit log</h1>
    <section class="panel">
      <p class="small muted">Every change made through the API, the dashboard, the CLI and webhooks — also the refused ones — with who asked and from where. Newest first.</p>
      <${Filters} query=${query} setQuery=${setQuery} />
      <${ErrorLine} error=${error} />
      <div class="tablewrap"><table class="audit-log stack-sm" data-audit>
        <caption class="visually-hidden">Audit log entries, newest first</caption>
        <thead><tr><th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Outcome</th><th scope="col">Address</th></tr></thead>
        <tbody>${data && data.data.map((e) => html`<tr key=${e.id} data-entry=${e.id} data-audit-action=${e.action} class=${e.outcome === "ok" ? "" : "not-ok"}>
          <td class="small card-title nowrap">${fmtTime(e.at)}</td>
          <td data-label="Actor" class="mono" data-actor>${e.actor}</td>
          <td data-label="Action" class="mono">${e.action}</td>
          <td data-label="Target" class="mono audit-target">${e.target || "—"}${e.detail && html`<span class="cell-sub audit-detail">${e.detail}</span>`}</td>
          <td data-label="Outcome"><${Outcome} outcome=${e.outcome} /></td>
          <td data-label="Address" class="mono small">${e.address || "—"}</td></tr>`)}</tbody>
      </table></div>
      ${data && !data.data.length && html`<p class="empty">No entries${AUDIT_FILTERS.some((n) => query.get(n)) ? " match these filters" : " yet"}.</p>`}
      ${data && data.total > LIMIT && html`<nav class="pager" aria-label="Pages of the audit log">
        <button disabled=${page <= 1} onClick=${() => setPage(page - 1)}>‹ Prev</button>
        <span class="small" data-audit-page>Page ${page} of ${pages} · ${data.total} entries</span>
        <button disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Next ›</button></nav>`}
    </section></main>`;
}
