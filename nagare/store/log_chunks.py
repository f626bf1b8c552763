"""Attempts' log lines in chunks (`log_chunks`): written by the masters of a PostgreSQL
database (each ships what its attempts print, `nagare/log_shipping.py`) so that any master
serves any log; read a page of chunks at a time. Chunks of one attempt are ordered by
(first_line, last_line); two masters that wrote the same lines (a remote worker that failed
over) may overlap, which readers skip. Retention deletes them with their run.
"""

from __future__ import annotations

from collections.abc import Sequence

from nagare.models import LogChunk
from nagare.store.db import Database

_COLUMNS = "run_id, task_instance_id, attempt, first_line, last_line, text, meta"


class LogChunkStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, chunks: Sequence[LogChunk]) -> None:
        """Store chunks in one transaction (their rows pipelined); a chunk already stored (the
        same lines from the same start) is ignored."""
        if not chunks:
            return
        rows = [
            (c.run_id, c.task_instance_id, c.attempt, c.first_line, c.last_line, c.text, c.meta)
            for c in chunks
        ]
        with self.db.write() as conn:
            conn.executemany(
                f"INSERT OR IGNORE INTO log_chunks({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
            )

    def after(self, task_instance_id: str, attempt: int, line: int, limit: int) -> list[LogChunk]:
        """At most `limit` chunks holding lines past `line` or closing the log after it, in
        order."""
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM log_chunks WHERE task_instance_id = ? AND attempt = ? "
                "AND (first_line > ? OR last_line > ?) ORDER BY first_line, last_line LIMIT ?",
                (task_instance_id, attempt, line, line, limit),
            ).fetchall()
        return [LogChunk(*row) for row in rows]

    def last_line(self, task_instance_id: str, attempt: int) -> int:
        """The highest line number stored for the attempt (0: none)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT max(last_line) FROM log_chunks WHERE task_instance_id = ? AND attempt = ?",
                (task_instance_id, attempt),
            ).fetchone()
        return int(row[0] or 0)
