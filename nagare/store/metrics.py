"""Metrics in SQLite.

Every finished attempt is one row of `task_attempts` (duration, CPU, peak memory, exit code,
status). Three small tables are kept up to date in the same transaction that closes attempts
or finishes a run (`AttemptTally`, `count_run`), so that reading totals costs a few index
lookups whatever the size of the history:

- `metric_rollup`: per DAG and UTC hour (and per 5 minutes), the count, outcomes and
  sums/maxima of the attempts that finished then. A window is read as its whole hours from here,
  its partial first hour from the 5-minute rows and its partial first 5 minutes from
  `task_attempts`, so windows stay exact to the millisecond.
- `metric_counters`: monotonic counters for Prometheus (runs by DAG and status, attempts by DAG,
  task and status); retention never lowers them.
- `metric_durations`: the attempt duration histogram by DAG and pool.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from nagare.models import AttemptMetrics
from nagare.store.db import Database
from nagare.store.schema import (
    DURATION_BUCKETS_MS,
    ROLLUP_AGGREGATES,
    ROLLUP_COLUMNS,
    ROLLUP_UNITS_MS,
)

# Above this many attempts in a window, the slowest ones are found by walking the duration
# index from the top (a few entries) rather than by sorting the window.
SLOWEST_SORT_LIMIT = 20_000
_POINT_COLUMNS = (
    "a.task_instance_id, a.attempt, a.run_id, a.dag_id, a.task_id, a.status, a.worker, "
    "a.executor_type, a.started_at, a.completed_at, coalesce(a.duration_ms, 0), "
    "coalesce(a.cpu_user_ms, 0), coalesce(a.cpu_system_ms, 0), "
    "coalesce(a.peak_memory_bytes, 0), a.exit_code, a.timed_out"
)
_AGG_RAW = ROLLUP_AGGREGATES
_AGG_ROLLUP = (
    "sum(attempts), sum(success), sum(cancelled), sum(duration_sum), max(duration_max), "
    "sum(memory_sum), max(memory_max), sum(cpu_sum)"
)


@dataclass
class MetricPoint:
    """The metrics of one finished attempt."""

    task_instance_id: str
    attempt: int
    run_id: str
    dag_id: str
    task_id: str
    status: str
    worker: str
    executor_type: str
    started_at: int | None
    completed_at: int
    duration_ms: int
    cpu_user_ms: int
    cpu_system_ms: int
    peak_memory_bytes: int
    exit_code: int | None
    timed_out: bool


@dataclass
class MetricAgg:
    """Totals of the attempts of one time bucket (0 when not bucketed) and DAG ('' when not
    grouped by DAG)."""

    bucket: int
    dag_id: str
    attempts: int = 0
    success: int = 0
    cancelled: int = 0
    duration_sum: int = 0
    duration_max: int = 0
    memory_sum: int = 0
    memory_max: int = 0
    cpu_sum: int = 0

    @property
    def failed(self) -> int:
        return self.attempts - self.success - self.cancelled

    def add(self, other: MetricAgg) -> None:
        self.attempts += other.attempts
        self.success += other.success
        self.cancelled += other.cancelled
        self.duration_sum += other.duration_sum
        self.duration_max = max(self.duration_max, other.duration_max)
        self.memory_sum += other.memory_sum
        self.memory_max = max(self.memory_max, other.memory_max)
        self.cpu_sum += other.cpu_sum


@dataclass
class RunOutcomes:
    """Runs of one DAG ('' for all DAGs) that finished in a window, by final status."""

    dag_id: str
    success: int = 0
    failed: int = 0
    cancelled: int = 0
    skipped: int = 0

    @property
    def finished(self) -> int:
        return self.success + self.failed + self.cancelled + self.skipped

    def count(self, status: str, runs: int) -> None:
        if status in RUN_OUTCOMES:
            setattr(self, status, getattr(self, status) + runs)

    def add(self, other: RunOutcomes) -> None:
        for status in RUN_OUTCOMES:
            self.count(status, getattr(other, status))


RUN_OUTCOMES = ("success", "failed", "cancelled", "skipped")


@dataclass
class CounterRow:
    name: str  # dag_runs | task_runs
    dag_id: str
    task_id: str  # the base task id (map children count under their map task)
    status: str
    value: int


@dataclass
class DurationRow:
    dag_id: str
    pool: str
    le_ms: int
    count: int
    sum_ms: int


# ---------------------------------------------------------------- writes (inside a transaction)


class AttemptTally:
    """The roll-up, counter and histogram increments of the attempts closed in one
    transaction; `write` adds them with one statement per table, however many attempts."""

    def __init__(self) -> None:
        self._rollup: dict[tuple[int, int, str], list[int]] = {}
        self._counters: dict[tuple[str, str, str], int] = {}
        self._durations: dict[tuple[str, str, int], list[int]] = {}

    def add(
        self,
        dag_id: str,
        task_id: str,
        pool: str,
        status: str,
        metrics: AttemptMetrics,
        completed_at: int,
    ) -> None:
        """One closed attempt (`task_id`: the base task id; map children count under it)."""
        duration = metrics.duration_ms or 0
        memory = metrics.peak_memory_bytes or 0
        cpu = (metrics.cpu_user_ms or 0) + (metrics.cpu_system_ms or 0)
        success, cancelled = int(status == "success"), int(status == "cancelled")
        for unit in ROLLUP_UNITS_MS:
            row = self._rollup.setdefault((unit, completed_at // unit * unit, dag_id), [0] * 8)
            row[0] += 1
            row[1] += success
            row[2] += cancelled
            row[3] += duration
            row[4] = max(row[4], duration)
            row[5] += memory
            row[6] = max(row[6], memory)
            row[7] += cpu
        key = (dag_id, task_id, status)
        self._counters[key] = self._counters.get(key, 0) + 1
        bucket = self._durations.setdefault((dag_id, pool, duration_bucket(duration)), [0, 0])
        bucket[0] += 1
        bucket[1] += duration

    def write(self, conn: sqlite3.Connection) -> None:
        if not self._rollup:
            return
        conn.executemany(
            f"INSERT INTO metric_rollup({ROLLUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(unit, start, dag_id) DO UPDATE SET "
            "attempts = attempts + excluded.attempts, success = success + excluded.success, "
            "cancelled = cancelled + excluded.cancelled, "
            "duration_sum = duration_sum + excluded.duration_sum, "
            "duration_max = max(duration_max, excluded.duration_max), "
            "memory_sum = memory_sum + excluded.memory_sum, "
            "memory_max = max(memory_max, excluded.memory_max), "
            "cpu_sum = cpu_sum + excluded.cpu_sum",
            [(*key, *values) for key, values in self._rollup.items()],
        )
        conn.executemany(
            "INSERT INTO metric_counters(name, dag_id, task_id, status, value) "
            "VALUES ('task_runs', ?, ?, ?, ?) ON CONFLICT(name, dag_id, task_id, status) "
            "DO UPDATE SET value = value + excluded.value",
            [(*key, value) for key, value in self._counters.items()],
        )
        conn.executemany(
            "INSERT INTO metric_durations(dag_id, pool, le_ms, count, sum_ms) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(dag_id, pool, le_ms) DO UPDATE SET "
            "count = count + excluded.count, sum_ms = sum_ms + excluded.sum_ms",
            [(*key, *values) for key, values in self._durations.items()],
        )


def count_run(conn: sqlite3.Connection, dag_id: str, status: str) -> None:
    """A run reached a terminal status."""
    _count(conn, "dag_runs", dag_id, "", status)


def _count(conn: sqlite3.Connection, name: str, dag_id: str, task_id: str, status: str) -> None:
    conn.execute(
        "INSERT INTO metric_counters(name, dag_id, task_id, status, value) VALUES (?, ?, ?, ?, 1) "
        "ON CONFLICT(name, dag_id, task_id, status) DO UPDATE SET value = value + 1",
        (name, dag_id, task_id, status),
    )


def duration_bucket(duration_ms: int) -> int:
    """The upper bound (ms) of the histogram bucket a duration falls into."""
    for le in DURATION_BUCKETS_MS:
        if duration_ms <= le:
            return le
    return DURATION_BUCKETS_MS[-1]


def refresh_rollup(conn: sqlite3.Connection, finished: set[tuple[str, int]]) -> None:
    """Recompute, from `task_attempts`, the roll-up rows covering these (dag_id, completion
    time) pairs (after attempt rows were deleted)."""
    keys = {
        (unit, at // unit * unit, dag_id) for dag_id, at in finished for unit in ROLLUP_UNITS_MS
    }
    for unit, start, dag_id in sorted(keys):
        conn.execute(
            "DELETE FROM metric_rollup WHERE unit=? AND start=? AND dag_id=?",
            (unit, start, dag_id),
        )
        conn.execute(
            f"INSERT INTO metric_rollup({ROLLUP_COLUMNS}) SELECT ?, ?, dag_id, {_AGG_RAW} "
            "FROM task_attempts WHERE dag_id=? AND completed_at >= ? AND completed_at < ? "
            "GROUP BY dag_id",
            (unit, start, dag_id, start, start + unit),
        )


# ---------------------------------------------------------------- reads


class MetricsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def aggregates(
        self, start: int, *, dag_id: str = "", bucket_ms: int = 0, by_dag: bool = False
    ) -> list[MetricAgg]:
        """Totals of the attempts finished at or after `start` (epoch ms), optionally per time
        bucket (`bucket_ms`, aligned to the epoch) and per DAG, oldest bucket first.

        Each roll-up unit that divides the bucket covers the range from `start` rounded up to
        it, up to where the coarser unit takes over; the attempt rows cover the rest (the
        partial first unit, or the whole window for 1-minute buckets)."""
        units = [u for u in ROLLUP_UNITS_MS if bucket_ms == 0 or bucket_ms % u == 0]
        rows: list[MetricAgg] = []
        end: int | None = None  # where the coarser unit took over
        with self.db.read() as conn:
            for unit in units:
                edge = -(-start // unit) * unit
                rows += _rollup_aggregates(conn, unit, edge, end, dag_id, bucket_ms, by_dag)
                end = edge
            rows += _raw_aggregates(conn, start, end, dag_id, bucket_ms, by_dag)
        merged: dict[tuple[int, str], MetricAgg] = {}
        for agg in rows:
            key = (agg.bucket, agg.dag_id)
            if key in merged:
                merged[key].add(agg)
            else:
                merged[key] = agg
        return [merged[k] for k in sorted(merged)]

    def points(self, start: int, dag_id: str, limit: int) -> list[MetricPoint]:
        """The newest `limit` attempts finished at or after `start`, returned oldest first."""
        where, params = _window(start, dag_id)
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_POINT_COLUMNS} FROM task_attempts a WHERE {where} "
                "ORDER BY a.completed_at DESC, a.rowid DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [_point(r) for r in reversed(rows)]

    def slowest_attempts(
        self, start: int, limit: int, window_attempts: int, dag_id: str = ""
    ) -> list[MetricPoint]:
        """The `limit` longest attempts finished at or after `start` (of one DAG, or of all),
        longest first."""
        big = window_attempts > SLOWEST_SORT_LIMIT
        index = "attempts_duration" if big else "attempts_completed"
        if dag_id:
            index = index.replace("attempts_", "attempts_dag_")
        where, params = _window(start, dag_id)
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_POINT_COLUMNS} FROM task_attempts a INDEXED BY {index} "
                f"WHERE {where} ORDER BY a.duration_ms DESC, a.completed_at DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [_point(r) for r in rows]

    def duration_at_ranks(self, start: int, dag_id: str, offsets: list[int]) -> list[int]:
        """The durations at these 0-based ranks (shortest first) of the window's attempts (0
        past its end). Consecutive ranks (a quantile's two) are read by one walk of the
        duration index, not one each."""
        where, params = _window(start, dag_id)
        found: dict[int, int] = {}
        with self.db.read() as conn:
            for first, count in consecutive_runs(offsets):
                rows = conn.execute(
                    f"SELECT coalesce(a.duration_ms, 0) FROM task_attempts a WHERE {where} "
                    "ORDER BY a.duration_ms LIMIT ? OFFSET ?",
                    [*params, count, first],
                ).fetchall()
                found.update((first + number, int(row[0])) for number, row in enumerate(rows))
        return [found.get(offset, 0) for offset in offsets]

    def run_outcomes(self, start: int, dag_id: str = "") -> dict[str, RunOutcomes]:
        """Per DAG, the runs that finished at or after `start` (epoch ms), by final status: one
        range of the `runs_completed` index (it covers the DAG and the status)."""
        with self.db.read() as conn:
            rows = conn.execute(*run_outcomes_query(start, dag_id)).fetchall()
        outcomes: dict[str, RunOutcomes] = {}
        for dag, status, count in rows:
            outcomes.setdefault(dag, RunOutcomes(dag)).count(status, count)
        return outcomes

    def bucket_duration_ranks(
        self, start: int, dag_id: str, bucket_ms: int, quantiles: tuple[float, ...]
    ) -> list[tuple[int, int, int, int]]:
        """Per time bucket of the attempts finished at or after `start`: (bucket, attempts,
        rank, duration) for the two 0-based ranks (shortest first) around each quantile,
        `floor((n - 1) * q)` and the next one (what `metrics.rank_offsets` interpolates)."""
        where, params = _window(start, dag_id)
        # in floating point, as `metrics.rank_offsets` computes them (PostgreSQL reads a
        # literal 0.95 as NUMERIC, whose arithmetic cost more per row than the window itself)
        ranks = ", ".join(
            f"CAST((n - 1) * CAST({float(q)!r} AS DOUBLE PRECISION) AS INTEGER){extra}"
            for q in quantiles
            for extra in ("", " + 1")
        )
        key = f"a.completed_at / {int(bucket_ms)}"
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT k, n, r, d FROM (SELECT ({key}) * {int(bucket_ms)} AS k, "
                "coalesce(a.duration_ms, 0) AS d, "
                f"row_number() OVER (PARTITION BY {key} ORDER BY coalesce(a.duration_ms, 0)) - 1 "
                f"AS r, count(*) OVER (PARTITION BY {key}) AS n "
                f"FROM task_attempts a WHERE {where}) WHERE r IN ({ranks}) ORDER BY k, r",
                params,
            ).fetchall()
        return [(int(k), int(n), int(r), int(d)) for k, n, r, d in rows]

    def runs_created_since(self, start: int, dag_id: str) -> int:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT count(*) FROM runs WHERE dag_id=? AND created_at >= ?", (dag_id, start)
            ).fetchone()
        return int(row[0])

    def has_attempts(self, dag_id: str) -> bool:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM task_attempts WHERE dag_id=? LIMIT 1", (dag_id,)
            ).fetchone()
        return row is not None

    def of_task(self, task_instance_id: str) -> list[MetricPoint]:
        """Every finished attempt of a task instance, oldest first."""
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_POINT_COLUMNS} FROM task_attempts a WHERE a.task_instance_id=? "
                "AND a.completed_at IS NOT NULL ORDER BY a.attempt",
                (task_instance_id,),
            ).fetchall()
        return [_point(r) for r in rows]

    def of_run(self, run_id: str) -> list[MetricPoint]:
        """Every finished attempt of every task instance of a run, by completion time."""
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_POINT_COLUMNS} FROM task_instances ti JOIN task_attempts a "
                "ON a.task_instance_id = ti.id WHERE ti.run_id=? AND a.completed_at IS NOT NULL "
                "ORDER BY a.completed_at, ti.position, ti.map_index, a.attempt",
                (run_id,),
            ).fetchall()
        return [_point(r) for r in rows]

    def counters(self) -> list[CounterRow]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT name, dag_id, task_id, status, value FROM metric_counters "
                "ORDER BY name, dag_id, task_id, status"
            ).fetchall()
        return [CounterRow(*r) for r in rows]

    def duration_histogram(self) -> list[DurationRow]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT dag_id, pool, le_ms, count, sum_ms FROM metric_durations "
                "ORDER BY dag_id, pool, le_ms"
            ).fetchall()
        return [DurationRow(*r) for r in rows]

    def active_run_counts(self) -> dict[str, int]:
        """How many runs are queued and running."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM runs WHERE status IN ('queued', 'running') "
                "GROUP BY status"
            ).fetchall()
        counts = {"queued": 0, "running": 0}
        counts.update({r[0]: r[1] for r in rows})
        return counts


def consecutive_runs(offsets: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct offsets as (first, count) runs: [3, 4, 9] -> [(3, 2), (9, 1)]."""
    runs: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((offset, 1))
    return runs


def run_outcomes_query(start: int, dag_id: str) -> tuple[str, list[object]]:
    """(dag_id, status, runs) of the runs finished at or after `start`. Named index: left to
    itself the planner prefers walking `runs_dag_status_created` whole for its GROUP BY order."""
    where = "completed_at >= ?" + (" AND dag_id = ?" if dag_id else "")
    params: list[object] = [start, dag_id] if dag_id else [start]
    return (
        "SELECT dag_id, status, count(*) FROM runs INDEXED BY runs_completed "
        f"WHERE {where} GROUP BY dag_id, status",
        params,
    )


def _window(start: int, dag_id: str) -> tuple[str, list[object]]:
    if dag_id:
        return "a.dag_id = ? AND a.completed_at >= ?", [dag_id, start]
    return "a.completed_at >= ?", [start]


def _raw_aggregates(
    conn: sqlite3.Connection,
    start: int,
    end: int | None,
    dag_id: str,
    bucket_ms: int,
    by_dag: bool,
) -> list[MetricAgg]:
    return _aggregates(
        conn, "task_attempts", "completed_at", _AGG_RAW, [], start, end, dag_id, bucket_ms, by_dag
    )


def _rollup_aggregates(
    conn: sqlite3.Connection,
    unit: int,
    start: int,
    end: int | None,
    dag_id: str,
    bucket_ms: int,
    by_dag: bool,
) -> list[MetricAgg]:
    return _aggregates(
        conn,
        "metric_rollup",
        "start",
        _AGG_ROLLUP,
        [("unit = ?", unit)],
        start,
        end,
        dag_id,
        bucket_ms,
        by_dag,
    )


def _aggregates(
    conn: sqlite3.Connection,
    table: str,
    time_column: str,
    aggregate: str,
    filters: list[tuple[str, object]],
    start: int,
    end: int | None,
    dag_id: str,
    bucket_ms: int,
    by_dag: bool,
) -> list[MetricAgg]:
    """Rows of `table` in [start, end) (optionally one DAG), summed per time bucket (and DAG)."""
    if end is not None and end <= start:
        return []
    key = f"({time_column} / {int(bucket_ms)}) * {int(bucket_ms)}" if bucket_ms else "0"
    conditions = [(f"{time_column} >= ?", start), *filters]
    if dag_id:
        conditions.append(("dag_id = ?", dag_id))
    if end is not None:
        conditions.append((f"{time_column} < ?", end))
    dag = "dag_id" if by_dag else "''"
    rows = conn.execute(
        f"SELECT {key} AS k, {dag} AS d, {aggregate} FROM {table} "
        f"WHERE {' AND '.join(c for c, _ in conditions)} GROUP BY k, d",
        [v for _, v in conditions],
    ).fetchall()
    return [MetricAgg(*r) for r in rows if r[2]]


def _point(row: sqlite3.Row) -> MetricPoint:
    return MetricPoint(
        task_instance_id=row[0],
        attempt=row[1],
        run_id=row[2],
        dag_id=row[3],
        task_id=row[4],
        status=row[5],
        worker=row[6],
        executor_type=row[7],
        started_at=row[8],
        completed_at=row[9],
        duration_ms=row[10],
        cpu_user_ms=row[11],
        cpu_system_ms=row[12],
        peak_memory_bytes=row[13],
        exit_code=row[14],
        timed_out=bool(row[15]),
    )
