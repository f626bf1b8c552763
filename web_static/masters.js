// Several masters on one database: a DAG whose file differs between them gets a warning badge.
import { html } from "./common.js";

export function DigestMismatch({ dag }) {
  const odd = dag.digest_mismatch || [];
  if (!odd.length) return null;
  const who = odd.join(", ");
  return html`<span class="badge st-failed digest-mismatch" data-digest-mismatch
    title=${`This DAG's file differs on master(s) ${who}: the masters may run different versions of it`}>
    ⚠ differs on ${odd.length} master${odd.length > 1 ? "s" : ""}</span>`;
}
