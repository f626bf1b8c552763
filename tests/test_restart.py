"""Restart safety with a real server process: kill -9 mid-run, graceful SIGTERM, catch-up of
slots missed while the server was down."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
from conftest import http, pythonpath_env, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`python -m nagare` in a folder of its own, restartable on the same database."""

    def __init__(self, root: Path, settings: str = "") -> None:
        self.root = root
        (root / "dags").mkdir(parents=True, exist_ok=True)
        (root / "nagare.yaml").write_text(textwrap.dedent(settings))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dag(self, name: str, text: str) -> None:
        (self.root / "dags" / name).write_text(textwrap.dedent(text))

    def start(self) -> None:
        log = open(self.root / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nagare",
                "--port",
                f"127.0.0.1:{self.port}",
                "--db",
                "nagare.db",
                "--dags",
                "dags",
                "--config",
                "nagare.yaml",
            ],
            cwd=self.root,
            env=pythonpath_env(),
            stdout=log,
            stderr=log,
        )
        log.close()
        wait_for(self._healthy, 15, message="the server to answer /api/health")

    def _healthy(self) -> bool:
        try:
            return http("GET", self.url + "/api/health", timeout=1).status == 200
        except OSError:
            return False

    def get(self, path: str) -> Any:
        result = http("GET", self.url + path)
        assert result.status == 200, (path, result.status, result.body)
        return result.json

    def post(self, path: str, body: Any = None) -> Any:
        return http("POST", self.url + path, body)

    def signal(self, signum: int, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def task(self, run_id: str, task_id: str) -> dict[str, Any]:
        return self.get(f"/api/runs/{run_id}/tasks/{task_id}")  # type: ignore[no-any-return]

    def wait_run(self, run_id: str, timeout: float = 20) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run = self.get(f"/api/runs/{run_id}")
            return run if run["status"] in ("success", "failed", "cancelled") else None

        return wait_for(done, timeout, message=f"run {run_id} to finish")  # type: ignore[no-any-return]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] != "Z"


def test_kill_9_then_restart_reconciles_and_kills_orphans(tmp_path: Path) -> None:
    """The guardian normally kills a crashed server's tasks at once (tests/test_supervision.py);
    here it is killed first, so the next start must find and kill the orphans itself."""
    server = ServerProcess(tmp_path)
    child_pid = tmp_path / "child.pid"
    server.dag(
        "crash.yaml",
        f"""
    id: crash
    tasks:
      - id: long
        retries: 1
        command: |
          if [ "$NAGARE_ATTEMPT" = 1 ]; then sleep 60 & echo $! > {child_pid}; wait; fi
          echo "attempt $NAGARE_ATTEMPT finished"
      - id: after
        depends_on: long
        command: echo after
      - id: no_retry
        command: sleep 60
    """,
    )
    try:
        server.start()
        run_id = server.post("/api/dags/crash/runs").json["run_id"]
        orphan = int(
            wait_for(
                lambda: child_pid.exists() and child_pid.read_text().strip(),
                10,
                message="the task to start",
            )
        )
        wait_for(
            lambda: server.task(run_id, "no_retry")["status"] == "running",
            5,
            message="no_retry to run",
        )
        assert server.proc is not None
        guardians = [
            child for child in psutil.Process(server.proc.pid).children() if "-S" in child.cmdline()
        ]
        assert len(guardians) == 1, "the server started its guardian with its first task"
        guardians[0].kill()
        server.signal(signal.SIGKILL)
        assert alive(orphan), "without its guardian the task's process outlives a kill -9"
        server.start()
        wait_for(lambda: not alive(orphan), 5, message="the orphaned process group to be killed")
        run = server.wait_run(run_id)
        assert run["status"] == "failed"  # no_retry has no retries left
        long_task = server.task(run_id, "long")
        assert long_task["status"] == "success" and long_task["attempt"] == 2
        attempts = server.get(f"/api/runs/{run_id}/tasks/long/attempts")
        assert attempts[0]["status"] == "failed"
        assert "server stopped while this attempt ran" in attempts[0]["message"]
        assert server.task(run_id, "after")["status"] == "success"
        assert server.task(run_id, "no_retry")["status"] == "failed"
    finally:
        server.stop()


def test_sigterm_waits_for_running_tasks_within_the_grace_period(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "shutdown_grace_seconds: 10\n")
    server.dag(
        "short.yaml",
        """
    id: short
    tasks:
      - id: t
        command: sleep 1; echo finished
    """,
    )
    try:
        server.start()
        run_id = server.post("/api/dags/short/runs").json["run_id"]
        wait_for(lambda: server.task(run_id, "t")["status"] == "running", 5, message="t to run")
        started = time.monotonic()
        assert server.signal(signal.SIGTERM) == 0
        assert time.monotonic() - started < 8
        server.start()
        assert server.get(f"/api/runs/{run_id}")["status"] == "success"
    finally:
        server.stop()


def test_sigterm_interrupts_long_tasks_and_they_run_again_on_start(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "shutdown_grace_seconds: 0.3\n")
    server.dag(
        "long.yaml",
        """
    id: long
    tasks:
      - id: t
        command: echo "attempt $NAGARE_ATTEMPT"; [ "$NAGARE_ATTEMPT" -ge 2 ] || sleep 60
    """,
    )
    try:
        server.start()
        run_id = server.post("/api/dags/long/runs").json["run_id"]
        wait_for(lambda: server.task(run_id, "t")["status"] == "running", 5, message="t to run")
        started = time.monotonic()
        assert server.signal(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
        server.start()
        run = server.wait_run(run_id)
        assert run["status"] == "success"
        attempts = server.get(f"/api/runs/{run_id}/tasks/t/attempts")
        assert [a["status"] for a in attempts] == ["failed", "success"]
        assert "interrupted by server shutdown" in attempts[0]["message"]
    finally:
        server.stop()


def test_catchup_runs_slots_missed_while_the_server_was_down(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "misfire_grace_seconds: 0.5\n")
    server.dag(
        "tick.yaml",
        """
    id: tick
    schedule: "@every 1s"
    catchup: true
    tasks:
      - id: t
        command: "true"
    """,
    )
    try:
        server.start()
        wait_for(
            lambda: server.get("/api/runs?dag_id=tick")["total"] >= 1,
            5,
            message="a first scheduled run",
        )
        assert server.signal(signal.SIGTERM) == 0
        before = forget_recent_slots(tmp_path, 3000)  # as if it had been down for 3 s more
        server.start()
        wait_for(
            lambda: any(
                r["trigger"] == "catchup"
                for r in server.get("/api/runs?dag_id=tick&limit=500")["data"]
            ),
            5,
            message="catch-up runs",
        )
        runs = server.get("/api/runs?dag_id=tick&limit=500")["data"]
        slots = sorted(r["execution_date"] for r in runs)
        assert len(slots) == len(set(slots)), "a slot ran twice"
        catchup = [r for r in runs if r["trigger"] == "catchup"]
        assert len(catchup) >= 2
        assert before < len(runs)
        from nagare.clock import parse_iso

        stamps = [parse_iso(s) for s in slots]
        assert all(b - a == 1000 for a, b in itertools.pairwise(stamps)), slots
    finally:
        server.stop()


def count_runs(root: Path) -> int:
    """Count runs straight from the database while the server is down."""
    import sqlite3

    with sqlite3.connect(root / "nagare.db") as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


def forget_recent_slots(root: Path, ms: int) -> int:
    """While the server is down, make its last `ms` of scheduling not have happened (the runs
    of those slots and the DAGs' last fired slot): on restart they are slots missed while it
    was down. Returns the runs left."""
    import sqlite3

    with sqlite3.connect(root / "nagare.db") as conn:
        conn.execute("PRAGMA foreign_keys=ON")  # their task instances and attempts go too
        (last,) = conn.execute("SELECT max(last_slot) FROM dag_state").fetchone()
        cutoff = last - ms
        conn.execute("DELETE FROM runs WHERE execution_date > ?", (cutoff,))
        conn.execute("UPDATE dag_state SET last_slot = ? WHERE last_slot > ?", (cutoff, cutoff))
    return count_runs(root)
