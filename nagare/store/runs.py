"""Runs in SQLite: created with their task instances in one transaction, listed, finished."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from nagare.engine.new_run import build_run, new_instance_id, run_id_for
from nagare.engine.run_rules import SUPERSEDED, Admission, admit, handler_instances, to_release
from nagare.errors import Conflict
from nagare.models import (
    SLOT_TRIGGERS,
    DagDef,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    Trigger,
)
from nagare.store.dags import DagStore
from nagare.store.db import Database
from nagare.store.metrics import count_run
from nagare.store.records import RunFilter, Stats
from nagare.store.rows import insert_tasks, run_from_row

MAX_ID_SUFFIX = 50  # runs of one DAG created in the same millisecond get -2, -3, ...
# Runs that hold a slot of their DAG's max_active_runs: started and not ended, or ended with
# handlers still running. A run held by the overlap policy waits outside them.
ACTIVE_SQL = "((status IN ('queued', 'running') AND held=0) OR handling=1)"
KILLED = 1  # runs.killed: killed by a user (the run ends cancelled)
TIMED_OUT = 2  # runs.killed: its deadline passed (the run ends failed)


class RunStore:
    def __init__(self, db: Database, dags: DagStore) -> None:
        self.db = db
        self.dags = dags

    def start(
        self,
        dag: DagDef,
        trigger: Trigger,
        execution_date: int,
        conf: dict[str, str],
        now: int,
        params: dict[str, Any] | None = None,
        parent: tuple[str, str] | None = None,
    ) -> Run | None:
        """A new run of `dag` (its version stored once), with its task instances; None when the
        (deterministic) id of a slot run exists already. `params`: the resolved parameters
        (none for a DAG without `params:`). Under the DAG's `max_active_runs` it may wait
        (held) or be recorded `skipped`; a manual run that would be skipped is not created
        (Conflict)."""
        version = self.dags.save_version(dag, now)
        base_id = run_id_for(dag.dag_id, trigger, execution_date, now)
        for suffix in range(MAX_ID_SUFFIX):
            run_id = base_id if suffix == 0 else f"{base_id}-{suffix + 1}"
            run, tasks = build_run(dag, version, trigger, execution_date, conf, now, run_id)
            run.params = params or {}
            run.parent = parent
            if self._admit_and_insert(dag, run, tasks, now):
                return run
            if trigger in SLOT_TRIGGERS:
                return None
        return None

    def _admit_and_insert(self, dag: DagDef, run: Run, tasks: list[TaskInstance], now: int) -> bool:
        """Insert a new run as its DAG's overlap rule decides (in one transaction: two runs
        created at once are counted one after the other)."""
        if dag.timeout_seconds:
            run.deadline_at = now + int(dag.timeout_seconds * 1000)
        if not dag.max_active_runs:
            return self.insert(run, tasks)
        with self.db.write() as conn:
            if _exists(conn, run.run_id):
                return False
            active, waiting = _occupancy(conn, dag.dag_id)
            decision = admit(dag.max_active_runs, dag.overlap_policy, active, waiting)
            if decision.admission is Admission.SKIP:
                if run.trigger is Trigger.MANUAL:
                    raise Conflict(f"run of '{dag.dag_id}' not created: {decision.reason}")
                _mark_skipped(run, tasks, decision.reason, now)
                count_run(conn, run.dag_id, RunStatus.SKIPPED)
            elif decision.admission is Admission.WAIT:
                _mark_held(run, tasks)
            _cancel_superseded(conn, decision.superseded, now)
            return self._insert_in(conn, run, tasks)

    def release_waiting(self, dag: DagDef, now: int) -> list[str]:
        """Let waiting runs of `dag` start, oldest first, as far as its max_active_runs allows
        now; returns their ids (their tasks are planned by the next pass)."""
        with self.db.write() as conn:
            active, waiting = _occupancy(conn, dag.dag_id)
            released = to_release(dag.max_active_runs, active, waiting)
            deadline = now + int(dag.timeout_seconds * 1000) if dag.timeout_seconds else None
            for run_id in released:
                conn.execute(
                    "UPDATE runs SET held=0, deadline_at=? WHERE run_id=? AND held=1 "
                    "AND status='queued'",
                    (deadline, run_id),
                )
        return released

    def dags_with_waiting(self) -> list[str]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT dag_id FROM runs WHERE held=1 AND status='queued'"
            ).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------ deadline

    def next_deadline(self) -> int | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT min(deadline_at) FROM runs INDEXED BY runs_deadline "
                "WHERE deadline_at IS NOT NULL AND status IN ('queued', 'running')"
            ).fetchone()
        return None if row is None else row[0]

    def past_deadline(self, now: int) -> list[str]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT run_id FROM runs INDEXED BY runs_deadline WHERE deadline_at IS NOT NULL "
                "AND status IN ('queued', 'running') AND deadline_at <= ? AND killed=0",
                (now,),
            ).fetchall()
        return [r[0] for r in rows]

    def mark_timed_out(self, run_id: str, reason: str) -> bool:
        """The run's deadline passed: it will end `failed` with `reason` (unless killed)."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET killed=?, reason=? WHERE run_id=? AND killed=0 "
                "AND status IN ('queued', 'running')",
                (TIMED_OUT, reason, run_id),
            )
        return cursor.rowcount == 1

    # ------------------------------------------------------------ handlers

    def end_handling(self, run_id: str) -> bool:
        """Every handler of the run has ended: it no longer holds a slot of its DAG."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET handling=0 WHERE run_id=? AND handling=1", (run_id,)
            )
        return cursor.rowcount == 1

    # ------------------------------------------------------------ runs

    def insert(self, run: Run, tasks: Sequence[TaskInstance]) -> bool:
        """Insert a run and its task instances; False when the run id exists already."""
        with self.db.write() as conn:
            return self._insert_in(conn, run, tasks)

    def _insert_in(self, conn: sqlite3.Connection, run: Run, tasks: Sequence[TaskInstance]) -> bool:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO runs(run_id, dag_id, status, trigger, execution_date, "
            "conf, dag_version, killed, created_at, completed_at, reason, held, deadline_at, "
            "params, parent_run_id, parent_task_id) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, "
            "?, ?, ?, ?)",
            (
                run.run_id,
                run.dag_id,
                run.status,
                run.trigger,
                run.execution_date,
                json.dumps(run.conf),
                run.dag_version,
                run.created_at,
                run.completed_at,
                run.reason,
                int(run.held),
                run.deadline_at,
                json.dumps(run.params, separators=(",", ":"), ensure_ascii=False),
                run.parent[0] if run.parent else None,
                run.parent[1] if run.parent else None,
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

    def child_of(self, run_id: str, task_id: str, since: int) -> str | None:
        """The latest run a `dag` step of run `run_id` started at or after `since`."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT run_id FROM runs WHERE parent_run_id=? AND parent_task_id=? AND "
                "created_at>=? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (run_id, task_id, since),
            ).fetchone()
        return None if row is None else str(row[0])

    def find(self, filt: RunFilter, page: int, limit: int) -> tuple[list[Run], int]:
        clauses, params = [], []
        for column in ("dag_id", "status", "trigger"):
            value = getattr(filt, column)
            if value:
                clauses.append(f"{column}=?")
                params.append(value)
        if filt.waiting:
            clauses.append(
                "run_id IN (SELECT run_id FROM task_instances INDEXED BY ti_waiting WHERE "
                "status='waiting' AND json_extract(wait, '$.type')=?)"
            )
            params.append(filt.waiting)
        if filt.search:
            clauses.append("run_id LIKE ? ESCAPE '\\'")
            params.append(f"%{like_escape(filt.search)}%")
        if filt.dag_ids is not None:  # an empty tuple: no DAG matches, so no run
            marks = ",".join("?" * len(filt.dag_ids))
            clauses.append(f"dag_id IN ({marks})" if filt.dag_ids else "1=0")
            params.extend(filt.dag_ids)
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
                f"SELECT run_id FROM runs WHERE {ACTIVE_SQL} ORDER BY created_at"
            ).fetchall()
        return [r["run_id"] for r in rows]

    def finish(
        self,
        run_id: str,
        status: RunStatus,
        now: int,
        dag: DagDef | None = None,
        failed: Sequence[str] = (),
        reason: str = "",
        outputs: dict[str, str] | None = None,
    ) -> RunStatus | None:
        """End an active run; a run killed meanwhile ends `cancelled` (timed out: `failed`)
        whatever the caller saw (the kill flag is read in the same statement); its warnings are
        counted (the tasks that failed with allow_failure); `reason` (if given) says why;
        `outputs` (its DAG's, rendered) are kept only if it ends `success`. With `dag`, the
        handlers of the status set are added in the same transaction (the run then stays
        active, `handling`, until they end). Returns the status set, or None."""
        returned = None if outputs is None else json.dumps(outputs, ensure_ascii=False)
        with self.db.write() as conn:
            row = conn.execute(
                f"UPDATE runs SET status=CASE killed WHEN {KILLED} THEN 'cancelled' "
                f"WHEN {TIMED_OUT} THEN 'failed' ELSE ? END, "
                "completed_at=?, started_at=coalesce(started_at, ?), failed_tasks=?, "
                "reason=CASE WHEN ?='' THEN reason ELSE ? END, "
                "outputs=CASE WHEN killed=0 AND ?='success' THEN ? ELSE outputs END, "
                "warnings=(SELECT count(*) FROM task_instances WHERE run_id=runs.run_id AND "
                "allowed_failure=1) "
                "WHERE run_id=? AND status IN ('queued', 'running') RETURNING dag_id, status",
                (status, now, now, ",".join(failed), reason, reason, status, returned, run_id),
            ).fetchone()
            if row is None:
                return None
            ended = RunStatus(row[1])
            count_run(conn, row[0], ended)
            handlers = handler_instances(dag, run_id, ended, now, new_instance_id) if dag else []
            if handlers:
                conn.execute("UPDATE runs SET handling=1 WHERE run_id=?", (run_id,))
                _add_handlers(conn, handlers)
        return ended

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
                f"UPDATE runs SET killed={KILLED} WHERE run_id=? "
                "AND status IN ('queued', 'running')",
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


# ---------------------------------------------------------------- overlap helpers


def _exists(conn: sqlite3.Connection, run_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None


def _occupancy(conn: sqlite3.Connection, dag_id: str) -> tuple[int, list[str]]:
    """How many runs of a DAG are active, and which wait (oldest first)."""
    active = conn.execute(
        f"SELECT count(*) FROM runs WHERE dag_id=? AND {ACTIVE_SQL}", (dag_id,)
    ).fetchone()[0]
    waiting = conn.execute(
        "SELECT run_id FROM runs WHERE dag_id=? AND held=1 AND status='queued' "
        "ORDER BY created_at, run_id",
        (dag_id,),
    ).fetchall()
    return int(active), [r[0] for r in waiting]


def _mark_skipped(run: Run, tasks: list[TaskInstance], reason: str, now: int) -> None:
    run.status, run.reason, run.completed_at = RunStatus.SKIPPED, reason, now
    for task in tasks:
        task.status, task.queued_at, task.message = TaskStatus.SKIPPED, None, reason


def _mark_held(run: Run, tasks: list[TaskInstance]) -> None:
    """A run waiting for a slot: nothing of it is queued until it is released."""
    run.held, run.deadline_at = True, None
    for task in tasks:
        task.status, task.queued_at = TaskStatus.PENDING, None


def _cancel_superseded(conn: sqlite3.Connection, run_ids: Sequence[str], now: int) -> None:
    for run_id in run_ids:
        row = conn.execute(
            "UPDATE runs SET status='cancelled', reason=?, completed_at=?, held=0 "
            "WHERE run_id=? AND held=1 AND status='queued' RETURNING dag_id",
            (SUPERSEDED, now, run_id),
        ).fetchone()
        if row is None:
            continue
        count_run(conn, row[0], RunStatus.CANCELLED)
        conn.execute(
            "UPDATE task_instances SET status='cancelled', completed_at=?, message=? "
            "WHERE run_id=? AND status='pending'",
            (now, SUPERSEDED, run_id),
        )


def _add_handlers(conn: sqlite3.Connection, handlers: Sequence[TaskInstance]) -> None:
    """Insert a run's handler tasks; a handler that ran before (the run was re-opened by a
    retry and ended again) runs again as a new attempt of the same task instance."""
    for handler in handlers:
        again = conn.execute(
            "UPDATE task_instances SET status=?, queued_at=?, ready_at=NULL, completed_at=NULL, "
            "message='', max_attempts=attempt+? WHERE run_id=? AND task_id=?",
            (
                handler.status,
                handler.queued_at,
                handler.max_attempts,
                handler.run_id,
                handler.task_id,
            ),
        ).rowcount
        if not again:
            insert_tasks(conn, [handler])


def like_escape(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (with ESCAPE '\\')."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
