// Nagare dashboard: the admin page "Users & keys" (the admin role only). Users: add (name, role,
// password twice), change role, reset password, disable / enable, delete (asks first). API keys:
// create (name, role, optional expiry) — the key is shown once, with Copy — and revoke (asks
// first). The server's refusals (the last admin, a taken name) are shown next to what failed.
import { ErrorLine, ago, api, enc, fmtTime, html, me, parseT, pushToast, useEffect, useNow, useRef, useState } from "./common.js";
import { ConfirmDialog } from "./runpage.js";
import { copyText } from "./logview.js";

export const ROLES = ["admin", "manager", "developer", "operator", "viewer"];
// the roles offered: the built-in ones (or the server's list, when /api/me gives one) and any
// role of nagare.yaml that a user or key already holds
const seenRoles = new Set();
const roles = () => [...new Set([...(me?.roles?.length ? me.roles : ROLES), ...seenRoles])];
const MIN_PASSWORD = 8;

// A password and its confirmation: the message of what is wrong with them ("" when fine).
export function passwordProblem(password, again) {
  if (!password) return "Enter a password.";
  if (password.length < MIN_PASSWORD) return `The password needs at least ${MIN_PASSWORD} characters.`;
  if (password !== again) return "The two passwords differ.";
  return "";
}

// A day (yyyy-mm-dd, the browser's time zone) as the end of that day in ISO 8601 ("" stays "").
export function endOfDay(day) {
  return day ? new Date(`${day}T23:59:59`).toISOString() : "";
}

export function AdminPage() {
  useEffect(() => { document.title = "Nagare | Users & keys"; }, []);
  return html`<main class="admin"><h1>Users & keys</h1>
    <${UsersPanel} />
    <${KeysPanel} />
  </main>`;
}

// ------------------------------------------------------------------ users

function useList(path) {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => {
    try {
      const found = await api(path);
      for (const item of found) seenRoles.add(item.role);
      setItems(found); setError(null);
    } catch (e) { setError(e); }
  };
  useEffect(() => { load(); }, [path]);
  return [items, error, load];
}

function UsersPanel() {
  const [users, loadError, load] = useList("/api/users");
  const [error, setError] = useState(null);
  const [asking, setAsking] = useState(null); // {kind: "delete"|"password", user}
  const act = async (what, call) => {
    setError(null);
    try { await call(); pushToast(what); } catch (e) { setError(e); }
    await load(); // also puts back what a refused change showed (a role select)
  };
  const update = (user, body, what) => act(what, () => api(`/api/users/${enc(user.name)}`, { method: "PUT", body }));
  const remove = (user) => act(`User ${user.name} deleted`, () => api(`/api/users/${enc(user.name)}`, { method: "DELETE" }));
  return html`<section class="panel" aria-labelledby="users-title" data-users>
    <h2 id="users-title">Users</h2>
    <div data-panel-error><${ErrorLine} error=${loadError || error} /></div>
    ${users && !users.length && html`<p class="empty">No users yet.</p>`}
    ${users && users.length > 0 && html`<div class="tablewrap"><table class="users stack-sm">
      <thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">Source</th><th scope="col">Last sign-in</th><th scope="col">Status</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${users.map((u) => html`<${UserRow} key=${u.name} user=${u} update=${update}
        onPassword=${() => setAsking({ kind: "password", user: u })} onDelete=${() => setAsking({ kind: "delete", user: u })} />`)}</tbody>
    </table></div>`}
    <${AddUser} onAdded=${load} />
    ${asking?.kind === "delete" && html`<${ConfirmDialog} title=${`Delete user ${asking.user.name}?`}
      message="The user can no longer sign in and their open sessions end at once. What they did stays in the audit log."
      confirmLabel="Delete user" onConfirm=${() => remove(asking.user)} onClose=${() => setAsking(null)} />`}
    ${asking?.kind === "password" && html`<${PasswordDialog} user=${asking.user} onClose=${() => setAsking(null)}
      onSet=${(password) => api(`/api/users/${enc(asking.user.name)}`, { method: "PUT", body: { password } })} />`}
  </section>`;
}

function UserRow({ user, update, onPassword, onDelete }) {
  const now = useNow(false);
  const self = me?.name === user.name;
  return html`<tr data-user=${user.name} class=${user.disabled ? "disabled-row" : ""}>
    <td class="card-title"><strong>${user.name}</strong>${self && html` <span class="badge muted">you</span>`}</td>
    <td data-label="Role"><select aria-label=${`Role of ${user.name}`} value=${user.role} data-user-role
      onChange=${(e) => update(user, { role: e.target.value }, `${user.name} is now ${e.target.value}`)}>
      ${[...new Set([...roles(), user.role])].map((r) => html`<option value=${r}>${r}</option>`)}</select></td>
    <td data-label="Source">${user.source === "oidc" ? "single sign-on" : "password"}</td>
    <td data-label="Last sign-in" title=${user.last_login_at ? fmtTime(user.last_login_at) : ""}>${user.last_login_at ? ago(user.last_login_at, now) : "never"}</td>
    <td data-label="Status">${user.disabled
      ? html`<span class="badge st-cancelled" data-user-status="disabled">disabled</span>`
      : html`<span class="badge st-success" data-user-status="enabled">enabled</span>`}</td>
    <td class="card-actions"><span class="row nowrap">
      ${user.source !== "oidc" && html`<button type="button" onClick=${onPassword} aria-label=${`Reset password of ${user.name}…`} aria-haspopup="dialog">Reset password…</button>`}
      <button type="button" onClick=${() => update(user, { disabled: !user.disabled }, `${user.name} ${user.disabled ? "enabled" : "disabled"}`)}
        aria-label=${`${user.disabled ? "Enable" : "Disable"} ${user.name}`} data-action=${user.disabled ? "enable" : "disable"}>${user.disabled ? "Enable" : "Disable"}</button>
      <button type="button" class="danger" onClick=${onDelete} aria-label=${`Delete ${user.name}…`} aria-haspopup="dialog" data-action="delete-user">Delete…</button>
    </span></td></tr>`;
}

function PasswordFields({ idPrefix, password, again, setPassword, setAgain, label = "Password" }) {
  return html`<div class="field"><label for=${`${idPrefix}-password`}>${label}</label>
      <input id=${`${idPrefix}-password`} type="password" autocomplete="new-password" value=${password} onInput=${(e) => setPassword(e.target.value)} /></div>
    <div class="field"><label for=${`${idPrefix}-again`}>${label} again</label>
      <input id=${`${idPrefix}-again`} type="password" autocomplete="new-password" value=${again} onInput=${(e) => setAgain(e.target.value)} /></div>`;
}

function AddUser({ onAdded }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState("viewer");
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    const problem = !name.trim() ? "Enter a name." : passwordProblem(password, again);
    if (problem) { setError(problem); return; }
    setBusy(true); setError("");
    try {
      await api("/api/users", { method: "POST", body: { name: name.trim(), role, password } });
      pushToast(`User ${name.trim()} added`);
      setName(""); setPassword(""); setAgain("");
      await onAdded();
    } catch (err) { setError(err.message); } finally { setBusy(false); }
  };
  return html`<form class="admin-form" onSubmit=${submit} aria-labelledby="add-user-title" noValidate data-add-user>
    <h3 id="add-user-title">Add a user</h3>
    <div class="admin-fields">
      <div class="field"><label for="new-user-name">Name</label>
        <input id="new-user-name" autocomplete="off" autocapitalize="none" spellcheck=${false} value=${name} onInput=${(e) => setName(e.target.value)} /></div>
      <div class="field"><label for="new-user-role">Role</label>
        <select id="new-user-role" value=${role} onChange=${(e) => setRole(e.target.value)}>${roles().map((r) => html`<option value=${r}>${r}</option>`)}</select></div>
      <${PasswordFields} idPrefix="new-user" password=${password} again=${again} setPassword=${setPassword} setAgain=${setAgain} />
      <div class="field submit"><button class="primary" type="submit" disabled=${busy}>Add user</button></div>
    </div>
    ${error && html`<p class="error-text" role="alert" data-form-error>${error}</p>`}
  </form>`;
}

function PasswordDialog({ user, onSet, onClose }) {
  const ref = useRef(null);
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => { ref.current?.showModal(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    const problem = passwordProblem(password, again);
    if (problem) { setError(problem); return; }
    setBusy(true);
    try {
      await onSet(password);
      pushToast(`Password of ${user.name} changed`);
      ref.current?.close();
    } catch (err) { setError(err.message); } finally { setBusy(false); }
  };
  return html`<dialog ref=${ref} onClose=${onClose} aria-labelledby="pw-title" class="admin-dialog">
    <form onSubmit=${submit} noValidate>
      <h2 id="pw-title">New password for ${user.name}</h2>
      <p class="small muted">Their open sessions end: they sign in again with the new password.</p>
      <div class="admin-fields stacked"><${PasswordFields} idPrefix="reset" password=${password} again=${again} setPassword=${setPassword} setAgain=${setAgain} label="New password" /></div>
      ${error && html`<p class="error-text" role="alert">${error}</p>`}
      <div class="row"><span class="spacer"></span>
        <button type="button" onClick=${() => ref.current?.close()}>Cancel</button>
        <button type="submit" class="primary" disabled=${busy}>Set password</button></div>
    </form></dialog>`;
}

// ------------------------------------------------------------------ API keys

function keyState(key, now) {
  if (key.revoked_at) return ["revoked", "st-failed", `revoked ${fmtTime(key.revoked_at)}`];
  if (key.expires_at && parseT(key.expires_at) <= now) return ["expired", "st-cancelled", `expired ${fmtTime(key.expires_at)}`];
  return ["active", "st-success", key.expires_at ? `expires ${fmtTime(key.expires_at)}` : "never expires"];
}

function KeysPanel() {
  const [keys, loadError, load] = useList("/api/keys");
  const [error, setError] = useState(null);
  const [created, setCreated] = useState(null); // the answer of POST /api/keys, holding the key
  const [revoking, setRevoking] = useState(null);
  const now = useNow(false);
  const revoke = async (key) => {
    setError(null);
    try {
      await api(`/api/keys/${enc(key.id)}`, { method: "DELETE" });
      pushToast(`Key ${key.name} revoked`);
      await load();
    } catch (e) { setError(e); }
  };
  return html`<section class="panel" aria-labelledby="keys-title" data-keys>
    <h2 id="keys-title">API keys</h2>
    <p class="small muted">A key acts with its role from scripts and the CLI: send it as <code>Authorization: Bearer KEY</code>.</p>
    <div data-panel-error><${ErrorLine} error=${loadError || error} /></div>
    ${keys && !keys.length && html`<p class="empty">No API keys yet.</p>`}
    ${keys && keys.length > 0 && html`<div class="tablewrap"><table class="keys stack-sm">
      <thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">Prefix</th><th scope="col">Created</th><th scope="col">Expires</th><th scope="col">Last used</th><th scope="col">Status</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${keys.map((k) => {
        const [state, cls, title] = keyState(k, now);
        return html`<tr key=${k.id} data-key=${k.name} data-key-state=${state}>
          <td class="card-title"><strong>${k.name}</strong></td>
          <td data-label="Role">${k.role}</td>
          <td data-label="Prefix" class="mono">${k.prefix}…</td>
          <td data-label="Created" class="small">${fmtTime(k.created_at)}<span class="cell-sub">by ${k.created_by || "—"}</span></td>
          <td data-label="Expires" class="small">${k.expires_at ? fmtTime(k.expires_at) : "never"}</td>
          <td data-label="Last used" class="small" title=${k.last_used_at ? fmtTime(k.last_used_at) : ""}>${k.last_used_at ? ago(k.last_used_at, now) : "never"}</td>
          <td data-label="Status"><span class=${`badge ${cls}`} title=${title} data-key-status>${state}</span></td>
          <td class="card-actions">${state !== "revoked" && html`<button type="button" class="danger" onClick=${() => setRevoking(k)}
            aria-label=${`Revoke key ${k.name}…`} aria-haspopup="dialog" data-action="revoke-key">Revoke…</button>`}</td></tr>`;
      })}</tbody>
    </table></div>`}
    <${CreateKey} onCreated=${async (answer) => { setCreated(answer); await load(); }} />
    ${created && html`<${NewKeyDialog} created=${created} onClose=${() => setCreated(null)} />`}
    ${revoking && html`<${ConfirmDialog} title=${`Revoke key ${revoking.name}?`}
      message="Every script or tool using it is refused from now on. A revoked key cannot be restored; create a new one instead."
      confirmLabel="Revoke key" onConfirm=${() => revoke(revoking)} onClose=${() => setRevoking(null)} />`}
  </section>`;
}

function CreateKey({ onCreated }) {
  const [name, setName] = useState("");
  const [role, setRole] = useState("viewer");
  const [expires, setExpires] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    if (!name.trim()) { setError("Enter a name for the key (what uses it)."); return; }
    const body = { name: name.trim(), role };
    if (expires) body.expires_at = endOfDay(expires);
    setBusy(true); setError("");
    try {
      const answer = await api("/api/keys", { method: "POST", body });
      setName(""); setExpires("");
      await onCreated(answer);
    } catch (err) { setError(err.message); } finally { setBusy(false); }
  };
  return html`<form class="admin-form" onSubmit=${submit} aria-labelledby="create-key-title" noValidate data-create-key>
    <h3 id="create-key-title">Create an API key</h3>
    <div class="admin-fields">
      <div class="field"><label for="new-key-name">Name</label>
        <input id="new-key-name" autocomplete="off" spellcheck=${false} placeholder="e.g. ci-deploy" value=${name} onInput=${(e) => setName(e.target.value)} /></div>
      <div class="field"><label for="new-key-role">Role</label>
        <select id="new-key-role" value=${role} onChange=${(e) => setRole(e.target.value)}>${roles().map((r) => html`<option value=${r}>${r}</option>`)}</select></div>
      <div class="field"><label for="new-key-expires">Expires (optional)</label>
        <input id="new-key-expires" type="date" value=${expires} onInput=${(e) => setExpires(e.target.value)} aria-describedby="new-key-expires-hint" />
        <span id="new-key-expires-hint" class="small muted">At the end of that day; empty: never.</span></div>
      <div class="field submit"><button class="primary" type="submit" disabled=${busy}>Create key</button></div>
    </div>
    ${error && html`<p class="error-text" role="alert" data-form-error>${error}</p>`}
  </form>`;
}

// The new key, shown this once: Copy, and a plain warning that it cannot be shown again.
function NewKeyDialog({ created, onClose }) {
  const ref = useRef(null);
  const [copied, setCopied] = useState("");
  useEffect(() => { ref.current?.showModal(); }, []);
  const copy = async () => setCopied((await copyText(created.key)) ? "Copied." : "Could not copy: select the key and copy it by hand.");
  return html`<dialog ref=${ref} onClose=${onClose} aria-labelledby="newkey-title" aria-describedby="newkey-warning" class="admin-dialog newkey-dialog" data-new-key>
    <h2 id="newkey-title">API key ${created.name} created</h2>
    <p id="newkey-warning" class="newkey-warning"><strong>Copy it now: you will not see it again.</strong> Nagare keeps only a hash of it.</p>
    <label for="newkey-value" class="small muted">Key (role ${created.role}${created.expires_at ? `, expires ${fmtTime(created.expires_at)}` : ", never expires"})</label>
    <div class="newkey-row">
      <input id="newkey-value" class="mono" readonly value=${created.key} onFocus=${(e) => e.target.select()} data-key-value />
      <button type="button" class="primary" onClick=${copy} data-action="copy-key">Copy</button>
    </div>
    <p class="small" role="status" data-copied>${copied}</p>
    <div class="row"><span class="spacer"></span>
      <button type="button" onClick=${() => ref.current?.close()} data-action="key-done">I have copied it</button></div>
  </dialog>`;
}
