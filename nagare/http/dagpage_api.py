"""The DAG page's routes: the grid (last runs x tasks), the calendar (runs per day) and the
stored versions of a DAG (with one version's definition, which the run page draws)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from nagare.access import Permission, Scope
from nagare.clock import now_ms
from nagare.dag_folder import DagFolder
from nagare.dagfile import dag_from_json, dag_to_json
from nagare.errors import NotFound
from nagare.http.routing import Param, Route
from nagare.http.serialize import (
    calendar_json,
    grid_json,
    version_detail_json,
    version_json,
)
from nagare.http.server import Request
from nagare.store import DAY_MS, text_digest

GRID_DEFAULT, GRID_MAX = 25, 200  # runs in the grid
CALENDAR_DAYS, CALENDAR_MAX = 365, 731
MAX_OFFSET_MINUTES = 14 * 60

if TYPE_CHECKING:
    from nagare.store import DayCount, Grid, VersionRow

    class HistoryReads(Protocol):
        """What the routes read of the store's `history` part."""

        def grid(self, dag_id: str, limit: int) -> Grid: ...

        def per_day(self, dag_id: str, since: int, offset_ms: int) -> list[DayCount]: ...

        def versions(self, dag_id: str) -> list[VersionRow]: ...

        def version_of(self, dag_id: str, digest: str) -> tuple[str, int] | None: ...


class DagPageApi:
    def __init__(self, history: HistoryReads, folder: DagFolder) -> None:
        self.history = history
        self.folder = folder

    def routes(self) -> list[Route]:
        tags = ("dags",)
        return [
            Route(
                "GET",
                "/api/dags/{dag_id}/grid",
                self.grid,
                "The newest runs of a DAG x its tasks: a compact status matrix (one character "
                "per run and task) with map tasks' children counted",
                query=(
                    Param(
                        "limit",
                        f"runs, newest first (default {GRID_DEFAULT})",
                        "integer",
                        minimum=1,
                        maximum=GRID_MAX,
                    ),
                ),
                tags=tags,
                permission=Permission.READ,
                scope=Scope.DAG,
            ),
            Route(
                "GET",
                "/api/dags/{dag_id}/calendar",
                self.calendar,
                "Runs of a DAG per day of their execution date, by status",
                query=(
                    Param(
                        "days",
                        f"days back from today (default {CALENDAR_DAYS})",
                        "integer",
                        minimum=1,
                        maximum=CALENDAR_MAX,
                    ),
                    Param(
                        "utc_offset_minutes",
                        "the viewer's offset from UTC (minutes east, e.g. 60 for UTC+1): where "
                        "days begin (default 0)",
                        "integer",
                        minimum=-MAX_OFFSET_MINUTES,
                        maximum=MAX_OFFSET_MINUTES,
                    ),
                ),
                tags=tags,
                permission=Permission.READ,
                scope=Scope.DAG,
            ),
            Route(
                "GET",
                "/api/dags/{dag_id}/versions",
                self.versions,
                "Every stored version of a DAG, newest first: when first seen, how many runs "
                "followed it, which is loaded now",
                tags=tags,
                permission=Permission.READ,
                scope=Scope.DAG,
            ),
            Route(
                "GET",
                "/api/dags/{dag_id}/versions/{digest}",
                self.version,
                "One version of a DAG: its tasks and its definition as text",
                tags=tags,
                permission=Permission.SOURCE,
                scope=Scope.DAG,
            ),
        ]

    def grid(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        limit = request.int_arg("limit", GRID_DEFAULT, 1, GRID_MAX)
        grid = self.history.grid(dag_id, limit)
        if not grid.runs:
            self._known(dag_id)
        return grid_json(dag_id, grid)

    def calendar(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        days = request.int_arg("days", CALENDAR_DAYS, 1, CALENDAR_MAX)
        offset = request.int_arg("utc_offset_minutes", 0, -MAX_OFFSET_MINUTES, MAX_OFFSET_MINUTES)
        since = calendar_start(now_ms(), days, offset * 60_000)
        rows = self.history.per_day(dag_id, since, offset * 60_000)
        if not rows:
            self._known(dag_id)
        return calendar_json(dag_id, rows, since, offset)

    def versions(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        current = self._current(dag_id)
        rows = self.history.versions(dag_id)
        if not rows and current is None:
            raise NotFound(f"no DAG '{dag_id}' is loaded or was ever run")
        digest = current[0] if current else ""
        listed = [version_json(r, digest) for r in rows]
        if current is not None and all(r.digest != digest for r in rows):
            listed.insert(0, _unstored(digest))
        return {"dag_id": dag_id, "current": digest or None, "versions": listed}

    def version(self, request: Request) -> dict[str, Any]:
        dag_id, digest = request.params["dag_id"], request.params["digest"]
        current = self._current(dag_id)
        stored = self.history.version_of(dag_id, digest)
        if stored is not None:
            text, first_seen = stored
            return version_detail_json(
                dag_from_json(text), digest, text, first_seen, current[0] if current else ""
            )
        if current is not None and current[0] == digest:
            text = current[1]
            return version_detail_json(dag_from_json(text), digest, text, None, digest)
        raise NotFound(f"DAG '{dag_id}' has no version '{digest[:40]}'")

    def _current(self, dag_id: str) -> tuple[str, str] | None:
        """The digest and JSON text of the definition loaded now (None: not loaded)."""
        dag = self.folder.snapshot.dags.get(dag_id)
        if dag is None:
            return None
        text = dag_to_json(dag)
        return text_digest(text), text

    def _known(self, dag_id: str) -> None:
        """A DAG without runs: 404 unless it is loaded."""
        if dag_id not in self.folder.snapshot.dags:
            raise NotFound(f"no DAG '{dag_id}' is loaded or was ever run")


def calendar_start(now: int, days: int, offset_ms: int) -> int:
    """The first moment (epoch ms) of the day `days - 1` days before today, in the offset."""
    today = (now + offset_ms) // DAY_MS
    return (today - days + 1) * DAY_MS - offset_ms


def _unstored(digest: str) -> dict[str, Any]:
    """The loaded definition, not stored yet (no run followed it)."""
    return {
        "digest": digest,
        "first_seen": None,
        "runs": 0,
        "last_run_id": None,
        "last_run_at": None,
        "current": True,
        "stored": False,
    }
