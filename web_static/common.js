// Nagare dashboard, shared parts: API access, routing, hooks, formatting, badges (imported by
// app.js and by the feature modules next to it). Plain ES modules, no build step.
// Everything user-controlled is rendered as text nodes (never innerHTML), so it stays inert.
import { h, render } from "./vendor/preact.module.js";
export { h, render };
import { useState, useEffect, useRef, useCallback, useMemo } from "./vendor/preact-hooks.module.js";
export { useState, useEffect, useRef, useCallback, useMemo };
import htm from "./vendor/htm.module.js";

export const html = htm.bind(h);
export const KEY = "nagare_api_key";
export const TERMINAL_RUN = new Set(["success", "failed", "cancelled", "skipped"]);
export const HANDLER_IDS = new Set(["on_success", "on_failure", "on_cancel", "on_exit"]);
export const TERMINAL_TASK = new Set(["success", "failed", "cancelled", "upstream_failed", "skipped"]);
export const RETRIED_RUN = new Set(["failed", "upstream_failed", "cancelled"]); // what a run retry re-queues
export const TASK_STATUSES = ["pending", "queued", "running", "waiting", "success", "failed", "up_for_retry", "upstream_failed", "cancelled", "skipped"];
export const RUN_STATUSES = ["queued", "running", "success", "failed", "cancelled", "skipped"];
export const TRIGGERS = ["manual", "scheduled", "webhook", "triggered", "catchup", "backfill"];

// ------------------------------------------------------------------ API and auth

export let onUnauthorized = () => {};
export const storedKey = () => { try { return localStorage.getItem(KEY) || ""; } catch { return ""; } };

export class ApiError extends Error {
  constructor(status, message, details = []) { super(message); this.status = status; this.details = details; }
}

// Who the dashboard is signed in as (GET /api/me): its role's permissions decide what is shown;
// null before the answer, or from a server without users (then everything is shown).
export let me = null;
let csrfToken = ""; // a signed-in session's token, sent back on every write (X-CSRF-Token)
export function setMe(who) { me = who || null; csrfToken = who?.csrf || ""; }
// Whether the role sees every DAG (not limited to some tags: nagare.yaml `roles:`). Routes over
// every DAG at once (counters, pools, load errors, metrics overview, DAG files) are its only.
export const seesEveryDag = () => !me || me.tags == null;
const EVERY_DAG = new Set(["edit", "audit"]); // every route of this permission covers all DAGs
export const can = (permission) => !me || ((me.permissions || []).includes(permission) && (seesEveryDag() || !EVERY_DAG.has(permission)));

// The credentials of a request: the stored API key, and on a write the session's CSRF token.
export function authHeaders(method = "GET", key = storedKey()) {
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (csrfToken && method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken;
  return headers;
}

export async function api(path, { method = "GET", body, text = false, key } = {}) {
  const headers = authHeaders(method, key ?? storedKey());
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401 && key === undefined) onUnauthorized();
  if (!res.ok) {
    let message = `HTTP ${res.status}`;
    let details = [];
    try {
      const j = await res.json();
      message = j?.error?.message || message;
      details = Array.isArray(j?.error?.details) ? j.error.details : [];
    } catch { /* not JSON */ }
    throw new ApiError(res.status, message, details);
  }
  return text ? res.text() : res.json();
}

export const enc = encodeURIComponent;
export const taskPath = (runId, taskId) => `/api/runs/${enc(runId)}/tasks/${enc(taskId)}`;

// ------------------------------------------------------------------ routing

export function useLocation() {
  const [loc, setLoc] = useState(() => location.pathname + location.search);
  useEffect(() => {
    const on = () => setLoc(location.pathname + location.search);
    addEventListener("popstate", on);
    addEventListener("nagare:navigate", on);
    return () => { removeEventListener("popstate", on); removeEventListener("nagare:navigate", on); };
  }, []);
  return loc;
}

export function navigate(to, replace = false) {
  if (to === location.pathname + location.search) return;
  history[replace ? "replaceState" : "pushState"](null, "", to);
  dispatchEvent(new Event("nagare:navigate"));
  if (!replace) scrollTo(0, 0);
}

export function Link({ href, children, ...rest }) {
  const click = (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${click} ...${rest}>${children}</a>`;
}

export const runHref = (id, task) => `/runs?id=${enc(id)}${task ? `&task=${enc(task)}` : ""}`;
export const dagHref = (id) => `/dags?id=${enc(id)}`;

// ------------------------------------------------------------------ hooks

// Calls fn now and every ms while the tab is visible; pauses while hidden.
export function usePoll(fn, ms, deps) {
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

export function useNow(active = true) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!active) return;
    const t = setInterval(() => { if (!document.hidden) setNow(Date.now()); }, 1000);
    return () => clearInterval(t);
  }, [active]);
  return now;
}

// ------------------------------------------------------------------ toasts

export let pushToast = () => {};
export function Toasts() {
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

export const parseT = (s) => (s ? Date.parse(s) : null);
export function fmtTime(s) {
  if (!s) return "—";
  const d = new Date(s);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
export function fmtDur(ms) {
  if (ms == null || isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
export function fmtBytes(b) {
  if (b == null) return "—";
  if (b < 1024) return `${b} B`;
  if (b < 1024 ** 2) return `${(b / 1024).toFixed(1)} KB`;
  if (b < 1024 ** 3) return `${(b / 1024 ** 2).toFixed(1)} MB`;
  return `${(b / 1024 ** 3).toFixed(2)} GB`;
}
export function ago(s, now = Date.now()) {
  if (!s) return "never";
  const d = Math.max(0, (now - parseT(s)) / 1000);
  if (d < 60) return `${Math.round(d)}s ago`;
  if (d < 3600) return `${Math.round(d / 60)}m ago`;
  if (d < 86400) return `${Math.round(d / 3600)}h ago`;
  return `${Math.round(d / 86400)}d ago`;
}
export function elapsed(obj, now) {
  const start = parseT(obj.started_at || obj.created_at);
  if (!start) return null;
  const end = parseT(obj.completed_at) || (obj.status === "running" ? now : null);
  return end == null ? null : end - start;
}
export const pct = (x) => (x == null ? "—" : `${(x * 100).toFixed(1)}%`);

export function StatusBadge({ status, allowed }) {
  // a failure with allow_failure: failed, but shown as a warning (it counts as a success)
  if (allowed && status === "failed") return html`<span class="badge st-allowed" data-allowed-failure title="failed with allow_failure: counts as a success">failed · allowed</span>`;
  const label = status === "up_for_retry" ? "retrying" : (status || "").replaceAll("_", " ");
  return html`<span class=${`badge st-${status}` + (status === "running" ? " pulse" : "")}>${label}</span>`;
}
// A run's allowed failures (allow_failure): a warning badge next to its status.
export const WarningBadge = ({ run }) => (run.warnings > 0
  ? html`<span class="badge st-allowed" data-warnings=${run.warnings} title=${`${run.warnings} task${run.warnings === 1 ? "" : "s"} failed with allow_failure`}>⚠ ${run.warnings} warning${run.warnings === 1 ? "" : "s"}</span>`
  : null);
export const TriggerBadge = ({ trigger }) => html`<span class=${`badge tr-${trigger}`}>${trigger}</span>`;

export function ErrorLine({ error }) {
  return error ? html`<p class="error-text" role="alert">${String(error.message || error)}</p>` : null;
}

// Who handles a 401 (the app shows its key gate): set by App.
export function setOnUnauthorized(fn) { onUnauthorized = fn; }
