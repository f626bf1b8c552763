"""SQLite rows -> domain dataclasses."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from nagare.models import (
    Attempt,
    AttemptMetrics,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    Trigger,
)

TASK_COLUMNS = (
    "ti.id, ti.run_id, ti.task_id, ti.base_task_id, ti.map_index, ti.item, ti.position, "
    "ti.status, ti.attempt, ti.max_attempts, ti.pool, ti.worker, ti.command, ti.exit_code, "
    "ti.timed_out, ti.queued_at, ti.started_at, ti.completed_at, ti.ready_at, ti.output_tail, "
    "ti.message, ti.outputs, ti.allowed_failure, ti.child_run_id"
)
METRIC_COLUMNS = (
    "a.duration_ms, a.cpu_user_ms, a.cpu_system_ms, a.peak_memory_bytes, a.exit_code AS a_exit, "
    "a.executor_type, a.completed_at AS a_completed"
)


def run_from_row(row: sqlite3.Row) -> Run:
    return Run(
        run_id=row["run_id"],
        dag_id=row["dag_id"],
        status=RunStatus(row["status"]),
        trigger=Trigger(row["trigger"]),
        execution_date=row["execution_date"],
        conf=json.loads(row["conf"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        dag_version=row["dag_version"],
        killed=bool(row["killed"]),
        params={} if row["params"] is None else json.loads(row["params"]),
        has_outputs=bool(row["has_outputs"]),
        reason=row["reason"],
        held=bool(row["held"]),
        deadline_at=row["deadline_at"],
        handling=bool(row["handling"]),
        failed_tasks=tuple(t for t in row["failed_tasks"].split(",") if t),
        warnings=row["warnings"],
        parent=(row["parent_run_id"], row["parent_task_id"]) if row["parent_run_id"] else None,
        outputs=None if row["outputs"] is None else json.loads(row["outputs"]),
    )


def task_from_row(row: sqlite3.Row) -> TaskInstance:
    task = TaskInstance(
        id=row["id"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        base_task_id=row["base_task_id"],
        status=TaskStatus(row["status"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        pool=row["pool"],
        map_index=row["map_index"],
        item=row["item"],
        worker=row["worker"],
        command=row["command"],
        exit_code=row["exit_code"],
        timed_out=bool(row["timed_out"]),
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        ready_at=row["ready_at"],
        output_tail=row["output_tail"],
        message=row["message"],
        position=row["position"],
        allowed_failure=bool(row["allowed_failure"]),
        child_run_id=row["child_run_id"] or "",
    )
    if row["outputs"] is not None:
        task.outputs = json.loads(row["outputs"])
    if "a_completed" in row.keys() and row["a_completed"] is not None:  # noqa: SIM118
        task.metrics = metrics_from_row(row, exit_key="a_exit")
    return task


def metrics_from_row(row: sqlite3.Row, exit_key: str = "exit_code") -> AttemptMetrics:
    return AttemptMetrics(
        duration_ms=row["duration_ms"] or 0,
        cpu_user_ms=row["cpu_user_ms"] or 0,
        cpu_system_ms=row["cpu_system_ms"] or 0,
        peak_memory_bytes=row["peak_memory_bytes"] or 0,
        exit_code=row[exit_key],
        executor_type=row["executor_type"],
    )


def attempt_from_row(row: sqlite3.Row) -> Attempt:
    metrics = metrics_from_row(row) if row["completed_at"] is not None else None
    return Attempt(
        task_instance_id=row["task_instance_id"],
        attempt=row["attempt"],
        status=TaskStatus(row["status"]),
        worker=row["worker"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        exit_code=row["exit_code"],
        timed_out=bool(row["timed_out"]),
        error=row["error"],
        pid=row["pid"],
        metrics=metrics,
    )


def insert_tasks(conn: sqlite3.Connection, tasks: Sequence[TaskInstance]) -> None:
    conn.executemany(
        "INSERT INTO task_instances(id, run_id, task_id, base_task_id, map_index, item, "
        "position, status, attempt, max_attempts, pool, command, queued_at, message) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                t.id,
                t.run_id,
                t.task_id,
                t.base_task_id,
                t.map_index,
                t.item,
                t.position,
                t.status,
                t.attempt,
                t.max_attempts,
                t.pool,
                t.command,
                t.queued_at,
                t.message,
            )
            for t in tasks
        ],
    )
