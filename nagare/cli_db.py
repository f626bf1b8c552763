"""`nagare db migrate` (a whole history from one database to another, SQLite to PostgreSQL
mainly) and `nagare db status` (a database's schema version and rows per table). They run on
the server machine against the databases themselves; the copying is the store's
(`copy_history`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from nagare.cli_format import table
from nagare.config import load_config
from nagare.db_url import describe, is_postgres_url
from nagare.errors import ConfigError

if TYPE_CHECKING:
    from nagare.store import Database, TableCheck

Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"
DB_EXAMPLES = {
    "db": "nagare db migrate --from nagare.db --to 'postgresql://nagare@db:5432/nagare"
    "?password_env=NAGARE_DB_PASSWORD'",
}
PROGRESS_EVERY = 100_000  # rows between two progress lines of one table
AFTER_COMMIT = "the destination's counts differ from the source's after the copy (see CHECK)"


def add_db_commands(commands: Subparsers) -> None:
    db = commands.add_parser(
        "db",
        help="move a history to another database (SQLite to PostgreSQL), show a database",
        description="Database maintenance on the server machine. `migrate` copies every run, "
        "task, attempt, metric, DAG version, schedule watermark, user, API key, session and "
        "audit entry from one database into an empty one (ids kept, counts checked); "
        "`status` prints a database's schema version and rows per table.",
    )
    verbs = db.add_subparsers(dest="verb", metavar="VERB", required=True)
    migrate = verbs.add_parser(
        "migrate",
        help="copy a whole history into an empty database and check the counts",
        description="Copy the history of --from into the empty database --to in one "
        "transaction (an interrupted copy leaves nothing behind), then compare the rows of "
        "every table; exit 1 if any differs. Either side is a SQLite file or a PostgreSQL "
        "URL (its password as with --db: password_env=NAME in the URL, or ~/.pgpass). Stop "
        "the server first: what it writes after the copy began is not moved. Task log files "
        "are not in the database: point logs_dir at them or copy them.",
    )
    migrate.add_argument(
        "--from", dest="source", required=True, metavar="DB", help="the database to copy"
    )
    migrate.add_argument(
        "--to",
        dest="destination",
        metavar="DB",
        help="the empty database to fill (default: the settings' PostgreSQL database:)",
    )
    migrate.add_argument("--config", help="settings file for --to (default: nagare.yaml)")
    migrate.add_argument(
        "--batch", type=_batch, default=2000, metavar="ROWS", help="rows per batch (default 2000)"
    )
    migrate.add_argument("--json", action="store_true", help="print the result as JSON")
    migrate.set_defaults(func=cmd_migrate)
    status = verbs.add_parser("status", help="a database's schema version and rows per table")
    status.add_argument("--db", help="database file or URL (default: the settings' db)")
    status.add_argument("--config", help="settings file (default: nagare.yaml)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("expected a number of rows from 1 to 100000")
    return value


# ---------------------------------------------------------------- migrate


def cmd_migrate(namespace: argparse.Namespace) -> int:
    from nagare.store import CopyMismatch, active_runs, copy_history

    source_where = namespace.source
    config = load_config({"config": namespace.config, "db": namespace.destination})
    destination_where = config.db
    if not namespace.destination and not is_postgres_url(destination_where):
        raise ConfigError("give --to DB (the settings name no PostgreSQL database)")
    _check_pair(source_where, destination_where)
    quiet: bool = namespace.json

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    started = time.monotonic()
    source = _open(source_where, must_exist=True)
    try:
        destination = _open(destination_where, must_exist=False)
        try:
            say(f"copying {describe(source_where)} -> {describe(destination_where)}")
            if active := active_runs(source):
                say(
                    f"warning: runs queued or running: {active:,}; they move as they are now "
                    "(the new server takes them up as after a restart); stop the server first "
                    "if it is still writing"
                )
            checks = copy_history(source, destination, _progress(say), namespace.batch)
        except CopyMismatch as err:
            _report(namespace.json, err.checks, time.monotonic() - started, err.message)
            return 1
        finally:
            destination.close()
    finally:
        source.close()
    ok = all(check.matches for check in checks)
    _report(namespace.json, checks, time.monotonic() - started, "" if ok else AFTER_COMMIT)
    if ok and not namespace.json and not is_postgres_url(source_where):
        logs = os.path.join(os.path.dirname(os.path.abspath(source_where)), "logs")
        print(
            f"task logs stay in {logs}: set logs_dir to that folder (or copy it) before "
            "starting Nagare on the new database"
        )
    return 0 if ok else 1


def _report(as_json: bool, checks: list[TableCheck], seconds: float, problem: str) -> None:
    if as_json:
        error = {"code": "copy_mismatch", "message": problem} if problem else None
        print(json.dumps({**_migrate_json(checks, seconds), "error": error}))
    else:
        _print_checks(checks, seconds, problem)


def _check_pair(source: str, destination: str) -> None:
    if _same(source, destination):
        raise ConfigError("--from and --to name the same database")


def _same(a: str, b: str) -> bool:
    if is_postgres_url(a) or is_postgres_url(b):
        return describe(a).split("?")[0] == describe(b).split("?")[0]
    return os.path.realpath(a) == os.path.realpath(b)


def _open(where: str, must_exist: bool) -> Database:
    from nagare.store import open_database

    if must_exist and not is_postgres_url(where) and not os.path.isfile(where):
        raise ConfigError(f"no database at '{where}'")
    return open_database(where)


def _progress(say: Callable[[str], None]) -> Callable[[str, int, int], None]:
    def report(name: str, done: int, total: int) -> None:
        if done == total or done // PROGRESS_EVERY != (done - 1) // PROGRESS_EVERY:
            say(f"  {name}: {done:,} / {total:,} rows")

    return report


def _print_checks(checks: list[TableCheck], seconds: float, problem: str) -> None:
    rows = [
        [
            c.table,
            f"{c.source.rows:,}",
            f"{c.destination.rows:,}",
            "ok" if c.matches else "MISMATCH",
        ]
        for c in checks
    ]
    print(table(["TABLE", "SOURCE", "COPIED", "CHECK"], rows))
    if problem:
        print(f"error: {problem}")
        return
    total = sum(c.destination.rows for c in checks)
    print(f"copied {total:,} rows in {seconds:.1f}s; counts and ids checked: every table matches")


def _migrate_json(checks: list[TableCheck], seconds: float) -> dict[str, Any]:
    return {
        "ok": all(c.matches for c in checks),
        "seconds": round(seconds, 3),
        "tables": [
            {
                "table": c.table,
                "source_rows": c.source.rows,
                "copied_rows": c.destination.rows,
                "matches": c.matches,
            }
            for c in checks
        ],
    }


# ---------------------------------------------------------------- status


def cmd_status(namespace: argparse.Namespace) -> int:
    from nagare.store import tallies

    config = load_config({"config": namespace.config, "db": namespace.db})
    db = _open(config.db, must_exist=True)
    try:
        version = db.schema_version
        counts = tallies(db)
    finally:
        db.close()
    if namespace.json:
        rows = {name: tally.rows for name, tally in counts.items()}
        print(json.dumps({"db": describe(config.db), "schema_version": version, "rows": rows}))
        return 0
    print(f"database: {describe(config.db)}\nschema version: {version}")
    print(table(["TABLE", "ROWS"], [[name, f"{t.rows:,}"] for name, t in counts.items()]))
    return 0
