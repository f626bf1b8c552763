// The Backfill dialog of the DAG page: a date range (UTC), the slots it will create listed first
// (POST /api/dags/{id}/backfill with dry_run), then "Create N runs". Slots that have a run
// already are shown and skipped; the note says how max_active_runs / overlap_policy start them.
import { api, enc, fmtTime, html, pushToast, useEffect, useRef, useState } from "./common.js";

const SHOWN_SLOTS = 200; // the list shows this many slots; the count covers them all

const isoDay = (d) => d.toISOString().slice(0, 10);

// The request body of a day range: from the start day's midnight to the end day's last second.
export function rangeBody(startDay, endDay, dryRun) {
  return { start: `${startDay}T00:00:00Z`, end: `${endDay}T23:59:59Z`, dry_run: dryRun };
}

export function BackfillButton({ dag }) {
  const [open, setOpen] = useState(false);
  if (!dag.schedule) return null; // a manual DAG has no slots
  return html`<button type="button" onClick=${() => setOpen(true)} data-action="backfill"
      aria-label=${`Backfill ${dag.dag_id}`} title="Create runs for past schedule slots">Backfill…</button>
    ${open && html`<${BackfillDialog} dag=${dag} onClose=${() => setOpen(false)} />`}`;
}

function BackfillDialog({ dag, onClose }) {
  const ref = useRef(null);
  const today = new Date();
  const [start, setStart] = useState(isoDay(new Date(today.getTime() - 7 * 86400e3)));
  const [end, setEnd] = useState(isoDay(new Date(today.getTime() - 86400e3)));
  const [plan, setPlan] = useState(null); // the dry run's answer for [start, end]
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => { ref.current?.showModal(); }, []);
  useEffect(() => {
    setPlan(null); setError("");
    if (!start || !end) return undefined;
    if (end < start) { setError("The end date is before the start date."); return undefined; }
    let stale = false;
    const timer = setTimeout(async () => {
      try {
        const answer = await api(`/api/dags/${enc(dag.dag_id)}/backfill`, { method: "POST", body: rangeBody(start, end, true) });
        if (!stale) setPlan({ ...answer, start, end });
      } catch (e) { if (!stale) setError(e.message); }
    }, 250);
    return () => { stale = true; clearTimeout(timer); };
  }, [start, end, dag.dag_id]);
  const fresh = plan ? plan.slots.filter((s) => !s.exists).length : 0;
  const create = async (e) => {
    e.preventDefault();
    if (!plan || !fresh) return;
    setBusy(true);
    try {
      const done = await api(`/api/dags/${enc(dag.dag_id)}/backfill`, { method: "POST", body: rangeBody(plan.start, plan.end, false) });
      pushToast(`Backfill: ${done.created.length} run(s) created${done.skipped.length ? `, ${done.skipped.length} skipped` : ""}`);
      ref.current?.close(); // the DAG page's run history lists them at its next refresh
    } catch (err) { setError(err.message); } finally { setBusy(false); }
  };
  return html`<dialog ref=${ref} onClose=${onClose} class="backfill-dialog" aria-labelledby="bf-title">
    <form onSubmit=${create}>
      <h2 id="bf-title">Backfill ${dag.dag_id}</h2>
      <p class="small muted">A run for every slot of <code>${dag.schedule}</code> in the range (days in UTC). Slots that have a run already are skipped.</p>
      <div class="backfill-range">
        <label>From <input type="date" value=${start} required onInput=${(e) => setStart(e.target.value)} data-field="start" /></label>
        <label>To <input type="date" value=${end} required onInput=${(e) => setEnd(e.target.value)} data-field="end" /></label>
      </div>
      ${error && html`<p class="error-text" role="alert">${error}</p>`}
      <div class="backfill-preview" aria-live="polite">
        ${!plan && !error && html`<p class="muted small">Listing the slots…</p>`}
        ${plan && html`<p class="backfill-summary" data-testid="backfill-summary"><strong>${fresh}</strong> new run(s) of ${plan.slots.length} slot(s). <span class="muted">${plan.note}</span></p>
          ${plan.slots.length > 0 && html`<div class="backfill-slots" tabindex="0" role="region" aria-label="Slots in the range">
            <table aria-label="Schedule slots in the range">
              <thead><tr><th scope="col">Slot</th><th scope="col">Run</th></tr></thead>
              <tbody>${plan.slots.slice(0, SHOWN_SLOTS).map((s) => html`<tr class=${s.exists ? "exists" : "new"}>
                <td>${fmtTime(s.execution_date)}</td><td>${s.exists ? "exists — skipped" : "will be created"}</td></tr>`)}</tbody></table>
            ${plan.slots.length > SHOWN_SLOTS && html`<p class="small muted">… and ${plan.slots.length - SHOWN_SLOTS} more</p>`}</div>`}`}
      </div>
      <div class="row"><span class="spacer"></span>
        <button type="button" onClick=${() => ref.current?.close()}>Cancel</button>
        <button type="submit" class="primary" disabled=${busy || !plan || !fresh} data-action="backfill-create">${fresh ? `Create ${fresh} run(s)` : "Nothing to create"}</button></div>
    </form></dialog>`;
}
