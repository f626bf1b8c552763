"""The route listing the masters that serve this database and which of them leads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nagare.access import Permission, Scope
from nagare.http.routing import Route
from nagare.http.server import Request

if TYPE_CHECKING:
    from nagare.store import MasterRecord


def master_json(master: MasterRecord) -> dict[str, Any]:
    return {
        "id": master.master_id,
        "hostname": master.hostname,
        "url": master.url,
        "started_at": master.started_at,
        "last_seen": master.last_seen,
        "leader": master.leader,
        "dags": len(master.dag_digests),
    }


class MastersApi:
    def __init__(
        self,
        me: str,
        leads: Callable[[], bool],
        masters: Callable[[], list[MasterRecord]],
        mismatches: Callable[[list[MasterRecord]], dict[str, list[str]]],
    ) -> None:
        self.me = me
        self.leads = leads
        self.masters = masters
        self.mismatches = mismatches

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/masters",
                self.list,
                "The masters serving this database, seen in the last 10 s (id, hostname, url, "
                "started_at, last_seen, leader, dags), this master's id (me), the leader's id "
                "(leader, null while none holds the lock) and the DAGs whose definition differs "
                "between them (digest_mismatch: DAG id -> master ids)",
                tags=("system",),
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
        ]

    def list(self, request: Request) -> dict[str, Any]:
        masters = self.masters()
        leader = next((m.master_id for m in masters if m.leader), None)
        if self.leads():
            leader = self.me
        return {
            "me": self.me,
            "leader": leader,
            "masters": [master_json(m) for m in masters],
            "digest_mismatch": self.mismatches(masters),
        }
