"""Decisions of the run rules, as pure functions over plain data: whether a new run may start
under its DAG's `max_active_runs` / `overlap_policy`, which waiting runs a freed slot lets
start, which handlers a finished run gets and when each of them runs.

No clock is needed: every decision depends on counts and order only (waiting runs are given
oldest first, which is the order they were created in)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from nagare.models import (
    TERMINAL_TASK,
    DagDef,
    HandlerKind,
    OverlapPolicy,
    RunStatus,
    TaskInstance,
    TaskStatus,
)

SUPERSEDED = "superseded"


class Admission(StrEnum):
    START = "start"
    WAIT = "wait"
    SKIP = "skip"


@dataclass(frozen=True)
class OverlapDecision:
    admission: Admission
    superseded: tuple[str, ...] = ()  # waiting runs to cancel (reason "superseded")
    reason: str = ""


def admit(
    max_active: int, policy: OverlapPolicy, active: int, waiting: Sequence[str]
) -> OverlapDecision:
    """What a new run does, given how many runs of its DAG are active (started and not ended,
    handlers included) and which wait (oldest first). `max_active` 0 is unlimited. A run that
    could start still waits behind older waiting runs (first come, first served)."""
    if max_active <= 0 or (active < max_active and not waiting):
        return OverlapDecision(Admission.START)
    if policy is OverlapPolicy.SKIP:
        reason = (
            f"max_active_runs ({max_active}) reached: {active} active "
            f"{'run' if active == 1 else 'runs'} (overlap_policy: skip)"
        )
        return OverlapDecision(Admission.SKIP, reason=reason)
    if policy is OverlapPolicy.LATEST:
        return OverlapDecision(Admission.WAIT, superseded=tuple(waiting))
    return OverlapDecision(Admission.WAIT)


def to_release(max_active: int, active: int, waiting: Sequence[str]) -> list[str]:
    """The waiting runs (oldest first) that may start now that `active` runs are active."""
    if max_active <= 0:
        return list(waiting)
    return list(waiting[: max(0, max_active - active)])


# ---------------------------------------------------------------- handlers

HANDLER_OF_STATUS = {
    RunStatus.SUCCESS: HandlerKind.SUCCESS,
    RunStatus.FAILED: HandlerKind.FAILURE,
    RunStatus.CANCELLED: HandlerKind.CANCEL,
}


def handlers_for(dag: DagDef, status: RunStatus) -> list[HandlerKind]:
    """The handlers a run that ended with `status` runs, in order (`exit` last)."""
    kinds = []
    own = HANDLER_OF_STATUS.get(status)
    if own is not None and own in dag.handler_on:
        kinds.append(own)
    if HandlerKind.EXIT in dag.handler_on and status in HANDLER_OF_STATUS:
        kinds.append(HandlerKind.EXIT)
    return kinds


def handler_instances(
    dag: DagDef, run_id: str, status: RunStatus, now: int, new_id: Callable[[], str]
) -> list[TaskInstance]:
    """The task instances of a run's handlers: the first queued, `exit` pending behind it."""
    result = []
    for index, kind in enumerate(handlers_for(dag, status)):
        definition = dag.handler_on[kind]
        first = index == 0
        result.append(
            TaskInstance(
                id=new_id(),
                run_id=run_id,
                task_id=kind.task_id,
                base_task_id=kind.task_id,
                status=TaskStatus.QUEUED if first else TaskStatus.PENDING,
                max_attempts=definition.max_attempts,
                pool=definition.instance_pool,
                command=definition.command,
                position=len(dag.tasks) + list(HandlerKind).index(kind),
                queued_at=now if first else None,
            )
        )
    return result


@dataclass(frozen=True)
class HandlerStep:
    queue: tuple[str, ...] = ()  # handler task ids to queue now
    done: bool = False  # every handler has ended: the run is no longer active


def handler_step(statuses: Mapping[str, TaskStatus]) -> HandlerStep:
    """Given the statuses of a run's handler tasks (task id -> status): `exit` runs once the
    other handler has ended (however it ended); the run is done when all have ended."""
    exit_id = HandlerKind.EXIT.task_id
    others = [s for t, s in statuses.items() if t != exit_id]
    exit_status = statuses.get(exit_id)
    if exit_status is TaskStatus.PENDING and all(s in TERMINAL_TASK for s in others):
        return HandlerStep(queue=(exit_id,))
    return HandlerStep(done=all(s in TERMINAL_TASK for s in statuses.values()))
