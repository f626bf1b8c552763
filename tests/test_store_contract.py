"""The store contract: what every store backend must do, the same tests for each (conftest's
`store_factory` makes a fresh store of every backend in STORE_BACKENDS), driven through the
store's public parts alone (`dags`, `runs`, `tasks`, `workers`, `metrics`, `retention`,
`deliveries`): no SQL, no `store.db`. What is specific to one database (statements, indexes,
files, migrations) is tested next to it, e.g. tests/test_database.py.

Times are passed in as epoch milliseconds; nothing reads the clock or sleeps.
"""

from __future__ import annotations

import itertools
import textwrap
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from conftest import StoreFactory
from planting import Attempt, plant_run

from nagare.clock import parse_iso
from nagare.dagfile import parse_dag
from nagare.engine.new_run import map_children
from nagare.metrics import rank_offsets
from nagare.models import (
    TASK_TRANSITIONS,
    AttemptFinish,
    AttemptMetrics,
    Claim,
    DagDef,
    Run,
    RunStatus,
    TaskInstance,
    TaskState,
    TaskStatus,
    Trigger,
)
from nagare.store import (
    AuditEntry,
    AuditFilter,
    DagState,
    DatabaseError,
    DurationRow,
    MetricAgg,
    MetricPoint,
    OldRun,
    RunFilter,
    Stats,
    Store,
    WorkerRecord,
)
from nagare.store.metrics import consecutive_runs

NOW = parse_iso("2026-11-21T10:37:12.345Z")  # deliberately not on an hour
SLOT = parse_iso("2026-11-21T10:00:00Z")
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LEASE = 30_000

T = TypeVar("T")
S = TaskStatus  # short: the statuses are most of what these tests say

ONE = "id: d\ntasks:\n  - id: t\n    command: 'true'\n"
CHAIN = """
id: d
tasks:
  - id: a
    command: 'true'
  - id: b
    depends_on: [a]
    command: 'true'
"""
RICH = """
id: rich
description: every field a version keeps
schedule: "0 * * * *"
timezone: Europe/Paris
catchup: true
env: {REGION: eu}
tasks:
  - id: src
    command: echo '[1, 2]'
    env: {A: "1"}
    timeout_seconds: 2.5
    retries: 2
    retry_delay_seconds: 0.5
    pool: gpu
  - id: each
    type: map
    map_over: src
    command: echo {{item}}
  - id: box
    image: busybox
    workdir: /w
    volumes: ["/data:/data:ro"]
    resources: {cpus: "0.5", memory: 64m}
    command: ls
    depends_on: [each]
  - id: kick
    type: trigger_dag
    dag_id: other
    depends_on: [box]
"""
MAP = """
id: d
tasks:
  - id: src
    command: echo '["a", "b"]'
  - id: each
    type: map
    map_over: src
    retries: 1
    command: echo {{item}}
  - id: reduce
    depends_on: [each]
    command: 'true'
"""
# remote work: two tasks of the gpu pool, `t` with one retry
GPU = """
id: d
tasks:
  - id: t
    pool: gpu
    retries: 1
    command: 'true'
  - id: u
    pool: gpu
    command: 'true'
"""


# ---------------------------------------------------------------- helpers


def dag_of(text: str) -> DagDef:
    dag, errors = parse_dag(textwrap.dedent(text))
    assert dag is not None, errors
    return dag


def start(
    store: Store,
    dag: DagDef,
    now: int = 0,
    trigger: Trigger = Trigger.MANUAL,
    conf: dict[str, str] | None = None,
) -> Run:
    run = store.runs.start(dag, trigger, now, conf or {}, now)
    assert run is not None
    return run


def claim(store: Store, now: int, pool: str = "default", count: int = 1) -> list[Claim]:
    """What a local slot does: claim the pool's oldest queued tasks, finishing nothing."""
    return store.tasks.finish_and_claim([], {pool: count}, "local", now)


def ended(
    claimed: Claim,
    now: int,
    status: TaskStatus = S.SUCCESS,
    attempt_status: TaskStatus | None = None,
    **fields: Any,
) -> AttemptFinish:
    """How the claimed attempt ended: the task goes to `status`, the attempt row to
    `attempt_status` (the same by default)."""
    fields.setdefault("metrics", AttemptMetrics(exit_code=0 if status is S.SUCCESS else 1))
    return AttemptFinish(
        claimed.task.id, claimed.attempt, status, attempt_status or status, now=now, **fields
    )


def task(store: Store, task_instance_id: str) -> TaskInstance:
    found = store.tasks.by_id(task_instance_id)
    assert found is not None, task_instance_id
    return found


def task_of(store: Store, run: Run, task_id: str) -> TaskInstance:
    found = store.tasks.get(run.run_id, task_id)
    assert found is not None, task_id
    return found


def run_of(store: Store, run_id: str) -> Run:
    found = store.runs.get(run_id)
    assert found is not None, run_id
    return found


def statuses(store: Store, run: Run) -> dict[str, TaskStatus]:
    return {t.task_id: t.status for t in store.tasks.of_run(run.run_id)}


def in_threads(count: int, call: Callable[[], T]) -> list[T]:
    """`call()` in `count` threads started together; their results."""
    ready = threading.Barrier(count)
    results: list[T] = []
    lock = threading.Lock()

    def one() -> None:
        ready.wait()
        result = call()
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == count
    return results


def attempts(store: Store, task_instance_id: str) -> list[tuple[int, TaskStatus, int | None]]:
    """(number, status, completed_at) of each attempt of a task instance."""
    return [(a.attempt, a.status, a.completed_at) for a in store.tasks.attempts(task_instance_id)]


# ---------------------------------------------------------------- DAG versions


def test_the_same_definition_gets_the_same_digest_and_is_stored_once(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    digest = store.dags.save_version(dag_of(RICH), 10)
    assert store.dags.save_version(dag_of(RICH), 20) == digest  # equal, loaded anew
    changed = store.dags.save_version(dag_of(RICH.replace("every", "each")), 30)
    assert changed != digest
    # the digest is the definition's, not the database's: every store gives the same one
    assert store_factory().dags.save_version(dag_of(RICH), 40) == digest
    # runs of equal definitions follow one version
    first, second = start(store, dag_of(RICH), 50), start(store, dag_of(RICH), 60)
    assert first.dag_version == second.dag_version == digest
    reopened = store_factory.reopen(store)
    assert reopened.dags.version(digest) == dag_of(RICH)
    assert reopened.dags.version(changed).description == "each field a version keeps"


def test_a_version_read_back_equals_the_definition(store_factory: StoreFactory) -> None:
    store = store_factory()
    dag = dag_of(RICH)
    digest = store.dags.save_version(dag, 0)
    assert store.dags.version(digest) == dag
    assert store_factory.reopen(store).dags.version(digest) == dag  # from the database itself
    with pytest.raises(DatabaseError, match="missing"):
        store.dags.version("0" * 24)


# ---------------------------------------------------------------- scheduling state


def test_a_dag_seen_for_the_first_time_gets_its_watermark(store: Store) -> None:
    assert store.dags.states() == {}
    assert store.dags.ensure_state("d", 100) == DagState("d", False, 100, None)
    assert store.dags.ensure_state("d", 500) == DagState("d", False, 100, None)  # first sight
    assert store.dags.states() == {"d": DagState("d", False, 100, None)}


def test_pausing_keeps_the_watermark_and_activating_moves_it_and_clears_the_last_slot(
    store: Store,
) -> None:
    store.dags.ensure_state("d", 100)
    store.dags.set_last_slot("d", 150, 160)
    store.dags.set_paused("d", True, 200)
    assert store.dags.states()["d"] == DagState("d", True, 100, 150)
    store.dags.set_paused("d", True, 250)  # paused twice: nothing moves
    assert store.dags.states()["d"] == DagState("d", True, 100, 150)
    store.dags.set_paused("d", False, 300)  # the slots missed while paused are skipped
    assert store.dags.states()["d"] == DagState("d", False, 300, None)
    store.dags.set_paused("d", False, 400)  # activating an active DAG changes nothing
    assert store.dags.states()["d"] == DagState("d", False, 300, None)
    store.dags.set_paused("new", True, 500)  # paused at first sight
    assert store.dags.states()["new"] == DagState("new", True, 500, None)


def test_the_last_slot_never_goes_backwards(store: Store) -> None:
    store.dags.ensure_state("d", 0)
    for slot, expected in ((200, 200), (100, 200), (200, 200), (300, 300)):
        store.dags.set_last_slot("d", slot, slot + 1)
        assert store.dags.states()["d"].last_slot == expected, slot


# ---------------------------------------------------------------- runs


def test_a_slot_run_has_a_deterministic_id_and_is_created_once(store: Store) -> None:
    dag = dag_of(CHAIN)
    run = store.runs.start(dag, Trigger.SCHEDULED, SLOT, {}, SLOT + 5)
    assert run is not None and run.run_id == "d__scheduled__20261121T100000Z"
    for trigger in (Trigger.SCHEDULED, Trigger.CATCHUP, Trigger.BACKFILL):
        assert store.runs.start(dag, trigger, SLOT, {"K": "v"}, SLOT + 99) is None
    runs, total = store.runs.find(RunFilter(), 1, 10)
    assert total == 1 and runs[0] == replace(run, task_counts={"queued": 1, "pending": 1})
    assert len(store.tasks.of_run(run.run_id)) == 2  # no second set of tasks either
    later = store.runs.start(dag, Trigger.CATCHUP, SLOT + MINUTE, {}, SLOT + 99)
    assert later is not None and later.run_id == "d__scheduled__20261121T100100Z"
    # starts of one slot racing in threads: one of them creates the run
    made = in_threads(8, lambda: store.runs.start(dag, Trigger.SCHEDULED, SLOT + HOUR, {}, 0))
    assert len([r for r in made if r is not None]) == 1


def test_manual_runs_in_the_same_millisecond_get_distinct_ids(store: Store) -> None:
    dag = dag_of(ONE)
    ids = [start(store, dag, NOW).run_id for _ in range(3)]
    base = "d__manual__20261121T103712.345Z"
    assert ids == [base, f"{base}-2", f"{base}-3"]
    assert all(store.runs.exists(run_id) for run_id in ids)
    assert all(len(store.tasks.of_run(run_id)) == 1 for run_id in ids)
    assert start(store, dag, NOW, Trigger.WEBHOOK).run_id == "d__webhook__20261121T103712.345Z"
    racing = in_threads(8, lambda: start(store, dag, NOW + 1).run_id)
    assert len(set(racing)) == 8


def test_a_new_run_is_queued_with_its_tasks_queued_or_pending(store: Store) -> None:
    dag = dag_of(RICH)
    run = store.runs.start(dag, Trigger.BACKFILL, SLOT, {"K": "v"}, NOW)
    assert run is not None
    assert run_of(store, run.run_id) == Run(
        run_id=run.run_id,
        dag_id="rich",
        status=RunStatus.QUEUED,
        trigger=Trigger.BACKFILL,
        execution_date=SLOT,
        conf={"K": "v"},
        created_at=NOW,
        dag_version=store.dags.save_version(dag, NOW),
        task_counts={"queued": 1, "pending": 3},
    )
    tasks = store.tasks.of_run(run.run_id)
    # a command task without dependencies is queued at once; the others wait (a map or
    # trigger_dag task is the engine's own work, never queued)
    assert [(t.task_id, t.status, t.queued_at, t.pool, t.max_attempts) for t in tasks] == [
        ("src", S.QUEUED, NOW, "gpu", 3),
        ("each", S.PENDING, None, "default", 1),
        ("box", S.PENDING, None, "default", 1),
        ("kick", S.PENDING, None, "default", 1),
    ]
    first = tasks[0]
    assert (first.run_id, first.base_task_id, first.attempt, first.map_index) == (
        run.run_id,
        "src",
        0,
        None,
    )
    assert (first.command, first.worker, first.started_at, first.metrics) == (
        "echo '[1, 2]'",
        "",
        None,
        None,
    )
    states = [TaskState(t.id, run.run_id, t.task_id, t.status, t.pool, t.position) for t in tasks]
    assert store.tasks.run_states(run.run_id) == states
    assert sorted(store.tasks.states_of([t.id for t in tasks[1:]])) == sorted(states[1:])
    assert store.tasks.states_of([]) == []
    assert task_of(store, run, "box") == tasks[2] == task(store, tasks[2].id)
    assert store.tasks.get(run.run_id, "nope") is None and store.tasks.by_id("nope") is None


def test_runs_are_found_by_dag_status_and_trigger_newest_first_a_page_at_a_time(
    store: Store,
) -> None:
    a, b = dag_of(ONE), dag_of(ONE.replace("id: d", "id: b"))
    made = [start(store, a, 1_000 + n).run_id for n in range(5)]
    other = start(store, b, 1_500).run_id
    hook = start(store, a, 2_000, Trigger.WEBHOOK).run_id
    assert store.runs.finish(made[1], RunStatus.FAILED, 3_000) is RunStatus.FAILED

    def found(filt: RunFilter, page: int = 1, limit: int = 10) -> tuple[list[str], int]:
        runs, total = store.runs.find(filt, page, limit)
        return [r.run_id for r in runs], total

    newest_first = [hook, *reversed(made)]
    assert found(RunFilter(dag_id="d"), 1, 4) == (newest_first[:4], 6)
    assert found(RunFilter(dag_id="d"), 2, 4) == (newest_first[4:], 6)
    assert found(RunFilter(dag_id="d"), 3, 4) == ([], 6)
    assert found(RunFilter(status="failed")) == ([made[1]], 1)
    assert found(RunFilter(trigger="webhook")) == ([hook], 1)
    both = RunFilter(dag_id="d", status="queued", trigger="manual")
    assert found(both) == ([made[4], made[3], made[2], made[0]], 4)
    assert found(RunFilter(dag_id="nope")) == ([], 0)
    assert found(RunFilter()) == ([hook, other, *reversed(made)], 7)
    runs, _ = store.runs.find(RunFilter(dag_id="b"), 1, 10)
    assert runs[0].task_counts == {"queued": 1}
    assert run_of(store, made[0]).task_counts == {"queued": 1}
    light = store.runs.get(made[0], counts=False)
    assert light is not None and light.task_counts == {}
    assert store.runs.get("nope") is None and not store.runs.exists("nope")
    last = store.runs.last_of(["d", "b", "nope"])
    assert {dag_id: r.run_id for dag_id, r in last.items()} == {"d": hook, "b": other}
    assert store.runs.active_ids() == [made[0], made[2], made[3], made[4], other, hook]
    assert store.runs.stats(3_000) == Stats(6, 1, 7, 7, 0)
    assert store.runs.stats(1_001 + DAY + 1).failed_runs_24h == 0  # created over a day ago


# ---------------------------------------------------------------- transitions


def test_a_transition_moves_only_tasks_in_the_given_statuses(store: Store) -> None:
    run = start(store, dag_of(CHAIN))
    a, b = (t.id for t in store.tasks.of_run(run.run_id))
    assert store.tasks.transition([a, b], [S.PENDING], S.QUEUED, 5) == [b]
    assert (task(store, b).status, task(store, b).queued_at) == (S.QUEUED, 5)
    assert store.tasks.transition([a, b], [S.PENDING], S.QUEUED, 6) == []  # none pending now
    assert task(store, b).queued_at == 5
    assert store.tasks.transition([a, "nope"], [S.QUEUED], S.CANCELLED, 7, "killed") == [a]
    killed = task(store, a)
    assert (killed.status, killed.completed_at, killed.message) == (S.CANCELLED, 7, "killed")
    assert store.tasks.transition([], [S.QUEUED], S.CANCELLED, 8) == []


def _task_in(store: Store, status: TaskStatus, now: int) -> str:
    """A new task instance (the dependant of CHAIN in a run created at `now`) brought from
    pending to `status`."""
    run = start(store, dag_of(CHAIN), now)
    instance = task_of(store, run, "b").id
    if status is S.SKIPPED:  # no transition leads there: only the engine's `complete`
        assert store.tasks.complete(instance, [S.PENDING], S.SKIPPED, 1, "skipped")
        return instance
    route = {S.PENDING: [], S.UP_FOR_RETRY: [S.RUNNING, S.UP_FOR_RETRY]}.get(status, [status])
    current = S.PENDING
    for step in route:
        assert store.tasks.transition([instance], [current], step, 1) == [instance]
        current = step
    return instance


def test_exactly_the_transitions_in_the_table_are_possible(store: Store) -> None:
    for number, (source, target) in enumerate(itertools.product(TaskStatus, TaskStatus)):
        instance = _task_in(store, source, number)
        allowed = target in TASK_TRANSITIONS[source]
        moved = store.tasks.transition([instance], [source], target, 9)
        assert moved == ([instance] if allowed else []), (source, target)
        assert task(store, instance).status is (target if allowed else source)
    # a refused pair among allowed ones does not stop the others
    queued, pending = _task_in(store, S.QUEUED, 100), _task_in(store, S.PENDING, 101)
    moved = store.tasks.transition([queued, pending], [S.QUEUED, S.PENDING], S.UPSTREAM_FAILED, 9)
    assert moved == [pending] and task(store, queued).status is S.QUEUED


def test_a_transition_returns_the_ids_that_moved_in_the_callers_order_once_each(
    store: Store,
) -> None:
    """Queueing a 1,200-wide fan-out (more ids than one statement of some databases takes):
    each row compared and set."""
    run = start(
        store,
        dag_of(
            "id: w\ntasks:\n  - id: s\n    command: 'true'\n"
            "  - id: t\n    with_items: [" + ", ".join(map(str, range(1200))) + "]\n"
            "    command: 'true'\n    depends_on: [s]\n"
        ),
    )
    ids = [t.id for t in store.tasks.of_run(run.run_id) if t.task_id != "s"]
    assert len(ids) == 1200
    taken = store.tasks.transition([ids[700]], [S.PENDING], S.CANCELLED, 5)
    assert taken == [ids[700]]
    wanted = [*reversed(ids), ids[3]]  # any order, a duplicate, one no longer pending
    moved = store.tasks.transition(wanted, [S.PENDING], S.QUEUED, 9)
    assert moved == [i for i in reversed(ids) if i != ids[700]]  # the caller's order, once each
    states = {t.id: t for t in store.tasks.of_run(run.run_id)}
    assert states[ids[700]].status is S.CANCELLED
    assert {states[i].status for i in moved} == {S.QUEUED}
    assert {states[i].queued_at for i in moved} == {9}


# ---------------------------------------------------------------- claims


def test_claims_take_the_oldest_queued_tasks_of_their_pool_first(store: Store) -> None:
    dag = dag_of(
        "id: d\ntasks:\n  - id: x\n    command: 'true'\n  - id: y\n    command: 'true'\n"
        "  - id: g\n    pool: gpu\n    command: 'true'\n"
    )
    late = start(store, dag, 200).run_id
    early = start(store, dag, 100).run_id  # created second, queued first

    def taken(claims: list[Claim]) -> list[tuple[str, str]]:
        return [(c.run.run_id, c.task.task_id) for c in claims]

    assert taken(claim(store, 300, count=3)) == [(early, "x"), (early, "y"), (late, "x")]
    assert claim(store, 301, count=0) == []
    assert taken(claim(store, 302, count=5)) == [(late, "y")]  # the count is a maximum
    assert claim(store, 303) == []
    gpu = store.tasks.finish_and_claim([], {"gpu": 5, "cpu": 1}, "local", 304)
    assert taken(gpu) == [(early, "g"), (late, "g")]


def test_a_claimed_task_is_running_its_next_attempt_and_its_run_has_started(
    store: Store,
) -> None:
    dag = dag_of(CHAIN)
    run = start(store, dag)
    (claimed,) = store.tasks.finish_and_claim([], {"default": 1}, "local", lambda: 50)
    assert (claimed.attempt, claimed.task.task_id, claimed.run.run_id) == (1, "a", run.run_id)
    assert claimed.dag == dag and claimed.definition == dag.task("a")
    for seen in (claimed.task, task(store, claimed.task.id)):
        assert (seen.status, seen.attempt, seen.worker, seen.started_at) == (
            S.RUNNING,
            1,
            "local",
            50,
        )
    (attempt,) = store.tasks.attempts(claimed.task.id)
    assert (attempt.attempt, attempt.status, attempt.worker, attempt.started_at) == (
        1,
        S.RUNNING,
        "local",
        50,
    )
    assert (attempt.completed_at, attempt.metrics) == (None, None)
    assert [a.task_instance_id for a in store.tasks.running_attempts("local")] == [claimed.task.id]
    assert store.tasks.running_attempts("w1") == []
    started = run_of(store, run.run_id)
    assert (started.status, started.started_at) == (RunStatus.RUNNING, 50)
    assert started.task_counts == {"running": 1, "pending": 1}
    assert store.tasks.pool_counts() == {"default": {"running": 1}}
    assert store.runs.stats(50) == Stats(1, 0, 1, 0, 1)
    assert store.metrics.active_run_counts() == {"queued": 0, "running": 1}


def test_threads_claiming_one_queue_claim_every_task_exactly_once(store: Store) -> None:
    start(
        store,
        dag_of(
            "id: d\ntasks:\n  - id: t\n    with_items: ["
            + ", ".join(str(i) for i in range(200))
            + "]\n    command: 'true'\n"
        ),
    )
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while claims := store.tasks.finish_and_claim([], {"default": 1}, "local", 1):
            (one,) = claims
            with lock:
                claimed.append(one.task.id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 200 and len(set(claimed)) == 200


# ---------------------------------------------------------------- ending attempts


def test_attempts_that_end_together_are_recorded_with_the_next_claims_at_once(
    store: Store,
) -> None:
    run = start(
        store,
        dag_of(
            "id: d\ntasks:\n"
            "  - id: t\n    with_items: [0, 1, 2, 3, 4, 5]\n    command: 'true'\n"
            "  - id: g\n    pool: gpu\n    command: 'true'\n"
        ),
    )
    first = store.tasks.finish_and_claim([], {"default": 3}, "local", 10)
    assert [c.task.task_id for c in first] == ["t_0", "t_1", "t_2"]  # oldest first
    killed = first[2].task.id
    assert store.tasks.transition([killed], [S.RUNNING], S.CANCELLED, 15)
    finishes = [
        ended(
            c,
            20,
            metrics=AttemptMetrics(duration_ms=100 * (i + 1), peak_memory_bytes=1000, exit_code=0),
        )
        for i, c in enumerate(first)
    ]
    second = store.tasks.finish_and_claim(finishes, {"default": 5, "gpu": 1}, "local", 30)
    assert sorted(c.task.task_id for c in second) == ["g", "t_3", "t_4", "t_5"]
    states = statuses(store, run)
    assert states["t_0"] is S.SUCCESS and states["t_1"] is S.SUCCESS
    assert states["t_2"] is S.CANCELLED  # the kill that came first wins
    assert attempts(store, killed) == [(1, S.CANCELLED, 20)]
    (hourly,) = store.metrics.aggregates(0)
    assert (hourly.attempts, hourly.success, hourly.cancelled) == (3, 2, 1)
    assert (hourly.duration_sum, hourly.duration_max) == (600, 300)
    counters = [
        (c.task_id, c.status, c.value) for c in store.metrics.counters() if c.name == "task_runs"
    ]
    assert sorted(counters) == [
        ("t_0", "success", 1),
        ("t_1", "success", 1),
        ("t_2", "cancelled", 1),
    ]
    histogram = store.metrics.duration_histogram()
    assert (sum(r.count for r in histogram), sum(r.sum_ms for r in histogram)) == (3, 600)


def test_a_kill_that_came_first_keeps_cancelled_and_the_attempt_closes_cancelled(
    store: Store,
) -> None:
    start(store, dag_of(ONE))
    (claimed,) = claim(store, 10)
    instance = claimed.task.id
    assert store.tasks.transition([instance], [S.RUNNING], S.CANCELLED, 15, "killed")
    late = ended(claimed, 20, metrics=AttemptMetrics(duration_ms=10, exit_code=0), output_tail="x")
    assert store.tasks.finish_attempt(late) is False
    killed = task(store, instance)
    assert (killed.status, killed.completed_at, killed.message) == (S.CANCELLED, 15, "killed")
    assert killed.output_tail == "x"  # the attempt's last lines, which the kill had not
    (attempt,) = store.tasks.attempts(instance)
    assert (attempt.status, attempt.completed_at) == (S.CANCELLED, 20)
    assert attempt.metrics is not None and attempt.metrics.duration_ms == 10
    assert store.tasks.finish_attempt(late) is False  # closed once
    assert attempts(store, instance) == [(1, S.CANCELLED, 20)]
    assert store.tasks.running_attempts("local") == []


def test_a_close_hands_over_the_planning_fields_of_the_tasks_it_moved(store: Store) -> None:
    """What the scheduler would read of an ended task next (`states_of`) comes with its
    close; a map's child (planning never sees one) and a task a kill moved first are not in
    it."""
    run = start(store, dag_of(MAP))
    (src,) = claim(store, 10)
    states: dict[str, TaskState] = {}
    failed = ended(src, 20, S.FAILED, allowed_failure=True)
    assert store.tasks.finish_and_claim([failed], {}, "local", 20, ended_states=states) == []
    assert states == {src.task.id: store.tasks.states_of([src.task.id])[0]}
    assert (states[src.task.id].status, states[src.task.id].allowed_failure) == (S.FAILED, True)
    parent = task_of(store, run, "each")
    children = map_children(parent, "echo {{item}}", 1, ["a", "b"], 30)
    assert store.tasks.expand_map(parent.id, children, 30)
    first, second = claim(store, 40, count=2)
    assert store.tasks.transition([second.task.id], [S.RUNNING], S.CANCELLED, 45)
    states = {}
    closes = [ended(first, 50), ended(second, 50)]
    store.tasks.finish_and_claim(closes, {}, "local", 50, ended_states=states)
    assert states == {}
    assert [t.status for t in store.tasks.children(run.run_id, "each")] == [
        S.SUCCESS,
        S.CANCELLED,
    ]


def test_an_attempt_closes_once_and_only_under_its_own_number(store: Store) -> None:
    start(store, dag_of(ONE))
    (claimed,) = claim(store, 10)
    instance = claimed.task.id
    assert store.tasks.finish_attempt(replace(ended(claimed, 15), attempt=2)) is False
    assert task(store, instance).status is S.RUNNING
    assert attempts(store, instance) == [(1, S.RUNNING, None)]
    assert store.tasks.finish_attempt(ended(claimed, 20, output_tail="done")) is True
    assert store.tasks.finish_attempt(ended(claimed, 30, S.FAILED)) is False  # reported twice
    done = task(store, instance)
    assert (done.status, done.completed_at, done.exit_code, done.output_tail) == (
        S.SUCCESS,
        20,
        0,
        "done",
    )
    assert attempts(store, instance) == [(1, S.SUCCESS, 20)]


def test_an_attempt_up_for_retry_waits_until_its_ready_at(store: Store) -> None:
    run = start(
        store,
        dag_of(
            "id: d\ntasks:\n  - id: a\n    retries: 2\n    command: 'true'\n"
            "  - id: b\n    retries: 1\n    command: 'true'\n"
        ),
    )
    first, second = claim(store, 10, count=2)
    retry = ended(first, 20, S.UP_FOR_RETRY, S.FAILED, ready_at=7_000, message="exit code 1")
    assert store.tasks.finish_and_claim([retry], {}, "local", 20) == []
    assert store.tasks.finish_attempt(ended(second, 25, S.UP_FOR_RETRY, S.FAILED, ready_at=5_000))
    waiting = task(store, first.task.id)
    assert (waiting.status, waiting.ready_at, waiting.completed_at) == (S.UP_FOR_RETRY, 7_000, None)
    assert (waiting.exit_code, waiting.message) == (1, "exit code 1")
    assert attempts(store, first.task.id) == [(1, S.FAILED, 20)]
    assert store.tasks.next_retry_at() == 5_000
    assert store.tasks.due_retries(4_999) == []
    assert [t.task_id for t in store.tasks.due_retries(5_000)] == ["b"]
    assert sorted(t.task_id for t in store.tasks.due_retries(7_000)) == ["a", "b"]
    assert claim(store, 7_000) == []  # up for retry is not queued
    ids = [first.task.id, second.task.id]
    assert store.tasks.transition(ids, [S.UP_FOR_RETRY], S.QUEUED, 7_001) == ids
    queued = task(store, first.task.id)
    assert (queued.status, queued.queued_at, queued.ready_at) == (S.QUEUED, 7_001, None)
    assert store.tasks.next_retry_at() is None and store.tasks.due_retries(10**12) == []
    again = claim(store, 7_002, count=2)
    assert [(c.task.task_id, c.attempt) for c in again] == [("a", 2), ("b", 2)]
    assert attempts(store, first.task.id) == [(1, S.FAILED, 20), (2, S.RUNNING, None)]
    assert statuses(store, run) == {"a": S.RUNNING, "b": S.RUNNING}


def test_an_attempt_given_back_queues_the_task_again_without_spending_a_retry(
    store: Store,
) -> None:
    start(store, dag_of(ONE))
    (claimed,) = claim(store, 10)
    back = ended(claimed, 20, S.QUEUED, S.FAILED, message="interrupted", extra_attempts=1)
    assert store.tasks.finish_attempt(back) is True
    queued = task(store, claimed.task.id)
    assert (queued.status, queued.queued_at, queued.completed_at) == (S.QUEUED, 20, None)
    assert (queued.attempt, queued.max_attempts, queued.message) == (1, 2, "interrupted")
    (again,) = claim(store, 30)
    assert again.attempt == 2
    assert attempts(store, claimed.task.id) == [(1, S.FAILED, 20), (2, S.RUNNING, None)]


def test_claim_of_gives_a_task_with_its_run_and_the_dag_version_the_run_follows(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    followed = dag_of(ONE)
    run = start(store, followed)
    store.dags.save_version(dag_of(ONE.replace("'true'", "'false'")), 5)  # edited since
    instance = task_of(store, run, "t").id
    found = store.tasks.claim_of(instance)
    assert found is not None
    assert (found.task.id, found.run.run_id, found.attempt, found.dag) == (
        instance,
        run.run_id,
        0,
        followed,
    )
    claim(store, 10)
    reopened = store_factory.reopen(store).tasks.claim_of(instance)  # nothing cached
    assert reopened is not None and reopened.attempt == 1 and reopened.dag == followed
    assert reopened.definition is not None and reopened.definition.command == "true"
    again = store.tasks.claim_of(instance, attempt=3)
    assert again is not None and again.attempt == 3
    assert store.tasks.claim_of("nope") is None


# ---------------------------------------------------------------- the engine's own tasks


def test_engine_side_tasks_start_and_complete_by_compare_and_set(store: Store) -> None:
    run = start(store, dag_of(RICH))
    kick = task_of(store, run, "kick").id
    assert store.tasks.start_internal(kick, [S.PENDING], 10) is True
    assert store.tasks.start_internal(kick, [S.PENDING], 11) is False
    running = task(store, kick)
    assert (running.status, running.attempt, running.worker, running.started_at) == (
        S.RUNNING,
        1,
        "local",
        10,
    )
    started = run_of(store, run.run_id)
    assert (started.status, started.started_at) == (RunStatus.RUNNING, 10)
    assert store.tasks.complete(kick, [S.PENDING], S.SUCCESS, 20, "no") is False
    assert store.tasks.complete(kick, [S.RUNNING], S.SUCCESS, 20, "triggered r", "tail") is True
    assert store.tasks.complete(kick, [S.RUNNING], S.FAILED, 30, "late") is False
    done = task(store, kick)
    assert (done.status, done.started_at, done.completed_at) == (S.SUCCESS, 10, 20)
    assert (done.message, done.output_tail) == ("triggered r", "tail")
    assert store.tasks.attempts(kick) == []  # the engine's work has no attempt rows
    # a task that fails before it starts (a map over bad output) gets a start and a worker
    each = task_of(store, run, "each").id
    assert store.tasks.complete(each, [S.PENDING], S.FAILED, 40, "not a JSON array")
    failed = task(store, each)
    assert (failed.status, failed.started_at, failed.completed_at, failed.worker) == (
        S.FAILED,
        40,
        40,
        "local",
    )


def test_expanding_a_map_replaces_its_children_at_once(store: Store) -> None:
    run = start(store, dag_of(MAP))
    parent = task_of(store, run, "each")

    def children_of(items: list[Any], now: int) -> list[TaskInstance]:
        return map_children(parent, "echo {{item}}", 2, items, now)

    first = children_of(["a", 7, {"k": 1}], 10)
    assert store.tasks.expand_map(parent.id, first, 10) is True
    assert store.tasks.expand_map(parent.id, children_of(["z"], 11), 11) is False  # once
    expanded = task(store, parent.id)
    assert (expanded.status, expanded.attempt, expanded.started_at) == (S.RUNNING, 1, 10)
    started = run_of(store, run.run_id)
    assert (started.status, started.started_at) == (RunStatus.RUNNING, 10)
    kids = store.tasks.children(run.run_id, "each")
    assert [(k.id, k.task_id, k.map_index, k.item, k.command) for k in kids] == [
        (c.id, c.task_id, c.map_index, c.item, c.command) for c in first
    ]
    assert [k.task_id for k in kids] == ["each[0]", "each[1]", "each[2]"]
    assert {(k.status, k.queued_at, k.base_task_id, k.max_attempts) for k in kids} == {
        (S.QUEUED, 10, "each", 2)
    }
    assert store.tasks.child_counts(run.run_id) == {"each": {S.QUEUED: 3}}
    assert [s.task_id for s in store.tasks.run_states(run.run_id)] == ["src", "each", "reduce"]
    assert store.tasks.states_of([kids[0].id]) == []  # planning never sees children
    assert [t.task_id for t in store.tasks.of_run(run.run_id, include_children=False)] == [
        "src",
        "each",
        "reduce",
    ]
    assert [t.task_id for t in store.tasks.of_run(run.run_id)] == [
        "src",
        "each",
        "each[0]",
        "each[1]",
        "each[2]",
        "reduce",
    ]
    assert task_of(store, run, "each[1]").item == "7"
    # expanded again (after a retry of the parent): the old children go, the new ones come
    assert store.tasks.complete(parent.id, [S.RUNNING], S.FAILED, 20, "1 of 3 failed")
    assert store.tasks.transition([parent.id], [S.FAILED], S.PENDING, 30) == [parent.id]
    second = children_of(["x", "y"], 40)
    assert store.tasks.expand_map(parent.id, second, 40) is True
    assert [k.id for k in store.tasks.children(run.run_id, "each")] == [c.id for c in second]
    assert all(store.tasks.by_id(k.id) is None for k in kids)
    assert task(store, parent.id).attempt == 2
    # all or nothing: an expansion that cannot be stored leaves the previous one whole
    assert store.tasks.complete(parent.id, [S.RUNNING], S.FAILED, 50, "again")
    assert store.tasks.transition([parent.id], [S.FAILED], S.PENDING, 60) == [parent.id]
    broken = children_of(["p", "q"], 70)
    broken[1].task_id = broken[0].task_id  # two children of one name
    with pytest.raises(Exception):  # noqa: B017 (each backend raises its own error)
        store.tasks.expand_map(parent.id, broken, 70)
    assert task(store, parent.id).status is S.PENDING
    assert [k.id for k in store.tasks.children(run.run_id, "each")] == [c.id for c in second]


def test_a_map_expanded_again_leaves_the_metrics_in_step(store: Store) -> None:
    """Re-expansion happens when a map task (or its source) is retried after its children
    all succeeded. Whatever becomes of the old children, every window must count the same
    attempts in its totals as in its list."""
    run = start(store, dag_of(MAP), NOW)
    parent = task_of(store, run, "each")
    children = map_children(parent, "echo {{item}}", 1, ["a", "b"], NOW + 10)
    assert store.tasks.expand_map(parent.id, children, NOW + 10)
    for claimed in claim(store, NOW + 20, count=3):
        assert store.tasks.finish_attempt(ended(claimed, NOW + 30))
    assert store.tasks.complete(parent.id, [S.RUNNING], S.SUCCESS, NOW + 40, "")
    assert store.tasks.transition([parent.id], [S.SUCCESS], S.PENDING, NOW + 50)
    again = map_children(parent, "echo {{item}}", 1, ["c"], NOW + 60)
    assert store.tasks.expand_map(parent.id, again, NOW + 60)
    for since in (0, NOW - HOUR, NOW - 1):
        listed = len(store.metrics.points(since, "", 100))
        assert sum(a.attempts for a in store.metrics.aggregates(since)) == listed, since


# ---------------------------------------------------------------- manual retry


def test_a_manual_retry_queues_the_task_and_reopens_its_dependants_and_the_run(
    store: Store,
) -> None:
    run = start(store, dag_of(CHAIN))
    (claimed,) = claim(store, 10)
    a, b = claimed.task.id, task_of(store, run, "b").id
    assert store.tasks.finish_attempt(ended(claimed, 20, S.FAILED, message="exit code 1"))
    assert store.tasks.transition([b], [S.PENDING], S.UPSTREAM_FAILED, 21, "upstream") == [b]
    assert store.runs.finish(run.run_id, RunStatus.FAILED, 22) is RunStatus.FAILED
    assert store.tasks.reopen(run.run_id, [(a, 2)], [], [b], 30) == 1
    queued = task(store, a)
    assert (queued.status, queued.queued_at, queued.completed_at, queued.message) == (
        S.QUEUED,
        30,
        None,
        "",
    )
    assert (queued.attempt, queued.max_attempts) == (1, 4)  # two more after the next one
    waiting = task(store, b)
    assert (waiting.status, waiting.completed_at, waiting.message) == (S.PENDING, None, "")
    reopened = run_of(store, run.run_id)
    assert (reopened.status, reopened.completed_at, reopened.killed) == (
        RunStatus.RUNNING,
        None,
        False,
    )
    assert store.tasks.reopen(run.run_id, [(a, 0)], [], [], 35) == 0  # not finished: stays
    (again,) = claim(store, 40)
    assert (again.task.id, again.attempt) == (a, 2)


def test_a_retried_map_child_sets_its_parent_running_again(store: Store) -> None:
    run = start(store, dag_of(MAP))
    parent = task_of(store, run, "each")
    children = map_children(parent, "echo {{item}}", 1, ["a"], 10)
    assert store.tasks.expand_map(parent.id, children, 10)
    src, child = claim(store, 11, count=2)
    assert store.tasks.finish_attempt(ended(src, 12))
    assert store.tasks.finish_attempt(ended(child, 12, S.FAILED))
    assert store.tasks.complete(parent.id, [S.RUNNING], S.FAILED, 13, "1 of 1 failed")
    reduce = task_of(store, run, "reduce").id
    assert store.tasks.transition([reduce], [S.PENDING], S.UPSTREAM_FAILED, 13)
    assert store.tasks.reopen(run.run_id, [(child.task.id, 0)], [parent.id], [reduce], 20) == 1
    assert statuses(store, run) == {
        "src": S.SUCCESS,
        "each": S.RUNNING,
        "each[0]": S.QUEUED,
        "reduce": S.PENDING,
    }
    assert task(store, parent.id).completed_at is None


def test_a_retry_reopens_a_killed_run_and_closes_the_remote_attempt_left_open(
    store: Store,
) -> None:
    run = start(store, dag_of(GPU))
    held, _ = store.workers.claim("w1", ["gpu"], 2, now=10, lease_until=10 + LEASE)
    assert store.runs.mark_killed(run.run_id)
    ids = [t.id for t in store.tasks.of_run(run.run_id)]
    assert store.tasks.transition(ids, [S.RUNNING], S.CANCELLED, 15, "killed") == ids
    assert store.runs.finish(run.run_id, RunStatus.FAILED, 16) is RunStatus.CANCELLED
    assert store.workers.held_count("w1") == 2  # open until w1 reports
    assert store.tasks.reopen(run.run_id, [(held.task.id, 0)], [], [], 20) == 1
    assert attempts(store, held.task.id) == [(1, S.CANCELLED, 20)]
    assert store.workers.held_count("w1") == 1
    (answer,) = store.workers.renew("w1", [(held.task.id, 1)], 20 + LEASE)
    assert answer.lost and not answer.cancel  # no longer w1's
    assert store.workers.finish(ended(held, 25, S.CANCELLED), "w1", 25) is None  # moot now
    reopened = run_of(store, run.run_id)
    assert (reopened.status, reopened.killed) == (RunStatus.RUNNING, False)


# ---------------------------------------------------------------- finishing runs


def test_a_killed_run_ends_cancelled_whatever_status_is_passed(store: Store) -> None:
    """The scheduler may plan a run's end from a cached view taken before the kill."""
    run = start(store, dag_of(ONE))
    claim(store, 1)
    assert store.runs.mark_killed(run.run_id)
    assert store.runs.finish(run.run_id, RunStatus.FAILED, 5) is RunStatus.CANCELLED
    ended_run = run_of(store, run.run_id)
    assert (ended_run.status, ended_run.completed_at, ended_run.killed) == (
        RunStatus.CANCELLED,
        5,
        True,
    )
    assert store.runs.finish(run.run_id, RunStatus.SUCCESS, 6) is None
    assert not store.runs.mark_killed(run.run_id)  # finished: nothing to kill
    assert run_of(store, run.run_id).completed_at == 5


def test_a_run_finishes_once_and_is_counted_once_per_status(store: Store) -> None:
    dag = dag_of(ONE)
    ok, bad, cancelled, open_ = (start(store, dag, n).run_id for n in (1, 2, 3, 4))
    assert store.runs.finish(ok, RunStatus.SUCCESS, 10) is RunStatus.SUCCESS
    assert store.runs.finish(ok, RunStatus.FAILED, 11) is None
    assert store.runs.finish(bad, RunStatus.FAILED, 12) is RunStatus.FAILED
    assert store.runs.finish(cancelled, RunStatus.CANCELLED, 13) is RunStatus.CANCELLED
    done = run_of(store, ok)
    assert (done.status, done.started_at, done.completed_at) == (RunStatus.SUCCESS, 10, 10)
    assert store.runs.active_ids() == [open_]
    counted = [
        (c.dag_id, c.status, c.value) for c in store.metrics.counters() if c.name == "dag_runs"
    ]
    assert sorted(counted) == [("d", "cancelled", 1), ("d", "failed", 1), ("d", "success", 1)]
    assert store.metrics.active_run_counts() == {"queued": 1, "running": 0}
    assert store.metrics.runs_created_since(2, "d") == 3


# ---------------------------------------------------------------- remote workers and leases


def test_a_claim_is_a_lease_renewed_only_for_its_holder(store: Store) -> None:
    start(store, dag_of(GPU))
    claims = store.workers.claim("w1", ["gpu"], 5, now=1_000, lease_until=1_000 + LEASE)
    assert sorted(c.task.task_id for c in claims) == ["t", "u"]  # both, in one poll
    assert store.workers.held_count("w1") == 2
    first = claims[0]
    answers = store.workers.renew("w1", [(first.task.id, first.attempt)], 20_000 + LEASE)
    assert [(a.cancel, a.lost) for a in answers] == [(False, False)]
    stranger = store.workers.renew("w2", [(first.task.id, first.attempt)], 20_000 + LEASE)
    assert stranger[0].lost  # not its task
    wrong_attempt = store.workers.renew("w1", [(first.task.id, first.attempt + 1)], 20_000)
    assert wrong_attempt[0].lost
    # the renewed lease outlives the other one
    expired = store.workers.expired(1_000 + LEASE + 1)
    assert [e[0] for e in expired] == [claims[1].task.id]
    assert store.workers.holder(first.task.id, first.attempt, 1_000 + LEASE + 1) == "w1"


def test_a_lease_is_live_up_to_its_end_and_held_by_its_attempt_alone(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    assert store.workers.holder(held.task.id, 1, LEASE) == "w1"
    assert store.workers.holder(held.task.id, 1, LEASE + 1) is None  # ran out
    assert store.workers.holder(held.task.id, 2, 0) is None  # another attempt
    assert store.workers.holder("nope", 1, 0) is None
    assert not store.workers.expire(ended(held, LEASE, S.FAILED), "w1", LEASE)  # still live
    assert store.workers.expired(LEASE) == []
    assert store.workers.finish(ended(held, LEASE), "w1", LEASE) is True  # in time
    assert store.workers.holder(held.task.id, 1, 0) is None  # closed


def test_the_holders_of_several_attempts_are_read_at_once(store: Store) -> None:
    """A poll's results are checked together: each attempt's holder under a live lease, none
    for one that ran out, another attempt or an unknown task."""
    start(store, dag_of(GPU))
    mine = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    theirs = store.workers.claim("w2", ["gpu"], 1, now=0, lease_until=LEASE // 2)[0]
    asked = [(mine.task.id, 1), (theirs.task.id, 1), (mine.task.id, 2), ("nope", 1)]
    assert store.workers.holders(asked, LEASE // 2) == {
        (mine.task.id, 1): "w1",
        (theirs.task.id, 1): "w2",
    }
    assert store.workers.holders(asked, LEASE // 2 + 1) == {(mine.task.id, 1): "w1"}
    assert store.workers.holders([], 0) == {}


def test_a_remote_claim_takes_its_pools_in_turn_up_to_its_count(store: Store) -> None:
    pools = {"g1": "gpu", "g2": "gpu", "c1": "cpu", "c2": "cpu", "l": "default"}
    text = "id: d\ntasks:\n" + "".join(
        f"  - id: {name}\n    pool: {pool}\n    command: 'true'\n" for name, pool in pools.items()
    )
    run = start(store, dag_of(text))
    claims = store.workers.claim("w1", ["gpu", "cpu"], 3, now=5, lease_until=5 + LEASE)
    assert [c.task.task_id for c in claims] == ["g1", "c1", "g2"]
    assert {(c.task.worker, c.attempt) for c in claims} == {("w1", 1)}
    more = store.workers.claim("w1", ["gpu", "cpu"], 5, now=6, lease_until=6 + LEASE)
    assert [c.task.task_id for c in more] == ["c2"]
    assert task_of(store, run, "l").status is S.QUEUED  # not a pool of w1
    assert store.workers.held_count("w1") == 4
    assert {a.worker for a in store.tasks.running_attempts("w1")} == {"w1"}
    assert len(store.tasks.running_attempts("w1")) == 4
    assert store.tasks.running_attempts("local") == []


def test_a_result_after_the_lease_ran_out_is_refused(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    late = ended(held, LEASE + 1)
    assert store.workers.finish(late, "w1", LEASE + 1) is None
    message = "worker w1 lost; retrying (attempt 2 of 2)"
    lost = ended(held, LEASE + 1, S.UP_FOR_RETRY, S.FAILED, message=message, ready_at=LEASE + 1)
    assert store.workers.expire(lost, "w1", LEASE + 1)
    assert not store.workers.expire(lost, "w1", LEASE + 2)  # closed once
    retried = task(store, held.task.id)
    assert (retried.status, retried.message) == (S.UP_FOR_RETRY, message)
    assert store.workers.finish(late, "w1", LEASE + 1) is None  # still refused afterwards
    (attempt,) = store.tasks.attempts(held.task.id)
    assert attempt.status is S.FAILED and attempt.worker == "w1"


def test_a_result_in_time_wins_over_the_reaper(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    assert store.workers.finish(ended(held, 10), "w1", 10) is True
    lost = ended(held, LEASE + 1, S.UP_FOR_RETRY, S.FAILED, message="lost")
    assert not store.workers.expire(lost, "w1", LEASE + 1)
    assert store.workers.expired(LEASE * 10) == []
    assert task(store, held.task.id).status is S.SUCCESS


def test_another_worker_cannot_report_the_attempt(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    assert store.workers.finish(ended(held, 5), "w2", 5) is None
    assert not store.workers.expire(ended(held, LEASE + 1, S.FAILED), "w2", LEASE + 1)
    assert task(store, held.task.id).status is S.RUNNING


def test_a_killed_remote_task_keeps_its_attempt_open_for_the_report(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    store.tasks.transition([held.task.id], [S.RUNNING], S.CANCELLED, 5, "killed")
    (answer,) = store.workers.renew("w1", [(held.task.id, held.attempt)], 10 + LEASE)
    assert answer.cancel and not answer.lost
    report = ended(held, 20, S.CANCELLED, message="killed")
    assert store.workers.finish(report, "w1", 20) is False  # the kill had already won
    (attempt,) = store.tasks.attempts(held.task.id)
    assert attempt.status is S.CANCELLED and attempt.completed_at == 20


def test_a_handed_back_task_is_queued_again_without_spending_a_retry(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    message = "handed back by its worker (shutting down); the task runs again"
    back = ended(held, 5, S.QUEUED, S.FAILED, message=message, extra_attempts=1)
    assert store.workers.finish(back, "w1", 5) is True
    queued = task(store, held.task.id)
    assert (queued.status, queued.message) == (S.QUEUED, message)
    assert queued.max_attempts == 3  # 2 + the attempt given back
    assert store.workers.expired(10 * LEASE) == []  # the lease went with the attempt


def test_a_restarted_master_gives_open_leases_a_full_term(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    assert store.workers.extend(100_000 + LEASE) == 1
    assert store.workers.expired(LEASE + 1) == []
    assert store.workers.holder(held.task.id, held.attempt, 100_000) == "w1"
    assert store.workers.extend(LEASE) == 1  # never shortened
    assert store.workers.holder(held.task.id, held.attempt, 100_000 + LEASE) == "w1"


def test_a_restarted_master_extends_no_lease_of_a_closed_attempt(store: Store) -> None:
    start(store, dag_of(GPU))
    held = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)[0]
    store.tasks.transition([held.task.id], [S.RUNNING], S.CANCELLED, 5, "killed")
    assert store.workers.finish(ended(held, 10, S.CANCELLED), "w1", 10) is False
    assert store.workers.held_count("w1") == 0
    assert store.workers.extend(100_000) == 0  # nothing is in flight


def test_the_registry_is_an_upsert(store: Store) -> None:
    start(store, dag_of(GPU))
    assert store.workers.registered() == []
    store.workers.renew("w1", [], LEASE, WorkerRecord("w1", "h", ("gpu",), 2, "0.1", "", 1, 1))
    seen = WorkerRecord("w1", "h2", ("gpu", "cpu"), 4, "0.1", "", 9, 9)
    store.workers.renew("w1", [], LEASE, seen)
    store.workers.claim("w1", ["gpu"], 1, now=10, lease_until=LEASE)
    (worker,) = store.workers.registered()
    assert (worker.hostname, worker.pools, worker.max_tasks) == ("h2", ("gpu", "cpu"), 4)
    assert (worker.registered_at, worker.last_seen, worker.running) == (1, 9, 1)
    assert worker.state == "online"
    leaving = WorkerRecord("w1", "h2", ("gpu",), 4, "0.1", "", 12, 12)
    store.workers.renew("w1", [], LEASE, leaving, leaving=True)
    assert store.workers.registered()[0].state == "left"
    store.workers.renew("w0", [], LEASE, WorkerRecord("w0", "h0", ("cpu",), 1, "", "", 20, 20))
    assert [w.worker_id for w in store.workers.registered()] == ["w0", "w1"]


def test_a_lease_is_confirmed_by_the_holders_first_renewal(store: Store) -> None:
    start(store, dag_of(GPU))
    first, second = store.workers.claim("w1", ["gpu"], 2, now=0, lease_until=LEASE)
    store.workers.renew("w1", [(first.task.id, first.attempt)], LEASE)
    expired = {e[0]: e[3] for e in store.workers.expired(LEASE + 1)}
    assert expired == {first.task.id: True, second.task.id: False}
    assert {(e[1], e[2]) for e in store.workers.expired(LEASE + 1)} == {(1, "w1")}


THREE_GPU = """
id: three
tasks:
  - {id: a, pool: gpu, command: 'true', retries: 1}
  - {id: b, pool: gpu, command: 'true'}
  - {id: c, pool: gpu, command: 'true'}
"""


def test_one_exchange_records_results_renews_leases_and_claims_the_freed_slots(
    store: Store,
) -> None:
    """A worker's poll: its results, its other leases and its next claims in one transaction."""
    run = start(store, dag_of(THREE_GPU))
    a, b = store.workers.claim("w1", ["gpu"], 2, now=0, lease_until=LEASE)
    seen = WorkerRecord("w1", "h", ("gpu",), 2, "0.1", "", 10, 10)
    held = [(a.task.id, a.attempt), (b.task.id, b.attempt)]
    done = store.workers.exchange(seen, False, [ended(a, 10)], held, 10, 10 + LEASE)
    assert done.recorded == [True]
    # the attempt whose result came along is not renewed (nor reported lost)
    assert [(h.task_instance_id, h.lost, h.cancel) for h in done.held] == [
        (b.task.id, False, False)
    ]
    assert [c.task.task_id for c in done.claims] == ["c"]  # the slot a freed
    assert statuses(store, run) == {"a": S.SUCCESS, "b": S.RUNNING, "c": S.RUNNING}
    assert store.workers.holder(b.task.id, 1, 10 + LEASE) == "w1"  # renewed
    assert store.workers.held_count("w1") == 2
    (worker,) = store.workers.registered()
    assert (worker.last_seen, worker.state, worker.running) == (10, "online", 2)
    assert attempts(store, a.task.id) == [(1, S.SUCCESS, 10)]
    counted = [c for c in store.metrics.counters() if c.name == "task_runs"]
    assert [(c.task_id, c.status, c.value) for c in counted] == [("a", "success", 1)]


def test_an_exchange_records_a_result_once_and_only_while_its_lease_lives(store: Store) -> None:
    """The same result sent again (its answer was lost) changes nothing; nor does one whose
    lease ran out, one of another worker, or the claims of a leaving worker."""
    run = start(store, dag_of(THREE_GPU))
    a, b = store.workers.claim("w1", ["gpu"], 2, now=0, lease_until=LEASE)
    seen = WorkerRecord("w1", "h", ("gpu",), 2, "0.1", "", 10, 10)
    first = store.workers.exchange(seen, False, [ended(a, 10)], [], 10, 10 + LEASE)
    assert first.recorded == [True] and len(first.claims) == 1
    again = store.workers.exchange(seen, False, [ended(a, 20)], [], 20, 20 + LEASE)
    assert again.recorded == [None] and again.claims == []  # full: b and c
    assert attempts(store, a.task.id) == [(1, S.SUCCESS, 10)]  # recorded at 10, once
    other = WorkerRecord("w2", "h", ("gpu",), 2, "0.1", "", 30, 30)
    assert store.workers.exchange(other, False, [ended(b, 30)], [], 30, 30 + LEASE).recorded == [
        None
    ]
    late = store.workers.exchange(seen, True, [ended(b, LEASE + 1)], [], LEASE + 1, 2 * LEASE)
    assert late.recorded == [None] and late.claims == []
    assert statuses(store, run)["b"] is S.RUNNING
    assert [w.state for w in store.workers.registered()] == ["left", "online"]  # w1, w2


def test_a_claim_with_a_capacity_never_overfills_the_worker(store: Store) -> None:
    start(store, dag_of(THREE_GPU))
    store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)
    more = store.workers.claim("w1", ["gpu"], 5, now=1, lease_until=LEASE, capacity=2)
    assert len(more) == 1 and store.workers.held_count("w1") == 2
    assert store.workers.claim("w1", ["gpu"], 5, now=2, lease_until=LEASE, capacity=2) == []


# ---------------------------------------------------------------- retention


def _run_at(store: Store, created: int, completed: int | None, status: RunStatus) -> str:
    """A run of one task created at `created`, its attempt and itself finished at `completed`
    with `status` (still running if None)."""
    run = start(store, dag_of(ONE), created)
    (claimed,) = claim(store, created)
    if completed is not None:
        outcome = S(status.value)
        assert store.tasks.finish_attempt(ended(claimed, completed, outcome))
        assert store.runs.finish(run.run_id, status, completed) is status
    return run.run_id


def test_retention_deletes_old_finished_runs_with_their_tasks_and_attempts(
    store: Store,
) -> None:
    cutoff = 10 * DAY
    old = [
        _run_at(store, 1 * DAY, 1 * DAY + MINUTE, RunStatus.SUCCESS),
        _run_at(store, 2 * DAY, 2 * DAY + 1, RunStatus.FAILED),
        _run_at(store, 3 * DAY, 3 * DAY + 1, RunStatus.CANCELLED),
    ]
    kept = [
        _run_at(store, 0, None, RunStatus.RUNNING),  # the oldest, still running
        _run_at(store, 4 * DAY, cutoff, RunStatus.SUCCESS),  # finished at the cutoff
        _run_at(store, 11 * DAY, 11 * DAY + 1, RunStatus.SUCCESS),
        start(store, dag_of(ONE), 5 * DAY).run_id,  # queued
    ]
    found = store.retention.old_runs(cutoff, 10)
    assert found[0] == OldRun(old[0], "d", "success", DAY, DAY + MINUTE, 1, 1)
    assert [(r.run_id, r.status, r.tasks, r.attempts) for r in found] == [
        (old[0], "success", 1, 1),
        (old[1], "failed", 1, 1),
        (old[2], "cancelled", 1, 1),
    ]
    after = (found[0].created_at, found[0].run_id)
    assert [r.run_id for r in store.retention.old_runs(cutoff, 10, after)] == old[1:]
    assert [r.run_id for r in store.retention.old_runs(cutoff, 1)] == old[:1]
    instances = {run_id: [t.id for t in store.tasks.of_run(run_id)] for run_id in old + kept}
    counters = store.metrics.counters()
    assert sum(a.attempts for a in store.metrics.aggregates(0)) == 5
    assert [r.run_id for r in store.retention.delete_old_runs(cutoff, 2)] == old[:2]
    assert [r.run_id for r in store.retention.delete_old_runs(cutoff, 2)] == old[2:]
    assert store.retention.delete_old_runs(cutoff, 2) == []
    for run_id in old:
        assert store.runs.get(run_id) is None and not store.runs.exists(run_id)
        assert store.tasks.of_run(run_id) == [] and store.metrics.of_run(run_id) == []
        (instance,) = instances[run_id]
        assert store.tasks.by_id(instance) is None and store.tasks.attempts(instance) == []
    for run_id in kept:
        assert store.runs.exists(run_id) and len(store.tasks.of_run(run_id)) == 1
    assert {r.run_id for r in store.runs.find(RunFilter(), 1, 100)[0]} == set(kept)
    assert store.metrics.counters() == counters  # counters only grow
    assert sum(a.attempts for a in store.metrics.aggregates(0)) == 2  # kept in step


# ---------------------------------------------------------------- webhook deliveries


def test_a_delivery_is_found_within_its_window_and_recording_forgets_old_ones(
    store: Store,
) -> None:
    assert store.deliveries.find("k1", 0) is None
    store.deliveries.record("k1", "r1", 100, forget_before=0)
    assert store.deliveries.find("k1", 100) == "r1"
    assert store.deliveries.find("k1", 101) is None  # received before the window
    assert store.deliveries.find("k2", 0) is None
    store.deliveries.record("k1", "r2", 200, forget_before=0)  # the same key again: replaced
    assert store.deliveries.find("k1", 0) == "r2"
    assert store.deliveries.find("k1", 150) == "r2"
    store.deliveries.record("k2", "r3", 1_000, forget_before=201)
    assert store.deliveries.find("k1", 0) is None  # forgotten
    assert store.deliveries.find("k2", 0) == "r3"


# ---------------------------------------------------------------- metrics


def test_a_closed_attempt_shows_up_in_the_metrics(store: Store) -> None:
    run = start(store, dag_of(ONE), NOW - 10_000)
    (claimed,) = claim(store, NOW - 2_000)
    assert store.metrics.of_task(claimed.task.id) == []  # running: no metrics yet
    metrics = AttemptMetrics(1_500, 30, 20, 4096, 0, "local")
    assert store.tasks.finish_attempt(ended(claimed, NOW, metrics=metrics))
    point = MetricPoint(
        claimed.task.id,
        1,
        run.run_id,
        "d",
        "t",
        "success",
        "local",
        "local",
        NOW - 2_000,
        NOW,
        1_500,
        30,
        20,
        4096,
        0,
        False,
    )
    assert store.metrics.of_task(claimed.task.id) == [point]
    assert store.metrics.of_run(run.run_id) == [point]
    assert store.metrics.points(NOW - HOUR, "d", 10) == [point]
    assert store.metrics.points(NOW + 1, "", 10) == []
    assert store.metrics.slowest_attempts(NOW - HOUR, 5, 1) == [point]
    assert store.metrics.duration_at_ranks(NOW - HOUR, "d", [0, 1]) == [1_500, 0]
    assert store.metrics.aggregates(NOW - HOUR) == [
        MetricAgg(0, "", 1, 1, 0, 1_500, 1_500, 4096, 4096, 50)
    ]
    (by_dag,) = store.metrics.aggregates(NOW - HOUR, by_dag=True, bucket_ms=HOUR)
    assert (by_dag.bucket, by_dag.dag_id, by_dag.attempts) == (NOW // HOUR * HOUR, "d", 1)
    assert store.metrics.aggregates(NOW + 1) == []
    assert store.metrics.aggregates(NOW - HOUR, dag_id="other") == []
    assert store.metrics.has_attempts("d") and not store.metrics.has_attempts("other")
    assert store.metrics.duration_histogram() == [DurationRow("d", "default", 2_500, 1, 1_500)]
    assert [
        (c.dag_id, c.task_id, c.status, c.value)
        for c in store.metrics.counters()
        if c.name == "task_runs"
    ] == [("d", "t", "success", 1)]
    assert task_of(store, run, "t").metrics == metrics  # the task shows its last attempt's


def test_duration_ranks_are_read_per_run_of_ranks_and_match_rank_offsets(store: Store) -> None:
    """Consecutive ranks come from one index walk; a rank past the end reads 0; the per-bucket
    ranks are those `metrics.rank_offsets` asks for (floating point on both databases)."""
    durations = [(number * 7) % 23 + 1 for number in range(21)]
    attempts = [Attempt(f"t{n:02d}", NOW - 60_000 + n, d) for n, d in enumerate(durations)]
    plant_run(store, "d", NOW - 120_000, attempts)
    ordered = sorted(durations)
    assert store.metrics.duration_at_ranks(NOW - HOUR, "d", [0, 1, 2, 10, 19, 20, 21]) == [
        *ordered[:3],
        ordered[10],
        ordered[19],
        ordered[20],
        0,
    ]
    rows = store.metrics.bucket_duration_ranks(NOW - HOUR, "d", HOUR, (0.5, 0.95))
    wanted = sorted({r for q in (0.5, 0.95) for r in rank_offsets(21, q)[:2]})
    assert [(n, r, d) for _, n, r, d in rows] == [(21, r, ordered[r]) for r in wanted]


def test_consecutive_runs_of_offsets() -> None:
    assert consecutive_runs([9, 3, 4, 4, 10, 12]) == [(3, 2), (9, 2), (12, 1)]
    assert consecutive_runs([]) == []


# ---------------------------------------------------------------- the audit log


def test_the_audit_log_is_found_by_action_family_newest_first_and_deleted_oldest_first(
    store: Store,
) -> None:
    actions = ["run.kill", "run.trigger", "run/odd", "runs.delete", "dag.pause", "run.retry"]
    for at, action in enumerate(actions, start=1):
        store.audit.record(AuditEntry(at, "ann" if at % 2 else "bob", action, target=f"x{at}"))
    family, total = store.audit.find(AuditFilter(action="run."), 1, 10)
    assert [e.action for e in family] == ["run.retry", "run.trigger", "run.kill"]  # byte order
    assert total == 3 and family[0].id > family[-1].id > 0
    page, total = store.audit.find(AuditFilter(actor="bob"), 2, 2)
    assert ([e.at for e in page], total) == ([2], 3)
    assert store.audit.find(AuditFilter(since=2, until=4), 1, 10)[1] == 2
    assert store.audit.delete_before(4, 2) == 2  # the two oldest of the three before 4
    assert [e.at for e in store.audit.find(AuditFilter(), 1, 10)[0]] == [6, 5, 4, 3]
