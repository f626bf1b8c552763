"""The cluster routes: `GET /api/workers` (API key) for people, and the protocol routes
`/api/workers/register|heartbeat|poll|log|result` (cluster token) for remote workers."""

from __future__ import annotations

from typing import Any

from nagare.access import Permission, Scope
from nagare.cluster.coordinator import Coordinator
from nagare.cluster.protocol import (
    encode_directives,
    encode_log_ack,
    encode_result_ack,
    encode_welcome,
    read_hello,
    read_log_batch,
    read_poll,
    read_result,
)
from nagare.http.routing import Route
from nagare.http.serialize import worker_json
from nagare.http.server import Request

PROTOCOL_BODY = {
    "type": "object",
    "required": ["worker_id", "hostname", "pools", "max_tasks"],
    "properties": {
        "worker_id": {"type": "string"},
        "hostname": {"type": "string"},
        "pools": {"type": "array", "items": {"type": "string"}},
        "max_tasks": {"type": "integer", "minimum": 1},
        "held": {"type": "array", "description": "[task_instance_id, attempt] pairs it runs"},
        "results": {"type": "array", "description": "poll: the results of finished attempts"},
    },
}


class ClusterApi:
    def __init__(self, coordinator: Coordinator, max_line_chars: int) -> None:
        self.coordinator = coordinator
        self.max_line_chars = max_line_chars

    def routes(self) -> list[Route]:
        def protocol(path: str, handler: Any, summary: str) -> Route:
            return Route(
                "POST",
                f"/api/workers/{path}",
                handler,
                summary,
                body=PROTOCOL_BODY if path != "log" and path != "result" else {"type": "object"},
                tags=("cluster",),
                permission=Permission.CLUSTER,
            )

        return [
            Route(
                "GET",
                "/api/workers",
                self.workers,
                "Registered remote workers: pools, capacity, running tasks, last heartbeat, status",
                tags=("system",),
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            protocol("register", self.register, "A worker joins (or re-joins)"),
            protocol(
                "heartbeat",
                self.heartbeat,
                "A worker renews the leases of what it runs; answers {cancel, lost}",
            ),
            protocol(
                "poll",
                self.poll,
                "Long poll for work, carrying the worker's finished results: records them, "
                "renews its leases and answers {tasks, cancel, lost, results} as soon as there "
                "is some, or after wait_seconds",
            ),
            protocol("log", self.log, "Lines of a remote attempt's log"),
            protocol(
                "result",
                self.result,
                "How a remote attempt ended (workers of protocol 1; later ones send results "
                "in their polls); 409 when the worker no longer holds it",
            ),
        ]

    def workers(self, request: Request) -> list[dict[str, Any]]:
        return [worker_json(w) for w in self.coordinator.workers()]

    def register(self, request: Request) -> dict[str, Any]:
        return encode_welcome(self.coordinator.register(read_hello(request.json())))

    def heartbeat(self, request: Request) -> dict[str, Any]:
        return encode_directives(self.coordinator.heartbeat(read_hello(request.json())))

    def poll(self, request: Request) -> dict[str, Any]:
        poll = read_poll(request.json(), self.max_line_chars)
        directives = self.coordinator.poll(poll, request.client_gone)
        return encode_directives(directives)

    def log(self, request: Request) -> dict[str, Any]:
        batch = read_log_batch(request.json(), self.max_line_chars)
        return encode_log_ack(self.coordinator.log_lines(batch))

    def result(self, request: Request) -> dict[str, Any]:
        result = read_result(request.json(), self.max_line_chars)
        return encode_result_ack(self.coordinator.result(result))
