"""The cluster protocol's messages, both ways: what a worker sends to `/api/workers/*` and what
the master answers. Pure; both sides use these dataclasses and their JSON functions.

| route     | the worker sends             | the master answers             |
|-----------|------------------------------|--------------------------------|
| register  | `WorkerHello`                | `Welcome`                      |
| heartbeat | `WorkerHello`                | `Directives` (no tasks)        |
| poll      | `PollRequest`                | `Directives`                   |
| log       | `LogBatch`                   | `LogAck`                       |
| result    | `TaskResult`                 | `ResultAck`                    |

A poll also carries the worker's finished results (protocol 2, which the master's `Welcome`
announces): one request records them, renews the leases and hands out new work, and the answer
acknowledges each result (`Directives.results`). `result` stays for workers of the previous
release (protocol 1), which send one result per request.

Each message has `encode_<message>(message) -> dict` and a reader: the master reads what a
worker says with `read_<message>`, strictly (BadRequest naming the field: ids, hostname, pools,
sizes); the worker reads the master's answers with `decode_<message>`, leniently (a missing or
odd field gets its default).

Every worker message carries its identity (`worker_id`, `hostname`, `pools`, `max_tasks`,
`prefetch`) so any message is also a registration, `held`: the attempts it runs, whose leases
it renews, and `waiting`: the prefetched attempts it has not started yet (renewed, never
confirmed).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from nagare.engine.outputs import OutputError, check_outputs
from nagare.errors import BadRequest
from nagare.models import EXECUTOR_STEPS, Assignment, AttemptMetrics, Outcome, Resources
from nagare.patterns import HOSTNAME, NAME, OUTPUT_NAME, TASK_INSTANCE_ID, WORKER_ID

POOL = NAME
RESERVED_WORKER_IDS = frozenset({"local"})
MAX_POOLS = 32
MAX_TASKS = 256
MAX_HELD = 1024
MAX_RESULTS = MAX_TASKS  # results one poll may carry
MAX_LINES = 10_000
STREAMS = frozenset({"stdout", "stderr", "nagare"})
MAX_WAIT_SECONDS = 30.0
PROTOCOL = 2  # 2: a poll carries results; 1: results only through the `result` route


# ---------------------------------------------------------------- the messages


@dataclass(frozen=True)
class WorkerHello:
    """Who the worker is and what it holds; sent with every message (register, heartbeat)."""

    worker_id: str
    hostname: str
    pools: tuple[str, ...]
    max_tasks: int
    version: str = ""
    held: tuple[tuple[str, int], ...] = ()
    leaving: bool = False
    # tasks it takes beyond max_tasks right now, to start as slots free (engine.prefetch)
    prefetch: int = 0
    # prefetched attempts it holds, not started yet: renewed, never confirmed, so that they go
    # back to the queue without spending a retry if the worker dies before it starts them
    waiting: tuple[tuple[str, int], ...] = ()

    @property
    def capacity(self) -> int:
        """How many attempts the master may hand this worker in all."""
        return self.max_tasks + self.prefetch


@dataclass(frozen=True)
class Welcome:
    """The answer to `register`: the master's timings, which the worker follows."""

    worker_id: str
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    poll_wait_seconds: float = 10.0
    version: str = ""
    protocol: int = 1  # a master that does not say is of the first protocol


@dataclass(frozen=True)
class PollRequest:
    hello: WorkerHello
    wait_seconds: float  # the master answers at once when it has work or a kill, else then
    results: tuple[TaskResult, ...] = ()  # finished attempts, recorded before work is handed out


@dataclass
class Directives:
    """What the master tells a worker in answer to a poll or heartbeat."""

    tasks: list[Assignment] = field(default_factory=list)  # to run
    cancel: list[str] = field(default_factory=list)  # task instance ids to stop
    lost: list[str] = field(default_factory=list)  # ids it no longer holds: stop, do not report
    results: list[ResultAck] = field(default_factory=list)  # one per result the poll carried


@dataclass(frozen=True)
class LogBatch:
    worker_id: str
    task_instance_id: str
    attempt: int
    lines: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LogAck:
    """The answer to `log`: `cancel` when the task was killed meanwhile."""

    cancel: bool = False


@dataclass(frozen=True)
class TaskResult:
    worker_id: str
    task_instance_id: str
    attempt: int
    outcome: Outcome
    cancel_reason: str = ""
    lines: tuple[tuple[str, str], ...] = ()  # the attempt's last log lines, not shipped yet


@dataclass(frozen=True)
class ResultAck:
    """The answer to `result` (and, in a poll's answer, to each result it carried): the task's
    status once the outcome is recorded, or why it was refused (`refused`: the attempt is not
    the worker's, e.g. its lease ran out or the result was recorded already). Either way the
    worker is done with the result."""

    status: str = ""
    task_instance_id: str = ""
    attempt: int = 0
    refused: str = ""


# ---------------------------------------------------------------- register and heartbeat


def encode_hello(hello: WorkerHello) -> dict[str, Any]:
    return {
        "worker_id": hello.worker_id,
        "hostname": hello.hostname,
        "pools": list(hello.pools),
        "max_tasks": hello.max_tasks,
        "version": hello.version,
        "held": [list(h) for h in hello.held],
        "leaving": hello.leaving,
        "prefetch": hello.prefetch,
        "waiting": [list(w) for w in hello.waiting],
    }


def read_hello(body: Any) -> WorkerHello:
    data = _object(body)
    worker_id = _text(data, "worker_id", WORKER_ID, "letters, digits, '_', '.', ':' or '-'")
    if worker_id in RESERVED_WORKER_IDS:
        raise BadRequest(f"worker_id: '{worker_id}' is reserved for the master's own pools")
    pools = data.get("pools")
    if not isinstance(pools, list) or not 1 <= len(pools) <= MAX_POOLS:
        raise BadRequest(f"pools: expected a list of 1 to {MAX_POOLS} pool names, found {pools!r}")
    for pool in pools:
        if not isinstance(pool, str) or not POOL.match(pool):
            raise BadRequest(f"pools: expected pool names like 'gpu', found {pool!r}")
    return WorkerHello(
        worker_id=worker_id,
        hostname=_text(data, "hostname", HOSTNAME, "a host name"),
        pools=tuple(dict.fromkeys(pools)),
        max_tasks=_int(data, "max_tasks", 1, MAX_TASKS),
        version=str(data.get("version", ""))[:40],
        held=_held(data.get("held", [])),
        leaving=data.get("leaving") is True,
        prefetch=_int(data, "prefetch", 0, MAX_TASKS) if "prefetch" in data else 0,
        waiting=_held(data.get("waiting", []), "waiting"),
    )


def encode_welcome(welcome: Welcome) -> dict[str, Any]:
    return {
        "worker_id": welcome.worker_id,
        "lease_seconds": welcome.lease_seconds,
        "heartbeat_seconds": welcome.heartbeat_seconds,
        "poll_wait_seconds": welcome.poll_wait_seconds,
        "version": welcome.version,
        "protocol": welcome.protocol,
    }


def decode_welcome(data: dict[str, Any]) -> Welcome:
    defaults = Welcome("")
    return Welcome(
        worker_id=str(data.get("worker_id", "")),
        lease_seconds=_seconds(data, "lease_seconds", defaults.lease_seconds),
        heartbeat_seconds=_seconds(data, "heartbeat_seconds", defaults.heartbeat_seconds),
        poll_wait_seconds=_seconds(data, "poll_wait_seconds", defaults.poll_wait_seconds),
        version=str(data.get("version", "")),
        protocol=_whole(data, "protocol", 1),
    )


# ---------------------------------------------------------------- poll


def encode_poll(request: PollRequest) -> dict[str, Any]:
    data = {**encode_hello(request.hello), "wait_seconds": request.wait_seconds}
    if request.results:
        data["results"] = [encode_result(r) for r in request.results]
    return data


def read_poll(body: Any, max_line_chars: int = 65536) -> PollRequest:
    hello = read_hello(body)
    data = _object(body)
    wait = data.get("wait_seconds", 10)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or wait < 0:
        raise BadRequest(f"wait_seconds: expected a number of seconds >= 0, found {wait!r}")
    results = _results(data.get("results", []), hello.worker_id, max_line_chars)
    return PollRequest(hello, min(float(wait), MAX_WAIT_SECONDS), results)


def _results(value: Any, worker_id: str, max_line_chars: int) -> tuple[TaskResult, ...]:
    if not isinstance(value, list) or len(value) > MAX_RESULTS:
        raise BadRequest(f"results: expected a list of at most {MAX_RESULTS} results")
    results = []
    for index, entry in enumerate(value):
        try:
            result = read_result(entry, max_line_chars)
        except BadRequest as err:
            raise BadRequest(f"results[{index}]: {err.message}") from None
        if result.worker_id != worker_id:
            raise BadRequest(
                f"results[{index}]: a result of worker '{result.worker_id}' in a poll of "
                f"'{worker_id}'"
            )
        results.append(result)
    return tuple(results)


def encode_directives(directives: Directives) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tasks": [encode_assignment(a) for a in directives.tasks],
        "cancel": list(directives.cancel),
        "lost": list(directives.lost),
    }
    if directives.results:
        data["results"] = [encode_result_ack(ack) for ack in directives.results]
    return data


def decode_directives(data: dict[str, Any]) -> Directives:
    return Directives(
        tasks=[decode_assignment(t) for t in _list(data, "tasks") if isinstance(t, dict)],
        cancel=[i for i in _list(data, "cancel") if isinstance(i, str)],
        lost=[i for i in _list(data, "lost") if isinstance(i, str)],
        results=[decode_result_ack(a) for a in _list(data, "results") if isinstance(a, dict)],
    )


_ASSIGNMENT_FIELDS = tuple(Assignment.__dataclass_fields__)


def encode_assignment(assignment: Assignment) -> dict[str, Any]:
    """Its fields as they are (no deep copy: the answer is encoded at once)."""
    data = {name: getattr(assignment, name) for name in _ASSIGNMENT_FIELDS}
    data["volumes"] = list(assignment.volumes)
    data["secrets"] = list(assignment.secrets)
    if assignment.resources is not None:
        data["resources"] = asdict(assignment.resources)
    return data


def decode_assignment(data: dict[str, Any]) -> Assignment:
    fields = dict(data)
    resources = fields.get("resources")
    fields["resources"] = Resources(**resources) if isinstance(resources, dict) else None
    fields["volumes"] = tuple(fields.get("volumes") or ())
    fields["env"] = {str(k): str(v) for k, v in (fields.get("env") or {}).items()}
    fields["secrets"] = tuple(str(v) for v in (fields.get("secrets") or ()))
    known = Assignment.__dataclass_fields__
    return Assignment(**{k: v for k, v in fields.items() if k in known})


# ---------------------------------------------------------------- log


def encode_log_batch(batch: LogBatch) -> dict[str, Any]:
    return {
        "worker_id": batch.worker_id,
        "task_instance_id": batch.task_instance_id,
        "attempt": batch.attempt,
        "lines": [[stream, line] for stream, line in batch.lines],
    }


def read_log_batch(body: Any, max_line_chars: int) -> LogBatch:
    data = _object(body)
    return LogBatch(
        worker_id=_text(data, "worker_id", WORKER_ID, "a worker id"),
        task_instance_id=_text(data, "task_instance_id", TASK_INSTANCE_ID, "a task instance id"),
        attempt=_int(data, "attempt", 1, 1_000_000),
        lines=_lines(data.get("lines"), max_line_chars),
    )


def _lines(lines: Any, max_line_chars: int) -> tuple[tuple[str, str], ...]:
    if not isinstance(lines, list) or len(lines) > MAX_LINES:
        raise BadRequest(f"lines: expected a list of at most {MAX_LINES} [stream, text] pairs")
    parsed = []
    for entry in lines:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or entry[0] not in STREAMS
            or not isinstance(entry[1], str)
        ):
            raise BadRequest(
                "lines: expected [stream, text] pairs with stream stdout, stderr or nagare, "
                f"found {str(entry)[:80]!r}"
            )
        parsed.append((str(entry[0]), entry[1][:max_line_chars]))
    return tuple(parsed)


def encode_log_ack(ack: LogAck) -> dict[str, Any]:
    return {"cancel": ack.cancel}


def decode_log_ack(data: dict[str, Any]) -> LogAck:
    return LogAck(cancel=data.get("cancel") is True)


# ---------------------------------------------------------------- result


def encode_result(result: TaskResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "worker_id": result.worker_id,
        "task_instance_id": result.task_instance_id,
        "attempt": result.attempt,
        "outcome": encode_outcome(result.outcome),
        "cancel_reason": result.cancel_reason,
    }
    if result.lines:
        data["lines"] = [[stream, line] for stream, line in result.lines]
    return data


def read_result(body: Any, max_line_chars: int = 65536) -> TaskResult:
    data = _object(body)
    outcome = data.get("outcome")
    if not isinstance(outcome, dict):
        raise BadRequest("outcome: expected an object {exit_code, timed_out, cancelled, ...}")
    reason = data.get("cancel_reason", "")
    return TaskResult(
        worker_id=_text(data, "worker_id", WORKER_ID, "a worker id"),
        task_instance_id=_text(data, "task_instance_id", TASK_INSTANCE_ID, "a task instance id"),
        attempt=_int(data, "attempt", 1, 1_000_000),
        outcome=decode_outcome(outcome),
        cancel_reason=reason[:200] if isinstance(reason, str) else "",
        lines=_lines(data.get("lines", []), max_line_chars),
    )


def encode_outcome(outcome: Outcome) -> dict[str, Any]:
    """Without `stdout` (the master captures it from the streamed log) and `skipped` (decided
    by the master, never by a worker)."""
    metrics = outcome.metrics
    data: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "timed_out": outcome.timed_out,
        "cancelled": outcome.cancelled,
        "error": outcome.error,
        "metrics": {
            "duration_ms": metrics.duration_ms,
            "cpu_user_ms": metrics.cpu_user_ms,
            "cpu_system_ms": metrics.cpu_system_ms,
            "peak_memory_bytes": metrics.peak_memory_bytes,
            "exit_code": metrics.exit_code,
            "executor_type": metrics.executor_type,
        },
    }
    if outcome.outputs:
        data["outputs"] = outcome.outputs
    return data


def _outputs(value: Any) -> tuple[dict[str, str] | None, str]:
    """A result's outputs, or why they are refused (the task then fails with it)."""
    if value is None:
        return None, ""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None, "outputs: expected an object of names to strings"
    bad = [k for k in value if not OUTPUT_NAME.match(k)]
    if bad:
        return None, f"outputs: '{bad[0][:60]}' is not a valid output name"
    try:
        check_outputs(value)
    except OutputError as exc:
        return None, f"outputs: {exc}"
    return dict(value) or None, ""


def decode_outcome(data: dict[str, Any]) -> Outcome:
    raw_metrics = data.get("metrics")
    metrics: dict[str, Any] = raw_metrics if isinstance(raw_metrics, dict) else {}
    raw_exit = data.get("exit_code")
    exit_code = raw_exit if isinstance(raw_exit, int) and not isinstance(raw_exit, bool) else None
    outputs, refused = _outputs(data.get("outputs"))
    return Outcome(
        exit_code=exit_code,
        timed_out=data.get("timed_out") is True,
        cancelled=data.get("cancelled") is True,
        error=str(data.get("error") or refused or "")[:2000],
        outputs=outputs,
        metrics=AttemptMetrics(
            duration_ms=_number(metrics, "duration_ms"),
            cpu_user_ms=_number(metrics, "cpu_user_ms"),
            cpu_system_ms=_number(metrics, "cpu_system_ms"),
            peak_memory_bytes=_number(metrics, "peak_memory_bytes"),
            exit_code=exit_code,
            executor_type=_executor_type(metrics.get("executor_type")),
        ),
    )


def _executor_type(value: Any) -> str:
    """docker, a step type with an executor of its own (mail, http, ...), else local."""
    if value == "docker" or value in EXECUTOR_STEPS:
        return str(value)
    return "local"


def encode_result_ack(ack: ResultAck) -> dict[str, Any]:
    data: dict[str, Any] = {"status": ack.status}
    if ack.task_instance_id:
        data.update(task_instance_id=ack.task_instance_id, attempt=ack.attempt)
    if ack.refused:
        data["refused"] = ack.refused
    return data


def decode_result_ack(data: dict[str, Any]) -> ResultAck:
    return ResultAck(
        status=str(data.get("status", "")),
        task_instance_id=str(data.get("task_instance_id", "")),
        attempt=_whole(data, "attempt", 0),
        refused=str(data.get("refused", "")),
    )


# ---------------------------------------------------------------- field readers


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    return body


def _text(data: dict[str, Any], name: str, pattern: re.Pattern[str], expected: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise BadRequest(f"{name}: expected {expected}, found {str(value)[:80]!r}")
    return value


def _int(data: dict[str, Any], name: str, low: int, high: int) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{name}: expected a whole number from {low} to {high}, found {value!r}")
    return value


def _number(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def _held(value: Any, name: str = "held") -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or len(value) > MAX_HELD:
        raise BadRequest(
            f"{name}: expected a list of at most {MAX_HELD} [task_instance_id, attempt]"
        )
    held = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not TASK_INSTANCE_ID.match(entry[0])
            or isinstance(entry[1], bool)
            or not isinstance(entry[1], int)
        ):
            raise BadRequest(f"{name}: expected [task_instance_id, attempt] pairs, found {entry!r}")
        held.append((entry[0], entry[1]))
    return tuple(held)


def _seconds(data: dict[str, Any], name: str, default: float) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return default
    return float(value)


def _whole(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return default
    return value


def _list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    return value if isinstance(value, list) else []
