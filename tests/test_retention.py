"""Retention: exactly the finished runs older than the limit go (rows, metrics, log folders),
never a run that is not finished; the sweep is bounded per pass and walks an index; freed pages
go back to the file system; `nagare cleanup` does the same from the command line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Nagare, pythonpath_env, wait_for
from planting import DAY, HOUR, Attempt, plant_run, rebuild_rollup

from nagare.clock import now_ms, parse_iso
from nagare.config import load_config
from nagare.dag_folder import DagFolder
from nagare.errors import ConfigError
from nagare.http.serialize import series_json
from nagare.logs import LogFiles
from nagare.metrics import LiveState, MetricsService
from nagare.retention import RetentionSweep
from nagare.store import Store

NOW = parse_iso("2026-11-21T10:37:12.345Z")


@pytest.fixture
def logs(tmp_path: Path) -> LogFiles:
    return LogFiles(str(tmp_path / "logs"))


def plant_with_logs(
    store: Store, logs: LogFiles, age_ms: int, status: str = "success", now: int = NOW
) -> str:
    """A run created `age_ms` before `now` (finished a minute later unless it is still active),
    with two attempts and a log folder."""
    created = now - age_ms
    done = None if status in ("running", "queued") else created + 60_000
    run_id, ids = plant_run(
        store,
        "d",
        created,
        [Attempt("a", done or None), Attempt("b", done or None, status="failed")],
        status=status,
    )
    for instance_id in ids.values():
        log = logs.open_attempt(run_id, instance_id, 1)
        log.on_line("stdout", "hello")
        log.close()
    return run_id


def rows(store: Store, table: str, run_id: str) -> int:
    with store.db.read() as conn:
        return int(
            conn.execute(f"SELECT count(*) FROM {table} WHERE run_id=?", (run_id,)).fetchone()[0]
        )


def run_ids(store: Store) -> set[str]:
    with store.db.read() as conn:
        return {r[0] for r in conn.execute("SELECT run_id FROM runs")}


def counters(store: Store) -> list[tuple[str, str, str, str, int]]:
    return [(c.name, c.dag_id, c.task_id, c.status, c.value) for c in store.metrics.counters()]


def test_the_sweep_deletes_exactly_the_finished_runs_older_than_the_limit(
    store: Store, logs: LogFiles, tmp_path: Path
) -> None:
    old = [
        plant_with_logs(store, logs, 40 * DAY),
        plant_with_logs(store, logs, 35 * DAY, "failed"),
        plant_with_logs(store, logs, 30 * DAY + 61_000, "cancelled"),  # finished 30d 1s ago
    ]
    kept = [
        plant_with_logs(store, logs, 40 * DAY, "running"),
        plant_with_logs(store, logs, 40 * DAY, "queued"),
        plant_with_logs(store, logs, 30 * DAY + 60_000),  # finished exactly 30 days ago
        plant_with_logs(store, logs, 29 * DAY),
        plant_with_logs(store, logs, HOUR),
    ]
    before = counters(store)
    removed = RetentionSweep(store, logs, 30, clock=lambda: NOW).sweep_once(NOW)
    assert (removed.runs, removed.tasks, removed.attempts) == (3, 6, 6)
    assert run_ids(store) == set(kept)
    for run_id in old:
        assert rows(store, "task_instances", run_id) == rows(store, "task_attempts", run_id) == 0
        assert not os.path.exists(os.path.join(logs.root, run_id))
    for run_id in kept:
        assert rows(store, "task_instances", run_id) == rows(store, "task_attempts", run_id) == 2
        assert os.path.isdir(os.path.join(logs.root, run_id))
    assert counters(store) == before  # counters only grow
    folder = DagFolder(str(tmp_path / "dags"))
    service = MetricsService(store, folder, LiveState, clock=lambda: NOW)
    hourly = series_json(service.timeseries("3650d", "", 10_000, "1h"))
    rebuild_rollup(store)
    assert series_json(service.timeseries("3650d", "", 10_000, "1h")) == hourly  # kept in step
    assert sum(p["count"] for p in hourly) == 2 * 3  # the finished kept runs' attempts


def test_each_pass_is_bounded(store: Store, logs: LogFiles) -> None:
    for age in range(5):
        plant_with_logs(store, logs, 40 * DAY + age * HOUR)
    sweep = RetentionSweep(store, logs, 30, clock=lambda: NOW, batch=2)
    assert [sweep.sweep_once(NOW).runs for _ in range(4)] == [2, 2, 1, 0]
    assert run_ids(store) == set()


def test_retention_zero_keeps_everything(store: Store, logs: LogFiles) -> None:
    plant_with_logs(store, logs, 3000 * DAY)
    assert RetentionSweep(store, logs, 0, clock=lambda: NOW).sweep_once(NOW).runs == 0
    assert len(run_ids(store)) == 1


def test_finding_old_runs_walks_the_created_at_index(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "nagare.db"))  # SQLite's query plan
    with store.db.read() as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT run_id FROM runs INDEXED BY runs_created WHERE "
            "created_at < ? AND status IN ('success', 'failed', 'cancelled') AND "
            "coalesce(completed_at, created_at) < ? ORDER BY created_at, run_id LIMIT 10",
            (NOW, NOW),
        ).fetchall()
    store.close()
    details = " | ".join(str(row[-1]) for row in plan)
    assert "SEARCH runs USING INDEX runs_created (created_at<?)" in details, details


def test_deleted_pages_go_back_to_the_file_system(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    store = Store(str(db))
    logs = LogFiles(str(tmp_path / "logs"))
    assert store.db.incremental_vacuum_enabled  # a new database is created that way
    for number in range(300):
        attempts = [Attempt(f"t{i}", NOW - 40 * DAY + i) for i in range(20)]
        plant_run(store, "d", NOW - 40 * DAY - number, attempts)
    store.close()
    full = db.stat().st_size
    store = Store(str(db))
    RetentionSweep(store, logs, 30, clock=lambda: NOW, batch=1000).sweep_once(NOW)
    with store.db.read() as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    store.close()
    assert db.stat().st_size < full / 2


def test_the_background_loop_sweeps_until_nothing_is_left_and_stops_at_once(
    store: Store, logs: LogFiles
) -> None:
    for age in range(7):
        plant_with_logs(store, logs, 40 * DAY + age, now=now_ms())
    recent = plant_with_logs(store, logs, HOUR, now=now_ms())
    sweep = RetentionSweep(store, logs, 30, interval=60, batch=3, first_pass=0)
    stop = threading.Event()
    thread = threading.Thread(target=sweep.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: run_ids(store) == {recent}, 10, message="the old runs to go")
    finally:
        stop.set()
        thread.join(2)
    assert not thread.is_alive()


def test_the_server_runs_the_sweep(nagare_factory: Callable[..., Nagare]) -> None:
    nagare = nagare_factory(retention_days=30)
    assert nagare.app.retention.retention_days == 30
    thread = next(t for t in threading.enumerate() if t.name == "retention")
    assert thread.is_alive()
    nagare.app.stop()
    assert not thread.is_alive()


# ---------------------------------------------------------------- settings


def test_retention_days_is_a_setting(tmp_path: Path) -> None:
    settings = tmp_path / "nagare.yaml"
    assert load_config({"config": str(settings)}, environ={}).retention_days == 30
    settings.write_text("retention_days: 7\n")
    assert load_config({"config": str(settings)}, environ={}).retention_days == 7
    environ = {"NAGARE_RETENTION_DAYS": "0"}
    assert load_config({"config": str(settings)}, environ=environ).retention_days == 0
    flags = {"config": str(settings), "retention_days": "90"}
    assert load_config(flags, environ=environ).retention_days == 90
    settings.write_text("retention_days: -1\n")
    with pytest.raises(ConfigError, match="retention_days: expected at least 0, found -1"):
        load_config({"config": str(settings)}, environ={})


# ---------------------------------------------------------------- nagare cleanup


def cleanup(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", "cleanup", *args],
        cwd=root,
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def history(tmp_path: Path) -> tuple[list[str], list[str]]:
    """(old finished runs, runs that must stay) in tmp_path/nagare.db with logs in tmp_path/logs."""
    store = Store(str(tmp_path / "nagare.db"))
    logs = LogFiles(str(tmp_path / "logs"))
    now = now_ms()
    old = [plant_with_logs(store, logs, (40 + i) * DAY, now=now) for i in range(3)]
    kept = [
        plant_with_logs(store, logs, 50 * DAY, "running", now=now),
        plant_with_logs(store, logs, 2 * DAY, now=now),
    ]
    store.close()
    return old, kept


def test_cleanup_dry_run_prints_what_it_would_delete_and_changes_nothing(
    tmp_path: Path, history: tuple[list[str], list[str]]
) -> None:
    old, kept = history
    done = cleanup(tmp_path, "--older-than", "30d", "--dry-run", "--logs-dir", "logs")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[2] for line in done.stdout.splitlines() if line.startswith("would")]
    assert sorted(listed[:-1]) == sorted(old)
    assert done.stdout.splitlines()[-1].startswith("would delete 3 runs, 6 task instances")
    store = Store(str(tmp_path / "nagare.db"))
    assert run_ids(store) == set(old + kept)
    store.close()
    assert all((tmp_path / "logs" / r).is_dir() for r in old + kept)


def test_cleanup_deletes_old_runs_and_their_logs(
    tmp_path: Path, history: tuple[list[str], list[str]]
) -> None:
    old, kept = history
    done = cleanup(tmp_path, "--older-than", "30d", "--logs-dir", "logs")
    assert done.returncode == 0, done.stderr
    deleted = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("deleted ")]
    assert sorted(deleted[:-1]) == sorted(old)
    assert "deleted 3 runs, 6 task instances, 6 attempts and their log folders" in done.stdout
    assert "database file:" in done.stdout
    store = Store(str(tmp_path / "nagare.db"))
    assert run_ids(store) == set(kept)
    store.close()
    assert not any((tmp_path / "logs" / r).exists() for r in old)
    assert all((tmp_path / "logs" / r).is_dir() for r in kept)
    again = cleanup(tmp_path, "--older-than", "30d", "--logs-dir", "logs")
    assert "deleted 0 runs" in again.stdout


def test_cleanup_takes_its_default_age_from_retention_days(
    tmp_path: Path, history: tuple[list[str], list[str]]
) -> None:
    old, kept = history
    (tmp_path / "nagare.yaml").write_text("retention_days: 0\nlogs_dir: logs\n")
    refused = cleanup(tmp_path, "--dry-run")
    assert refused.returncode == 2
    assert "retention_days is 0 (keep everything): give --older-than" in refused.stderr
    (tmp_path / "nagare.yaml").write_text("retention_days: 41\nlogs_dir: logs\n")
    done = cleanup(tmp_path)
    assert done.returncode == 0, done.stderr
    store = Store(str(tmp_path / "nagare.db"))
    assert run_ids(store) == {*kept, *old[:2]}  # finished 40 and 41 days ago: kept
    store.close()


@pytest.mark.parametrize("age", ["30", "thirty days", "0d", "2w", "1d12h"])
def test_cleanup_rejects_a_bad_age(tmp_path: Path, age: str) -> None:
    Store(str(tmp_path / "nagare.db")).close()
    done = cleanup(tmp_path, "--older-than", age)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --older-than must be"), done.stderr


def test_cleanup_needs_an_existing_database(tmp_path: Path) -> None:
    done = cleanup(tmp_path, "--db", "missing.db")
    assert done.returncode == 2
    assert "no database at 'missing.db'" in done.stderr
    assert not (tmp_path / "missing.db").exists()


def test_cleanup_converts_an_older_database_to_incremental_vacuum(
    tmp_path: Path, history: tuple[list[str], list[str]]
) -> None:
    conn = sqlite3.connect(tmp_path / "nagare.db", isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    done = cleanup(tmp_path, "--older-than", "30d", "--logs-dir", "logs")
    assert done.returncode == 0, done.stderr
    assert "converted the database to incremental auto-vacuum" in done.stdout
    conn = sqlite3.connect(tmp_path / "nagare.db")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()


def test_a_master_that_does_not_lead_prunes_its_folders_of_runs_the_leader_deleted(
    store: Store, logs: LogFiles
) -> None:
    """On a shared database only the leader deletes runs (and its own log folders); the other
    masters remove their folders of runs that are gone, once a folder is an hour quiet."""
    kept = plant_with_logs(store, logs, HOUR)
    gone = plant_with_logs(store, logs, 40 * DAY)
    fresh = "r-not-yet-in-the-database"
    os.makedirs(os.path.join(logs.root, fresh))
    with store.db.write() as conn:
        conn.execute("DELETE FROM runs WHERE run_id=?", (gone,))
    hour_ago = NOW / 1000 - 2 * 3600
    for run_id in (kept, gone):
        os.utime(os.path.join(logs.root, run_id), (hour_ago, hour_ago))
    sweep = RetentionSweep(store, logs, 30, clock=lambda: NOW)
    sweep.leads = lambda: False
    assert sweep.sweep_once(NOW).runs == 0  # deletes no rows: the leader's duty
    assert not os.path.exists(os.path.join(logs.root, gone))
    assert os.path.isdir(os.path.join(logs.root, kept))
    assert os.path.isdir(os.path.join(logs.root, fresh))  # changed within the hour: kept
    assert run_ids(store) == {kept}
