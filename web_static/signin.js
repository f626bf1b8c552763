// Nagare dashboard: who is using it. At start the app asks the server which sign-in it offers
// (GET /api/auth/config) and who this browser is (GET /api/me): with users (auth_mode builtin
// or oidc) an unknown browser gets the sign-in page; in key mode it gets today's API key gate.
// Once signed in, the session's CSRF token goes back on every write (common.js authHeaders) and
// the header shows the name, the role and Sign out.
import { KEY, api, html, me, pushToast, setMe, storedKey, useEffect, useRef, useState } from "./common.js";
import { passwordProblem } from "./admin.js";

// What a server without users answers (or an older server that has no /api/auth/config).
const KEY_MODE = { auth_mode: "key", password: false, sso: false, sso_name: "" };
export const EXPIRED = "Your session has ended (it expired or was signed out elsewhere). Sign in again.";
export const SIGNED_OUT = "You have signed out.";

export const forgetKey = () => { try { localStorage.removeItem(KEY); } catch { /* private mode */ } };
export const usesAccounts = (config) => Boolean(config) && config.auth_mode !== "key";

export async function authConfig() {
  try { return { ...KEY_MODE, ...(await api("/api/auth/config", { key: "" })) }; } catch { return KEY_MODE; }
}

async function askWho() {
  // the key is passed explicitly, so a 401 here is answered by the caller, not the app's handler
  try { return { status: 200, who: await api("/api/me", { key: storedKey() }) }; } catch (e) { return { status: e.status || 0 }; }
}

// Today's probe, for a server without /api/me: any answer but 401 lets the dashboard in.
async function probeStats() {
  const res = await fetch("/api/stats", { headers: storedKey() ? { Authorization: `Bearer ${storedKey()}` } : {} }).catch(() => null);
  return res && res.status === 401 ? "gate" : "ok";
}

// Which view the app starts on: "ok" (me is set), "gate" (the API key form) or "signin".
export async function startView(config) {
  setMe(null);
  let answer = await askWho();
  if (answer.status === 401 && storedKey() && usesAccounts(config)) {
    forgetKey(); // a key that no longer works must not hide a valid session cookie
    answer = await askWho();
  }
  if (answer.status === 200) { setMe(answer.who); return "ok"; }
  if (answer.status === 401) {
    if (usesAccounts(config)) return "signin";
    forgetKey();
    return "gate";
  }
  if (answer.status === 404) return probeStats();
  return "ok"; // the server is unreachable: the pages say so themselves
}

// The message of a failed sign-in, for the error line.
export function signInError(e) {
  if (e.status === 401) return "Wrong name or password.";
  if (e.status === 429) { const m = String(e.message || "Too many failed sign-ins; try again later."); return m.charAt(0).toUpperCase() + m.slice(1) + (m.endsWith(".") ? "" : "."); }
  if (!e.status) return "Could not reach the server. Check your connection.";
  return e.message;
}

export function SignIn({ config, notice, onSignedIn }) {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const nameRef = useRef(null);
  const passwordRef = useRef(null);
  useEffect(() => { document.title = "Nagare | Sign in"; }, []);
  const submit = async (e) => {
    e.preventDefault();
    if (!name.trim() || !password) { setError("Enter your name and password."); (name.trim() ? passwordRef : nameRef).current?.focus(); return; }
    setBusy(true);
    try {
      await api("/api/auth/login", { method: "POST", body: { name: name.trim(), password }, key: "" });
      setBusy(false);
      onSignedIn();
      return;
    } catch (err) {
      setError(signInError(err));
      setPassword("");
      passwordRef.current?.focus();
    }
    setBusy(false);
  };
  const form = config.password !== false;
  return html`<main class="signin"><div class="panel gate signin-panel">
    <h1 id="signin-title">Sign in to Nagare</h1>
    ${notice && html`<p class="signin-notice" role="status" data-signin-notice>${notice}</p>`}
    ${form && html`<form onSubmit=${submit} aria-labelledby="signin-title" noValidate>
      <label for="signin-name">Name</label>
      <input id="signin-name" ref=${nameRef} name="username" autocomplete="username" autocapitalize="none" spellcheck=${false}
        value=${name} onInput=${(e) => setName(e.target.value)} autofocus aria-invalid=${error ? "true" : undefined} aria-describedby=${error ? "signin-error" : undefined} />
      <label for="signin-password">Password</label>
      <input id="signin-password" ref=${passwordRef} name="password" type="password" autocomplete="current-password"
        value=${password} onInput=${(e) => setPassword(e.target.value)} aria-invalid=${error ? "true" : undefined} aria-describedby=${error ? "signin-error" : undefined} />
      ${error && html`<p class="error-text" id="signin-error" role="alert" data-signin-error>${error}</p>`}
      <p><button class="primary wide" type="submit" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button></p>
    </form>`}
    ${config.sso && html`${form && html`<p class="signin-or muted small"><span>or</span></p>`}
      <a class="btn wide sso" href="/api/auth/oidc/login" data-sso>Sign in with single sign-on</a>
      ${config.sso_name && html`<p class="small muted signin-sso-name">through ${config.sso_name}</p>`}`}
    ${!form && !config.sso && html`<p class="error-text" role="alert">This server offers no way to sign in from the browser; ask its administrator.</p>`}
  </div></main>`;
}

// The header's identity: name, role and Sign out (a session) or Disconnect (an API key).
export function UserMenu({ config, onSignOut, onDisconnect }) {
  const [busy, setBusy] = useState(false);
  const [changing, setChanging] = useState(false);
  if (!me || !usesAccounts(config)) return null;
  const signOut = async () => {
    setBusy(true);
    try { await api("/api/auth/logout", { method: "POST", key: "" }); } catch { /* the session is gone already */ }
    setBusy(false);
    onSignOut();
  };
  return html`<span class="who" data-who=${me.name}>
    <span class="who-name" title=${me.kind === "session" ? "Signed in" : "Using an API key"}>${me.name}</span>
    <span class="badge role-badge" data-role=${me.role}>${me.role}</span>
    ${me.kind === "session" && config.password !== false && html`<button type="button" onClick=${() => setChanging(true)}
      aria-haspopup="dialog" title="Change your password" data-action="my-password">Password…</button>`}
    ${changing && html`<${MyPasswordDialog} onClose=${() => setChanging(false)} />`}
    ${me.kind === "session"
      ? html`<button type="button" onClick=${signOut} disabled=${busy} data-action="sign-out">Sign out</button>`
      : storedKey() && html`<button type="button" class="danger" onClick=${onDisconnect}>Disconnect</button>`}
  </span>`;
}

// Change one's own password (POST /api/me/password): the current one, the new one twice. This
// session stays signed in; the user's other sessions end.
function MyPasswordDialog({ onClose }) {
  const ref = useRef(null);
  const [current, setCurrent] = useState("");
  const [password, setPassword] = useState("");
  const [again, setAgain] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => { ref.current?.showModal(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    const problem = !current ? "Enter your current password." : passwordProblem(password, again);
    if (problem) { setError(problem); return; }
    setBusy(true);
    try {
      await api("/api/me/password", { method: "POST", body: { current, new: password } });
      pushToast("Password changed; your other sessions have ended");
      ref.current?.close();
    } catch (err) {
      setError(err.status === 403 ? "The current password is wrong." : err.message);
    } finally { setBusy(false); }
  };
  const field = (id, label, value, set, autocomplete) => html`<div class="field"><label for=${id}>${label}</label>
    <input id=${id} type="password" autocomplete=${autocomplete} value=${value} onInput=${(e) => set(e.target.value)} /></div>`;
  return html`<dialog ref=${ref} onClose=${onClose} aria-labelledby="mypw-title" class="admin-dialog" data-my-password>
    <form onSubmit=${submit} noValidate>
      <h2 id="mypw-title">Change your password</h2>
      <p class="small muted">You stay signed in here; your other sessions end.</p>
      <div class="admin-fields stacked">
        ${field("mypw-current", "Current password", current, setCurrent, "current-password")}
        ${field("mypw-new", "New password", password, setPassword, "new-password")}
        ${field("mypw-again", "New password again", again, setAgain, "new-password")}
      </div>
      ${error && html`<p class="error-text" role="alert">${error}</p>`}
      <div class="row"><span class="spacer"></span>
        <button type="button" onClick=${() => ref.current?.close()}>Cancel</button>
        <button type="submit" class="primary" disabled=${busy}>Change password</button></div>
    </form></dialog>`;
}
