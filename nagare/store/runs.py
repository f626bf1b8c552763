"""Runs in SQLite: created with their task instances in one transaction, listed, finished."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from nagare.engine.new_run import build_run, run_id_for
from nagare.models import SLOT_TRIGGERS, DagDef, Run, RunStatus, TaskInstance, Trigger
from nagare.store.dags import DagStore
from nagare.store.db import Database
from nagare.store.metrics import count_run
from nagare.store.records import RunFilter, Stats
from nagare.store.rows import insert_tasks, run_from_row

MAX_ID_SUFFIX = 50  # runs of one DAG created in the same millisecond get -2, -3, ...


class RunStore:
    def __init__(self, db: Database, dags: DagStore) -> None:
        self.db = db
        self.dags = dags

    def start(
        self, dag: DagDef, trigger: Trigger, execution_date: int, conf: dict[str, str], now: int
    ) -> Run | None:
        """A new run of `dag` (its version stored once), with its task instances; None when the
        (deterministic) id of a slot run exists already."""
        version = self.dags.save_version(dag, now)
        base_id = run_id_for(dag.dag_id, trigger, execution_date, now)
        for suffix in range(MAX_ID_SUFFIX):
            run_id = base_id if suffix == 0 else f"{base_id}-{suffix + 1}"
            run, tasks = build_run(dag, version, trigger, execution_date, conf, now, run_id)
            if self.insert(run, tasks):
                return run
            if trigger in SLOT_TRIGGERS:
                return None
        return None

    # ------------------------------------------------------------ runs

    def insert(self, run: Run, tasks: Sequence[TaskInstance]) -> bool:
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
            insert_tasks(conn, tasks)
        return True

    def exists(self, run_id: str) -> bool:
        with self.db.read() as conn:
            return (
                conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None
            )

    def get(self, run_id: str, counts: bool = True) -> Run | None:
        """A run; `counts=False` skips counting its tasks by status (the engine's hot path)."""
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                return None
            run = run_from_row(row)
            if counts:
                run.task_counts = self._task_counts(conn, [run_id]).get(run_id, {})
        return run

    def find(self, filt: RunFilter, page: int, limit: int) -> tuple[list[Run], int]:
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

    def active_ids(self) -> list[str]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT run_id FROM runs WHERE status IN ('queued', 'running') ORDER BY created_at"
            ).fetchall()
        return [r["run_id"] for r in rows]

    def finish(
        self, run_id: str, status: RunStatus, now: int, reason: str = ""
    ) -> RunStatus | None:
        """End an active run; a run killed meanwhile ends `cancelled` whatever the caller saw
        (the kill flag is read in the same statement); its warnings are counted (the tasks that
        failed with allow_failure). Returns the status set, or None."""
        with self.db.write() as conn:
            row = conn.execute(
                "UPDATE runs SET status=CASE WHEN killed=1 THEN 'cancelled' ELSE ? END, "
                "completed_at=?, started_at=coalesce(started_at, ?), reason=?, "
                "warnings=(SELECT count(*) FROM task_instances WHERE run_id=runs.run_id AND "
                "allowed_failure=1) "
                "WHERE run_id=? AND status IN ('queued', 'running') RETURNING dag_id, status",
                (status, now, now, reason, run_id),
            ).fetchone()
            if row is not None:
                count_run(conn, row[0], row[1])
        return None if row is None else RunStatus(row[1])

    def end_unstarted(self, run_id: str, status: RunStatus, reason: str, now: int) -> bool:
        """A run that never started (its DAG's condition said so): its pending tasks are
        skipped with the reason, and it ends `status` with it. False if it started meanwhile."""
        with self.db.write() as conn:
            row = conn.execute(
                "UPDATE runs SET status=?, reason=?, completed_at=?, started_at=? WHERE run_id=? "
                "AND status='queued' AND killed=0 AND NOT EXISTS (SELECT 1 FROM task_instances "
                "WHERE run_id=? AND status!='pending') RETURNING dag_id",
                (status, reason, now, now, run_id, run_id),
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE task_instances SET status='skipped', message=?, completed_at=? "
                "WHERE run_id=? AND status='pending'",
                (f"the run did not start: {reason}", now, run_id),
            )
            count_run(conn, row[0], str(status))
        return True

    def mark_killed(self, run_id: str) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET killed=1 WHERE run_id=? AND status IN ('queued', 'running')",
                (run_id,),
            )
        return cursor.rowcount == 1

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

    def last_of(self, dag_ids: Iterable[str]) -> dict[str, Run]:
        result: dict[str, Run] = {}
        with self.db.read() as conn:
            for dag_id in dag_ids:
                row = conn.execute(
                    "SELECT * FROM runs WHERE dag_id=? ORDER BY created_at DESC LIMIT 1", (dag_id,)
                ).fetchone()
                if row is not None:
                    result[dag_id] = run_from_row(row)
        return result
