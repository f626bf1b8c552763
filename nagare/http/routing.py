"""The route table: one declaration per route gives dispatch, the permission it needs (and so
its authentication), the DAGs it touches, its audit action and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from nagare.access import Permission, Scope
from nagare.errors import BadRequest, MethodNotAllowed, NotFound
from nagare.patterns import ACCOUNT_NAME, API_KEY_ID, NAME, RUN_ID, TASK_INSTANCE_ID, TASK_REF

PARAM_PATTERNS = {
    "dag_id": NAME,
    "run_id": RUN_ID,
    "task_id": TASK_REF,
    "task_instance_id": TASK_INSTANCE_ID,
    "user_name": ACCOUNT_NAME,
    "key_id": API_KEY_ID,
}


ANY = "ANY"  # a route that takes every method (webhooks: each DAG names its own)


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    kind: str = "string"  # string | integer
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    permission: Permission | None = None  # what the caller needs; every route declares one
    query: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None
    body_type: str = "application/json"  # the request body's media type
    response: str = "application/json"
    status: int = 200
    query_token: bool = False  # whether ?token= may carry the API key (log streams only)
    # whether query parameters beyond `query` are let through (another service's redirect back,
    # which adds parameters of its own)
    any_query: bool = False
    tags: tuple[str, ...] = ()
    scope: Scope = Scope.NONE  # which DAGs it touches (for roles limited to some tags)
    action: str = ""  # the audit log's name of what a state-changing route does ("run.kill")
    segments: tuple[str, ...] = field(default=(), compare=False)

    @property
    def auth(self) -> str:
        """How a caller proves itself: open, token (the cluster token), hmac (the DAG's
        webhook signature) or key (an identity: an API key, a session, or none configured)."""
        return _AUTH.get(self.permission, "key") if self.permission else "key"

    @property
    def doc_path(self) -> str:
        """The OpenAPI path template (`{name...}` is documented as `{name}`)."""
        return self.path.replace("...}", "}")

    @property
    def doc_method(self) -> str:
        """The method the OpenAPI document lists (an ANY route as POST)."""
        return "POST" if self.method == ANY else self.method

    @property
    def params(self) -> list[str]:
        return [s[1:-1].removesuffix("...") for s in self.segments if s.startswith("{")]


_AUTH = {Permission.OPEN: "open", Permission.CLUSTER: "token", Permission.WEBHOOK: "hmac"}


class Router:
    def __init__(self, routes: list[Route]) -> None:
        undeclared = [f"{r.method} {r.path}" for r in routes if r.permission is None]
        if undeclared:
            raise ValueError(f"routes without a declared permission: {', '.join(undeclared)}")
        self.routes = [
            Route(**{**r.__dict__, "segments": tuple(r.path.strip("/").split("/"))}) for r in routes
        ]
        # (method, path) -> the route of a path without parameters, once matched (the table
        # never changes): the busiest routes (a worker's polls) skip the scan; bounded by the
        # table's own paths
        self._fixed: dict[tuple[str, tuple[str, ...]], Route] = {}

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        parts = raw_path.strip("/").split("/")
        fixed = self._fixed.get((method, tuple(parts)))
        if fixed is not None:
            return fixed, {}
        route, params = self._scan(method, parts, raw_path)
        if "{" not in route.path:
            self._fixed[(method, route.segments)] = route
        return route, params

    def _scan(self, method: str, parts: list[str], raw_path: str) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            params = _match(route.segments, parts)
            if params is None:
                continue
            if route.method not in (method, ANY):
                allowed.append(route.method)
                continue
            return route, _validate(params)
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed on {unquote(raw_path)} "
                f"(allowed: {', '.join(sorted(set(allowed)))})",
                allow=sorted(set(allowed)),
            )
        raise NotFound(f"no API route {method} {unquote(raw_path)}")

    def path_routes(self, raw_path: str) -> list[Route]:
        """Every route of this path, whatever its method."""
        parts = raw_path.strip("/").split("/")
        return [r for r in self.routes if _match(r.segments, parts) is not None]

    def allowed_methods(self, raw_path: str) -> list[str]:
        parts = raw_path.strip("/").split("/")
        return sorted({r.method for r in self.routes if _match(r.segments, parts) is not None})


def _match(segments: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    if segments and segments[-1].endswith("...}"):  # `{name...}` takes the rest of the path
        head = len(segments) - 1
        if len(parts) <= head or not all(parts[head:]):
            return None
        found = _match(segments[:head], parts[:head])
        if found is not None:
            found[segments[-1][1:-4]] = unquote("/".join(parts[head:]))
        return found
    if len(segments) != len(parts):
        return None
    params: dict[str, str] = {}
    for segment, part in zip(segments, parts, strict=True):
        if segment.startswith("{"):
            if not part:
                return None
            params[segment[1:-1]] = unquote(part)
        elif segment != part:
            return None
    return params


def prefers_html(accept: str) -> bool:
    """Whether an Accept header asks for a web page rather than the Prometheus text: text/html
    (or XHTML) with a weight above 0 and at least that of any text/plain or OpenMetrics."""
    weights: dict[str, float] = {}
    for part in accept.lower().split(","):
        kind, _, params = part.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[kind.strip()] = max(weight, weights.get(kind.strip(), 0.0))
    html = max(weights.get("text/html", 0.0), weights.get("application/xhtml+xml", 0.0))
    text = max(weights.get("text/plain", 0.0), weights.get("application/openmetrics-text", 0.0))
    return html > 0 and html >= text


def _validate(params: dict[str, str]) -> dict[str, str]:
    for name, value in params.items():
        pattern = PARAM_PATTERNS.get(name)
        if pattern is not None and not pattern.fullmatch(value):
            raise BadRequest(f"'{value}' is not a valid {name.replace('_', ' ')}")
    return params


# ---------------------------------------------------------------- OpenAPI


def openapi(routes: list[Route], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.doc_path, {})[route.doc_method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Nagare API",
            "version": version,
            "description": "DAG orchestrator: DAGs, runs, tasks, logs.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "clusterToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the cluster token (--token); without one, the API key",
                },
                "webhookSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Hub-Signature-256",
                    "description": "sha256=<hex HMAC-SHA256 of the raw body with the DAG's "
                    "trigger secret>; the header name is the trigger's signature_header",
                },
            },
            "schemas": {"Error": _ERROR_SCHEMA},
        },
    }


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {  # invalid_params: every bad run parameter
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["param", "message"],
                        "properties": {"param": {"type": "string"}, "message": {"type": "string"}},
                    },
                },
            },
        }
    },
}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": route.summary,
        "operationId": f"{route.method.lower()}_"
        + "_".join(s.strip("{}.") for s in route.segments[1:]).replace(".", "_").replace("-", "_"),
        "parameters": [_path_param(p) for p in route.params]
        + [_query_param(q) for q in route.query],
        "responses": _responses(route),
    }
    if route.tags:
        op["tags"] = list(route.tags)
    if route.permission is not None:
        op["x-permission"] = route.permission.value  # see the README's table of roles
    if route.auth == "key":
        op["security"] = [{"apiKey": []}]
    if route.auth == "hmac":  # only when the DAG's trigger has a secret
        op["security"] = [{"webhookSignature": []}, {}]
    if route.auth == "token":
        op["security"] = [{"clusterToken": []}]
    if route.body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {route.body_type: {"schema": route.body}},
        }
    return op


def _path_param(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    pattern = PARAM_PATTERNS.get(name)
    if pattern is not None:
        schema["pattern"] = pattern.pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_param(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.kind}
    if param.minimum is not None:
        schema["minimum"] = param.minimum
    if param.maximum is not None:
        schema["maximum"] = param.maximum
    if param.enum:
        schema["enum"] = list(param.enum)
    return {
        "name": param.name,
        "in": "query",
        "required": False,
        "description": param.description,
        "schema": schema,
    }


def _responses(route: Route) -> dict[str, Any]:
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    responses: dict[str, Any] = {
        str(route.status): {"description": "success", "content": {route.response: {"schema": {}}}},
        "400": error,
        "404": error,
    }
    if route.auth in ("key", "token"):
        responses["401"] = error
    if route.auth == "key":
        responses["403"] = error  # the caller's role lacks the permission
    if route.auth == "hmac":
        responses["403"] = error
    if route.method in ("POST", ANY):
        responses["409"] = error
        responses["413"] = error
        responses["422"] = error
    return responses
