"""Test helper: runs, task instances and attempts planted straight into SQLite at known times.

Finished attempts and runs also go through the store's own roll-up and counter code
(`AttemptTally`, `count_run`), exactly as when the engine closes them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from nagare.models import AttemptMetrics, DagDef, TaskDef
from nagare.store import Store
from nagare.store.metrics import AttemptTally, count_run
from nagare.store.schema import ROLLUP_SQL

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass
class Attempt:
    task_id: str
    completed_at: int | None  # None: still running
    duration_ms: int = 10
    status: str = "success"
    memory: int = 1_000_000
    cpu_user_ms: int = 1
    cpu_system_ms: int = 0
    exit_code: int | None = 0
    attempt: int = 1
    pool: str = "default"


def plant_run(
    store: Store,
    dag_id: str,
    created_at: int,
    attempts: list[Attempt],
    status: str = "success",
    run_id: str = "",
) -> tuple[str, dict[str, str]]:
    """Insert a run with its task instances and attempts; returns the run id and the instance
    id of each task id."""
    run_id = run_id or f"{dag_id}__manual__{uuid.uuid4().hex[:12]}"
    tasks = sorted({a.task_id for a in attempts}) or ["t"]
    dag = DagDef(dag_id, tasks=tuple(TaskDef(t.split("[")[0]) for t in dict.fromkeys(tasks)))
    version = store.dags.save_version(dag, created_at)
    ids = {t: uuid.uuid4().hex[:20] for t in tasks}
    finished_at = max((a.completed_at or created_at for a in attempts), default=created_at)
    done = status in ("success", "failed", "cancelled", "skipped")
    with store.db.write() as conn:
        conn.execute(
            "INSERT INTO runs(run_id, dag_id, status, trigger, execution_date, conf, dag_version, "
            "killed, created_at, started_at, completed_at) VALUES (?,?,?,?,?,'{}',?,0,?,?,?)",
            (
                run_id,
                dag_id,
                status,
                "manual",
                created_at,
                version,
                created_at,
                created_at,
                finished_at if done else None,
            ),
        )
        for position, task_id in enumerate(tasks):
            own = [a for a in attempts if a.task_id == task_id]
            if not own:
                continue
            last = max(own, key=lambda a: a.attempt)
            conn.execute(
                "INSERT INTO task_instances(id, run_id, task_id, base_task_id, map_index, "
                "position, status, attempt, max_attempts, pool, worker, command, started_at, "
                "completed_at) VALUES (?,?,?,?,?,?,?,?,?,?,'local','true',?,?)",
                (
                    ids[task_id],
                    run_id,
                    task_id,
                    task_id.split("[")[0],
                    int(task_id.split("[")[1][:-1]) if "[" in task_id else None,
                    position,
                    last.status if last.completed_at is not None else "running",
                    last.attempt,
                    last.attempt,
                    last.pool,
                    created_at,
                    last.completed_at,
                ),
            )
        for a in attempts:
            _insert_attempt(conn, ids[a.task_id], run_id, dag_id, a, created_at)
        if done:
            count_run(conn, dag_id, status)
    return run_id, ids


def _insert_attempt(conn, instance_id, run_id, dag_id, a, created_at) -> None:  # type: ignore[no-untyped-def]
    finished = a.completed_at is not None
    conn.execute(
        "INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, status, "
        "worker, executor_type, started_at, completed_at, exit_code, duration_ms, cpu_user_ms, "
        "cpu_system_ms, peak_memory_bytes) VALUES (?,?,?,?,?,?,'local','local',?,?,?,?,?,?,?)",
        (
            instance_id,
            a.attempt,
            run_id,
            dag_id,
            a.task_id,
            a.status if finished else "running",
            (a.completed_at - a.duration_ms) if finished else created_at,
            a.completed_at,
            a.exit_code if finished else None,
            a.duration_ms if finished else None,
            a.cpu_user_ms if finished else None,
            a.cpu_system_ms if finished else None,
            a.memory if finished else None,
        ),
    )
    if finished:
        metrics = AttemptMetrics(
            duration_ms=a.duration_ms,
            cpu_user_ms=a.cpu_user_ms,
            cpu_system_ms=a.cpu_system_ms,
            peak_memory_bytes=a.memory,
            exit_code=a.exit_code,
        )
        base_task, pool = conn.execute(
            "SELECT base_task_id, pool FROM task_instances WHERE id=?", (instance_id,)
        ).fetchone()
        tally = AttemptTally()
        tally.add(dag_id, base_task, pool, a.status, metrics, a.completed_at)
        tally.write(conn)


def rebuild_rollup(store: Store) -> None:
    """Recompute the whole metric roll-up from the attempt rows: the oracle the incremental
    roll-up (closing attempts, retention) is compared with."""
    with store.db.write() as conn:
        conn.execute("DELETE FROM metric_rollup")
        for sql in ROLLUP_SQL:
            conn.execute(sql)


def undo_migration_11(conn: Any) -> None:
    """Back to the schema before the steps that wait (migration 11): what a test of an older
    schema's upgrade drops first (a lower user_version runs the migration again), with what
    the migrations after it added (13: users, API keys, sessions, the audit log)."""
    undo_migration_13(conn)
    conn.execute("DROP INDEX ti_waiting")
    conn.execute("DROP INDEX runs_parent")
    for column in ("wait", "wait_until", "child_run_id"):
        conn.execute(f"ALTER TABLE task_instances DROP COLUMN {column}")
    for column in ("parent_run_id", "parent_task_id", "outputs"):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")


def undo_migration_13(conn: Any) -> None:
    """Back to the schema before users, API keys, sessions and the audit log (migration 13),
    with what the migrations after it added (14: the masters' rows)."""
    undo_migration_14(conn)
    for table in ("sessions", "api_keys", "users", "audit_log"):
        conn.execute(f"DROP TABLE {table}")


def undo_migration_14(conn: Any) -> None:
    """Back to the schema before the masters' rows (migration 14), with what the migrations
    after it added (15: log chunks; 16 changes nothing on SQLite)."""
    undo_migration_15(conn)
    conn.execute("DROP TABLE masters")


def undo_migration_15(conn: Any) -> None:
    """Back to the schema before the log chunks (migration 15)."""
    conn.execute("DROP TABLE log_chunks")
