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


def check_token(request: Request, token: str, api_key: str) -> None:
    """The cluster protocol: the cluster token when one is set, else the API key, else open."""
    secret = token or api_key
    if not secret:
        return
    what = "cluster token" if token else "API key (no cluster token is set)"
    supplied = _bearer(request.header("authorization"))
    if supplied is None:
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(supplied.encode(), secret.encode()):
        raise Unauthorized(f"invalid {what}")
