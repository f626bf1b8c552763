"""How an attempt's outcome becomes its task's next state: success, a retry (and when), failed,
cancelled, or queued again without spending a retry (a shutdown, a worker handing it back).
Pure. Local pools and the cluster coordinator share it, so a remote task behaves exactly like a
local one."""

from __future__ import annotations

from nagare.models import AttemptFinish, Claim, Outcome, TaskStatus

SHUTDOWN_REASON = "server shutdown"
HANDED_BACK_REASON = "worker shutdown"
UNCONFIRMED_REASON = "worker lost before it confirmed the task"
# cancellations that put the task back in the queue without spending a retry
REQUEUE_MESSAGES = {
    SHUTDOWN_REASON: "interrupted by server shutdown; the task runs again on the next start",
    HANDED_BACK_REASON: "handed back by its worker (shutting down); the task runs again",
    UNCONFIRMED_REASON: "its worker was lost before it confirmed the task; the task runs again "
    "without spending a retry",
}


def attempt_finish(
    claim: Claim, outcome: Outcome, now: int, cancel_reason: str = ""
) -> AttemptFinish:
    """How the attempt ended, as the store records it (the task's timeout and retry delay come
    from its definition in the run's DAG version)."""
    definition = claim.definition
    timeout = definition.timeout_seconds if definition else 0
    retry_delay = definition.retry_delay_seconds if definition else 0
    status, attempt_status, message, extra, ready_at = decide(
        claim, outcome, cancel_reason, timeout, retry_delay, now
    )
    return AttemptFinish(
        task_instance_id=claim.task.id,
        attempt=claim.attempt,
        status=status,
        attempt_status=attempt_status,
        metrics=outcome.metrics,
        now=now,
        timed_out=outcome.timed_out,
        message=message,
        ready_at=ready_at,
        extra_attempts=extra,
        outputs=outcome.outputs if status is TaskStatus.SUCCESS else None,
    )


def decide(
    claim: Claim, outcome: Outcome, cancel_reason: str, timeout: float, retry_delay: float, now: int
) -> tuple[TaskStatus, TaskStatus, str, int, int | None]:
    """(task status, attempt status, message, extra attempts granted, ready_at) for an outcome."""
    task = claim.task
    if outcome.skipped:  # it never ran (its `when:` was false)
        return TaskStatus.SKIPPED, TaskStatus.SKIPPED, outcome.skipped, 0, None
    if outcome.succeeded:
        return TaskStatus.SUCCESS, TaskStatus.SUCCESS, "", 0, None
    if outcome.cancelled and cancel_reason in REQUEUE_MESSAGES:
        return TaskStatus.QUEUED, TaskStatus.FAILED, REQUEUE_MESSAGES[cancel_reason], 1, None
    if outcome.cancelled:
        return TaskStatus.CANCELLED, TaskStatus.CANCELLED, "killed", 0, None
    message = failure_message(outcome, timeout)
    status = after_failure(claim.attempt, task.max_attempts)
    if status is TaskStatus.UP_FOR_RETRY:
        ready_at = now + int(retry_delay * 1000)
        message += f"; retrying (attempt {claim.attempt + 1} of {task.max_attempts})"
        return status, TaskStatus.FAILED, message, 0, ready_at
    return status, TaskStatus.FAILED, message, 0, None


def failure_message(outcome: Outcome, timeout: float) -> str:
    if outcome.timed_out:
        killed = "container" if outcome.metrics.executor_type == "docker" else "process group"
        return f"timed out after {timeout:g}s: the {killed} was killed"
    if outcome.error:
        return outcome.error
    return f"exit code {outcome.exit_code}"


def after_failure(attempt: int, max_attempts: int) -> TaskStatus:
    """A failed or timed-out attempt: retry while attempts remain."""
    return TaskStatus.UP_FOR_RETRY if attempt < max_attempts else TaskStatus.FAILED
