"""How an attempt's outcome becomes its task's next state: success, a retry (and when), failed,
cancelled, skipped (a precondition not met), or queued again without spending a retry (a
shutdown, a worker handing it back). Pure, but for the jitter source of the retry delay.
Local pools and the cluster coordinator share it, so a remote task behaves exactly like a local
one."""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import NamedTuple

from nagare.engine.conditions import (
    failure_allowed,
    precondition_reason,
    retry_delay_ms,
    retryable,
)
from nagare.models import AttemptFinish, Claim, Outcome, TaskDef, TaskStatus

SHUTDOWN_REASON = "server shutdown"
HANDED_BACK_REASON = "worker shutdown"
UNCONFIRMED_REASON = "worker lost before it confirmed the task"
RETURNED_REASON = "not started by its worker"  # a prefetched task that waited too long
# cancellations that put the task back in the queue without spending a retry
REQUEUE_MESSAGES = {
    SHUTDOWN_REASON: "interrupted by server shutdown; the task runs again on the next start",
    HANDED_BACK_REASON: "handed back by its worker (shutting down); the task runs again",
    UNCONFIRMED_REASON: "its worker was lost before it confirmed the task; the task runs again "
    "without spending a retry",
    RETURNED_REASON: "waited on its worker for a free slot and was handed back unstarted; the "
    "task runs again without spending a retry",
}


def attempt_finish(
    claim: Claim,
    outcome: Outcome,
    now: int,
    cancel_reason: str = "",
    tail: str = "",
    random: Callable[[], float] = _random.random,
) -> AttemptFinish:
    """How the attempt ended, as the store records it (the task's timeout, retry policy,
    preconditions and allowed failure come from its definition in the run's DAG version).
    `tail`: the last lines of the attempt's output (a precondition reports there); `random`:
    the jitter source of the retry delay."""
    definition = claim.definition or TaskDef(task_id=claim.task.base_task_id)
    ended = decide(claim, outcome, cancel_reason, definition, now, tail, random)
    return AttemptFinish(
        task_instance_id=claim.task.id,
        attempt=claim.attempt,
        status=ended.status,
        attempt_status=ended.attempt_status,
        metrics=outcome.metrics,
        now=now,
        timed_out=outcome.timed_out,
        message=ended.message,
        ready_at=ended.ready_at,
        extra_attempts=ended.extra_attempts,
        allowed_failure=ended.allowed_failure,
        outputs=outcome.outputs if ended.status is TaskStatus.SUCCESS else None,
    )


class Ended(NamedTuple):
    status: TaskStatus  # the task's next status
    attempt_status: TaskStatus
    message: str
    extra_attempts: int = 0
    ready_at: int | None = None
    allowed_failure: bool = False


def decide(
    claim: Claim,
    outcome: Outcome,
    cancel_reason: str,
    definition: TaskDef,
    now: int,
    tail: str = "",
    random: Callable[[], float] = _random.random,
) -> Ended:
    """The task's next state for an attempt's outcome."""
    if outcome.skipped:  # it never ran (its `when:` was false)
        return Ended(TaskStatus.SKIPPED, TaskStatus.SKIPPED, outcome.skipped)
    if outcome.succeeded:
        return Ended(TaskStatus.SUCCESS, TaskStatus.SUCCESS, "")
    if outcome.cancelled and cancel_reason in REQUEUE_MESSAGES:
        return Ended(TaskStatus.QUEUED, TaskStatus.FAILED, REQUEUE_MESSAGES[cancel_reason], 1)
    if outcome.cancelled:
        return Ended(TaskStatus.CANCELLED, TaskStatus.CANCELLED, "killed")
    if definition.preconditions and not outcome.timed_out and not outcome.error:
        reason = precondition_reason(outcome.exit_code, tail)
        if reason:
            return Ended(TaskStatus.SKIPPED, TaskStatus.SKIPPED, reason)
    return _failed(claim, outcome, definition, now, random)


def _failed(
    claim: Claim, outcome: Outcome, definition: TaskDef, now: int, random: Callable[[], float]
) -> Ended:
    message = failure_message(outcome, definition.timeout_seconds)
    code, timed_out = outcome.exit_code, outcome.timed_out
    status = after_failure(claim.attempt, claim.task.max_attempts)
    if status is TaskStatus.UP_FOR_RETRY and retryable(
        definition.retry_on_exit_codes, definition.retry_on_timeout, code, timed_out
    ):
        delay = retry_delay_ms(
            definition.retry_delay_seconds,
            definition.retry_backoff,
            definition.retry_max_delay_seconds,
            claim.attempt,
            random,
        )
        message += f"; retrying (attempt {claim.attempt + 1} of {claim.task.max_attempts})"
        return Ended(status, TaskStatus.FAILED, message, ready_at=now + delay)
    if status is TaskStatus.UP_FOR_RETRY:
        message += "; not retried (" + (
            "retry_on_timeout is false)" if timed_out else "retry_on_exit_codes does not list it)"
        )
    allowed = failure_allowed(definition.allow_failure, code, timed_out)
    if allowed:
        message += "; allowed to fail (allow_failure): counts as a success"
    return Ended(TaskStatus.FAILED, TaskStatus.FAILED, message, allowed_failure=allowed)


# What a timeout stopped, per executor type (a local process group otherwise).
_TIMEOUT_ENDS = {
    "docker": "the container was killed",
    "http": "the request was abandoned (its connection closed)",
    "chat": "the request was abandoned (its connection closed)",
}


def failure_message(outcome: Outcome, timeout: float) -> str:
    if outcome.timed_out and outcome.error and outcome.metrics.executor_type == "engine":
        return outcome.error  # a step that waits: what it waited for (nothing was killed)
    if outcome.timed_out:
        return f"timed out after {timeout:g}s: {_stopped(outcome.metrics.executor_type)}"
    if outcome.error:
        return outcome.error
    return f"exit code {outcome.exit_code}"


def _stopped(executor_type: str) -> str:
    """What a timeout did to an attempt of this executor."""
    if executor_type in _TIMEOUT_ENDS:
        return _TIMEOUT_ENDS[executor_type]
    if executor_type == "local":
        return "the process group was killed"
    return f"the {executor_type} step was stopped"


def after_failure(attempt: int, max_attempts: int) -> TaskStatus:
    """A failed or timed-out attempt: retry while attempts remain."""
    return TaskStatus.UP_FOR_RETRY if attempt < max_attempts else TaskStatus.FAILED
