"""Issue 15: a full disk, loops that survive their own exceptions, and a truthful /api/health.

Real faults, no mocks: a log file pre-created as a symlink to /dev/full gives a real ENOSPC on
write, SQLite's `max_page_count` a real "database or disk is full", and (as root) a small tmpfs
filled with a big file a real full file system."""

from __future__ import annotations

import json

from conftest import Nagare, wait_for

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
