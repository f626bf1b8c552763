"""Who a request is: the authenticators (none configured, the one API key; the built-in users
and single sign-on plug in as others) and the checks every route's permission and scope get.

An `Authenticator` turns a request's credentials into a `Principal` (nagare.access); `admit`
then applies the route's declared permission (401 without an identity, 403 without the right),
the CSRF rule of cookie sessions, and the DAG scope of roles limited to some tags.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol
from urllib.parse import unquote

from nagare.access import (
    ANONYMOUS,
    API_KEY,
    NOBODY,
    WORKER,
    Kind,
    Permission,
    Principal,
    Scope,
    can,
    csrf_ok,
    sees,
)
from nagare.errors import Forbidden, Unauthorized
from nagare.http.routing import Route
from nagare.http.server import Request

CSRF_HEADER = "x-csrf-token"


class Authenticator(Protocol):
    """Turns a request's credentials into a principal."""

    missing: str  # what a request without credentials is told (401)

    def identify(self, request: Request, allow_query_token: bool) -> Principal | None:
        """The identity the request proves; None when it brings no credentials. Raises
        Unauthorized for credentials that are wrong, expired or revoked."""
        ...


class KeyAuthenticator:
    """No users: with an API key configured, the key is an admin and nothing else gets in;
    without one, everyone is (the server warns at start)."""

    missing = "missing API key: send 'Authorization: Bearer <key>'"

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    def identify(self, request: Request, allow_query_token: bool) -> Principal | None:
        if not self.api_key:
            return ANONYMOUS
        supplied = bearer_of(request, allow_query_token)
        if supplied is None:
            return None
        if not same_secret(supplied, self.api_key):
            raise Unauthorized("invalid API key")
        return API_KEY


def bearer_of(request: Request, allow_query_token: bool) -> str | None:
    """The `Authorization: Bearer` token (or `?token=` where the route allows it)."""
    supplied = _bearer(request.header("authorization"))
    if supplied is None and allow_query_token:
        supplied = request.arg("token") or None
    return supplied


def same_secret(supplied: str, secret: str) -> bool:
    import hmac  # OpenSSL's libcrypto comes with it: at the first check, not at start

    return hmac.compare_digest(supplied.encode(), secret.encode())


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_token(request: Request, token: str, api_key: str, open_without: bool = True) -> None:
    """The cluster protocol: the cluster token when one is set, else the API key, else open
    (`open_without`: auth_mode key) or closed (with users, workers need a token)."""
    secret = token or api_key
    if not secret:
        if open_without:
            return
        raise Unauthorized(
            "no cluster token is set: start the server with --token (NAGARE_TOKEN) and give "
            "workers the same --token"
        )
    what = "cluster token" if token else "API key (no cluster token is set)"
    supplied = _bearer(request.header("authorization"))
    if supplied is None:
        raise Unauthorized(f"missing {what}: send 'Authorization: Bearer <token>'")
    if not same_secret(supplied, secret):
        raise Unauthorized(f"invalid {what}")


class Admission:
    """The checks of a route's declaration, for one request."""

    def __init__(
        self,
        authenticator: Authenticator,
        cluster_secret: Callable[[], tuple[str, str]],
        dag_tags: Callable[[str], Iterable[str] | None],
        run_dag: Callable[[str], str],
        cluster_open: bool = True,
    ) -> None:
        self.authenticator = authenticator
        self.cluster_open = cluster_open  # without a token or key: open (auth_mode key only)
        self.cluster_secret = cluster_secret  # (cluster token, API key)
        self.dag_tags = dag_tags  # a loaded DAG's tags (None: not loaded)
        self.run_dag = run_dag  # the DAG id of a run (NotFound when there is none)

    def admit(self, request: Request, route: Route) -> Principal:
        """The principal of `request` when it may call `route`; raises Unauthorized (401) or
        Forbidden (403) otherwise."""
        permission = route.permission
        if permission == Permission.OPEN:
            return self._maybe(request)
        if permission == Permission.WEBHOOK:
            return Principal(f"webhook:{unquote(request.path)}", Kind.WEBHOOK, None)
        if permission == Permission.CLUSTER:
            check_token(request, *self.cluster_secret(), open_without=self.cluster_open)
            return WORKER
        principal = self.identified(request, route.query_token)
        request.principal = principal  # a refusal's audit entry names who was refused
        assert permission is not None  # the router refuses routes without one
        if not can(principal, permission):
            raise Forbidden(_not_allowed(principal, permission))
        if not csrf_ok(principal, request.method, request.header(CSRF_HEADER)):
            raise Forbidden(
                "missing or wrong CSRF token: a signed-in write sends the session's token "
                "as the X-CSRF-Token header"
            )
        self._check_scope(principal, route.scope, request.params)
        return principal

    def identified(self, request: Request, allow_query_token: bool = False) -> Principal:
        """The request's principal; Unauthorized when it proves none."""
        principal = self.authenticator.identify(request, allow_query_token)
        if principal is None:
            raise Unauthorized(self.authenticator.missing)
        return principal

    def _maybe(self, request: Request) -> Principal:
        try:
            return self.authenticator.identify(request, False) or NOBODY
        except Unauthorized:
            return NOBODY

    def _check_scope(self, principal: Principal, scope: Scope, params: dict[str, str]) -> None:
        if principal.tags is None or scope in (Scope.NONE, Scope.FILTERED):
            return
        if scope == Scope.GLOBAL:
            raise Forbidden(f"{_who(principal)} sees only some DAGs; this covers every DAG")
        dag_id = params["dag_id"] if scope == Scope.DAG else self.run_dag(params["run_id"])
        tags = self.dag_tags(dag_id)
        if tags is None or not sees(principal, tags):
            raise Forbidden(
                f"{_who(principal)} sees only DAGs tagged {', '.join(sorted(principal.tags))}"
            )


def _who(principal: Principal) -> str:
    return f"'{principal.name}' (role {principal.role})"


def _not_allowed(principal: Principal, permission: Permission) -> str:
    if principal.role is None:
        return f"'{principal.name}' may not use this route"
    return f"{_who(principal)} lacks the '{permission}' permission this needs"


class RefusalBudget:
    """How many refused calls of callers who proved no one (401, 429) one address may add to
    the audit log a minute: a flood of them is counted, not recorded one by one."""

    def __init__(self, per_minute: int = 60, max_tracked: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_tracked = max_tracked  # addresses remembered at most (memory stays bounded)
        self._windows: dict[str, tuple[int, int]] = {}  # address -> (minute, refusals in it)
        self._lock = threading.Lock()

    def spend(self, address: str, now: int) -> int:
        """Count one refusal from `address`: 0 when it may be recorded, else how many this
        minute went unrecorded (1 for the first one over the budget)."""
        minute = now // 60_000
        with self._lock:
            start, count = self._windows.get(address, (minute, 0))
            count = count + 1 if start == minute else 1
            if address not in self._windows and len(self._windows) >= self.max_tracked:
                kept = {a: w for a, w in self._windows.items() if w[0] == minute}
                self._windows = kept if len(kept) < self.max_tracked else {}  # many at once
            self._windows[address] = (minute, count)
        return max(0, count - self.per_minute)
