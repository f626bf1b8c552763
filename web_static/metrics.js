// Nagare dashboard: the Metrics page (/metrics?since=24h&dag=ID). The window and the DAG live in
// the URL; charts draw the API's time buckets (p50/p95 per bucket, bars) over the whole window;
// success per DAG at run and attempt level, worst first. uPlot is loaded lazily.
import {
  ErrorLine,
  Link,
  StatusBadge,
  api,
  dagHref,
  fmtBytes,
  fmtDur,
  fmtTime,
  html,
  navigate,
  parseT,
  pct,
  runHref,
  useEffect,
  useMemo,
  usePoll,
  useRef,
  useState,
} from "./common.js";

export const WINDOWS = ["1h", "6h", "24h", "7d", "30d"];
const DEFAULT_SINCE = "24h";
// The API's bucket sizes (seconds); a window is drawn with the smallest giving at most MAX_BARS.
const BUCKETS = [["1m", 60], ["5m", 300], ["15m", 900], ["1h", 3600], ["6h", 21600], ["1d", 86400]];
const MAX_BARS = 200;
const UNIT_S = { m: 60, h: 3600, d: 86400 };

// `90m`, `6h`, `30d` -> seconds (null for anything else: the API then says what it accepts)
export function spanSeconds(text) {
  const m = /^([0-9]{1,7})([mhd])$/.exec(text || "");
  return m && +m[1] > 0 ? +m[1] * UNIT_S[m[2]] : null;
}

export function bucketFor(span) {
  return BUCKETS.find(([, size]) => span / size <= MAX_BARS) || BUCKETS[BUCKETS.length - 1];
}

export const metricsHref = (since, dag) => {
  const q = new URLSearchParams();
  if (since && since !== DEFAULT_SINCE) q.set("since", since);
  if (dag) q.set("dag", dag);
  const s = q.toString();
  return s ? `/metrics?${s}` : "/metrics";
};

// Peak memory 0 means "not measured" (a step that runs no process, a task over before its first
// sample): shown as "—", never "0 B".
const fmtMem = (b) => (b ? fmtBytes(Math.round(b)) : "—");
// an axis tick in ms: small values keep their decimals (0.25 ms, not "0 ms")
const fmtTickMs = (v) => (v < 1000 ? `${+v.toPrecision(3)} ms` : fmtDur(v));
const measured = (p) => p.peak_memory_bytes > 0 || p.cpu_ms > 0;
const bucketWord = (name) => ({ "1m": "minute", "5m": "5 minutes", "15m": "15 minutes", "1h": "hour", "6h": "6 hours", "1d": "day" })[name];

// Every bucket of the window [since, until] (ms), empty ones as null, x at the bucket's middle;
// the axis runs from the first bucket's start to the last one's end (the whole window, and the
// whole of the partial buckets at its edges, so the current one is drawn too).
export function bucketGrid(points, since, until, sizeS) {
  const size = sizeS * 1000;
  const byStart = new Map(points.map((p) => [parseT(p.timestamp), p]));
  const starts = [];
  for (let t = Math.floor(since / size) * size; t <= until; t += size) starts.push(t);
  return {
    from: starts[0] / 1000,
    to: (starts[starts.length - 1] + size) / 1000,
    xs: starts.map((t) => (t + size / 2) / 1000),
    col: (f) => starts.map((t) => { const p = byStart.get(t); const v = p ? f(p) : null; return v == null ? null : v; }),
    filled: starts.filter((t) => byStart.has(t)).length,
  };
}

// ------------------------------------------------------------------ chart

let uplotModule = null;
const loadUplot = () => (uplotModule ||= import("./vendor/uPlot.esm.js").then((m) => m.default));
let uplotCss = false;
const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// Bars per time bucket over a fixed x range [from, to] (seconds); series drawn in order, so a
// smaller value (p50, failed) goes after the larger one it stands in front of.
export function Chart({ title, xs, series, from, to, fmt, axisFmt = fmt, note, empty }) {
  const ref = useRef(null);
  const [theme, setTheme] = useState(0);
  useEffect(() => {
    const on = () => setTheme((x) => x + 1);
    addEventListener("nagare:theme", on);
    return () => removeEventListener("nagare:theme", on);
  }, []);
  useEffect(() => {
    if (empty) return undefined;
    if (!uplotCss) {
      uplotCss = true;
      const l = document.createElement("link");
      l.rel = "stylesheet"; l.href = "/vendor/uPlot.min.css";
      document.head.appendChild(l);
    }
    let plot = null;
    let dead = false;
    const width = () => Math.max(240, (ref.current?.clientWidth || 300) - 4);
    const resize = () => plot?.setSize({ width: width(), height: 200 });
    loadUplot().then((uPlot) => {
      if (dead || !ref.current) return;
      const el = ref.current;
      const fg = cssVar("--muted");
      const grid = cssVar("--grid");
      const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } };
      plot = new uPlot({
        width: width(), height: 200,
        scales: {
          x: { time: true, range: () => [from, to] },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.08 : 1] },
        },
        series: [
          { value: (u, v) => (v == null ? "—" : fmtTime(v * 1000)) },
          ...series.map((s) => {
            const c = cssVar(s.color) || "#2563eb";
            return {
              label: s.label, stroke: c, fill: s.back ? c + "59" : c, width: 0,
              paths: uPlot.paths.bars({ size: [0.82, 60, 1] }),
              points: { show: false },
              value: (u, v) => (v == null ? "—" : fmt(v)),
            };
          }),
        ],
        axes: [axis, { ...axis, size: 64, values: (u, vals) => vals.map((v) => axisFmt(v)) }],
        legend: { show: true },
        cursor: { drag: { x: false, y: false }, points: { show: false } },
        hooks: {
          setScale: [(u, key) => {
            if (key !== "x") return;
            el.dataset.xMin = Math.round(u.scales.x.min); el.dataset.xMax = Math.round(u.scales.x.max);
            el.dataset.bars = series[0].values.filter((v) => v != null).length;
          }],
        },
      }, [xs, ...series.map((s) => s.values)], el);
    });
    addEventListener("resize", resize);
    return () => { dead = true; removeEventListener("resize", resize); plot?.destroy(); };
  }, [xs, series, from, to, theme, empty]);
  return html`<section class="panel metrics-chart"><h2>${title}</h2>
    ${note && html`<p class="small muted chart-note">${note}</p>`}
    ${empty ? html`<p class="empty">No task executions in this window.</p>` : html`<div class="chart" ref=${ref} data-chart=${title}></div>`}</section>`;
}

// ------------------------------------------------------------------ success by DAG

const UNKNOWN = 2; // sorts after every rate
// Worst first: run-level success, then attempt-level, then the name; DAGs without outcomes last.
export const byWorst = (a, b) => (a.runs?.success_rate ?? UNKNOWN) - (b.runs?.success_rate ?? UNKNOWN)
  || (a.success_rate ?? UNKNOWN) - (b.success_rate ?? UNKNOWN) || (a.dag_id < b.dag_id ? -1 : a.dag_id > b.dag_id ? 1 : 0);

// succeeded in green, failed in red after it (the text says the same: not colour alone)
function RateBar({ rate, ok, total, what }) {
  return html`<div class="rate" data-rate=${what}>
    <div class="progress split" aria-hidden="true">${rate != null && html`<div style=${`width:${rate * 100}%`}></div><div class="bar-fail" style=${`width:${(1 - rate) * 100}%`}></div>`}</div>
    <span class="num"><strong>${pct(rate)}</strong> <span class="muted small">${total ? `${ok}/${total}` : "none"}</span></span></div>`;
}

function SuccessByDag({ stats, selected }) {
  const rows = useMemo(() => [...stats].sort(byWorst), [stats]);
  if (!rows.length) return html`<p class="empty">No runs or task executions in this window.</p>`;
  return html`<div class="tablewrap success-table" tabindex="0" role="region" aria-label="Success rate by DAG, worst first"><table>
    <thead><tr><th scope="col">DAG</th><th scope="col">Runs <span class="cell-sub">succeeded / succeeded or failed</span></th><th scope="col">Attempts <span class="cell-sub">incl. retries</span></th></tr></thead>
    <tbody>${rows.map((d) => {
      const runs = d.runs || {};
      return html`<tr key=${d.dag_id} data-success-dag=${d.dag_id} class=${d.dag_id === selected ? "selected" : ""}>
        <td><${Link} href=${dagHref(d.dag_id)} class="trunc">${d.dag_id}</${Link}></td>
        <td><${RateBar} what="runs" rate=${runs.success_rate} ok=${runs.success} total=${(runs.success || 0) + (runs.failed || 0)} /></td>
        <td><${RateBar} what="attempts" rate=${d.success_rate} ok=${d.success} total=${d.success + d.failed} /></td></tr>`;
    })}</tbody></table></div>`;
}

// ------------------------------------------------------------------ the page

function useDagIds() {
  const [ids, setIds] = useState([]);
  usePoll(async () => { setIds((await api("/api/dags")).map((d) => d.dag_id)); }, 30000, []);
  return ids;
}

export function MetricsPage({ since: sinceParam, dag: dagParam }) {
  const since = sinceParam || DEFAULT_SINCE;
  const dag = dagParam || "";
  const span = spanSeconds(since);
  const [bucketName, bucketS] = bucketFor(span || 86400);
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const dagIds = useDagIds();
  useEffect(() => { document.title = "Nagare | Metrics"; }, []);
  useEffect(() => { setData(null); }, [since, dag]);
  usePoll(async () => {
    try {
      const q = new URLSearchParams({ since });
      if (dag) q.set("dag_id", dag);
      const bq = new URLSearchParams(q); bq.set("bucket", bucketName); bq.set("limit", Math.ceil((span || 0) / bucketS) + 1);
      const rq = new URLSearchParams(q); rq.set("limit", 50);
      const [overview, buckets, recent] = await Promise.all([
        api(`/api/metrics/overview?${q}`), api(`/api/metrics/timeseries?${bq}`), api(`/api/metrics/timeseries?${rq}`)]);
      setData({ key: since + "\n" + dag, overview, buckets, recent }); setError(null);
    } catch (e) { setError(e); }
  }, 15000, [since, dag]);
  const current = data && data.key === since + "\n" + dag ? data : null;
  const o = current?.overview;
  const charts = useMemo(() => {
    if (!current) return null;
    const from = parseT(o.since), to = parseT(o.until);
    const g = bucketGrid(current.buckets, from, to, bucketS);
    const pctl = current.buckets.some((p) => p.p50_duration_ms != null);
    return {
      from: g.from, to: g.to, xs: g.xs, filled: g.filled,
      count: [
        { label: "attempts", color: "--chart1", back: true, values: g.col((p) => p.count) },
        { label: "failed", color: "--failed", values: g.col((p) => p.failed || null) },
      ],
      duration: pctl ? [
        { label: "p95", color: "--chart1", back: true, values: g.col((p) => p.p95_duration_ms) },
        { label: "p50", color: "--chart1", values: g.col((p) => p.p50_duration_ms) },
      ] : [
        { label: "max", color: "--chart1", back: true, values: g.col((p) => p.max_duration_ms) },
        { label: "mean", color: "--chart1", values: g.col((p) => p.duration_ms) },
      ],
      pctl,
      memory: [{ label: "highest peak", color: "--chart2", values: g.col((p) => (p.memory_bytes > 0 ? p.memory_bytes / 1048576 : null)) }],
      cpu: [{ label: "CPU per attempt", color: "--chart3", values: g.col((p) => (p.total_cpu_ms > 0 ? p.cpu_ms : null)) }],
    };
  }, [current, bucketS]);
  const dagOptions = dag && !dagIds.includes(dag) ? [dag, ...dagIds] : dagIds;
  const per = bucketWord(bucketName);
  const empty = !charts || charts.filled === 0;
  const chartProps = charts ? { xs: charts.xs, from: charts.from, to: charts.to, empty } : { empty: true };
  const runs = o?.runs;
  return html`<main>
    <h1>Metrics <span class="spacer"></span>
      <label class="small">DAG <select value=${dag} onChange=${(e) => navigate(metricsHref(since, e.target.value))} aria-label="DAG filter">
        <option value="">all DAGs</option>${dagOptions.map((d) => html`<option value=${d}>${d}</option>`)}</select></label>
      <span class="row" role="group" aria-label="Time window">${WINDOWS.map((w) => html`<button class=${w === since ? "primary" : ""} aria-pressed=${w === since} onClick=${() => navigate(metricsHref(w, dag))}>${w}</button>`)}</span></h1>
    <${ErrorLine} error=${error} />
    <div class="cards">
      <div class="card"><div class="label">Runs finished</div><div class="value" data-stat="runs">${runs?.finished ?? "—"}</div><div class="sub">success <span data-stat="run-success">${runs ? pct(runs.success_rate) : "—"}</span> · last ${since}</div></div>
      <div class="card"><div class="label">Task attempts</div><div class="value" data-stat="tasks">${o?.total_tasks ?? "—"}</div><div class="sub">success <span data-stat="attempt-success">${o ? pct(o.success_rate) : "—"}</span> (retries included)</div></div>
      <div class="card"><div class="label">Avg task duration</div><div class="value">${o ? fmtDur(o.avg_duration_ms) : "—"}</div><div class="sub">max ${o ? fmtDur(o.max_duration_ms) : "—"}</div></div>
      <div class="card"><div class="label">Peak memory seen</div><div class="value" data-stat="memory">${o ? fmtMem(o.max_memory_bytes) : "—"}</div><div class="sub">CPU total ${o && o.total_cpu_ms ? fmtDur(o.total_cpu_ms) : "—"}</div></div>
    </div>
    <section class="panel"><h2>Success rate by DAG <span class="small muted">worst first${dag || !o ? "" : ` · ${o.dag_stats.length} DAG${o.dag_stats.length === 1 ? "" : "s"}`}</span></h2>
      ${o ? html`<${SuccessByDag} stats=${o.dag_stats} selected=${dag} />` : html`<p class="empty">Loading…</p>`}</section>
    <div class="grid2">
      <${Chart} title="Task attempts" note=${`per ${per}; failed in front`} ...${chartProps} series=${charts?.count} fmt=${(v) => `${Math.round(v)}`} axisFmt=${(v) => (Number.isInteger(v) ? `${v}` : "")} />
      <${Chart} title="Task duration" note=${charts?.pctl === false ? `mean and max per ${per} (too many attempts for percentiles)` : `p50 and p95 per ${per}`} ...${chartProps} series=${charts?.duration} fmt=${fmtDur} axisFmt=${fmtTickMs} />
      <${Chart} title="Peak memory" note=${`highest peak per ${per}; unmeasured steps left out`} ...${chartProps} series=${charts?.memory} fmt=${(v) => fmtBytes(Math.round(v * 1048576))} axisFmt=${(v) => `${+v.toPrecision(3)} MB`} />
      <${Chart} title="CPU time" note=${`mean per attempt, per ${per}`} ...${chartProps} series=${charts?.cpu} fmt=${fmtTickMs} />
    </div>
    <section class="panel"><h2>DAG performance</h2><div class="tablewrap"><table>
      <thead><tr><th>DAG</th><th class="num">Runs</th><th class="num">Attempts</th><th class="num hide-sm">Avg duration</th><th class="num hide-sm">Max duration</th><th class="num hide-sm">Avg memory</th><th class="num hide-sm">Max memory</th><th class="num">Run success</th><th class="num hide-sm">Attempt success</th></tr></thead>
      <tbody>${(o?.dag_stats || []).map((d) => html`<tr><td><${Link} href=${dagHref(d.dag_id)}>${d.dag_id}</${Link}></td><td class="num">${d.runs?.finished ?? 0}</td><td class="num">${d.count}</td>
        <td class="num hide-sm">${d.count ? fmtDur(d.avg_duration_ms) : "—"}</td><td class="num hide-sm">${d.count ? fmtDur(d.max_duration_ms) : "—"}</td>
        <td class="num hide-sm">${fmtMem(d.avg_memory_bytes)}</td><td class="num hide-sm">${fmtMem(d.max_memory_bytes)}</td><td class="num">${pct(d.runs?.success_rate)}</td><td class="num hide-sm">${pct(d.success_rate)}</td></tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Slowest tasks</h2><div class="tablewrap"><table>
      <thead><tr><th>Task</th><th>DAG</th><th class="hide-sm">Run</th><th class="num">Duration</th><th class="num hide-sm">Peak memory</th><th>Exit</th><th class="hide-sm">Completed</th></tr></thead>
      <tbody>${(o?.slowest_tasks || []).map((t) => html`<tr><td class="mono"><${Link} href=${runHref(t.run_id, t.task_id)}>${t.task_id}</${Link}></td>
        <td><${Link} href=${dagHref(t.dag_id)}>${t.dag_id}</${Link}></td><td class="mono small trunc hide-sm"><${Link} href=${runHref(t.run_id)}>${t.run_id}</${Link}></td>
        <td class="num">${fmtDur(t.duration_ms)}</td><td class="num hide-sm">${fmtMem(t.peak_memory_bytes)}</td><td>${t.exit_code ?? "—"}</td><td class="small hide-sm">${fmtTime(t.created_at)}</td></tr>`)}</tbody></table></div></section>
    <section class="panel"><h2>Recent task executions</h2><div class="tablewrap"><table>
      <thead><tr><th>Task</th><th class="hide-sm">Run</th><th class="num">Duration</th><th class="num hide-sm">Memory</th><th class="num hide-sm">CPU</th><th>Status</th><th class="hide-sm">Time</th></tr></thead>
      <tbody>${[...(current?.recent || [])].reverse().map((p) => html`<tr data-recent=${p.task_id}><td class="mono"><${Link} href=${runHref(p.run_id, p.task_id)}>${p.task_id}</${Link}></td>
        <td class="mono small trunc hide-sm"><${Link} href=${runHref(p.run_id)}>${p.run_id}</${Link}></td><td class="num">${fmtDur(p.duration_ms)}</td>
        <td class="num hide-sm" data-memory>${fmtMem(p.peak_memory_bytes)}</td><td class="num hide-sm">${measured(p) ? fmtDur(p.cpu_ms) : "—"}</td><td><${StatusBadge} status=${p.status} /></td><td class="small hide-sm">${fmtTime(p.completed_at)}</td></tr>`)}</tbody></table></div></section>
  </main>`;
}
