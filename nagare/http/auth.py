"""API key checks: `Authorization: Bearer KEY`, compared in constant time."""

from __future__ import annotations

import hmac

from nagare.errors import Unauthorized
from nagare.http.server import Request


def check_key(request: Request, key: str, allow_query_token: bool) -> None:
    """Raise Unauthorized unless the request carries `key` (no-op when no key is configured)."""
    if not key:
        return
    supplied = _bearer(request.header("authorization"))
    if supplied is None and allow_query_token:
        supplied = request.arg("token") or None
    if supplied is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(supplied.encode(), key.encode()):
        raise Unauthorized("invalid API key")


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
