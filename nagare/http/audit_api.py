"""The audit log's route: `GET /api/audit`, the recorded actions newest first, filtered and paged.
(Recording is the dispatcher's: every route with an `action` is written by `Api._audited`.)"""

from __future__ import annotations

from typing import Any

from nagare.access import Permission, Scope
from nagare.clock import parse_iso
from nagare.errors import BadRequest
from nagare.http.routing import Param, Route
from nagare.http.serialize import audit_entry_json
from nagare.http.server import Request
from nagare.store import AuditFilter, AuditStore

MAX_AUDIT_PAGE = 500
MAX_FILTER_CHARS = 200  # a filter longer than any actor, action, target or outcome


class AuditApi:
    def __init__(self, audit: AuditStore) -> None:
        self.audit = audit

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/audit",
                self.entries,
                "The audit log, newest first: {data: [{id, at, actor, action, target, address, "
                "outcome, detail}], total, page, limit}",
                query=(
                    Param("actor", "only entries of this actor (a user, key:NAME, api-key, ...)"),
                    Param("action", "only this action (run.kill), or its family: run."),
                    Param("target", "only entries on this target (dag:ID, run:ID, task:RUN/TASK)"),
                    Param("outcome", "only this outcome (ok, or an error code: forbidden, ...)"),
                    Param("since", "only entries at or after this time (ISO 8601)"),
                    Param("until", "only entries before this time (ISO 8601)"),
                    Param("page", "page number, from 1", "integer", minimum=1),
                    Param(
                        "limit",
                        f"entries per page, at most {MAX_AUDIT_PAGE}",
                        "integer",
                        minimum=1,
                        maximum=MAX_AUDIT_PAGE,
                    ),
                ),
                tags=("audit",),
                permission=Permission.AUDIT,
                scope=Scope.GLOBAL,  # entries of every DAG: not for a role limited to some
            )
        ]

    def entries(self, request: Request) -> dict[str, Any]:
        filt = audit_filter(request)
        page = request.int_arg("page", 1, 1, 1_000_000)
        limit = request.int_arg("limit", 50, 1, MAX_AUDIT_PAGE)
        found, total = self.audit.find(filt, page, limit)
        return {
            "data": [audit_entry_json(e) for e in found],
            "total": total,
            "page": page,
            "limit": limit,
        }


def audit_filter(request: Request) -> AuditFilter:
    """The query's filters; a time that is not ISO 8601 or an over-long text is a 400."""
    return AuditFilter(
        actor=_text_arg(request, "actor"),
        action=_text_arg(request, "action"),
        target=_text_arg(request, "target"),
        outcome=_text_arg(request, "outcome"),
        since=_time_arg(request, "since"),
        until=_time_arg(request, "until"),
    )


def _text_arg(request: Request, name: str) -> str:
    value = request.arg(name).strip()
    if len(value) > MAX_FILTER_CHARS:
        raise BadRequest(
            f"query parameter '{name}' is too long ({len(value)} characters, at most "
            f"{MAX_FILTER_CHARS})"
        )
    return value


def _time_arg(request: Request, name: str) -> int | None:
    raw = request.arg(name).strip()
    if not raw:
        return None
    try:
        return parse_iso(raw[:64])
    except ValueError as exc:
        raise BadRequest(f"query parameter '{name}': {exc}") from None
