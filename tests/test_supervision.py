"""Task processes die with their supervisor; secrets stay out of tasks' reach; run_as.

Real processes only: a `nagare` server or worker subprocess is killed with SIGKILL and every
process of its task's group must be gone within two seconds (the guardian's work); tasks run as
another user through `run_as` and `pool_run_as`; the server's secrets never reach a task.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, http, pythonpath_env, wait_for

from nagare.dagfile import parse_dag
from nagare.dagfile.snapshot import dag_from_json, dag_to_json
from nagare.engine.assignment import effective_run_as
from nagare.executors.containers import container_spec
from nagare.executors.spawn import (
    GUARDIAN_READ_MS,
    RunAs,
    Spawner,
    lookup_user,
    run_as_problem,
)
from nagare.models import Assignment

GUARDIAN_MARK = "-I -S -c import os, signal, sys"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")


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


def voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no context switch count for {pid}")


def test_registrations_do_not_wake_the_guardian_per_task() -> None:
    """A start and an end write a line each; the guardian reads them in batches (every
    GUARDIAN_READ_MS while they come): woken per line, it would take a CPU from the dispatcher
    twice per task. The lines still count: at end-of-file it kills what is registered."""
    spawner = Spawner()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    started = []
    try:
        started.append(spawner.spawn("true", env))  # wakes the idle guardian: lines come
        wait_for(lambda: voluntary_switches(spawner.guardian.pid) > 0, 2, 0.01, "a first read")
        before, began = voluntary_switches(spawner.guardian.pid), time.monotonic()
        for _ in range(40):
            pid, out, err = spawner.spawn("true", env)
            os.waitpid(pid, 0)
            os.close(out)
            os.close(err)
            spawner.release(pid)
        woken = voluntary_switches(spawner.guardian.pid) - before
        periods = (time.monotonic() - began) / (GUARDIAN_READ_MS / 1000)
        assert woken <= 2 + periods, (woken, periods)  # 80 lines: not 80 wake-ups
        started.append(spawner.spawn("sleep 30", env))  # still registered, batched or not
        spawner.guardian.close()
        assert_group_dies(started[-1][0])
    finally:
        for pid, out, err in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            os.close(out)
            os.close(err)
        spawner.close()


# ---------------------------------------------------------------- part 6: secrets


def test_the_servers_secrets_never_reach_a_task(procs: Callable[..., Proc], tmp_path: Path) -> None:
    """API key, cluster token and a webhook secret come from the server's environment; a task
    sees none of them, and (as another user) cannot read the server's /proc environ."""
    run_as = "    run_as: nobody\n" if os.geteuid() == 0 else ""
    dag = (
        'id: peek\nschedule: "workflow_dispatch"\n'
        "trigger:\n  type: webhook\n  path: /api/webhooks/peek\n  secret_env: PEEK_SECRET\n"
        f"tasks:\n  - id: t\n{run_as}"
        "    command: 'env; cat /proc/$PPID/environ || echo cannot-read'\n"
    )
    secrets = {"NAGARE_API_KEY": "key-1234", "NAGARE_TOKEN": "tok-5678", "PEEK_SECRET": "hook-9"}
    _server, url = start_server(procs, tmp_path, {"peek.yaml": dag}, **secrets)
    headers = {"Authorization": "Bearer key-1234"}
    run_id = trigger(url, "peek", headers)

    def finished() -> Any:
        run = http("GET", f"{url}/api/runs/{run_id}", headers=headers).json
        return run if run["status"] in ("success", "failed") else None

    wait_for(finished, 15, 0.05, "the run")
    log = http("GET", f"{url}/api/runs/{run_id}/tasks/t/logs", headers=headers).text
    for name, value in secrets.items():
        assert value not in log, (name, log)
    if run_as:
        assert "cannot-read" in log, log


def test_protect_process_makes_the_process_non_dumpable_and_drops_secret_variables() -> None:
    code = textwrap.dedent(
        """
        import ctypes, os
        from nagare.wiring import protect_process
        protect_process()
        print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0), os.environ.get("NAGARE_API_KEY"),
              os.environ.get("NAGARE_TOKEN"), os.environ.get("OTHER"))
        """
    )
    env = pythonpath_env(NAGARE_API_KEY="k", NAGARE_TOKEN="t", OTHER="kept")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert out.stdout.split() == ["0", "None", "None", "kept"], out.stderr


# ---------------------------------------------------------------- part 6: run_as


def run_one(nagare: Nagare, dag_id: str) -> tuple[dict[str, Any], str]:
    run_id = nagare.trigger(dag_id)
    nagare.wait_run(run_id)
    return nagare.task(run_id, "t"), nagare.log(run_id, "t")


def one_task(dag_id: str, body: str) -> str:
    return f'id: {dag_id}\nschedule: "workflow_dispatch"\ntasks:\n  - id: t\n{body}'


@root_only
def test_run_as_runs_the_task_as_that_user_with_its_home_and_groups(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nobody = pwd.getpwnam("nobody")
    dags = {
        "who.yaml": one_task(
            "who", "    run_as: nobody\n    command: 'echo \"$(id -u) $(id -g) $HOME $USER\"'\n"
        )
    }
    nagare = nagare_factory(dags=dags)
    task, log = run_one(nagare, "who")
    assert task["status"] == "success", (task, log)
    assert f"{nobody.pw_uid} {nobody.pw_gid} {nobody.pw_dir} nobody" in log


def test_run_as_an_unknown_user_fails_with_a_clear_message(
    nagare_factory: Callable[..., Nagare],
) -> None:
    dags = {"bad.yaml": one_task("bad", "    run_as: no-such-user-xyz\n    command: 'true'\n")}
    nagare = nagare_factory(dags=dags)
    task, _ = run_one(nagare, "bad")
    assert task["status"] == "failed"
    assert "run_as: there is no user 'no-such-user-xyz' on this host" in task["message"]


@root_only
def test_a_pools_user_is_enforced(nagare_factory: Callable[..., Nagare]) -> None:
    """Every task of the pool runs as its user; a DAG naming another one is a load error."""
    nobody = pwd.getpwnam("nobody")
    dags = {
        "plain.yaml": one_task("plain", "    command: 'id -u'\n"),
        "other.yaml": one_task("other", "    run_as: root\n    command: 'id -u'\n"),
    }
    nagare = nagare_factory(dags=dags, pool_run_as={"default": "nobody"})
    task, log = run_one(nagare, "plain")
    assert task["status"] == "success" and str(nobody.pw_uid) in log
    assert nagare.get("/api/dags/errors") == {
        "other.yaml": [
            "other.yaml:4: t.run_as: run_as: pool 'default' runs its tasks as 'nobody'; this "
            "task asks for 'root' (remove run_as, or name 'nobody')"
        ]
    }


def test_run_as_decisions() -> None:
    assert effective_run_as("", "", "pool 'a'") == ("", "")
    assert effective_run_as("bob", "", "pool 'a'") == ("bob", "")
    assert effective_run_as("", "nobody", "pool 'a'") == ("nobody", "")
    assert effective_run_as("nobody", "nobody", "pool 'a'") == ("nobody", "")
    user, problem = effective_run_as("bob", "nobody", "worker w1")
    assert user == "" and problem.startswith("run_as: worker w1 runs its tasks as 'nobody'")
    bob = RunAs("bob", 1001, 1001, (1001,), "/home/bob")
    assert run_as_problem(bob, 0) == ""
    assert run_as_problem(bob, 1001) == ""  # its own user: nothing to change
    assert (
        run_as_problem(bob, 1002) == "run_as needs the server to run as root (it runs as uid 1002)"
    )
    with pytest.raises(ValueError, match="there is no user 'no-such-user-xyz'"):
        lookup_user("no-such-user-xyz")


def test_run_as_in_a_dag_file_is_validated_and_kept_in_the_snapshot() -> None:
    dag, errors = parse_dag(one_task("ok", "    run_as: etl-user\n    command: 'true'\n"))
    assert errors == [] and dag is not None and dag.tasks[0].run_as == "etl-user"
    text = dag_to_json(dag)
    assert dag_from_json(text).tasks[0].run_as == "etl-user"
    plain, _ = parse_dag(one_task("ok", "    command: 'true'\n"))
    assert plain is not None and "run_as" not in dag_to_json(plain)  # older hashes unchanged
    _, errors = parse_dag(one_task("bad", "    run_as: 'a b'\n    command: 'true'\n"))
    assert [e.message for e in errors] == [
        "'a b' is not a valid user name (expected letters, digits, '_', '.', '-')"
    ]
    _, errors = parse_dag(
        "id: kick\ntasks:\n  - id: t\n    type: trigger_dag\n    dag_id: x\n    run_as: nobody\n"
    )
    assert [e.message for e in errors] == ["'run_as' cannot be used with type 'trigger_dag'"]


@root_only
def test_a_workers_run_as_user_is_enforced_on_its_tasks(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    dag = (
        'id: remote\nschedule: "workflow_dispatch"\ntasks:\n'
        "  - id: t\n    pool: gpu\n    command: 'id -u'\n"
        "  - id: u\n    pool: gpu\n    run_as: root\n    command: 'id -u'\n"
    )
    _server, url = start_server(
        procs, tmp_path / "master", {"remote.yaml": dag}, "worker_pools: {default: 1, gpu: 0}\n"
    )
    (tmp_path / "worker").mkdir()
    args = ["worker", "--join", url, "--pools", "gpu", "--worker-id", "w1", "--run-as", "nobody"]
    procs(tmp_path / "worker", args)
    run_id = trigger(url, "remote")

    def finished() -> Any:
        run = http("GET", f"{url}/api/runs/{run_id}").json
        return run if run["status"] in ("success", "failed") else None

    wait_for(finished, 20, 0.05, "the run")
    t = http("GET", f"{url}/api/runs/{run_id}/tasks/t").json
    assert t["status"] == "success"
    assert (
        http("GET", f"{url}/api/runs/{run_id}/tasks/t/logs")
        .text.strip()
        .endswith(str(nobody.pw_uid))
    )
    u = http("GET", f"{url}/api/runs/{run_id}/tasks/u").json
    assert u["status"] == "failed"
    assert u["message"].startswith(
        "run_as: worker w1 runs its tasks as 'nobody'; this task asks for 'root'"
    ), u["message"]


def test_a_container_tasks_run_as_is_the_containers_user() -> None:
    base = Assignment("ti", "r", "d", "t", 1, "id -u", {}, image="alpine")
    assert container_spec(replace(base, run_as="nobody")).create_kwargs()["user"] == "nobody"
    assert container_spec(base).create_kwargs()["user"] is None  # the image's own user


@root_only
def test_a_pools_user_travels_with_its_tasks_to_remote_workers(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    dag = 'id: remote\nschedule: "workflow_dispatch"\ntasks:\n  - id: t\n    pool: gpu\n'
    dag += "    command: 'id -u'\n"
    settings = "worker_pools: {default: 1, gpu: 0}\npool_run_as: {gpu: nobody}\n"
    _server, url = start_server(procs, tmp_path / "master", {"remote.yaml": dag}, settings)
    (tmp_path / "worker").mkdir()
    procs(tmp_path / "worker", ["worker", "--join", url, "--pools", "gpu", "--worker-id", "w1"])
    run_id = trigger(url, "remote")
    wait_for(
        lambda: http("GET", f"{url}/api/runs/{run_id}").json["status"] in ("success", "failed"),
        20,
        0.05,
        "the run",
    )
    assert http("GET", f"{url}/api/runs/{run_id}/tasks/t").json["status"] == "success"
    log = http("GET", f"{url}/api/runs/{run_id}/tasks/t/logs").text
    assert log.strip().endswith(str(nobody.pw_uid)), log
