"""Runs and their tasks in the API: list and read them, kill and retry them, their attempts,
and their logs as text or as a live stream (server-sent events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nagare.access import Permission, Principal, Scope, sees
from nagare.errors import BadRequest, NotFound
from nagare.http.routing import Param, Route
from nagare.http.serialize import (
    attempt_json,
    run_attempt_json,
    run_json,
    task_json,
    tasks_json,
    waiting_json,
)
from nagare.http.server import Request, Response
from nagare.http.sse import LogStream
from nagare.metrics import queued_reason
from nagare.models import WAITING_STEPS, RunStatus, TaskInstance, TaskStatus, Trigger
from nagare.store import RunFilter

if TYPE_CHECKING:
    from nagare.http.api import Services

MAX_PAGE_SIZE = 500
WAITING_TYPES = tuple(sorted(t.value for t in WAITING_STEPS))  # `GET /api/runs?waiting=`
RUN_FILTERS = (
    Param("dag_id", "only runs of this DAG"),
    Param("status", "only runs in this status", enum=tuple(s.value for s in RunStatus)),
    Param("trigger", "only runs started this way", enum=tuple(t.value for t in Trigger)),
    Param(
        "waiting",
        "only runs with a task waiting on a step of this type (approval: someone must answer)",
        enum=WAITING_TYPES,
    ),
    Param("q", "only runs whose id contains this text (case-insensitive)"),
    Param("tag", "only runs of DAGs with this tag (repeatable: any of the tags)"),
    Param("page", "page number, from 1", "integer", minimum=1),
    Param(
        "limit",
        f"runs per page, at most {MAX_PAGE_SIZE}",
        "integer",
        minimum=1,
        maximum=MAX_PAGE_SIZE,
    ),
)
LOG_PARAMS = (
    Param("attempt", "attempt number (default: latest)", "integer", minimum=1),
    Param("tail", "only the last N lines", "integer", minimum=0),
    Param(
        "timestamps",
        "true: prefix each line with when it was written (ISO 8601 UTC, to the second) "
        "and its stream (stdout, stderr, nagare), `-` where unknown",
        enum=("true", "false"),
    ),
    Param("token", "the API key, for EventSource clients"),
)


class RunsApi:
    """The routes of runs and tasks; `still_admitted` tells whether a long answer's caller
    would still be let in (the API's admission)."""

    def __init__(self, services: Services, still_admitted: Callable[[Request], bool]) -> None:
        self.s = services
        self.still_admitted = still_admitted

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/runs",
                self.list_runs,
                "Runs, newest first",
                query=RUN_FILTERS,
                tags=("runs",),
                permission=Permission.READ,
                scope=Scope.FILTERED,
            ),
            Route(
                "GET",
                "/api/runs/{run_id}",
                self.run,
                "One run",
                tags=("runs",),
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "POST",
                "/api/runs/{run_id}/kill",
                self.kill_run,
                "Kill running tasks and cancel the rest",
                tags=("runs",),
                permission=Permission.OPERATE,
                scope=Scope.RUN,
                action="run.kill",
            ),
            Route(
                "POST",
                "/api/runs/{run_id}/retry",
                self.retry_run,
                "Re-queue every failed, upstream_failed and cancelled task of a finished run "
                "(same run, new attempts)",
                tags=("runs",),
                permission=Permission.OPERATE,
                scope=Scope.RUN,
                action="run.retry",
            ),
            Route(
                "GET",
                "/api/runs/{run_id}/tasks",
                self.tasks,
                "Latest attempt of every task instance, in DAG order",
                tags=("tasks",),
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "GET",
                "/api/runs/{run_id}/attempts",
                self.run_attempts,
                "Every attempt of the run's tasks (not of map children), by task, oldest first",
                tags=("tasks",),
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "GET",
                "/api/runs/{run_id}/tasks/{task_id}",
                self.task,
                "One task instance",
                tags=("tasks",),
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "GET",
                "/api/runs/{run_id}/tasks/{task_id}/attempts",
                self.attempts,
                "Every attempt of a task, oldest first",
                tags=("tasks",),
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "GET",
                "/api/runs/{run_id}/tasks/{task_id}/logs",
                self.task_logs,
                "Task log: text, or SSE with Accept: text/event-stream",
                query=LOG_PARAMS,
                response="text/plain",
                query_token=True,
                tags=("tasks",),
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "POST",
                "/api/runs/{run_id}/tasks/{task_id}/kill",
                self.kill_task,
                "Kill one task (a map task with its children)",
                tags=("tasks",),
                permission=Permission.OPERATE,
                scope=Scope.RUN,
                action="task.kill",
            ),
            Route(
                "POST",
                "/api/runs/{run_id}/tasks/{task_id}/retry",
                self.retry_task,
                "Run a finished task again (re-opens its run); downstream=true re-runs its "
                "successful dependants too",
                query=(
                    Param(
                        "downstream",
                        "also re-run its successful dependants",
                        enum=("true", "false"),
                    ),
                ),
                tags=("tasks",),
                permission=Permission.OPERATE,
                scope=Scope.RUN,
                action="task.retry",
            ),
        ]

    # ------------------------------------------------------------ runs

    def list_runs(self, request: Request) -> dict[str, Any]:
        filt = RunFilter(
            dag_id=request.arg("dag_id"),
            status=enum_arg(request, "status", RunStatus),
            trigger=enum_arg(request, "trigger", Trigger),
            waiting=enum_arg(request, "waiting", WAITING_TYPES),
            search=request.arg("q").strip(),
            dag_ids=self._dags_tagged(request.query.get("tag", []), request.principal),
        )
        page = request.int_arg("page", 1, 1, 1_000_000)
        limit = request.int_arg("limit", 50, 1, MAX_PAGE_SIZE)
        runs, total = self.s.store.runs.find(filt, page, limit)
        return {"data": [run_json(r) for r in runs], "total": total, "page": page, "limit": limit}

    def _dags_tagged(self, tags: list[str], principal: Principal) -> tuple[str, ...] | None:
        """The loaded DAGs with any of `tags` that `principal` sees (None: every DAG)."""
        wanted = {t for t in tags if t}
        if not wanted and principal.tags is None:
            return None
        dags = self.s.folder.snapshot.dags.items()
        return tuple(
            sorted(
                i
                for i, dag in dags
                if (not wanted or wanted.intersection(dag.tags)) and sees(principal, dag.tags)
            )
        )

    def run(self, request: Request) -> dict[str, Any]:
        return run_json(self.s.runs.run(request.params["run_id"]))

    def kill_run(self, request: Request) -> dict[str, Any]:
        return run_json(self.s.runs.kill_run(request.params["run_id"]))

    # ------------------------------------------------------------ tasks

    def tasks(self, request: Request) -> list[dict[str, Any]]:
        run_id = request.params["run_id"]
        self.s.runs.run(run_id)
        return self._with_waits(run_id, tasks_json(self.s.store.tasks.of_run(run_id)))

    def task(self, request: Request) -> dict[str, Any]:
        task = self._task(request)
        children = (
            self.s.store.tasks.children(task.run_id, task.task_id)
            if task.map_index is None and not task.outputs
            else None
        )
        return self._with_waits(task.run_id, [task_json(task, children)])[0]

    def _with_waits(self, run_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Waiting tasks get `waiting_for` (what they wait for: the run page's banners); queued
        tasks get `reason` (why they have not started: their pool's workers and load)."""
        if any(item["status"] == TaskStatus.QUEUED for item in items):
            pools = {p.pool: p for p in self.s.pools()}
            for item in items:
                if item["status"] == TaskStatus.QUEUED:
                    item["reason"] = queued_reason(item["pool"], pools.get(item["pool"]))
        if any(item["status"] == TaskStatus.WAITING for item in items):
            waits = self.s.store.tasks.waits_of_run(run_id)
            for item in items:
                if item["id"] in waits:
                    item["waiting_for"] = waiting_json(*waits[item["id"]])
        return items

    def attempts(self, request: Request) -> list[dict[str, Any]]:
        task = self._task(request)
        return [attempt_json(a, task) for a in self.s.store.tasks.attempts(task.id)]

    def run_attempts(self, request: Request) -> list[dict[str, Any]]:
        run_id = request.params["run_id"]
        self.s.runs.run(run_id)
        return [
            run_attempt_json(a, task_id)
            for task_id, a in self.s.store.tasks.attempts_of_run(run_id)
        ]

    def kill_task(self, request: Request) -> dict[str, Any]:
        return task_json(self.s.runs.kill_task(request.params["run_id"], request.params["task_id"]))

    def retry_task(self, request: Request) -> dict[str, Any]:
        downstream = enum_arg(request, "downstream", ("true", "false")) == "true"
        return task_json(
            self.s.runs.retry_task(request.params["run_id"], request.params["task_id"], downstream)
        )

    def retry_run(self, request: Request) -> dict[str, Any]:
        return run_json(self.s.runs.retry_run(request.params["run_id"]))

    def _task(self, request: Request) -> TaskInstance:
        return self.s.runs.task(request.params["run_id"], request.params["task_id"])

    def task_logs(self, request: Request) -> Response:
        task = self._task(request)
        attempt = request.int_arg("attempt", 0, 1, 1_000_000) or None
        if attempt is not None and attempt > task.attempt:
            raise NotFound(
                f"task '{task.task_id}' has no attempt {attempt} (it has {task.attempt})"
            )
        if "text/event-stream" in request.header("accept"):
            return self._log_stream(request, task, attempt)
        return self._log_text(request, task, attempt or task.attempt)

    def _log_text(self, request: Request, task: TaskInstance, attempt: int) -> Response:
        tail = request.int_arg("tail", 0, 0, 1_000_000)
        logs = self.s.logs
        stamps = enum_arg(request, "timestamps", ("true", "false")) == "true"
        if tail:
            last = logs.tail(task.run_id, task.id, attempt, tail)
            start = last[0][0] - 1 if last else 0
        else:
            start = 0
        read = logs.stamped_lines if stamps else logs.lines
        lines = [text for _, text in read(task.run_id, task.id, attempt, start)]
        body = "".join(line + "\n" for line in lines)
        return Response(200, body.encode(), "text/plain; charset=utf-8")

    def _log_stream(self, request: Request, task: TaskInstance, attempt: int | None) -> Response:
        start = _int_header(request.header("last-event-id"))
        tail = request.int_arg("tail", 0, 0, 1_000_000)
        if tail and not start and task.attempt:
            count = self.s.logs.line_count(task.run_id, task.id, attempt or task.attempt)
            start = max(0, count - tail)
        stream = LogStream(
            logs=self.s.logs,
            task=task,
            attempt=attempt,
            start_line=start,
            timestamps=enum_arg(request, "timestamps", ("true", "false")) == "true",
            load_task=lambda: self.s.store.tasks.by_id(task.id),
            ping_seconds=self.s.settings.sse_ping_seconds,
            stopping=self.s.stopping,
            admitted=lambda: self.still_admitted(request),
        )
        return Response(200, content_type="text/event-stream; charset=utf-8", stream=stream)


def enum_arg(
    request: Request, name: str, enum: type[RunStatus] | type[Trigger] | tuple[str, ...]
) -> str:
    raw = request.arg(name)
    if raw in ("", "all"):
        return ""
    allowed = list(enum) if isinstance(enum, tuple) else [e.value for e in enum]
    if raw not in allowed:
        raise BadRequest(
            f"query parameter '{name}' must be one of {', '.join(allowed)}, found '{raw}'"
        )
    return raw


def _int_header(raw: str) -> int:
    try:
        return max(0, int(raw.strip()))
    except ValueError:
        return 0
