"""PostgreSQL as the store: the URL and its password (never shown), the translation of the
store's SQL, two stores claiming from one queue, a real server on PostgreSQL running a DAG with a
retry and a map and keeping its history across a restart, and SQLite users never loading the
driver. The store contract itself runs on PostgreSQL through conftest's STORE_BACKENDS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import http, pythonpath_env, wait_for
from postgres_server import PASSWORD, USER, PgServer, free_port, make_certificates

from nagare.config import load_config
from nagare.db_url import (
    PgTarget,
    describe,
    parse_postgres_url,
    pgpass_lookup,
    resolve_password,
)
from nagare.errors import ConfigError
from nagare.models import TaskStatus as S
from nagare.models import Trigger
from nagare.store import DatabaseError, RunFilter, Store
from nagare.store.pg_sql import translate
from nagare.store.postgres import ssl_context

# ---------------------------------------------------------------- the URL and its password


def test_a_url_gives_host_port_database_user_and_tls_options() -> None:
    target = parse_postgres_url(
        "postgresql://ops@db.example.com:6543/nagare?sslmode=verify-full&sslrootcert=/ca.pem"
    )
    assert (target.host, target.port, target.database, target.user) == (
        "db.example.com",
        6543,
        "nagare",
        "ops",
    )
    assert (target.sslmode, target.sslrootcert, target.password) == ("verify-full", "/ca.pem", "")
    short = parse_postgres_url("postgres://ops@db/nagare")
    assert (short.port, short.sslmode) == (5432, "prefer")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:99999/n", "the port must be a number"),
        ("postgresql://u@h:5432/", "one database name"),
        ("postgresql://u@h/n?sslmode=sometimes", "sslmode must be one of"),
        ("postgresql://u@h/n?pasword_env=X", "unknown parameter(s) pasword_env"),
        ("postgresql://u@h/n?connect_timeout=0", "connect_timeout"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_postgres_url(url)


def test_the_password_never_shows_in_a_description_or_an_error() -> None:
    url = "postgresql://ops:hunter2@db:5432/nagare?sslmode=bogus"
    assert describe(url) == "postgresql://ops:***@db:5432/nagare?sslmode=bogus"
    assert parse_postgres_url("postgresql://ops:hunter2@db/n").describe() == (
        "postgresql://ops@db:5432/n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_postgres_url(url)
    assert "hunter2" not in str(caught.value)
    assert describe("/var/lib/nagare/nagare.db") == "/var/lib/nagare/nagare.db"


def test_the_password_comes_from_the_url_then_password_env_then_pgpass(tmp_path: Path) -> None:
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(
        "# comment\nother:5432:nagare:ops:wrong\ndb:*:nagare:ops:from\\:pgpass\n*:*:*:*:fallback\n"
    )
    target = PgTarget("db", 5432, "ops", "nagare")
    assert resolve_password(target, {}, pgpass) == "from:pgpass"
    assert resolve_password(PgTarget("x", 1, "u", "d"), {}, pgpass) == "fallback"
    with_env = PgTarget("db", 5432, "ops", "nagare", password_env="PGPW")
    assert resolve_password(with_env, {"PGPW": "from-env"}, pgpass) == "from-env"
    in_url = PgTarget("db", 5432, "ops", "nagare", password="in-url", password_env="PGPW")
    assert resolve_password(in_url, {"PGPW": "from-env"}, pgpass) == "in-url"
    with pytest.raises(ConfigError, match="password_env names PGPW, which is not set"):
        resolve_password(with_env, {}, pgpass)
    assert pgpass_lookup(tmp_path / "missing", target) is None


def test_nagare_yaml_database_section_becomes_the_db_url(tmp_path: Path) -> None:
    settings = tmp_path / "nagare.yaml"
    settings.write_text(
        "database:\n  url: postgresql://ops@db:5432/nagare\n  password_env: NAGARE_PG\n"
        "  sslmode: verify-full\n  sslrootcert: /etc/ssl/ca.pem\n"
    )
    config = load_config({"config": str(settings)}, environ={})
    target = parse_postgres_url(config.db)
    assert (target.password_env, target.sslmode, target.sslrootcert) == (
        "NAGARE_PG",
        "verify-full",
        "/etc/ssl/ca.pem",
    )
    assert config.resolved_logs_dir == str(Path.cwd() / "logs")  # no file to put them next to
    env = load_config({"config": str(tmp_path / "none.yaml")}, {"NAGARE_DB": "postgres://u@h/n"})
    assert env.db_is_file is False and env.db_display == "postgres://u@h/n"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("  url: postgresql://ops:pw@db/n\n", "the password does not belong in nagare.yaml"),
        ("  url: /var/nagare.db\n", "expected postgresql://"),
        ("  url: postgresql://ops@db/n\n  password: x\n", "unknown key 'password'"),
        ("  url: postgresql://ops@db/n\n  password_env: not-a-name\n", "environment variable"),
    ],
)
def test_a_bad_database_section_is_refused(tmp_path: Path, section: str, expected: str) -> None:
    settings = tmp_path / "nagare.yaml"
    settings.write_text("database:\n" + section)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config({"config": str(settings)}, environ={})
    assert ":pw@" not in str(caught.value)


def test_sslmode_chooses_encryption_and_verification() -> None:
    def mode(name: str) -> Any:
        return ssl_context(PgTarget("h", 5432, "u", "d", sslmode=name))

    assert mode("disable") is False and mode("prefer") is None
    required = mode("require")
    assert not required.check_hostname and required.verify_mode == 0  # encrypted, not verified
    full = mode("verify-full")
    assert full.check_hostname and full.verify_mode == 2
    assert not mode("verify-ca").check_hostname


# ---------------------------------------------------------------- the SQL translation


@pytest.mark.parametrize(
    ("sqlite", "postgresql"),
    [
        ("SELECT * FROM t WHERE a=? AND b='?'", "SELECT * FROM t WHERE a=$1 AND b='?'"),
        (
            "INSERT OR IGNORE INTO t(a) VALUES (?) RETURNING a",
            "INSERT INTO t(a) VALUES ($1) ON CONFLICT DO NOTHING RETURNING a",
        ),
        (
            "INSERT OR REPLACE INTO webhook_deliveries(delivery_key, run_id) VALUES (?, ?)",
            "INSERT INTO webhook_deliveries(delivery_key, run_id) VALUES ($1, $2) "
            "ON CONFLICT (delivery_key) DO UPDATE SET run_id = excluded.run_id",
        ),
        ("UPDATE t SET x=max(x, ?), y=(SELECT max(z) FROM u)", None),
        ("SELECT min(a) FROM t INDEXED BY t_a", "SELECT min(a) FROM t"),
        ("SELECT 1 WHERE json_extract(w, '$.type')=?", "SELECT 1 WHERE (w::jsonb ->> 'type')=$1"),
        ("SELECT CAST((n - 1) * 0.5 AS INTEGER)", "SELECT CAST(trunc((n - 1) * 0.5) AS BIGINT)"),
        (
            "SELECT a FROM t ORDER BY a DESC, b",
            "SELECT a FROM t ORDER BY a DESC NULLS LAST, b NULLS FIRST",
        ),
    ],
)
def test_sqlite_statements_translate(sqlite: str, postgresql: str | None) -> None:
    if postgresql is None:
        assert translate(sqlite) == "UPDATE t SET x=GREATEST(x, $1), y=(SELECT max(z) FROM u)"
    else:
        assert translate(sqlite) == postgresql


def test_a_claim_runs_its_sub_select_once_skipping_locked_rows() -> None:
    sql = translate(
        "UPDATE t SET s='running' WHERE id IN (SELECT id FROM t WHERE s='queued' "
        "ORDER BY q LIMIT ? /*FOR UPDATE SKIP LOCKED*/) AND s='queued'"
    )
    assert sql == (
        "UPDATE t SET s='running' WHERE id = ANY(ARRAY(SELECT id FROM t WHERE s='queued' "
        "ORDER BY q NULLS FIRST LIMIT $1 FOR UPDATE SKIP LOCKED)) AND s='queued'"
    )


def test_tables_get_bigint_columns_and_sqlites_rowid() -> None:
    assert translate("CREATE TABLE t (a INTEGER NOT NULL, b REAL)") == (
        "CREATE TABLE t (\n    rowid BIGINT GENERATED BY DEFAULT AS IDENTITY,"
        "a BIGINT NOT NULL, b DOUBLE PRECISION)"
    )
    assert translate("CREATE TABLE k (a TEXT PRIMARY KEY) WITHOUT ROWID") == (
        "CREATE TABLE k (a TEXT PRIMARY KEY)"
    )
    assert "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY," in translate(
        "CREATE TABLE l (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER)"
    )


# ---------------------------------------------------------------- a real server


@pytest.fixture
def pg_url(postgres_server: PgServer) -> Any:
    name = postgres_server.new_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


def test_a_wrong_password_or_no_server_is_a_clear_error(postgres_server: PgServer) -> None:
    wrong = f"postgresql://{USER}:not-it@127.0.0.1:{postgres_server.port}/postgres?sslmode=disable"
    with pytest.raises(DatabaseError, match="cannot open database") as caught:
        Store(wrong)
    assert "not-it" not in str(caught.value)
    assert f"postgresql://{USER}@127.0.0.1:{postgres_server.port}/postgres" in str(caught.value)
    nobody = f"postgresql://{USER}@127.0.0.1:{free_port()}/n?sslmode=disable&connect_timeout=2"
    with pytest.raises(DatabaseError, match="cannot open database"):
        Store(nobody)


def _encrypted(store: Store) -> bool:
    with store.db.read() as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    return bool(row[0])


def test_tls_is_used_and_verified_as_sslmode_says(
    postgres_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    base, ca = pg_url.split("?")[0], postgres_server.folder / "ca.pem"
    for query, encrypted in (("sslmode=disable", False), ("sslmode=require", True)):
        store = Store(f"{base}?{query}")
        assert _encrypted(store) is encrypted, query
        store.close()
    by_name = base.replace("@127.0.0.1:", "@localhost:")
    for url in (f"{base}?sslmode=verify-full&sslrootcert={ca}", f"{by_name}?sslmode=verify-ca"
                f"&sslrootcert={ca}"):  # fmt: skip
        store = Store(url)
        assert _encrypted(store)
        store.close()
    other_ca = make_certificates(tmp_path, name="other")
    with pytest.raises(DatabaseError, match=r"cannot open database.*certificate") as caught:
        Store(f"{base}?sslmode=verify-full&sslrootcert={other_ca}")
    assert PASSWORD not in str(caught.value)


def test_the_schema_is_migrated_once_and_a_newer_one_is_refused(pg_url: str) -> None:
    from nagare.store.schema import MIGRATIONS

    store = Store(pg_url)
    assert store.db.schema_version == len(MIGRATIONS)
    with store.db.write() as conn:
        conn.execute("UPDATE nagare_schema SET version=?", (len(MIGRATIONS) + 1,))
    store.close()
    with pytest.raises(DatabaseError, match="newer than this Nagare knows"):
        Store(pg_url)


def test_a_connection_the_server_dropped_is_replaced_by_the_next_write_and_read(
    postgres_server: PgServer, pg_url: str
) -> None:
    from test_store_contract import dag_of

    store = Store(pg_url)
    dag = dag_of("id: d\ntasks:\n  - id: a\n    command: 'true'\n")
    assert store.runs.start(dag, Trigger.MANUAL, 1, {}, 1) is not None
    assert store.runs.find(RunFilter(), 1, 10)[1] == 1  # a reader connection is open too
    admin = postgres_server.admin()
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin.run(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name",
        name=database,
    )
    admin.close()
    with pytest.raises(DatabaseError, match="PostgreSQL"):
        store.runs.start(dag, Trigger.MANUAL, 2, {}, 2)  # the writer's connection is gone
    with pytest.raises(DatabaseError, match="PostgreSQL"):
        store.runs.find(RunFilter(), 1, 10)  # and the reader's
    assert store.runs.start(dag, Trigger.MANUAL, 3, {}, 3) is not None
    assert store.runs.find(RunFilter(), 1, 10)[1] == 2
    store.close()


def test_two_stores_on_one_database_claim_every_task_exactly_once(pg_url: str) -> None:
    """Two masters' writers (READ COMMITTED): claims skip the rows the other is claiming."""
    from test_store_contract import dag_of

    first, second = Store(pg_url), Store(pg_url)
    dag = dag_of(
        "id: d\ntasks:\n" + "".join(f"  - id: t{i}\n    command: 'true'\n" for i in range(30))
    )
    for now in range(1, 5):
        assert first.runs.start(dag, Trigger.MANUAL, now, {}, now) is not None
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(store: Store) -> None:
        while True:
            claims = store.tasks.finish_and_claim([], {"default": 3}, "local", 100)
            if not claims:
                return
            with lock:
                claimed.extend(c.task.id for c in claims)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(claimed) == 120 and len(set(claimed)) == 120
    first.close()
    second.close()


def _writer_round_trips(store: Store) -> int:
    writer = store.db._writer  # type: ignore[attr-defined]
    return int(writer.round_trips)


def test_a_dispatcher_turn_is_two_round_trips_and_a_transition_one(pg_url: str) -> None:
    """Closing attempts and claiming the next: the closes and claims travel together, the
    metrics with the COMMIT; a promotion's answer comes with its COMMIT. Statements run once
    are prepared from their second run (a round trip once per connection): counted after."""
    from test_store_contract import claim, dag_of, ended, start

    store = Store(pg_url)
    dag = dag_of(
        "id: d\ntasks:\n" + "".join(f"  - id: t{i}\n    command: 'true'\n" for i in range(12))
    )
    for now in (1, 2, 3):
        start(store, dag, now)
    claimed = claim(store, 10, count=2) + claim(store, 11, count=2)
    for now in (20, 30):  # each statement twice: prepared
        claimed = store.tasks.finish_and_claim(
            [ended(c, now) for c in claimed[:2]], {"default": 2}, "local", now
        )
    for now in (35, 36):
        assert store.tasks.transition([claimed[now - 35].task.id], [S.RUNNING], S.SUCCESS, now)
    before = _writer_round_trips(store)
    claimed = claim(store, 40, count=2)
    assert _writer_round_trips(store) - before == 1  # BEGIN, the claim and COMMIT together
    before = _writer_round_trips(store)
    again = store.tasks.finish_and_claim(
        [ended(c, 50) for c in claimed], {"default": 2}, "local", 60
    )
    assert _writer_round_trips(store) - before == 2
    assert len(again) == 2 and all(c.task.status is S.RUNNING for c in again)
    assert {a.status for c in claimed for a in store.tasks.attempts(c.task.id)} == {S.SUCCESS}
    before = _writer_round_trips(store)
    assert store.tasks.transition([again[0].task.id], [S.RUNNING], S.CANCELLED, 70)
    assert _writer_round_trips(store) - before == 1
    store.close()


def test_a_hop_of_a_chain_is_four_round_trips(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task ends and the next one runs, counted on every connection: the close (with a
    claim that finds nothing), the metrics with its COMMIT, the promotion of the next task
    with its COMMIT, the claim of it with its COMMIT. The scheduler does not read the ended
    task again: the close returned its state."""
    from test_services import T0, World

    from nagare.engine.attempt_end import attempt_finish
    from nagare.models import Outcome, TaskState
    from nagare.store import postgres

    connections: list[postgres.Connection] = []
    opened = postgres.Connection.__init__

    def tracked(self: postgres.Connection, *args: Any, **kwargs: Any) -> None:
        opened(self, *args, **kwargs)
        connections.append(self)

    monkeypatch.setattr(postgres.Connection, "__init__", tracked)
    chain = "id: chain\ntasks:\n" + "".join(
        f"  - id: t{i}\n    command: 'true'\n" + (f"    depends_on: [t{i - 1}]\n" if i else "")
        for i in range(6)
    )
    w = World(tmp_path, {"chain.yaml": chain})
    store = Store(pg_url)
    w.store = w.scheduler.store = w.runs.store = store
    run = w.runs.trigger("chain")
    w.tick(T0)
    (claim,) = store.tasks.finish_and_claim([], {"default": 1}, "local", T0)
    hops = []
    for now in range(T0 + 1, T0 + 6):
        before = sum(c.round_trips for c in connections)
        states: dict[str, TaskState] = {}
        done = attempt_finish(claim, Outcome(exit_code=0), now)
        store.tasks.finish_and_claim([done], {"default": 1}, "local", now, ended_states=states)
        w.scheduler.settle_finished([(run.run_id, claim.task.id, None)], states)
        (claim,) = store.tasks.finish_and_claim([], {"default": 1}, "local", now)
        hops.append(sum(c.round_trips for c in connections) - before)
    assert hops[-2:] == [4, 4], hops  # (the first hops prepare their statements)
    assert w.statuses(run.run_id)["t5"] is S.RUNNING
    store.close()


def test_the_queue_index_holds_the_claims_order_whole(pg_url: str) -> None:
    """A claim takes the oldest queued tasks by (queued_at, rowid): SQLite's index ends with
    the rowid by itself, PostgreSQL's names it (else every queued task is read and sorted)."""
    store = Store(pg_url)
    with store.db.read() as conn:
        (definition,) = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ti_queued'"
        ).fetchone()
    assert "(pool NULLS FIRST, queued_at NULLS FIRST, rowid NULLS FIRST)" in definition
    assert "WHERE (status = 'queued'::text)" in definition
    store.close()


def test_a_deferred_statement_that_fails_fails_its_transaction_and_nothing_is_kept(
    pg_url: str,
) -> None:
    from test_store_contract import claim, dag_of, start

    store = Store(pg_url)
    start(store, dag_of("id: d\ntasks:\n  - id: t\n    command: 'true'\n"), 1)
    with pytest.raises(DatabaseError, match="PostgreSQL"), store.db.write() as conn:
        conn.defer("SELECT CAST(1 AS INTEGER) / 0")
        sent = conn.defer("UPDATE runs SET status='failed' RETURNING run_id")
    with pytest.raises(DatabaseError, match="lost"):
        sent.fetchall()  # never read: the failure before it closed the connection
    (claimed,) = claim(store, 10)  # the next write works, on a new connection
    assert claimed.run.status.value == "queued"  # (as it was before this claim)
    with store.db.write() as conn:
        rows = conn.defer("SELECT status FROM runs")
        assert rows.fetchall()[0]["status"] == "running"  # read on first use
    store.close()


DAG = """
id: pgflow
tasks:
  - id: flaky
    retries: 1
    retry_delay_seconds: 0.1
    command: echo "attempt $NAGARE_ATTEMPT"; [ "$NAGARE_ATTEMPT" -ge 2 ]
  - id: source
    command: echo '["a", "b", "c"]'
  - id: each
    type: map
    map_over: source
    command: echo "item {{item}}"
  - id: reduce
    depends_on: [each, flaky]
    command: echo reduced
"""


class Server:
    """`python -m nagare` on PostgreSQL, restartable."""

    def __init__(self, root: Path, password: str) -> None:
        self.root = root
        self.port = free_port()
        self.env = pythonpath_env(NAGARE_TEST_PG_PASSWORD=password)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *db: str) -> None:
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nagare", "--port", f"127.0.0.1:{self.port}", *db],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        wait_for(self._healthy, 30, message="the server to answer /api/health")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.root / "server.log").read_text())
        try:
            return http("GET", f"http://127.0.0.1:{self.port}/api/health", timeout=1).status == 200
        except OSError:
            return False

    def get(self, path: str) -> Any:
        result = http("GET", f"http://127.0.0.1:{self.port}{path}")
        assert result.status == 200, (path, result.status, result.body)
        return result.json

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


def test_a_server_on_postgresql_runs_a_dag_and_keeps_its_history_across_a_restart(
    tmp_path: Path, pg_url: str
) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "pgflow.yaml").write_text(textwrap.dedent(DAG))
    bare = pg_url.replace(f":{PASSWORD}@", "@").split("?")[0]
    (tmp_path / "nagare.yaml").write_text(
        f"database:\n  url: {bare}\n  password_env: NAGARE_TEST_PG_PASSWORD\n  sslmode: disable\n"
    )
    server = Server(tmp_path, PASSWORD)
    try:
        server.start()
        dag = f"http://127.0.0.1:{server.port}/api/dags/pgflow"
        wait_for(lambda: http("GET", dag).status == 200, 30, message="the DAG to load")
        posted = http("POST", dag + "/runs", {})
        assert posted.status == 201, posted.body
        run_id = posted.json["run_id"]

        def finished() -> dict[str, Any] | None:
            run = server.get(f"/api/runs/{run_id}")
            return run if run["status"] in ("success", "failed", "cancelled") else None

        assert wait_for(finished, 30, message="the run to finish")["status"] == "success"
        attempts = server.get(f"/api/runs/{run_id}/tasks/flaky/attempts")
        assert [a["status"] for a in attempts] == ["failed", "success"]
        tasks = {t["task_id"]: t for t in server.get(f"/api/runs/{run_id}/tasks")}
        assert [tasks[f"each[{i}]"]["status"] for i in range(3)] == ["success"] * 3
        assert server.get("/api/runs")["data"][0]["run_id"] == run_id
        server.stop()
        server.start("--db", pg_url)  # the URL with its password, on the command line
        assert server.get(f"/api/runs/{run_id}")["status"] == "success"
        assert [r["run_id"] for r in server.get("/api/runs?dag_id=pgflow")["data"]] == [run_id]
        log = http(
            "GET", f"http://127.0.0.1:{server.port}/api/runs/{run_id}/tasks/each%5B1%5D/logs"
        )
        assert log.text == "item b\n"
    finally:
        server.stop()
    output = (tmp_path / "server.log").read_text()
    assert PASSWORD not in output, "the password must never be logged"
    assert f"postgresql://{USER}@127.0.0.1" in output  # the database is named, without it
    assert (tmp_path / "logs").is_dir()  # logs in the working directory


def test_the_command_line_tools_work_on_a_postgresql_database(pg_url: str, tmp_path: Path) -> None:
    def nagare(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nagare", *args, "--db", pg_url],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=pythonpath_env(),
            cwd=tmp_path,
            check=False,
        )

    added = nagare("users", "add", "carol", "--role", "viewer", "--password-stdin", stdin="a" * 12)
    assert added.returncode == 0, added.stderr
    listed = nagare("users", "list", "--json")
    assert [u["name"] for u in json.loads(listed.stdout)] == ["carol"]
    cleaned = nagare("cleanup", "--older-than", "1d")
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.startswith("deleted 0 runs") and "database file" not in cleaned.stdout
    for done in (added, listed, cleaned):
        assert PASSWORD not in done.stdout + done.stderr


def test_a_sqlite_server_never_imports_the_driver(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import nagare.cli, nagare.app\n"
        "from nagare.store import Store\n"
        f"Store({str(tmp_path / 'x.db')!r}).close()\n"
        "assert not [m for m in sys.modules if m.startswith(('pg8000', 'scramp'))], 'loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], env=pythonpath_env(), check=True, timeout=60)
