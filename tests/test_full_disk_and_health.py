"""Issue 15: a full disk, loops that survive their own exceptions, and a truthful /api/health.

Real faults, no mocks: a log file pre-created as a symlink to /dev/full gives a real ENOSPC on
write, SQLite's `max_page_count` a real "database or disk is full", and (as root) a small tmpfs
filled with a big file a real full file system."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, wait_for

from nagare.liveness import (
    STALL_GRACE_SECONDS,
    Beat,
    DistinctErrors,
    Heartbeat,
    LoopStatus,
    assess,
    backoff_seconds,
    short_error,
)
from nagare.store import StorageFull
from nagare.wiring import Supervisor

# The task finds its own instance id in its run's pids file (by its shell's pid), then plants a
# /dev/full symlink where its log goes: its first line of output cannot be written (ENOSPC).
SABOTAGE = """
id: full
tasks:
  - id: b
    command: |
      pids="$LOGS/$NAGARE_RUN_ID/pids"
      until grep -q " $$ " "$pids" 2>/dev/null; do sleep 0.01; done
      id=$(awk -v p=$$ '$3 == p {print $1}' "$pids")
      ln -s /dev/full "$LOGS/$NAGARE_RUN_ID/$id.1.log"
      echo one; sleep 30
"""


OK = """
id: ok
tasks:
  - id: a
    command: echo fine
"""


def _full_log_server(nagare_factory) -> Nagare:  # type: ignore[no-untyped-def]
    nagare: Nagare = nagare_factory()
    nagare.write_dag("full.yaml", SABOTAGE.replace("$LOGS", str(nagare.root / "logs")))
    nagare.write_dag("ok.yaml", OK)
    nagare.app.folder.scan()
    return nagare


def test_a_log_write_on_a_full_disk_fails_only_that_attempt(nagare_factory) -> None:  # type: ignore[no-untyped-def]
    nagare = _full_log_server(nagare_factory)
    run_id = nagare.trigger("full")
    assert nagare.wait_run(run_id, timeout=10)["status"] == "failed"  # not after its `sleep 30`
    task = nagare.tasks(run_id)["b"]
    reason = "cannot write the task's log: [Errno 28] No space left on device"
    assert task["status"] == "failed"
    assert task["message"] == reason
    assert task["output_tail"].endswith(f"[nagare] {reason}")
    # the dispatcher goes on: the next run (its log on a disk with room) succeeds
    ok = nagare.trigger("ok")
    assert nagare.wait_run(ok)["status"] == "success"
    assert nagare.log(ok, "a").strip() == "fine"


def _fill_database(nagare: Nagare) -> None:
    """No page more for the writer: the next write that needs one fails with SQLITE_FULL."""
    writer = nagare.app.store.db._writer
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count={pages}")


def _free_database(nagare: Nagare) -> None:
    nagare.app.store.db._writer.execute("PRAGMA max_page_count=1073741823")


def test_a_full_database_answers_507_keeps_its_integrity_and_works_again(nagare_factory) -> None:  # type: ignore[no-untyped-def]
    nagare = _full_log_server(nagare_factory)
    _fill_database(nagare)
    first = wait_for(  # the pages still have room for a few runs
        lambda: (r := nagare.call("POST", "/api/dags/ok/runs")).status != 201 and r,
        message="a write that does not fit",
    )
    failed = [first] + [nagare.call("POST", "/api/dags/ok/runs") for _ in range(2)]
    for result in failed:
        assert result.status == 507, result.body
        assert result.json == {
            "error": {
                "code": "storage_full",
                "message": "the database cannot be written: database or disk is full",
            }
        }
    _free_database(nagare)
    with nagare.app.store.db.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    run_id = nagare.trigger("ok")
    assert nagare.wait_run(run_id)["status"] == "success"


# ---------------------------------------------------------------- ended attempts are kept

BIG_TAIL = """
id: big
tasks:
  - id: a
    command: sleep 0.3; for i in 1 2 3 4; do head -c 990 /dev/zero | tr '\\0' x; echo; done
"""


def _health(nagare: Nagare) -> Any:
    """The /api/health answer, 200 or 503."""
    result = nagare.call("GET", "/api/health")
    assert result.status in (200, 503), result.body
    return result.json


def _failing(nagare: Nagare, loop: str) -> Any:
    """The 503 answer of /api/health once it says `loop` is failing, else None."""
    result = nagare.call("GET", "/api/health")
    failing = result.json["components"].get(loop, {}).get("status") == "failing"
    if failing:
        assert result.status == 503 and result.json["status"] == "degraded"
    return result.json if failing else None


def _pack_database(nagare: Nagare) -> None:
    """No free page left: a write that needs one more page (a 4 KB output tail) fails."""
    with nagare.app.store.db.write() as conn:
        conn.execute("CREATE TABLE filler (b BLOB)")
    _fill_database(nagare)
    for size in (2000, 500, 100, 20):
        with contextlib.suppress(StorageFull):
            while True:
                with nagare.app.store.db.write() as conn:
                    conn.execute("INSERT INTO filler VALUES (randomblob(?))", (size,))


def test_ended_attempts_the_database_cannot_take_are_kept_and_recorded_once_it_can(  # type: ignore[no-untyped-def]
    nagare_factory, caplog
) -> None:
    nagare: Nagare = nagare_factory()
    nagare.write_dag("big.yaml", BIG_TAIL)
    nagare.write_dag("ok.yaml", OK)
    nagare.app.folder.scan()
    run_id = nagare.trigger("big")
    wait_for(lambda: nagare.tasks(run_id)["a"]["status"] == "running", message="a running")
    _pack_database(nagare)
    # the attempt ended but cannot be recorded: kept, and /api/health names the dispatcher
    health = wait_for(
        lambda: _failing(nagare, "dispatcher"),
        message="a failing dispatcher",
    )
    dispatcher = health["components"]["dispatcher"]
    assert dispatcher["status"] == "failing"
    assert dispatcher["error"] == (
        "cannot record 1 ended attempt(s): the database cannot be written: database or disk is full"
    )
    assert nagare.tasks(run_id)["a"]["status"] == "running"
    _free_database(nagare)  # room again: recorded on a later turn, and new runs proceed
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.tasks(run_id)["a"]["output_tail"].endswith("x" * 990)
    wait_for(  # (the scheduler may still be in its back-off a moment longer)
        lambda: _health(nagare)["components"]["dispatcher"]["status"] == "ok",
        message="the dispatcher ok",
    )
    assert nagare.wait_run(nagare.trigger("ok"))["status"] == "success"
    assert caplog.text.count("database or disk is full\nTraceback") <= 2  # once per error
    with nagare.app.store.db.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------- a real full file system


@contextlib.contextmanager
def _small_tmpfs(size: str) -> Any:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="nagare-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


LATE = """
id: late
tasks:
  - id: a
    command: sleep 0.5; echo late
"""


def _fill_file_system(path: Path) -> None:
    """Write until not one more byte fits."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_a_full_file_system_fails_runs_clearly_and_they_proceed_once_space_returns(  # type: ignore[no-untyped-def]
    nagare_factory,
) -> None:
    with _small_tmpfs("2m") as disk:
        nagare: Nagare = nagare_factory(
            root=disk,
            dags={"ok.yaml": OK, "late.yaml": LATE},
            db=str(disk / "nagare.db"),
            logs_dir=str(disk / "logs"),
        )
        assert nagare.wait_run(nagare.trigger("ok"))["status"] == "success"
        late = nagare.trigger("late")  # its first line comes once the disk is full
        wait_for(lambda: nagare.tasks(late)["a"]["status"] == "running", message="a running")
        big = disk / "big"
        _fill_file_system(big)
        answers = [nagare.call("POST", "/api/dags/ok/runs") for _ in range(3)]
        ended = []
        for answer in answers:  # either the run is refused, or its task fails with the reason
            if answer.status == 201:
                ended.append(nagare.wait_run(answer.json["run_id"]))
            else:
                assert (answer.status, answer.json["error"]["code"]) == (507, "storage_full")
        for run in ended:
            task = nagare.tasks(run["run_id"])["a"]
            assert task["status"] in ("success", "failed")
            if task["status"] == "failed":
                assert "No space left on device" in task["message"]
        health = wait_for(  # the late task ended: its log failed, and its end is kept
            lambda: _failing(nagare, "dispatcher"),
            message="a failing dispatcher",
        )
        assert health["components"]["dispatcher"]["error"].startswith("cannot record 1 ended")
        big.unlink()  # the late task's end is recorded now
        assert nagare.wait_run(late)["status"] == "failed"
        task = nagare.tasks(late)["a"]
        assert task["message"] == "cannot write the task's log: [Errno 28] No space left on device"
        with nagare.app.store.db.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run_id = nagare.trigger("ok")
        assert nagare.wait_run(run_id)["status"] == "success"
        assert nagare.log(run_id, "a").strip() == "fine"
        wait_for(lambda: nagare.call("GET", "/api/health").status == 200, message="health ok")
        nagare.app.stop()


# ---------------------------------------------------------------- health: the pure decision


def test_health_is_a_pure_decision_over_the_beats_and_now() -> None:
    grace = STALL_GRACE_SECONDS
    beats = [
        Beat("dispatcher", 5.0, last=100.0),
        Beat("scheduler", 5.0, last=100.0 - grace - 6),  # blocked in an iteration
        Beat("retention", 5.0, last=99.0, error="StorageFull: the disk is full"),
        Beat("dag_folder", 0.5, last=90.0, stopped=True),
        Beat("checkpoint", 5.0, last=None),  # not started: not reported
    ]
    health = assess(beats, now=100.0)
    assert not health.ok
    assert {name: loop.status for name, loop in health.loops.items()} == {
        "dispatcher": LoopStatus.OK,
        "scheduler": LoopStatus.STALLED,
        "retention": LoopStatus.FAILING,
        "dag_folder": LoopStatus.STOPPED,
    }
    assert health.loops["scheduler"].last_progress_seconds == grace + 6
    assert health.loops["retention"].error == "StorageFull: the disk is full"
    # a slow but legitimate pass does not flap: an iteration may take a minute past its interval
    assert assess([Beat("scheduler", 5.0, last=0.0)], now=5.0 + grace).ok
    assert not assess([Beat("scheduler", 5.0, last=0.0)], now=5.0 + grace + 0.1).ok
    assert assess([Beat("checkpoint", 5.0, last=None)], now=1e9).ok


def test_back_off_doubles_to_thirty_seconds_and_errors_are_short_and_logged_once() -> None:
    assert [backoff_seconds(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert short_error(RuntimeError("boom\n  at line 3")) == "RuntimeError: boom at line 3"
    assert (
        short_error(OSError(28, "No space left on device")) == "[Errno 28] No space left on device"
    )
    assert len(short_error("x" * 1000)) == 200
    errors = DistinctErrors()
    assert [errors.first(e) for e in ("a", "a", "b", "a")] == [True, False, True, False]
    assert errors.clear() and errors.first("a")


# ---------------------------------------------------------------- health: the real server


LOOPS = {"dispatcher", "scheduler", "dag_folder", "lease_reaper", "retention"}


def test_health_at_rest_is_200_with_every_started_loop_ok(nagare: Nagare) -> None:
    result = nagare.call("GET", "/api/health")
    assert result.status == 200
    body = result.json
    assert body["status"] == "ok" and body["version"]
    assert set(body["components"]) == LOOPS  # the checkpoint loop has not started yet
    for loop in body["components"].values():
        assert loop["status"] == "ok" and loop["last_progress_seconds"] < 10
        assert "error" not in loop


def test_a_loop_that_keeps_failing_is_named_by_health_logged_once_and_recovers(  # type: ignore[no-untyped-def]
    nagare: Nagare, caplog
) -> None:
    reactor = nagare.app.pools.reactor
    failures: list[float] = []

    def broken(timeout: float | None) -> None:
        failures.append(time.monotonic())
        raise RuntimeError("injected fault")

    reactor.run_once = broken  # type: ignore[method-assign]
    reactor.wake()
    try:
        body = wait_for(
            lambda: _failing(nagare, "dispatcher"),
            message="a failing dispatcher",
        )
        assert body["status"] == "degraded"
        assert body["components"]["dispatcher"]["status"] == "failing"
        assert body["components"]["dispatcher"]["error"] == "RuntimeError: injected fault"
        assert body["components"]["scheduler"]["status"] == "ok"
        wait_for(lambda: len(failures) >= 3, message="three failures")
    finally:
        del reactor.run_once
    gaps = [b - a for a, b in itertools.pairwise(failures)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95  # backing off: 0.5 s, then 1 s
    assert caplog.text.count("the pools loop failed: RuntimeError: injected fault") == 1
    nagare.write_dag("ok.yaml", OK)
    nagare.app.folder.scan()
    assert nagare.wait_run(nagare.trigger("ok"))["status"] == "success"
    wait_for(lambda: nagare.call("GET", "/api/health").status == 200, message="health ok")


def _folder_beats_after(app: Any, when: float) -> None:
    wait_for(
        lambda: (app.folder.liveness.beat_now().last or 0) > when,
        message="the DAG folder loop to beat",
    )


def test_a_loop_blocked_in_an_iteration_is_reported_stalled(nagare: Nagare) -> None:
    app = nagare.app
    scheduler = app.scheduler
    with scheduler._pass_lock:  # its next pass blocks here
        scheduler.wake(None)
        _folder_beats_after(app, time.monotonic())  # the scheduler is blocked by now
        blocked = scheduler.liveness.beat_now()
        assert blocked.last is not None
        _folder_beats_after(app, time.monotonic())  # the DAG folder loop goes on beating ...
        assert scheduler.liveness.beat_now().last == blocked.last  # ... the scheduler does not
        later = blocked.last + blocked.interval + STALL_GRACE_SECONDS + 1
        stalled = app.health(now=later).loops["scheduler"]
        assert stalled.status is LoopStatus.STALLED
        assert stalled.last_progress_seconds > STALL_GRACE_SECONDS
    wait_for(
        lambda: (scheduler.liveness.beat_now().last or 0) > (blocked.last or 0),
        message="the scheduler to beat again",
    )
    assert app.health().ok


def test_the_supervisor_runs_a_failed_loop_again_and_reports_one_that_ends_early(caplog) -> None:  # type: ignore[no-untyped-def]
    stop, ending = threading.Event(), threading.Event()
    heartbeat = Heartbeat("worker_poll", 1.0)
    entered: list[float] = []

    def loop(stop: threading.Event) -> None:
        entered.append(time.monotonic())
        if len(entered) == 1:
            raise RuntimeError("boom")
        assert heartbeat.beat_now().error == "RuntimeError: boom"  # failing while it backs off
        # then it returns although nobody asked it to stop

    Supervisor("poll", loop, stop, heartbeat, ending).run()  # in this thread: no thread needed
    assert len(entered) == 2 and entered[1] - entered[0] >= 0.45
    assert "the poll loop failed: RuntimeError: boom" in caplog.text
    assert "the poll loop ended while the process runs" in caplog.text
    assert assess([heartbeat.beat_now()], time.monotonic()).loops["worker_poll"].status == "stopped"
