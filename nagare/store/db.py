"""SQLite connections: one writer behind a lock, a small pool of readers, WAL mode."""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nagare.errors import NagareError
from nagare.store.schema import MIGRATIONS

log = logging.getLogger("nagare.store")
READERS = 8
# Checkpoints (copying the WAL back into the database file) run in a thread of their own after
# this many commits, so that no writer pays for one inside its transaction; the writer's own
# automatic checkpoint stays as a safety net for a WAL this many pages long.
CHECKPOINT_EVERY_COMMITS = 32
WRITER_AUTOCHECKPOINT_PAGES = 8000


class DatabaseError(NagareError):
    code = "database_error"


class Database:
    """Owns the SQLite file. `write()` gives the single writer inside one IMMEDIATE transaction;
    `read()` lends a reader connection. WAL checkpoints run in a background thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._writer = self._connect(new_file_setup=True)
        self._lock = threading.RLock()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = [self._writer]
        self._commits = 0
        self._checkpointer: _Checkpointer | None = None
        self._migrate()
        if path != ":memory:":
            self._writer.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
            self._checkpointer = _Checkpointer(self._connect())

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
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    @property
    def schema_version(self) -> int:
        with self.read() as conn:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short IMMEDIATE transaction on the writer connection."""
        with self._lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if self._checkpointer is not None:  # counted from the end of the migrations
                self._commits += 1
                if self._commits >= CHECKPOINT_EVERY_COMMITS:
                    self._commits = 0
                    self._checkpointer.request()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._readers.put(conn)

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

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class _Checkpointer:
    """Copies the WAL back into the database file on request, on a connection and in a thread
    of its own (PASSIVE: it never waits for, nor blocks, readers and the writer)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._due = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="checkpoint")
            self._thread.start()
        self._due.set()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._thread is None or not self._thread.is_alive():
            self._conn.close()

    def _run(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._stopping:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the writer's own checkpoint still bounds the WAL
                log.warning("background WAL checkpoint of the database failed: %s", exc)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
