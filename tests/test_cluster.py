"""Cluster mode end to end: a real master (in-process App, or a `nagare serve` subprocess when it
must restart) and real `nagare worker` processes on loopback. No mocks: workers are killed,
stopped (SIGSTOP), drained (SIGTERM) and the master restarted for real."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DOCKER_TEST_IMAGE,
    Nagare,
    http,
    make_config,
    pythonpath_env,
    require_docker,
    wait_for,
)

from nagare.cluster import protocol
from nagare.worker_app import build_worker

LEASE = 2.0  # seconds: a lost worker is noticed quickly
GPU_ONLY = {"default": 2, "gpu": 0}  # gpu: remote workers only


# ---------------------------------------------------------------- helpers


@dataclass
class Worker:
    """A `nagare worker` subprocess; its stdout and stderr go to one file."""

    worker_id: str
    proc: subprocess.Popen[bytes]
    output: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.worker_id} still running after {timeout}s:\n{self.text()}"
            ) from None


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """`workers(url, "w1", pools="gpu", token=..., max_tasks=..., env={...}, command=[...])`
    starts a worker process; every one is killed at the end (SIGCONT first, for stopped ones)."""
    started: list[Worker] = []

    def start(
        url: str,
        worker_id: str,
        pools: str = "gpu",
        token: str | None = None,
        max_tasks: int | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        drop_env: tuple[str, ...] = (),
    ) -> Worker:
        home = tmp_path / f"worker-{worker_id}-{len(started)}"
        home.mkdir()  # its own working directory: no nagare.yaml of the repo is read
        args = command or [sys.executable, "-m", "nagare", "worker"]
        args = [*args, "--join", url, "--pools", pools, "--worker-id", worker_id]
        if token is not None:
            args += ["--token", token]
        if max_tasks is not None:
            args += ["--max-tasks", str(max_tasks)]
        process_env = pythonpath_env(**(env or {}))
        for name in ("NAGARE_TOKEN", "NAGARE_JOIN", *drop_env):
            if name not in (env or {}):
                process_env.pop(name, None)
        output = home / "worker.log"
        with open(output, "wb") as sink:
            proc = subprocess.Popen(args, cwd=home, env=process_env, stdout=sink, stderr=sink)
        worker = Worker(worker_id, proc, output)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            try:
                worker.proc.send_signal(signal.SIGCONT)
                worker.proc.kill()
            except ProcessLookupError:
                pass
            worker.proc.wait(10)


def online(url: str, worker_id: str, headers: dict[str, str] | None = None) -> bool:
    result = http("GET", url + "/api/workers", headers=headers)
    if result.status != 200:
        return False
    return any(w["worker_id"] == worker_id and w["status"] == "online" for w in result.json)


def wait_online(nagare: Nagare, worker: Worker, timeout: float = 15) -> None:
    def joined() -> bool:
        assert worker.proc.poll() is None, f"worker exited early:\n{worker.text()}"
        return online(nagare.url, worker.worker_id, nagare.headers)

    wait_for(joined, timeout, 0.05, f"worker {worker.worker_id} to join")


def wait_task(
    nagare: Nagare, run_id: str, task_id: str, *statuses: str, timeout: float = 15
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        task = nagare.task(run_id, task_id)
        return task if task["status"] in statuses else None

    return wait_for(reached, timeout, 0.05, f"task {task_id} to be {'/'.join(statuses)}")  # type: ignore[no-any-return]


def attempts(nagare: Nagare, run_id: str, task_id: str) -> list[dict[str, Any]]:
    return nagare.get(f"/api/runs/{run_id}/tasks/{task_id}/attempts")  # type: ignore[no-any-return]


def gpu_dag(dag_id: str, tasks: str, extra: str = "") -> str:
    """A DAG text; `tasks` is the YAML list of tasks (indented by 2)."""
    return (
        f'id: {dag_id}\nschedule: "workflow_dispatch"\n{extra}tasks:\n'
        + textwrap.indent(textwrap.dedent(tasks).strip("\n"), "  ")
        + "\n"
    )


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_pid_file(path: Path) -> None:
    """Stop a task process a killed worker left behind."""
    if path.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(path.read_text().strip()), signal.SIGKILL)


def stays(predicate: Callable[[], bool], seconds: float, message: str) -> None:
    """`predicate` holds for the whole period (checked often)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), message
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pool(nagare: Nagare, name: str) -> dict[str, Any]:
    return next(p for p in nagare.get("/api/pools") if p["pool"] == name)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- 1. remote execution


def test_a_gpu_task_runs_on_the_remote_worker_with_its_log_and_metrics(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    nagare = nagare_factory(
        dags={
            "r.yaml": gpu_dag(
                "remote",
                """
                - id: t
                  pool: gpu
                  command: "echo hello-from-remote; echo to-stderr >&2; exit 0"
                """,
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    run_id = nagare.trigger("remote")
    assert nagare.wait_run(run_id)["status"] == "success"
    task = nagare.task(run_id, "t")
    assert task["worker"] == "w1"
    assert task["status"] == "success"
    assert task["exit_code"] == 0
    assert task["metrics"]["executor_type"] == "local"
    assert task["metrics"]["exit_code"] == 0
    assert task["metrics"]["duration_ms"] >= 0
    log = nagare.log(run_id, "t")
    assert log.splitlines()[0].endswith("running on worker w1") or log.startswith(
        "[nagare] running on worker w1"
    ), log
    assert "hello-from-remote" in log
    assert "to-stderr" in log
    listed = {w["worker_id"]: w for w in nagare.get("/api/workers")}
    assert listed["w1"]["pools"] == ["gpu"]
    assert listed["w1"]["status"] == "online"


# ---------------------------------------------------------------- 2. pool routing


def test_a_gpu_task_waits_queued_until_a_gpu_worker_joins(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    nagare = nagare_factory(
        dags={"g.yaml": gpu_dag("routing", '- id: t\n  pool: gpu\n  command: "echo ran"\n')},
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    run_id = nagare.trigger("routing")
    wait_task(nagare, run_id, "t", "queued")
    gpu = pool(nagare, "gpu")
    assert gpu["no_live_worker"] is True
    assert gpu["local_slots"] == 0
    assert gpu["queued"] == 1
    stays(
        lambda: nagare.task(run_id, "t")["status"] == "queued",
        0.5,
        "the gpu task left the queue without any worker",
    )

    cpu = workers(nagare.url, "cpu1", pools="cpu")
    wait_online(nagare, cpu)
    # a full poll cycle of the cpu worker (lease/3) passes: it must not take the gpu task
    stays(
        lambda: nagare.task(run_id, "t")["status"] == "queued",
        LEASE / 3 + 0.5,
        "a worker serving only cpu took a gpu task",
    )
    assert pool(nagare, "gpu")["no_live_worker"] is True
    assert pool(nagare, "cpu")["remote_workers_online"] == 1

    gpu_worker = workers(nagare.url, "gpu1", pools="gpu,other")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.task(run_id, "t")["worker"] == "gpu1"
    after = pool(nagare, "gpu")
    assert after["no_live_worker"] is False
    assert after["remote_workers_online"] == 1
    assert after["remote_capacity"] == 4
    assert gpu_worker.proc.poll() is None


# ---------------------------------------------------------------- 3. token


def test_the_cluster_token_is_required_and_checked(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    dag = gpu_dag("tok", '- id: t\n  pool: gpu\n  command: "echo ok"\n')
    nagare = nagare_factory(
        dags={"t.yaml": dag},
        root=tmp_path / "token",
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
        token="s3cret",
    )
    hello = {"worker_id": "x1", "hostname": "h", "pools": ["gpu"], "max_tasks": 1}
    for route in ("register", "heartbeat", "poll", "log", "result"):
        assert http("POST", f"{nagare.url}/api/workers/{route}", hello).status == 401, route
        bad = {"Authorization": "Bearer nope"}
        assert http("POST", f"{nagare.url}/api/workers/{route}", hello, headers=bad).status == 401
    good = {"Authorization": "Bearer s3cret"}
    assert http("POST", f"{nagare.url}/api/workers/register", hello, headers=good).status == 200

    wrong = workers(nagare.url, "bad1", token="wrong")
    missing = workers(nagare.url, "bad2")
    for refused in (wrong, missing):
        code = refused.wait_exit(10)
        assert code != 0
        text = refused.text()
        assert f"the master at {nagare.url} refused this worker" in text, text
        assert "the cluster token was refused (check --token)" in text, text
    assert wrong.proc.returncode == 2

    right = workers(nagare.url, "good1", token="s3cret")
    run_id = nagare.trigger("tok")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.task(run_id, "t")["worker"] == "good1"
    assert right.proc.poll() is None

    # without a cluster token, the API key is what workers present
    keyed = nagare_factory(
        dags={"t.yaml": dag},
        root=tmp_path / "apikey",
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
        api_key="k3y",
    )
    assert http("POST", f"{keyed.url}/api/workers/register", hello).status == 401
    with_key = workers(keyed.url, "keyed1", token="k3y")
    run_id = keyed.trigger("tok")
    assert keyed.wait_run(run_id)["status"] == "success"
    assert keyed.task(run_id, "t")["worker"] == "keyed1"
    assert with_key.proc.poll() is None


# ---------------------------------------------------------------- 4. cancellation


def test_killing_a_remote_task_stops_its_process_at_once(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    nagare = nagare_factory(
        dags={
            "k.yaml": gpu_dag(
                "killme",
                f'- id: t\n  pool: gpu\n  command: "echo $$ > {pid_file}; exec sleep 30"\n',
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    run_id = nagare.trigger("killme")
    wait_task(nagare, run_id, "t", "running")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10))
    assert not pid_gone(pid)
    try:
        killed = nagare.call("POST", f"/api/runs/{run_id}/tasks/t/kill")
        assert killed.status == 200, killed.body
        wait_for(lambda: pid_gone(pid), 1.0, 0.01, "the remote task's process to be gone")
        assert nagare.wait_run(run_id)["status"] == "cancelled"  # as for a local task
        task = nagare.task(run_id, "t")
        assert task["status"] == "cancelled"
        assert task["worker"] == "w1"
        assert w1.proc.poll() is None
    finally:
        kill_pid_file(pid_file)


# ---------------------------------------------------------------- 5. kill -9 of a worker


def test_a_worker_killed_mid_task_loses_it_and_the_retry_runs_elsewhere(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    long_first = (
        f'[ "$NAGARE_ATTEMPT" -ge 2 ] && echo second && exit 0; echo $$ > {pid_file}; exec sleep 30'
    )
    nagare = nagare_factory(
        dags={
            "a.yaml": gpu_dag(
                "retried", f"- id: t\n  pool: gpu\n  retries: 1\n  command: '{long_first}'\n"
            ),
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    try:
        w1 = workers(nagare.url, "w1")
        run_id = nagare.trigger("retried")
        running = wait_task(nagare, run_id, "t", "running")
        assert running["worker"] == "w1"
        w2 = workers(nagare.url, "w2")
        wait_online(nagare, w2)
        wait_for(pid_file.exists, 10)
        w1.signal(signal.SIGKILL)
        w1.wait_exit(5)
        assert nagare.wait_run(run_id, timeout=LEASE + 10)["status"] == "success"
        task = nagare.task(run_id, "t")
        assert task["worker"] == "w2"
        assert task["attempt"] == 2
        history = attempts(nagare, run_id, "t")
        assert len(history) == 2
        assert history[0]["status"] == "failed"
        assert "worker w1 lost: no word from it for 2s" in history[0]["message"]
        assert history[1]["status"] == "success"
        assert "worker w1 lost" in nagare.log(run_id, "t", attempt=1)
        assert "second" in nagare.log(run_id, "t", attempt=2)
    finally:
        kill_pid_file(pid_file)


def test_a_worker_killed_with_a_batch_in_hand_has_each_task_retried_exactly_once(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    """Four tasks held by one worker (handed out together, their leases renewed together)
    when it is killed: each attempt expires once, and each task's one retry runs elsewhere."""
    pids = tmp_path / "pids"
    long_first = (
        f'[ "$NAGARE_ATTEMPT" -ge 2 ] && echo second && exit 0; echo $$ >> {pids}; exec sleep 30'
    )
    tasks = "".join(
        f"- id: t{i}\n  pool: gpu\n  retries: 1\n  command: '{long_first}'\n" for i in range(4)
    )
    nagare = nagare_factory(
        dags={"batch.yaml": gpu_dag("batch", tasks)},
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    try:
        w1 = workers(nagare.url, "w1", max_tasks=4)
        run_id = nagare.trigger("batch")
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 4, 15)
        assert {nagare.task(run_id, f"t{i}")["worker"] for i in range(4)} == {"w1"}
        w2 = workers(nagare.url, "w2", max_tasks=4)
        wait_online(nagare, w2)
        w1.signal(signal.SIGKILL)
        w1.wait_exit(5)
        assert nagare.wait_run(run_id, timeout=LEASE + 15)["status"] == "success"
        for i in range(4):
            history = attempts(nagare, run_id, f"t{i}")
            assert [a["status"] for a in history] == ["failed", "success"], history
            assert "worker w1 lost" in history[0]["message"]
            assert nagare.task(run_id, f"t{i}")["worker"] == "w2"
    finally:
        if pids.exists():
            for pid in pids.read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


def test_a_worker_killed_mid_task_without_retries_fails_it_as_lost(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    nagare = nagare_factory(
        dags={
            "b.yaml": gpu_dag(
                "single",
                "- id: t\n  pool: gpu\n  retries: 0\n"
                f"  command: 'echo $$ > {pid_file}; exec sleep 30'\n",
            ),
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    try:
        w3 = workers(nagare.url, "w3")
        run_id = nagare.trigger("single")
        wait_task(nagare, run_id, "t", "running")
        wait_for(pid_file.exists, 10)
        started = time.monotonic()
        w3.signal(signal.SIGKILL)
        w3.wait_exit(5)
        task = wait_task(nagare, run_id, "t", "failed", timeout=LEASE + 3)
        assert time.monotonic() - started <= LEASE + 3
        assert task["message"].startswith("worker w3 lost: no word from it for 2s"), task["message"]
        assert nagare.wait_run(run_id)["status"] == "failed"
        assert len(attempts(nagare, run_id, "t")) == 1
    finally:
        kill_pid_file(pid_file)


def test_a_worker_killed_while_it_waits_for_work_costs_no_retry(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    """A worker killed with a poll open gets no work handed to its dead connection; and work
    handed out that the worker never confirmed runs again without spending a retry."""
    nagare = nagare_factory(
        dags={
            "q.yaml": gpu_dag("quick", "- id: t\n  pool: gpu\n  retries: 0\n  command: 'true'\n")
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    coordinator = nagare.app.coordinator
    wait_for(lambda: coordinator.waiting_polls("w1"), 10, message="w1's long poll to wait")
    w1.signal(signal.SIGKILL)
    w1.wait_exit(5)
    run_id = nagare.trigger("quick")  # wakes the dead worker's poll, which hands out nothing
    wait_for(lambda: not coordinator.waiting_polls("w1"), 10, message="the dead poll to end")
    w2 = workers(nagare.url, "w2")
    wait_online(nagare, w2)
    assert nagare.wait_run(run_id, LEASE * 3 + 10)["status"] == "success"
    task = nagare.task(run_id, "t")
    assert task["worker"] == "w2"
    for attempt in attempts(nagare, run_id, "t")[:-1]:  # a hand-out to w1 (if any) was given back
        assert attempt["worker"] == "w1"


# ---------------------------------------------------------------- 6. partition


def test_a_result_after_the_lease_ran_out_is_refused(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    side = tmp_path / "side-effect"
    began = tmp_path / "began"
    command = f"touch {began}; sleep 1; touch {side}"
    nagare = nagare_factory(
        dags={
            "p.yaml": gpu_dag(
                "partition", f"- id: t\n  pool: gpu\n  retries: 0\n  command: '{command}'\n"
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    run_id = nagare.trigger("partition")
    wait_task(nagare, run_id, "t", "running")
    # "running" is the master's word once the task is handed out: stop the worker only once
    # its process has started, or a stopped worker never starts it
    wait_for(began.exists, 10, message="the task's process to start")
    w1.signal(signal.SIGSTOP)
    try:
        task = wait_task(nagare, run_id, "t", "failed", timeout=LEASE + 3)
        wait_for(side.exists, 5, message="the command to finish while its worker is stopped")
    finally:
        w1.signal(signal.SIGCONT)
    assert task["message"].startswith("worker w1 lost"), task["message"]
    assert nagare.wait_run(run_id)["status"] == "failed"

    # the worker wakes up, learns it lost the task (or has its result refused) and drops it
    wait_for(
        lambda: "refused the result" in w1.text() or "no longer holds" in w1.text(),
        10,
        message="the worker to learn that its result is not wanted",
    )
    wait_for(
        lambda: any(
            w["worker_id"] == "w1" and w["status"] == "online" and w["running_tasks"] == 0
            for w in nagare.get("/api/workers")
        ),
        5,
        message="w1 online again with nothing running",
    )
    final = nagare.task(run_id, "t")
    assert final["status"] == "failed"
    assert final["message"] == task["message"]
    history = attempts(nagare, run_id, "t")
    assert len(history) == 1
    assert history[0]["status"] == "failed"
    assert "worker w1 lost" in history[0]["message"]
    assert nagare.get(f"/api/runs/{run_id}")["status"] == "failed"
    assert w1.proc.poll() is None


# ---------------------------------------------------------------- 7. master restart


def test_a_worker_outlives_a_master_restart_and_delivers_its_result(
    workers: Callable[..., Worker], tmp_path: Path
) -> None:
    root = tmp_path / "master"
    (root / "dags").mkdir(parents=True)
    (root / "nagare.yaml").write_text(
        f"worker_pools: {{default: 2, gpu: 0}}\nlease_timeout_seconds: {LEASE}\n"
    )
    (root / "dags" / "slow.yaml").write_text(
        gpu_dag("slow", "- id: t\n  pool: gpu\n  command: 'sleep 3; echo finished'\n")
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen[bytes]:
        with open(root / "server.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nagare",
                    "serve",
                    "--port",
                    f"127.0.0.1:{port}",
                    "--db",
                    str(root / "nagare.db"),
                    "--dags",
                    str(root / "dags"),
                ],
                cwd=root,
                env=pythonpath_env(),
                stdout=log,
                stderr=log,
            )
        wait_for(lambda: answers(url), 20, message="the master to answer")
        return proc

    master = serve()
    try:
        w1 = workers(url, "w1")
        wait_for(lambda: online(url, "w1"), 15, message="w1 to join")
        wait_for(lambda: any(d["dag_id"] == "slow" for d in dags(url)), 10, message="dag loaded")
        created = http("POST", f"{url}/api/dags/slow/runs")
        assert created.status == 201, created.body
        run_id = created.json["run_id"]
        wait_for(
            lambda: http("GET", f"{url}/api/runs/{run_id}/tasks/t").json["status"] == "running",
            10,
            message="the task to run on w1",
        )
        master.send_signal(signal.SIGTERM)
        assert master.wait(20) == 0
        master = serve()
        wait_for(
            lambda: http("GET", f"{url}/api/runs/{run_id}").json["status"] == "success",
            20,
            message="the run to succeed after the restart",
        )
        task = http("GET", f"{url}/api/runs/{run_id}/tasks/t").json
        assert task["status"] == "success"
        assert task["worker"] == "w1"
        assert task["attempt"] == 1
        assert "finished" in http("GET", f"{url}/api/runs/{run_id}/tasks/t/logs").text
        listed = {w["worker_id"]: w for w in http("GET", f"{url}/api/workers").json}
        assert "w1" in listed
        assert listed["w1"]["pools"] == ["gpu"]
        wait_for(lambda: online(url, "w1"), 10, message="w1 online at the new master")
        assert w1.proc.poll() is None
    finally:
        if master.poll() is None:
            master.kill()
        master.wait(10)


def answers(url: str) -> bool:
    try:
        return http("GET", url + "/api/health", timeout=1).status == 200
    except OSError:
        return False


def dags(url: str) -> list[dict[str, Any]]:
    result = http("GET", url + "/api/dags")
    return result.json if result.status == 200 else []  # type: ignore[no-any-return]


# ---------------------------------------------------------------- 8. exactly once


def test_two_hundred_tasks_on_three_workers_each_run_exactly_once(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    items = ", ".join(str(i) for i in range(200))
    nagare = nagare_factory(
        dags={
            "many.yaml": gpu_dag(
                "many",
                f"""
                - id: t
                  pool: gpu
                  with_items: [{items}]
                  command: 'echo "{{{{item}}}} $NAGARE_ATTEMPT" >> {ledger}'
                """,
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    pool_of = [workers(nagare.url, f"w{i}", max_tasks=4) for i in (1, 2, 3)]
    for worker in pool_of:
        wait_online(nagare, worker)
    started = time.monotonic()
    run_id = nagare.trigger("many")
    assert nagare.wait_run(run_id, timeout=30)["status"] == "success"
    elapsed = time.monotonic() - started
    lines = ledger.read_text().splitlines()
    assert sorted(lines) == sorted(f"{i} 1" for i in range(200)), "not exactly once"
    tasks = nagare.tasks(run_id)
    assert len(tasks) == 200
    assert all(t["status"] == "success" and t["attempt"] == 1 for t in tasks.values())
    used = {t["worker"] for t in tasks.values()}
    assert used <= {"w1", "w2", "w3"}
    assert len(used) >= 2, f"only {used} worked"
    assert elapsed < 30


# ---------------------------------------------------------------- 9. environment


def test_a_remote_task_gets_the_workers_environment_never_the_masters(
    nagare_factory: Callable[..., Nagare],
    workers: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MASTER_SECRET", "planted-xyz")
    monkeypatch.setenv("NAGARE_TOKEN", "tok-master-env")
    nagare = nagare_factory(
        dags={
            "e.yaml": gpu_dag(
                "envy",
                "- id: t\n  pool: gpu\n  env: {TASK_VAR: from-task}\n  command: env\n",
                extra="env: {DAG_VAR: from-dag}\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
        token="tok-w",
    )
    w1 = workers(
        nagare.url,
        "w1",
        env={"WORKER_VAR": "from-worker", "NAGARE_TOKEN": "tok-w"},  # the token via env
        drop_env=("MASTER_SECRET",),  # the worker host does not have the master's secret
    )
    wait_online(nagare, w1)
    run_id = nagare.trigger("envy", conf={"PARAM": "from-conf"})
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.task(run_id, "t")["worker"] == "w1"
    lines = set(nagare.log(run_id, "t").splitlines())
    for expected in (
        "WORKER_VAR=from-worker",
        f"NAGARE_RUN_ID={run_id}",
        "NAGARE_TASK_ID=t",
        "NAGARE_ATTEMPT=1",
        "PARAM=from-conf",
        "DAG_VAR=from-dag",
        "TASK_VAR=from-task",
    ):
        assert any(line.endswith(expected) for line in lines), (expected, lines)
    text = "\n".join(lines)
    assert "planted-xyz" not in text
    assert "MASTER_SECRET" not in text
    assert "NAGARE_TOKEN" not in text
    assert "tok-w" not in text


# ---------------------------------------------------------------- 10. timeouts and retries


def test_remote_timeouts_and_retries_behave_as_locally(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    nagare = nagare_factory(
        dags={
            "t.yaml": gpu_dag(
                "limits",
                """
                - id: slow
                  pool: gpu
                  timeout_seconds: 1
                  command: "sleep 10"
                - id: flaky
                  pool: gpu
                  retries: 1
                  command: 'echo "attempt $NAGARE_ATTEMPT"; [ "$NAGARE_ATTEMPT" -ge 2 ]'
                """,
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    started = time.monotonic()
    run_id = nagare.trigger("limits")
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    slow = tasks["slow"]
    assert slow["status"] == "failed"
    assert slow["timed_out"] is True
    assert "timed out after 1s" in slow["message"], slow["message"]
    assert slow["worker"] == "w1"
    assert time.monotonic() - started < 8

    flaky = tasks["flaky"]
    assert flaky["status"] == "success"
    assert flaky["attempt"] == 2
    history = attempts(nagare, run_id, "flaky")
    assert [a["status"] for a in history] == ["failed", "success"]
    assert all(a["worker"] == "w1" for a in history), history
    assert history[0]["exit_code"] == 1
    assert "attempt 1" in nagare.log(run_id, "flaky", attempt=1)
    assert "attempt 2" in nagare.log(run_id, "flaky", attempt=2)


# ---------------------------------------------------------------- 11. map and trigger_dag


def test_map_parents_and_trigger_dag_stay_on_the_master(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    nagare = nagare_factory(
        dags={
            "m.yaml": gpu_dag(
                "fanout",
                """
                - id: src
                  pool: gpu
                  command: "echo listing; echo '[\\"a\\", \\"b\\", \\"c\\"]'"
                - id: each
                  type: map
                  pool: gpu
                  map_over: src
                  command: "echo item {{item}}"
                - id: kick
                  type: trigger_dag
                  pool: gpu
                  dag_id: target
                  depends_on: [each]
                """,
            ),
            "target.yaml": gpu_dag("target", "- id: x\n  command: 'echo target'\n"),
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    run_id = nagare.trigger("fanout")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = nagare.tasks(run_id)
    assert tasks["src"]["worker"] == "w1"
    children = [
        t for t in tasks.values() if t["base_task_id"] == "each" and t["map_index"] is not None
    ]
    assert len(children) == 3
    assert all(c["worker"] == "w1" and c["status"] == "success" for c in children), children
    assert {c["item"] for c in children} == {"a", "b", "c"}
    assert "item b" in nagare.log(run_id, next(c["task_id"] for c in children if c["item"] == "b"))
    assert tasks["each"]["worker"] == "local"
    assert tasks["kick"]["worker"] == "local"
    assert tasks["kick"]["status"] == "success"
    triggered = nagare.get("/api/runs?dag_id=target")["data"]
    assert len(triggered) == 1
    assert nagare.wait_run(triggered[0]["run_id"])["status"] == "success"


# ---------------------------------------------------------------- 12. graceful SIGTERM


def test_a_stopping_worker_hands_back_a_long_task_without_spending_a_retry(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    marker, pid_file = tmp_path / "first-run", tmp_path / "pid"
    command = (
        f"[ -e {marker} ] && echo second-run && exit 0; touch {marker}; echo $$ > {pid_file}; "
        "exec sleep 30"
    )
    nagare = nagare_factory(
        dags={
            "h.yaml": gpu_dag(
                "handback", f"- id: t\n  pool: gpu\n  retries: 0\n  command: '{command}'\n"
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    try:
        w1 = workers(nagare.url, "w1", env={"NAGARE_SHUTDOWN_GRACE_SECONDS": "1"})
        run_id = nagare.trigger("handback")
        assert wait_task(nagare, run_id, "t", "running")["worker"] == "w1"
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10))
        stopped_at = time.monotonic()
        w1.signal(signal.SIGTERM)
        assert w1.wait_exit(8) == 0, w1.text()
        assert time.monotonic() - stopped_at < 8
        assert pid_gone(pid), "the handed-back task's process survived its worker"
        task = wait_task(nagare, run_id, "t", "queued", timeout=5)
        assert "handed back" in task["message"], task["message"]
        # the hand-back did not spend the only attempt (retries: 0): one is still available
        assert task["max_attempts"] - task["attempt"] == 1, task
        # nobody serves gpu now: it waits instead of failing
        stays(
            lambda: nagare.task(run_id, "t")["status"] == "queued",
            0.3,
            "the handed-back task did not stay queued",
        )
        listed = {w["worker_id"]: w for w in nagare.get("/api/workers")}
        assert listed["w1"]["left"] is True
        assert listed["w1"]["status"] == "offline"

        w2 = workers(nagare.url, "w2")
        assert nagare.wait_run(run_id)["status"] == "success"
        task = nagare.task(run_id, "t")
        assert task["worker"] == "w2"
        assert task["status"] == "success"
        assert "second-run" in nagare.log(run_id, "t")
        history = attempts(nagare, run_id, "t")
        assert [a["worker"] for a in history] == ["w1", "w2"], history
        assert "handed back" in history[0]["message"]
        assert w2.proc.poll() is None
    finally:
        kill_pid_file(pid_file)


def test_a_stopping_worker_lets_a_short_task_finish_within_the_grace_period(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    started = tmp_path / "started"
    nagare = nagare_factory(
        dags={
            "s.yaml": gpu_dag(
                "short",
                f"- id: t\n  pool: gpu\n  command: 'touch {started}; sleep 0.5; echo done'\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1", env={"NAGARE_SHUTDOWN_GRACE_SECONDS": "5"})
    run_id = nagare.trigger("short")
    wait_for(started.exists, 10, message="the task to start on w1")
    w1.signal(signal.SIGTERM)
    assert w1.wait_exit(8) == 0, w1.text()
    run = nagare.wait_run(run_id, timeout=5)
    assert run["status"] == "success"
    task = nagare.task(run_id, "t")
    assert task["worker"] == "w1"
    assert task["attempt"] == 1
    assert "done" in nagare.log(run_id, "t")


# ---------------------------------------------------------------- 13. protocol validation


def test_the_protocol_validates_what_workers_send(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(
        dags={"v.yaml": gpu_dag("valid", "- id: t\n  pool: gpu\n  command: 'echo hi'\n")},
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    url = nagare.url + "/api/workers/"
    good = {"worker_id": "w1", "hostname": "host-1", "pools": ["gpu"], "max_tasks": 2}
    assert http("POST", url + "register", good).status == 200
    for field_name, value in (
        ("worker_id", "local"),
        ("worker_id", "../x"),
        ("worker_id", "w" * 300),
        ("worker_id", ""),
        ("pools", []),
        ("pools", ["a b"]),
        ("pools", "gpu"),
        ("max_tasks", 0),
        ("max_tasks", "2"),
        ("prefetch", -1),
        ("prefetch", 1000),
        ("prefetch", "4"),
        ("hostname", "bad host"),
    ):
        for route in ("register", "heartbeat", "poll"):
            body = {**good, field_name: value}
            if route == "poll":
                body.update(wait_seconds=0)
            result = http("POST", url + route, body)
            assert result.status == 400, (route, field_name, value, result.status, result.body)
            assert field_name in result.text, (field_name, result.text)
    result = http("POST", url + "poll", {**good, "wait_seconds": -1})
    assert result.status == 400 and "wait_seconds" in result.text
    result = http("POST", url + "heartbeat", {**good, "held": [["no spaces allowed", 1]]})
    assert result.status == 400 and "held" in result.text

    outcome = {"exit_code": 0, "timed_out": False, "cancelled": False, "error": "", "metrics": {}}
    unknown = {
        "worker_id": "w1",
        "task_instance_id": "nosuchtask",
        "attempt": 1,
        "outcome": outcome,
    }
    result = http("POST", url + "result", unknown)
    assert result.status == 404, result.body
    result = http("POST", url + "log", {**unknown, "lines": [["stdout", "x"]]})
    assert result.status == 404, result.body

    # a real task nobody holds (it waits queued: no worker serves gpu)
    run_id = nagare.trigger("valid")
    task = wait_task(nagare, run_id, "t", "queued")
    not_held = {**unknown, "task_instance_id": task["id"]}
    result = http("POST", url + "result", not_held)
    assert result.status == 409, result.body
    assert "does not hold" in result.text
    result = http("POST", url + "log", {**not_held, "lines": [["stdout", "forged"]]})
    assert result.status == 409, result.body
    assert nagare.task(run_id, "t")["status"] == "queued"
    for bad in (
        {**not_held, "outcome": "ok"},
        {**not_held, "attempt": 0},
        {**not_held, "lines": [["elsewhere", "x"]]},
    ):
        route = "log" if "lines" in bad else "result"
        result = http("POST", url + route, bad)
        assert result.status == 400, (bad, result.body)

    result = http("POST", url + "register", raw=b"{not json")
    assert result.status == 400, result.body
    result = http("POST", url + "register", raw=b"[1, 2]")
    assert result.status == 400, result.body
    limit = int(nagare.app.config.max_body_bytes)
    for route in ("log", "result", "poll"):
        status = announced_body_status(nagare, f"/api/workers/{route}", limit + 1)
        assert status == 413, (route, status)
    assert nagare.task(run_id, "t")["status"] == "queued"


def test_a_real_worker_sends_exactly_what_the_master_reads(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    """An in-process RemoteWorker whose client records what it sends and gets: the master's
    reader turns every body it sends into a message whose encoding is that very body, and
    every answer decodes into a message whose encoding is that very answer."""
    nagare = nagare_factory(
        dags={
            "w.yaml": gpu_dag(
                "wire",
                """
                - id: loud
                  pool: gpu
                  command: "for i in 1 2 3; do echo out $i; echo err $i >&2; sleep 0.2; done"
                - id: bad
                  pool: gpu
                  command: "echo x; exit 3"
                - id: long
                  pool: gpu
                  command: "sleep 30"
                """,
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    (tmp_path / "worker").mkdir()
    config = make_config(
        tmp_path / "worker", join=nagare.url, pools="gpu", worker_id="w1", max_tasks=3
    )
    app = build_worker(config.with_values(shutdown_grace_seconds=0.5))
    worker = app.worker
    sent: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    send = worker.master.cluster

    def recording(verb: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        answer = send(verb, body, timeout)
        sent.append((verb, body, answer))
        return answer

    worker.master.cluster = recording  # type: ignore[method-assign]
    app.start()
    try:
        run_id = nagare.trigger("wire")
        wait_task(nagare, run_id, "long", "running")
        wait_task(nagare, run_id, "bad", "failed")
        wait_task(nagare, run_id, "loud", "success")
        assert nagare.call("POST", f"/api/runs/{run_id}/tasks/long/kill").status == 200
        wait_task(nagare, run_id, "long", "cancelled")
    finally:
        app.stop()

    readers = {
        "register": (protocol.read_hello, protocol.encode_hello),
        "heartbeat": (protocol.read_hello, protocol.encode_hello),
        "poll": (protocol.read_poll, protocol.encode_poll),
        "log": (lambda b: protocol.read_log_batch(b, 10**6), protocol.encode_log_batch),
        "result": (protocol.read_result, protocol.encode_result),
    }
    decoders = {
        "register": (protocol.decode_welcome, protocol.encode_welcome),
        "heartbeat": (protocol.decode_directives, protocol.encode_directives),
        "poll": (protocol.decode_directives, protocol.encode_directives),
        "log": (protocol.decode_log_ack, protocol.encode_log_ack),
        "result": (protocol.decode_result_ack, protocol.encode_result_ack),
    }
    for verb, body, answer in sent:
        read, encode = readers[verb]
        assert json.dumps(encode(read(json.loads(json.dumps(body))))) == json.dumps(body), verb
        decode, encode_answer = decoders[verb]
        assert json.dumps(encode_answer(decode(answer))) == json.dumps(answer), verb
    verbs = {verb for verb, _, _ in sent}
    # results travel in polls (protocol 2): `result` is only for workers of protocol 1
    assert verbs == {"register", "heartbeat", "poll", "log"}, verbs
    assert any(verb == "poll" and answer["tasks"] for verb, _, answer in sent)
    carried = [
        (body, answer) for verb, body, answer in sent if verb == "poll" and "results" in body
    ]
    assert any("lines" in r for body, _ in carried for r in body["results"]), carried
    for body, answer in carried:  # each result acknowledged by attempt
        keys = {(r["task_instance_id"], r["attempt"]) for r in body["results"]}
        assert {(a["task_instance_id"], a["attempt"]) for a in answer["results"]} == keys
        assert body["wait_seconds"] == 0  # a poll that carries results never waits


def test_a_worker_falls_back_to_one_result_per_request_for_a_master_of_protocol_1(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    """A master of the previous release ignores the results in a poll and acknowledges none:
    the worker keeps them and sends each through `result`; none is lost or recorded twice."""
    nagare = nagare_factory(
        dags={
            "o.yaml": gpu_dag(
                "older",
                "- id: a\n  pool: gpu\n  command: 'echo a'\n"
                "- id: b\n  pool: gpu\n  depends_on: [a]\n  command: 'echo b'\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    (tmp_path / "worker").mkdir()
    config = make_config(tmp_path / "worker", join=nagare.url, pools="gpu", worker_id="w1")
    app = build_worker(config.with_values(shutdown_grace_seconds=0.5))
    send = app.worker.master.cluster
    verbs: list[str] = []

    def older_master(verb: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        verbs.append(verb)
        body = {k: v for k, v in body.items() if k != "results"}  # not read by protocol 1
        answer = send(verb, body, timeout)
        answer.pop("results", None)  # nor acknowledged
        return answer

    app.worker.master.cluster = older_master  # type: ignore[method-assign]
    app.start()
    try:
        run_id = nagare.trigger("older")
        assert nagare.wait_run(run_id, timeout=15)["status"] == "success"
    finally:
        app.stop()
    assert "result" in verbs
    for task_id in ("a", "b"):
        assert [a["status"] for a in attempts(nagare, run_id, task_id)] == ["success"]
        assert nagare.log(run_id, task_id).strip().endswith(task_id)


def announced_body_status(nagare: Nagare, path: str, length: int) -> int:
    """Announce a body of `length` bytes and read the answer before sending any of it."""
    with socket.create_connection(("127.0.0.1", nagare.app.port), timeout=5) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {length}\r\n\r\n".encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


# ---------------------------------------------------------------- 14. the zipapp as a worker


def test_the_zipapp_runs_as_a_worker(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], built_pyz: Path
) -> None:
    nagare = nagare_factory(
        dags={"z.yaml": gpu_dag("zipped", "- id: t\n  pool: gpu\n  command: 'echo from-pyz'\n")},
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "pyz1", command=[sys.executable, str(built_pyz), "--worker"])
    wait_online(nagare, w1)
    run_id = nagare.trigger("zipped")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.task(run_id, "t")["worker"] == "pyz1"
    assert "from-pyz" in nagare.log(run_id, "t")
    listed = {w["worker_id"]: w for w in nagare.get("/api/workers")}
    assert listed["pyz1"]["version"]


# ---------------------------------------------------------------- containers on workers


def test_a_container_task_runs_on_a_remote_worker(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    """The worker reuses the Docker executor: same env rules (no host env), metrics, logs."""
    require_docker()
    nagare = nagare_factory(
        dags={
            "c.yaml": gpu_dag(
                "boxed",
                f"""
                - id: t
                  pool: gpu
                  image: {DOCKER_TEST_IMAGE}
                  env: {{FROM_TASK: "yes"}}
                  command: 'echo in-box $FROM_TASK $NAGARE_TASK_ID W=$WORKER_VAR; echo e >&2'
                """,
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=5,
    )
    w1 = workers(nagare.url, "w1", env={"WORKER_VAR": "host-only"})
    wait_online(nagare, w1)
    run_id = nagare.trigger("boxed")
    assert nagare.wait_run(run_id, 60)["status"] == "success", nagare.log(run_id, "t")
    task = nagare.task(run_id, "t")
    assert task["worker"] == "w1" and task["metrics"]["executor_type"] == "docker"
    text = nagare.log(run_id, "t")
    assert "in-box yes t W=" in text and "host-only" not in text  # containers get no host env


def test_a_loud_remote_task_streams_every_line_in_order(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    """200,000 lines (~7 MB) arrive on the master complete and in order, in batches, while the
    task still runs (the live view is the same as for a local task)."""
    nagare = nagare_factory(
        dags={
            "loud.yaml": gpu_dag(
                "loud",
                "- id: t\n  pool: gpu\n"
                "  command: 'seq 1 100000; echo half-way; sleep 1; seq 100001 200000'\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=5,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    run_id = nagare.trigger("loud")
    wait_for(lambda: "half-way" in nagare.log(run_id, "t"), 20, 0.1, "the first half live")
    assert nagare.task(run_id, "t")["status"] == "running"
    assert nagare.wait_run(run_id, 60)["status"] == "success"
    lines = [line for line in nagare.log(run_id, "t").splitlines() if not line.startswith("[")]
    assert lines == [*map(str, range(1, 100_001)), "half-way", *map(str, range(100_001, 200_001))]


def test_an_open_cluster_is_warned_about_at_start(
    nagare_factory: Callable[..., Nagare], caplog: pytest.LogCaptureFixture
) -> None:
    warning = "neither token nor api_key is configured: anyone who can reach this port can join"
    with caplog.at_level("WARNING", logger="nagare"):
        nagare_factory()
    assert warning in caplog.text
    for settings in ({"token": "t0k"}, {"api_key": "k3y"}):
        caplog.clear()
        with caplog.at_level("WARNING", logger="nagare"):
            nagare_factory(**settings)
        assert warning not in caplog.text


def test_the_live_log_of_a_remote_task_streams_like_a_local_one(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    """SSE: history, then lines live as the worker ships them, then `event: end`."""
    from test_sse import open_stream

    nagare = nagare_factory(
        dags={
            "s.yaml": gpu_dag(
                "slowtalk",
                "- id: t\n  pool: gpu\n"
                "  command: 'echo one; sleep 1; echo two; sleep 1; echo three'\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=5,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    run_id = nagare.trigger("slowtalk")
    wait_for(lambda: "one" in nagare.log(run_id, "t"), 10, 0.05, "the first line")
    stream = open_stream(nagare, run_id, "t")
    try:
        assert stream.status == 200
        stream.until_end(15)
    finally:
        stream.close()
    lines = [e for e in stream.lines if not e.data.startswith("[nagare]")]
    assert [e.data for e in lines] == ["one", "two", "three"]
    assert lines[2].at - lines[1].at > 0.5  # arrived live, not all at the end
    assert stream.end == {"status": "success"}


def test_nagare_workers_lists_the_connected_workers(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker]
) -> None:
    from test_cli_client import ok

    nagare = nagare_factory(worker_pools=GPU_ONLY, lease_timeout_seconds=5)
    assert "No workers connected" in ok("workers", api=nagare.url)
    w1 = workers(nagare.url, "w1", pools="gpu,cpu", max_tasks=3)
    wait_online(nagare, w1)
    lines = ok("workers", api=nagare.url).splitlines()
    assert lines[0].split() == ["WORKER", "ID", "HOSTNAME", "POOLS", "STATUS", "TASKS"]
    assert lines[1].split()[0] == "w1" and lines[1].split()[2:] == ["gpu,cpu", "online", "0/3"]
    scrape = http("GET", nagare.url + "/metrics", headers={"Accept": "text/plain"}).text
    assert 'nagare_workers{status="online"} 1' in scrape
    assert 'nagare_workers{status="offline"} 0' in scrape


def test_a_worker_joins_a_master_over_tls(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], tmp_path: Path
) -> None:
    """HTTPS with a private certificate: trusted through SSL_CERT_FILE the worker runs tasks;
    without it the worker stops at once with a clear message instead of retrying forever."""
    from test_security import _self_signed

    cert, key = _self_signed(tmp_path)
    nagare = nagare_factory(
        dags={"t.yaml": gpu_dag("overtls", "- id: t\n  pool: gpu\n  command: 'echo via-tls'\n")},
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=5,
        token="tls-token",
        tls_cert=str(cert),
        tls_key=str(key),
    )
    url = f"https://127.0.0.1:{nagare.app.port}"
    untrusted = workers(url, "w0", token="tls-token", drop_env=("SSL_CERT_FILE",))
    assert untrusted.wait_exit(15) == 2
    assert "the TLS certificate of" in untrusted.text() and "SSL_CERT_FILE" in untrusted.text()
    w1 = workers(url, "w1", token="tls-token", env={"SSL_CERT_FILE": str(cert)})
    run = nagare.app.runs.trigger("overtls", {})

    def finished() -> str | None:
        current = nagare.app.store.runs.get(run.run_id, counts=False)
        assert w1.proc.poll() is None, w1.text()
        return str(current.status) if current and current.status.terminal else None

    assert wait_for(finished, 20, 0.05, "the run over TLS") == "success"
    task = nagare.app.store.tasks.get(run.run_id, "t")
    assert task is not None and task.worker == "w1"
    lines = [text for _, text in nagare.app.logs.lines(run.run_id, task.id, task.attempt)]
    assert "via-tls" in lines


def test_a_kept_alive_connection_the_master_dropped_is_replaced(
    nagare_factory: Callable[..., Nagare],
) -> None:
    """A worker keeps one connection per thread; when the master has closed an idle one, the
    next message goes out once more on a fresh connection instead of failing."""
    from nagare.client import ApiClient

    # idle kept-alive connections are dropped after request_timeout_seconds (when below 15 s)
    nagare = nagare_factory(worker_pools=GPU_ONLY, request_timeout_seconds=0.3)
    client = ApiClient(nagare.url)
    hello = {"worker_id": "w1", "hostname": "h", "pools": ["gpu"], "max_tasks": 1}
    assert client.cluster("register", hello)["worker_id"] == "w1"
    assert client.cluster("heartbeat", hello) == {"tasks": [], "cancel": [], "lost": []}
    first = client._kept.connection
    assert first is not None and first.sock is not None
    wait_for(lambda: _closed_by_peer(first.sock), 5, message="the master to drop the connection")
    assert client.cluster("heartbeat", hello) == {"tasks": [], "cancel": [], "lost": []}
    assert client._kept.connection is not first
    client.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed this connection (readable, and nothing to read)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
