"""The cluster's decisions without processes: message validation (pure), how a lost or
handed-back attempt ends (pure) and the coordinator's reaper over a real store, with time passed
in."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import StoreFactory
from hypothesis import given
from hypothesis import strategies as st

from nagare.cluster.coordinator import Coordinator
from nagare.cluster.protocol import (
    MAX_HELD,
    MAX_POOLS,
    MAX_TASKS,
    MAX_WAIT_SECONDS,
    PROTOCOL,
    Directives,
    LogAck,
    LogBatch,
    PollRequest,
    ResultAck,
    TaskResult,
    Welcome,
    WorkerHello,
    decode_assignment,
    decode_directives,
    decode_log_ack,
    decode_outcome,
    decode_result_ack,
    decode_welcome,
    encode_assignment,
    encode_directives,
    encode_hello,
    encode_log_ack,
    encode_log_batch,
    encode_outcome,
    encode_poll,
    encode_result,
    encode_result_ack,
    encode_welcome,
    read_hello,
    read_log_batch,
    read_poll,
    read_result,
)
from nagare.dagfile import parse_dag
from nagare.engine.attempt_end import HANDED_BACK_REASON, attempt_finish
from nagare.errors import BadRequest, Conflict
from nagare.logs import LogFiles
from nagare.models import (
    Assignment,
    AttemptMetrics,
    Claim,
    Outcome,
    Resources,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    Trigger,
)
from nagare.store import Store

HELLO = {"worker_id": "w1", "hostname": "box-1", "pools": ["gpu"], "max_tasks": 2}
LEASE = 30_000


# ---------------------------------------------------------------- messages


def test_a_valid_hello_is_read_with_its_held_attempts() -> None:
    hello = read_hello({**HELLO, "pools": ["gpu", "gpu", "cpu"], "held": [["abc", 2]]})
    assert hello.pools == ("gpu", "cpu") and hello.held == (("abc", 2),)
    assert not hello.leaving and read_hello({**HELLO, "leaving": True}).leaving


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"worker_id": "local"}, "worker_id: 'local' is reserved"),
        ({"worker_id": "../x"}, "worker_id: expected letters, digits"),
        ({"worker_id": "w" * 65}, "worker_id: expected"),
        ({"worker_id": None}, "worker_id: expected"),
        ({"hostname": "a b"}, "hostname: expected a host name, found 'a b'"),
        ({"pools": []}, "pools: expected a list of 1 to 32 pool names"),
        ({"pools": ["a b"]}, "pools: expected pool names like 'gpu', found 'a b'"),
        ({"pools": "gpu"}, "pools: expected a list"),
        ({"max_tasks": 0}, "max_tasks: expected a whole number from 1 to 256, found 0"),
        ({"max_tasks": True}, "max_tasks: expected a whole number"),
        ({"held": [["abc"]]}, "held: expected [task_instance_id, attempt] pairs"),
        ({"held": [["../x", 1]]}, "held: expected [task_instance_id, attempt] pairs"),
        ({"waiting": [["abc"]]}, "waiting: expected [task_instance_id, attempt] pairs"),
        ({"waiting": "abc"}, "waiting: expected a list"),
        ({"prefetch": -1}, "prefetch: expected a whole number from 0 to 256, found -1"),
    ],
)
def test_a_bad_hello_names_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=None) as caught:
        read_hello({**HELLO, **change})
    assert message in caught.value.message


def test_poll_log_and_result_messages_are_validated() -> None:
    poll = read_poll({**HELLO, "wait_seconds": 500})
    assert poll.wait_seconds == 30.0  # capped
    with pytest.raises(BadRequest, match="wait_seconds"):
        read_poll({**HELLO, "wait_seconds": -1})
    batch = read_log_batch(
        {"worker_id": "w1", "task_instance_id": "abc", "attempt": 1, "lines": [["stdout", "xyz"]]},
        max_line_chars=2,
    )
    assert batch.lines == (("stdout", "xy"),)  # cut to the master's line limit
    with pytest.raises(BadRequest, match="stream stdout, stderr or nagare"):
        read_log_batch(
            {"worker_id": "w1", "task_instance_id": "abc", "attempt": 1, "lines": [["x", "y"]]},
            100,
        )
    with pytest.raises(BadRequest, match="outcome: expected an object"):
        read_result({"worker_id": "w1", "task_instance_id": "abc", "attempt": 1})
    with pytest.raises(BadRequest, match="expected a JSON object body"):
        read_hello(["w1"])


def test_assignments_and_outcomes_survive_the_wire() -> None:
    assignment = Assignment(
        task_instance_id="abc",
        run_id="r",
        dag_id="d",
        task_id="t",
        attempt=2,
        command="echo hi",
        env={"A": "1"},
        timeout_seconds=5,
        image="busybox",
        volumes=("/data:/data:ro",),
        resources=Resources(cpus="0.5", memory="64m"),
    )
    assert decode_assignment(encode_assignment(assignment)) == assignment
    outcome = Outcome(
        exit_code=3,
        timed_out=True,
        error="boom",
        metrics=AttemptMetrics(10, 2, 1, 4096, 3, "docker"),
        stdout="not shipped",
    )
    back = decode_outcome(encode_outcome(outcome))
    assert back == Outcome(
        exit_code=3,
        timed_out=True,
        error="boom",
        metrics=AttemptMetrics(10, 2, 1, 4096, 3, "docker"),
    )
    odd = decode_outcome({"exit_code": True, "metrics": {"duration_ms": -5, "executor_type": "x"}})
    assert odd.exit_code is None and odd.metrics.duration_ms == 0
    assert odd.metrics.executor_type == "local"


def wire(data: dict[str, Any]) -> Any:
    """What the other side receives: the JSON text, parsed."""
    return json.loads(json.dumps(data))


ASSIGNMENT = Assignment("abc", "r", "d", "t", 1, "echo hi", {"A": "1"}, timeout_seconds=5)
OUTCOME = Outcome(exit_code=0, metrics=AttemptMetrics(10, 2, 1, 4096, 0, "local"))
HELD_HELLO = WorkerHello("w1", "box-1", ("gpu", "cpu"), 2, "0.1.0", (("abc", 2),), leaving=True)


@pytest.mark.parametrize(
    ("message", "encode", "read"),
    [
        (WorkerHello("w1", "box-1", ("gpu",), 2), encode_hello, read_hello),
        (HELD_HELLO, encode_hello, read_hello),
        (PollRequest(HELD_HELLO, 1.5), encode_poll, read_poll),
        (
            LogBatch("w1", "abc", 2, (("stdout", "out"), ("stderr", ""), ("nagare", "x"))),
            encode_log_batch,
            lambda body: read_log_batch(body, 100),
        ),
        (TaskResult("w1", "abc", 2, OUTCOME), encode_result, read_result),
        (
            TaskResult(
                "w1", "abc", 2, Outcome(None, cancelled=True), "killed", (("stdout", "last"),)
            ),
            encode_result,
            read_result,
        ),
    ],
)
def test_every_worker_message_is_read_by_the_master_as_sent(
    message: Any, encode: Any, read: Any
) -> None:
    assert read(wire(encode(message))) == message


@pytest.mark.parametrize(
    ("message", "encode", "decode"),
    [
        (Welcome("w1", 30.0, 5.0, 10.0, "0.1.0"), encode_welcome, decode_welcome),
        (Directives(), encode_directives, decode_directives),
        (
            Directives([ASSIGNMENT, replace(ASSIGNMENT, task_instance_id="abd")], ["x"], ["y"]),
            encode_directives,
            decode_directives,
        ),
        (LogAck(cancel=True), encode_log_ack, decode_log_ack),
        (LogAck(cancel=False), encode_log_ack, decode_log_ack),
        (ResultAck("up_for_retry"), encode_result_ack, decode_result_ack),
    ],
)
def test_every_answer_is_decoded_by_the_worker_as_sent(
    message: Any, encode: Any, decode: Any
) -> None:
    assert decode(wire(encode(message))) == message


def test_the_worker_decodes_odd_answers_leniently() -> None:
    assert decode_welcome({}) == Welcome("")
    assert decode_welcome({"lease_seconds": "30", "heartbeat_seconds": -1}) == Welcome("")
    assert decode_welcome({"poll_wait_seconds": 2}).poll_wait_seconds == 2.0
    assert decode_directives({}) == Directives()
    odd = {"tasks": [encode_assignment(ASSIGNMENT), "junk"], "cancel": ["a", 3], "lost": "b"}
    assert decode_directives(odd) == Directives([ASSIGNMENT], ["a"], [])
    assert decode_log_ack({}) == LogAck(cancel=False)
    assert decode_log_ack({"cancel": "yes"}) == LogAck(cancel=False)
    assert decode_result_ack({}) == ResultAck("")


# what a worker can say: every value the master accepts unchanged
_ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
_lines = st.lists(
    st.tuples(st.sampled_from(["stdout", "stderr", "nagare"]), st.text(max_size=20)),
    max_size=5,
).map(tuple)
_hellos = st.builds(
    WorkerHello,
    worker_id=_names.filter(lambda w: w != "local"),
    hostname=_names,
    pools=st.lists(_names, min_size=1, max_size=MAX_POOLS, unique=True).map(tuple),
    max_tasks=st.integers(1, MAX_TASKS),
    version=st.text(max_size=40),
    held=st.lists(st.tuples(_ids, st.integers(1, 10**6)), max_size=MAX_HELD // 100).map(tuple),
    leaving=st.booleans(),
)
_metrics = st.builds(
    AttemptMetrics,
    *(st.integers(0, 10**12) for _ in range(4)),
    exit_code=st.none(),
    executor_type=st.sampled_from(["local", "docker"]),
)


@given(_hellos, st.floats(0, MAX_WAIT_SECONDS))
def test_the_master_reads_any_hello_and_poll_a_worker_encodes(
    hello: WorkerHello, wait: float
) -> None:
    assert read_hello(wire(encode_hello(hello))) == hello
    assert read_poll(wire(encode_poll(PollRequest(hello, wait)))) == PollRequest(hello, wait)


@given(
    _names,
    _ids,
    st.integers(1, 10**6),
    _lines,
    st.one_of(st.none(), st.integers(-255, 255)),
    st.booleans(),
    st.booleans(),
    st.text(max_size=50),
    _metrics,
    st.text(max_size=50),
)
def test_the_master_reads_any_log_batch_and_result_a_worker_encodes(
    worker_id: str,
    task_instance_id: str,
    attempt: int,
    lines: tuple[tuple[str, str], ...],
    exit_code: int | None,
    timed_out: bool,
    cancelled: bool,
    error: str,
    metrics: AttemptMetrics,
    reason: str,
) -> None:
    batch = LogBatch(worker_id, task_instance_id, attempt, lines)
    assert read_log_batch(wire(encode_log_batch(batch)), 100) == batch
    outcome = Outcome(exit_code, timed_out, cancelled, error, replace(metrics, exit_code=exit_code))
    result = TaskResult(worker_id, task_instance_id, attempt, outcome, reason, lines)
    assert read_result(wire(encode_result(result))) == result


def test_a_result_carries_lines_only_when_it_has_some() -> None:
    assert "lines" not in encode_result(TaskResult("w1", "abc", 1, OUTCOME))
    with_lines = encode_result(TaskResult("w1", "abc", 1, OUTCOME, "", (("stdout", "x"),)))
    assert with_lines["lines"] == [["stdout", "x"]]


# ---------------------------------------------------------------- leases
# The lease rules of the store itself (claim, renew, holder, finish, expire, extend, the
# registry) are the store contract's: tests/test_store_contract.py.


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """A store of each backend holding one manual run of two gpu tasks (`t` with a retry)."""
    store = store_factory()
    dag, errors = parse_dag(
        "id: d\ntasks:\n  - id: t\n    pool: gpu\n    retries: 1\n    command: 'true'\n"
        "  - id: u\n    pool: gpu\n    command: 'true'\n"
    )
    assert dag is not None, errors
    store.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
    return store


def _claim_of(attempt: int, max_attempts: int) -> Claim:
    dag, errors = parse_dag("id: d\ntasks:\n  - id: t\n    pool: gpu\n    command: 'true'\n")
    assert dag is not None, errors
    task = TaskInstance("abc", "r", "t", "t", TaskStatus.RUNNING, attempt, max_attempts, "gpu")
    run = Run("r", "d", RunStatus.RUNNING, Trigger.MANUAL, 0, {}, 0)
    return Claim(task, run, attempt, dag)


def test_a_lost_or_handed_back_remote_attempt_ends_like_a_local_one() -> None:
    """What the coordinator records when a worker is lost or hands a task back (the store
    takes it from there)."""
    lost = attempt_finish(_claim_of(1, 2), Outcome(exit_code=None, error="worker w1 lost"), 7)
    assert (lost.status, lost.attempt_status, lost.ready_at) == (
        TaskStatus.UP_FOR_RETRY,
        TaskStatus.FAILED,
        7,
    )
    assert lost.message == "worker w1 lost; retrying (attempt 2 of 2)"
    gone = attempt_finish(_claim_of(2, 2), Outcome(exit_code=None, error="worker w1 lost"), 9)
    assert (gone.status, gone.message) == (TaskStatus.FAILED, "worker w1 lost")
    back = attempt_finish(
        _claim_of(1, 1), Outcome(exit_code=None, cancelled=True), 5, HANDED_BACK_REASON
    )
    assert (back.status, back.attempt_status, back.extra_attempts) == (
        TaskStatus.QUEUED,
        TaskStatus.FAILED,
        1,
    )
    assert "handed back" in back.message  # without spending a retry


def test_the_reaper_retries_lost_work_and_requeues_work_never_confirmed(
    store: Store, tmp_path: Path
) -> None:
    """A confirmed attempt of a lost worker fails (retries decide); an attempt the worker never
    confirmed (handed out as it died) runs again without spending a retry."""
    finished: list[str] = []
    queued: list[dict[str, int]] = []
    coordinator = Coordinator(
        store,
        LogFiles(str(tmp_path / "logs")),
        LEASE / 1000,
        on_finished=lambda ended: finished.extend(task_id for _, task_id, _ in ended),
        on_queued=queued.append,
        clock=lambda: 0,
    )
    first, second = store.workers.claim("w1", ["gpu"], 2, now=0, lease_until=LEASE)
    store.workers.renew("w1", [(first.task.id, first.attempt)], LEASE)
    assert coordinator.reap(LEASE) == 0  # not yet
    assert coordinator.reap(LEASE + 1) == 2
    assert sorted(finished) == sorted([first.task.id, second.task.id])
    lost = store.tasks.by_id(first.task.id)
    assert lost is not None and lost.status is TaskStatus.UP_FOR_RETRY
    assert lost.message == "worker w1 lost: no word from it for 30s; retrying (attempt 2 of 2)"
    again = store.tasks.by_id(second.task.id)
    assert again is not None and again.status is TaskStatus.QUEUED
    assert again.max_attempts == 2 and "without spending a retry" in again.message
    assert queued == [{"gpu": 1}]
    log_text = (tmp_path / "logs" / first.run.run_id / f"{first.task.id}.1.log").read_text()
    assert "[nagare] worker w1 lost" in log_text


def test_a_waiting_attempt_is_renewed_and_told_of_its_kill_but_never_confirmed(
    store: Store, tmp_path: Path
) -> None:
    """A prefetched attempt the worker has not started (`waiting`): its lease is renewed and a
    kill reaches it through any master's renewal, but if the worker is lost before it starts
    it, it runs again without spending a retry: the attempt was never confirmed."""
    clock = [0]
    coordinator = Coordinator(
        store,
        LogFiles(str(tmp_path / "logs")),
        LEASE / 1000,
        on_finished=lambda ended: None,
        on_queued=lambda queued: None,
        clock=lambda: clock[0],
    )
    started, lined_up = store.workers.claim("w1", ["gpu"], 2, now=0, lease_until=LEASE)
    hello = read_hello(
        wire(
            encode_hello(
                replace(
                    W1,
                    held=((started.task.id, started.attempt),),
                    waiting=((lined_up.task.id, lined_up.attempt),),
                )
            )
        )
    )
    clock[0] = 1_000
    assert coordinator.heartbeat(hello).cancel == []
    assert coordinator.reap(LEASE + 1) == 0  # both leases were renewed
    assert coordinator.reap(1_000 + LEASE + 1) == 2  # the worker was lost: both leases ran out
    lost = store.tasks.by_id(started.task.id)
    assert lost is not None and lost.status is TaskStatus.UP_FOR_RETRY  # it had started
    again = store.tasks.by_id(lined_up.task.id)
    assert again is not None and again.status is TaskStatus.QUEUED
    assert "without spending a retry" in again.message

    # a kill made on another master reaches the worker through this one's renewal
    (claim,) = store.workers.claim("w1", ["gpu"], 1, now=2_000, lease_until=2_000 + LEASE)
    store.tasks.transition([claim.task.id], {TaskStatus.RUNNING}, TaskStatus.CANCELLED, 2_000)
    hello = replace(hello, held=(), waiting=((claim.task.id, claim.attempt),))
    assert coordinator.heartbeat(hello).cancel == [claim.task.id]


# ---------------------------------------------------------------- results carried by polls


THREE = (
    "id: three\ntasks:\n"
    "  - {id: a, pool: gpu, command: 'true', retries: 1}\n"
    "  - {id: b, pool: gpu, command: 'true', retries: 1}\n"
    "  - {id: c, pool: gpu, command: 'true'}\n"
)
W1 = WorkerHello("w1", "box-1", ("gpu",), 2)


class _Master:
    """A coordinator over a real store holding one run of THREE, its clock set by the test,
    recording what it hands to the scheduler (one call per batch) and what it queues."""

    def __init__(self, store: Store, tmp_path: Path) -> None:
        dag, errors = parse_dag(THREE)
        assert dag is not None, errors
        run = store.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
        assert run is not None
        self.run_id = run.run_id
        self.store = store
        self.now = 0
        self.settled: list[list[str]] = []
        self.queued: list[dict[str, int]] = []
        self.coordinator = Coordinator(
            store,
            LogFiles(str(tmp_path / "logs")),
            LEASE / 1000,
            on_finished=lambda ended: self.settled.append([t for _, t, _ in ended]),
            on_queued=self.queued.append,
            clock=lambda: self.now,
        )

    def poll(
        self, held: list[Assignment], results: list[TaskResult], hello: WorkerHello = W1
    ) -> Directives:
        keys = tuple((a.task_instance_id, a.attempt) for a in held)
        request = PollRequest(replace(hello, held=keys), 0.0, tuple(results))
        return self.coordinator.poll(wire_poll(request))

    def status(self, task_id: str) -> TaskStatus:
        task = self.store.tasks.get(self.run_id, task_id)
        assert task is not None
        return task.status


def wire_poll(request: PollRequest) -> PollRequest:
    """The poll as the master reads it off the wire."""
    return read_poll(wire(encode_poll(request)))


def ok(assignment: Assignment, worker: str = "w1", **outcome: Any) -> TaskResult:
    return TaskResult(
        worker,
        assignment.task_instance_id,
        assignment.attempt,
        Outcome(exit_code=outcome.pop("exit_code", 0), **outcome),
    )


def acks(directives: Directives) -> list[tuple[str, str, bool]]:
    """(task instance, status, refused?) of each result the answer acknowledges."""
    return [(a.task_instance_id, a.status, bool(a.refused)) for a in directives.results]


@pytest.fixture
def master(store_factory: StoreFactory, tmp_path: Path) -> _Master:
    return _Master(store_factory(), tmp_path)


def test_a_poll_carries_results_and_gets_the_freed_slots_filled_at_once(master: _Master) -> None:
    a, b = master.poll([], []).tasks  # two slots
    assert [t.task_id for t in (a, b)] == ["a", "b"]
    master.now = 1_000
    answer = master.poll([a, b], [ok(a), ok(b, exit_code=3, error="boom")])
    assert acks(answer) == [
        (a.task_instance_id, "success", False),
        (b.task_instance_id, "up_for_retry", False),
    ]
    assert [t.task_id for t in answer.tasks] == ["c"]  # a slot freed: filled by the same answer
    assert answer.lost == [] and answer.cancel == []
    assert master.settled == [[a.task_instance_id, b.task_instance_id]]  # one scheduler pass
    assert (master.status("a"), master.status("b"), master.status("c")) == (
        TaskStatus.SUCCESS,
        TaskStatus.UP_FOR_RETRY,
        TaskStatus.RUNNING,
    )
    (attempt,) = master.store.tasks.attempts(a.task_instance_id)
    assert (attempt.status, attempt.completed_at, attempt.worker) == (
        TaskStatus.SUCCESS,
        1_000,
        "w1",
    )


def test_a_result_sent_again_after_its_answer_was_lost_is_recorded_once(master: _Master) -> None:
    """The worker resends what it sent in a poll whose answer never came: the master refuses
    it (the attempt is closed) and the worker drops it; the task handed out in the lost answer
    was never confirmed, so it runs again without spending a retry."""
    a, b = master.poll([], []).tasks
    master.now = 1_000
    lost_answer = master.poll([a, b], [ok(a)])
    assert [t.task_id for t in lost_answer.tasks] == ["c"]
    master.now = 2_000
    again = master.poll([a, b], [ok(a)])  # as if the first had never arrived
    ((task_instance_id, status, refused),) = acks(again)
    assert (task_instance_id, status, refused) == (a.task_instance_id, "success", True)
    assert "does not hold" in again.results[0].refused
    assert again.tasks == []  # b and c fill its slots, as the master counts them
    assert master.settled == [[a.task_instance_id]]  # settled once
    assert len(master.store.tasks.attempts(a.task_instance_id)) == 1
    counted = [m for m in master.store.metrics.counters() if m.name == "task_runs"]
    assert [(m.task_id, m.status, m.value) for m in counted] == [("a", "success", 1)]
    # c's lease (from the lost answer) runs out unconfirmed; b's was renewed at 2_000
    assert master.coordinator.reap(1_000 + LEASE + 1) == 1
    assert master.status("c") is TaskStatus.QUEUED and master.status("b") is TaskStatus.RUNNING
    requeued = master.store.tasks.get(master.run_id, "c")
    assert requeued is not None and "without spending a retry" in requeued.message
    assert master.queued == [{"gpu": 1}]


def test_a_result_for_a_task_killed_meanwhile_closes_its_attempt_cancelled(
    master: _Master,
) -> None:
    a, b = master.poll([], []).tasks
    master.store.tasks.transition(
        [a.task_instance_id], [TaskStatus.RUNNING], TaskStatus.CANCELLED, 5, "killed"
    )
    assert master.coordinator.cancel(a.task_instance_id)
    master.now = 1_000
    answer = master.poll([a, b], [ok(a), ok(b)])
    assert acks(answer) == [
        (a.task_instance_id, "cancelled", False),  # recorded: the kill had won
        (b.task_instance_id, "success", False),
    ]
    assert answer.cancel == []  # its pending kill went with the result
    (attempt,) = master.store.tasks.attempts(a.task_instance_id)
    assert attempt.status is TaskStatus.CANCELLED
    assert master.status("a") is TaskStatus.CANCELLED and master.status("b") is TaskStatus.SUCCESS
    assert [t.task_id for t in answer.tasks] == ["c"]


def test_a_worker_lost_with_a_batch_in_hand_has_each_attempt_retried_exactly_once(
    master: _Master,
) -> None:
    a, b = master.poll([], []).tasks
    master.now = 1_000
    assert master.poll([a, b], []).tasks == []  # confirmed; full
    assert master.coordinator.reap(1_000 + LEASE) == 0
    assert master.coordinator.reap(1_000 + LEASE + 1) == 2
    assert master.coordinator.reap(1_000 + LEASE + 2) == 0  # closed once
    assert (master.status("a"), master.status("b")) == (TaskStatus.UP_FOR_RETRY,) * 2
    # the worker comes back with results of the lost attempts: refused, nothing moves
    master.now = 1_000 + LEASE + 3
    late = master.poll([a, b], [ok(a), ok(b)])
    assert [refused for _, _, refused in acks(late)] == [True, True]
    assert late.lost == []  # each has its answer in `results`
    assert (master.status("a"), master.status("b")) == (TaskStatus.UP_FOR_RETRY,) * 2
    for held in (a, b):
        (attempt,) = master.store.tasks.attempts(held.task_instance_id)
        assert attempt.status is TaskStatus.FAILED
    settled = [task_instance_id for batch in master.settled for task_instance_id in batch]
    assert sorted(settled) == sorted([a.task_instance_id, b.task_instance_id])


def test_a_result_of_the_previous_protocol_is_recorded_like_one_in_a_poll(
    master: _Master,
) -> None:
    """A worker of the previous release: one result per `result` request, 409 when refused."""
    a, _ = master.poll([], []).tasks
    master.now = 1_000
    assert master.coordinator.result(read_result(wire(encode_result(ok(a))))).status == "success"
    with pytest.raises(Conflict, match="does not hold"):
        master.coordinator.result(ok(a))
    assert master.settled == [[a.task_instance_id]]


def test_poll_results_are_validated_and_acknowledged_on_the_wire() -> None:
    result = TaskResult("w1", "abc", 2, OUTCOME, "", (("stdout", "last"),))
    poll = PollRequest(HELD_HELLO, 0.0, (result, replace(result, task_instance_id="abd")))
    assert read_poll(wire(encode_poll(poll))) == poll
    assert "results" not in encode_poll(PollRequest(HELD_HELLO, 1.0))
    body = encode_poll(poll)
    with pytest.raises(BadRequest, match=r"results\[1\]: a result of worker 'w2'"):
        read_poll(
            {**body, "results": [body["results"][0], {**body["results"][1], "worker_id": "w2"}]}
        )
    with pytest.raises(BadRequest, match=r"results\[0\]: outcome"):
        read_poll({**body, "results": [{**body["results"][0], "outcome": "ok"}]})
    with pytest.raises(BadRequest, match="at most 256 results"):
        read_poll({**body, "results": body["results"] * 129})
    with pytest.raises(BadRequest, match="results: expected a list"):
        read_poll({**body, "results": {}})
    answer = Directives(
        results=[ResultAck("success", "abc", 2), ResultAck("failed", "abd", 1, "not held")]
    )
    assert decode_directives(wire(encode_directives(answer))) == answer
    assert "results" not in encode_directives(Directives())
    assert decode_welcome(wire(encode_welcome(Welcome("w1", protocol=PROTOCOL)))).protocol == 2
    assert decode_welcome({}).protocol == 1  # a master that does not say: the first protocol


def test_the_explicit_encoders_name_every_field() -> None:
    """encode_hello and encode_outcome list their fields by hand (no deep copy): a new field
    of the dataclass must be added there too."""
    assert set(encode_hello(HELD_HELLO)) == set(WorkerHello.__dataclass_fields__)
    encoded = encode_outcome(Outcome(exit_code=0, outputs={"k": "v"}))
    assert set(encoded) == set(Outcome.__dataclass_fields__) - {"stdout", "skipped"}
    assert set(encoded["metrics"]) == set(AttemptMetrics.__dataclass_fields__)
    assert set(encode_assignment(ASSIGNMENT)) == set(Assignment.__dataclass_fields__)
