"""A worker's finished result waits a moment for the tasks handed out with it or after it
(short tasks handed out together end together: one poll carries their results), never for
tasks handed out before it (a long task started earlier would hold every short result up)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from nagare.client import ApiClient
from nagare.cluster import remote
from nagare.cluster.protocol import WorkerHello
from nagare.cluster.remote import RemoteWorker, _Task
from nagare.executors import Executor
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, Outcome

LINGER = 5.0  # long enough that a wait shows, never reached by a test that passes


def _assignment(task_instance_id: str) -> Assignment:
    return Assignment(task_instance_id, "r", "d", task_instance_id, 1, "true", {})


def _no_executor(assignment: Assignment) -> Executor:
    raise AssertionError("no task is started in these tests")


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[RemoteWorker]:
    monkeypatch.setattr(remote, "RESULT_LINGER", LINGER)
    reactor = Reactor()
    hello = WorkerHello("w1", "host", ("gpu",), 4)
    # a master nobody listens on: these tests never send anything
    yield RemoteWorker(ApiClient("http://127.0.0.1:9"), hello, reactor, _no_executor, base_env={})
    reactor.close()


def _tasks(worker: RemoteWorker, *ids: str) -> list[_Task]:
    return [worker._tasks[i] for i in ids]


def _linger_seconds(worker: RemoteWorker) -> float:
    start = time.monotonic()
    with worker._lock:
        worker._linger()
    return time.monotonic() - start


def test_a_result_waits_for_the_tasks_handed_out_with_it(worker: RemoteWorker) -> None:
    worker._start_all([_assignment("a"), _assignment("b")], hand_back=False)
    a, b = _tasks(worker, "a", "b")
    worker._report(a, Outcome(exit_code=0))
    later = threading.Timer(0.2, lambda: worker._report(b, Outcome(exit_code=0)))
    later.start()
    waited = _linger_seconds(worker)
    later.join()
    assert 0.1 < waited < LINGER / 2  # until b ended, not the whole linger
    assert b.done and [r.task_instance_id for r in worker._results] == ["a", "b"]


def test_a_straggler_waits_for_the_tasks_handed_out_after_it(worker: RemoteWorker) -> None:
    worker._start_all([_assignment("straggler")], hand_back=False)
    worker._start_all([_assignment("next")], hand_back=False)
    straggler, after = _tasks(worker, "straggler", "next")
    worker._report(straggler, Outcome(exit_code=0))
    later = threading.Timer(0.2, lambda: worker._report(after, Outcome(exit_code=0)))
    later.start()
    waited = _linger_seconds(worker)
    later.join()
    assert 0.1 < waited < LINGER / 2  # the two results leave in one poll
    assert after.done


def test_a_result_does_not_wait_for_a_task_handed_out_before(worker: RemoteWorker) -> None:
    worker._start_all([_assignment("long")], hand_back=False)
    worker._start_all([_assignment("short")], hand_back=False)
    long, short = _tasks(worker, "long", "short")
    assert long.answer != short.answer
    worker._report(short, Outcome(exit_code=0))
    assert _linger_seconds(worker) < LINGER / 2  # at once: `long` may run for hours
    assert not long.done
