"""`nagare db migrate` and `nagare db status` on real databases: a history made by a real server
on SQLite moves to a real PostgreSQL server (and back), where a server started on the copy
answers the API as the original did; refusals (a destination with rows, no source, the same
database twice), a count mismatch that writes nothing, a killed migration that leaves nothing,
and memory that stays flat as the history grows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, pythonpath_env, wait_for
from planting import Attempt, plant_run
from postgres_server import PgServer

from nagare.store import Store

NagareFactory = Callable[..., Nagare]
KEY = "admin-key-for-the-migration-test-0123456789"
DAGS = {
    "flaky.yaml": """\
        id: flaky
        tasks:
          - id: first
            retries: 2
            retry_delay_seconds: 0
            command: '[ "$NAGARE_ATTEMPT" -ge 2 ] || exit 1; echo ok'
          - id: second
            depends_on: [first]
            command: 'echo "{\\"rows\\": 3}" > "$NAGARE_OUTPUT"'
        """,
    "fan.yaml": """\
        id: fan
        tasks:
          - id: list
            command: echo '["a", "b", "c"]'
          - id: each
            type: map
            map_over: list
            command: echo "item {{item}}"
        """,
    "broken.yaml": """\
        id: broken
        tasks:
          - id: fails
            command: exit 3
        """,
    "gate.yaml": """\
        id: gate
        tasks:
          - id: build
            command: echo built
          - id: ask
            type: approval
            depends_on: [build]
            message: ship it?
        """,
    "slow.yaml": """\
        id: slow
        tasks:
          - id: sleeps
            command: sleep 30
        """,
}
COMPARED = (
    "/api/runs?limit=100",
    "/api/dags",
    "/api/metrics/overview?since=7d",
    "/api/dags/flaky/versions",
    "/api/users",
    "/api/keys",
    "/api/audit?limit=100",
    "/api/workers",
)


def migrate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", "db", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=pythonpath_env(),
        cwd=cwd,
    )


@pytest.fixture
def pg_url(postgres_server: PgServer) -> Iterator[str]:
    """An empty database (the schema only) on the session's PostgreSQL server."""
    name = postgres_server.new_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


def record_history(nagare: Nagare) -> list[str]:
    """Runs of every kind through the API: retried, mapped, failed, waiting, killed; a user
    signed in, an API key; each recorded in the audit log. Returns the run ids."""
    runs = [nagare.trigger(dag) for dag in ("flaky", "fan", "broken")]
    for run_id in runs:
        nagare.wait_run(run_id)
    waiting = nagare.trigger("gate")
    wait_for(lambda: nagare.task(waiting, "ask")["status"] == "waiting", 20)
    killed = nagare.trigger("slow")
    wait_for(lambda: nagare.task(killed, "sleeps")["status"] == "running", 20)
    assert nagare.call("POST", f"/api/runs/{killed}/kill").status == 200
    nagare.wait_run(killed)
    body = {"name": "alice", "role": "operator", "password": "correct horse battery"}
    assert nagare.call("POST", "/api/users", body).status == 201
    assert nagare.call("POST", "/api/keys", {"name": "ci", "role": "viewer"}).status == 201
    signed_in = nagare.call(
        "POST",
        "/api/auth/login",
        {"name": "alice", "password": "correct horse battery"},
        headers={"Authorization": ""},
    )
    assert signed_in.status == 200, signed_in.body
    return [*runs, waiting, killed]


def plant_the_rest(db: str) -> None:
    """What no API call makes here: a remote worker, a webhook delivery, a schedule watermark,
    and planted runs of the other statuses."""
    store = Store(db)
    try:
        now = int(time.time() * 1000)
        with store.db.write() as conn:
            conn.execute(
                "INSERT INTO workers(worker_id, hostname, pools, max_tasks, registered_at, "
                "last_seen) VALUES ('w1', 'gpu-host', '[\"gpu\"]', 2, ?, ?)",
                (now, now),
            )
        store.deliveries.record("gh:1234", "flaky__manual__x", now, 0)
        store.dags.ensure_state("nightly", now)
        store.dags.set_last_slot("nightly", now - 3_600_000, now)
        for status in ("skipped", "cancelled", "failed"):
            plant_run(
                store,
                "planted",
                now - 60_000,
                [Attempt("t", now - 30_000, status="failed" if status == "failed" else "success")],
                status=status,
            )
    finally:
        store.close()


def answers(nagare: Nagare, run_ids: list[str]) -> dict[str, Any]:
    paths = [*COMPARED, *(f"/api/runs/{r}/tasks" for r in run_ids)]
    paths += [f"/api/runs/{run_ids[0]}/tasks/first/attempts"]
    found = {path: nagare.get(path) for path in paths}
    overview = found["/api/metrics/overview?since=7d"]
    del overview["since"], overview["until"]  # relative to the moment of asking
    # attempts as long as each other come in no fixed order (nor which of them make the cut)
    slowest = overview.pop("slowest_tasks")
    shortest = min(t["duration_ms"] for t in slowest)
    overview["slowest_durations"] = [t["duration_ms"] for t in slowest]
    overview["slowest_above_the_cut"] = sorted(
        (t for t in slowest if t["duration_ms"] > shortest), key=lambda t: t["task_instance_id"]
    )
    return found


def test_a_real_history_moves_to_postgresql_and_answers_the_same(
    nagare_factory: NagareFactory, tmp_path: Path, pg_url: str
) -> None:
    source_db = str(tmp_path / "a" / "nagare.db")
    settings = {"auth_mode": "builtin", "api_key": KEY}
    source = nagare_factory(dags=DAGS, root=tmp_path / "a", db=source_db, **settings)
    run_ids = record_history(source)
    source.app.stop()
    plant_the_rest(source_db)
    restarted = nagare_factory(dags=DAGS, root=tmp_path / "a2", db=source_db, **settings)
    before = answers(restarted, run_ids)
    restarted.app.stop()

    result = migrate("migrate", "--from", source_db, "--to", pg_url)
    assert result.returncode == 0, result.stderr
    assert "every table matches" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr  # the URL's password never shown
    assert "task logs stay in" in result.stdout
    assert "warning: runs queued or running: 1;" in result.stderr  # the one waiting for approval

    moved = nagare_factory(dags=DAGS, root=tmp_path / "b", db=pg_url, **settings)
    after = answers(moved, run_ids)
    for path, answer in before.items():
        assert after[path] == answer, path
    statuses = {r["status"] for r in after["/api/runs?limit=100"]["data"]}
    assert statuses >= {"success", "failed", "cancelled", "skipped", "running"}
    # new rows get new ids past the copied ones (the identity sequences were moved on)
    assert moved.call("POST", "/api/keys", {"name": "after", "role": "viewer"}).status == 201
    entries = moved.get("/api/audit?limit=100")["data"]
    assert len({e["id"] for e in entries}) == len(entries)
    assert entries[0]["action"] == "key.create" and entries[0]["id"] > entries[1]["id"]
    assert moved.trigger("broken")


def test_status_prints_schema_and_rows(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    store = Store(db)
    plant_run(store, "d", 1_000_000, [Attempt("t", 1_000_500)])
    store.close()
    result = migrate("status", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["schema_version"] >= 13
    assert status["rows"]["runs"] == 1 and status["rows"]["task_attempts"] == 1
    text = migrate("status", "--db", db).stdout
    assert "schema version:" in text and "task_instances" in text


def test_sqlite_to_sqlite_and_back_keeps_ids(tmp_path: Path) -> None:
    source = str(tmp_path / "a.db")
    store = Store(source)
    for number in range(5):
        plant_run(store, "d", 1_000_000 + number, [Attempt("t", 1_000_500 + number)])
    store.close()
    target = str(tmp_path / "b.db")
    result = migrate("migrate", "--from", source, "--to", target, "--batch", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and {t["table"]: t["copied_rows"] for t in report["tables"]}["runs"] == 5
    query = "SELECT rowid, run_id FROM runs ORDER BY rowid"
    with sqlite3.connect(source) as a, sqlite3.connect(target) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()


def test_refusals_say_why_and_change_nothing(tmp_path: Path, pg_url: str) -> None:
    source = str(tmp_path / "a.db")
    store = Store(source)
    plant_run(store, "d", 1_000_000, [Attempt("t", 1_000_500)])
    store.close()
    assert migrate("migrate", "--from", source, "--to", pg_url).returncode == 0

    again = migrate("migrate", "--from", source, "--to", pg_url)
    assert again.returncode == 2
    assert "already holds rows (dag_versions 1, runs 1" in again.stderr
    assert "Traceback" not in again.stderr and "s3cret" not in again.stderr

    missing = migrate("migrate", "--from", str(tmp_path / "none.db"), "--to", pg_url)
    assert missing.returncode == 2 and "no database at" in missing.stderr
    assert not (tmp_path / "none.db").exists()

    same = migrate("migrate", "--from", source, "--to", str(tmp_path / "." / "a.db"))
    assert same.returncode == 2 and "the same database" in same.stderr

    bad_batch = migrate("migrate", "--from", source, "--to", pg_url, "--batch", "0")
    assert bad_batch.returncode == 2 and "--batch" in bad_batch.stderr

    json_error = migrate("migrate", "--from", source, "--to", pg_url, "--json")
    assert json.loads(json_error.stderr)["error"]["code"]

    no_destination = migrate("migrate", "--from", source, cwd=tmp_path)  # no nagare.yaml
    assert no_destination.returncode == 2 and "give --to" in no_destination.stderr


def test_the_copy_is_analyzed_for_the_planner(
    tmp_path: Path, pg_url: str, postgres_server: PgServer
) -> None:
    """A server started right after a migration plans with statistics: PostgreSQL's
    `reltuples` is -1 for a table never analyzed (it would be planned as nearly empty)."""
    source = str(tmp_path / "a.db")
    store = Store(source)
    for number in range(30):
        plant_run(store, "d", 1_000_000 + number, [Attempt("t", 1_000_500 + number)])
    store.close()
    assert migrate("migrate", "--from", source, "--to", pg_url).returncode == 0
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin = postgres_server.admin(database)
    try:
        rows = admin.run(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN "
            "('runs', 'task_instances', 'task_attempts', 'audit_log') ORDER BY relname"
        )
    finally:
        admin.close()
    assert rows == [["audit_log", 0], ["runs", 30], ["task_attempts", 30], ["task_instances", 30]]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("IF NEW.rowid = 2 THEN RETURN NULL; END IF;", "1 copied"),  # a row lost
        ("NEW.rowid := NEW.rowid + 1000;", "other ids (their sum 3 at the source, 2,003)"),
    ],
    ids=["lost-row", "other-ids"],
)
def test_a_mismatch_writes_nothing_and_exits_1(
    tmp_path: Path, pg_url: str, postgres_server: PgServer, change: str, said: str
) -> None:
    source = str(tmp_path / "a.db")
    store = Store(source)
    plant_run(store, "d", 1_000_000, [Attempt("t", 1_000_500)])
    plant_run(store, "d", 1_000_001, [Attempt("t", 1_000_501)])
    store.close()
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin = postgres_server.admin(database)
    try:  # the destination changes what it is given (a trigger on the attempts)
        admin.run(
            "CREATE FUNCTION change_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"{change} RETURN NEW; END $$"
        )
        admin.run(
            "CREATE TRIGGER change_it BEFORE INSERT ON task_attempts FOR EACH ROW "
            "EXECUTE FUNCTION change_it()"
        )
    finally:
        admin.close()
    result = migrate("migrate", "--from", source, "--to", pg_url)
    assert result.returncode == 1, result.stderr
    assert "task_attempts       2       " in result.stdout and "MISMATCH" in result.stdout
    assert "nothing was written" in result.stdout and said in result.stdout
    status = json.loads(migrate("status", "--db", pg_url, "--json").stdout)
    assert set(status["rows"].values()) == {0}
    as_json = json.loads(migrate("migrate", "--from", source, "--to", pg_url, "--json").stdout)
    assert not as_json["ok"] and as_json["error"]["code"] == "copy_mismatch"


def plant_many(db: str, runs: int, tasks_per_run: int = 10) -> None:
    """`runs` finished runs of `tasks_per_run` tasks, one attempt each, written in bulk."""
    Store(db).close()  # the schema
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO dag_versions(hash, dag_id, definition, created_at) "
            "VALUES ('h', 'bulk', '{}', 0)"
        )
        for first in range(0, runs, 1000):
            run_rows, task_rows, attempt_rows = [], [], []
            for number in range(first, min(runs, first + 1000)):
                run_id = f"bulk__scheduled__{number:09d}"
                run_rows.append((run_id, number * 1000))
                for position in range(tasks_per_run):
                    instance = uuid.uuid4().hex[:20]
                    task_rows.append((instance, run_id, f"t{position}", position))
                    attempt_rows.append((instance, run_id, f"t{position}", number * 1000))
            conn.executemany(
                "INSERT INTO runs(run_id, dag_id, status, trigger, execution_date, dag_version, "
                "created_at) VALUES (?, 'bulk', 'success', 'scheduled', 0, 'h', ?)",
                run_rows,
            )
            conn.executemany(
                "INSERT INTO task_instances(id, run_id, task_id, base_task_id, position, "
                "status, pool, output_tail) VALUES (?, ?, ?, 'x', ?, 'success', 'default', "
                "'some output of the task, as the last lines of its log keep it')",
                task_rows,
            )
            conn.executemany(
                "INSERT INTO task_attempts(task_instance_id, attempt, run_id, dag_id, task_id, "
                "status, started_at, completed_at, duration_ms) "
                "VALUES (?, 1, ?, 'bulk', ?, 'success', ?, 0, 1)",
                attempt_rows,
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def peak_rss_kb(*args: str) -> int:
    """Run `nagare db ARGS` in a process of its own; its peak resident memory (KiB)."""
    code = (
        "import resource, sys\nfrom nagare.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "db", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=pythonpath_env(),
    )
    assert result.returncode == 0, result.stderr
    return int(result.stderr.strip().splitlines()[-1])


def test_memory_stays_flat_as_the_history_grows(tmp_path: Path) -> None:
    peaks = {}
    for runs in (2_000, 20_000):
        source = str(tmp_path / f"src{runs}.db")
        plant_many(source, runs)
        peaks[runs] = peak_rss_kb(
            "migrate", "--from", source, "--to", str(tmp_path / f"d{runs}.db")
        )
    print("peak RSS (KiB) by runs migrated:", peaks)
    # ten times the rows (220,000 rather than 22,000) cost at most a few MB more
    assert peaks[20_000] - peaks[2_000] < 8 * 1024, peaks


def test_a_killed_migration_leaves_nothing_and_the_next_one_succeeds(
    tmp_path: Path, pg_url: str
) -> None:
    source = str(tmp_path / "a.db")
    plant_many(source, 3_000)
    process = subprocess.Popen(
        [sys.executable, "-m", "nagare", "db", "migrate", "--from", source, "--to", pg_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=pythonpath_env(),
    )
    assert process.stderr is not None
    for line in process.stderr:  # killed while it copies the task instances, after the runs
        if line.strip().startswith("runs: 3,000 / 3,000"):
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    process.stderr.close()

    def empty() -> bool:  # the server rolls back once it sees the connection gone
        status = json.loads(migrate("status", "--db", pg_url, "--json").stdout)
        return set(status["rows"].values()) == {0}

    wait_for(empty, 20)
    result = migrate("migrate", "--from", source, "--to", pg_url)
    assert result.returncode == 0, result.stderr
    assert "runs                3,000   3,000" in result.stdout
