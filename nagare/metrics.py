"""Metrics: the data behind `/api/metrics/*` (typed; `http/serialize.py` gives their JSON shapes)
and the Prometheus exposition of `/metrics`.

Windows are `[now - since, now]` compared as epoch milliseconds (never as strings). Totals come
from the store's roll-up (per hour and per 5 minutes) plus the attempt rows of the partial first
5 minutes, so a 30-day overview reads a few thousand small rows, not every attempt. A time
series is the newest N attempts (or N buckets), returned oldest first. Success rate = successful
attempts / attempts that succeeded or failed (killed attempts are not outcomes of the task); the
run-level rate is the same over the runs that finished in the window (a run that succeeded after a
retry is one success, where its attempts are one failure and one success). p50/p95 interpolate
linearly between the two nearest ranks (the textbook median for an even count), for a window and
for each time bucket (the latter up to `PERCENTILE_LIMIT` attempts in the window).
"""

from __future__ import annotations

import math
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from nagare import __version__
from nagare.clock import now_ms
from nagare.dag_folder import DagFolder
from nagare.errors import BadRequest, NotFound
from nagare.models import Run, TaskInstance, TaskStatus
from nagare.prometheus import Family, render
from nagare.store import (
    DURATION_BUCKETS_MS,
    INF_MS,
    CounterRow,
    DurationRow,
    MetricAgg,
    MetricPoint,
    RunOutcomes,
)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
SINCE_PRESETS = ("1h", "6h", "24h", "7d", "30d")
DEFAULT_SINCE = "24h"
MAX_SPAN_DAYS = 3650
DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000
SLOWEST = 10
QUANTILES = (0.5, 0.95)
# Above this many attempts in a bucketed window, its buckets carry no p50/p95 (null): those need
# every attempt's duration, where the other bucket figures come from the roll-up.
PERCENTILE_LIMIT = 50_000  # (about 0.15 s of SQLite for the largest window)
BUCKETS_MS = {
    "1m": MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "1h": HOUR_MS,
    "6h": 6 * HOUR_MS,
    "1d": DAY_MS,
}
_SPAN = re.compile(r"^([0-9]{1,7})([mhd])$")
_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}


# ---------------------------------------------------------------- parsing (pure)


def parse_span(text: str, name: str = "since") -> int:
    """`90m`, `6h`, `30d` -> milliseconds. Anything else is a BadRequest naming the forms."""
    match = _SPAN.match(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise BadRequest(
            f"{name} must be a positive number of minutes, hours or days such as "
            f"{', '.join(SINCE_PRESETS)} or 90m, found '{text}'"
        )
    span = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if span > MAX_SPAN_DAYS * DAY_MS:
        raise BadRequest(f"{name} must be at most {MAX_SPAN_DAYS}d, found '{text}'")
    return span


def parse_bucket(text: str) -> int:
    """`''` -> 0 (no bucketing); `1m 5m 15m 1h 6h 1d` -> milliseconds."""
    if not text:
        return 0
    if text not in BUCKETS_MS:
        raise BadRequest(f"bucket must be one of {', '.join(BUCKETS_MS)}, found '{text}'")
    return BUCKETS_MS[text]


def interpolated(low: float, high: float, fraction: float) -> float:
    return low + (high - low) * fraction


def rank_offsets(count: int, quantile: float) -> tuple[int, int, float]:
    """The two 0-based ranks around `quantile` of `count` sorted values, and the weight of the
    upper one (linear interpolation, as numpy's default)."""
    position = (count - 1) * quantile
    low = math.floor(position)
    return low, min(low + 1, count - 1), position - low


def rate(success: int, failed: int) -> float | None:
    """Share of outcomes that succeeded; None when there is no outcome."""
    total = success + failed
    return round(success / total, 6) if total else None


def mean(total: int, count: int) -> float:
    """Mean per attempt, to 3 decimals; 0.0 when there is no attempt."""
    return round(total / count, 3) if count else 0.0


def quantile_values(
    count: int, durations: dict[int, int], quantiles: tuple[float, ...]
) -> list[float | None]:
    """The interpolated quantiles of `count` sorted values of which `durations` holds those at
    the ranks `rank_offsets` names (None for a rank not there, i.e. an empty set)."""
    values: list[float | None] = []
    for quantile in quantiles:
        low, high, weight = rank_offsets(max(count, 1), quantile)
        if count == 0 or low not in durations or high not in durations:
            values.append(None)
        else:
            values.append(round(interpolated(durations[low], durations[high], weight), 3))
    return values


def bucket_percentiles(
    aggs: list[MetricAgg], ranks: list[tuple[int, int, int, int]]
) -> list[Bucket]:
    """Time buckets with their p50/p95, from (bucket, attempts, rank, duration) rows."""
    found: dict[int, dict[int, int]] = {}
    for bucket, _, rank, duration in ranks:
        found.setdefault(bucket, {})[rank] = duration
    out = []
    for agg in aggs:
        p50, p95 = quantile_values(agg.attempts, found.get(agg.bucket, {}), QUANTILES)
        out.append(Bucket(agg, p50, p95))
    return out


# ---------------------------------------------------------------- what the service returns


@dataclass(frozen=True)
class PoolInfo:
    """One worker pool's load: its local slots, its tasks and the remote workers serving it."""

    pool: str
    local_slots: int
    busy_slots: int
    queued: int
    running: int
    remote_workers: int = 0
    remote_workers_online: int = 0
    remote_capacity: int = 0  # max_tasks of its online workers

    @property
    def remote_only(self) -> bool:
        return self.local_slots == 0

    @property
    def no_live_worker(self) -> bool:
        return self.remote_only and self.remote_workers_online == 0


def queued_reason(pool: str, info: PoolInfo | None) -> str:
    """Why a queued task has not started, from its pool's load (None: a pool nobody serves and
    no task ran in): no worker can take it, or every slot is busy, or it is next in line."""
    if info is None or info.no_live_worker:
        offline = info.remote_workers - info.remote_workers_online if info else 0
        known = f" ({offline} offline)" if offline else ""
        return f"waiting for a worker in pool {pool} — none online{known}"
    capacity = info.local_slots + info.remote_capacity
    if capacity and info.running >= capacity:
        return f"pool full: {info.running}/{capacity} running"
    if capacity:
        return f"waiting for a slot in pool {pool}: {info.running}/{capacity} running"
    return f"waiting for a slot in pool {pool}"


@dataclass
class LiveState:
    """What only the running process knows, gathered by `app` for each scrape."""

    pools: list[PoolInfo] = field(default_factory=list)  # app.pool_info()
    scheduler_lag_ms: int = 0
    workers: dict[str, int] = field(default_factory=dict)  # status -> count


@dataclass(frozen=True)
class Bucket:
    """The attempts of one time bucket: totals, and duration percentiles (None when the bucket
    is empty or the window has more than `PERCENTILE_LIMIT` attempts)."""

    agg: MetricAgg
    p50_duration_ms: float | None = None
    p95_duration_ms: float | None = None


TimeSeries = list[MetricPoint] | list[Bucket]  # attempts, or time buckets when bucketed


@dataclass(frozen=True)
class Overview:
    """A window `[since, until]` (epoch ms), of every DAG or of one: attempt totals, per DAG
    (most attempts first), the slowest attempts (longest first), and the runs that finished
    (in total and per DAG; a DAG with finished runs and no attempt is in `per_dag` too)."""

    since: int
    until: int
    total: MetricAgg
    per_dag: list[MetricAgg]
    slowest: list[MetricPoint]
    runs: RunOutcomes
    runs_per_dag: dict[str, RunOutcomes]


@dataclass(frozen=True)
class DagMetrics:
    """One DAG over a window: totals, duration percentiles (None without attempts), series."""

    dag_id: str
    run_count: int  # runs created in the window
    runs: RunOutcomes  # runs finished in the window
    aggregate: MetricAgg
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    time_series: TimeSeries


@dataclass(frozen=True)
class TaskMetrics:
    """One task instance and the metrics of its finished attempts (oldest first)."""

    task_instance_id: str
    run_id: str
    dag_id: str
    task_id: str
    task_status: TaskStatus
    attempts: list[MetricPoint]


# ---------------------------------------------------------------- the service


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _MetricsMetrics(Protocol):
        def active_run_counts(self) -> dict[str, int]: ...

        def aggregates(
            self, start: int, *, dag_id: str = "", bucket_ms: int = 0, by_dag: bool = False
        ) -> list[MetricAgg]: ...

        def bucket_duration_ranks(
            self, start: int, dag_id: str, bucket_ms: int, quantiles: tuple[float, ...]
        ) -> list[tuple[int, int, int, int]]: ...

        def counters(self) -> list[CounterRow]: ...

        def duration_at_ranks(self, start: int, dag_id: str, offsets: list[int]) -> list[int]: ...

        def duration_histogram(self) -> list[DurationRow]: ...

        def has_attempts(self, dag_id: str) -> bool: ...

        def of_run(self, run_id: str) -> list[MetricPoint]: ...

        def of_task(self, task_instance_id: str) -> list[MetricPoint]: ...

        def points(self, start: int, dag_id: str, limit: int) -> list[MetricPoint]: ...

        def run_outcomes(self, start: int, dag_id: str = "") -> dict[str, RunOutcomes]: ...

        def runs_created_since(self, start: int, dag_id: str) -> int: ...

        def slowest_attempts(
            self, start: int, limit: int, window_attempts: int, dag_id: str = ""
        ) -> list[MetricPoint]: ...

    class _MetricsRuns(Protocol):
        def exists(self, run_id: str) -> bool: ...

        def get(self, run_id: str, counts: bool = True) -> Run | None: ...

    class _MetricsTasks(Protocol):
        def by_id(self, task_instance_id: str) -> TaskInstance | None: ...

    class MetricsStore(Protocol):
        """The parts of the store the metrics service reads, and what of them."""

        @property
        def metrics(self) -> _MetricsMetrics: ...

        @property
        def runs(self) -> _MetricsRuns: ...

        @property
        def tasks(self) -> _MetricsTasks: ...


class MetricsService:
    def __init__(
        self,
        store: MetricsStore,
        folder: DagFolder,
        live: Callable[[], LiveState],
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.folder = folder
        self.live = live
        self.clock = clock

    def window_start(self, since: str) -> int:
        return self.clock() - parse_span(since or DEFAULT_SINCE)

    # ------------------------------------------------------------ /api/metrics/*

    def overview(self, since: str, dag_id: str = "") -> Overview:
        now = self.clock()
        start = now - parse_span(since or DEFAULT_SINCE)
        per_dag = self.store.metrics.aggregates(start, dag_id=dag_id, by_dag=True)
        runs_per_dag = self.store.metrics.run_outcomes(start, dag_id)
        total, runs = MetricAgg(0, ""), RunOutcomes("")
        for agg in per_dag:
            total.add(agg)
        for outcomes in runs_per_dag.values():
            runs.add(outcomes)
        seen = {a.dag_id for a in per_dag}
        per_dag += [MetricAgg(0, d) for d in runs_per_dag if d not in seen]
        per_dag.sort(key=lambda a: (-a.attempts, a.dag_id))
        slowest = self.store.metrics.slowest_attempts(start, SLOWEST, total.attempts, dag_id)
        return Overview(start, now, total, per_dag, slowest, runs, runs_per_dag)

    def timeseries(self, since: str, dag_id: str, limit: int, bucket: str) -> TimeSeries:
        now = self.clock()
        start = now - parse_span(since or DEFAULT_SINCE)
        bucket_ms = parse_bucket(bucket)
        if not bucket_ms:
            return self.store.metrics.points(start, dag_id, limit)
        first = max(start, (now // bucket_ms - (limit - 1)) * bucket_ms)  # the newest `limit`
        aggs = self.store.metrics.aggregates(first, dag_id=dag_id, bucket_ms=bucket_ms)
        if sum(a.attempts for a in aggs) > PERCENTILE_LIMIT:
            return [Bucket(a) for a in aggs]
        ranks = self.store.metrics.bucket_duration_ranks(first, dag_id, bucket_ms, QUANTILES)
        return bucket_percentiles(aggs, ranks)

    def dag(self, dag_id: str, since: str, limit: int, bucket: str) -> DagMetrics:
        start = self.window_start(since)
        parse_bucket(bucket)  # bad input is a 400 before an unknown DAG is a 404
        if self.folder.get(dag_id) is None and not self.store.metrics.has_attempts(dag_id):
            raise NotFound(f"DAG '{dag_id}' is not loaded and has no recorded metrics")
        aggs = self.store.metrics.aggregates(start, dag_id=dag_id)
        agg = aggs[0] if aggs else MetricAgg(0, dag_id)
        p50, p95 = self._percentiles(start, dag_id, agg.attempts, (0.5, 0.95))
        runs = self.store.metrics.run_outcomes(start, dag_id).get(dag_id, RunOutcomes(dag_id))
        return DagMetrics(
            dag_id=dag_id,
            run_count=self.store.metrics.runs_created_since(start, dag_id),
            runs=runs,
            aggregate=agg,
            p50_duration_ms=p50,
            p95_duration_ms=p95,
            time_series=self.timeseries(since, dag_id, limit, bucket),
        )

    def _percentiles(
        self, start: int, dag_id: str, count: int, quantiles: tuple[float, ...]
    ) -> list[float | None]:
        if count == 0:
            return [None for _ in quantiles]
        ranks = [rank_offsets(count, q) for q in quantiles]
        offsets = sorted({r for low, high, _ in ranks for r in (low, high)})
        found = self.store.metrics.duration_at_ranks(start, dag_id, offsets)
        values = dict(zip(offsets, found, strict=True))
        return [round(interpolated(values[lo], values[hi], w), 3) for lo, hi, w in ranks]

    def task(self, task_instance_id: str) -> TaskMetrics:
        task = self.store.tasks.by_id(task_instance_id)
        if task is None:
            raise NotFound(f"task instance '{task_instance_id}' not found")
        attempts = self.store.metrics.of_task(task_instance_id)
        run = self.store.runs.get(task.run_id, counts=False)
        return TaskMetrics(
            task_instance_id=task.id,
            run_id=task.run_id,
            dag_id=run.dag_id if run is not None else "",
            task_id=task.task_id,
            task_status=task.status,
            attempts=attempts,
        )

    def run(self, run_id: str) -> list[MetricPoint]:
        if not self.store.runs.exists(run_id):
            raise NotFound(f"run '{run_id}' not found")
        return self.store.metrics.of_run(run_id)

    # ------------------------------------------------------------ Prometheus

    def prometheus(self) -> str:
        live = self.live()
        return render(
            [
                *self._counter_families(),
                self._duration_family(),
                *self._live_families(live),
                *process_families(),
            ]
        )

    def _counter_families(self) -> list[Family]:
        runs = Family("nagare_dag_runs_total", "counter", "Runs that finished, by DAG and status.")
        tasks = Family(
            "nagare_task_runs_total",
            "counter",
            "Task attempts that finished, by DAG, task (map children count under their map "
            "task) and status.",
        )
        for row in self.store.metrics.counters():
            if row.name == "dag_runs":
                runs.add(row.value, dag=row.dag_id, status=row.status)
            elif row.name == "task_runs":
                tasks.add(row.value, dag=row.dag_id, task=row.task_id, status=row.status)
        return [runs, tasks]

    def _duration_family(self) -> Family:
        family = Family(
            "nagare_task_duration_seconds",
            "histogram",
            "Duration of finished task attempts, by DAG and pool.",
        )
        series: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        for row in self.store.metrics.duration_histogram():
            series.setdefault((row.dag_id, row.pool), []).append((row.le_ms, row.count, row.sum_ms))
        for (dag_id, pool), rows in sorted(series.items()):
            counts = {le: count for le, count, _ in rows}
            total_ms = sum(s for _, _, s in rows)
            bounds = sorted(set(DURATION_BUCKETS_MS) | set(counts))
            buckets = [(_seconds(le), counts.get(le, 0)) for le in bounds]
            family.histogram(buckets, total_ms / 1000, dag=dag_id, pool=pool)
        return family

    def _live_families(self, live: LiveState) -> list[Family]:
        runs = self.store.metrics.active_run_counts()
        snapshot = self.folder.snapshot
        queued = Family("nagare_tasks_queued", "gauge", "Tasks waiting for a slot, by pool.")
        running = Family("nagare_tasks_running", "gauge", "Tasks running, by pool.")
        slots = Family(
            "nagare_pool_slots", "gauge", "Local worker slots by pool and state (busy, idle)."
        )
        for pool in live.pools:
            queued.add(pool.queued, pool=pool.pool)
            running.add(pool.running, pool=pool.pool)
            slots.add(pool.busy_slots, pool=pool.pool, state="busy")
            slots.add(max(0, pool.local_slots - pool.busy_slots), pool=pool.pool, state="idle")
        workers = Family("nagare_workers", "gauge", "Remote workers by status.")
        for status, count in sorted({"online": 0, "offline": 0, **live.workers}.items()):
            workers.add(count, status=status)
        return [
            Family("nagare_runs_running", "gauge", "Runs in status running.").add(runs["running"]),
            Family("nagare_runs_queued", "gauge", "Runs created but not started yet.").add(
                runs["queued"]
            ),
            queued,
            running,
            slots,
            workers,
            Family(
                "nagare_scheduler_lag_seconds",
                "gauge",
                "Delay between the latest fired cron slot's time and the creation of its run.",
            ).add(live.scheduler_lag_ms / 1000),
            Family("nagare_dags_loaded", "gauge", "DAGs loaded from the DAG folder.").add(
                len(snapshot.dags)
            ),
            Family(
                "nagare_dag_load_errors",
                "gauge",
                "DAG files that failed to load (/api/dags/errors).",
            ).add(len(snapshot.errors)),
            Family("nagare_build_info", "gauge", "Version of Nagare and of Python (always 1).").add(
                1, version=__version__, python=sys.version.split()[0]
            ),
        ]


# ---------------------------------------------------------------- histogram and process


def _seconds(le_ms: int) -> float:
    return math.inf if le_ms >= INF_MS else le_ms / 1000


def process_families() -> list[Family]:
    """The standard `process_*` metrics of this server process (Linux /proc; CPU time
    everywhere)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    families = [
        Family(
            "process_cpu_seconds_total", "counter", "Total user and system CPU time in seconds."
        ).add(round(usage.ru_utime + usage.ru_stime, 3)),
    ]
    stat = _proc_self_stat()
    if stat:
        ticks = os.sysconf("SC_CLK_TCK")
        page = os.sysconf("SC_PAGE_SIZE")
        families += [
            Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.").add(
                int(stat[21]) * page
            ),
            Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.").add(
                int(stat[20])
            ),
            Family(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch in seconds.",
            ).add(round(_boot_time() + int(stat[19]) / ticks, 2)),
        ]
    fds = _open_fds()
    if fds is not None:
        families += [
            Family("process_open_fds", "gauge", "Number of open file descriptors.").add(fds),
            Family("process_max_fds", "gauge", "Maximum number of open file descriptors.").add(
                resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            ),
        ]
    return families


def _proc_self_stat() -> list[str]:
    """Fields of /proc/self/stat after the command name (field 3 is index 0)."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    fields = text.rpartition(")")[2].split()
    return fields if len(fields) > 21 else []


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return time.time() - time.monotonic()


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
