"""Task processes die with their supervisor.

Real processes only: a `nagare` server or worker subprocess is killed with SIGKILL and every
process of its task's group must be gone within two seconds (the guardian's work).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import http, pythonpath_env, wait_for

from nagare.executors.spawn import Spawner

GUARDIAN_MARK = "-I -S -c import os, signal, sys"


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state is [0], ppid [1], pgrp [2]); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def live_members(group: int) -> list[int]:
    """Processes of a process group that are not zombies."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields(int(name))
            if fields and fields[2] == str(group) and fields[0] != "Z":
                members.append(int(name))
    return members


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields(int(name))
            if fields and fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(name))
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def guardians_of(pid: int) -> list[int]:
    return [c for c in children(pid) if GUARDIAN_MARK in cmdline(c)]


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


class Proc:
    """A `python -m nagare ...` subprocess in a folder of its own, output to a file."""

    def __init__(self, root: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.root = root
        self.output = root / "output.log"
        with open(self.output, "wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nagare", *args],
                cwd=root,
                env=pythonpath_env(**(env or {})),
                stdout=sink,
                stderr=sink,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(root: Path, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(root, args, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def start_server(
    procs: Callable[..., Proc], root: Path, dags: dict[str, str], settings: str = "", **env: str
) -> tuple[Proc, str]:
    (root / "dags").mkdir(parents=True, exist_ok=True)
    for name, text in dags.items():
        (root / "dags" / name).write_text(textwrap.dedent(text))
    (root / "nagare.yaml").write_text(textwrap.dedent(settings))
    port = free_port()
    args = ["--port", f"127.0.0.1:{port}", "--db", "nagare.db", "--dags", "dags"]
    server = procs(root, [*args, "--config", "nagare.yaml"], env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.proc.poll() is None, server.text()
        try:
            return http("GET", url + "/api/health", timeout=1).status == 200
        except OSError:
            return False

    wait_for(healthy, 15, 0.05, "the server to answer")
    return server, url


def trigger(url: str, dag_id: str, headers: dict[str, str] | None = None) -> str:
    result = http("POST", f"{url}/api/dags/{dag_id}/runs", None, headers=headers)
    assert result.status == 201, result.body
    return str(result.json["run_id"])


def group_dag(pid_file: Path, pool: str = "default") -> str:
    """A task whose group has a child besides its shell: `sleep 30 & sleep 30`."""
    return f"""\
        id: long
        schedule: "workflow_dispatch"
        tasks:
          - id: t
            pool: {pool}
            command: 'echo $$ > {pid_file}; sleep 30 & sleep 30'
        """


def task_group(pid_file: Path) -> int:
    """The task's process group, once its shell and both sleeps run."""
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 15, 0.02, "the task")
    group = int(pid_file.read_text())
    wait_for(lambda: len(live_members(group)) >= 3, 5, 0.02, "the task's sleeps")
    return group


def assert_group_dies(group: int, seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while live_members(group):
        assert time.monotonic() < deadline, f"still alive: {live_members(group)}"
        time.sleep(0.02)


@contextlib.contextmanager
def killing_group_at_end(pid_file: Path) -> Iterator[None]:
    try:
        yield
    finally:
        if pid_file.exists() and pid_file.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------- part 5: supervision


def test_kill_9_of_the_server_kills_its_tasks_whole_process_group(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    pid_file = tmp_path / "task.pid"
    server, url = start_server(procs, tmp_path, {"long.yaml": group_dag(pid_file)})
    with killing_group_at_end(pid_file):
        trigger(url, "long")
        group = task_group(pid_file)
        guardian = guardians_of(server.pid)
        assert len(guardian) == 1, children(server.pid)
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(5)
        assert_group_dies(group)
        wait_for(lambda: not alive(guardian[0]), 2, 0.02, "the guardian to exit")


def test_kill_9_of_a_remote_worker_kills_its_tasks_whole_process_group(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    pid_file = tmp_path / "task.pid"
    server, url = start_server(
        procs,
        tmp_path / "master",
        {"long.yaml": group_dag(pid_file, pool="gpu")},
        "worker_pools: {default: 1, gpu: 0}\n",
    )
    (tmp_path / "worker").mkdir()
    worker = procs(
        tmp_path / "worker", ["worker", "--join", url, "--pools", "gpu", "--worker-id", "w1"]
    )
    with killing_group_at_end(pid_file):
        trigger(url, "long")
        group = task_group(pid_file)
        assert guardians_of(worker.pid), children(worker.pid)
        assert guardians_of(server.pid) == []  # the master ran no task itself
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(5)
        assert_group_dies(group)


def test_no_guardian_while_idle_and_none_left_after_a_graceful_stop(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    quick = 'id: quick\nschedule: "workflow_dispatch"\ntasks:\n  - id: t\n    command: "true"\n'
    server, url = start_server(procs, tmp_path, {"quick.yaml": quick})
    assert children(server.pid) == []  # a server that never ran a task starts no process
    run_id = trigger(url, "quick")
    wait_for(lambda: http("GET", f"{url}/api/runs/{run_id}").json["status"] == "success", 15, 0.05)
    guardian = guardians_of(server.pid)
    assert len(guardian) == 1
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert not alive(guardian[0])


def test_a_guardian_that_died_is_replaced_and_told_every_live_group() -> None:
    spawner = Spawner()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    started = []
    try:
        first = spawner.spawn("sleep 30 & sleep 30", env)
        started.append(first)
        old = spawner.guardian.pid
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not alive(old), 2, 0.01, "the guardian to die")
        second = spawner.spawn("sleep 30", env)  # EPIPE: a new guardian, told both groups
        started.append(second)
        assert spawner.guardian.pid != old
        wait_for(lambda: len(live_members(first[0])) == 3, 2, 0.01, "the first task's sleeps")
        spawner.guardian.close()  # end-of-file, as if this process had died
        assert_group_dies(first[0])
        assert_group_dies(second[0])
    finally:
        for pid, out, err in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(out)
            os.close(err)
        spawner.close()
