"""The masters serving one database: a row each (id, host, URL, start, last seen, whether it
leads, the digest of every DAG it loaded), written by its leadership loop every second. On
SQLite there is one; on PostgreSQL several may share the database."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from nagare.store.db import Database


@dataclass(frozen=True)
class MasterRecord:
    master_id: str
    hostname: str
    url: str
    started_at: int
    last_seen: int = 0
    leader: bool = False
    dag_digests: dict[str, str] = field(default_factory=dict)  # dag id -> version digest


class MasterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def beat(self, master: MasterRecord) -> None:
        """Write the master's row (created on its first beat)."""
        digests = json.dumps(master.dag_digests, sort_keys=True)
        with self.db.write() as conn:
            updated = conn.execute(
                "UPDATE masters SET hostname=?, url=?, started_at=?, last_seen=?, leader=?, "
                "dag_digests=? WHERE master_id=?",
                (
                    master.hostname,
                    master.url,
                    master.started_at,
                    master.last_seen,
                    int(master.leader),
                    digests,
                    master.master_id,
                ),
            ).rowcount
            if not updated:
                conn.execute(
                    "INSERT INTO masters(master_id, hostname, url, started_at, last_seen, leader, "
                    "dag_digests) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        master.master_id,
                        master.hostname,
                        master.url,
                        master.started_at,
                        master.last_seen,
                        int(master.leader),
                        digests,
                    ),
                )

    def seen_since(self, since: int) -> list[MasterRecord]:
        """The masters seen at or after `since` (epoch ms), oldest start first."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT * FROM masters WHERE last_seen >= ? ORDER BY started_at, master_id",
                (since,),
            ).fetchall()
        return [_master_from_row(r) for r in rows]

    def forget(self, master_id: str) -> None:
        """A master stopping removes its row."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM masters WHERE master_id=?", (master_id,))

    def forget_older(self, before: int) -> int:
        """Rows of masters not seen since `before` (gone without a goodbye) go."""
        with self.db.write() as conn:
            return int(conn.execute("DELETE FROM masters WHERE last_seen < ?", (before,)).rowcount)


def _master_from_row(r: sqlite3.Row) -> MasterRecord:
    digests = json.loads(r["dag_digests"] or "{}")
    return MasterRecord(
        master_id=str(r["master_id"]),
        hostname=str(r["hostname"]),
        url=str(r["url"]),
        started_at=int(r["started_at"]),
        last_seen=int(r["last_seen"]),
        leader=bool(r["leader"]),
        dag_digests={str(k): str(v) for k, v in digests.items()},
    )
