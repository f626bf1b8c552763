"""The audit log: one row per state-changing action, newest first when read, deleted with old
run history by retention."""

from __future__ import annotations

from typing import Any

from nagare.store.db import Database
from nagare.store.records import AuditEntry, AuditFilter

_COLUMNS = "id, at, actor, action, target, address, outcome, detail"


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, entry: AuditEntry) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO audit_log(at, actor, action, target, address, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.at,
                    entry.actor,
                    entry.action,
                    entry.target,
                    entry.address,
                    entry.outcome,
                    entry.detail,
                ),
            )

    def find(self, filt: AuditFilter, page: int, limit: int) -> tuple[list[AuditEntry], int]:
        """One page of the entries `filt` matches, newest first, and how many match."""
        where, args = _where(filt)
        with self.db.read() as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM audit_log{where}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM audit_log{where} ORDER BY at DESC, id DESC "
                "LIMIT ? OFFSET ?",
                [*args, limit, (page - 1) * limit],
            ).fetchall()
        return [_entry(r) for r in rows], int(total)

    def count_before(self, cutoff: int) -> int:
        """How many entries are older than `cutoff` (epoch ms)."""
        with self.db.read() as conn:
            return int(
                conn.execute("SELECT COUNT(*) FROM audit_log WHERE at < ?", (cutoff,)).fetchone()[0]
            )

    def delete_before(self, cutoff: int, limit: int) -> int:
        """Delete at most `limit` of the entries older than `cutoff` (epoch ms); how many."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "DELETE FROM audit_log WHERE id IN "
                "(SELECT id FROM audit_log WHERE at < ? ORDER BY at LIMIT ?)",
                (cutoff, limit),
            )
            return int(cursor.rowcount)


def _where(filt: AuditFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column in ("actor", "target", "outcome"):
        value = getattr(filt, column)
        if value:
            clauses.append(f"{column} = ?")
            args.append(value)
    if filt.action.endswith("."):
        # byte order ('/' right after '.'), whatever a PostgreSQL database's collation
        clauses.append("action >= ? COLLATE BINARY AND action < ? COLLATE BINARY")
        args += [filt.action, filt.action[:-1] + "/"]  # '/' sorts right after '.'
    elif filt.action:
        clauses.append("action = ?")
        args.append(filt.action)
    if filt.since is not None:
        clauses.append("at >= ?")
        args.append(filt.since)
    if filt.until is not None:
        clauses.append("at < ?")
        args.append(filt.until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _entry(row: Any) -> AuditEntry:
    id_, at, actor, action, target, address, outcome, detail = row
    return AuditEntry(
        at=at,
        actor=actor,
        action=action,
        target=target,
        address=address,
        outcome=outcome,
        detail=detail,
        id=id_,
    )
