"""The webhook route `/api/webhooks/{path...}`: exempt from the API key (each DAG's trigger
carries its own HMAC secret), registered in the route table by `app` so it shows in the OpenAPI
document. The body limit (413) is the server's; the rest is `WebhookService`."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from nagare.access import Permission
from nagare.http.routing import ANY, Route
from nagare.http.server import Request
from nagare.http.waits_api import matched_text
from nagare.webhooks import Delivery, WebhookService

PREFIX = "/api/webhooks/"


class WebhooksApi:
    def __init__(self, webhooks: WebhookService) -> None:
        self.webhooks = webhooks

    def routes(self) -> list[Route]:
        return [
            Route(
                ANY,
                PREFIX + "{webhook_path...}",
                self.receive,
                "Webhook of a DAG trigger (any method the DAG names; HMAC-SHA256 signature when "
                "the trigger has a secret): 202 {run_id}, or {matched: [{run_id, task_id}]} for "
                "a trigger with emit_event; 403 bad/missing signature, 400 not JSON, 404 no "
                "matching trigger, 409 dag paused, 413 too large",
                body={"type": "object"},
                status=202,
                tags=("webhooks",),
                permission=Permission.WEBHOOK,
                action="webhook.receive",
            )
        ]

    def receive(self, request: Request) -> dict[str, Any]:
        delivery = Delivery(request.method, unquote(request.path), request.headers, request.body)
        answer = self.webhooks.deliver(delivery)
        if isinstance(answer, str):
            request.note(run_id=answer)
            return {"run_id": answer}
        request.note(matched=matched_text(answer))
        return {"matched": answer}
