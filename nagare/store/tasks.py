"""Task instances, claims and attempts in SQLite: every state change is a compare-and-set."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nagare.engine.context import UpstreamRow
from nagare.models import (
    STATUS_BY_VALUE,
    TASK_TRANSITIONS,
    TERMINAL_TASK,
    Attempt,
    AttemptFinish,
    Claim,
    RunStatus,
    TaskInstance,
    TaskState,
    TaskStatus,
)
from nagare.store.dags import DagStore
from nagare.store.db import LOCK_ROWS, Database, pipelines, send
from nagare.store.metrics import AttemptTally, refresh_rollup
from nagare.store.rows import (
    METRIC_COLUMNS,
    TASK_COLUMNS,
    attempt_from_row,
    insert_tasks,
    run_from_row,
    task_from_row,
)
from nagare.store.schema import ROLLUP_UNITS_MS

# The worker of the attempts the engine holds itself (steps that wait): never a host's, so no
# recovery of local or remote attempts ever takes them for its own.
ENGINE_WORKER = "engine"

LATEST_ATTEMPT = (
    "LEFT JOIN task_attempts a ON a.task_instance_id = ti.id AND a.attempt = ti.attempt "
)


Clock = int | Callable[[], int]


def _read(now: Clock) -> int:
    return now() if callable(now) else now


class TaskStore:
    def __init__(self, db: Database, dags: DagStore) -> None:
        self.db = db
        self.dags = dags

    # ------------------------------------------------------------ task instances

    def run_states(self, run_id: str) -> list[TaskState]:
        """The run's non-child task instances, only what planning reads (fast in bulk)."""
        with self.db.read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            rows = cursor.execute(
                "SELECT id, run_id, task_id, status, pool, position, allowed_failure "
                "FROM task_instances "
                "WHERE run_id=? AND map_index IS NULL ORDER BY position",
                (run_id,),
            ).fetchall()
        status = STATUS_BY_VALUE
        return [TaskState(r[0], r[1], r[2], status[r[3]], r[4], r[5], r[6] == 1) for r in rows]

    def states_of(self, task_instance_ids: Sequence[str]) -> list[TaskState]:
        """The planning fields of the given (non-child) task instances."""
        if not task_instance_ids:
            return []
        marks = ",".join("?" * len(task_instance_ids))
        with self.db.read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            rows = cursor.execute(
                "SELECT id, run_id, task_id, status, pool, position, allowed_failure "
                "FROM task_instances "
                f"WHERE id IN ({marks}) AND map_index IS NULL",
                list(task_instance_ids),
            ).fetchall()
        status = STATUS_BY_VALUE
        return [TaskState(r[0], r[1], r[2], status[r[3]], r[4], r[5], r[6] == 1) for r in rows]

    def of_run(self, run_id: str, include_children: bool = True) -> list[TaskInstance]:
        """Latest state of every task instance of a run, in DAG order, with metrics."""
        child = "" if include_children else " AND ti.map_index IS NULL"
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS}, {METRIC_COLUMNS} FROM task_instances ti {LATEST_ATTEMPT}"
                f"WHERE ti.run_id=?{child} ORDER BY ti.position, ti.map_index",
                (run_id,),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def child_counts(
        self, run_id: str, allowed_failures: bool = False
    ) -> dict[str, dict[TaskStatus, int]]:
        """For each map parent of a run: how many children are in each status (with
        `allowed_failures`, a child failed-but-allowed counts as a success: a second query
        that only DAGs whose map tasks have `allow_failure` pay for)."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT base_task_id, status, count(*) AS n FROM task_instances "
                "WHERE run_id=? AND map_index IS NOT NULL GROUP BY base_task_id, status",
                (run_id,),
            ).fetchall()
            allowed = (
                conn.execute(
                    "SELECT base_task_id, count(*) AS n FROM task_instances WHERE run_id=? AND "
                    "status='failed' AND allowed_failure=1 AND map_index IS NOT NULL "
                    "GROUP BY base_task_id",
                    (run_id,),
                ).fetchall()
                if allowed_failures
                else []
            )
        counts: dict[str, dict[TaskStatus, int]] = {}
        for row in rows:
            counts.setdefault(row["base_task_id"], {})[TaskStatus(row["status"])] = row["n"]
        for row in allowed:
            mine = counts[row["base_task_id"]]
            mine[TaskStatus.FAILED] -= row["n"]
            if not mine[TaskStatus.FAILED]:
                del mine[TaskStatus.FAILED]
            mine[TaskStatus.SUCCESS] = mine.get(TaskStatus.SUCCESS, 0) + row["n"]
        return counts

    def get(self, run_id: str, task_id: str) -> TaskInstance | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {TASK_COLUMNS}, {METRIC_COLUMNS} FROM task_instances ti {LATEST_ATTEMPT}"
                "WHERE ti.run_id=? AND ti.task_id=?",
                (run_id, task_id),
            ).fetchone()
        return task_from_row(row) if row else None

    def by_id(self, task_instance_id: str) -> TaskInstance | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti WHERE ti.id=?", (task_instance_id,)
            ).fetchone()
        return task_from_row(row) if row else None

    def claim_of(self, task_instance_id: str, attempt: int | None = None) -> Claim | None:
        """A task instance with its run and the DAG version that run follows (the lookup every
        holder of an attempt needs), for its attempt `attempt` (default: the latest)."""
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti WHERE ti.id=?", (task_instance_id,)
            ).fetchone()
            if row is None:
                return None
            task = task_from_row(row)
            run_row = conn.execute("SELECT * FROM runs WHERE run_id=?", (task.run_id,)).fetchone()
        if run_row is None:
            return None
        run = run_from_row(run_row)
        number = task.attempt if attempt is None else attempt
        return Claim(task, run, number, self.dags.version(run.dag_version))

    def context_rows(self, run_id: str) -> list[UpstreamRow]:
        """Status, exit code and outputs of every task instance of the run (for the context of
        a task that uses it, see engine.context)."""
        with self.db.read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            rows = cursor.execute(
                "SELECT task_id, base_task_id, map_index, status, exit_code, outputs "
                "FROM task_instances WHERE run_id=?",
                (run_id,),
            ).fetchall()
        return [
            UpstreamRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None)
            for r in rows
        ]

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

    def attempts_of_run(self, run_id: str) -> list[tuple[str, Attempt]]:
        """(task_id, attempt) of every attempt of the run's tasks but map children, by task
        and attempt."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT ti.task_id AS ti_task_id, a.* FROM task_instances ti "
                "JOIN task_attempts a ON a.task_instance_id = ti.id "
                "WHERE ti.run_id=? AND ti.map_index IS NULL ORDER BY ti.task_id, a.attempt",
                (run_id,),
            ).fetchall()
        return [(r["ti_task_id"], attempt_from_row(r)) for r in rows]

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
        params: list[object] = [to_status, *_transition_params(to_status, now)]
        if message is not None:
            params.append(message)
        with self.db.write() as conn:  # (on PostgreSQL the rows come with the COMMIT's answer)
            sent = [
                send(
                    conn,
                    f"UPDATE task_instances SET status=?{extra} WHERE id IN ({ids}) "
                    f"AND status IN ({marks}) RETURNING id",
                    [*params, *chunk, *sources],
                )
                for chunk in _chunks(task_ids, TRANSITION_CHUNK)
                for ids in [",".join("?" * len(chunk))]
            ]
        moved = {row[0] for rows in sent for row in rows.fetchall()}
        return [task_id for task_id in dict.fromkeys(task_ids) if task_id in moved]

    def due_retries(self, now: int) -> list[TaskInstance]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti WHERE "
                "ti.status='up_for_retry' AND ti.ready_at <= ?",
                (now,),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def queued_ids(self, pool: str) -> list[str]:
        """The queued task instances of a pool, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT id FROM task_instances WHERE status='queued' AND pool=? "
                "ORDER BY queued_at, rowid",
                (pool,),
            ).fetchall()
        return [r[0] for r in rows]

    def next_retry_at(self) -> int | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT min(ready_at) FROM task_instances WHERE status='up_for_retry'"
            ).fetchone()
        return None if row[0] is None else int(row[0])

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

    def finish_and_claim(
        self,
        finishes: Sequence[AttemptFinish],
        wants: Mapping[str, int],
        worker: str,
        now: Clock,
        lease_ms: int | None = None,
        ended_states: dict[str, TaskState] | None = None,
    ) -> list[Claim]:
        """finish_attempt for each of `finishes`, then claim up to `wants[pool]` tasks of each
        pool, in one transaction: slots that finish together share one commit and one metrics
        update, and a busy slot costs a fraction of a write per task. With `lease_ms` (a master
        sharing its database) the claims are leases its master renews, confirmed at once. With
        `ended_states`, the planning fields of the tasks the closes moved (what
        `states_of` would read after the commit) go there: the scheduler need not read them."""
        # on PostgreSQL two round trips: the closes and the claims go out together, then the
        # metrics with the COMMIT; the claims' rows are read after it
        with self.db.write() as conn:
            tally = AttemptTally()
            closing = [
                send_finish(conn, c, tally, states=ended_states)
                for c in _chunks(finishes, FINISH_CHUNK)
            ]
            at = _read(now)
            lease = at + lease_ms if lease_ms else None
            claiming = [
                send_claim(conn, self.dags, pool, worker, at, lease, count, lease is not None)
                for pool, count in wants.items()
            ]
            for closed in closing:
                closed()
            tally.write(conn)
        return [claim for claimed in claiming for claim in claimed()]

    def finish_attempt(self, finish: AttemptFinish) -> bool:
        """Close an attempt and move its task running -> `finish.status` (CAS on the attempt).

        The attempt row always gets its metrics; the task moves only if it is still running this
        attempt (a kill that won the race keeps `cancelled`). Returns whether the task moved.
        """
        with self.db.write() as conn:
            return finish_one(conn, finish)

    def complete(
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

    # ------------------------------------------------------------ steps that wait

    def begin_waiting(
        self,
        task_instance_id: str,
        from_status: Sequence[TaskStatus],
        now: int,
        wait: dict[str, Any] | None = None,
        wait_until: int | None = None,
        message: str = "",
    ) -> Claim | None:
        """pending / up_for_retry -> waiting (a dag, approval or wait step): a new attempt opens,
        held by the engine (no slot); `wait` is what it waits for, `wait_until` its deadline."""
        marks = ",".join("?" * len(from_status))
        with self.db.write() as conn:
            row = conn.execute(
                "UPDATE task_instances AS ti SET status='waiting', attempt=attempt+1, "
                "worker=?, started_at=?, completed_at=NULL, exit_code=NULL, timed_out=0, "
                "message=?, allowed_failure=0, ready_at=NULL, child_run_id=NULL, wait=?, "
                f"wait_until=? WHERE id=? AND status IN ({marks}) "
                f"RETURNING {TASK_COLUMNS.replace('ti.', '')}",
                (
                    ENGINE_WORKER,
                    now,
                    message,
                    None if wait is None else json.dumps(wait, ensure_ascii=False),
                    wait_until,
                    task_instance_id,
                    *from_status,
                ),
            ).fetchone()
            if row is None:
                return None
            task = task_from_row(row)
            run = run_from_row(
                conn.execute("SELECT * FROM runs WHERE run_id=?", (task.run_id,)).fetchone()
            )
            conn.execute(
                "INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, "
                "status, worker, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (task.id, task.attempt, task.run_id, run.dag_id, task.task_id, ENGINE_WORKER, now),
            )
            if run.status is RunStatus.QUEUED:
                conn.execute(
                    "UPDATE runs SET status='running', started_at=? WHERE run_id=? AND "
                    "status='queued'",
                    (now, run.run_id),
                )
        return Claim(task, run, task.attempt, self.dags.version(run.dag_version))

    def set_child_run(self, task_instance_id: str, attempt: int, child_run_id: str) -> bool:
        """Record the child run a waiting `dag` step's attempt started."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE task_instances SET child_run_id=? WHERE id=? AND attempt=? AND "
                "status='waiting'",
                (child_run_id, task_instance_id, attempt),
            )
        return cursor.rowcount == 1

    def finish_waiting(self, finish: AttemptFinish) -> bool:
        """Close a waiting task's attempt: waiting -> `finish.status` (CAS on status and
        attempt). Returns whether the task moved."""
        with self.db.write() as conn:
            tally = AttemptTally()
            moved = finish_many(conn, [finish], tally, TaskStatus.WAITING)
            tally.write(conn)
        return finish.task_instance_id in moved

    def close_cancelled_waits(self, task_instance_ids: Sequence[str], now: int) -> None:
        """The open attempts of waiting tasks that a kill cancelled end `cancelled` too."""
        if not task_instance_ids:
            return
        marks = ",".join("?" * len(task_instance_ids))
        with self.db.write() as conn:
            conn.execute(
                "UPDATE task_attempts SET status='cancelled', completed_at=?, error='killed', "
                f"duration_ms=?-started_at WHERE task_instance_id IN ({marks}) AND "
                "status='running' AND worker=?",
                (now, now, *task_instance_ids, ENGINE_WORKER),
            )

    def waiting(self, event: str | None = None) -> list[tuple[TaskInstance, dict[str, Any]]]:
        """The waiting tasks with what they wait for (only those waiting for `event`, if given)."""
        sql = f"SELECT {TASK_COLUMNS}, ti.wait FROM task_instances ti WHERE ti.status='waiting'"
        params: tuple[object, ...] = ()
        if event is not None:
            sql += " AND json_extract(ti.wait, '$.event') = ?"
            params = (event,)
        with self.db.read() as conn:
            rows = conn.execute(sql + " ORDER BY ti.started_at, ti.rowid", params).fetchall()
        return [(task_from_row(r), json.loads(r["wait"]) if r["wait"] else {}) for r in rows]

    def wait_of(self, task_instance_id: str) -> dict[str, Any] | None:
        """What a waiting task waits for (None when it does not wait)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT wait FROM task_instances WHERE id=? AND status='waiting'",
                (task_instance_id,),
            ).fetchone()
        return None if row is None or not row[0] else dict(json.loads(row[0]))

    def waits_of_run(self, run_id: str) -> dict[str, tuple[dict[str, Any], int | None]]:
        """The waiting tasks of a run: task instance id -> (what it waits for, until when)."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT id, wait, wait_until FROM task_instances INDEXED BY ti_waiting "
                "WHERE status='waiting' AND run_id=?",
                (run_id,),
            ).fetchall()
        return {r[0]: (dict(json.loads(r[1])) if r[1] else {}, r[2]) for r in rows}

    def next_wait_deadline(self) -> int | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT min(wait_until) FROM task_instances INDEXED BY ti_waiting "
                "WHERE status='waiting'"
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def past_wait_deadline(self, now: int) -> list[TaskInstance]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {TASK_COLUMNS} FROM task_instances ti INDEXED BY ti_waiting "
                "WHERE ti.status='waiting' AND ti.wait_until <= ?",
                (now,),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def running_masters(self) -> set[str]:
        """The ids of the masters with attempts open under their own name ("local@<id>")."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT worker FROM task_attempts WHERE status='running' AND "
                "substr(worker, 1, 6) = 'local@'"
            ).fetchall()
        return {str(r[0])[6:] for r in rows}

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
            _drop_children(conn, row["run_id"], row["task_id"])
            insert_tasks(conn, children)
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
        done = ", ".join(f"'{s}'" for s in sorted(TERMINAL_TASK))
        with self.db.write() as conn:
            queued = 0
            for task_id, _ in queue:  # a remote worker's report of a killed attempt is moot now
                conn.execute(
                    "UPDATE task_attempts SET status='cancelled', completed_at=? WHERE "
                    "task_instance_id=? AND status='running' AND worker != 'local'",
                    (now, task_id),
                )
            for task_id, retries in queue:
                queued += conn.execute(
                    "UPDATE task_instances SET status='queued', queued_at=?, ready_at=NULL, "
                    "completed_at=NULL, message='', allowed_failure=0, "
                    "max_attempts=attempt+1+? WHERE id=? AND "
                    f"status IN ({done}, 'up_for_retry')",
                    (now, retries, task_id),
                ).rowcount
            conn.executemany(
                "UPDATE task_instances SET status='running', completed_at=NULL, message='', "
                "allowed_failure=0 "
                f"WHERE id=? AND status IN ({done})",
                [(i,) for i in running],
            )
            conn.executemany(
                "UPDATE task_instances SET status='pending', completed_at=NULL, message='', "
                "allowed_failure=0 "
                f"WHERE id=? AND status IN ({done})",
                [(i,) for i in pending],
            )
            conn.execute(
                "UPDATE runs SET status='running', completed_at=NULL, killed=0, handling=0, "
                "reason='', deadline_at=NULL WHERE run_id=?",
                (run_id,),
            )
        return queued


# ---------------------------------------------------------------- shared SQL steps


def _drop_children(conn: sqlite3.Connection, run_id: str, parent_task_id: str) -> None:
    """Delete a map's children with their attempts (a map expanded again), and recompute the
    metric roll-up of the times their finished attempts counted in, as retention does."""
    finest = ROLLUP_UNITS_MS[-1]
    counted = conn.execute(
        "SELECT DISTINCT a.dag_id, (a.completed_at / ?) * ? FROM task_instances ti "
        "JOIN task_attempts a ON a.task_instance_id = ti.id WHERE ti.run_id=? AND "
        "ti.base_task_id=? AND ti.map_index IS NOT NULL AND a.completed_at IS NOT NULL",
        (finest, finest, run_id, parent_task_id),
    ).fetchall()
    conn.execute(
        "DELETE FROM task_instances WHERE run_id=? AND base_task_id=? AND map_index IS NOT NULL",
        (run_id, parent_task_id),
    )
    if counted:
        refresh_rollup(conn, {(r[0], r[1]) for r in counted})


CLAIM = (
    "UPDATE task_instances AS ti SET status='running', attempt=attempt+1, worker=?, "
    "started_at=?, completed_at=NULL, exit_code=NULL, timed_out=0, message='', "
    "allowed_failure=0, lease_expires_at=?, lease_confirmed=? "
    "WHERE id IN (SELECT id FROM task_instances WHERE status='queued' AND pool=? "
    f"ORDER BY queued_at, rowid LIMIT ?{LOCK_ROWS}) AND status='queued' "
    f"RETURNING {TASK_COLUMNS.replace('ti.', '')}"
)
# PostgreSQL only (a data-modifying WITH, which SQLite has not): the claim, its runs, the
# attempts opened and the runs started in one statement; the run rows come as JSON (each
# as its `runs` row was before the statement, as the separate statements read it)
CLAIM_WITH_ATTEMPTS = (
    f"WITH c AS ({CLAIM}), "
    "r AS (SELECT * FROM runs WHERE run_id IN (SELECT run_id FROM c)), "
    "a AS (INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, "
    "status, worker, started_at) SELECT c.id, c.attempt, c.run_id, r.dag_id, c.task_id, "
    "'running', ?, ? FROM c JOIN r ON r.run_id = c.run_id), "
    "u AS (UPDATE runs SET status='running', started_at=? WHERE run_id IN "
    "(SELECT run_id FROM c) AND status='queued') "
    "SELECT c.*, CAST(row_to_json(r) AS TEXT) AS run_json FROM c JOIN r ON r.run_id = c.run_id"
)


def claim_queued(
    conn: sqlite3.Connection,
    dags: DagStore,
    pool: str,
    worker: str,
    now: int,
    lease_until: int | None = None,
    count: int = 1,
    confirmed: bool = False,
) -> list[Claim]:
    """A shared step: claim the `count` oldest queued tasks of `pool` for `worker` (a remote
    worker holds them under a lease that ends at `lease_until` unless renewed), oldest first,
    and open their attempts."""
    return send_claim(conn, dags, pool, worker, now, lease_until, count, confirmed)()


def send_claim(
    conn: sqlite3.Connection,
    dags: DagStore,
    pool: str,
    worker: str,
    now: int,
    lease_until: int | None,
    count: int,
    confirmed: bool,
) -> Callable[[], list[Claim]]:
    """`claim_queued`, its result read by the function returned (on PostgreSQL one statement
    whose answer may wait for the transaction's next request; on SQLite done at once)."""
    params = (worker, now, lease_until, int(confirmed), pool, count)
    if pipelines(conn):
        sent = send(conn, CLAIM_WITH_ATTEMPTS, (*params, worker, now, now))
        return lambda: _claims(dags, sent.fetchall())
    claims = _claim_now(conn, dags, params, worker, now)
    return lambda: claims


def _claims(dags: DagStore, rows: list[Any]) -> list[Claim]:
    """The claims of CLAIM_WITH_ATTEMPTS's rows, oldest first."""
    runs = {}
    tasks = []
    for row in rows:
        task = task_from_row(row)
        tasks.append(task)
        if task.run_id not in runs:
            runs[task.run_id] = run_from_row(json.loads(row["run_json"]))
    tasks.sort(key=lambda t: (t.queued_at or 0, t.position))
    return [
        Claim(t, runs[t.run_id], t.attempt, dags.version(runs[t.run_id].dag_version)) for t in tasks
    ]


def _claim_now(
    conn: sqlite3.Connection, dags: DagStore, params: tuple[object, ...], worker: str, now: int
) -> list[Claim]:
    """CLAIM, then the claimed tasks' runs read, their attempts opened, queued runs started."""
    rows = conn.execute(CLAIM, params).fetchall()
    if not rows:
        return []
    tasks = sorted(map(task_from_row, rows), key=lambda t: (t.queued_at or 0, t.position))
    runs = {}
    for run_id in dict.fromkeys(t.run_id for t in tasks):
        runs[run_id] = run_from_row(
            conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        )
    conn.executemany(
        "INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, "
        "status, worker, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
        [(t.id, t.attempt, t.run_id, runs[t.run_id].dag_id, t.task_id, worker, now) for t in tasks],
    )
    for run in runs.values():
        if run.status is RunStatus.QUEUED:
            conn.execute(
                "UPDATE runs SET status='running', started_at=? WHERE run_id=? AND status='queued'",
                (now, run.run_id),
            )
    return [
        Claim(t, runs[t.run_id], t.attempt, dags.version(runs[t.run_id].dag_version)) for t in tasks
    ]


def finish_one(
    conn: sqlite3.Connection, finish: AttemptFinish, tally: AttemptTally | None = None
) -> bool:
    """A shared step: close one attempt; its metrics go to `tally` (written by the caller before the
    commit), or are written here without one. Returns whether the task moved."""
    own = tally or AttemptTally()
    moved = finish_many(conn, [finish], own)
    if tally is None:
        own.write(conn)
    return finish.task_instance_id in moved


def finish_many(
    conn: sqlite3.Connection,
    finishes: Sequence[AttemptFinish],
    tally: AttemptTally,
    from_status: TaskStatus = TaskStatus.RUNNING,
) -> set[str]:
    """A shared step: close attempts with two statements however many (task rows, then
    attempt rows); their metrics go to `tally`. Returns the ids of the tasks that moved: a task
    no longer running that attempt (a kill that won the race) keeps its status, and its attempt is
    closed as cancelled."""
    return send_finish(conn, finishes, tally, from_status)()


def _finish_tasks(from_status: TaskStatus, rows: str) -> str:
    return (
        "UPDATE task_instances SET status=v.column3, completed_at=v.column4, "
        "exit_code=v.column5, timed_out=v.column6, ready_at=v.column7, "
        "output_tail=v.column8, message=v.column9, lease_expires_at=NULL, "
        "queued_at=CASE WHEN v.column3='queued' THEN v.column10 ELSE queued_at END, "
        "outputs=CASE WHEN v.column3='queued' THEN outputs ELSE v.column12 END, "
        "max_attempts=max_attempts+v.column11, allowed_failure=v.column13 "
        f"FROM {rows} "
        f"WHERE id=v.column1 AND attempt=v.column2 AND status='{from_status}' "
        f"RETURNING id, {MOVED_COLUMNS}"
    )


def _finish_attempts(status: str, rows: str) -> str:
    return (
        f"UPDATE task_attempts SET status={status}, completed_at=v.column4, "
        "exit_code=v.column5, timed_out=v.column6, error=v.column7, "
        "duration_ms=v.column8, cpu_user_ms=v.column9, cpu_system_ms=v.column10, "
        f"peak_memory_bytes=v.column11, executor_type=v.column12 FROM {rows} "
        "WHERE task_instance_id=v.column1 AND attempt=v.column2 "
        "AND task_attempts.status='running' RETURNING task_instance_id, dag_id"
    )


def send_finish(
    conn: sqlite3.Connection,
    finishes: Sequence[AttemptFinish],
    tally: AttemptTally,
    from_status: TaskStatus = TaskStatus.RUNNING,
    states: dict[str, TaskState] | None = None,
) -> Callable[[], set[str]]:
    """`finish_many`, its result read by the function returned (on PostgreSQL the task and
    attempt updates are one statement whose answer may wait for the transaction's next
    request; on SQLite both run at once); with `states`, see `_after_finish`."""
    if not pipelines(conn):
        done = _finish_now(conn, finishes, from_status)
        moved = _after_finish(conn, finishes, done, tally, states)
        return lambda: moved
    sent = send(
        conn,
        # a task that did not move (a kill won the race) has its attempt closed as cancelled
        f"WITH v AS (VALUES {_values_rows(TASK_VALUE_TYPES, len(finishes))}), "
        f"moved AS ({_finish_tasks(from_status, 'v')}), "
        f"w AS (VALUES {_values_rows(ATTEMPT_VALUE_TYPES, len(finishes))}), "
        "closed AS ("
        + _finish_attempts(
            "CASE WHEN m.id IS NULL THEN 'cancelled' ELSE v.column3 END",
            "w AS v LEFT JOIN moved AS m ON m.id = v.column1",
        )
        + f") SELECT 1 AS moved, id, {MOVED_COLUMNS} FROM moved "
        f"UNION ALL SELECT 0, task_instance_id, dag_id, ''{', NULL' * 6} FROM closed",
        [
            *(value for f in finishes for value in _task_values(f)),
            *(value for f in finishes for value in _attempt_values(f, f.attempt_status)),
        ],
    )
    return lambda: _after_finish(conn, finishes, _finished(sent.fetchall()), tally, states)


def _finished(rows: list[Any]) -> tuple[dict[str, tuple[Any, ...]], dict[str, str]]:
    moved = {row[1]: tuple(row[2:]) for row in rows if row[0] == 1}
    return moved, {row[1]: row[2] for row in rows if row[0] == 0}


def _finish_now(
    conn: sqlite3.Connection, finishes: Sequence[AttemptFinish], from_status: TaskStatus
) -> tuple[dict[str, tuple[Any, ...]], dict[str, str]]:
    """The task rows, then the attempt rows: two statements however many."""
    rows = f"(VALUES {_values_rows(TASK_VALUE_TYPES, len(finishes))}) AS v"
    moved = {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            _finish_tasks(from_status, rows),
            [value for f in finishes for value in _task_values(f)],
        ).fetchall()
    }
    rows = f"(VALUES {_values_rows(ATTEMPT_VALUE_TYPES, len(finishes))}) AS v"
    closed = dict(
        conn.execute(
            _finish_attempts("v.column3", rows),
            [value for f in finishes for value in _attempt_values(f, _status(f, moved))],
        ).fetchall()
    )
    return moved, closed


def _status(finish: AttemptFinish, moved: Mapping[str, object]) -> TaskStatus:
    """The status an attempt closes with: cancelled when its task did not move."""
    return finish.attempt_status if finish.task_instance_id in moved else TaskStatus.CANCELLED


def _after_finish(
    conn: sqlite3.Connection,
    finishes: Sequence[AttemptFinish],
    done: tuple[dict[str, tuple[Any, ...]], dict[str, str]],
    tally: AttemptTally,
    states: dict[str, TaskState] | None = None,
) -> set[str]:
    """What follows closing attempts (the tasks that moved, the attempts closed): runs that
    have outputs now, the tasks that did not move, the metrics of the attempts closed; with
    `states`, the planning fields of the (non-child) tasks that moved go there."""
    moved, closed = done
    if states is not None:
        states.update(_moved_states(moved))
    published = [
        (f.task_instance_id,) for f in finishes if f.outputs and f.task_instance_id in moved
    ]
    if published:  # the run's tasks look for outputs from now on (see models.Run.has_outputs)
        conn.executemany(
            "UPDATE runs SET has_outputs=1 WHERE run_id=(SELECT run_id FROM task_instances "
            "WHERE id=?) AND has_outputs=0",
            published,
        )
    for finish in finishes:
        task_id = finish.task_instance_id
        task = moved.get(task_id)
        if task is None:  # keeps its output tail if it had none; its attempt holds no lease
            conn.execute(
                "UPDATE task_instances SET output_tail=CASE WHEN output_tail='' THEN ? ELSE "
                "output_tail END, lease_expires_at=CASE WHEN attempt=? THEN NULL ELSE "
                "lease_expires_at END WHERE id=?",
                (finish.output_tail, finish.attempt, task_id),
            )
        if task_id in closed:
            task = (
                task
                or conn.execute(
                    "SELECT base_task_id, pool FROM task_instances WHERE id=?", (task_id,)
                ).fetchone()
            )
            tally.add(
                closed[task_id],
                task[0],
                task[1],
                _status(finish, moved),
                finish.metrics,
                finish.now,
            )
    return set(moved)


# what a close returns of each task it moved: its metrics' keys, then its planning fields
MOVED_COLUMNS = "base_task_id, pool, run_id, task_id, status, position, allowed_failure, map_index"


def _moved_states(moved: Mapping[str, tuple[Any, ...]]) -> dict[str, TaskState]:
    """The planning fields (as `states_of` reads them) of the non-child tasks a close moved."""
    status = STATUS_BY_VALUE
    return {
        task_id: TaskState(task_id, r[2], r[3], status[r[4]], r[1], r[5], r[6] == 1)
        for task_id, r in moved.items()
        if r[7] is None
    }


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


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


FINISH_CHUNK = 200  # attempts per statement of `_finish_many` (13 parameters each)
TRANSITION_CHUNK = 500  # task instances per statement of `transition`


# The SQL types of `_task_values` and `_attempt_values` (I: INTEGER, T: TEXT), for
# `_values_rows`.
TASK_VALUE_TYPES = "TITIIIITTIITI"
ATTEMPT_VALUE_TYPES = "TITIIITIIIIT"


def _values_rows(types: str, count: int) -> str:
    """`count` rows of parameters for a VALUES list; the first row casts each to its type, which
    then types the whole list (a no-op for SQLite; PostgreSQL would read an untyped parameter
    in a VALUES list as text)."""
    kinds = {"I": "INTEGER", "T": "TEXT"}
    first = "(" + ", ".join(f"CAST(? AS {kinds[t]})" for t in types) + ")"
    rest = "(" + ", ".join("?" * len(types)) + ")"
    return ", ".join([first, *[rest] * (count - 1)])


def _task_values(finish: AttemptFinish) -> tuple[object, ...]:
    """A finish's row for the task-instance update of `_finish_many`."""
    waiting = finish.status in (TaskStatus.UP_FOR_RETRY, TaskStatus.QUEUED)
    return (
        finish.task_instance_id,
        finish.attempt,
        str(finish.status),
        None if waiting else finish.now,
        finish.metrics.exit_code,
        int(finish.timed_out),
        finish.ready_at,
        finish.output_tail,
        finish.message,
        finish.now,
        finish.extra_attempts,
        json.dumps(finish.outputs, ensure_ascii=False) if finish.outputs else None,
        int(finish.allowed_failure),
    )


def _attempt_values(finish: AttemptFinish, status: TaskStatus) -> tuple[object, ...]:
    """A finish's row for the attempt update of `_finish_many`."""
    m = finish.metrics
    return (
        finish.task_instance_id,
        finish.attempt,
        str(status),
        finish.now,
        m.exit_code,
        int(finish.timed_out),
        finish.message,
        m.duration_ms,
        m.cpu_user_ms,
        m.cpu_system_ms,
        m.peak_memory_bytes,
        m.executor_type,
    )
