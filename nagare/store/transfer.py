"""Moving a whole history from one database to another (`nagare db migrate`): SQLite to
PostgreSQL mainly, any direction works. Both are opened at the current schema (`Database`
migrates them); the destination must hold no rows.

The source is read in one snapshot (SQLite: a read transaction, WAL mode; PostgreSQL: a
REPEATABLE READ transaction and a server-side cursor) in batches of BATCH_ROWS, and written to
the destination in one transaction, tables in dependency order (a DAG version before its runs,
a run before its tasks...), ids kept: every row's `rowid` (the order queries break ties with),
the audit log's `id`; PostgreSQL's identity sequences are then set past the largest copied id.
Before COMMIT the destination's counts (and sums of ids) are compared with the snapshot's: a
mismatch rolls everything back. After it, a PostgreSQL destination's tables are vacuumed and
analyzed (planner statistics for the server that starts on them next). A migration that stops
part way (killed, a lost connection) leaves no row behind, so the next attempt starts from an
empty destination again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nagare.store.db import Database, DatabaseError

BATCH_ROWS = 2_000
CURSOR = "nagare_copy"


@dataclass(frozen=True)
class Table:
    """A table moved as is. `ident`: its integer id column (SQLite's implicit `rowid`, which
    PostgreSQL has as an identity column, or the table's own INTEGER PRIMARY KEY), kept on copy
    and summed in the check; empty for a WITHOUT ROWID table."""

    name: str
    ident: str = "rowid"

    @property
    def implicit_rowid(self) -> bool:
        return self.ident == "rowid"


# Every table of the schema, each after the ones it references; not `masters` (the rows of the
# servers running on a database, each written again by its server every second).
TABLES: tuple[Table, ...] = (
    Table("dag_versions"),
    Table("dag_state"),
    Table("runs"),
    Table("task_instances"),
    Table("task_attempts"),
    Table("log_chunks", ""),
    Table("metric_rollup", ""),
    Table("metric_counters", ""),
    Table("metric_durations", ""),
    Table("webhook_deliveries", ""),
    Table("workers", ""),
    Table("users"),
    Table("api_keys"),
    Table("sessions"),
    Table("audit_log", "id"),
)


@dataclass(frozen=True)
class Tally:
    """What a table holds: its rows and the sum of its ids (0 without an id column)."""

    rows: int
    id_sum: int


@dataclass(frozen=True)
class TableCheck:
    table: str
    source: Tally
    destination: Tally

    @property
    def matches(self) -> bool:
        return self.source == self.destination


class CopyMismatch(DatabaseError):
    """The destination's counts differ from the source's before COMMIT: rolled back."""

    code = "copy_mismatch"

    def __init__(self, checks: list[TableCheck]) -> None:
        wrong = [c for c in checks if not c.matches]
        super().__init__(
            "the copy does not match the source, nothing was written: "
            + "; ".join(_difference(c.table, c.source, c.destination) for c in wrong)
        )
        self.checks = checks


Progress = Callable[[str, int, int], None]  # table, rows copied so far, rows in all


def tallies(db: Database) -> dict[str, Tally]:
    """Every table's rows and id sum (`nagare db status`)."""
    with db.read() as conn:
        return {table.name: _tally(conn, table) for table in TABLES}


def occupied(db: Database) -> dict[str, int]:
    """The tables of `db` that hold rows, with their counts (empty: nothing to overwrite)."""
    found: dict[str, int] = {}
    with db.read() as conn:
        for table in TABLES:
            if conn.execute(f"SELECT 1 FROM {table.name} LIMIT 1").fetchone() is not None:
                found[table.name] = _tally(conn, table).rows
    return found


def active_runs(db: Database) -> int:
    """Runs queued or running: a server may still be working on them."""
    with db.read() as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")
        return int(row.fetchone()[0])


def copy_history(
    source: Database,
    destination: Database,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> list[TableCheck]:
    """Copy every table of `source` into the empty `destination` in one transaction; returns
    each table's counts at the source (snapshot) and the destination (after COMMIT).
    DatabaseError when the destination holds rows, the schemas differ, or the counts do not
    match before COMMIT (CopyMismatch: then nothing is written)."""
    held = occupied(destination)
    if held:
        raise DatabaseError(
            f"the destination '{destination.path}' already holds rows ("
            + ", ".join(f"{name} {count:,}" for name, count in held.items())
            + "): migrate into an empty database (a new SQLite file, or a PostgreSQL database "
            "just created); an interrupted migration leaves none behind"
        )
    with _snapshot(source) as reader, destination.write() as writer:
        if destination.dialect == "postgresql":
            _wait_for_the_disk(writer)
        expected = {table.name: _tally(reader, table) for table in TABLES}
        for table in TABLES:
            columns = _columns(reader, source.dialect, table)
            _check_columns(table, columns, _columns(writer, destination.dialect, table))
            total = expected[table.name].rows
            copied = _copy_table(reader, source.dialect, writer, table, columns, batch_rows)
            for done in copied:
                if progress is not None:
                    progress(table.name, done, total)
        if destination.dialect == "postgresql":
            _advance_identities(writer)
        written = [TableCheck(t.name, expected[t.name], _tally(writer, t)) for t in TABLES]
        if not all(check.matches for check in written):
            raise CopyMismatch(written)
    if destination.dialect == "postgresql":
        _collect_statistics(destination)
    after = tallies(destination)
    return [TableCheck(t.name, expected[t.name], after[t.name]) for t in TABLES]


def _difference(name: str, source: Tally, destination: Tally) -> str:
    if source.rows != destination.rows:
        return f"{name}: {source.rows:,} rows at the source, {destination.rows:,} copied"
    return f"{name}: other ids (their sum {source.id_sum:,} at the source, {destination.id_sum:,})"


def _tally(conn: Any, table: Table) -> Tally:
    ids = f"coalesce(sum({table.ident}), 0)" if table.ident else "0"
    row = conn.execute(f"SELECT count(*), {ids} FROM {table.name}").fetchone()
    return Tally(int(row[0]), int(row[1]))


@contextmanager
def _snapshot(db: Database) -> Iterator[Any]:
    """A reader connection inside one read-only transaction: every table as of one moment,
    while a server may still be writing."""
    with db.read() as lent:
        conn: Any = lent  # a PgDatabase lends its own Connection
        if db.dialect == "postgresql":
            conn.execute_plain("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                conn.execute_plain("ROLLBACK")
        else:
            conn.execute("BEGIN")  # deferred: the snapshot starts at the first read
            yield conn  # `read()` rolls it back


def _columns(conn: Any, dialect: str, table: Table) -> list[str]:
    """The table's columns, its implicit rowid first (SQLite hides it from table_info)."""
    if dialect == "postgresql":
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ? ORDER BY ordinal_position",
            (table.name,),
        ).fetchall()
        return [str(r[0]) for r in rows]
    names = [str(r[1]) for r in conn.execute(f"PRAGMA table_info({table.name})").fetchall()]
    return ["rowid", *names] if table.implicit_rowid else names


def _check_columns(table: Table, source: Sequence[str], destination: Sequence[str]) -> None:
    if set(source) != set(destination):
        missing = sorted(set(source) - set(destination))
        extra = sorted(set(destination) - set(source))
        raise DatabaseError(
            f"table {table.name} differs between the databases (only at the source: "
            f"{', '.join(missing) or '-'}; only at the destination: {', '.join(extra) or '-'})"
        )


def _copy_table(
    reader: Any, dialect: str, writer: Any, table: Table, columns: list[str], batch_rows: int
) -> Iterator[int]:
    """Copy one table in batches; yields the rows copied so far after each batch."""
    names = ", ".join(columns)
    insert = f"INSERT INTO {table.name}({names}) VALUES ({', '.join('?' * len(columns))})"
    done = 0
    select = f"SELECT {names} FROM {table.name}"
    for batch in _batches(reader, dialect, select, f"{CURSOR}_{table.name}", batch_rows):
        writer.executemany(insert, batch)
        done += len(batch)
        yield done


def _batches(
    reader: Any, dialect: str, select: str, cursor_name: str, size: int
) -> Iterator[list[Any]]:
    """The rows of `select` in lists of at most `size` (never the whole table in memory). On
    PostgreSQL, a server-side cursor named after the table: the FETCH statement, prepared
    once, is the same text for one table only (its result columns are the table's)."""
    if dialect == "postgresql":
        reader.execute_plain(f"DECLARE {cursor_name} NO SCROLL CURSOR FOR {select}")
        fetch = f"FETCH {size} FROM {cursor_name}"
        while rows := reader.cursor().execute(fetch).fetchall():
            yield rows
        reader.execute_plain(f"CLOSE {cursor_name}")
        return
    cursor = reader.cursor()
    cursor.row_factory = None  # plain tuples
    cursor.execute(select)
    while rows := cursor.fetchmany(size):
        yield rows


def _wait_for_the_disk(writer: Any) -> None:
    """The copy's COMMIT waits for the disk whatever the server's setting: durable when
    reported done, and its rows' hint bits can be set at once (with an asynchronous commit they
    wait for the WAL writer), so the VACUUM after it can mark their pages all-visible."""
    writer.execute_plain("SET LOCAL synchronous_commit = on")


def _collect_statistics(db: Any) -> None:
    """`VACUUM (ANALYZE)` every copied table (outside a transaction, after COMMIT): without
    statistics PostgreSQL plans a freshly loaded table as if it were nearly empty (a sequential
    scan of every task to count one page of runs' tasks) until autovacuum comes round, and
    without the visibility map a count reads the rows rather than an index."""
    with db.read() as conn:
        for table in TABLES:
            conn.execute_plain(f"VACUUM (ANALYZE) {table.name}")


def _advance_identities(writer: Any) -> None:
    """Each identity sequence past the largest id copied (the next row gets a new one)."""
    for table in TABLES:
        if table.ident:
            writer.execute_plain(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.ident}'), "
                f"max({table.ident})) FROM {table.name} HAVING max({table.ident}) IS NOT NULL"
            )
