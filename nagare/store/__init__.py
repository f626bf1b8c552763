"""The store: the only module that speaks SQL. Every state change is one short transaction of the
form `UPDATE ... WHERE id=? AND status IN (...)` with the row count checked (compare-and-set).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nagare.dagfile import dag_from_json, dag_to_json
from nagare.models import (
    STATUS_BY_VALUE,
    TASK_TRANSITIONS,
    Attempt,
    AttemptMetrics,
    DagDef,
    Run,
    RunStatus,
    TaskInstance,
    TaskState,
    TaskStatus,
)
from nagare.store.db import Database, DatabaseError
from nagare.store.rows import (
    METRIC_COLUMNS,
    TASK_COLUMNS,
    attempt_from_row,
    run_from_row,
    task_from_row,
)

__all__ = ["Database", "DatabaseError", "Store"]

LATEST_ATTEMPT = (
    "LEFT JOIN task_attempts a ON a.task_instance_id = ti.id AND a.attempt = ti.attempt "
)
ACTIVE_TASK = ("pending", "queued", "running", "up_for_retry")


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


def new_task_id() -> str:
    return uuid.uuid4().hex[:20]


class Store:
    def __init__(self, path: str) -> None:
        self.db = Database(path)
        self._dag_cache: dict[str, DagDef] = {}

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------ DAG versions and state

    def save_dag_version(self, dag: DagDef, now: int) -> str:
        text = dag_to_json(dag)
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        if digest not in self._dag_cache:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO dag_versions(hash, dag_id, definition, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (digest, dag.dag_id, text, now),
                )
            self._dag_cache[digest] = dag
        return digest

    def dag_version(self, digest: str) -> DagDef:
        cached = self._dag_cache.get(digest)
        if cached is not None:
            return cached
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT definition FROM dag_versions WHERE hash=?", (digest,)
            ).fetchone()
        if row is None:
            raise DatabaseError(f"DAG version {digest} is missing from the database")
        dag = dag_from_json(row["definition"])
        self._dag_cache[digest] = dag
        return dag

    def dag_states(self) -> dict[str, DagState]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM dag_state").fetchall()
        return {
            r["dag_id"]: DagState(r["dag_id"], bool(r["paused"]), r["watermark"], r["last_slot"])
            for r in rows
        }

    def ensure_dag_state(self, dag_id: str, now: int) -> DagState:
        """The DAG's state; a DAG seen for the first time gets its watermark (`now`) stored."""
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dag_state(dag_id, paused, watermark, updated_at) "
                "VALUES (?, 0, ?, ?)",
                (dag_id, now, now),
            )
            row = conn.execute("SELECT * FROM dag_state WHERE dag_id=?", (dag_id,)).fetchone()
        return DagState(dag_id, bool(row["paused"]), row["watermark"], row["last_slot"])

    def set_paused(self, dag_id: str, paused: bool, now: int) -> None:
        """Pause or activate; activating moves the watermark to `now`: paused slots are skipped."""
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dag_state(dag_id, paused, watermark, updated_at) "
                "VALUES (?, 0, ?, ?)",
                (dag_id, now, now),
            )
            if paused:
                conn.execute(
                    "UPDATE dag_state SET paused=1, updated_at=? WHERE dag_id=?", (now, dag_id)
                )
            else:
                conn.execute(
                    "UPDATE dag_state SET paused=0, watermark=?, last_slot=NULL, updated_at=? "
                    "WHERE dag_id=? AND paused=1",
                    (now, now, dag_id),
                )

    def set_last_slot(self, dag_id: str, slot: int, now: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE dag_state SET last_slot=?, updated_at=? WHERE dag_id=? AND "
                "(last_slot IS NULL OR last_slot < ?)",
                (slot, now, dag_id, slot),
            )

    # ------------------------------------------------------------ runs

    def create_run(self, run: Run, tasks: Sequence[TaskInstance]) -> bool:
        """Insert a run and its task instances; False when the run id exists already."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO runs(run_id, dag_id, status, trigger, execution_date, "
                "conf, dag_version, killed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    run.run_id,
                    run.dag_id,
                    run.status,
                    run.trigger,
                    run.execution_date,
                    json.dumps(run.conf),
                    run.dag_version,
                    run.created_at,
                ),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_tasks(conn, tasks)
        return True

    def run_exists(self, run_id: str) -> bool:
        with self.db.read() as conn:
            return (
                conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None
            )

    def get_run(self, run_id: str, counts: bool = True) -> Run | None:
        """A run; `counts=False` skips counting its tasks by status (the engine's hot path)."""
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return None
            run = run_from_row(row)
            if counts:
                run.task_counts = self._task_counts(conn, [run_id]).get(run_id, {})
        return run

    def list_runs(self, filt: RunFilter, page: int, limit: int) -> tuple[list[Run], int]:
        clauses, params = [], []
        for column in ("dag_id", "status", "trigger"):
            value = getattr(filt, column)
            if value:
                clauses.append(f"{column}=?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as conn:
            total = conn.execute(f"SELECT count(*) FROM runs {where}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM runs {where} ORDER BY created_at DESC, run_id DESC "
                "LIMIT ? OFFSET ?",
                [*params, limit, (page - 1) * limit],
            ).fetchall()
            runs = [run_from_row(r) for r in rows]
            counts = self._task_counts(conn, [r.run_id for r in runs])
        for run in runs:
            run.task_counts = counts.get(run.run_id, {})
        return runs, total

    def _task_counts(
        self, conn: sqlite3.Connection, run_ids: list[str]
    ) -> dict[str, dict[str, int]]:
        if not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        rows = conn.execute(
            f"SELECT run_id, status, count(*) AS n FROM task_instances WHERE run_id IN ({marks}) "
            "GROUP BY run_id, status",
            run_ids,
        ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["run_id"], {})[row["status"]] = row["n"]
        return counts

    def active_run_ids(self) -> list[str]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT run_id FROM runs WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
        return [r["run_id"] for r in rows]

    def finish_run(self, run_id: str, status: RunStatus, now: int) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status=?, completed_at=?, started_at=coalesce(started_at, ?) "
                "WHERE run_id=? AND status IN ('queued', 'running')",
                (status, now, now, run_id),
            )
        return cursor.rowcount == 1

    def mark_run_killed(self, run_id: str) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET killed=1 WHERE run_id=? AND status IN ('queued', 'running')",
                (run_id,),
            )
        return cursor.rowcount == 1

    def reopen_run(self, run_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE runs SET status='running', completed_at=NULL, killed=0 WHERE run_id=?",
                (run_id,),
            )

    def stats(self, now: int) -> Stats:
        day_ago = now - 86_400_000
        with self.db.read() as conn:
            active = conn.execute(
                "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')"
            ).fetchone()[0]
            failed = conn.execute(
                "SELECT count(*) FROM runs WHERE status='failed' AND created_at >= ?", (day_ago,)
            ).fetchone()[0]
            total = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            queued = conn.execute(
                "SELECT count(*) FROM task_instances INDEXED BY ti_queued WHERE status='queued'"
            ).fetchone()[0]
            running = conn.execute(
                "SELECT count(*) FROM task_attempts WHERE status='running'"
            ).fetchone()[0]
        return Stats(active, failed, total, queued, running)

    def last_runs(self, dag_ids: Iterable[str]) -> dict[str, Run]:
        result: dict[str, Run] = {}
        with self.db.read() as conn:
            for dag_id in dag_ids:
                row = conn.execute(
                    "SELECT * FROM runs WHERE dag_id=? ORDER BY created_at DESC LIMIT 1", (dag_id,)
                ).fetchone()
                if row is not None:
                    result[dag_id] = run_from_row(row)
        return result

    # ------------------------------------------------------------ task instances

    def _insert_tasks(self, conn: sqlite3.Connection, tasks: Sequence[TaskInstance]) -> None:
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

    def run_states(self, run_id: str) -> list[TaskState]:
        """The run's non-child task instances, only what planning reads (fast in bulk)."""
        with self.db.read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            rows = cursor.execute(
                "SELECT id, run_id, task_id, status, pool, position FROM task_instances "
                "WHERE run_id=? AND map_index IS NULL ORDER BY position",
                (run_id,),
            ).fetchall()
        status = STATUS_BY_VALUE
        return [TaskState(r[0], r[1], r[2], status[r[3]], r[4], r[5]) for r in rows]

    def task_states(self, task_instance_ids: Sequence[str]) -> list[TaskState]:
        """The planning fields of the given (non-child) task instances."""
        if not task_instance_ids:
            return []
        marks = ",".join("?" * len(task_instance_ids))
        with self.db.read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            rows = cursor.execute(
                "SELECT id, run_id, task_id, status, pool, position FROM task_instances "
                f"WHERE id IN ({marks}) AND map_index IS NULL",
                list(task_instance_ids),
            ).fetchall()
        status = STATUS_BY_VALUE
        return [TaskState(r[0], r[1], r[2], status[r[3]], r[4], r[5]) for r in rows]

    def run_tasks(self, run_id: str, include_children: bool = True) -> list[TaskInstance]:
        """Latest state of every task instance of a run, in DAG order, with metrics."""
        child = "" if include_children else " AND ti.map_index IS NULL"
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS}, {METRIC_COLUMNS} FROM task_instances ti {LATEST_ATTEMPT}"
                f"WHERE ti.run_id=?{child} ORDER BY ti.position, ti.map_index",
                (run_id,),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def child_counts(self, run_id: str) -> dict[str, dict[TaskStatus, int]]:
        """For each map parent of a run: how many children are in each status."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT base_task_id, status, count(*) AS n FROM task_instances "
                "WHERE run_id=? AND map_index IS NOT NULL GROUP BY base_task_id, status",
                (run_id,),
            ).fetchall()
        counts: dict[str, dict[TaskStatus, int]] = {}
        for row in rows:
            counts.setdefault(row["base_task_id"], {})[TaskStatus(row["status"])] = row["n"]
        return counts

    def get_task(self, run_id: str, task_id: str) -> TaskInstance | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {TASK_COLUMNS}, {METRIC_COLUMNS} FROM task_instances ti {LATEST_ATTEMPT}"
                "WHERE ti.run_id=? AND ti.task_id=?",
                (run_id, task_id),
            ).fetchone()
        return task_from_row(row) if row else None

    def get_task_by_id(self, task_instance_id: str) -> TaskInstance | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti WHERE ti.id=?", (task_instance_id,)
            ).fetchone()
        return task_from_row(row) if row else None

    def children(self, run_id: str, parent_task_id: str) -> list[TaskInstance]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti WHERE ti.run_id=? AND "
                "ti.base_task_id=? AND ti.map_index IS NOT NULL ORDER BY ti.map_index",
                (run_id, parent_task_id),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def attempts(self, task_instance_id: str) -> list[Attempt]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM task_attempts WHERE task_instance_id=? ORDER BY attempt",
                (task_instance_id,),
            ).fetchall()
        return [attempt_from_row(r) for r in rows]

    def add_tasks(self, tasks: Sequence[TaskInstance]) -> None:
        with self.db.write() as conn:
            self._insert_tasks(conn, tasks)

    def transition(
        self,
        task_ids: Sequence[str],
        from_status: Iterable[TaskStatus],
        to_status: TaskStatus,
        now: int,
        message: str | None = None,
    ) -> list[str]:
        """Compare-and-set many task instances; returns the ids that moved."""
        sources = [s for s in from_status if to_status in TASK_TRANSITIONS[s]]
        if not task_ids or not sources:
            return []
        marks = ",".join("?" * len(sources))
        extra = _transition_columns(to_status)
        if message is not None:
            extra += ", message=?"
        moved = []
        with self.db.write() as conn:
            for task_id in task_ids:
                params: list[object] = [to_status, *_transition_params(to_status, now)]
                if message is not None:
                    params.append(message)
                cursor = conn.execute(
                    f"UPDATE task_instances SET status=?{extra} WHERE id=? AND status IN ({marks})",
                    [*params, task_id, *sources],
                )
                if cursor.rowcount:
                    moved.append(task_id)
        return moved

    def set_task_message(self, task_instance_id: str, message: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE task_instances SET message=? WHERE id=?", (message, task_instance_id)
            )

    def set_item_and_command(self, task_instance_id: str, command: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE task_instances SET command=? WHERE id=?", (command, task_instance_id)
            )

    def due_retries(self, now: int) -> list[TaskInstance]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti WHERE "
                "ti.status='up_for_retry' AND ti.ready_at <= ?",
                (now,),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def next_retry_at(self) -> int | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT min(ready_at) FROM task_instances WHERE status='up_for_retry'"
            ).fetchone()
        return row[0]

    def queued_pools(self) -> set[str]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT pool FROM task_instances WHERE status='queued'"
            ).fetchall()
        return {r["pool"] for r in rows}

    def pool_counts(self) -> dict[str, dict[str, int]]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT pool, 'queued' AS status, count(*) AS n FROM task_instances "
                "INDEXED BY ti_queued WHERE status='queued' GROUP BY pool "
                "UNION ALL SELECT pool, 'running', count(*) FROM task_instances "
                "INDEXED BY ti_running WHERE status='running' GROUP BY pool"
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for row in rows:
            result.setdefault(row["pool"], {})[row["status"]] = row["n"]
        return result

    # ------------------------------------------------------------ claims and attempts

    def claim_next(self, pool: str, worker: str, now: int) -> Claim | None:
        """Atomically move the oldest queued task of `pool` to running and open its attempt."""
        with self.db.write() as conn:
            return self._claim(conn, pool, worker, now)

    def finish_and_claim(
        self, finish: AttemptFinish, pool: str | None, worker: str
    ) -> tuple[bool, Claim | None]:
        """finish_attempt, then (unless `pool` is None) claim the next task of `pool`, in one
        transaction: a busy worker slot costs one write per task, not two."""
        with self.db.write() as conn:
            moved = self._finish(conn, finish)
            claim = self._claim(conn, pool, worker, finish.now) if pool is not None else None
        return moved, claim

    def _claim(self, conn: sqlite3.Connection, pool: str, worker: str, now: int) -> Claim | None:
        row = conn.execute(
            f"UPDATE task_instances AS ti SET status='running', attempt=attempt+1, worker=?, "
            "started_at=?, completed_at=NULL, exit_code=NULL, timed_out=0, message='' "
            "WHERE id=(SELECT id FROM task_instances WHERE status='queued' AND pool=? "
            "ORDER BY queued_at, rowid LIMIT 1) AND status='queued' "
            f"RETURNING {TASK_COLUMNS.replace('ti.', '')}",
            (worker, now, pool),
        ).fetchone()
        if row is None:
            return None
        task = task_from_row(row)
        run_row = conn.execute("SELECT * FROM runs WHERE run_id=?", (task.run_id,)).fetchone()
        run = run_from_row(run_row)
        conn.execute(
            "INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, "
            "status, worker, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            (task.id, task.attempt, task.run_id, run.dag_id, task.task_id, worker, now),
        )
        if run.status is RunStatus.QUEUED:
            conn.execute(
                "UPDATE runs SET status='running', started_at=? WHERE run_id=? AND status='queued'",
                (now, run.run_id),
            )
        return Claim(task, run, task.attempt)

    def set_executor_type(self, task_instance_id: str, attempt: int, executor_type: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE task_attempts SET executor_type=? WHERE task_instance_id=? AND attempt=?",
                (executor_type, task_instance_id, attempt),
            )

    def finish_attempt(self, finish: AttemptFinish) -> bool:
        """Close an attempt and move its task running -> `finish.status` (CAS on the attempt).

        The attempt row always gets its metrics; the task moves only if it is still running this
        attempt (a kill that won the race keeps `cancelled`). Returns whether the task moved.
        """
        with self.db.write() as conn:
            return self._finish(conn, finish)

    def _finish(self, conn: sqlite3.Connection, finish: AttemptFinish) -> bool:
        m = finish.metrics
        cursor = conn.execute(
            "UPDATE task_instances SET status=?, completed_at=?, exit_code=?, timed_out=?, "
            "ready_at=?, output_tail=?, message=?, "
            "queued_at=CASE WHEN ?='queued' THEN ? ELSE queued_at END, "
            "max_attempts=max_attempts+? "
            "WHERE id=? AND attempt=? AND status='running'",
            (
                finish.status,
                None
                if finish.status in (TaskStatus.UP_FOR_RETRY, TaskStatus.QUEUED)
                else finish.now,
                m.exit_code,
                int(finish.timed_out),
                finish.ready_at,
                finish.output_tail,
                finish.message,
                finish.status,
                finish.now,
                finish.extra_attempts,
                finish.task_instance_id,
                finish.attempt,
            ),
        )
        moved = cursor.rowcount == 1
        attempt_status = finish.attempt_status
        if not moved:
            attempt_status = TaskStatus.CANCELLED
        conn.execute(
            "UPDATE task_attempts SET status=?, completed_at=?, exit_code=?, timed_out=?, "
            "error=?, duration_ms=?, cpu_user_ms=?, cpu_system_ms=?, peak_memory_bytes=?, "
            "executor_type=? WHERE task_instance_id=? AND attempt=? AND status='running'",
            (
                attempt_status,
                finish.now,
                m.exit_code,
                int(finish.timed_out),
                finish.message,
                m.duration_ms,
                m.cpu_user_ms,
                m.cpu_system_ms,
                m.peak_memory_bytes,
                m.executor_type,
                finish.task_instance_id,
                finish.attempt,
            ),
        )
        if not moved:
            conn.execute(
                "UPDATE task_instances SET output_tail=? WHERE id=? AND output_tail=''",
                (finish.output_tail, finish.task_instance_id),
            )
        return moved

    def complete_task(
        self,
        task_instance_id: str,
        from_status: Sequence[TaskStatus],
        to_status: TaskStatus,
        now: int,
        message: str,
        output_tail: str = "",
    ) -> bool:
        """Finish a task that runs inside the engine (trigger_dag, map parents)."""
        marks = ",".join("?" * len(from_status))
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE task_instances SET status=?, completed_at=?, message=?, output_tail=?, "
                "started_at=coalesce(started_at, ?), worker=CASE WHEN worker='' THEN 'local' ELSE "
                f"worker END WHERE id=? AND status IN ({marks})",
                (to_status, now, message, output_tail, now, task_instance_id, *from_status),
            )
        return cursor.rowcount == 1

    def start_internal(
        self, task_instance_id: str, from_status: Sequence[TaskStatus], now: int
    ) -> bool:
        """pending/queued -> running for work the engine does itself (map parents)."""
        marks = ",".join("?" * len(from_status))
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE task_instances SET status='running', started_at=?, worker='local', "
                f"attempt=max(attempt, 1) WHERE id=? AND status IN ({marks})",
                (now, task_instance_id, *from_status),
            )
            conn.execute(
                "UPDATE runs SET status='running', started_at=? WHERE run_id=(SELECT "
                "run_id FROM task_instances WHERE id=?) AND status='queued'",
                (now, task_instance_id),
            )
        return cursor.rowcount == 1

    def running_attempts(self, worker: str) -> list[Attempt]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM task_attempts WHERE status='running' AND worker=?", (worker,)
            ).fetchall()
        return [attempt_from_row(r) for r in rows]

    def expand_map(self, parent_id: str, children: Sequence[TaskInstance], now: int) -> bool:
        """Atomically: map parent pending -> running, stale children dropped, new ones queued."""
        with self.db.write() as conn:
            row = conn.execute(
                "UPDATE task_instances SET status='running', started_at=?, completed_at=NULL, "
                "worker='local', attempt=attempt+1 WHERE id=? AND status='pending' "
                "RETURNING run_id, task_id",
                (now, parent_id),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "DELETE FROM task_instances WHERE run_id=? AND base_task_id=? AND "
                "map_index IS NOT NULL",
                (row["run_id"], row["task_id"]),
            )
            self._insert_tasks(conn, children)
            conn.execute(
                "UPDATE runs SET status='running', started_at=? WHERE run_id=? AND status='queued'",
                (now, row["run_id"]),
            )
        return True

    def reopen(
        self,
        run_id: str,
        queue: Sequence[tuple[str, int]],
        running: Sequence[str],
        pending: Sequence[str],
        now: int,
    ) -> int:
        """A manual retry in one transaction: `queue` (id, retries) -> queued for a new attempt,
        `running` (map parents) -> running, `pending` (dependants) -> pending; the run re-opens.
        Returns how many tasks were queued."""
        done = ", ".join(f"'{s}'" for s in _FINISHED)
        with self.db.write() as conn:
            queued = 0
            for task_id, retries in queue:
                queued += conn.execute(
                    "UPDATE task_instances SET status='queued', queued_at=?, ready_at=NULL, "
                    "completed_at=NULL, message='', max_attempts=attempt+1+? WHERE id=? AND "
                    f"status IN ({done}, 'up_for_retry')",
                    (now, retries, task_id),
                ).rowcount
            conn.executemany(
                "UPDATE task_instances SET status='running', completed_at=NULL, message='' "
                f"WHERE id=? AND status IN ({done})",
                [(i,) for i in running],
            )
            conn.executemany(
                "UPDATE task_instances SET status='pending', completed_at=NULL, message='' "
                f"WHERE id=? AND status IN ({done})",
                [(i,) for i in pending],
            )
            conn.execute(
                "UPDATE runs SET status='running', completed_at=NULL, killed=0 WHERE run_id=?",
                (run_id,),
            )
        return queued


_FINISHED = ("success", "failed", "upstream_failed", "cancelled", "skipped")


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


def _transition_columns(to_status: TaskStatus) -> str:
    if to_status is TaskStatus.QUEUED:
        return ", queued_at=?, ready_at=NULL"
    if to_status is TaskStatus.PENDING:
        return ", completed_at=NULL"
    if to_status.terminal:
        return ", completed_at=?"
    return ""


def _transition_params(to_status: TaskStatus, now: int) -> list[object]:
    if to_status is TaskStatus.QUEUED or to_status.terminal:
        return [now]
    return []
