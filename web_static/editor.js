// Nagare dashboard: the DAG editor (create, edit, validate as you type, save, delete) and the
// DAG load-error panel whose errors open the editor at their line.
// The editor is a <textarea> over a highlighted <pre> (same font, same padding, scrolled
// together) with a line-number gutter. The highlighted copy is built from text nodes only, so
// whatever the YAML holds (a <script> too) stays inert.
import {
  ApiError,
  Link,
  api,
  authHeaders,
  can,
  enc,
  html,
  navigate,
  pushToast,
  useEffect,
  useMemo,
  useRef,
  useState,
} from "./common.js";

export const editorHref = (file, line) => `/dags/edit?file=${enc(file)}${line ? `&line=${line}` : ""}`;
export const NEW_DAG_HREF = "/dags/new";
const VALIDATE_DELAY_MS = 350;
let carried = null; // the outcome of a create, shown by the editor of the file it made
const TEMPLATE = `id: my_dag
description: What this DAG does
schedule: ""          # manual only; e.g. "0 6 * * *"
tasks:
  - id: hello
    command: echo "hello from Nagare"
`;

// ------------------------------------------------------------------ YAML highlighting (text nodes)

const KEY_RE = /^(\s*(?:-\s+)?)([^\s#'"\-][^:#]*?|"[^"]*"|'[^']*')(:)(?=\s|$)/;
const SCALAR_RE = /^(-?\d+(\.\d+)?|true|false|null|~|yes|no)$/i;

// The spans of one line: [class, text] pairs (class "" = plain).
export function yamlTokens(line) {
  const out = [];
  let rest = line;
  const key = rest.match(KEY_RE);
  if (key) { out.push(["", key[1]], ["y-key", key[2]], ["", key[3]]); rest = rest.slice(key[0].length); } else {
    const dash = rest.match(/^(\s*-\s+|\s*-$)/);
    if (dash) { out.push(["", dash[0]]); rest = rest.slice(dash[0].length); }
  }
  let i = 0;
  let plain = "";
  const flush = () => { if (plain) { out.push([SCALAR_RE.test(plain.trim()) ? "y-num" : "", plain]); plain = ""; } };
  while (i < rest.length) {
    const c = rest[i];
    if ((c === '"' || c === "'") && /^\s*$/.test(plain.replace(/^.*[\[{,]/, ""))) {
      flush();
      let j = i + 1;
      while (j < rest.length && rest[j] !== c) j += c === '"' && rest[j] === "\\" ? 2 : 1;
      out.push(["y-str", rest.slice(i, j + 1)]);
      i = j + 1;
    } else if (c === "#" && (i === 0 || /\s/.test(rest[i - 1]))) {
      flush();
      out.push(["y-com", rest.slice(i)]);
      break;
    } else { plain += c; i += 1; }
  }
  flush();
  return out;
}

function Highlighted({ lines }) {
  return lines.map((l, n) => html`<span class="y-line">${yamlTokens(l).map(([cls, text]) => (cls ? html`<span class=${cls}>${text}</span>` : text))}${n < lines.length - 1 ? "\n" : " "}</span>`);
}

// ------------------------------------------------------------------ validation

async function validate(text) {
  const headers = { ...authHeaders("POST"), "Content-Type": "text/yaml" };
  const res = await fetch("/api/dags/validate", { method: "POST", headers, body: text });
  if (!res.ok) throw new ApiError(res.status, `validation failed (HTTP ${res.status})`);
  return res.json();
}

function useValidation(text) {
  const [result, setResult] = useState(null);
  useEffect(() => {
    if (text == null) return undefined;
    let gone = false;
    const timer = setTimeout(() => {
      validate(text).then((r) => { if (!gone) setResult(r); }).catch((e) => { if (!gone) setResult({ valid: null, errors: [], failure: e.message }); });
    }, VALIDATE_DELAY_MS);
    return () => { gone = true; clearTimeout(timer); };
  }, [text]);
  return result;
}

// ------------------------------------------------------------------ the code area

function CodeArea({ text, onInput, errorsByLine, readOnly, jump, onSave }) {
  const area = useRef(null);
  const pre = useRef(null);
  const gutter = useRef(null);
  const lines = useMemo(() => text.split("\n"), [text]);
  const sync = () => {
    const t = area.current;
    if (!t) return;
    if (pre.current) { pre.current.scrollTop = t.scrollTop; pre.current.scrollLeft = t.scrollLeft; }
    if (gutter.current) gutter.current.scrollTop = t.scrollTop;
  };
  useEffect(sync, [text]);
  useEffect(() => {
    if (!jump || !area.current) return;
    const t = area.current;
    const starts = [0];
    for (let i = 0; i < text.length; i++) if (text[i] === "\n") starts.push(i + 1);
    const at = starts[Math.min(Math.max(jump.line, 1), starts.length) - 1];
    const end = text.indexOf("\n", at);
    t.focus();
    t.setSelectionRange(at, end < 0 ? text.length : end);
    const lineHeight = parseFloat(getComputedStyle(t).lineHeight) || 19;
    t.scrollTop = Math.max(0, (jump.line - 4) * lineHeight);
    sync();
  }, [jump]);
  const keydown = (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); onSave?.(); return; }
    if (e.key !== "Tab" || readOnly || e.shiftKey || e.ctrlKey || e.altKey || e.metaKey) return;
    // Tab indents by two spaces (YAML has no tabs); Esc then Tab leaves the field
    if (area.current?.dataset.escaped === "1") { area.current.dataset.escaped = ""; return; }
    e.preventDefault();
    const t = e.target;
    const { selectionStart: s, selectionEnd: en } = t;
    const next = t.value.slice(0, s) + "  " + t.value.slice(en);
    onInput(next);
    requestAnimationFrame(() => t.setSelectionRange(s + 2, s + 2));
  };
  const keyup = (e) => { if (e.key === "Escape" && area.current) area.current.dataset.escaped = "1"; };
  return html`<div class="code-editor">
    <div class="code-gutter" ref=${gutter} aria-hidden="true">${lines.map((_, i) => {
      const errs = errorsByLine.get(i + 1);
      return html`<div class=${errs ? "gl err" : "gl"} data-line=${i + 1} title=${errs ? errs.join("\n") : undefined}>${errs ? "● " : ""}${i + 1}</div>`;
    })}</div>
    <div class="code-body">
      <pre class="code-hl" ref=${pre} aria-hidden="true" data-highlight><${Highlighted} lines=${lines} /></pre>
      <textarea ref=${area} class="code-input" spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off"
        aria-label="YAML of the DAG file" aria-describedby="editor-help" readOnly=${readOnly} value=${text}
        onInput=${(e) => onInput(e.target.value)} onScroll=${sync} onKeyDown=${keydown} onKeyUp=${keyup}></textarea>
    </div>
  </div>`;
}

// ------------------------------------------------------------------ problems list

function Problems({ result, jumpTo }) {
  if (!result) return html`<p class="small muted" role="status" data-validation="pending">Checking…</p>`;
  if (result.failure) return html`<p class="small error-text" role="status" data-validation="failed">Could not check the text: ${result.failure}</p>`;
  if (result.valid) return html`<p class="small ok-text" role="status" data-validation="valid">✓ Valid DAG file</p>`;
  return html`<div class="editor-problems" data-validation="invalid">
    <p class="small error-text" role="status">${result.errors.length} problem${result.errors.length === 1 ? "" : "s"}</p>
    <ul>${result.errors.map((e) => html`<li data-error-line=${e.line}>
      ${e.line ? html`<button type="button" class="link mono" onClick=${() => jumpTo(e.line)}>line ${e.line}</button>` : html`<span class="mono">file</span>`}
      ${e.field && html` <code class="field">${e.field}</code>`} <span>${e.message}</span></li>`)}</ul>
  </div>`;
}

// ------------------------------------------------------------------ the page

// file: the DAG file to edit, or null for a new DAG; line: where to put the caret first.
export function DagEditor({ file, line }) {
  const isNew = !file;
  const [source, setSource] = useState(isNew ? { text: TEMPLATE, version: "", editable: true } : null);
  const [text, setText] = useState(isNew ? TEMPLATE : null);
  const [loadError, setLoadError] = useState(null);
  const [busy, setBusy] = useState(false);
  // {kind: saved|conflict|error, message, result}; a create's outcome is carried to the new file's editor
  const [outcome, setOutcome] = useState(() => { const o = carried; carried = null; return o && o.result.file === file ? o : null; });
  const [confirming, setConfirming] = useState(false);
  const [jump, setJump] = useState(null);
  const result = useValidation(text);
  useEffect(() => { document.title = `Nagare | ${isNew ? "New DAG" : `Edit ${file}`}`; }, [file]);
  const load = async () => {
    try {
      const s = await api(`/api/dag-files/${enc(file)}`);
      setSource(s); setText(s.text); setLoadError(null);
      if (line) setJump({ line: Number(line), at: Date.now() });
    } catch (e) { setLoadError(e); }
  };
  useEffect(() => { if (!isNew) load(); }, [file]);
  const errorsByLine = useMemo(() => {
    const m = new Map();
    for (const e of result?.errors || []) if (e.line) m.set(e.line, [...(m.get(e.line) || []), `${e.field ? e.field + ": " : ""}${e.message}`]);
    return m;
  }, [result]);
  const dirty = source != null && text != null && text !== source.text;
  useEffect(() => {
    if (!dirty) return undefined;
    const warn = (e) => { e.preventDefault(); e.returnValue = ""; };
    addEventListener("beforeunload", warn);
    return () => removeEventListener("beforeunload", warn);
  }, [dirty]);
  if (loadError) {
    return html`<main><h1>${file}</h1><p class="error-text" role="alert">${loadError.message}</p><p><${Link} href="/dags">All DAGs</${Link}></p></main>`;
  }
  if (source == null || text == null) return html`<main><p class="muted">Loading…</p></main>`;
  const modified = text !== source.text;
  const editable = source.editable !== false;
  const save = async () => {
    setBusy(true);
    try {
      const r = isNew
        ? await api("/api/dags", { method: "POST", body: { text } })
        : await api(`/api/dag-files/${enc(file)}`, { method: "PUT", body: { text, version: source.version } });
      setSource({ ...source, text, version: r.version, file: r.file });
      setOutcome({ kind: "saved", result: r });
      pushToast(`${r.file} ${isNew ? "created" : "saved"}`);
      if (isNew) { carried = { kind: "saved", result: r }; navigate(editorHref(r.file), true); }
    } catch (e) {
      setOutcome({ kind: e.status === 409 && !isNew ? "conflict" : "error", message: e.message });
    } finally { setBusy(false); }
  };
  const remove = async () => {
    setBusy(true);
    try {
      await api(`/api/dag-files/${enc(file)}?version=${enc(source.version)}`, { method: "DELETE" });
      pushToast(`${file} deleted`);
      navigate("/dags");
    } catch (e) {
      setConfirming(false);
      setOutcome({ kind: e.status === 409 ? "conflict" : "error", message: e.message });
    } finally { setBusy(false); }
  };
  const jumpTo = (n) => setJump({ line: n, at: Date.now() });
  return html`<main class="editor-page">
    <h1>${isNew ? "New DAG" : html`${editable ? "Edit " : ""}<span class="mono">${file}</span>`}
      ${!editable && html`<span class="badge muted" data-read-only>read-only</span>`}
      ${modified && html`<span class="badge st-queued" data-modified>unsaved changes</span>`}</h1>
    <p class="small muted" id="editor-help">
      ${isNew ? "The file is named after the DAG's id. " : ""}${editable ? "Problems are checked as you type; Ctrl+S saves; Tab indents (Esc, then Tab leaves the editor)." : "Problems are checked as the file is shown."}</p>
    ${!editable && html`<p class="notice" role="note" data-edits-off>Editing is turned off on this server (<code>allow_dag_edits: false</code> in nagare.yaml): the DAG folder is managed elsewhere. The text is shown read-only.</p>`}
    <section class="panel">
      <${CodeArea} text=${text} onInput=${setText} errorsByLine=${errorsByLine} readOnly=${!editable} jump=${jump}
        onSave=${editable && !busy && (isNew || modified) ? save : null} />
      <${Problems} result=${result} jumpTo=${jumpTo} />
      ${editable && html`<div class="row editor-actions">
        <button type="button" class="primary" data-save disabled=${busy || (!isNew && !modified)} onClick=${save}>${isNew ? "Create DAG" : "Save"}</button>
        ${!isNew && modified && html`<button type="button" onClick=${() => { setText(source.text); setOutcome(null); }}>Discard changes</button>`}
        <span class="spacer"></span>
        ${!isNew && !confirming && html`<button type="button" class="danger" data-delete onClick=${() => setConfirming(true)}>Delete…</button>`}
      </div>`}
      ${confirming && html`<div class="confirm" role="alertdialog" aria-labelledby="confirm-delete-text">
        <p id="confirm-delete-text">Delete <strong class="mono">${file}</strong>? The file is removed from the DAG folder and the DAG is no longer scheduled. Its runs stay in the history.</p>
        <div class="row"><button type="button" class="danger" data-confirm-delete disabled=${busy} onClick=${remove}>Delete the file</button>
          <button type="button" onClick=${() => setConfirming(false)}>Cancel</button></div></div>`}
      <${Outcome} outcome=${outcome} reload=${load} clear=${() => setOutcome(null)} />
    </section></main>`;
}

function Outcome({ outcome, reload, clear }) {
  if (!outcome) return null;
  if (outcome.kind === "conflict") {
    return html`<div class="editor-outcome bad" role="alert" data-outcome="conflict"><p>${outcome.message}</p>
      <button type="button" onClick=${() => reload().then(() => clear())}>Reload the file (your changes are discarded)</button></div>`;
  }
  if (outcome.kind === "error") return html`<p class="editor-outcome bad" role="alert" data-outcome="error">${outcome.message}</p>`;
  const r = outcome.result;
  if (!r.errors.length && r.dag_id) {
    return html`<p class="editor-outcome good" role="status" data-outcome="loaded">Saved ${r.file}; DAG <${Link} href=${`/dags?id=${enc(r.dag_id)}`}>${r.dag_id}</${Link}> is loaded.</p>`;
  }
  return html`<div class="editor-outcome bad" role="alert" data-outcome="not-loaded"><p>Saved ${r.file}, but it does not load${r.dag_id ? "" : " (the last good version, if any, keeps running)"}:</p>
    <ul>${r.errors.map((m) => html`<li class="mono">${m}</li>`)}</ul></div>`;
}

// ------------------------------------------------------------------ the load-error panel

// "file:12: field: message" -> {line: 12, text: "field: message"} (the file is shown once).
export function splitError(file, message) {
  const prefix = `${file}:`;
  if (!message.startsWith(prefix)) return { line: 0, text: message };
  const rest = message.slice(prefix.length);
  const m = rest.match(/^(\d+): (.*)$/s);
  return m ? { line: Number(m[1]), text: m[2] } : { line: 0, text: rest.replace(/^ /, "") };
}

export function DagErrors({ errors }) {
  const files = Object.entries(errors || {});
  if (!files.length) return null;
  const n = files.reduce((a, [, v]) => a + v.length, 0);
  return html`<details class="errors" open>
    <summary>DAG load errors (${n})</summary>
    <ul>${files.map(([file, msgs]) => msgs.map((m) => {
      const { line, text } = splitError(file, m);
      const where = `${file}${line ? `:${line}` : ""}`;
      return html`<li data-error-file=${file}>${can("edit") ? html`<${Link} href=${editorHref(file, line)} class="mono">${where}</${Link}>` : html`<span class="mono">${where}</span>`}: ${text}</li>`;
    }))}</ul>
  </details>`;
}
