"""The workloads. Each takes the run's `Settings`, measures the engine and its floor in the same
run, and returns result rows."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagfiles
import seed
from floors import run_floor
from footprint import footprint_rows, pss_tree_bytes
from harness import (
    ROOT,
    BenchError,
    Client,
    Launcher,
    RssSampler,
    RunResult,
    Server,
    median,
    percentile,
    rss_bytes,
    source_env,
    trigger_and_wait,
)
from report import Row

MB = 2**20


@dataclass
class Settings:
    launcher: Launcher  # servers of the engine workloads
    startup_launcher: Launcher  # the startup workload (prefers nagare.pyz when it exists)
    quick: bool = False
    reps: int | None = None  # overrides every workload's default repetitions
    say: Callable[[str], None] = print
    # --postgres: a fresh PostgreSQL database's URL per call; chain100, fanout1000, api and
    # metrics then run on it too, next to SQLite in the same run
    postgres: Callable[[], str] | None = None
    # --postgres: the seeded histories moved into PostgreSQL (`nagare db migrate`), by number
    # of runs: the api and metrics workloads only read them, so they share one copy
    pg_histories: dict[int, PgHistory] = field(default_factory=dict)

    def reps_for(self, full: int, quick: int) -> int:
        if self.reps is not None:
            return self.reps
        return quick if self.quick else full


# ---------------------------------------------------------------- run helpers


def _repeat_runs(
    server: Server,
    dag_id: str,
    reps: int,
    poll: float,
    timeout: float,
    say: Callable[[str], None],
    floor: tuple[str, int, int] | None = None,
) -> tuple[list[RunResult], list[float], int]:
    """Trigger `dag_id` `reps` times, one after the other; returns the runs, the floor's
    seconds and the server's peak RSS. With `floor` (name, tasks, pool), each repetition runs
    the floor right after the engine, while the server idles: a machine whose speed drifts
    during the workload (shared hosts do) then moves both alike.

    Polls with a fresh connection per request, as a shell script with curl would: the more
    expensive way for the server (an accept and a thread per request), so no flattering one.
    """
    client = server.client(keep_alive=False)
    results: list[RunResult] = []
    floors: list[float] = []
    with RssSampler(server.pid) as rss:
        for rep in range(reps):
            result = trigger_and_wait(client, dag_id, poll, timeout)
            if result.status != "success":
                raise BenchError(f"run {result.run_id} ended {result.status}")
            results.append(result)
            note = ""
            if floor is not None:
                floors += run_floor(floor[0], 1, floor[1], floor[2])
                note = f" (floor {floors[-1]:.3f}s)"
            say(f"  {dag_id} rep {rep + 1}/{reps}: {result.wall_seconds:.3f}s{note}")
    return results, floors, rss.peak


def _floor(name: str, reps: int, n: int, pool: int, say: Callable[[str], None]) -> float:
    seconds = run_floor(name, reps, n, pool)
    say(f"  floor {name}: " + ", ".join(f"{s:.3f}s" for s in seconds))
    return median(seconds)


def _server_note(results: list[RunResult], peak_rss: int) -> str:
    server = median([r.server_seconds for r in results])
    return f"server-side created->completed {server:.3f}s; peak server RSS {peak_rss / MB:.0f} MB"


# ---------------------------------------------------------------- chain100


def chain100(cfg: Settings) -> list[Row]:
    hops = 100
    reps = cfg.reps_for(5, 3)
    dag = {"chain.yaml": dagfiles.chain("chain100", hops)}
    rows: list[Row] = []
    overheads: list[float] = []
    for store in _stores(cfg):
        with Server(cfg.launcher, dags=dag, db_url=_url(cfg, store)) as server:
            results, floors, peak = _repeat_runs(
                server, "chain100", reps, 0.01, 120, cfg.say, floor=("chain", hops, 1)
            )
        engine = median([r.wall_seconds for r in results])
        floor = median(floors)
        per_hop_ms = (engine - floor) / hops * 1000
        overheads.append(per_hop_ms)
        rows.append(
            Row(
                f"chain100{_suffix(store)}",
                f"{engine:.3f} s",
                f"{floor:.3f} s",
                f"{per_hop_ms:.2f} ms/hop",
                "<= 5 ms/hop",
                per_hop_ms <= 5.0,
                f"N={reps}; " + _server_note(results, peak),
            )
        )
    return (
        rows
        + _versus_sqlite("chain100", overheads, "ms/hop")
        + _two_masters(cfg, hops, reps)
        + _chain_shared(cfg, hops, reps, overheads)
    )


def _chain_shared(cfg: Settings, hops: int, reps: int, overheads: list[float]) -> list[Row]:
    """With --postgres: chain100 on two masters sharing one database and one pool (each with
    its default slots): a hop runs on whichever master claims it first."""
    if cfg.postgres is None:
        return []
    dag = {"chain.yaml": dagfiles.chain("chain100", hops)}
    results, floors, peak, workers = _on_two_masters(cfg, dag, {}, "chain100", reps, floor=hops)
    engine = median([r.wall_seconds for r in results])
    per_hop_ms = (engine - median(floors)) / hops * 1000
    one = overheads[-1]
    return [
        Row(
            "chain100 [2 masters, 1 pool]",
            f"{per_hop_ms:.2f} ms/hop",
            f"1 master {one:.2f} ms/hop",
            f"{per_hop_ms / one:.2f}x" if one > 0 else "-",
            "-",
            None,
            f"N={reps}; both masters run pool default; sqlite {overheads[0]:.2f} ms/hop in the "
            f"same run; tasks by master (last run): {workers}; " + _server_note(results, peak),
        )
    ]


def _on_two_masters(
    cfg: Settings,
    dag: dict[str, str],
    settings: dict[str, Any],
    dag_id: str,
    reps: int,
    floor: int = 0,
    width: int = 0,
    pool: int = 0,
) -> tuple[list[RunResult], list[float], int, str]:
    """`reps` runs of `dag_id` triggered on the first of two masters sharing a fresh PostgreSQL
    database, both with `settings`; returns the runs, the floors, the first's peak RSS and how
    many tasks of the last run each master ran."""
    assert cfg.postgres is not None
    url = cfg.postgres()
    first = Server(cfg.launcher, dags=dag, db_url=url, settings=settings)
    other = Server(cfg.launcher, dags=dag, db_url=url, settings=settings)
    shape = ("chain", floor, 1) if floor else ("fanout", width, pool)
    with first as server, other:
        results, floors, peak = _repeat_runs(
            server, dag_id, reps, 0.02 if width else 0.01, 300, cfg.say, floor=shape
        )
        tasks = server.client().get_json(f"/api/runs/{results[-1].run_id}/tasks")
    by_worker = Counter(str(t.get("worker") or "?") for t in tasks)
    names = {w: f"m{i + 1}" for i, w in enumerate(sorted(by_worker))}
    return results, floors, peak, ", ".join(f"{names[w]} {n}" for w, n in sorted(by_worker.items()))


def _two_masters(cfg: Settings, hops: int, reps: int) -> list[Row]:
    """With --postgres: chain100 on two masters sharing one database, its tasks alternating
    between a pool only the first runs and one only the second runs, so that every hop crosses
    masters (a LISTEN/NOTIFY wake-up each)."""
    if cfg.postgres is None:
        return []
    url = cfg.postgres()
    dag = {"chain.yaml": dagfiles.chain("chain100", hops, pools=("a", "b"))}
    other = Server(cfg.launcher, dags=dag, db_url=url, settings={"worker_pools": {"a": 0, "b": 1}})
    first = Server(cfg.launcher, dags=dag, db_url=url, settings={"worker_pools": {"a": 1, "b": 0}})
    with first as server, other:
        results, floors, peak = _repeat_runs(
            server, "chain100", reps, 0.01, 120, cfg.say, floor=("chain", hops, 1)
        )
    engine = median([r.wall_seconds for r in results])
    floor = median(floors)
    per_hop_ms = (engine - floor) / hops * 1000
    return [
        Row(
            "chain100 [2 masters]",
            f"{engine:.3f} s",
            f"{floor:.3f} s",
            f"{per_hop_ms:.2f} ms/hop",
            "<= 10 ms/hop",
            per_hop_ms <= 10.0,
            f"N={reps}; every hop crosses masters (pools a and b); " + _server_note(results, peak),
        )
    ]


def _stores(cfg: Settings) -> tuple[str, ...]:
    return ("sqlite", "postgresql") if cfg.postgres else ("sqlite",)


def _url(cfg: Settings, store: str) -> str | None:
    return cfg.postgres() if store == "postgresql" and cfg.postgres else None


def _suffix(store: str) -> str:
    return " [postgresql]" if store == "postgresql" else ""


def _versus_sqlite(name: str, overheads: list[float], unit: str) -> list[Row]:
    """With both stores measured: PostgreSQL's overhead over the floor next to SQLite's (the
    goal: within 2x)."""
    if len(overheads) != 2:
        return []
    sqlite, postgresql = overheads
    times = postgresql / sqlite if sqlite > 0 else float("inf")
    return [
        Row(
            f"{name} postgresql/sqlite",
            f"{postgresql:.2f} {unit}",
            f"{sqlite:.2f} {unit}",
            f"{times:.2f}x",
            "<= 2x sqlite",
            times <= 2.0,
            "the engine's overhead over the floor, PostgreSQL vs SQLite in the same run",
        )
    ]


# ---------------------------------------------------------------- output_chain100


def output_chain100(cfg: Settings) -> list[Row]:
    """chain100 where every task reads its upstream's output from its environment and
    publishes the next value ($NAGARE_OUTPUT): the per-hop cost of outputs, next to chain100's
    (same floor: 100 sequential `sh -c true`)."""
    hops = 100
    reps = cfg.reps_for(5, 3)
    dag = {"output_chain.yaml": dagfiles.output_chain("output_chain100", hops)}
    with Server(cfg.launcher, dags=dag) as server:
        results, floors, peak = _repeat_runs(
            server, "output_chain100", reps, 0.01, 120, cfg.say, floor=("chain", hops, 1)
        )
        last = f"/api/runs/{results[-1].run_id}/tasks/t{hops - 1:04d}"
        status, body = server.client().request("GET", last)
        outputs = json.loads(body).get("outputs") if status == 200 else None
        if outputs != {"V": str(hops)}:
            raise BenchError(f"the last task of the chain published {outputs}, not V={hops}")
    engine = median([r.wall_seconds for r in results])
    floor = median(floors)
    per_hop_ms = (engine - floor) / hops * 1000
    return [
        Row(
            "output_chain100",
            f"{engine:.3f} s",
            f"{floor:.3f} s",
            f"{per_hop_ms:.2f} ms/hop",
            "<= 5 ms/hop",
            per_hop_ms <= 5.0,
            f"N={reps}; each hop reads V and publishes V+1; " + _server_note(results, peak),
        )
    ]


# ---------------------------------------------------------------- fanout1000


def fanout1000(cfg: Settings) -> list[Row]:
    width, pool = 1000, 8
    reps = cfg.reps_for(9, 1)  # ±10% from one repetition to the next on a shared host
    dag = {"fanout.yaml": dagfiles.fanout("fanout1000", width)}
    settings = {"worker_pools": {"default": pool}}
    rows: list[Row] = []
    overheads: list[float] = []
    for store in _stores(cfg):
        with Server(cfg.launcher, dags=dag, settings=settings, db_url=_url(cfg, store)) as server:
            results, floors, peak = _repeat_runs(
                server, "fanout1000", reps, 0.02, 300, cfg.say, floor=("fanout", width, pool)
            )
        engine = median([r.wall_seconds for r in results])
        floor = median(floors)
        ratio = engine / floor
        overheads.append((engine - floor) / width * 1000)
        rows.append(
            Row(
                f"fanout1000{_suffix(store)}",
                f"{engine:.3f} s",
                f"{floor:.3f} s",
                f"{ratio:.2f}x",
                "<= 1.5x floor",
                ratio <= 1.5,
                f"N={reps}, pool 8; " + _server_note(results, peak),
            )
        )
    return (
        rows
        + _versus_sqlite("fanout1000", overheads, "ms/task")
        + _fanout_two_masters(cfg, dag, settings, width, pool, reps, overheads)
    )


def _fanout_two_masters(
    cfg: Settings,
    dag: dict[str, str],
    settings: dict[str, Any],
    width: int,
    pool: int,
    reps: int,
    overheads: list[float],
) -> list[Row]:
    """With --postgres: fanout1000 on two masters sharing one database, each with the one
    master's 8 slots; the goal is an overhead per task no larger than one master's."""
    if cfg.postgres is None:
        return []
    results, floors, peak, workers = _on_two_masters(
        cfg, dag, settings, "fanout1000", reps, width=width, pool=pool
    )
    engine = median([r.wall_seconds for r in results])
    per_task_ms = (engine - median(floors)) / width * 1000
    one = overheads[-1]
    times = per_task_ms / one if one > 0 else float("inf")
    return [
        Row(
            "fanout1000 [2 masters]",
            f"{per_task_ms:.2f} ms/task",
            f"1 master {one:.2f} ms/task",
            f"{times:.2f}x",
            "<= 1x 1 master",
            times <= 1.0,
            f"N={reps}, pool 8 on each master; engine {engine:.3f} s; sqlite "
            f"{overheads[0]:.2f} ms/task in the same run; tasks by master (last run): {workers}; "
            + _server_note(results, peak),
        )
    ]


# ---------------------------------------------------------------- map10000


def map10000(cfg: Settings) -> list[Row]:
    items = 2000 if cfg.quick else 10_000
    pool = 8
    reps = cfg.reps_for(1, 1)
    name = "map10000" if items == 10_000 else f"map10000 (quick: {items} items)"
    dag = {"map.yaml": dagfiles.map_over("map10000", items)}
    settings = {"worker_pools": {"default": pool}, "max_map_items": max(items, 10_000)}
    with Server(cfg.launcher, dags=dag, settings=settings) as server:
        results, _, peak = _repeat_runs(server, "map10000", reps, 0.1, 900, cfg.say)
    engine = median([r.wall_seconds for r in results])
    floor = _floor("map", reps, items, pool, cfg.say)
    return [
        Row(
            name,
            f"{engine:.2f} s, peak RSS {peak / MB:.0f} MB",
            f"{floor:.2f} s",
            f"{engine / floor:.2f}x",
            "completes, RSS <= 250 MB",
            peak <= 250 * MB,
            f"N={reps}, pool {pool}; " + _server_note(results, peak),
        )
    ]


# ---------------------------------------------------------------- startup and idle RSS


def startup(cfg: Settings) -> list[Row]:
    """Process start -> /api/health 200 (warm starts), RSS and PSS 2 s after start, repo dags/;
    then `nagare exec` of a 1-task and a 100-task DAG (footprint.py)."""
    warm = cfg.reps_for(5, 3)
    server = Server(cfg.startup_launcher, dags_dir=ROOT / "dags")
    try:
        seconds, idle, pss = _starts(server, warm, cfg.say)
    finally:
        server.close()
    floor = _floor("python_pass", warm, 0, 1, cfg.say)
    start = median(seconds)
    idle_mb = median([float(r) for r in idle]) / MB
    how = cfg.startup_launcher.label
    rows = [
        Row(
            "idle_rss",
            f"{idle_mb:.1f} MB",
            "-",
            "-",
            "<= 60 MB",
            idle_mb <= 60,
            f"median of {warm} starts, 2 s after process start, repo dags/; {how}",
        ),
        Row(
            "startup",
            f"{start:.3f} s",
            f"{floor:.3f} s",
            f"+{start - floor:.3f} s",
            "<= 0.7 s",
            start <= 0.7,
            f"median of {warm} warm starts (process start -> /api/health 200); "
            f"floor: python3 -c pass; {how}",
        ),
    ]
    exec_reps = cfg.reps_for(7, 3)
    return rows + footprint_rows(
        cfg.startup_launcher,
        exec_reps,
        seconds,
        pss,
        idle,
        lambda: _floor("python_pass", exec_reps, 0, 1, cfg.say),
        cfg.say,
    )


def _starts(
    server: Server, warm: int, say: Callable[[str], None]
) -> tuple[list[float], list[int], list[int]]:
    """One cold and `warm` warm starts of the same server folder: seconds to health, RSS and
    PSS (of the process tree) 2 s after the start."""
    seconds, idle, pss = [], [], []
    for number in range(warm + 1):  # the first (cold) start is not counted
        server.start(wait=False)
        ready = server.wait_healthy()
        time.sleep(max(0.0, server.started_at + 2.0 - time.perf_counter()))
        rss = rss_bytes(server.pid)
        tree_pss = pss_tree_bytes(server.pid)
        server.stop()
        label = "cold (not counted)" if number == 0 else f"warm {number}/{warm}"
        say(
            f"  start {label}: {ready:.3f}s to health, RSS after 2s {rss / MB:.1f} MB, "
            f"PSS {tree_pss / MB:.1f} MB"
        )
        if number:
            seconds.append(ready)
            idle.append(rss)
            pss.append(tree_pss)
    return seconds, idle, pss


# ---------------------------------------------------------------- API latency under history


@dataclass
class Latency:
    p50: float
    p95: float

    def text(self) -> str:
        return f"p50 {self.p50 * 1000:.1f} / p95 {self.p95 * 1000:.1f} ms"


def _latency(client: Client, paths: list[str]) -> Latency:
    seconds = [client.timed_get(path) for path in paths]
    return Latency(percentile(seconds, 50), percentile(seconds, 95))


def _sample_runs(db: Path, count: int) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT run_id FROM runs ORDER BY random() LIMIT ?", (count,))
        return [r[0] for r in rows]


def _api_paths(run_ids: list[str], requests: int) -> dict[str, list[str]]:
    dag_id = seed.history_dag_ids()[3]
    ids = [run_ids[i % len(run_ids)] for i in range(requests)]
    filtered = f"/api/runs?limit=50&dag_id={dag_id}&status=failed"
    return {
        "api GET /api/runs?limit=50": ["/api/runs?limit=50"] * requests,
        f"api GET {filtered}": [filtered] * requests,
        "api GET /api/runs/{id}": [f"/api/runs/{i}" for i in ids],
        "api GET /api/runs/{id}/tasks": [f"/api/runs/{i}/tasks" for i in ids],
        "api GET /api/stats": ["/api/stats"] * requests,
    }


@dataclass
class PgHistory:
    url: str
    seconds: float  # `nagare db migrate` of the seeded SQLite history

    def note(self) -> str:
        return f"moved from SQLite by `nagare db migrate` in {self.seconds:.0f} s"


def _pg_history(cfg: Settings, size: seed.HistorySize, cached: Path) -> PgHistory:
    """The seeded history in a fresh PostgreSQL database, moved there by `nagare db migrate`
    (from a copy: opening a SQLite file may switch it to WAL; the cache stays untouched)."""
    assert cfg.postgres is not None
    found = cfg.pg_histories.get(size.runs)
    if found is not None:
        return found
    url = cfg.postgres()
    command = Launcher(cfg.launcher.pyz).command()  # never profiled
    cfg.say(f"  nagare db migrate: {size.runs:,} runs into PostgreSQL ...")
    with tempfile.TemporaryDirectory(prefix="nagare-bench-") as folder:
        source = Path(folder) / "history.db"
        shutil.copyfile(cached, source)
        start = time.perf_counter()
        done = subprocess.run(
            [*command, "db", "migrate", "--from", str(source), "--to", url, "--json"],
            cwd=folder,
            env=source_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"nagare db migrate failed: {(done.stdout + done.stderr)[-1000:]}")
    cfg.say(f"  nagare db migrate: {seconds:.1f}s")
    found = cfg.pg_histories[size.runs] = PgHistory(url, seconds)
    return found


@contextlib.contextmanager
def _history_server(cfg: Settings, size: seed.HistorySize, store: str) -> Iterator[Server]:
    """A server on the seeded history: a copy of the cached SQLite file, or (store
    `postgresql`) the history moved into PostgreSQL."""
    cached = seed.seeded_db(cfg.launcher, size, cfg.say)
    url = _pg_history(cfg, size, cached).url if store == "postgresql" else None
    server = Server(cfg.launcher, dags=seed.history_dag_files(size), db_url=url)
    try:
        server.prepare()
        if url is None:
            shutil.copyfile(cached, server.db_path)  # the cache itself stays untouched
        server.start()
        yield server
    finally:
        server.close()


def _side_by_side(by_store: list[list[Row]]) -> list[Row]:
    """SQLite's rows, each followed by the same row on PostgreSQL (noting its p95 against
    SQLite's) when both stores were measured."""
    if len(by_store) == 1:
        return by_store[0]
    rows = []
    for sqlite, postgresql in zip(*by_store, strict=True):
        postgresql.notes += f"; p95 {_p95_ratio(postgresql, sqlite)} SQLite's in the same run"
        rows += [sqlite, postgresql]
    return rows


def _p95_ratio(row: Row, base: Row) -> str:
    def p95(value: str) -> float:  # `Latency.text()`: "p50 X / p95 Y ms"
        return float(value.split("p95 ")[1].split()[0])

    return f"{p95(row.value) / p95(base.value):.2f}x"


def api(cfg: Settings) -> list[Row]:
    size = seed.HistorySize(runs=10_000 if cfg.quick else 100_000)
    requests = 40 if cfg.quick else 200
    fresh_requests = 20 if cfg.quick else 50
    run_ids = _sample_runs(seed.seeded_db(cfg.launcher, size, cfg.say), requests)
    by_store = []
    for store in _stores(cfg):
        cfg.say(f"  on {store}")
        with _history_server(cfg, size, store) as server:
            rows = _api_rows(server, run_ids, requests, fresh_requests, cfg.say)
        for row in rows:
            row.workload += _suffix(store)
        rows[0].notes += f"; history {size.runs:,} runs / {size.tasks:,} tasks"
        if store == "postgresql":
            rows[0].notes += "; " + cfg.pg_histories[size.runs].note()
        by_store.append(rows)
    return _side_by_side(by_store)


def _api_rows(
    server: Server,
    run_ids: list[str],
    requests: int,
    fresh_requests: int,
    say: Callable[[str], None],
) -> list[Row]:
    keep = server.client(keep_alive=True)
    fresh = server.client(keep_alive=False)
    keep.timed_get("/api/health")  # open the connection
    floor = _latency(keep, ["/api/health"] * requests)
    floor_fresh = _latency(fresh, ["/api/health"] * fresh_requests)
    say(f"  floor GET /api/health: keep-alive {floor.text()}, new conn {floor_fresh.text()}")
    rows = []
    for label, paths in _api_paths(run_ids, requests).items():
        measured = _latency(keep, paths)
        new_conn = _latency(fresh, paths[:fresh_requests])
        say(f"  {label}: keep-alive {measured.text()}, new conn {new_conn.text()}")
        rows.append(_api_row(label, measured, floor, new_conn, floor_fresh, requests))
    keep.close()
    return rows


def _api_row(
    label: str, measured: Latency, floor: Latency, fresh: Latency, fresh_floor: Latency, n: int
) -> Row:
    return Row(
        label,
        measured.text(),
        floor.text(),
        f"p95 {measured.p95 / floor.p95:.2f}x",
        "p95 <= 50 ms",
        measured.p95 <= 0.050,
        f"{n} keep-alive requests; with a new connection per request: {fresh.text()} "
        f"(health {fresh_floor.text()})",
    )


# ---------------------------------------------------------------- metrics under history


def _metrics_paths(requests: int) -> dict[str, list[str]]:
    dag_id = seed.history_dag_ids()[3]
    return {
        "metrics GET /api/metrics/overview?since=30d": ["/api/metrics/overview?since=30d"]
        * requests,
        "metrics GET /api/metrics/timeseries?since=30d&bucket=1h&limit=720": [
            "/api/metrics/timeseries?since=30d&bucket=1h&limit=720"
        ]
        * requests,
        "metrics GET /api/metrics/timeseries?since=24h&bucket=5m": [
            "/api/metrics/timeseries?since=24h&bucket=5m"
        ]
        * requests,
        "metrics GET /metrics": ["/metrics"] * requests,
        f"metrics GET /api/metrics/dags/{dag_id}?since=30d&bucket=1d": [
            f"/api/metrics/dags/{dag_id}?since=30d&bucket=1d"
        ]
        * requests,
    }


def metrics(cfg: Settings) -> list[Row]:
    """The metrics API over the `api` workload's history: its 1,000,000 attempts (metric rows)
    spread over 30 days, p50/p95 next to the /api/health floor."""
    size = seed.HistorySize(runs=10_000 if cfg.quick else 100_000)
    requests = 40 if cfg.quick else 200
    fresh_requests = 20 if cfg.quick else 50
    by_store = []
    for store in _stores(cfg):
        cfg.say(f"  on {store}")
        with _history_server(cfg, size, store) as server:
            rows = _metrics_rows(server, size, requests, fresh_requests, cfg.say)
        for row in rows:
            row.workload += _suffix(store)
        if store == "postgresql":
            rows[0].notes += "; " + cfg.pg_histories[size.runs].note()
        by_store.append(rows)
    return _side_by_side(by_store)


def _metrics_rows(
    server: Server,
    size: seed.HistorySize,
    requests: int,
    fresh_requests: int,
    say: Callable[[str], None],
) -> list[Row]:
    window = server.client(keep_alive=False).get_json("/api/metrics/overview?since=30d")
    points = server.client(keep_alive=False).get_json(
        "/api/metrics/timeseries?since=30d&bucket=1h&limit=720"
    )
    keep = server.client(keep_alive=True)
    fresh = server.client(keep_alive=False)
    keep.timed_get("/api/health")
    floor = _latency(keep, ["/api/health"] * requests)
    floor_fresh = _latency(fresh, ["/api/health"] * fresh_requests)
    say(f"  floor GET /api/health: keep-alive {floor.text()}, new conn {floor_fresh.text()}")
    rows = []
    for label, paths in _metrics_paths(requests).items():
        measured = _latency(keep, paths)
        new_conn = _latency(fresh, paths[:fresh_requests])
        say(f"  {label}: keep-alive {measured.text()}, new conn {new_conn.text()}")
        row = _api_row(label, measured, floor, new_conn, floor_fresh, requests)
        row.target, row.passed = "p95 <= 100 ms", measured.p95 <= 0.100
        rows.append(row)
    keep.close()
    rows[0].notes += (
        f"; {window['total_tasks']:,} attempts in the 30-day window of a history of "
        f"{size.tasks:,} attempts / {size.runs:,} runs"
    )
    rows[1].notes += f"; {len(points)} points"
    return rows


# ---------------------------------------------------------------- webhooks

WEBHOOK_SECRET = "bench-secret"
WEBHOOK_DAG = f"""id: hooked
trigger:
  type: webhook
  path: /api/webhooks/bench
  secret: "{WEBHOOK_SECRET}"
  extract_payload: {{SEQ: ".seq", AUTHOR: ".pusher.name"}}
tasks:
  - id: t
    command: "true"
"""


def _post_signed(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _webhook_client(port: int, path: str, seqs: list[int]) -> list[tuple[int, str, float]]:
    """One client (keep-alive connection) posting signed GitHub-style payloads."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for seq in seqs:
            body = json.dumps({"seq": seq, "pusher": {"name": f"user{seq}"}}).encode()
            start = time.perf_counter()
            status, answer = _post_signed(conn, path, body)
            elapsed = time.perf_counter() - start
            if status != 202:
                raise BenchError(f"webhook {seq} answered {status}: {answer[:300]!r}")
            out.append((seq, str(json.loads(answer)["run_id"]), elapsed))
    finally:
        conn.close()
    return out


def webhooks(cfg: Settings) -> list[Row]:
    """Signed webhook deliveries: one client one after the other (the 202 latency a sender
    sees), then a burst from 20 concurrent clients while the runs execute; every run is then
    checked (none lost, each with its own conf)."""
    requests, clients = (100, 10) if cfg.quick else (200, 20)
    path = "/api/webhooks/bench"
    with Server(cfg.launcher, dags={"hooked.yaml": WEBHOOK_DAG}) as server:
        keep = server.client(keep_alive=True)
        keep.timed_get("/api/health")
        floor = _latency(keep, ["/api/health"] * requests)
        keep.close()
        single = _webhook_client(server.port, path, list(range(requests, requests + 50)))
        shares = [list(range(i, requests, clients)) for i in range(clients)]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            parts = list(pool.map(lambda seqs: _webhook_client(server.port, path, seqs), shares))
        wall = time.perf_counter() - started
        burst = [r for part in parts for r in part]
        check = server.client(keep_alive=True)
        for seq, run_id, _ in burst + single:
            conf = check.get_json(f"/api/runs/{run_id}")["conf"]
            if conf != {"SEQ": str(seq), "AUTHOR": f"user{seq}"}:
                raise BenchError(f"run {run_id} of delivery {seq} has conf {conf}")
        total = check.get_json("/api/runs?limit=1")["total"]
        check.close()
    one = _percentiles([elapsed for _, _, elapsed in single])
    many = _percentiles([elapsed for _, _, elapsed in burst])
    lost = requests + len(single) - total
    cfg.say(f"  webhooks: 1 client {one.text()}; {clients} clients {many.text()}")
    return [
        Row(
            "webhooks 50 signed POSTs, 1 client",
            one.text(),
            floor.text(),
            f"p95 {one.p95 / floor.p95:.2f}x",
            "p95 <= 50 ms",
            one.p95 <= 0.050,
            "202 answer time per delivery (HMAC, jq, run created); floor = GET /api/health",
        ),
        Row(
            f"webhooks {requests} signed POSTs, {clients} clients",
            many.text(),
            floor.text(),
            f"p95 {many.p95 / floor.p95:.2f}x",
            "none lost",
            lost == 0,
            f"{requests / wall:.0f} deliveries/s while the runs execute; {total} runs created "
            f"for {requests + len(single)} deliveries, {lost} lost, each conf checked",
        ),
    ]


def _percentiles(seconds: list[float]) -> Latency:
    return Latency(percentile(seconds, 50), percentile(seconds, 95))


WORKLOADS: dict[str, Callable[[Settings], list[Row]]] = {
    "chain100": chain100,
    "output_chain100": output_chain100,
    "fanout1000": fanout1000,
    "map10000": map10000,
    "startup": startup,
    "api": api,
    "metrics": metrics,
    "webhooks": webhooks,
}
