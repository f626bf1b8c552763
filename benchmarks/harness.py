"""Server processes, HTTP calls and measurement helpers shared by every workload.

A `Server` is a real Nagare process (`python3 -m nagare` from the source tree, or a zipapp) in
its own temporary folder, listening on a free local port. It is always stopped by `close()`
(SIGTERM, then SIGKILL of its whole process group), also when a workload fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
HEALTH_DEADLINE_SECONDS = 30.0
STOP_GRACE_SECONDS = 15.0
TERMINAL_RUN = ("success", "failed", "cancelled")


class BenchError(RuntimeError):
    """A workload could not be measured (server did not start, run failed, ...)."""


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    """A port that was free a moment ago (the server cannot report a port-0 choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.499999))
    return ordered[min(rank, len(ordered)) - 1]


def source_env() -> dict[str, str]:
    """Environment for `python3 -m nagare` from the source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for name in [k for k in env if k.startswith("NAGARE_")]:
        env.pop(name)
    return env


# ---------------------------------------------------------------- HTTP


class Client:
    """A JSON client for one server. With `keep_alive` one connection is reused (reconnecting
    once when the server dropped it); without, every request opens a fresh connection."""

    def __init__(self, port: int, keep_alive: bool = True, timeout: float = 30.0) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                result = response.status, response.read()
                if not self.keep_alive:
                    self.close()
                return result
            except (http.client.HTTPException, ConnectionError, TimeoutError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
        return json.loads(body)

    def trigger(self, dag_id: str) -> str:
        status, body = self.request("POST", f"/api/dags/{dag_id}/runs", {})
        if status != 201:
            raise BenchError(f"triggering {dag_id} answered {status}: {body[:300]!r}")
        return str(json.loads(body)["run_id"])

    def timed_get(self, path: str) -> float:
        """Seconds for one GET that must answer 200 (body read in full)."""
        start = time.perf_counter()
        status, body = self.request("GET", path)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise BenchError(f"GET {path} answered {status}: {body[:300]!r}")
        return elapsed


def health_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass
class RunResult:
    run_id: str
    status: str
    wall_seconds: float  # client: trigger request sent -> success observed
    server_seconds: float  # server: run created_at -> completed_at (from the API)


def trigger_and_wait(
    client: Client, dag_id: str, poll_seconds: float, timeout: float = 600.0
) -> RunResult:
    """Trigger a run and poll `GET /api/runs/{id}` until it is finished."""
    start = time.perf_counter()
    run_id = client.trigger(dag_id)
    deadline = start + timeout
    while True:
        run = client.get_json(f"/api/runs/{run_id}")
        if run["status"] in TERMINAL_RUN:
            wall = time.perf_counter() - start
            return RunResult(run_id, run["status"], wall, _server_seconds(run))
        if time.perf_counter() > deadline:
            raise BenchError(f"run {run_id} of {dag_id} did not finish within {timeout:.0f}s")
        time.sleep(poll_seconds)


def _server_seconds(run: dict[str, Any]) -> float:
    from datetime import datetime

    def parse(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    if not run.get("created_at") or not run.get("completed_at"):
        return float("nan")
    return parse(run["completed_at"]) - parse(run["created_at"])


# ---------------------------------------------------------------- RSS sampling


class RssSampler:
    """Samples one process's RSS every `interval` seconds in a thread; `peak` in bytes."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


# ---------------------------------------------------------------- the server process


@dataclass
class Launcher:
    """How to start Nagare: from the source tree or from a zipapp; or, with `profile_dir`, from
    the source tree under cProfile (each start writes `<profile_dir>/<profile_tag>-<n>.prof`)."""

    pyz: Path | None = None
    profile_dir: Path | None = None
    profile_tag: str = "server"
    _starts: int = 0

    def command(self) -> list[str]:
        if self.profile_dir is None:
            target = [str(self.pyz)] if self.pyz is not None else ["-m", "nagare"]
            return [sys.executable, *target]
        self._starts += 1
        out = self.profile_dir / f"{self.profile_tag}-{self._starts}.prof"
        return [sys.executable, str(BENCH_DIR / "profile_server.py"), str(out)]

    def env(self) -> dict[str, str]:
        return source_env()

    @property
    def label(self) -> str:
        how = f"python3 {self.pyz.name}" if self.pyz else "python3 -m nagare (source tree)"
        return how + (" under cProfile" if self.profile_dir else "")


@dataclass
class Server:
    """One Nagare process in a private folder; use as a context manager."""

    launcher: Launcher
    dags: dict[str, str] = field(default_factory=dict)  # file name -> YAML text
    settings: dict[str, Any] = field(default_factory=dict)  # nagare.yaml
    dags_dir: Path | None = None  # use this folder instead of writing `dags`
    db: Path | None = None  # use this database instead of a fresh one
    db_url: str | None = None  # a PostgreSQL database instead of a SQLite file
    preexec: Callable[[], None] | None = None  # runs in the child before exec (limits)
    root: Path = field(init=False)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nagare-bench-"))

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def db_path(self) -> Path:
        return self.db or self.root / "nagare.db"

    def prepare(self) -> None:
        dags = self.root / "dags"
        dags.mkdir(exist_ok=True)
        for name, text in self.dags.items():
            (dags / name).write_text(text)
        # retention_days 0: the sweep must not delete a seeded history while it is measured
        settings = {
            "shutdown_grace_seconds": 1,
            "log_level": "warning",
            "retention_days": 0,
            **self.settings,
        }
        (self.root / "nagare.yaml").write_text(json.dumps(settings) + "\n")  # JSON is YAML

    def argv(self) -> list[str]:
        return [
            *self.launcher.command(),
            "--port",
            f"127.0.0.1:{self.port}",
            "--db",
            self.db_url or str(self.db_path),
            "--dags",
            str(self.dags_dir or self.root / "dags"),
            "--config",
            str(self.root / "nagare.yaml"),
            "--logs-dir",
            str(self.root / "logs"),
        ]

    def start(self, wait: bool = True) -> None:
        """Start the process (fresh free port); with `wait`, block until /api/health is 200."""
        if not (self.root / "nagare.yaml").exists():
            self.prepare()
        self.port = free_port()
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - handed to the child
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv(),
            cwd=self.root,
            env=self.launcher.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its own process group: tasks can be killed with it
            preexec_fn=self.preexec,
        )
        log.close()
        if wait:
            self.wait_healthy()

    def wait_healthy(self, deadline_seconds: float = HEALTH_DEADLINE_SECONDS) -> float:
        """Seconds from process start to the first 200 of /api/health."""
        assert self.process is not None
        deadline = self.started_at + deadline_seconds
        while time.perf_counter() < deadline:
            if health_ok(self.port):
                return time.perf_counter() - self.started_at
            if self.process.poll() is not None:
                code = self.process.returncode
                raise BenchError(f"server exited with {code}:\n{self.log_tail()}")
            time.sleep(0.005)
        raise BenchError(f"server not healthy after {deadline_seconds:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.root / "server.log").read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL the process group if it does not exit in time, and any
        task process it left behind."""
        process, self.process = self.process, None
        if process is not None:
            stop_processes([process])

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def client(self, keep_alive: bool = True) -> Client:
        return Client(self.port, keep_alive)


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process (each leads its own process group) and wait up to
    STOP_GRACE_SECONDS for all; SIGKILL the group of one still alive, then any task process
    they left behind."""
    leftovers = [child for process in processes for child in _children(process.pid)]
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # the leader is alive: our group
            process.wait(timeout=5)
    for child in leftovers:
        with contextlib.suppress(psutil.Error):
            child.kill()  # psutil checks the create time: never a recycled pid


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
