// Git sync status (GET /api/git): the commit the DAGs folder holds, the last attempt and its
// error, and "Sync now". Shown in the DAGs page header; renders nothing while git sync is off.
import { ago, api, can, fmtTime, seesEveryDag, html, pushToast, useEffect, useNow, usePoll, useRef, useState } from "./common.js";

const POLL_MS = 5000;
const FOLDER_SCAN_MS = 1200; // the folder watcher loads a new commit's files within about a second

// onCommit: called once the DAGs of a new commit are loaded (the page reloads its DAG list).
export function GitSyncStatus({ onCommit }) {
  const [git, setGit] = useState(null);
  const [busy, setBusy] = useState(false);
  const seen = useRef(null);
  const now = useNow(Boolean(git?.enabled));
  // a role limited to some DAGs does not see the folder they all come from
  const load = async () => { if (!seesEveryDag()) return; try { setGit(await api("/api/git")); } catch { /* older server: nothing */ } };
  usePoll(load, POLL_MS, []);
  useEffect(() => {
    if (!git?.enabled) return undefined;
    const commit = git.commit || ""; // "" until the first sync
    if (commit === seen.current) return undefined;
    const first = seen.current == null; // the page's first answer: its DAG list is as new
    seen.current = commit;
    if (first || !commit || !onCommit) return undefined;
    const timer = setTimeout(onCommit, FOLDER_SCAN_MS);
    return () => clearTimeout(timer);
  }, [git?.enabled, git?.commit]);
  if (!git?.enabled) return null;
  const syncNow = async () => {
    setBusy(true);
    try {
      await api("/api/git/sync", { method: "POST" });
      pushToast("Git sync: fetching now");
      // a fetch takes from a moment to many seconds: look again soon, then less often
      for (const ms of [800, 2000, 4000, 8000]) setTimeout(load, ms);
    } catch (e) { pushToast(`Sync failed: ${e.message}`, true); }
    finally { setBusy(false); }
  };
  const state = git.last_error ? "error" : git.commit ? "ok" : "pending";
  const label = { ok: "in sync", error: "sync failing", pending: "first sync…" }[state];
  return html`<section class=${`panel gitsync gitsync-state-${state}`} aria-label="Git sync" data-testid="gitsync">
    <div class="gitsync-line">
      <span class=${`badge gitsync-badge gitsync-badge-${state}`}>${state === "error" ? "⚠ " : ""}Git: ${label}</span>
      <span class="gitsync-where"><span class="muted">Branch</span> <code>${git.branch}</code>
        <span class="muted"> of </span><span class="gitsync-url">${git.url}</span>
        ${git.subdirectory && html`<span class="muted"> / </span><code>${git.subdirectory}</code>`}</span>
      <span class="spacer"></span>
      ${can("edit") && html`<button type="button" onClick=${syncNow} disabled=${busy} data-action="git-sync">Sync now</button>`}
    </div>
    ${git.commit && html`<p class="gitsync-commit small">
      <span class="muted">Commit</span> <code title=${git.commit} data-testid="gitsync-sha">${git.commit.slice(0, 10)}</code>${" "}
      <span class="gitsync-subject">${git.subject || ""}</span>
      <span class="muted"> · committed ${fmtTime(git.committed_at)} · synced ${ago(git.synced_at, now)}</span></p>`}
    <p class="small muted gitsync-attempt">Last attempt ${git.last_attempt_at ? ago(git.last_attempt_at, now) : "not yet"}${git.last_success_at ? ` · last success ${ago(git.last_success_at, now)}` : ""} · every ${git.interval_seconds} s</p>
    ${git.last_error && html`<p class="error-text small gitsync-error" role="status" data-testid="gitsync-error">
      ${git.last_error} <span class="muted">— the DAGs of the last good commit stay loaded.</span></p>`}
  </section>`;
}
