"""Plain records the store hands out or takes in."""

from __future__ import annotations

from dataclasses import dataclass

from nagare.models import AttemptMetrics, Run, TaskInstance, TaskStatus


@dataclass
class DagState:
    dag_id: str
    paused: bool
    watermark: int
    last_slot: int | None


@dataclass
class RunFilter:
    dag_id: str = ""
    status: str = ""
    trigger: str = ""


@dataclass
class Claim:
    """A task instance a worker slot now owns, with the attempt number it must report."""

    task: TaskInstance
    run: Run
    attempt: int


@dataclass
class Stats:
    active_runs: int
    failed_runs_24h: int
    total_runs: int
    queued_tasks: int
    running_tasks: int


@dataclass
class AttemptFinish:
    """How one attempt ended, as the store records it."""

    task_instance_id: str
    attempt: int
    status: TaskStatus  # the task's next status: success | failed | up_for_retry | queued
    attempt_status: TaskStatus  # the attempt row's own status
    metrics: AttemptMetrics
    now: int
    timed_out: bool = False
    message: str = ""
    output_tail: str = ""
    ready_at: int | None = None
    extra_attempts: int = 0

    @property
    def retry_at(self) -> int | None:
        """When the task may run again, if this attempt put it up for retry."""
        return self.ready_at if self.status is TaskStatus.UP_FOR_RETRY else None


@dataclass
class WorkerRecord:
    """A remote worker as the registry stores it; `running` counts the attempts it holds."""

    worker_id: str
    hostname: str
    pools: tuple[str, ...]
    max_tasks: int
    version: str
    state: str  # online | left (a worker that said goodbye); offline is derived from last_seen
    registered_at: int
    last_seen: int
    running: int = 0


@dataclass
class HeldAttempt:
    """An attempt a remote worker reports holding, as the master sees it now."""

    task_instance_id: str
    attempt: int
    cancel: bool  # the task was killed: the worker must stop it
    lost: bool  # not (or no longer) held by this worker: the worker must drop it
