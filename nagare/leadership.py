"""Which master leads: several masters may share one PostgreSQL database, and the duties that
must happen once (firing cron slots and their catch-up, run deadlines, the retention sweep)
belong to the one holding the leader lock (`store.db.LeaderLock`: always this server on SQLite,
a session-level advisory lock on PostgreSQL). Everything else runs on every master, safe by
compare-and-set: claims (`FOR UPDATE SKIP LOCKED`), results, promotions, kills.

The loop also keeps this master's row (`masters`): last seen, whether it leads, the digest of
each DAG it loaded, so the API can list the masters and flag a DAG they disagree on."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from nagare.clock import now_ms
from nagare.dagfile import dag_to_json
from nagare.liveness import Heartbeat
from nagare.models import DagDef

if TYPE_CHECKING:
    from nagare.store import LeaderLock, MasterRecord

log = logging.getLogger("nagare")
TURN_SECONDS = 1.0  # a non-leader tries the lock, and every master beats, this often
LIVE_SECONDS = 10.0  # a master not seen for this long is not counted among the live ones
FORGET_SECONDS = 3600.0  # the leader removes rows of masters gone this long without a goodbye


def stable_key(hostname: str, listen: tuple[str, int], data_dir: str) -> str:
    """What names one master across its restarts: its host, configured port and (a digest of)
    its listen address and data folder; "" with port 0 (a new port each start: no identity)."""
    host, port = listen
    if not port:
        return ""
    place = hashlib.sha256(f"{host}|{data_dir}".encode()).hexdigest()[:6]
    return f"{hostname}-{port}-{place}"


def master_id(key: str, hostname: str, pid: int, token: str) -> str:
    """This start's id: the stable key (else the host name), the process id, a random token
    (a pid reused after a restart still gives a new id)."""
    return f"{key or hostname}-{pid}-{token}"


def previous_incarnations(ids: Iterable[str], key: str, me: str) -> list[str]:
    """The ids among `ids` of this master's earlier starts (same stable key, another id)."""
    if not key:
        return []
    pattern = re.compile(re.escape(key) + r"-[0-9]+-[0-9a-f]+")
    return sorted({i for i in ids if i != me and pattern.fullmatch(i)})


def newcomers(before: set[str] | None, now: set[str]) -> list[str]:
    """The masters seen now and not on the turn before (none on the first turn: the masters
    already there were listening before this one could send them anything)."""
    return [] if before is None else sorted(now - before)


class MasterRows(Protocol):
    def beat(self, master: MasterRecord) -> None: ...

    def seen_since(self, since: int) -> list[MasterRecord]: ...

    def forget(self, master_id: str) -> None: ...

    def forget_older(self, before: int) -> int: ...


def dag_digests(dags: Mapping[str, DagDef], digest: Callable[[str], str]) -> dict[str, str]:
    """Each loaded DAG's version digest (of its JSON form, as the store keeps versions)."""
    return {dag_id: digest(dag_to_json(dag)) for dag_id, dag in sorted(dags.items())}


def digest_mismatches(masters: list[MasterRecord]) -> dict[str, list[str]]:
    """DAG id -> the ids of the live masters whose version of it differs from the most common
    one (ties: from the leader's, else the first master's); a DAG one master lacks counts too."""
    dag_ids = sorted({d for m in masters for d in m.dag_digests})
    out: dict[str, list[str]] = {}
    for dag_id in dag_ids:
        versions = [m.dag_digests.get(dag_id, "") for m in masters]
        if len(set(versions)) <= 1:
            continue
        leader = next((m for m in masters if m.leader), masters[0])
        common = max(
            set(versions),
            key=lambda v: (versions.count(v), v == leader.dag_digests.get(dag_id, "")),
        )
        out[dag_id] = [m.master_id for m, v in zip(masters, versions, strict=True) if v != common]
    return out


class Leadership:
    """`leads` says whether this master holds the leader lock now; `run(stop)` (started only
    when the database can be shared) re-tries or re-checks it every TURN_SECONDS and writes this
    master's row; `on_gained` is called when
    this master becomes the leader (app wires: the scheduler looks at the cron slots at once)."""

    def __init__(
        self,
        rows: MasterRows,
        lock: LeaderLock,
        me: MasterRecord,
        dags: Callable[[], Mapping[str, DagDef]],
        digest: Callable[[str], str],
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.rows = rows
        self.lock = lock
        self.me = me
        self.dags = dags
        self.digest = digest
        self.clock = clock
        self.on_gained: Callable[[], None] = lambda: None
        # called with the time of every beat of a master sharing its database (app wires: the
        # leases of its own running attempts are renewed, so they outlive it by one lease only)
        self.on_beat: Callable[[int], None] = lambda now: None
        # called with the ids of masters this one sees for the first time (app wires: they are
        # told to look again, having maybe missed wake-ups sent before this master saw them)
        self.on_joined: Callable[[list[str]], None] = lambda ids: None
        self.leads = False
        self.others = 0  # how many other live masters the last turn saw
        self._others_seen: set[str] | None = None  # their ids (None: no turn yet)
        self._digested: tuple[Mapping[str, DagDef] | None, dict[str, str]] = (None, {})
        self._forgotten = 0  # when the leader last removed rows of long-gone masters
        self._lock = threading.Lock()  # one turn at a time (the loop's, or start's first)
        self.liveness = Heartbeat("leadership", TURN_SECONDS * 5)

    def run(self, stop: threading.Event) -> None:
        """Every TURN_SECONDS: hold (or try) the lock and beat; on the way out, step down."""
        try:
            while not stop.wait(TURN_SECONDS):
                self.turn()
                self.liveness.beat()
        finally:
            self.step_down()

    def turn(self) -> None:
        """Try or check the lock; write this master's row (on SQLite only when it changed)."""
        joined: list[str] = []
        with self._lock:
            held = self.lock.hold()
            gained = held and not self.leads
            if held != self.leads:
                log.info("this master %s the leader", "is now" if held else "is no longer")
            self.leads = held
            if not self.lock.shared:  # alone on the database: no row to keep
                return
            now = self.clock()
            self.rows.beat(self._record(now, held))
            self.on_beat(now)
            others = {m.master_id for m in self.masters()} - {self.me.master_id}
            self.others = len(others)
            joined = newcomers(self._others_seen, others)
            self._others_seen = others
            if held and now - self._forgotten >= FORGET_SECONDS * 1000:
                self._forgotten = now
                self.rows.forget_older(now - int(FORGET_SECONDS * 1000))
        if gained:
            self.on_gained()
        if joined:
            self.on_joined(joined)

    def _record(self, now: int, leads: bool) -> MasterRecord:
        return replace(self.me, last_seen=now, leader=leads, dag_digests=self._digests())

    def _digests(self) -> dict[str, str]:
        dags = self.dags()
        if self._digested[0] is not dags:  # a new snapshot of the folder
            self._digested = (dags, dag_digests(dags, self.digest))
        return self._digested[1]

    def masters(self) -> list[MasterRecord]:
        """The live masters (on SQLite, this server alone)."""
        if not self.lock.shared:
            return [self._record(self.clock(), True)]
        return self.rows.seen_since(self.clock() - int(LIVE_SECONDS * 1000))

    def step_down(self) -> None:
        """Stopping: release the lock and remove this master's row."""
        with self._lock:
            self.leads = False
            self.lock.release()
            if not self.lock.shared:
                return
            try:
                self.rows.forget(self.me.master_id)
            except Exception as exc:  # the database may be gone: the row then ages out
                log.warning("could not remove this master's row: %s", exc)
