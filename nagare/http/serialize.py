"""Domain objects -> the API's JSON shapes (snake_case, lists never null, UTC `Z` times)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from nagare.clock import to_iso
from nagare.cron import describe, parse_schedule
from nagare.models import Attempt, AttemptMetrics, DagDef, Run, TaskDef, TaskInstance


def run_json(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "status": str(run.status),
        "trigger": str(run.trigger),
        "execution_date": to_iso(run.execution_date),
        "conf": run.conf,
        "created_at": to_iso(run.created_at),
        "started_at": to_iso(run.started_at),
        "completed_at": to_iso(run.completed_at),
        "task_counts": run.task_counts,
    }


def metrics_json(metrics: AttemptMetrics | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {
        "duration_ms": metrics.duration_ms,
        "cpu_user_ms": metrics.cpu_user_ms,
        "cpu_system_ms": metrics.cpu_system_ms,
        "peak_memory_bytes": metrics.peak_memory_bytes,
        "exit_code": metrics.exit_code,
        "executor_type": str(metrics.executor_type),
    }


def task_json(task: TaskInstance) -> dict[str, Any]:
    return {
        "id": task.id,
        "run_id": task.run_id,
        "task_id": task.task_id,
        "base_task_id": task.base_task_id,
        "map_index": task.map_index,
        "item": json.loads(task.item) if task.item is not None else None,
        "status": str(task.status),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "pool": task.pool,
        "worker": task.worker or None,
        "command": task.command,
        "exit_code": task.exit_code,
        "timed_out": task.timed_out,
        "queued_at": to_iso(task.queued_at),
        "started_at": to_iso(task.started_at),
        "completed_at": to_iso(task.completed_at),
        "retry_at": to_iso(task.ready_at) if task.status == "up_for_retry" else None,
        "message": task.message,
        "output_tail": task.output_tail,
        "metrics": metrics_json(task.metrics),
    }


def attempt_json(attempt: Attempt, task: TaskInstance) -> dict[str, Any]:
    return {
        "id": task.id,
        "run_id": task.run_id,
        "task_id": task.task_id,
        "attempt": attempt.attempt,
        "status": str(attempt.status),
        "worker": attempt.worker,
        "exit_code": attempt.exit_code,
        "timed_out": attempt.timed_out,
        "started_at": to_iso(attempt.started_at),
        "completed_at": to_iso(attempt.completed_at),
        "message": attempt.error,
        "metrics": metrics_json(attempt.metrics),
    }


def task_def_json(task: TaskDef) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "type": str(task.type),
        "command": task.command,
        "depends_on": list(task.depends_on),
        "pool": task.pool,
        "retries": task.retries,
        "retry_delay_seconds": task.retry_delay_seconds,
        "timeout_seconds": task.timeout_seconds or None,
        "env": sorted(task.env),
    }
    if task.map_over:
        data["map_over"] = task.map_over
    if task.dag_id:
        data["dag_id"] = task.dag_id
    if task.image:
        data["image"] = task.image
        data["workdir"] = task.workdir
        data["volumes"] = list(task.volumes)
        if task.resources:
            data["resources"] = asdict(task.resources)
    return data


def dag_json(
    dag: DagDef, paused: bool, last_run: Run | None, now: int, file: str
) -> dict[str, Any]:
    """A DAG; env values and webhook secrets are never returned (only env names)."""
    next_run = None
    if dag.is_scheduled and not paused:
        next_run = to_iso(parse_schedule(dag.schedule, dag.timezone).next_after(now))
    trigger = None
    if dag.trigger is not None:
        trigger = {
            "type": dag.trigger.type,
            "path": dag.trigger.path,
            "method": dag.trigger.method,
            "signed": bool(dag.trigger.secret or dag.trigger.secret_env),
            "extract_payload": sorted(dag.trigger.extract_payload),
        }
    return {
        "dag_id": dag.dag_id,
        "description": dag.description,
        "schedule": dag.schedule,
        "schedule_description": describe(dag.schedule),
        "timezone": dag.timezone or None,
        "catchup": dag.catchup,
        "paused": paused,
        "file": file,
        "next_run_at": next_run,
        "last_run": run_json(last_run) if last_run else None,
        "env": sorted(dag.env),
        "tasks": [task_def_json(t) for t in dag.tasks],
        "trigger": trigger,
    }
