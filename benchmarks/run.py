#!/usr/bin/env python3
"""Nagare benchmarks: each workload's median next to a floor measured in the same run.

    python3 benchmarks/run.py [--quick] [--only NAME[,NAME]] [--reps N] [--pyz [PATH]] [--postgres]

Prints a table (workload, median, floor, ratio or overhead, target, PASS/FAIL) and writes it to
benchmarks/results.md. Exit status: 0 when every measured row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    CACHE_DIR,
    ROOT,
    BenchError,
    Client,
    Launcher,
    Server,
    percentile,
    source_env,
    stop_processes,
)
from profile_server import summary
from report import Row, console_table, error_row, write_markdown
from trickle import trickle1000
from workloads import WORKLOADS, Settings

RESULTS = BENCH_DIR / "results.md"
REPO_PYZ = ROOT / "nagare.pyz"
PROFILE_DIR = CACHE_DIR / "profiles"


# ---------------------------------------------------------------- cluster
#
# A master with `worker_pools: {default: 8, remote: 0}` and two remote workers (`nagare worker
# --join`, `--pools remote --max-tasks 4`) on this machine. Tasks of pool `remote` run only on the
# workers; the same tasks in pool `default` run on the master's own 8 slots: that is the floor,
# measured on the same server in the same run.

CLUSTER_WORKERS = ("w1", "w2")
CLUSTER_MAX_TASKS = 4
CLUSTER_LOCAL_SLOTS = 8
DISPATCH_TARGET_MS = 100.0
THROUGHPUT_TARGET = 0.7  # remote tasks/s >= 0.7x the local pool's (ours, not a requirement)
STAMP = "date +%s%N"  # GNU date: the wall clock (ns) when the task's process started
STAMP_TIMEOUT_SECONDS = 5.0  # a single-task run not finished by then is a miss
MAX_MISSES = 3  # the dispatch measurement stops after this many misses in a pool
# how often a throughput run's status is read: a coarse tick (it was 50 ms) rounds a run of a
# few tenths of a second up to its next tick, which alone swung the local pool's figure by 25%
FLAT_TICK_SECONDS = 0.005


def _dag_text(dag_id: str, tasks: list[dict[str, object]]) -> str:
    header = f"id: {dag_id}\nschedule: workflow_dispatch\ntasks:\n"
    return header + "".join(f"  - {json.dumps(task)}\n" for task in tasks)


def _cluster_dags(width: int) -> dict[str, str]:
    """stamp_<pool>: one task printing its start time; flat_<pool>: `width` independent `true`."""
    dags: dict[str, str] = {}
    for pool in ("remote", "default"):
        stamp: list[dict[str, object]] = [{"id": "stamp", "command": STAMP, "pool": pool}]
        dags[f"stamp_{pool}.yaml"] = _dag_text(f"stamp_{pool}", stamp)
        flat: list[dict[str, object]] = [
            {"id": f"t{i:04d}", "command": "true", "pool": pool} for i in range(width)
        ]
        dags[f"flat_{pool}.yaml"] = _dag_text(f"flat_{pool}", flat)
    return dags


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class _Workers:
    """The remote worker processes, each in its own process group; `close()` stops them
    (SIGTERM, then SIGKILL of the group) and must run before the master is stopped, so that
    they can say goodbye instead of retrying an absent master."""

    def __init__(self, launcher: Launcher, server: Server) -> None:
        # never profiled: only the master's figures are of interest under --profile
        self.command = Launcher(launcher.pyz).command()
        self.server = server
        self.folder = server.root / "workers"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        self.folder.mkdir(exist_ok=True)
        config = self.folder / "worker.yaml"
        config.write_text(json.dumps({"shutdown_grace_seconds": 1, "log_level": "warning"}))
        for worker_id in CLUSTER_WORKERS:
            log = open(self.folder / f"{worker_id}.log", "ab")  # noqa: SIM115 - the child's
            self.processes[worker_id] = subprocess.Popen(
                [
                    *self.command,
                    "worker",
                    "--join",
                    f"http://127.0.0.1:{self.server.port}",
                    "--pools",
                    "remote",
                    "--worker-id",
                    worker_id,
                    "--max-tasks",
                    str(CLUSTER_MAX_TASKS),
                    "--config",
                    str(config),
                ],
                cwd=self.folder,
                env=source_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()

    def wait_online(self, client: Client, deadline_seconds: float = 30.0) -> float:
        """Seconds until the master lists every worker online."""
        start = time.perf_counter()
        while time.perf_counter() - start < deadline_seconds:
            online = {
                w["worker_id"] for w in client.get_json("/api/workers") if w["status"] == "online"
            }
            if online >= set(CLUSTER_WORKERS):
                return time.perf_counter() - start
            for worker_id, process in self.processes.items():
                if process.poll() is not None:
                    raise BenchError(f"worker {worker_id} exited: {self.log_tail(worker_id)}")
            time.sleep(0.05)
        raise BenchError(f"workers not online after {deadline_seconds:.0f}s")

    def log_tail(self, worker_id: str, lines: int = 10) -> str:
        try:
            text = (self.folder / f"{worker_id}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """SIGTERM every worker; SIGKILL the group of one that does not exit within 15 s, and
        any task process a worker left behind (as `Server.stop` does)."""
        processes, self.processes = self.processes, {}
        stop_processes(list(processes.values()))


def _stamp_run(client: Client, pool: str) -> dict[str, Any]:
    """One single-task run in `pool`: (start - queued) and (claim - queued) in ms, the worker.
    A task not finished within STAMP_TIMEOUT_SECONDS is a miss (its run is killed)."""
    start = time.perf_counter()
    run_id = client.trigger(f"stamp_{pool}")
    while True:
        run = client.get_json(f"/api/runs/{run_id}")
        if run["status"] in ("success", "failed", "cancelled"):
            break
        if time.perf_counter() - start > STAMP_TIMEOUT_SECONDS:
            task = client.get_json(f"/api/runs/{run_id}/tasks")[0]
            client.request("POST", f"/api/runs/{run_id}/kill", {})
            return {"start_ms": math.inf, "claim_ms": math.inf, "worker": "-", "task": task}
        time.sleep(0.005)
    if run["status"] != "success":
        raise BenchError(f"run {run_id} ended {run['status']}")
    task = client.get_json(f"/api/runs/{run_id}/tasks")[0]
    status, body = client.request("GET", f"/api/runs/{run_id}/tasks/stamp/logs")
    stamps = [line for line in body.decode().splitlines() if line.strip().isdigit()]
    if status != 200 or not stamps:
        raise BenchError(f"no start time in the log of {run_id}: {body[:300]!r}")
    queued = _epoch(task["queued_at"])
    return {
        "start_ms": (int(stamps[-1]) / 1e9 - queued) * 1000,
        "claim_ms": (_epoch(task["started_at"]) - queued) * 1000,
        "worker": task.get("worker") or "?",
    }


def _ms(value: float) -> str:
    return (
        f"> {STAMP_TIMEOUT_SECONDS * 1000:.0f} ms (missed)"
        if math.isinf(value)
        else f"{value:.1f} ms"
    )


def _p50_p95(values: list[float]) -> str:
    return f"p50 {_ms(percentile(values, 50))} / p95 {_ms(percentile(values, 95))}"


def _flat_run(client: Client, pool: str, width: int, budget: float) -> dict[str, Any]:
    """One run of `width` independent `true` in `pool`, stopped (killed) after `budget` s."""
    start = time.perf_counter()
    run_id = client.trigger(f"flat_{pool}")
    while True:
        run = client.get_json(f"/api/runs/{run_id}")
        elapsed = time.perf_counter() - start
        if run["status"] in ("success", "failed", "cancelled") or elapsed > budget:
            break
        time.sleep(FLAT_TICK_SECONDS)
    tasks = client.get_json(f"/api/runs/{run_id}/tasks")
    done = [t for t in tasks if t["status"] == "success"]
    if run["status"] not in ("success", "failed", "cancelled"):
        client.request("POST", f"/api/runs/{run_id}/kill", {})
    elif run["status"] != "success":
        raise BenchError(f"run {run_id} ended {run['status']}")
    span = float("nan")
    if done:
        first = min(_epoch(t["queued_at"]) for t in tasks if t["queued_at"])
        span = max(_epoch(t["completed_at"]) for t in done) - first
    return {
        "complete": len(done) == width,
        "done": len(done),
        "seconds": elapsed,
        "rate": len(done) / elapsed,
        "server_rate": len(done) / span if span > 0 else float("nan"),
        "workers": Counter(t.get("worker") or "?" for t in done),
    }


def cluster(cfg: Settings) -> list[Row]:
    """Dispatch latency to idle remote workers and remote throughput, each next to the master's
    own pool measured on the same server in the same run."""
    samples = 20 if cfg.quick else 50
    width = 400 if cfg.quick else 1000
    reps = cfg.reps_for(3, 1)
    budget = 15.0 if cfg.quick else 30.0  # per remote throughput run; stopped there if slower
    settings = {"worker_pools": {"default": CLUSTER_LOCAL_SLOTS, "remote": 0}}
    with Server(cfg.launcher, dags=_cluster_dags(width), settings=settings) as server:
        workers = _Workers(cfg.launcher, server)
        try:
            workers.start()
            client = server.client(keep_alive=False)
            joined = workers.wait_online(client)
            cfg.say(f"  {len(CLUSTER_WORKERS)} workers online after {joined:.2f}s")
            latency = _dispatch(client, samples, cfg)
            throughput = _throughput(client, width, reps, budget, cfg)
        finally:
            workers.close()
    return _cluster_rows(latency, throughput, width, budget)


def _dispatch(client: Client, samples: int, cfg: Settings) -> dict[str, list[dict[str, Any]]]:
    """`samples` single-task runs per pool, remote and local alternating, one at a time (the
    workers are idle, waiting in their long poll, when each task is queued)."""
    found: dict[str, list[dict[str, Any]]] = {"remote": [], "default": []}
    for index in range(samples):
        for pool in ("remote", "default"):
            sample = _stamp_run(client, pool)
            found[pool].append(sample)
            if "task" in sample:
                task = sample["task"]
                cfg.say(
                    f"  MISS: the {pool} task was not done after {STAMP_TIMEOUT_SECONDS:.0f}s "
                    f"(status {task['status']}, worker {task.get('worker') or '-'})"
                )
            time.sleep(0.02)
        misses = max(_misses(found["remote"]), _misses(found["default"]))
        if (index + 1) % 10 == 0 or index + 1 == samples or misses >= MAX_MISSES:
            remote = [s["start_ms"] for s in found["remote"]]
            local = [s["start_ms"] for s in found["default"]]
            cfg.say(
                f"  dispatch {index + 1}/{samples}: remote {_p50_p95(remote)}; "
                f"local {_p50_p95(local)}"
            )
        if misses >= MAX_MISSES:
            cfg.say(f"  dispatch stopped after {MAX_MISSES} misses")
            break
    return found


def _misses(samples: list[dict[str, Any]]) -> int:
    return sum(1 for s in samples if "task" in s)


def _throughput(
    client: Client, width: int, reps: int, budget: float, cfg: Settings
) -> dict[str, list[dict[str, Any]]]:
    """Local and remote runs alternate, so that both see the same load of a shared machine."""
    found: dict[str, list[dict[str, Any]]] = {"default": [], "remote": []}
    for rep in range(reps):
        for pool in ("default", "remote"):
            result = _flat_run(client, pool, width, budget if pool == "remote" else 120.0)
            found[pool].append(result)
            how = "" if result["complete"] else f" (stopped: {result['done']}/{width} done)"
            cfg.say(
                f"  {width} x true, pool {pool} rep {rep + 1}/{reps}: {result['seconds']:.2f}s, "
                f"{result['rate']:.0f} tasks/s{how}"
            )
            if not result["complete"]:
                return found  # already a FAIL; more capped repetitions would only cost time
    return found


def _missed_note(latency: dict[str, list[dict[str, Any]]]) -> str:
    missed = {pool: _misses(found) for pool, found in latency.items() if _misses(found)}
    if not missed:
        return ""
    what = ", ".join(f"{pool} {n}/{len(latency[pool])}" for pool, n in missed.items())
    return f"; MISSED (not done within {STAMP_TIMEOUT_SECONDS:.0f}s, run killed): {what}"


def _cluster_rows(
    latency: dict[str, list[dict[str, Any]]],
    throughput: dict[str, list[dict[str, Any]]],
    width: int,
    budget: float,
) -> list[Row]:
    remote = [s["start_ms"] for s in latency["remote"]]
    local = [s["start_ms"] for s in latency["default"]]
    remote_claim = [s["claim_ms"] for s in latency["remote"]]
    local_claim = [s["claim_ms"] for s in latency["default"]]
    p95 = percentile(remote, 95)
    by_worker = Counter(s["worker"] for s in latency["remote"] if "task" not in s)
    spread = ", ".join(f"{w} {n}" for w, n in sorted(by_worker.items()))

    def rate(pool: str) -> dict[str, Any]:
        runs = sorted(throughput[pool], key=lambda r: r["rate"])
        return runs[len(runs) // 2]  # the median run (the only one when capped)

    remote_run, local_run = rate("remote"), rate("default")
    ratio = remote_run["rate"] / local_run["rate"]
    capped = (
        ""
        if remote_run["complete"]
        else f"; STOPPED after {budget:.0f}s with {remote_run['done']}/{width} done"
    )
    runs_note = "1 capped run" if not remote_run["complete"] else f"N={len(throughput['remote'])}"
    tasks_by = ", ".join(f"{w} {n}" for w, n in sorted(remote_run["workers"].items()))
    return [
        Row(
            "cluster dispatch (2 idle workers)",
            "start-queued " + _p50_p95(remote),
            "local pool " + _p50_p95(local),
            f"{p95 - percentile(local, 95):+.1f} ms p95",
            f"p95 <= {DISPATCH_TARGET_MS:.0f} ms",
            p95 <= DISPATCH_TARGET_MS,
            f"{len(remote)} single-task runs per pool, remote and local alternating; task "
            f"process start (`{STAMP}`) - queued_at (ms resolution); tasks by worker: {spread}"
            + _missed_note(latency),
        ),
        Row(
            "cluster claim (queued_at -> started_at)",
            _p50_p95(remote_claim),
            "local pool " + _p50_p95(local_claim),
            f"{percentile(remote_claim, 95) - percentile(local_claim, 95):+.1f} ms p95",
            "-",
            None,
            "the master's own timestamps: the claim inside the worker's long poll, against a "
            "local slot's claim",
        ),
        Row(
            f"cluster throughput ({width} x true)",
            f"{remote_run['rate']:.1f} tasks/s",
            f"local pool {CLUSTER_LOCAL_SLOTS}: {local_run['rate']:.1f} tasks/s",
            f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x",
            f">= {THROUGHPUT_TARGET:g}x local",
            ratio >= THROUGHPUT_TARGET,
            f"2 workers x {CLUSTER_MAX_TASKS} slots against the master's {CLUSTER_LOCAL_SLOTS}; "
            f"trigger -> run success ({runs_note} remote, N={len(throughput['default'])} local, "
            "alternating; "
            f"{remote_run['seconds']:.2f}s against {local_run['seconds']:.2f}s){capped}; "
            f"server-side first queued -> last completed: {remote_run['server_rate']:.1f} against "
            f"{local_run['server_rate']:.1f} tasks/s; tasks by worker: {tasks_by}",
        ),
    ]


WORKLOADS["cluster"] = cluster
WORKLOADS["trickle1000"] = trickle1000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, < 1 minute")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these workloads (repeatable or comma-separated): {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--reps", type=int, help="repetitions of every workload (default: each's)")
    parser.add_argument(
        "--pyz",
        nargs="?",
        const="",
        metavar="PATH",
        help="run servers from a zipapp (default: ./nagare.pyz if it exists, else a fresh "
        "build of the source tree in benchmarks/.cache)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the engine's servers under cProfile (source tree; inflates the numbers) and "
        "write their hottest functions to benchmarks/.cache/profile-*.txt",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also run chain100, fanout1000, api and metrics on PostgreSQL (a temporary server "
        "started like the tests' one: Debian's postgresql package; the seeded history is moved "
        "there with `nagare db migrate`) and compare them with SQLite's",
    )
    args = parser.parse_args(argv)
    if args.profile and args.pyz is not None:
        parser.error("--profile runs the source tree; it cannot be combined with --pyz")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def selected(only: list[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    aliases = {"idle_rss": "startup"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    return [n for n in WORKLOADS if not names or n in names]


def resolve_pyz(option: str | None) -> Path | None:
    """--pyz PATH -> PATH; --pyz -> ./nagare.pyz, else a fresh build of the current source tree
    in .cache (a few seconds; never a stale one); absent -> None."""
    if option is None:
        return None
    if option:
        path = Path(option).resolve()
        if not path.is_file():
            raise SystemExit(f"--pyz: no file {path}")
        return path
    if REPO_PYZ.is_file():
        return REPO_PYZ
    return build_pyz(CACHE_DIR / "nagare.pyz")


def build_pyz(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {output.relative_to(ROOT)} with build_pyz.py ...", flush=True)
    base = [sys.executable, str(ROOT / "build_pyz.py"), "--output", str(output)]
    for extra in (["--offline"], []):
        done = subprocess.run(base + extra, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return output
    raise SystemExit(f"build_pyz.py failed:\n{done.stderr[-2000:]}")


def settings(args: argparse.Namespace) -> Settings:
    pyz = resolve_pyz(args.pyz)
    engine = Launcher(pyz, profile_dir=PROFILE_DIR if args.profile else None)
    startup_pyz = pyz or (REPO_PYZ if REPO_PYZ.is_file() else None)
    return Settings(engine, Launcher(startup_pyz), quick=args.quick, reps=args.reps, say=say)


def say(message: str) -> None:
    print(message, flush=True)


def run_workload(name: str, cfg: Settings) -> list[Row]:
    say(f"== {name}")
    start = time.perf_counter()
    cfg.launcher.profile_tag = name
    try:
        rows = WORKLOADS[name](cfg)
    except Exception as exc:  # one broken workload must not hide the others
        traceback.print_exc()
        rows = [error_row(name, f"{type(exc).__name__}: {exc}")]
    say(f"   ({time.perf_counter() - start:.1f}s)")
    if cfg.launcher.profile_dir is not None:
        summarize_profiles(cfg.launcher.profile_dir, name)
    return rows


def summarize_profiles(folder: Path, name: str) -> None:
    """profile-<workload>.txt: the hottest functions of the workload's server(s)."""
    files = sorted(folder.glob(f"{name}-*.prof"))
    if not files:
        return
    text = "\n".join(f"### {f.name}\n{summary(f)}" for f in files)
    out = CACHE_DIR / f"profile-{name}.txt"
    out.write_text(text)
    say(f"   profile: {out.relative_to(ROOT)}")


@contextlib.contextmanager
def postgres_databases(wanted: bool) -> Iterator[Callable[[], str] | None]:
    """With `--postgres`: a temporary PostgreSQL server (tests/postgres_server.py) for the
    whole run, and a function giving a fresh database's URL; stopped at the end."""
    if not wanted:
        yield None
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres_server import find_bindir, start_server

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("--postgres: PostgreSQL is not installed (apt-get install postgresql)")
    server = start_server(bindir)
    say(f"postgresql: {bindir} on 127.0.0.1:{server.port}")
    try:
        yield lambda: server.url(server.new_database())
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    cfg = settings(args)
    if args.profile:
        shutil.rmtree(PROFILE_DIR, ignore_errors=True)
        PROFILE_DIR.mkdir(parents=True)
    say(f"engine: {cfg.launcher.label}; startup: {cfg.startup_launcher.label}")
    start = time.perf_counter()
    with postgres_databases(args.postgres) as cfg.postgres:
        rows = [row for name in names for row in run_workload(name, cfg)]
    total = time.perf_counter() - start
    print()
    print(console_table(rows))
    context = {
        "mode": "quick" if args.quick else "full",
        "workloads": ", ".join(names),
        "repetitions": str(args.reps) if args.reps else "per-workload defaults",
        "engine": cfg.launcher.label,
        "startup": cfg.startup_launcher.label,
        "suite time": f"{total:.0f} s",
    }
    if args.profile:
        context["profiled"] = "yes: servers ran under cProfile, engine numbers are inflated"
    write_markdown(RESULTS, rows, context)
    print(f"\nsuite time {total:.0f}s; wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
