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
