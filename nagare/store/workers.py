"""The remote worker registry and the leases under which workers hold tasks.

A remote claim stamps `lease_expires_at` on the task instance; every poll or heartbeat of the
holder renews it. A lease that ran out is closed by the master (retry or fail), and a result or
log batch arriving after that is refused: whatever happens, one attempt has one outcome.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from nagare.models import AttemptFinish, Claim, TaskStatus
from nagare.store.dags import DagStore
from nagare.store.db import Database
from nagare.store.metrics import AttemptTally
from nagare.store.records import Exchange, HeldAttempt, WorkerRecord
from nagare.store.tasks import claim_queued, finish_many, finish_one


class WorkerStore:
    def __init__(self, db: Database, dags: DagStore) -> None:
        self.db = db
        self.dags = dags

    # ------------------------------------------------------------ registry

    def registered(self) -> list[WorkerRecord]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT w.*, (SELECT count(*) FROM task_attempts a WHERE a.status='running' "
                "AND a.worker=w.worker_id) AS running FROM workers w ORDER BY w.worker_id"
            ).fetchall()
        return [_worker_from_row(r) for r in rows]

    def held_count(self, worker_id: str) -> int:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT count(*) FROM task_attempts WHERE status='running' AND worker=?",
                (worker_id,),
            ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------ leases

    def claim(
        self,
        worker_id: str,
        pools: Sequence[str],
        count: int,
        now: int,
        lease_until: int,
        capacity: int | None = None,
    ) -> list[Claim]:
        """Claim up to `count` queued tasks of `pools` (oldest first per pool, pools taken in
        turn) for a remote worker, in one transaction; with `capacity`, no more than the worker
        has room for counting what it holds now (two polls of one worker cannot overfill it)."""
        with self.db.write() as conn:
            if capacity is not None:
                count = min(count, capacity - _held_in(conn, worker_id))
            return _claim_for(conn, self.dags, worker_id, pools, count, now, lease_until)

    def exchange(
        self,
        seen: WorkerRecord,
        leaving: bool,
        finishes: Sequence[AttemptFinish],
        held: Sequence[tuple[str, int]],
        now: int,
        lease_until: int,
        capacity: int | None = None,
        waiting: Sequence[tuple[str, int]] = (),
    ) -> Exchange:
        """One poll of a worker, in one transaction: register or refresh it (`seen`), record
        the results it sends (each only if it holds the attempt under a live lease, as
        `finish`), renew the leases of the other attempts it holds (as `renew`) and claim
        queued tasks of its pools for the slots it has free (none when `leaving`): `capacity`
        (default: its max_tasks) less what it holds. `waiting`: attempts it holds but has not
        started (prefetched), renewed without being confirmed."""
        done = {(f.task_instance_id, f.attempt) for f in finishes}
        with self.db.write() as conn:
            _upsert_worker(conn, seen, "left" if leaving else "online")
            recorded = _record(conn, finishes, seen.worker_id, now)
            renewed = _renew(conn, seen.worker_id, [h for h in held if h not in done], lease_until)
            renewed += _renew(conn, seen.worker_id, waiting, lease_until, confirm=False)
            claims: list[Claim] = []
            room = seen.max_tasks if capacity is None else capacity
            free = 0 if leaving else room - _held_in(conn, seen.worker_id)
            if free > 0:
                claims = _claim_for(
                    conn, self.dags, seen.worker_id, seen.pools, free, now, lease_until
                )
        return Exchange(recorded, renewed, claims)

    def renew(
        self,
        worker_id: str,
        held: Sequence[tuple[str, int]],
        lease_until: int,
        seen: WorkerRecord | None = None,
        leaving: bool = False,
        waiting: Sequence[tuple[str, int]] = (),
    ) -> list[HeldAttempt]:
        """Extend the leases of the attempts a worker reports holding; say for each whether
        the worker must stop it (killed) or drop it (no longer its own). With `seen`, the
        worker is registered or refreshed in the same transaction (a master that lost its
        registry learns the worker back from its next message). `waiting`: as in `exchange`."""
        with self.db.write() as conn:
            if seen is not None:
                _upsert_worker(conn, seen, "left" if leaving else "online")
            renewed = _renew(conn, worker_id, held, lease_until)
            return renewed + _renew(conn, worker_id, waiting, lease_until, confirm=False)

    def holder(self, task_instance_id: str, attempt: int, now: int) -> str | None:
        """The worker that holds this attempt under a live lease, or None."""
        return self.holders([(task_instance_id, attempt)], now).get((task_instance_id, attempt))

    def holders(self, attempts: Sequence[tuple[str, int]], now: int) -> dict[tuple[str, int], str]:
        """The workers that hold these attempts under a live lease, in one query (an attempt
        nobody holds is left out): a poll's results are checked together."""
        ids = sorted({task_instance_id for task_instance_id, _ in attempts})
        if not ids:
            return {}
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT a.task_instance_id, a.attempt, a.worker FROM task_attempts a JOIN "
                "task_instances ti ON ti.id=a.task_instance_id AND ti.attempt=a.attempt WHERE "
                f"a.task_instance_id IN ({', '.join('?' * len(ids))}) AND a.status='running' "
                "AND ti.lease_expires_at >= ?",
                (*ids, now),
            ).fetchall()
        wanted = set(attempts)
        return {(r[0], r[1]): str(r[2]) for r in rows if (r[0], r[1]) in wanted}

    def finish(self, finish: AttemptFinish, worker_id: str, now: int) -> bool | None:
        """Record a worker's result if it still holds the attempt under a live lease; None when
        it does not (lease ran out, another attempt, another worker). Otherwise like
        finish_attempt: whether the task moved (a kill that came first keeps `cancelled`)."""
        with self.db.write() as conn:
            if not _holds(conn, finish.task_instance_id, finish.attempt, worker_id, now, True):
                return None
            return finish_one(conn, finish)

    def expired(self, now: int) -> list[tuple[str, int, str, bool]]:
        """(task instance, attempt, worker, confirmed) of open remote attempts whose lease ran
        out; `confirmed`: the worker said it held the attempt at least once after the claim."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT a.task_instance_id, a.attempt, a.worker, ti.lease_confirmed "
                "FROM task_attempts a "
                "JOIN task_instances ti ON ti.id=a.task_instance_id AND ti.attempt=a.attempt "
                "WHERE a.status='running' AND a.worker != 'local' AND ti.lease_expires_at < ?",
                (now,),
            ).fetchall()
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def expire(self, finish: AttemptFinish, worker_id: str, now: int) -> bool:
        """Close an attempt whose lease ran out (compare-and-set: a result that arrived first
        wins, and of two masters' reapers the one that takes the lease first). Returns whether
        it was closed here."""
        with self.db.write() as conn:
            if not _holds(conn, finish.task_instance_id, finish.attempt, worker_id, now, False):
                return False
            taken = conn.execute(  # (waits for another reaper's transaction, then sees NULL)
                "UPDATE task_instances SET lease_expires_at=NULL WHERE id=? AND attempt=? "
                "AND lease_expires_at IS NOT NULL AND lease_expires_at < ?",
                (finish.task_instance_id, finish.attempt, now),
            ).rowcount
            if not taken:
                return False
            finish_one(conn, finish)
        return True

    def renew_all(self, worker_id: str, until: int) -> int:
        """Renew every lease `worker_id` holds (a master's own local attempts, on a shared
        database: renewed while it lives, reaped like a lost worker's once it died)."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE task_instances SET lease_expires_at=? WHERE worker=? AND "
                "lease_expires_at IS NOT NULL AND status IN ('running', 'cancelled')",
                (until, worker_id),
            )
        return cursor.rowcount

    def extend(self, until: int) -> int:
        """On the start of a master alone on its database: the workers could not renew while
        it was down, so every open lease of a remote worker gets a full term from now (a
        master's own attempts, "local@<id>", are not a worker's). Returns how many."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE task_instances SET lease_expires_at=max(lease_expires_at, ?) "
                "WHERE lease_expires_at IS NOT NULL AND status IN ('running', 'cancelled') "
                "AND substr(worker, 1, 6) != 'local@'",
                (until,),
            )
        return cursor.rowcount


def _held_in(conn: sqlite3.Connection, worker_id: str) -> int:
    """How many attempts `worker_id` runs, as this transaction sees it."""
    row = conn.execute(
        "SELECT count(*) FROM task_attempts WHERE status='running' AND worker=?", (worker_id,)
    ).fetchone()
    return int(row[0])


def _claim_for(
    conn: sqlite3.Connection,
    dags: DagStore,
    worker_id: str,
    pools: Sequence[str],
    count: int,
    now: int,
    lease_until: int,
) -> list[Claim]:
    """Up to `count` queued tasks of `pools`, oldest first per pool, pools taken in turn (one
    task each; the last pool with work left gives the rest in one statement)."""
    claims: list[Claim] = []
    open_pools = list(pools)
    while open_pools and len(claims) < count:
        for pool in list(open_pools):
            left = count - len(claims)
            if left <= 0:
                break
            want = left if len(open_pools) == 1 else 1
            claimed = claim_queued(conn, dags, pool, worker_id, now, lease_until, want)
            if len(claimed) < want:  # its queue is empty now
                open_pools.remove(pool)
            claims += claimed
    return claims


def _record(
    conn: sqlite3.Connection, finishes: Sequence[AttemptFinish], worker_id: str, now: int
) -> list[bool | None]:
    """Close the attempts `worker_id` holds under a live lease (metrics summed, two statements
    however many); per finish: whether the task moved, None when the worker does not hold it."""
    held = [f for f in finishes if _holds(conn, f.task_instance_id, f.attempt, worker_id, now)]
    moved: set[str] = set()
    if held:
        tally = AttemptTally()
        moved = finish_many(conn, held, tally)
        tally.write(conn)
    accepted = {id(f) for f in held}
    return [f.task_instance_id in moved if id(f) in accepted else None for f in finishes]


def _renew(
    conn: sqlite3.Connection,
    worker_id: str,
    held: Sequence[tuple[str, int]],
    lease_until: int,
    confirm: bool = True,
) -> list[HeldAttempt]:
    """Extend the leases of the attempts a worker still holds (and, with `confirm`, mark them
    confirmed: the worker runs them); for each, whether it must stop it (killed) or drop it
    (no longer its own)."""
    answers = []
    confirmed = ", lease_confirmed=1" if confirm else ""
    for task_instance_id, attempt in held:
        row = conn.execute(
            f"UPDATE task_instances SET lease_expires_at=?{confirmed} "
            "WHERE id=? AND attempt=? AND "
            "worker=? AND status IN ('running', 'cancelled') AND lease_expires_at IS "
            "NOT NULL AND EXISTS (SELECT 1 FROM task_attempts a WHERE "
            "a.task_instance_id=? AND a.attempt=? AND a.status='running') "
            "RETURNING status",
            (lease_until, task_instance_id, attempt, worker_id, task_instance_id, attempt),
        ).fetchone()
        cancel = row is not None and row[0] == TaskStatus.CANCELLED
        answers.append(HeldAttempt(task_instance_id, attempt, cancel, lost=row is None))
    return answers


def _holds(
    conn: sqlite3.Connection,
    task_instance_id: str,
    attempt: int,
    worker: str,
    now: int,
    live: bool = True,
) -> bool:
    """Whether `worker` holds the open attempt, under a lease still live (or, with
    live=False, one that has run out)."""
    row = conn.execute(
        "SELECT ti.lease_expires_at FROM task_attempts a JOIN task_instances ti ON "
        "ti.id=a.task_instance_id AND ti.attempt=a.attempt WHERE a.task_instance_id=? AND "
        "a.attempt=? AND a.worker=? AND a.status='running' AND ti.lease_expires_at IS NOT NULL",
        (task_instance_id, attempt, worker),
    ).fetchone()
    if row is None:
        return False
    return bool(row[0] >= now) if live else bool(row[0] < now)


def _upsert_worker(conn: sqlite3.Connection, worker: WorkerRecord, state: str) -> None:
    conn.execute(
        "INSERT INTO workers(worker_id, hostname, pools, max_tasks, version, state, "
        "registered_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(worker_id) DO "
        "UPDATE SET hostname=excluded.hostname, pools=excluded.pools, "
        "max_tasks=excluded.max_tasks, version=excluded.version, state=excluded.state, "
        "last_seen=excluded.last_seen",
        (
            worker.worker_id,
            worker.hostname,
            json.dumps(list(worker.pools)),
            worker.max_tasks,
            worker.version,
            state,
            worker.last_seen,
            worker.last_seen,
        ),
    )


def _worker_from_row(row: sqlite3.Row) -> WorkerRecord:
    return WorkerRecord(
        worker_id=row["worker_id"],
        hostname=row["hostname"],
        pools=tuple(json.loads(row["pools"])),
        max_tasks=row["max_tasks"],
        version=row["version"],
        state=row["state"],
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
        running=row["running"],
    )
