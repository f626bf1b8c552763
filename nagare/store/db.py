"""SQLite connections: one writer behind a lock, a bounded pool of readers, WAL mode."""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, cast

from nagare.db_url import is_postgres_url
from nagare.errors import NagareError
from nagare.liveness import Heartbeat
from nagare.store.schema import MIGRATIONS, migration_script

log = logging.getLogger("nagare.store")
READERS = 8  # reader connections at most; a thread that finds them all lent out waits
# Checkpoints (copying the WAL back into the database file) run in a thread of their own after
# this many commits, so that no writer pays for one inside its transaction; the writer's own
# automatic checkpoint stays as a safety net for a WAL this many pages long.
CHECKPOINT_EVERY_COMMITS = 32
WRITER_AUTOCHECKPOINT_PAGES = 8000
BEAT_SECONDS = 5.0  # the checkpoint loop shows it is alive at least this often
# In a claim's `IN (SELECT ...)`: a comment to SQLite (one writer: nothing to skip), the row
# locking clause for PostgreSQL (see pg_sql.translate)
LOCK_ROWS = " /*FOR UPDATE SKIP LOCKED*/"


def pipelines(conn: object) -> bool:
    """Whether statements sent on `conn` can wait for their answers (PostgreSQL's `defer`:
    statements sent together share one round trip); SQLite runs each at once."""
    return hasattr(conn, "defer")


class Fetched:
    """A statement's rows read at once, readable after its transaction like a deferred one."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._rows = cursor.fetchall()
        self.rowcount = cursor.rowcount

    def fetchall(self) -> list[sqlite3.Row]:
        return self._rows


def send(conn: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> Fetched:
    """Run a statement whose rows the caller reads later, after its transaction's COMMIT if it
    likes: on PostgreSQL they travel with the next request's answers (the COMMIT's) instead of
    a round trip of their own; on SQLite they are read at once."""
    if pipelines(conn):
        return cast(Fetched, conn.defer(sql, params))  # type: ignore[attr-defined]
    return Fetched(conn.execute(sql, params))


class DatabaseError(NagareError):
    code = "database_error"


class StorageFull(DatabaseError):
    """A write did not fit (a full disk): nothing of it was stored; later writes may fit."""

    code = "storage_full"
    status = 507


class LeaderLock(Protocol):
    """Who leads the masters of one database: `hold()` takes the lock if it is free (or says
    whether this process still holds it); `release()` lets another take it."""

    shared: bool  # whether other masters can share the database (PostgreSQL)

    def hold(self) -> bool: ...

    def release(self) -> None: ...


class WakeChannel(Protocol):
    """Wake-ups between masters sharing a database (PostgreSQL's LISTEN/NOTIFY): `publish`
    from any thread; `listen()` starts listening at once (before the master registers);
    `run(stop)` is the loop that sends them and calls `on_event` with those of the other
    masters."""

    on_event: Callable[[str, list[str]], None]

    def publish(self, kind: str, *args: str) -> None: ...

    def listen(self) -> None: ...

    def wake(self) -> None: ...

    def run(self, stop: threading.Event) -> None: ...

    def close(self) -> None: ...


class SoleLeader:
    """SQLite: one server per database file, so it always leads."""

    shared = False

    def hold(self) -> bool:
        return True

    def release(self) -> None:
        """Nothing to let go."""


class Database:
    """Owns the SQLite file. `write()` gives the single writer inside one IMMEDIATE transaction;
    `read()` lends one of at most READERS reader connections (a thread that already holds one
    gets the same one back, so nested reads never wait for themselves). WAL checkpoints run in
    the `checkpointer` loop, which `app` starts in a thread of its own."""

    dialect = "sqlite"

    def __init__(self, path: str, readers: int = READERS) -> None:
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._writer = self._connect(new_file_setup=True)
        self._lock = threading.RLock()
        self._readers: queue.LifoQueue[sqlite3.Connection | None] = queue.LifoQueue()
        for _ in range(readers):  # None: a connection not opened yet
            self._readers.put(None)
        self._lent = threading.local()
        self._all: list[sqlite3.Connection] = [self._writer]
        self._commits = 0
        self._closed = False
        self._pool_lock = threading.Lock()  # the readers' pool and `_closed` (not the writer's)
        self.checkpointer: Checkpointer | None = None
        self._migrate()
        if path != ":memory:":
            self._writer.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
            self.checkpointer = Checkpointer(self._connect)

    def _connect(self, new_file_setup: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
            if new_file_setup:  # effective only on an empty file, and only before WAL mode
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open database '{self.path}': {exc}") from None
        conn.row_factory = sqlite3.Row
        return conn

    def _migrate(self) -> None:
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise DatabaseError(
                    f"database '{self.path}' has schema version {version}, newer than this "
                    f"Nagare knows ({len(MIGRATIONS)}): upgrade Nagare or use another --db"
                )
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in _statements(migration_script(number, self.dialect)):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    @property
    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short IMMEDIATE transaction on the writer connection. A write that does not fit
        (SQLITE_FULL: the disk, or the file's size limit) is rolled back whole — SQLite's
        journal keeps the file intact — and raised as `StorageFull`; the next write tries
        again, so the server works again as soon as there is room."""
        with self._lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite may have rolled back already
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise StorageFull(f"the database cannot be written: {exc}") from None
                raise
            if self.checkpointer is not None:  # counted from the end of the migrations
                self._commits += 1
                if self._commits >= CHECKPOINT_EVERY_COMMITS:
                    self._commits = 0
                    self.checkpointer.request()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        held: sqlite3.Connection | None = getattr(self._lent, "conn", None)
        if held is not None:  # a nested read in the same thread
            yield held
            return
        token = self._readers.get()
        if self._closed:  # closed meanwhile: the pool holds only empty tokens; pass one on
            if token is not None:
                self._give_back(token)
            else:
                self._readers.put(None)
            raise DatabaseError("the database is closed (the server is stopping)")
        conn = token or self._open_reader()
        self._lent.conn = conn
        try:
            yield conn
        finally:
            self._lent.conn = None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._give_back(conn)

    def _give_back(self, conn: sqlite3.Connection) -> None:
        """A lent reader returns to the pool; once the database closed, it is closed here, by
        the thread that used it (never under a thread still running a statement on it)."""
        with self._pool_lock:
            if not self._closed:
                self._readers.put(conn)
                return
            self._all.remove(conn)
            self._readers.put(None)
        conn.close()

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        with self._pool_lock:
            self._all.append(conn)
        return conn

    @property
    def incremental_vacuum_enabled(self) -> bool:
        with self.read() as conn:
            return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2

    def release_free_pages(self) -> None:
        """Give the pages freed by deletions back to the file system (incremental auto-vacuum;
        without it, SQLite reuses free pages for new rows but never shrinks the file)."""
        with self._lock:
            self._writer.executescript("PRAGMA incremental_vacuum;")
            self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def enable_incremental_vacuum(self) -> bool:
        """Switch a database created before incremental auto-vacuum to it: one full VACUUM
        (rewrites the file; needs no other process holding it). False if it already was."""
        if self.incremental_vacuum_enabled:
            return False
        with self._lock:
            try:
                self._writer.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._writer.execute("VACUUM")
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot VACUUM '{self.path}': {exc}") from None
        return True

    def leader_lock(self) -> LeaderLock:
        return SoleLeader()

    def wake_channel(self, sender: str) -> WakeChannel | None:
        """None: a SQLite file has one server, nobody else to wake."""
        return None

    def close(self) -> None:
        """Close the writer and the idle readers; a reader lent to another thread (a request
        still being answered) is closed when that thread gives it back, and reads started
        after this raise DatabaseError: a connection is never closed under a statement."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self._lock, self._pool_lock:
            self._closed = True
            idle = [self._writer]
            tokens = 0
            while not self._readers.empty():
                conn = self._readers.get_nowait()
                tokens += 1
                if conn is not None:
                    idle.append(conn)
            for _ in range(tokens):  # a read waiting for a reader wakes and sees the close
                self._readers.put(None)
            for conn in idle:
                conn.close()
                self._all.remove(conn)


class Checkpointer:
    """Copies the WAL back into the database file on request (every CHECKPOINT_EVERY_COMMITS
    commits), on a connection of its own, in the thread that runs `run` (PASSIVE: it never
    waits for, nor blocks, readers and the writer). `app` says how to start that loop
    (`start_with`); it is started at the first request, so an idle server pays for neither the
    thread nor the connection. Without it (a command-line tool), requests are ignored and the
    writer's own automatic checkpoint bounds the WAL."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._due = threading.Event()
        self._closing = threading.Event()
        self._starter: Callable[[], None] | None = None
        self._start_lock = threading.Lock()
        self.liveness = Heartbeat("checkpoint", BEAT_SECONDS)

    def start_with(self, starter: Callable[[], None]) -> None:
        """How to start the loop (`app` runs `run` in a thread of its own) when first needed."""
        self._starter = starter

    def request(self) -> None:
        if self._starter is not None:
            with self._start_lock:
                starter, self._starter = self._starter, None
            if starter is not None:
                starter()
        self._due.set()

    def wake(self) -> None:
        """Let the loop see its `stop` event now."""
        self._due.set()

    def run(self, stop: threading.Event) -> None:
        conn: sqlite3.Connection | None = None  # opened at the first request: an idle server
        try:  # never pays for a connection it does not use
            while not stop.is_set() and not self._closing.is_set():
                due = self._due.wait(BEAT_SECONDS)
                self.liveness.beat()
                if not due:  # no checkpoint due: only a beat
                    continue
                self._due.clear()
                if stop.is_set() or self._closing.is_set():
                    return
                try:
                    conn = conn or self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except (sqlite3.Error, DatabaseError) as exc:  # the writer's own still bounds it
                    log.warning("background WAL checkpoint of the database failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        """The database is closing: leave the loop at once."""
        self._closing.set()
        self._due.set()


def open_database(where: str, password_env: str = "") -> Database:
    """The database at `where`: a SQLite file, or a PostgreSQL URL (`postgresql://...`; the
    driver is imported only then). `password_env` names the variable holding its password."""
    if is_postgres_url(where):
        from nagare.store.postgres import PgDatabase

        # the same interface (write/read, schema_version, close...): the parts use it as one
        return cast(Database, PgDatabase(where, password_env=password_env))
    return Database(where)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
