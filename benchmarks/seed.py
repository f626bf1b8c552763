"""A database with a long history for the API latency workload.

Nagare itself creates the file (so the schema and every migration are real) and records one
genuine run of each history DAG (so `dag_versions` holds real definitions). Then runs, task
instances and attempts are written straight into SQLite with executemany in large transactions.
The result is cached under `benchmarks/.cache/`, keyed by the schema version and the seed size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagfiles
from harness import CACHE_DIR, ROOT, Launcher, Server, trigger_and_wait

SEED_FORMAT = 3  # bump when the generated rows change shape
HISTORY_DAGS = 10
DAY_MS = 86_400_000
HISTORY_DAYS = 30
BATCH_RUNS = 10_000
FAILED_SHARE = 0.05  # runs that failed (their last task failed)
MANUAL_SHARE = 0.10  # runs triggered by hand (the others are scheduled)
SECONDARY_TABLES = ("runs", "task_instances", "task_attempts")


@dataclass(frozen=True)
class HistorySize:
    runs: int
    tasks_per_run: int = 10

    @property
    def tasks(self) -> int:
        return self.runs * self.tasks_per_run


def history_dag_ids() -> list[str]:
    return [f"hist_{index:02d}" for index in range(HISTORY_DAGS)]


def history_dag_files(size: HistorySize) -> dict[str, str]:
    return {f"{d}.yaml": dagfiles.history(d, size.tasks_per_run) for d in history_dag_ids()}


def schema_key() -> str:
    """`schema<N>-<hash>` of the migrations in the source tree."""
    sys.path.insert(0, str(ROOT))
    from nagare.store.schema import MIGRATIONS

    digest = hashlib.sha256("\0".join(MIGRATIONS).encode()).hexdigest()[:8]
    return f"schema{len(MIGRATIONS)}-{digest}"


def cached_path(size: HistorySize) -> Path:
    name = f"history-{schema_key()}-r{size.runs}-t{size.tasks_per_run}-f{SEED_FORMAT}.db"
    return CACHE_DIR / name


def seeded_db(launcher: Launcher, size: HistorySize, say: Callable[[str], None] = print) -> Path:
    """The cached history database, built first if missing."""
    path = cached_path(size)
    if path.exists():
        say(f"  using cached history DB {path.name}")
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    partial = path.with_suffix(".partial")
    start = time.perf_counter()
    say(f"  seeding {size.runs:,} runs / {size.tasks:,} tasks into {path.name} ...")
    versions = _create_with_nagare(launcher, partial, size)
    _fill(partial, versions, size)
    os.replace(partial, path)
    say(f"  seeded in {time.perf_counter() - start:.1f}s ({path.stat().st_size / 2**20:.0f} MB)")
    return path


def _remove_stale(path: Path) -> None:
    """Drop half-written seeds and seeds of another schema or seed format."""
    current = f"history-{schema_key()}-"
    for old in CACHE_DIR.glob("history-*"):
        other_key = not old.name.startswith(current) or f"-f{SEED_FORMAT}." not in old.name
        if other_key or old.name.startswith(path.with_suffix(".partial").name):
            old.unlink()


def _create_with_nagare(launcher: Launcher, db: Path, size: HistorySize) -> dict[str, str]:
    """Start Nagare on `db`, run each history DAG once, stop; returns dag_id -> version hash."""
    with Server(launcher, dags=history_dag_files(size), db=db) as server:
        client = server.client(keep_alive=False)
        for dag_id in history_dag_ids():
            result = trigger_and_wait(client, dag_id, poll_seconds=0.02, timeout=120)
            if result.status != "success":
                raise RuntimeError(f"the genuine run of {dag_id} ended {result.status}")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT dag_id, hash FROM dag_versions").fetchall()
    return dict(rows)


# ---------------------------------------------------------------- bulk rows


def _fill(db: Path, versions: dict[str, str], size: HistorySize) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
        indexes = _drop_secondary_indexes(conn)
        now = int(time.time() * 1000)
        for first in range(0, size.runs, BATCH_RUNS):
            count = min(BATCH_RUNS, size.runs - first)
            _insert_batch(conn, _batch(first, count, versions, size, now))
        for sql in indexes:
            conn.execute(sql)
        _fill_metric_tables(conn)
    finally:  # left in rollback-journal mode: Nagare switches a copy to WAL when it opens it,
        conn.close()  # and read-only opens of the cache leave no -wal/-shm files behind


def _fill_metric_tables(conn: sqlite3.Connection) -> None:
    """The metric roll-up, counters and histogram from the loaded rows, as the migration that
    created them computes them."""
    from nagare.store.schema import METRICS_BACKFILL

    conn.execute("BEGIN")
    for table in ("metric_rollup", "metric_counters", "metric_durations"):
        conn.execute(f"DELETE FROM {table}")
    for sql in METRICS_BACKFILL:
        conn.execute(sql)
    conn.execute("COMMIT")


def _drop_secondary_indexes(conn: sqlite3.Connection) -> list[str]:
    """Drop the explicit indexes of the big tables (rebuilt after the load); returns their SQL."""
    marks = ",".join("?" * len(SECONDARY_TABLES))
    rows = conn.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
        f"AND tbl_name IN ({marks})",
        SECONDARY_TABLES,
    ).fetchall()
    for name, _ in rows:
        conn.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in rows]


@dataclass
class Batch:
    runs: list[tuple[object, ...]]
    tasks: list[tuple[object, ...]]
    attempts: list[tuple[object, ...]]


def _insert_batch(conn: sqlite3.Connection, batch: Batch) -> None:
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO runs(run_id, dag_id, status, trigger, execution_date, conf, dag_version, "
        "killed, created_at, started_at, completed_at) VALUES (?,?,?,?,?,'{}',?,0,?,?,?)",
        batch.runs,
    )
    conn.executemany(
        "INSERT INTO task_instances(id, run_id, task_id, base_task_id, position, status, "
        "attempt, max_attempts, pool, worker, command, exit_code, queued_at, started_at, "
        "completed_at, output_tail, message) "
        "VALUES (?,?,?,?,?,?,1,1,'default','local','true',?,?,?,?,'','')",
        batch.tasks,
    )
    conn.executemany(
        "INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, status, "
        "worker, executor_type, pid, pid_started_at, started_at, completed_at, exit_code, "
        "error, duration_ms, cpu_user_ms, cpu_system_ms, peak_memory_bytes) "
        "VALUES (?,1,?,?,?,?,'local','local',?,?,?,?,?,'',?,?,?,?)",
        batch.attempts,
    )
    conn.execute("COMMIT")


def _batch(first: int, count: int, versions: dict[str, str], size: HistorySize, now: int) -> Batch:
    batch = Batch([], [], [])
    rng = random.Random(first)  # the same rows on every machine
    dag_ids = history_dag_ids()
    spacing = HISTORY_DAYS * DAY_MS // size.runs
    oldest = now - HISTORY_DAYS * DAY_MS
    for number in range(first, first + count):
        dag_id = dag_ids[number % len(dag_ids)]
        created = oldest + number * spacing
        failed = rng.random() < FAILED_SHARE
        manual = rng.random() < MANUAL_SHARE
        run_id = f"{dag_id}__{'manual' if manual else 'scheduled'}__{number:09d}"
        end = created + 20 * size.tasks_per_run
        batch.runs.append(
            (
                run_id,
                dag_id,
                "failed" if failed else "success",
                "manual" if manual else "scheduled",
                created,
                versions.get(dag_id, next(iter(versions.values()))),
                created,
                created,
                end,
            )
        )
        for task in _task_rows(run_id, dag_id, created, failed, size.tasks_per_run, rng):
            batch.tasks.append(task[0])
            batch.attempts.append(task[1])
    return batch


def _task_rows(
    run_id: str, dag_id: str, created: int, failed: bool, width: int, rng: random.Random
) -> Iterator[tuple[tuple[object, ...], tuple[object, ...]]]:
    """One chain run: every task succeeds, except the last one of a failed run. Durations,
    CPU and memory vary (metrics workload); each task ends within its 20 ms slot."""
    for position in range(width):
        instance_id = os.urandom(10).hex()
        task_id = f"t{position:04d}"
        status = "failed" if failed and position == width - 1 else "success"
        code = 1 if status == "failed" else 0
        started = created + 20 * position + 2
        duration = rng.randrange(1, 17)
        done = started + duration
        pid = 10_000 + position
        yield (
            (instance_id, run_id, task_id, task_id, position, status, code, created, started, done),
            (
                instance_id,
                run_id,
                dag_id,
                task_id,
                status,
                pid,
                started / 1000,
                started,
                done,
                code,
                duration,
                rng.randrange(0, duration + 1),
                rng.randrange(0, 3),
                rng.randrange(1, 512) * 2**20,
            ),
        )
