#!/usr/bin/env python3
"""Nagare fault scenarios: real servers and workers, killed, frozen, starved of disk, flooded with
slow clients and fed broken DAG files; each scenario checks the promises and has a time bound.

    python3 benchmarks/chaos.py [--only NAME[,NAME]] [--pyz [PATH]]

Prints a table (scenario, result, seconds, what was seen) and writes it to
benchmarks/chaos-results.md. Exit status 0 when every scenario that ran passed. `full_disk`
needs root (it mounts a small tmpfs); it is reported as skipped elsewhere.

The promises checked: no run stuck or lost, every task body completes at least once (and, after a
kill -9 of its supervisor, its processes are gone within 2 s, so no body runs on unsupervised),
the server keeps answering `/api/health`, a broken file never stops the others, and a database on
a full disk keeps its integrity.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from harness import (
    BENCH_DIR,
    BenchError,
    Client,
    Launcher,
    Server,
    percentile,
    source_env,
    stop_processes,
)
from report import machine
from run import resolve_pyz

RESULTS = BENCH_DIR / "chaos-results.md"
TERMINAL = ("success", "failed", "cancelled")
GONE_WITHIN_SECONDS = 2.0  # a killed supervisor's task processes must be gone by then
WIDTH = 3  # tasks after the first one
RETRIES = 6  # a task may be killed in every round (an attempt lost in a crash counts)
BODY_SECONDS = 2.5  # longer than GONE_WITHIN_SECONDS: a body that ends by itself proves nothing


@dataclass
class Outcome:
    scenario: str
    passed: bool | None  # None: skipped
    seconds: float
    seen: str


class Failed(Exception):
    """A promise did not hold."""


# ---------------------------------------------------------------- shared pieces


def _body(marks: Path, seconds: float) -> str:
    """A task body that leaves `start` and `done` marks and keeps a child process running
    (its process group has two members, as real tasks do)."""
    return (
        f'echo "start $NAGARE_RUN_ID $NAGARE_TASK_ID" >> {marks}; '
        'echo "$NAGARE_TASK_ID is working"; '
        f"sleep {seconds} & wait; "
        f'echo "done $NAGARE_RUN_ID $NAGARE_TASK_ID" >> {marks}'
    )


def _dag(dag_id: str, marks: Path, width: int, pool: str = "default", seconds: float = 0.6) -> str:
    tasks = [
        {
            "id": "first",
            "command": _body(marks, seconds),
            "retries": RETRIES,
            "retry_delay_seconds": 0,
            "pool": pool,
        }
    ]
    tasks += [
        {
            "id": f"t{i}",
            "command": _body(marks, seconds),
            "retries": RETRIES,
            "retry_delay_seconds": 0,
            "depends_on": ["first"],
            "pool": pool,
        }
        for i in range(width)
    ]
    header = f"id: {dag_id}\nschedule: workflow_dispatch\ntasks:\n"
    return header + "".join(f"  - {json.dumps(t)}\n" for t in tasks)


def _task_processes(dag_id: str) -> list[psutil.Process]:
    """Every process on this machine whose environment names the DAG (task shells and their
    children)."""
    found = []
    needle = f"NAGARE_DAG_ID={dag_id}"
    for process in psutil.process_iter():
        with (
            contextlib.suppress(psutil.Error, OSError),
            open(f"/proc/{process.pid}/environ", "rb") as handle,
        ):
            if needle.encode() in handle.read().split(b"\0"):
                found.append(process)
    return found


def _wait_gone(dag_id: str, bound: float) -> float:
    """Seconds until no process of the DAG is left; raises Failed past `bound`."""
    start = time.monotonic()
    while True:
        left = _task_processes(dag_id)
        if not left:
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            raise Failed(f"{len(left)} task process(es) still alive {bound:.0f}s after the kill")
        time.sleep(0.05)


def _wait_running(client: Client, run_ids: list[str], bound: float) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        for run_id in run_ids:
            tasks = client.get_json(f"/api/runs/{run_id}/tasks")
            if any(t["status"] == "running" for t in tasks):
                return
        time.sleep(0.05)
    raise Failed(f"no task running after {bound:.0f}s")


def _wait_finished(client: Client, run_ids: list[str], bound: float) -> Counter[str]:
    deadline = time.monotonic() + bound
    while True:
        statuses = Counter(client.get_json(f"/api/runs/{r}")["status"] for r in run_ids)
        if all(s in TERMINAL for s in statuses.elements()):
            return statuses
        if time.monotonic() > deadline:
            raise Failed(f"runs not finished within {bound:.0f}s: {dict(statuses)}")
        time.sleep(0.2)


def _marks(path: Path) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    starts: Counter[tuple[str, str]] = Counter()
    dones: Counter[tuple[str, str]] = Counter()
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            kind, run_id, task_id = line.split()
            (starts if kind == "start" else dones)[(run_id, task_id)] += 1
    return starts, dones


def _check_bodies(marks: Path, runs: int, tasks_per_run: int) -> str:
    starts, dones = _marks(marks)
    if len(dones) != runs * tasks_per_run:
        raise Failed(f"{len(dones)} of {runs * tasks_per_run} task bodies completed")
    doubled = sum(1 for n in dones.values() if n > 1)
    restarted = sum(n - 1 for n in starts.values())
    return f"bodies completed twice: {doubled}; bodies restarted after a kill: {restarted}"


def _trigger(client: Client, dag_id: str, count: int) -> list[str]:
    return [client.trigger(dag_id) for _ in range(count)]


# ---------------------------------------------------------------- master kills


def _master_kills(launcher: Launcher, sig: signal.Signals, rounds: int) -> str:
    """Each round triggers 2 runs (4 tasks of 2.5 s each), waits until one of them runs a
    task, then sends `sig` to the server and starts it again on the same database."""
    dag_id = f"chaos_master_{sig.name.lower()}"
    server = Server(launcher, settings={"worker_pools": {"default": 8}})
    marks = server.root / "marks"
    server.dags = {f"{dag_id}.yaml": _dag(dag_id, marks, width=WIDTH, seconds=BODY_SECONDS)}
    gone: list[float] = []
    run_ids: list[str] = []
    try:
        server.start()
        rng = random.Random(15)
        for _ in range(rounds):
            fresh = _trigger(server.client(keep_alive=False), dag_id, 2)
            run_ids += fresh
            _wait_running(server.client(keep_alive=False), fresh, 20)
            time.sleep(rng.uniform(0.2, 1.0))
            assert server.process is not None
            server.process.send_signal(sig)
            server.process.wait(timeout=30)
            if sig == signal.SIGKILL:
                gone.append(_wait_gone(dag_id, GONE_WITHIN_SECONDS))
            server.process = None
            server.start()
        client = server.client(keep_alive=False)
        statuses = _wait_finished(client, run_ids, 90)
        if statuses != Counter({"success": len(run_ids)}):
            reasons = Counter(_failure_reasons(client, dag_id))
            raise Failed(f"runs ended {dict(statuses)}; failed tasks: {dict(reasons)}")
        seen = _check_bodies(marks, len(run_ids), WIDTH + 1)
    finally:
        server.close()
    if gone:
        seen += f"; task processes gone {max(gone):.2f}s after a kill at most"
    return f"{rounds} x {sig.name}, {len(run_ids)} runs all success; {seen}"


def kill9_master(launcher: Launcher) -> str:
    return _master_kills(launcher, signal.SIGKILL, rounds=5)


def sigterm_master(launcher: Launcher) -> str:
    return _master_kills(launcher, signal.SIGTERM, rounds=3)


# ---------------------------------------------------------------- worker faults


class _Cluster:
    """A master that runs pool `remote` only on two workers (lease 3 s)."""

    def __init__(self, launcher: Launcher, dag_id: str) -> None:
        self.command = Launcher(launcher.pyz).command()
        self.server = Server(
            launcher,
            settings={"worker_pools": {"default": 0, "remote": 0}, "lease_timeout_seconds": 3},
        )
        self.marks = self.server.root / "marks"
        text = _dag(dag_id, self.marks, WIDTH, pool="remote", seconds=BODY_SECONDS)
        self.server.dags = {f"{dag_id}.yaml": text}
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        self.server.start()
        for worker_id in ("w1", "w2"):
            self.start_worker(worker_id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = self.server.client(keep_alive=False).get_json("/api/workers")
            if {w["worker_id"] for w in workers if w["status"] == "online"} >= {"w1", "w2"}:
                return
            time.sleep(0.1)
        raise BenchError("workers not online within 30 s")

    def start_worker(self, worker_id: str) -> None:
        folder = self.server.root / worker_id
        folder.mkdir(exist_ok=True)
        (folder / "worker.yaml").write_text('{"shutdown_grace_seconds": 1, "log_level": "warning"}')
        log = open(folder / "worker.log", "ab")  # noqa: SIM115 - the child's
        self.workers[worker_id] = subprocess.Popen(
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
                "4",
                "--config",
                str(folder / "worker.yaml"),
            ],
            cwd=folder,
            env=source_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()

    def close(self) -> None:
        try:
            for process in self.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
            stop_processes(list(self.workers.values()))
        finally:
            self.server.close()


def _wait_worker_busy(cluster: _Cluster, worker_id: str, dag_id: str, bound: float) -> set[int]:
    """The pids of the DAG's task processes under `worker_id` once it runs one (and its shell
    has started the body's child)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        under = {p.pid for p in _descendants(cluster.workers[worker_id].pid)}
        mine = {p.pid for p in _task_processes(dag_id)} & under
        if len(mine) >= 2:
            return mine
        time.sleep(0.05)
    raise Failed(f"{worker_id} ran no task within {bound:.0f}s")


def kill9_worker(launcher: Launcher) -> str:
    dag_id = "chaos_worker_kill"
    cluster = _Cluster(launcher, dag_id)
    try:
        cluster.start()
        client = cluster.server.client(keep_alive=False)
        run_ids = _trigger(client, dag_id, 4)
        before = _wait_worker_busy(cluster, "w1", dag_id, 20)
        cluster.workers["w1"].kill()
        cluster.workers["w1"].wait(timeout=10)
        gone = _wait_orphans_gone(before, GONE_WITHIN_SECONDS)
        cluster.start_worker("w1")  # the same worker id comes back
        statuses = _wait_finished(client, run_ids, 90)
        if statuses != Counter({"success": len(run_ids)}):
            raise Failed(f"runs ended {dict(statuses)}")
        seen = _check_bodies(cluster.marks, len(run_ids), WIDTH + 1)
    finally:
        cluster.close()
    return (
        f"w1 killed mid-run; its task processes gone after {gone:.2f}s; "
        f"{len(run_ids)} runs all success; {seen}"
    )


def _wait_orphans_gone(orphans: set[int], bound: float) -> float:
    """Seconds until every process of `orphans` is gone."""
    start = time.monotonic()
    while True:
        left = [pid for pid in orphans if _alive(pid)]
        if not left:
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            raise Failed(f"{len(left)} process(es) of the killed worker alive after {bound:.0f}s")
        time.sleep(0.05)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def freeze_worker(launcher: Launcher) -> str:
    """SIGSTOP a worker past its lease, then SIGCONT: nothing stuck, every run succeeds; bodies
    that ran on in the frozen worker's tasks may complete twice (the documented at-least-once)."""
    dag_id = "chaos_worker_freeze"
    cluster = _Cluster(launcher, dag_id)
    try:
        cluster.start()
        client = cluster.server.client(keep_alive=False)
        run_ids = _trigger(client, dag_id, 4)
        _wait_worker_busy(cluster, "w1", dag_id, 20)
        cluster.workers["w1"].send_signal(signal.SIGSTOP)
        time.sleep(6)  # twice the lease
        cluster.workers["w1"].send_signal(signal.SIGCONT)
        statuses = _wait_finished(client, run_ids, 90)
        if statuses != Counter({"success": len(run_ids)}):
            raise Failed(f"runs ended {dict(statuses)}")
        seen = _check_bodies(cluster.marks, len(run_ids), WIDTH + 1)
        workers = {w["worker_id"]: w["status"] for w in client.get_json("/api/workers")}
    finally:
        cluster.close()
    return f"w1 frozen 6 s (lease 3 s); {len(run_ids)} runs all success; {seen}; workers {workers}"


# ---------------------------------------------------------------- full disk


def full_disk(launcher: Launcher) -> str:
    """The logs and the database each on a tmpfs of their own (8 MB): first the logs' disk
    fills (tasks must fail with the reason, nothing else stops), then the database's (writes
    must answer a clear error); once space returns, runs succeed without a restart, and the
    database passes `PRAGMA integrity_check`."""
    if os.geteuid() != 0:
        raise _Skip("needs root to mount a small tmpfs")
    dag_id = "chaos_disk"
    server = Server(launcher, settings={"worker_pools": {"default": 4}})
    disks = {"logs_disk": server.root / "logs", "db_disk": server.root / "db_disk"}
    try:
        for disk in disks.values():
            disk.mkdir()
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                capture_output=True,
                check=False,
            )
            if mounted.returncode != 0:
                message = mounted.stderr.decode(errors="replace").strip()
                raise _Skip(f"cannot mount a tmpfs: {message}")
        server.db = disks["db_disk"] / "nagare.db"
        marks = server.root / "marks"
        server.dags = {f"{dag_id}.yaml": _dag(dag_id, marks, width=2, seconds=0.05)}
        return _full_disk_steps(server, disks, dag_id)
    finally:
        server.close()
        for disk in disks.values():
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    for block in ("64k", "4k"):  # to the last page
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", f"bs={block}", "oflag=append", "conv=notrunc"],
            capture_output=True,
            check=False,
        )
    return filler


def _full_disk_steps(server: Server, disks: dict[str, Path], dag_id: str) -> str:
    server.start()
    client = server.client(keep_alive=False)
    first = _wait_finished(client, _trigger(client, dag_id, 1), 30)
    filler = _fill(disks["logs_disk"])
    logs_full = _wait_finished(client, _trigger(client, dag_id, 2), 60)
    reasons = _failure_reasons(client, dag_id)
    if logs_full and not any("space" in reason for reason in reasons):
        raise Failed(f"runs on a full logs disk ended {dict(logs_full)}, reasons {reasons[:3]}")
    health_logs, _ = client.request("GET", "/api/health")
    filler.unlink()
    filler = _fill(disks["db_disk"])
    answers: Counter[int] = Counter()
    accepted: list[str] = []
    for _ in range(500):  # the WAL file keeps room of its own: write until the disk refuses
        status, body = client.request("POST", f"/api/dags/{dag_id}/runs", {})
        answers[status] += 1
        if status >= 500 and (status != 507 or b'"storage_full"' not in body):
            raise Failed(f"a write on a full disk answered {status}: {body[:200]!r}")
        if status == 201:
            accepted.append(json.loads(body)["run_id"])
        if answers[507] >= 3:
            break
    if not answers[507]:
        raise Failed(f"500 triggers on a full database disk answered {dict(answers)}")
    health_db, _ = client.request("GET", "/api/health")
    filler.unlink()
    deadline = time.monotonic() + 30
    after: Counter[str] = Counter()
    while time.monotonic() < deadline and after != Counter({"success": 2}):
        with contextlib.suppress(BenchError):
            after = _wait_finished(client, _trigger(client, dag_id, 2), 60)
        time.sleep(0.5)
    if after != Counter({"success": 2}):
        raise Failed(f"runs after space returned ended {dict(after)}")
    while_full = _wait_finished(client, accepted, 60)
    if while_full != Counter({"success": len(accepted)}):
        raise Failed(f"runs accepted while the database disk filled ended {dict(while_full)}")
    if server.process is None or server.process.poll() is not None:
        raise Failed("the server exited")
    server.stop()
    integrity = sqlite3.connect(server.db_path).execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        raise Failed(f"integrity_check: {integrity}")
    return (
        f"before: {dict(first)}; logs disk full: runs {dict(logs_full)} "
        f"({reasons[0] if reasons else 'no failure'}), health {health_logs}; database disk full: "
        f"triggers answered {dict(answers)}, health {health_db}; after space returned the "
        f"{len(accepted)} accepted runs and 2 new ones success without a restart; "
        "integrity_check ok"
    )


def _failure_reasons(client: Client, dag_id: str) -> list[str]:
    runs = client.get_json(f"/api/runs?dag_id={dag_id}&status=failed")["data"]
    reasons = []
    for run in runs:
        for task in client.get_json(f"/api/runs/{run['run_id']}/tasks"):
            if task["status"] == "failed":
                reasons.append(str(task.get("message") or task.get("error") or ""))
    return reasons


class _Skip(Exception):
    pass


# ---------------------------------------------------------------- slow clients


def slow_clients(launcher: Launcher, count: int = 1100) -> str:
    """`count` connections trickle a request one byte every 2 s at a server started with a
    soft fd limit of 1024 (the common default; Nagare raises it to the hard limit): health
    checks on fresh connections must keep answering within a second."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = Server(launcher)
    stop = threading.Event()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the server's
        try:
            server.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 500)), hard))
        sockets = _trickle(server.port, count, stop)
        latencies, failures = _probe_health(server.port, seconds=8.0)
        alive = server.process is not None and server.process.poll() is None
    finally:
        stop.set()
        server.close()
    if failures or not alive:
        raise Failed(f"{failures} health checks failed under {sockets} slow clients")
    p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    if p99 > 1000:
        raise Failed(f"health p99 {p99:.0f} ms under {sockets} slow clients")
    checks = f"{len(latencies)} health checks p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    return f"{sockets} trickling connections (server started at 1024 fds); {checks}"


def _trickle(port: int, count: int, stop: threading.Event) -> int:
    """Open `count` connections that send a request one byte every 2 s (a thread keeps them
    trickling until `stop`)."""
    conns: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"G")
        except OSError:
            sock.close()
            continue
        conns.append(sock)

    def keep_trickling() -> None:
        while not stop.wait(2.0):
            for sock in conns:
                with contextlib.suppress(OSError):
                    sock.send(b"E")
        for sock in conns:
            sock.close()

    threading.Thread(target=keep_trickling, daemon=True).start()
    return len(conns)


def _probe_health(port: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client = Client(port, keep_alive=False, timeout=5)
        try:
            latencies.append(client.timed_get("/api/health"))
        except (BenchError, OSError):
            failures += 1
        time.sleep(0.1)
    return latencies, failures


# ---------------------------------------------------------------- broken DAG files


def broken_dags(launcher: Launcher) -> str:
    server = Server(launcher)
    good = "id: good\nschedule: workflow_dispatch\ntasks:\n  - {id: a, command: 'true'}\n"
    server.dags = {"good.yaml": good, "deep.yaml": "[" * 100_000}
    try:
        dags = server.root / "dags"
        server.prepare()
        os.mkfifo(dags / "fifo.yaml")
        with open(dags / "big.yaml", "wb") as handle:
            handle.truncate(50 * 1024 * 1024)
        os.symlink("loop_b.yaml", dags / "loop_a.yaml")
        os.symlink("loop_a.yaml", dags / "loop_b.yaml")
        start = time.monotonic()
        server.start()
        started = time.monotonic() - start
        client = server.client(keep_alive=False)
        loaded = [d["dag_id"] for d in client.get_json("/api/dags")]
        errors = client.get_json("/api/dags/errors")
        log_before = (server.root / "server.log").stat().st_size
        time.sleep(3)
        growth = (server.root / "server.log").stat().st_size - log_before
        run = _wait_finished(client, _trigger(client, "good", 1), 30)
    finally:
        server.close()
    missing = {"deep.yaml", "fifo.yaml", "big.yaml", "loop_a.yaml"} - set(errors)
    if loaded != ["good"] or missing or growth > 10_000 or run != Counter({"success": 1}):
        raise Failed(f"loaded {loaded}, errors missing for {sorted(missing)}, log +{growth} B/3s")
    longest = max(len(m) for messages in errors.values() for m in messages)
    return (
        f"server healthy in {started:.1f}s; good DAG loaded and ran; {len(errors)} files "
        f"reported (longest message {longest} chars); log grew {growth} B in 3 s"
    )


# ---------------------------------------------------------------- the table

SCENARIOS: dict[str, tuple[Callable[[Launcher], str], float]] = {
    "kill9_master": (kill9_master, 180.0),
    "sigterm_master": (sigterm_master, 120.0),
    "kill9_worker": (kill9_worker, 120.0),
    "freeze_worker": (freeze_worker, 120.0),
    "full_disk": (full_disk, 120.0),
    "slow_clients": (slow_clients, 60.0),
    "broken_dags": (broken_dags, 60.0),
}


def run_scenario(name: str, launcher: Launcher) -> Outcome:
    scenario, bound = SCENARIOS[name]
    print(f"== {name} (bound {bound:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        seen = scenario(launcher)
        passed: bool | None = True
    except _Skip as skip:
        seen, passed = f"skipped: {skip}", None
    except (Failed, BenchError, OSError, subprocess.SubprocessError) as exc:
        seen, passed = f"{type(exc).__name__}: {exc}", False
    seconds = time.perf_counter() - start
    if passed and seconds > bound:
        seen, passed = f"took longer than its bound of {bound:.0f} s; {seen}", False
    print(f"   {_verdict(passed)} in {seconds:.1f}s: {seen}", flush=True)
    return Outcome(name, passed, seconds, seen)


def _verdict(passed: bool | None) -> str:
    return "SKIP" if passed is None else "PASS" if passed else "FAIL"


def write_results(outcomes: list[Outcome], label: str) -> None:
    facts = machine()
    lines = [
        "# Nagare fault scenarios (benchmarks/chaos.py)",
        "",
        f"{facts.get('date', '')} · {facts.get('nproc', '?')} CPUs · {label}",
        "",
        "| scenario | result | seconds | what was seen |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{o.scenario}` | {_verdict(o.passed)} | {o.seconds:.1f} | {o.seen.replace('|', '/')} |"
        for o in outcomes
    ]
    RESULTS.write_text("\n".join(lines) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="scenario name(s)")
    parser.add_argument("--pyz", nargs="?", const="", default=None, help="run nagare.pyz")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for part in args.only for n in part.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    launcher = Launcher(resolve_pyz(args.pyz))
    outcomes = [run_scenario(name, launcher) for name in names]
    write_results(outcomes, launcher.label)
    print(f"\nwrote {RESULTS.relative_to(BENCH_DIR.parent)}")
    return 0 if all(o.passed is not False for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
