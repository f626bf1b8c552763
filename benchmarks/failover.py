#!/usr/bin/env python3
"""Failover of several masters on one PostgreSQL database, measured with real processes.

    python3 benchmarks/failover.py [--tasks N]

A temporary PostgreSQL server (tests/postgres_server.py, as `run.py --postgres` starts it), two
masters on one database (each runs 4 tasks of pool `default` itself) and two remote workers
joined to both masters (pool `remote`). A 500-task fan-out (half local, half remote; each task
appends its attempt number to a marker file of its own, with one retry) runs while an
every-minute cron DAG (`* * * * *`, catch-up on) ticks. Mid-run the master that holds the
scheduler lease gets kill -9; the other must take over, finish the run and keep firing slots.

The window stays open until at least one minute boundary has passed after the kill (so the new
leader fires a slot itself). Printed: take-over time (kill -> the other master's /api/health says
it leads), run duration, tasks with exactly one successful attempt, tasks re-run after the kill
and their attempts, cron slots fired vs expected, and PASS/FAIL of each property:

- once: every task ran exactly once (one attempt, one marker line), except those whose process
  died with the killed master: these have exactly two attempts (the lost one failed, its retry
  succeeded) and two marker lines "1 2";
- slots: each minute boundary of the window made exactly one scheduled run (none lost, none
  doubled);
- finished: the run ended in success on the surviving master.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import ROOT, BenchError, Client, Launcher, Server, source_env, stop_processes

LOCAL_SLOTS = 4
LEASE_SECONDS = 3
MINUTE_MS = 60_000
Attempt = tuple[int, str, str]  # number, status, worker

TICK = 'id: tick\nschedule: "* * * * *"\ncatchup: true\ntasks:\n  - id: a\n    command: "true"\n'


def fanout(marks: Path, count: int) -> str:
    """A root, then `count` tasks at once (even ones on the masters, odd ones on the remote
    workers): each appends its attempt number to a file of its own, then sleeps a little."""
    tasks = ["  - id: root\n    command: 'true'"]
    for i in range(count):
        pool = "default" if i % 2 == 0 else "remote"
        tasks.append(
            f"  - id: t{i:03d}\n    depends_on: [root]\n    pool: {pool}\n    retries: 1\n"
            f"    retry_delay_seconds: 0\n"
            f"    command: 'echo $NAGARE_ATTEMPT >> {marks}/t{i:03d}; sleep 0.2'"
        )
    return "id: fan\ntasks:\n" + "\n".join(tasks) + "\n"


def wait_for(check: Callable[[], Any], seconds: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, BenchError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {seconds:.0f}s waiting for {what}")


def start_worker(home: Path, urls: str, worker_id: str) -> subprocess.Popen[bytes]:
    home.mkdir()
    args = [sys.executable, "-m", "nagare", "worker", "--join", urls, "--pools", "remote"]
    with open(home / "worker.log", "wb") as sink:
        return subprocess.Popen(
            [*args, "--worker-id", worker_id],
            cwd=home,
            env=source_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )


def online_workers(client: Client) -> list[Any]:
    return [w for w in client.get_json("/api/workers") if w["status"] == "online"]


def attempts_of(url: str, run_id: str) -> dict[str, list[Attempt]]:
    """task id -> its attempts, read from the database."""
    from nagare.store import Store

    store = Store(url)
    try:
        with store.db.read() as conn:
            rows = conn.execute(
                "SELECT task_id, attempt, status, worker FROM task_attempts WHERE run_id=? "
                "ORDER BY task_id, attempt",
                (run_id,),
            ).fetchall()
    finally:
        store.close()
    found: dict[str, list[Attempt]] = {}
    for task_id, attempt, status, worker in rows:
        found.setdefault(task_id, []).append((int(attempt), str(status), str(worker)))
    return found


@dataclass
class Outcome:
    takeover_seconds: float
    run_seconds: float
    run_status: str
    attempts: dict[str, list[Attempt]]
    marks: dict[str, list[str]]
    killed_worker: str
    slots: list[int]  # epoch ms of the scheduled tick runs
    window: tuple[float, float]  # epoch seconds: masters up -> window closed
    killed_at: float  # epoch seconds
    pools: list[dict[str, Any]]  # the surviving master's /api/pools at the end


def slot_ms(run: dict[str, Any]) -> int:
    from datetime import datetime

    text = str(run["execution_date"]).replace("Z", "+00:00")
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def expected_slots(window: tuple[float, float]) -> list[int]:
    """Minute boundaries inside the window (a margin of 2 s at each end: a boundary that close
    to the masters' start or to the window's end is not counted either way)."""
    first = int((window[0] + 2) * 1000) // MINUTE_MS + 1
    last = int((window[1] - 2) * 1000) // MINUTE_MS
    return [m * MINUTE_MS for m in range(first, last + 1)]


def until_next_boundary(after: float, margin: float = 4.0) -> float:
    """Seconds from now until `margin` seconds past the first minute boundary after `after`."""
    boundary = (int(after) // 60 + 1) * 60
    return max(0.0, boundary + margin - time.time())


def scenario(url: str, tasks: int, work: Path) -> Outcome:
    marks = work / "marks"
    marks.mkdir()
    settings = {
        "worker_pools": {"default": LOCAL_SLOTS, "remote": 0},
        "lease_timeout_seconds": LEASE_SECONDS,
        "log_level": "info",
    }
    dags = {"fan.yaml": fanout(marks, tasks), "tick.yaml": TICK}
    launcher = Launcher()
    masters = [Server(launcher, dags, settings, db_url=url) for _ in range(2)]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for master in masters:
            master.start()
        opened = time.time()
        urls = ",".join(f"http://127.0.0.1:{m.port}" for m in masters)
        workers = [start_worker(work / f"w{i}", urls, f"w{i}") for i in (1, 2)]
        first = masters[0].client()
        wait_for(lambda: len(first.get_json("/api/masters")["masters"]) == 2, 15, "2 masters")
        wait_for(lambda: len(online_workers(first)) == 2, 20, "both workers to join")
        listed = first.get_json("/api/masters")
        leader_index = 0 if listed["leader"] == listed["me"] else 1
        leader, other = masters[leader_index], masters[1 - leader_index]
        killed_worker = f"local@{listed['leader']}"
        client = other.client()
        started = time.monotonic()
        run_id = client.trigger("fan")
        wait_for(lambda: len(list(marks.iterdir())) >= tasks * 0.3, 120, "a part of the run")
        os.kill(leader.pid, signal.SIGKILL)
        killed_at = time.time()
        killed = time.monotonic()
        wait_for(lambda: client.get_json("/api/health")["master"]["leader"], 30, "a new leader",
                 interval=0.02)  # fmt: skip
        takeover = time.monotonic() - killed
        run = wait_for(
            lambda: (r := client.get_json(f"/api/runs/{run_id}"))["status"] != "running" and r,
            300,
            "the run to end",
        )
        run_seconds = time.monotonic() - started
        time.sleep(until_next_boundary(killed_at))  # the new leader fires a slot itself
        closed = time.time()
        runs = client.get_json("/api/runs?dag_id=tick&limit=500")["data"]
        slots = [slot_ms(r) for r in runs if r["trigger"] != "manual"]
        found = attempts_of(url, run_id)
        pools = client.get_json("/api/pools")
        lines = {p.name: p.read_text().split() for p in marks.iterdir()}
        leader.process = None  # killed: nothing left to stop
        return Outcome(
            takeover, run_seconds, run["status"], found, lines, killed_worker, slots,
            (opened, closed), killed_at, pools,
        )  # fmt: skip
    finally:
        stop_processes(workers)
        for master in masters:
            master.close()


@dataclass
class Verdict:
    name: str
    passed: bool
    detail: str


def judge(out: Outcome, tasks: int) -> tuple[list[Verdict], dict[str, Any]]:
    body = {t: a for t, a in out.attempts.items() if t != "root"}
    once = [t for t, a in body.items() if len(a) == 1 and a[0][1] == "success"]
    retried = {t: a for t, a in body.items() if len(a) > 1}
    lost_ok = all(
        len(a) == 2 and a[0][1] == "failed" and a[0][2] == out.killed_worker
        and a[1][1] == "success"
        for a in retried.values()
    )  # fmt: skip
    marks_ok = all(out.marks.get(t) == [str(n) for n, _, _ in a] for t, a in body.items())
    complete = len(body) == tasks and len(once) + len(retried) == tasks
    expected = expected_slots(out.window)
    fired = [s for s in out.slots if s in expected]
    doubled = len(out.slots) != len(set(out.slots))
    after_kill = [s for s in fired if s > out.killed_at * 1000]
    pools_ok, pools_seen = pools_settled(out.pools)
    figures = {
        "once": len(once),
        "retried": retried,
        "expected": len(expected),
        "fired": len(set(fired)),
        "all_slots": len(out.slots),
        "after_kill": len(after_kill),
    }
    verdicts = [
        Verdict("take-over", out.takeover_seconds < 10, f"{out.takeover_seconds:.2f} s"),
        Verdict("finished", out.run_status == "success", f"run {out.run_status}"),
        Verdict(
            "once",
            complete and lost_ok and marks_ok,
            f"{len(once)} once, {len(retried)} re-run (lost with the killed master: "
            f"{'yes' if lost_ok else 'NO'}), marker files match attempts: "
            f"{'yes' if marks_ok else 'NO'}",
        ),
        Verdict(
            "slots",
            sorted(set(fired)) == expected and not doubled and len(after_kill) >= 1,
            f"{len(set(fired))} fired / {len(expected)} expected ({len(after_kill)} after the "
            f"kill), {'doubled!' if doubled else 'none doubled'}",
        ),
        Verdict("pool slots", pools_ok, pools_seen),
    ]
    return verdicts, figures


def pools_settled(pools: list[dict[str, Any]]) -> tuple[bool, str]:
    """At the end no slot is held or queued, the survivor's local slots are all there and both
    remote workers still serve `remote`."""
    by_name = {p["pool"]: p for p in pools}
    held = sum(p["busy_slots"] + p["running"] + p["queued"] for p in pools)
    local = by_name.get("default", {}).get("local_slots")
    remote = by_name.get("remote", {}).get("remote_workers_online")
    seen = f"busy+running+queued {held}, default local slots {local}, remote workers {remote}"
    return held == 0 and local == LOCAL_SLOTS and remote == 2, seen


def report(out: Outcome, tasks: int) -> bool:
    verdicts, figures = judge(out, tasks)
    window = out.window[1] - out.window[0]
    print(f"take-over time (kill -9 of the leader -> other master leads): "
          f"{out.takeover_seconds:.2f} s")  # fmt: skip
    print(f"run duration ({tasks} tasks + root, trigger -> end): {out.run_seconds:.1f} s")
    by_worker = Counter(w for tries in out.attempts.values() for _, _, w in tries)
    print("attempts by worker: " + ", ".join(f"{w} {n}" for w, n in sorted(by_worker.items())))
    print(f"tasks with exactly one successful attempt: {figures['once']} / {tasks}")
    retried = figures["retried"]
    print(f"tasks re-run after the kill: {len(retried)}")
    for task_id, tries in sorted(retried.items()):
        shown = ", ".join(f"#{n} {status} on {worker}" for n, status, worker in tries)
        print(f"  {task_id}: {shown}")
    print(f"cron slots fired vs expected over the {window:.0f} s window: "
          f"{figures['fired']} / {figures['expected']} (scheduled runs in all: "
          f"{figures['all_slots']}; fired after the kill: {figures['after_kill']})")  # fmt: skip
    for verdict in verdicts:
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.name}: {verdict.detail}")
    return all(v.passed for v in verdicts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=500, help="tasks of the fan-out (500)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres_server import find_bindir, start_server

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    server = start_server(bindir)
    print(f"postgresql: {bindir} on 127.0.0.1:{server.port}")
    try:
        name = server.new_database()
        with tempfile.TemporaryDirectory(prefix="nagare-failover-") as work:
            out = scenario(server.url(name), args.tasks, Path(work))
        return 0 if report(out, args.tasks) else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
