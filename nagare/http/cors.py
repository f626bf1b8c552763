"""CORS for `/api/*`: an allow-list of origins (`cors.allowed_origins`). Preflights are answered
before authentication, and every answer to an allowed origin (401s included) carries the
headers. Without a list: `*` when no API key is set, no CORS headers when one is; `*` is never
sent while a key is set."""

from __future__ import annotations

from nagare.http.server import Request, Response

METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
HEADERS = "Authorization, Content-Type, Last-Event-ID"
MAX_AGE = "600"


def cors_headers(request: Request, allowed: tuple[str, ...], key_set: bool) -> dict[str, str]:
    origin = request.header("origin").rstrip("/")
    if not origin:
        return {}
    if origin in allowed:
        value = origin
    elif not key_set and (not allowed or "*" in allowed):
        value = "*"
    else:
        return {"Vary": "Origin"}
    return {
        "Access-Control-Allow-Origin": value,
        "Access-Control-Allow-Methods": METHODS,
        "Access-Control-Allow-Headers": HEADERS,
        "Access-Control-Max-Age": MAX_AGE,
        "Vary": "Origin",
    }


def is_preflight(request: Request) -> bool:
    return request.method == "OPTIONS" and bool(request.header("access-control-request-method"))


def preflight(headers: dict[str, str]) -> Response:
    return Response(204, content_type="text/plain", headers=dict(headers))
