"""Retention in SQLite: finished runs older than a cutoff, found through the `created_at` index
(oldest first, never a full scan) and deleted in bounded batches together with their task
instances and attempts (ON DELETE CASCADE) and their log chunks. The metric roll-up rows of the
times those attempts touched are recomputed in the same transaction; the Prometheus counters are
not lowered (counters only grow).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from nagare.store.db import Database
from nagare.store.metrics import refresh_rollup
from nagare.store.schema import ROLLUP_UNITS_MS

FINISHED_RUNS = "('success', 'failed', 'cancelled', 'skipped')"


@dataclass
class OldRun:
    run_id: str
    dag_id: str
    status: str
    created_at: int
    completed_at: int | None
    tasks: int = 0
    attempts: int = 0


class RetentionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def old_runs(
        self, cutoff: int, limit: int, after: tuple[int, str] | None = None
    ) -> list[OldRun]:
        """Finished runs created and completed before `cutoff` (epoch ms), oldest first, at most
        `limit`; `after` = (created_at, run_id) of the last one seen pages on."""
        with self.db.read() as conn:
            return _old_runs(conn, cutoff, limit, after)

    def delete_old_runs(self, cutoff: int, limit: int) -> list[OldRun]:
        """Delete at most `limit` of the oldest such runs, with their task instances, attempts
        and metric rows, in one transaction. Returns what was deleted (log folders are the
        caller's)."""
        with self.db.write() as conn:
            runs = _old_runs(conn, cutoff, limit, None)
            if not runs:
                return []
            ids = [r.run_id for r in runs]
            marks = ",".join("?" * len(ids))
            finest = ROLLUP_UNITS_MS[-1]
            finished = conn.execute(
                "SELECT DISTINCT a.dag_id, (a.completed_at / ?) * ? FROM task_instances ti "
                "JOIN task_attempts a ON a.task_instance_id = ti.id "
                f"WHERE ti.run_id IN ({marks}) AND a.completed_at IS NOT NULL",
                [finest, finest, *ids],
            ).fetchall()
            conn.execute(
                f"DELETE FROM runs WHERE run_id IN ({marks}) AND status IN {FINISHED_RUNS}", ids
            )
            conn.execute(f"DELETE FROM log_chunks WHERE run_id IN ({marks})", ids)
            refresh_rollup(conn, {(r[0], r[1]) for r in finished})
        return runs

    def existing(self, run_ids: list[str]) -> set[str]:
        """Which of `run_ids` still have a row (a master that does not lead prunes the log
        folders of the others, `RetentionSweep.prune_folders`)."""
        found: set[str] = set()
        with self.db.read() as conn:
            for start in range(0, len(run_ids), 500):
                part = run_ids[start : start + 500]
                marks = ",".join("?" * len(part))
                rows = conn.execute(f"SELECT run_id FROM runs WHERE run_id IN ({marks})", part)
                found.update(str(r[0]) for r in rows)
        return found

    def release_free_pages(self) -> None:
        """Give the pages deletions freed back to the file system (see Database)."""
        self.db.release_free_pages()


def _old_runs(
    conn: sqlite3.Connection, cutoff: int, limit: int, after: tuple[int, str] | None
) -> list[OldRun]:
    page = ""
    params: list[object] = [cutoff, cutoff]
    if after is not None:
        page = "AND (created_at > ? OR (created_at = ? AND run_id > ?)) "
        params += [after[0], after[0], after[1]]
    rows = conn.execute(
        "SELECT run_id, dag_id, status, created_at, completed_at FROM runs INDEXED BY "
        f"runs_created WHERE created_at < ? AND status IN {FINISHED_RUNS} AND "
        f"coalesce(completed_at, created_at) < ? {page}ORDER BY created_at, run_id LIMIT ?",
        [*params, limit],
    ).fetchall()
    runs = [OldRun(*r) for r in rows]
    if runs:
        _add_sizes(conn, runs)
    return runs


def _add_sizes(conn: sqlite3.Connection, runs: list[OldRun]) -> None:
    """How many task instances and attempts each run has."""
    by_id = {r.run_id: r for r in runs}
    marks = ",".join("?" * len(by_id))
    rows = conn.execute(
        "SELECT ti.run_id, count(DISTINCT ti.id), count(a.task_instance_id) FROM task_instances ti "
        "LEFT JOIN task_attempts a ON a.task_instance_id = ti.id "
        f"WHERE ti.run_id IN ({marks}) GROUP BY ti.run_id",
        list(by_id),
    ).fetchall()
    for run_id, tasks, attempts in rows:
        by_id[run_id].tasks = tasks
        by_id[run_id].attempts = attempts
