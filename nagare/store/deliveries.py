"""Webhook deliveries seen recently: a repeated delivery id maps to the run it started."""

from __future__ import annotations

from nagare.store.db import Database


class DeliveryStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def find(self, key: str, since: int) -> str | None:
        """The run id a delivery `key` started at or after `since` (epoch ms), if any."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT run_id FROM webhook_deliveries WHERE delivery_key = ? AND received_at >= ?",
                (key, since),
            ).fetchone()
        return str(row[0]) if row else None

    def record(self, key: str, run_id: str, now: int, forget_before: int) -> None:
        """Remember `key` -> `run_id`; deliveries older than `forget_before` are dropped."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM webhook_deliveries WHERE received_at < ?", (forget_before,))
            conn.execute(
                "INSERT OR REPLACE INTO webhook_deliveries(delivery_key, run_id, received_at) "
                "VALUES (?, ?, ?)",
                (key, run_id, now),
            )
