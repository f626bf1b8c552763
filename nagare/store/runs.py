"""Runs, DAG versions and DAG scheduling state in SQLite."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence

from nagare.dagfile import dag_from_json, dag_to_json
from nagare.models import DagDef, Run, RunStatus, TaskInstance
from nagare.store.db import Database, DatabaseError
from nagare.store.metrics import count_run
from nagare.store.records import DagState, RunFilter, Stats
from nagare.store.rows import insert_tasks, run_from_row

DIGEST_CACHE_SIZE = 512  # loaded definitions whose version digest is remembered


class RunStore:
    db: Database
    _dag_cache: dict[str, DagDef]
    _digests: dict[int, tuple[DagDef, str]]  # id(definition) -> (definition, its digest)

    # ------------------------------------------------------------ DAG versions and state

    def save_dag_version(self, dag: DagDef, now: int) -> str:
        known = self._digests.get(id(dag))
        if known is not None and known[0] is dag:  # the same loaded definition as last time
            return known[1]
        text = dag_to_json(dag)
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        if len(self._digests) >= DIGEST_CACHE_SIZE:
            self._digests.clear()
        self._digests[id(dag)] = (dag, digest)
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
            insert_tasks(conn, tasks)
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

    def finish_run(self, run_id: str, status: RunStatus, now: int) -> RunStatus | None:
        """End an active run; a run killed meanwhile ends `cancelled` whatever the caller saw
        (the kill flag is read in the same statement). Returns the status set, or None."""
        with self.db.write() as conn:
            row = conn.execute(
                "UPDATE runs SET status=CASE WHEN killed=1 THEN 'cancelled' ELSE ? END, "
                "completed_at=?, started_at=coalesce(started_at, ?) "
                "WHERE run_id=? AND status IN ('queued', 'running') RETURNING dag_id, status",
                (status, now, now, run_id),
            ).fetchone()
            if row is not None:
                count_run(conn, row[0], row[1])
        return None if row is None else RunStatus(row[1])

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
