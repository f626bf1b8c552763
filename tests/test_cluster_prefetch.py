"""A worker's prefetch: while its tasks are short it takes a few more than its slots, and starts
each the moment a slot frees; a prefetched task that waits too long goes back to the queue for
any worker, a killed one ends unstarted, a stopping worker hands its waiting ones back at once.
Real master, real `nagare worker` processes, real `sh -c` tasks."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from conftest import Nagare, wait_for
from test_cluster import (
    GPU_ONLY,
    LEASE,
    Worker,
    attempts,
    gpu_dag,
    wait_online,
    wait_task,
    workers,  # noqa: F401 - the fixture
)

from nagare.engine.prefetch import (
    RECENT_TASKS,
    SHORT_TASK_SECONDS,
    WAIT_LIMIT_SECONDS,
    overdue,
    prefetch_now,
)

SHORT = [0.01] * RECENT_TASKS  # the run times of a worker whose tasks are short


# ---------------------------------------------------------------- the decisions


def test_a_worker_prefetches_only_once_its_last_tasks_were_short() -> None:
    assert prefetch_now(4, [], [], now=100.0) == 0  # nothing known yet
    assert prefetch_now(4, SHORT[1:], [], now=100.0) == 0  # not enough known yet
    assert prefetch_now(4, SHORT, [], now=100.0) == 4
    assert prefetch_now(0, SHORT, [], now=100.0) == 0  # switched off
    long_one = [*SHORT[1:], SHORT_TASK_SECONDS]
    assert prefetch_now(4, long_one, [], now=100.0) == 0


def test_a_worker_stops_prefetching_while_a_task_of_its_runs_long() -> None:
    young = [100.0 - SHORT_TASK_SECONDS / 2]
    assert prefetch_now(4, SHORT, young, now=100.0) == 4
    old = [*young, 100.0 - SHORT_TASK_SECONDS]
    assert prefetch_now(4, SHORT, old, now=100.0) == 0


def test_a_prefetched_task_is_overdue_after_the_wait_limit() -> None:
    now = 50.0
    waiting = [now - WAIT_LIMIT_SECONDS - 0.1, now - WAIT_LIMIT_SECONDS / 2]
    waiting.append(now - WAIT_LIMIT_SECONDS)
    assert overdue(waiting, now) == [0, 2]
    assert overdue([], now) == []


# ---------------------------------------------------------------- end to end


def _warm_up(nagare: Nagare, dag_id: str = "warm") -> None:
    """RECENT_TASKS short tasks on the workers online now: they prefetch from then on."""
    run_id = nagare.trigger(dag_id)
    assert nagare.wait_run(run_id, timeout=20)["status"] == "success"


def _short_tasks(count: int, command: str = "true") -> str:
    return "".join(f"- id: s{i:02d}\n  pool: gpu\n  command: '{command}'\n" for i in range(count))


def _the_one_started(starts: Path) -> str | None:
    """The task of the pair whose process started, once exactly one has."""
    started = [t for t in ("a", "b") if (starts / t).exists()]
    return started[0] if len(started) == 1 else None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def start_master(
    nagare_factory: Callable[..., Nagare],
) -> Callable[[dict[str, str]], Nagare]:
    def start(dags: dict[str, str]) -> Nagare:
        warm = gpu_dag("warm", _short_tasks(RECENT_TASKS))
        return nagare_factory(
            dags={"warm.yaml": warm, **dags},
            worker_pools=GPU_ONLY,
            lease_timeout_seconds=LEASE,
        )

    return start


@dataclass
class Pair:
    """Two tasks `a` and `b` handed to w1 (one slot, prefetch 1): one runs, one waits."""

    nagare: Nagare
    w1: Worker
    run_id: str
    starts: Path  # a file per task, a line per start of its process

    def running(self) -> tuple[str, str]:
        """(the task in the slot, the one waiting), once exactly one has started."""
        started = wait_for(lambda: _the_one_started(self.starts), 5, message="a task to start")
        return started, "b" if started == "a" else "a"


@pytest.fixture
def pair_on_one_slot(
    start_master: Callable[[dict[str, str]], Nagare],
    workers: Callable[..., Worker],  # noqa: F811
    tmp_path: Path,
) -> Callable[..., Pair]:
    def start(seconds: float, env: dict[str, str] | None = None) -> Pair:
        starts = tmp_path / "starts"
        starts.mkdir()
        command = f"echo $$ >> {starts}/$NAGARE_TASK_ID; sleep {seconds}"
        pair = gpu_dag(
            "pair",
            f"- id: a\n  pool: gpu\n  retries: 0\n  command: '{command}'\n"
            f"- id: b\n  pool: gpu\n  retries: 0\n  command: '{command}'\n",
        )
        nagare = start_master({"pair.yaml": pair})
        w1 = workers(nagare.url, "w1", max_tasks=1, env={"NAGARE_PREFETCH": "1", **(env or {})})
        wait_online(nagare, w1)
        _warm_up(nagare)
        run_id = nagare.trigger("pair")
        for task_id in ("a", "b"):  # one runs in w1's slot, the other waits on w1 for it
            assert wait_task(nagare, run_id, task_id, "running", timeout=10)["worker"] == "w1"
        return Pair(nagare, w1, run_id, starts)

    return start


def test_a_worker_with_one_slot_takes_the_next_task_while_one_runs_and_never_runs_two(
    start_master: Callable[[dict[str, str]], Nagare],
    workers: Callable[..., Worker],  # noqa: F811
    tmp_path: Path,
) -> None:
    lock = tmp_path / "slot"
    # two tasks at once in the worker's one slot would find the folder taken and fail
    command = f"mkdir {lock} || exit 9; sleep 0.03; rmdir {lock}"
    nagare = start_master({"many.yaml": gpu_dag("many", _short_tasks(24, command))})
    w1 = workers(nagare.url, "w1", max_tasks=1, env={"NAGARE_PREFETCH": "2"})
    wait_online(nagare, w1)
    _warm_up(nagare)
    run_id = nagare.trigger("many")
    assert nagare.wait_run(run_id, timeout=30)["status"] == "success"
    tasks = sorted(nagare.get(f"/api/runs/{run_id}/tasks"), key=lambda t: t["completed_at"])
    assert {t["worker"] for t in tasks} == {"w1"}
    assert all(t["attempt"] == 1 for t in tasks), "a prefetched task cost an attempt"
    # without prefetch a task is handed out only after the previous one's result arrived;
    # prefetched, it is handed out while the previous one still runs
    ahead = [
        later["task_id"]
        for earlier, later in itertools.pairwise(tasks)
        if _epoch(later["started_at"]) < _epoch(earlier["completed_at"])
    ]
    assert len(ahead) >= 5, ahead


def test_a_prefetched_task_behind_a_long_one_goes_back_to_the_queue_for_another_worker(
    pair_on_one_slot: Callable[..., Pair],
    workers: Callable[..., Worker],  # noqa: F811
) -> None:
    # both run 3 s: the one that waits for w1's slot would wait that long
    pair = pair_on_one_slot(3)
    nagare, run_id, starts = pair.nagare, pair.run_id, pair.starts
    handed_back_at = time.monotonic()
    w2 = workers(nagare.url, "w2", max_tasks=1)
    assert nagare.wait_run(run_id, timeout=20)["status"] == "success"
    history = {task_id: attempts(nagare, run_id, task_id) for task_id in ("a", "b")}
    moved = [t for t, h in history.items() if len(h) == 2]
    assert len(moved) == 1, history
    stayed = "b" if moved == ["a"] else "a"
    first, second = history[moved[0]]
    assert first["worker"] == "w1" and second["worker"] == "w2", history
    assert "handed back unstarted" in first["message"], first
    assert "without spending a retry" in first["message"], first
    assert second["status"] == "success"
    assert [a["worker"] for a in history[stayed]] == ["w1"], history
    # each process started exactly once: the waiting one never started on w1
    for task_id in ("a", "b"):
        assert len((starts / task_id).read_text().split()) == 1, task_id
    # it went to w2 while w1's slot was still taken, not after w1's long task
    moved_task = nagare.task(run_id, moved[0])
    stayed_task = nagare.task(run_id, stayed)
    assert _epoch(moved_task["started_at"]) < _epoch(stayed_task["completed_at"])
    assert time.monotonic() - handed_back_at < 15
    assert w2.proc.poll() is None


def test_killing_a_prefetched_task_ends_it_at_once_without_starting_it(
    pair_on_one_slot: Callable[..., Pair],
) -> None:
    pair = pair_on_one_slot(5)
    nagare, run_id, starts = pair.nagare, pair.run_id, pair.starts
    running, waiting = pair.running()
    killed_at = time.monotonic()
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/{waiting}/kill").status == 200
    task = wait_task(nagare, run_id, waiting, "cancelled", timeout=5)
    assert time.monotonic() - killed_at < 3, "the waiting task waited for the slot to end"
    assert task["attempt"] == 1
    assert not (starts / waiting).exists(), "the killed task started"
    assert nagare.task(run_id, running)["status"] == "running"
    assert nagare.call("POST", f"/api/runs/{run_id}/kill").status == 200
    nagare.wait_run(run_id, timeout=10)


def test_a_stopping_worker_hands_its_prefetched_task_back_at_once(
    pair_on_one_slot: Callable[..., Pair],
    workers: Callable[..., Worker],  # noqa: F811
) -> None:
    # long enough that the stop reaches the worker while the slot is taken
    pair = pair_on_one_slot(2, env={"NAGARE_SHUTDOWN_GRACE_SECONDS": "5"})
    nagare, run_id, starts, w1 = pair.nagare, pair.run_id, pair.starts, pair.w1
    pair.running()
    w1.signal(signal.SIGTERM)
    assert w1.wait_exit(8) == 0, w1.text()
    tasks = {t["task_id"]: t for t in nagare.get(f"/api/runs/{run_id}/tasks")}
    finished = [t for t, task in tasks.items() if task["status"] == "success"]
    assert len(finished) == 1, tasks  # the one in the slot finished within the grace period
    back = "b" if finished == ["a"] else "a"
    assert tasks[back]["status"] == "queued", tasks[back]
    assert "handed back" in tasks[back]["message"]
    assert tasks[back]["max_attempts"] - tasks[back]["attempt"] == 1  # no retry spent
    assert not (starts / back).exists(), "the handed-back task started on the stopping worker"
    w2 = workers(nagare.url, "w2", max_tasks=1)
    assert nagare.wait_run(run_id, timeout=15)["status"] == "success"
    assert nagare.task(run_id, back)["worker"] == "w2"
    assert w2.proc.poll() is None


def test_a_worker_killed_with_a_prefetched_task_costs_it_no_retry(
    pair_on_one_slot: Callable[..., Pair],
    workers: Callable[..., Worker],  # noqa: F811
) -> None:
    pair = pair_on_one_slot(30)
    nagare, run_id, starts = pair.nagare, pair.run_id, pair.starts
    running, waiting = pair.running()
    pid = int((starts / running).read_text().split()[0])
    pair.w1.signal(signal.SIGKILL)
    try:
        # the lease of both runs out (2 s); the one that ran fails (retries: 0), the one that
        # never started is queued again without spending its only attempt
        lost = wait_task(nagare, run_id, running, "failed", timeout=15)
        assert "worker w1 lost" in lost["message"]
        task = wait_task(nagare, run_id, waiting, "queued", timeout=5)
        assert "without spending a retry" in task["message"], task
        assert task["max_attempts"] - task["attempt"] == 1
        assert not (starts / waiting).exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the task process the killed worker left behind
