"""The routes of the steps that wait: answering an approval and emitting an event."""

from __future__ import annotations

from typing import Any

from nagare.access import Kind, Permission, Principal, Scope
from nagare.errors import BadRequest
from nagare.http.routing import Route
from nagare.http.serialize import task_json
from nagare.http.server import Request
from nagare.patterns import EVENT_NAME
from nagare.waits import Waits

MAX_BY_CHARS = 200


class WaitsApi:
    def __init__(self, waits: Waits) -> None:
        self.waits = waits

    def routes(self) -> list[Route]:
        answer = {
            "type": "object",
            "properties": {"comment": {"type": "string"}, "by": {"type": "string"}},
        }
        return [
            Route(
                "POST",
                "/api/runs/{run_id}/tasks/{task_id}/approve",
                self.approve,
                "Approve a task waiting for approval (body: optional comment and by); 409 unless "
                "it waits for one",
                body=answer,
                tags=("tasks",),
                permission=Permission.OPERATE,
                scope=Scope.RUN,
                action="task.approve",
            ),
            Route(
                "POST",
                "/api/runs/{run_id}/tasks/{task_id}/reject",
                self.reject,
                "Reject a task waiting for approval: it fails (body: optional comment and by); "
                "409 unless it waits for one",
                body=answer,
                tags=("tasks",),
                permission=Permission.OPERATE,
                scope=Scope.RUN,
                action="task.reject",
            ),
            Route(
                "POST",
                "/api/events/{name}",
                self.emit,
                "Emit an event (the JSON body is its payload): every `wait` step waiting for it "
                "whose match holds ends -> {matched: [{run_id, task_id}]}",
                body={},
                tags=("events",),
                permission=Permission.OPERATE,
                scope=Scope.GLOBAL,
                action="event.emit",
            ),
        ]

    def approve(self, request: Request) -> dict[str, Any]:
        return self._answer(request, True)

    def reject(self, request: Request) -> dict[str, Any]:
        return self._answer(request, False)

    def _answer(self, request: Request, approved: bool) -> dict[str, Any]:
        body = request.json()
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest('the body must be an object: {"comment": "..."}')
        comment, by = body.get("comment", ""), body.get("by", "")
        if not isinstance(comment, str) or not isinstance(by, str):
            raise BadRequest("'comment' and 'by' must be strings")
        by = approver(request.principal, by)
        request.note(by=by)
        if comment.strip():
            request.note(comment=comment)  # the person's words, one line, cut at 200 characters
        task = self.waits.approve(
            request.params["run_id"], request.params["task_id"], by, comment, approved
        )
        return task_json(task)

    def emit(self, request: Request) -> dict[str, Any]:
        name = request.params["name"]
        if not EVENT_NAME.match(name):
            raise BadRequest(
                f"'{name[:60]}' is not a valid event name (letters, digits, '_', '.', ':', '-')"
            )
        matched = self.waits.emit(name, request.json())
        request.note(matched=matched_text(matched))
        return {"matched": matched}


def approver(principal: Principal, by: str) -> str:
    """Who answers: a signed-in user or a created key is who it proved to be (a `by` in the
    body is ignored); without users (no auth, the one API key) the name the caller gives."""
    if principal.kind in (Kind.SESSION, Kind.KEY):
        return principal.name
    return by.strip()[:MAX_BY_CHARS] or "api"


def matched_text(matched: list[dict[str, str]]) -> str:
    """The waits an event ended, for the audit log: `RUN/TASK,...` (or `none`)."""
    return ",".join(f"{m['run_id']}/{m['task_id']}" for m in matched) or "none"
