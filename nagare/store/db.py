"""SQLite connections: one writer behind a lock, a small pool of readers, WAL mode."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nagare.errors import NagareError
from nagare.store.schema import MIGRATIONS

READERS = 8


class DatabaseError(NagareError):
    code = "database_error"


class Database:
    """Owns the SQLite file. `write()` gives the single writer inside one IMMEDIATE transaction;
    `read()` lends a reader connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._writer = self._connect(new_file_setup=True)
        self._lock = threading.RLock()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = [self._writer]
        self._migrate()

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
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
