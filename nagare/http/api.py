"""The JSON API: the route table (dispatch + OpenAPI) and its handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from nagare import __version__
from nagare.access import Permission, Scope, sees
from nagare.clock import now_ms, parse_iso, to_iso
from nagare.dag_folder import DagFolder
from nagare.dagfile.fields import dag_schema
from nagare.errors import BadRequest, NagareError, NotFound, Unprocessable
from nagare.http.auth import Admission, Authenticator, KeyAuthenticator, RefusalBudget
from nagare.http.cors import cors_headers, is_preflight, preflight
from nagare.http.routing import Param, Route, Router, openapi, prefers_html
from nagare.http.runs_api import RunsApi
from nagare.http.serialize import (
    backfill_json,
    dag_json,
    loop_json,
    pool_json,
    run_json,
    validation_json,
)
from nagare.http.server import Request, Response, error_response, json_response
from nagare.http.static import StaticFiles
from nagare.liveness import Health
from nagare.logs import LogFiles
from nagare.metrics import PoolInfo
from nagare.models import (
    Attempt,
    Run,
    TaskInstance,
)
from nagare.runs import RunService
from nagare.store import AuditEntry, DagState, RunFilter, Stats

log = logging.getLogger("nagare.http")

CLI_AGENT = "nagare-client/"  # the User-Agent of the command line's requests (client.py)
CONF_BODY = {
    "type": "object",
    "properties": {
        "params": {
            "type": "object",
            "description": "run parameters as typed JSON values, checked against the DAG's params",
        },
        "conf": {
            "type": "object",
            "description": "run parameters as text (a DAG with params converts them to the "
            "declared types); give params or conf, not both",
        },
    },
}
BACKFILL_BODY = {
    "type": "object",
    "required": ["start", "end"],
    "properties": {
        "start": {"type": "string"},
        "end": {"type": "string"},
        "dry_run": {"type": "boolean"},
    },
}


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class ApiSettings(Protocol):
        """The settings the API reads (`Config` has them)."""

        @property
        def api_key(self) -> str: ...
        @property
        def token(self) -> str: ...
        @property
        def cors_allowed_origins(self) -> tuple[str, ...]: ...
        @property
        def sse_ping_seconds(self) -> float: ...
        @property
        def allow_dag_edits(self) -> bool: ...
        @property
        def auth_mode(self) -> str: ...

    class _ApiDags(Protocol):
        def states(self) -> dict[str, DagState]: ...

    class _ApiRuns(Protocol):
        def find(self, filt: RunFilter, page: int, limit: int) -> tuple[list[Run], int]: ...

        def last_of(self, dag_ids: Iterable[str]) -> dict[str, Run]: ...

        def stats(self, now: int) -> Stats: ...

    class _ApiTasks(Protocol):
        def attempts(self, task_instance_id: str) -> list[Attempt]: ...

        def attempts_of_run(self, run_id: str) -> list[tuple[str, Attempt]]: ...

        def by_id(self, task_instance_id: str) -> TaskInstance | None: ...

        def of_run(self, run_id: str, include_children: bool = True) -> list[TaskInstance]: ...

        def children(self, run_id: str, parent_task_id: str) -> list[TaskInstance]: ...

        def waits_of_run(self, run_id: str) -> dict[str, tuple[dict[str, Any], int | None]]: ...

    class ApiStore(Protocol):
        """The parts of the store the API routes read, and what of them."""

        @property
        def dags(self) -> _ApiDags: ...

        @property
        def runs(self) -> _ApiRuns: ...

        @property
        def tasks(self) -> _ApiTasks: ...


@dataclass
class Services:
    store: ApiStore
    runs: RunService
    folder: DagFolder
    logs: LogFiles
    settings: ApiSettings
    pools: Callable[[], list[PoolInfo]]
    stopping: threading.Event
    health: Callable[[], Health] = lambda: Health(True, {})  # how the background loops are
    authenticator: Authenticator | None = None  # who a request is (default: the API key)
    audit: Callable[[AuditEntry], None] = lambda entry: None  # records a state change
    master: Callable[[], dict[str, Any]] = dict  # this master: {id, leader} (see /api/masters)
    # DAG id -> the live masters whose definition of it differs from the others'
    digest_mismatch: Callable[[], dict[str, list[str]]] = dict


class Api:
    """Callable HTTP application: `/api/*` routes, else the embedded UI."""

    def __init__(self, services: Services, static: StaticFiles | None) -> None:
        self.s = services
        self.static = static
        self.runs_api = RunsApi(services, self._still_admitted)
        self.routes = self._routes()
        self.router = Router(self.routes)
        self._openapi: dict[str, Any] | None = None
        settings = services.settings
        self.admission = Admission(
            services.authenticator or KeyAuthenticator(settings.api_key),
            lambda: (settings.token, settings.api_key),
            self._dag_tags,
            lambda run_id: self.s.runs.run(run_id).dag_id,
            cluster_open=settings.auth_mode == "key",
        )
        self.refusals = RefusalBudget()  # refused callers' entries in the audit log

    _pages: frozenset[str] = frozenset()  # non-/api paths that are routes too (/metrics)

    def __call__(self, request: Request) -> Response:
        if not self._routed(request):
            return self._static(request)
        settings = self.s.settings
        auth_on = bool(settings.api_key) or settings.auth_mode != "key"
        cors = cors_headers(request, settings.cors_allowed_origins, auth_on)
        if is_preflight(request):  # before auth: browsers send no credentials on a preflight
            return preflight(cors)
        try:
            response = self._dispatch(request)
        except NagareError as err:
            response = error_response(err)
        response.headers.update(cors)
        return response

    def _dispatch(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        try:
            route, params = self.router.match(method, request.path)
        except NagareError as err:
            self._admit_unrouted(request)
            allowed = self.router.allowed_methods(request.path)
            if request.method == "OPTIONS" and allowed:
                return Response(204, headers={"Allow": ", ".join(allowed)})
            raise err
        request.params = params
        if route.action:
            return self._audited(request, route)
        return self._call(request, route)

    def _call(self, request: Request, route: Route) -> Response:
        request.principal = self.admission.admit(request, route)
        if route.auth != "hmac" and not route.any_query:  # webhook senders add their own
            _check_query(route, request)
        result = route.handler(request)
        if isinstance(result, Response):
            return result
        return json_response(result, route.status)

    def _audited(self, request: Request, route: Route) -> Response:
        """A state-changing route: its outcome (ok, or the error's code: refused ones too) goes
        to the audit log with who asked, from where, and on what."""
        try:
            response = self._call(request, route)
        except NagareError as err:
            self._record(request, route, err.code)
            raise
        failed = request.audit.get("outcome") or str(response.status)  # a handler's own page
        self._record(request, route, "ok" if response.status < 400 else failed)
        return response

    def _record(self, request: Request, route: Route, outcome: str) -> None:
        if _unproven(request, route, outcome) and self._floods(request):
            return
        if request.header("user-agent").startswith(CLI_AGENT):
            request.note(via="cli")
        note = request.audit
        entry = AuditEntry(
            at=now_ms(),
            actor=note.get("actor") or request.principal.name,
            action=route.action,
            target=note.get("target") or audit_target(request.params),
            address=request.address,
            outcome=outcome,
            detail=note.get("detail", ""),
        )
        try:
            self.s.audit(entry)
        except Exception:  # the action happened: a failed record must not undo its answer
            log.exception("could not record %s by %s in the audit log", entry.action, entry.actor)

    def _floods(self, request: Request) -> bool:
        """Whether this refusal goes over its address's budget (the first one over it is
        logged, so that an operator hears of the flood)."""
        over = self.refusals.spend(request.address, now_ms())
        if over == 1:
            log.warning(
                "more than %d refused calls from %s this minute: the audit log records no more "
                "of them until the next minute",
                self.refusals.per_minute,
                request.address,
            )
        return over > 0

    def _admit_unrouted(self, request: Request) -> None:
        """Before saying which paths and methods exist (404, 405), the caller proves an identity
        unless every route of the path is open to it (a webhook's, the cluster protocol's), so
        a wrong method or an unknown path answers 401 without credentials, never 405 or 404."""
        routes = self.router.path_routes(request.path)
        if routes and all(r.auth == "open" or r.auth == "hmac" for r in routes):
            return
        if routes and all(r.auth == "token" for r in routes):
            self.admission.admit(request, routes[0])
            return
        self.admission.identified(request)

    def _dag_tags(self, dag_id: str) -> tuple[str, ...] | None:
        dag = self.s.folder.snapshot.dags.get(dag_id)
        return None if dag is None else tuple(dag.tags)

    def _routed(self, request: Request) -> bool:
        """`/api/*`, and page paths that are also routes (`/metrics`) unless a browser asks for
        the page (`Accept: text/html`): then the dashboard answers."""
        if request.path.startswith("/api/") or request.path == "/api":
            return True
        return request.path in self._pages and not prefers_html(request.header("accept"))

    def _static(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return error_response(NotFound(f"no route {request.method} {request.path}"))
        if self.static is None:
            raise NotFound("the web UI is not bundled")
        return self.static.serve(request)

    # ------------------------------------------------------------ route table

    def _routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/health",
                self.health,
                "Liveness: 200 when every background loop makes progress, else 503 naming "
                "the loops that failed, stalled or stopped",
                tags=("system",),
                permission=Permission.OPEN,
            ),
            Route(
                "GET",
                "/api/openapi.json",
                self.openapi,
                "This OpenAPI document",
                tags=("system",),
                permission=Permission.OPEN,
            ),
            Route(
                "GET",
                "/api/schema/dag.json",
                self.schema,
                "JSON Schema of a DAG file (for editors: yaml-language-server $schema)",
                tags=("system",),
                permission=Permission.OPEN,
            ),
            Route(
                "GET",
                "/api/stats",
                self.stats,
                "Run and DAG counters",
                tags=("system",),
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "GET",
                "/api/pools",
                self.pools,
                "Worker pools and their load",
                tags=("system",),
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "GET",
                "/api/dags",
                self.dags,
                "Every loaded DAG, sorted by id",
                query=(
                    Param(
                        "tag",
                        "only DAGs with this tag (repeatable: DAGs with any of the tags)",
                    ),
                ),
                tags=("dags",),
                permission=Permission.READ,
                scope=Scope.FILTERED,
            ),
            Route(
                "GET",
                "/api/dags/errors",
                self.dag_errors,
                "Load errors by file",
                tags=("dags",),
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "POST",
                "/api/dags/validate",
                self.validate_dag,
                "Check a DAG file's YAML text (the body) and list every problem; loads nothing",
                body={"type": "string", "description": "the YAML text of a DAG file"},
                body_type="text/yaml",
                tags=("dags",),
                permission=Permission.READ,
            ),
            Route(
                "GET",
                "/api/dags/{dag_id}",
                self.dag,
                "One DAG",
                tags=("dags",),
                permission=Permission.READ,
                scope=Scope.DAG,
            ),
            Route(
                "GET",
                "/api/dags/{dag_id}/yaml",
                self.dag_yaml,
                "The DAG file as written",
                response="text/yaml",
                tags=("dags",),
                permission=Permission.SOURCE,
                scope=Scope.DAG,
            ),
            Route(
                "POST",
                "/api/dags/{dag_id}/runs",
                self.trigger,
                "Start a manual run",
                body=CONF_BODY,
                status=201,
                tags=("dags",),
                permission=Permission.OPERATE,
                scope=Scope.DAG,
                action="dag.trigger",
            ),
            Route(
                "POST",
                "/api/dags/{dag_id}/pause",
                self.pause,
                "Stop scheduling the DAG",
                tags=("dags",),
                permission=Permission.OPERATE,
                scope=Scope.DAG,
                action="dag.pause",
            ),
            Route(
                "POST",
                "/api/dags/{dag_id}/activate",
                self.activate,
                "Resume scheduling from the next slot",
                tags=("dags",),
                permission=Permission.OPERATE,
                scope=Scope.DAG,
                action="dag.activate",
            ),
            Route(
                "POST",
                "/api/dags/{dag_id}/backfill",
                self.backfill,
                "Create runs for every slot in a time range; with dry_run, only list the slots "
                "(200) and how max_active_runs will start them",
                body=BACKFILL_BODY,
                status=201,
                tags=("dags",),
                permission=Permission.OPERATE,
                scope=Scope.DAG,
                action="dag.backfill",
            ),
            *self.runs_api.routes(),
        ]

    def add_routes(self, routes: list[Route]) -> None:
        """Later features (metrics, webhooks, cluster) register their routes here."""
        self.routes.extend(routes)
        self.router = Router(self.routes)
        self._openapi = None
        self._pages = frozenset(r.path for r in self.routes if not r.path.startswith("/api/"))

    # ------------------------------------------------------------ system

    def health(self, request: Request) -> Response:
        health = self.s.health()
        body = {
            "status": "ok" if health.ok else "degraded",
            "version": __version__,
            "components": {name: loop_json(loop) for name, loop in health.loops.items()},
        }
        master = self.s.master()
        if master:
            body["master"] = master
        return json_response(body, 200 if health.ok else 503)

    def openapi(self, request: Request) -> dict[str, Any]:
        if self._openapi is None:
            self._openapi = openapi(self.router.routes, __version__)
        return self._openapi

    def schema(self, request: Request) -> dict[str, Any]:
        return dag_schema()

    def stats(self, request: Request) -> dict[str, Any]:
        stats = self.s.store.runs.stats(now_ms())
        snapshot = self.s.folder.snapshot
        return {
            "active_runs": stats.active_runs,
            "failed_runs_24h": stats.failed_runs_24h,
            "total_runs": stats.total_runs,
            "loaded_dags": len(snapshot.dags),
            "dag_errors": len(snapshot.errors),
            "queued_tasks": stats.queued_tasks,
            "running_tasks": stats.running_tasks,
            "dag_edits": self.s.settings.allow_dag_edits,  # whether the UI offers the editor
        }

    def pools(self, request: Request) -> list[dict[str, Any]]:
        return [pool_json(p) for p in self.s.pools()]

    # ------------------------------------------------------------ DAGs

    def dags(self, request: Request) -> list[dict[str, Any]]:
        snapshot = self.s.folder.snapshot
        wanted = set(request.query.get("tag", []))
        dags = {
            i: dag
            for i, dag in snapshot.dags.items()
            if (not wanted or wanted.intersection(dag.tags)) and sees(request.principal, dag.tags)
        }
        states = self.s.store.dags.states()
        last = self.s.store.runs.last_of(dags)
        mismatch = self.s.digest_mismatch()
        now = now_ms()
        return [
            dag_json(
                dag,
                states[i].paused if i in states else False,
                last.get(i),
                now,
                snapshot.files.get(i, ""),
            )
            | {"digest_mismatch": mismatch.get(i, [])}
            for i, dag in sorted(dags.items())
        ]

    def validate_dag(self, request: Request) -> dict[str, Any]:
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the body is not UTF-8 text (byte offset {exc.start})") from None
        return validation_json(self.s.folder.check_text(text))

    def dag_errors(self, request: Request) -> dict[str, list[str]]:
        return self.s.folder.snapshot.errors

    def dag(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        dag = self.s.runs.dag(dag_id)
        state = self.s.store.dags.states().get(dag_id)
        last = self.s.store.runs.last_of([dag_id]).get(dag_id)
        return dag_json(
            dag,
            bool(state and state.paused),
            last,
            now_ms(),
            self.s.folder.snapshot.files.get(dag_id, ""),
        )

    def dag_yaml(self, request: Request) -> Response:
        dag_id = request.params["dag_id"]
        self.s.runs.dag(dag_id)
        text = self.s.folder.source(dag_id)
        if text is None:
            raise NotFound(f"the file of DAG '{dag_id}' cannot be read")
        return Response(200, text.encode(), "text/yaml; charset=utf-8")

    def trigger(self, request: Request) -> dict[str, Any]:
        body = request.json()
        if body is not None and not isinstance(body, dict):
            raise BadRequest('expected a JSON object such as {"params": {"KEY": "value"}}')
        unknown = set(body or {}) - {"conf", "params"}
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(sorted(unknown))} (expected 'params' or 'conf')"
            )
        body = body or {}
        run = self.s.runs.trigger(
            request.params["dag_id"], body.get("conf"), params=body.get("params")
        )
        request.note(run_id=run.run_id)  # never the params or conf: they may hold secrets
        return run_json(run)

    def pause(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        return {"dag_id": dag_id, "paused": self.s.runs.set_paused(dag_id, True)}

    def activate(self, request: Request) -> dict[str, Any]:
        dag_id = request.params["dag_id"]
        return {"dag_id": dag_id, "paused": self.s.runs.set_paused(dag_id, False)}

    def backfill(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or "start" not in body or "end" not in body:
            raise BadRequest(
                'expected {"start": ISO-8601, "end": ISO-8601} (and optionally "dry_run": true)'
            )
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest("dry_run: expected true or false")
        try:
            start, end = parse_iso(str(body["start"])), parse_iso(str(body["end"]))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        result = self.s.runs.backfill(request.params["dag_id"], start, end, dry_run)
        request.note(start=to_iso(start), end=to_iso(end), runs=len(result.created))
        if dry_run:
            request.note(dry_run="true")
        return json_response(backfill_json(result), 200 if dry_run else 201)

    def _still_admitted(self, request: Request) -> bool:
        """Whether a long answer's caller would still be let in (a stream outlives its checks:
        a sign-out, a revoked key or a lost role must end it)."""
        try:
            route, _ = self.router.match("GET", request.path)
            self.admission.admit(request, route)
        except NagareError:
            return False
        return True


def _unproven(request: Request, route: Route, outcome: str) -> bool:
    """Whether an audit entry comes from a caller who proved no one (no role: no credentials,
    a failed sign-in, a webhook's bad signature) and did nothing (refused, or only the start
    of a single sign-on): such entries spend the address's budget."""
    if request.principal.role is not None:
        return False
    return outcome != "ok" or route.action == "auth.sso_start"


def audit_target(params: dict[str, str]) -> str:
    """What an action was on, from its path: `task:RUN/TASK`, `run:RUN`, `dag:DAG`, or the
    kind and value of its one parameter (`file:x.yaml`, `user:alice`)."""
    if "task_id" in params:
        return f"task:{params.get('run_id', '')}/{params['task_id']}"
    if "run_id" in params:
        return f"run:{params['run_id']}"
    if "dag_id" in params:
        return f"dag:{params['dag_id']}"
    for name, value in params.items():
        return f"{_TARGET_KINDS.get(name, name)}:{value}"
    return ""


_TARGET_KINDS = {"webhook_path": "webhook", "name": "event", "user_name": "user", "key_id": "key"}


def _check_query(route: Route, request: Request) -> None:
    known = {p.name for p in route.query}
    unknown = sorted(set(request.query) - known)
    if unknown:
        expected = ", ".join(sorted(known)) if known else "none"
        raise Unprocessable(
            f"unknown query parameter(s) {', '.join(unknown)} for "
            f"{route.method} {route.path} (expected: {expected})"
        )
