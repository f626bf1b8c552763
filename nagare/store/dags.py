"""DAG versions (the definition every run follows, stored once per version) and the scheduling
state of each DAG (paused, watermark, last fired slot) in SQLite."""

from __future__ import annotations

from nagare.dagfile import dag_from_json, dag_to_json
from nagare.digest import sha256_hex
from nagare.models import DagDef
from nagare.store.db import Database, DatabaseError
from nagare.store.records import DagState

DIGEST_CACHE_SIZE = 512  # loaded definitions whose version digest is remembered


def text_digest(text: str) -> str:
    """The version digest of a definition's JSON form (`dag_to_json`)."""
    return sha256_hex(text.encode())[:24]


class DagStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._versions: dict[str, DagDef] = {}  # digest -> definition
        self._digests: dict[int, tuple[DagDef, str]] = {}  # id(definition) -> (it, its digest)

    # ------------------------------------------------------------ versions

    def save_version(self, dag: DagDef, now: int) -> str:
        """Store `dag` once per version (a hash of its JSON form); returns that digest."""
        known = self._digests.get(id(dag))
        if known is not None and known[0] is dag:  # the same loaded definition as last time
            return known[1]
        text = dag_to_json(dag)
        digest = text_digest(text)
        if len(self._digests) >= DIGEST_CACHE_SIZE:
            self._digests.clear()
        self._digests[id(dag)] = (dag, digest)
        if digest not in self._versions:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO dag_versions(hash, dag_id, definition, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (digest, dag.dag_id, text, now),
                )
            self._versions[digest] = dag
        return digest

    def version(self, digest: str) -> DagDef:
        cached = self._versions.get(digest)
        if cached is not None:
            return cached
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT definition FROM dag_versions WHERE hash=?", (digest,)
            ).fetchone()
        if row is None:
            raise DatabaseError(f"DAG version {digest} is missing from the database")
        dag = dag_from_json(row["definition"])
        self._versions[digest] = dag
        return dag

    # ------------------------------------------------------------ scheduling state

    def states(self) -> dict[str, DagState]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM dag_state").fetchall()
        return {
            r["dag_id"]: DagState(r["dag_id"], bool(r["paused"]), r["watermark"], r["last_slot"])
            for r in rows
        }

    def ensure_state(self, dag_id: str, now: int) -> DagState:
        """The DAG's state; a DAG seen for the first time gets its watermark (`now`) stored."""
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dag_state(dag_id, paused, watermark, updated_at) "
                "VALUES (?, 0, ?, ?)",
                (dag_id, now, now),
            )
            row = conn.execute("SELECT * FROM dag_state WHERE dag_id=?", (dag_id,)).fetchone()
        return DagState(dag_id, bool(row["paused"]), row["watermark"], row["last_slot"])

    def set_paused(self, dag_id: str, paused: bool, now: int) -> None:
        """Pause or activate; activating moves the watermark to `now`: paused slots are skipped."""
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dag_state(dag_id, paused, watermark, updated_at) "
                "VALUES (?, 0, ?, ?)",
                (dag_id, now, now),
            )
            if paused:
                conn.execute(
                    "UPDATE dag_state SET paused=1, updated_at=? WHERE dag_id=?", (now, dag_id)
                )
            else:
                conn.execute(
                    "UPDATE dag_state SET paused=0, watermark=?, last_slot=NULL, updated_at=? "
                    "WHERE dag_id=? AND paused=1",
                    (now, now, dag_id),
                )

    def set_last_slot(self, dag_id: str, slot: int, now: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE dag_state SET last_slot=?, updated_at=? WHERE dag_id=? AND "
                "(last_slot IS NULL OR last_slot < ?)",
                (slot, now, dag_id, slot),
            )
