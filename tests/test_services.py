"""The stateful services built directly and driven by the time passed in: the scheduler's
`tick(now)`, the run service with its clock, the dispatcher's `turn(now)`. Their rules (cron
slots, misfire grace, catch-up, pause and activate, retries, kills, manual retries, pools of
size 0, a kill before the start) are checked in milliseconds, with no thread and no sleep.
Real parts: a real SQLite file, a real DAG folder, real task processes where one runs."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

from nagare.dag_folder import DagFolder
from nagare.engine.attempt_end import attempt_finish
from nagare.executors.local import LocalExecutor
from nagare.executors.reactor import Reactor
from nagare.executors.spawn import kill_orphan_group
from nagare.logs import LogFiles
from nagare.models import Outcome, RunStatus, TaskStatus
from nagare.pools import WorkerPools
from nagare.runs import RunService
from nagare.scheduler import Scheduler
from nagare.store import Store

T0 = 1_800_000_000_000  # a whole minute, in epoch ms
SECOND = 1000
MINUTE = 60 * SECOND


class Clock:
    """Time as the test sets it."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class World:
    """A store, a DAG folder, the scheduler and the run service, all on one fake clock."""

    def __init__(self, root: Path, dags: dict[str, str], **settings: Any) -> None:
        (root / "dags").mkdir(parents=True, exist_ok=True)
        for name, text in dags.items():
            (root / "dags" / name).write_text(textwrap.dedent(text))
        self.config = make_config(root, **settings)
        self.clock = Clock(T0)
        self.store = Store(str(root / "nagare.db"))
        self.folder = DagFolder(str(root / "dags"))
        self.folder.scan()
        self.logs = LogFiles(str(root / "logs"))
        self.queued: list[dict[str, int]] = []
        self.killed: list[str] = []
        self.scheduler = Scheduler(
            self.store,
            self.folder,
            self.logs,
            self.config,
            on_queued=self.queued.append,
            clock=self.clock,
        )
        self.runs = RunService(
            self.store,
            self.folder,
            self.config.max_catchup_runs,
            wake=self.scheduler.wake,
            kill_local=self._kill,
            clock=self.clock,
        )

    def _kill(self, task_instance_id: str) -> bool:
        self.killed.append(task_instance_id)
        return True

    def tick(self, at: int) -> float:
        self.clock.now = at
        return self.scheduler.tick(at)

    def slots(self, dag_id: str) -> list[tuple[int, str]]:
        runs, _ = self.store.runs.find(_filter(dag_id), 1, 500)
        return sorted((r.execution_date, str(r.trigger)) for r in runs)

    def statuses(self, run_id: str) -> dict[str, TaskStatus]:
        return {t.task_id: t.status for t in self.store.tasks.of_run(run_id)}


def _filter(dag_id: str) -> Any:
    from nagare.store import RunFilter

    return RunFilter(dag_id=dag_id)


@pytest.fixture
def world(tmp_path: Path) -> Callable[..., World]:
    made: list[World] = []

    def make(dags: dict[str, str], **settings: Any) -> World:
        made.append(World(tmp_path, dags, **settings))
        return made[-1]

    yield make  # type: ignore[misc]
    for w in made:
        w.store.close()


MINUTELY = """
id: tick
schedule: "* * * * *"
{extra}
tasks:
  - id: t
    command: "true"
"""


# ---------------------------------------------------------------- cron


def test_a_slot_fires_once_at_its_time_with_a_deterministic_id(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"tick.yaml": MINUTELY.format(extra="")})
    # first sight; the next pass is the safety sweep, 5 s away (the slot is 50 s away)
    assert w.tick(T0 + 10 * SECOND) == pytest.approx(5.0)
    assert w.slots("tick") == []  # nothing before the DAG was seen runs
    w.tick(T0 + MINUTE + 200)
    w.tick(T0 + MINUTE + 900)  # the same slot again: never a second run
    assert w.slots("tick") == [(T0 + MINUTE, "scheduled")]
    run = w.store.runs.get(f"tick__scheduled__{_stamp(T0 + MINUTE)}")
    assert run is not None and run.execution_date == T0 + MINUTE


def test_without_catchup_a_late_slot_runs_only_within_the_misfire_grace(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"tick.yaml": MINUTELY.format(extra="")}, misfire_grace_seconds=30)
    w.tick(T0)
    w.tick(T0 + MINUTE + 20 * SECOND)  # 20 s late: within the grace
    w.tick(T0 + 5 * MINUTE)  # the slots of minutes 2-4 were missed: skipped, 5 is on time
    assert w.slots("tick") == [(T0 + MINUTE, "scheduled"), (T0 + 5 * MINUTE, "scheduled")]
    w.tick(T0 + 6 * MINUTE + 31 * SECOND)  # found 31 s late: skipped
    assert len(w.slots("tick")) == 2


def test_catchup_runs_the_missed_slots_up_to_the_cap(world) -> None:  # type: ignore[no-untyped-def]
    w = world(
        {"tick.yaml": MINUTELY.format(extra="catchup: true")},
        max_catchup_runs=3,
        misfire_grace_seconds=30,
    )
    w.tick(T0)
    w.tick(T0 + 10 * MINUTE)  # ten slots missed: the newest three run, the last on time
    assert w.slots("tick") == [
        (T0 + 8 * MINUTE, "catchup"),
        (T0 + 9 * MINUTE, "catchup"),
        (T0 + 10 * MINUTE, "scheduled"),
    ]


def test_pause_stops_scheduling_and_activate_skips_the_slots_paused(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"tick.yaml": MINUTELY.format(extra="catchup: true")})
    w.tick(T0)
    w.clock.now = T0 + 30 * SECOND
    w.runs.set_paused("tick", True)
    for minute in range(1, 5):
        w.tick(T0 + minute * MINUTE)
    assert w.slots("tick") == []
    w.clock.now = T0 + 4 * MINUTE + 30 * SECOND
    w.runs.set_paused("tick", False)  # the watermark moves: nothing is caught up
    w.tick(T0 + 4 * MINUTE + 31 * SECOND)
    assert w.slots("tick") == []
    w.tick(T0 + 5 * MINUTE)
    assert w.slots("tick") == [(T0 + 5 * MINUTE, "scheduled")]


# ---------------------------------------------------------------- retries


RETRIED = """
id: flaky
tasks:
  - id: t
    command: "false"
    retries: 1
    retry_delay_seconds: 30
  - id: after
    command: "true"
    depends_on: [t]
"""


def test_a_failed_attempt_waits_for_its_retry_time_then_is_queued(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"flaky.yaml": RETRIED})
    run = w.runs.trigger("flaky")
    (claim,) = w.store.tasks.finish_and_claim([], {"default": 1}, "local", T0)
    failed = attempt_finish(claim, Outcome(exit_code=1), T0 + SECOND)
    assert failed.status is TaskStatus.UP_FOR_RETRY and failed.ready_at == T0 + 31 * SECOND
    w.store.tasks.finish_and_claim([failed], {}, "local", T0 + SECOND)
    w.scheduler.settle_finished([(run.run_id, claim.task.id, failed.retry_at)])
    w.tick(T0 + 2 * SECOND)
    assert w.statuses(run.run_id)["t"] is TaskStatus.UP_FOR_RETRY
    w.scheduler._last_sweep = T0 + 26 * SECOND  # (the safety sweep would come first)
    assert w.tick(T0 + 27 * SECOND) == pytest.approx(4.0)  # it wakes up for the retry
    w.queued.clear()
    w.tick(T0 + 31 * SECOND)
    assert w.statuses(run.run_id) == {"t": TaskStatus.QUEUED, "after": TaskStatus.PENDING}
    assert {"default": 1} in w.queued  # its pool is told at once


# ---------------------------------------------------------------- the run service


CHAIN = """
id: chain
tasks:
  - id: a
    command: "true"
  - id: b
    command: "true"
    depends_on: [a]
  - id: c
    command: "true"
    depends_on: [b]
"""


def test_a_kill_cancels_every_active_task_and_stops_the_running_one(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"chain.yaml": CHAIN})
    run = w.runs.trigger("chain")
    (claim,) = w.store.tasks.finish_and_claim([], {"default": 1}, "local", T0)
    killed = w.runs.kill_run(run.run_id)
    assert w.killed == [claim.task.id]  # the running one is asked to stop
    assert set(w.statuses(run.run_id).values()) == {TaskStatus.CANCELLED}
    assert killed.status is RunStatus.CANCELLED  # nothing is active any more
    late = attempt_finish(claim, Outcome(exit_code=0), T0 + SECOND)  # it ended meanwhile
    w.store.tasks.finish_and_claim([late], {}, "local", T0 + SECOND)
    assert w.statuses(run.run_id)["a"] is TaskStatus.CANCELLED  # the kill came first
    (attempt,) = w.store.tasks.attempts(claim.task.id)
    assert attempt.status is TaskStatus.CANCELLED


def test_settling_uses_the_final_states_a_close_returned_and_reads_a_retrys(world) -> None:  # type: ignore[no-untyped-def]
    """The dispatcher hands the states its close returned to the scheduler: a final one is
    not read again; one that may move on meanwhile (up for retry) is."""
    w = world({"chain.yaml": CHAIN, "flaky.yaml": RETRIED})
    run = w.runs.trigger("chain")
    w.tick(T0)  # the run's view is cached
    reads: list[list[str]] = []
    states_of = w.store.tasks.states_of

    def reading(ids: list[str]) -> Any:
        if ids:  # (none: no statement)
            reads.append(list(ids))
        return states_of(ids)

    w.store.tasks.states_of = reading  # type: ignore[method-assign]
    (claim,) = w.store.tasks.finish_and_claim([], {"default": 1}, "local", T0)
    states: dict[str, Any] = {}
    done = attempt_finish(claim, Outcome(exit_code=0), T0 + SECOND)
    w.store.tasks.finish_and_claim([done], {}, "local", T0 + SECOND, ended_states=states)
    assert set(states) == {claim.task.id}
    w.scheduler.settle_finished([(run.run_id, claim.task.id, None)], states)
    assert w.statuses(run.run_id)["b"] is TaskStatus.QUEUED
    assert reads == []
    flaky = w.runs.trigger("flaky")
    w.tick(T0 + 2 * SECOND)
    claims = w.store.tasks.finish_and_claim([], {"default": 2}, "local", T0 + 2 * SECOND)
    (claim,) = [c for c in claims if c.run.run_id == flaky.run_id]  # (and chain's b)
    failed = attempt_finish(claim, Outcome(exit_code=1), T0 + 3 * SECOND)
    states = {}
    w.store.tasks.finish_and_claim([failed], {}, "local", T0 + 3 * SECOND, ended_states=states)
    assert states[claim.task.id].status is TaskStatus.UP_FOR_RETRY
    w.scheduler.settle_finished([(flaky.run_id, claim.task.id, failed.retry_at)], states)
    assert reads == [[claim.task.id]]
    assert w.statuses(flaky.run_id)["t"] is TaskStatus.UP_FOR_RETRY


def test_a_manual_retry_reopens_the_task_its_dependants_and_the_run(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"chain.yaml": CHAIN})
    run = w.runs.trigger("chain")
    (claim,) = w.store.tasks.finish_and_claim([], {"default": 1}, "local", T0)
    failed = attempt_finish(claim, Outcome(exit_code=2), T0 + SECOND)
    w.store.tasks.finish_and_claim([failed], {}, "local", T0 + SECOND)
    w.scheduler.settle_finished([(run.run_id, claim.task.id, None)])
    assert w.store.runs.get(run.run_id).status is RunStatus.FAILED  # type: ignore[union-attr]
    w.clock.now = T0 + MINUTE
    w.runs.retry_task(run.run_id, "a")
    assert w.statuses(run.run_id) == {
        "a": TaskStatus.QUEUED,
        "b": TaskStatus.PENDING,
        "c": TaskStatus.PENDING,
    }
    reopened = w.store.runs.get(run.run_id)
    assert reopened is not None and reopened.status is RunStatus.RUNNING
    assert w.store.tasks.get(run.run_id, "a").queued_at == T0 + MINUTE  # type: ignore[union-attr]


# ---------------------------------------------------------------- the dispatcher


def _pools(w: World, sizes: dict[str, int]) -> tuple[WorkerPools, list[list[Any]]]:
    reactor = Reactor()
    local = LocalExecutor(reactor)
    settled: list[list[Any]] = []
    pools = WorkerPools(
        w.store,
        w.logs,
        sizes,
        reactor,
        lambda definition: local,
        on_finished=lambda finished, states: settled.append(finished),
        kill_leftover=kill_orphan_group,
        clock=w.clock,
    )
    return pools, settled


GPU = """
id: gpu
tasks:
  - id: train
    pool: gpu
    command: "true"
  - id: prep
    command: "true"
"""


def test_a_pool_of_size_zero_never_claims_its_tasks(world) -> None:  # type: ignore[no-untyped-def]
    w = world({"gpu.yaml": GPU})
    run = w.runs.trigger("gpu")
    pools, settled = _pools(w, {"default": 1, "gpu": 0})
    deadline = time.monotonic() + 10
    while not settled and time.monotonic() < deadline:
        pools.turn(time.monotonic(), max_wait=0.05)
    assert w.statuses(run.run_id) == {"train": TaskStatus.QUEUED, "prep": TaskStatus.SUCCESS}
    for _ in range(3):  # it has a free slot and is told of the gpu task: still nothing
        pools.notify({"gpu": 1})
        pools.turn(time.monotonic(), max_wait=0.05)
    assert w.statuses(run.run_id)["train"] is TaskStatus.QUEUED
    pools.reactor.close()


def test_a_kill_between_the_claim_and_the_start_ends_the_attempt_unstarted(
    world,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    w = world({"m.yaml": f"id: m\ntasks:\n  - id: t\n    command: touch {marker}\n"})
    run = w.runs.trigger("m")
    task = w.store.tasks.get(run.run_id, "t")
    assert task is not None
    pools, settled = _pools(w, {"default": 1})
    assert pools.cancel(task.id) is False  # not running here yet: remembered
    deadline = time.monotonic() + 10
    while not settled and time.monotonic() < deadline:
        pools.turn(time.monotonic(), max_wait=0.05)
    (attempt,) = w.store.tasks.attempts(task.id)
    assert attempt.status is TaskStatus.CANCELLED and attempt.error == "killed"
    assert w.store.tasks.by_id(task.id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    assert not marker.exists()  # the process never started
    pools.reactor.close()


def test_time_is_passed_in_nowhere_read(world) -> None:  # type: ignore[no-untyped-def]
    """A pass at a time far from the wall clock decides by that time alone."""
    w = world({"tick.yaml": MINUTELY.format(extra="")})
    w.tick(T0 - 365 * 24 * 60 * MINUTE)
    w.tick(T0 - 365 * 24 * 60 * MINUTE + MINUTE)
    assert [s for s, _ in w.slots("tick")] == [T0 - 365 * 24 * 60 * MINUTE + MINUTE]
    assert w.store.runs.get(f"tick__scheduled__{_stamp(T0 - 365 * 24 * 60 * MINUTE + MINUTE)}")


def _stamp(ms: int) -> str:
    from nagare.clock import slot_stamp

    return slot_stamp(ms)


# ---------------------------------------------------------------- a map source run elsewhere

MAPPED = """
id: mapped
tasks:
  - id: src
    command: "echo '[1, 2, 3]'"
  - id: each
    type: map
    map_over: src
    command: "echo {{item}}"
"""


def test_a_map_expands_from_the_stdout_its_source_left_on_another_master(world) -> None:  # type: ignore[no-untyped-def]
    """Several masters: the source ran on master A (its stdout captured in A's files, its log
    lines shipped to the database); B's scheduler expands the map from the shared log once
    A marked it complete, and never fails it for want of a local file."""
    from nagare.log_shipping import LogShipper, SharedLogs
    from nagare.scheduler import MAP_SOURCE_WAIT_MS, shared_stdout_ready

    w = world({"mapped.yaml": MAPPED})  # master B (its LogFiles hold no file of the source)
    w.logs.shared = SharedLogs(w.store.log_chunks)
    elsewhere = LogFiles(str(w.config.logs_dir) + "-a")  # master A's
    shipper = LogShipper(w.store.log_chunks)
    elsewhere.shared, elsewhere.watcher = w.logs.shared, shipper
    run = w.runs.trigger("mapped")
    (claim,) = w.store.tasks.finish_and_claim([], {"default": 1}, "local@a", T0)
    log = elsewhere.open_attempt(run.run_id, claim.task.id, 1, capture_stdout=True)
    log.on_line("stderr", "noise that is not stdout")
    log.on_line("stdout", "[1, 2,")
    log.on_line("stdout", " 3]")
    shipper.ship()  # the lines are stored, the log not yet marked complete
    done = attempt_finish(claim, Outcome(exit_code=0), T0 + SECOND)
    w.store.tasks.finish_and_claim([done], {}, "local@a", T0 + SECOND)
    w.scheduler.settle_finished([(run.run_id, claim.task.id, None)])
    w.tick(T0 + 2 * SECOND)
    assert w.statuses(run.run_id)["each"] is TaskStatus.PENDING  # A may still be shipping
    log.close()
    shipper.ship()  # A marks the log complete
    w.scheduler.settle_finished([(run.run_id, claim.task.id, None)])
    w.tick(T0 + 3 * SECOND)
    statuses = w.statuses(run.run_id)
    assert statuses["each"] is TaskStatus.RUNNING
    assert sorted(k for k in statuses if k.startswith("each[")) == ["each[0]", "each[1]", "each[2]"]
    # the rule: complete, or (a dead writer never marks it) long enough after the source ended
    assert shared_stdout_ready(True, None, T0)
    assert not shared_stdout_ready(False, T0, T0 + MAP_SOURCE_WAIT_MS - 1)
    assert shared_stdout_ready(False, T0, T0 + MAP_SOURCE_WAIT_MS)
    assert not shared_stdout_ready(False, None, T0 + MAP_SOURCE_WAIT_MS)
