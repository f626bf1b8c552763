"""Metrics routes: `/api/metrics/*` (JSON) and `/metrics` (Prometheus text), registered in the
API's route table by `app` (so they dispatch, need the API key and appear in the OpenAPI
document like every other route)."""

from __future__ import annotations

from typing import Any

from nagare.access import Permission, Scope
from nagare.errors import BadRequest
from nagare.http.routing import Param, Route
from nagare.http.serialize import (
    dag_metrics_json,
    overview_json,
    point_json,
    series_json,
    task_metrics_json,
)
from nagare.http.server import Request, Response
from nagare.metrics import BUCKETS_MS, DEFAULT_LIMIT, MAX_LIMIT, SINCE_PRESETS, MetricsService
from nagare.prometheus import CONTENT_TYPE

SINCE = Param(
    "since",
    f"window: {', '.join(SINCE_PRESETS)} or any <n>m, <n>h, <n>d (default 24h; 400 otherwise)",
)
LIMIT = Param(
    "limit",
    f"newest N points (or buckets), returned oldest first (default {DEFAULT_LIMIT})",
    "integer",
    minimum=1,
    maximum=MAX_LIMIT,
)
BUCKET = Param(
    "bucket",
    "aggregate the points into time buckets of this size (aligned to UTC)",
    enum=tuple(BUCKETS_MS),
)
DAG_FILTER = Param("dag_id", "only this DAG (its attempts, and its runs in the overview)")


class MetricsApi:
    def __init__(self, metrics: MetricsService) -> None:
        self.metrics = metrics

    def routes(self) -> list[Route]:
        tags = ("metrics",)
        return [
            Route(
                "GET",
                "/api/metrics/overview",
                self.overview,
                "Totals, per-DAG stats (attempts and runs) and the slowest tasks of a time window",
                query=(SINCE, DAG_FILTER),
                tags=tags,
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "GET",
                "/api/metrics/timeseries",
                self.timeseries,
                "Per-attempt (or bucketed) metrics of a time window",
                query=(SINCE, DAG_FILTER, LIMIT, BUCKET),
                tags=tags,
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "GET",
                "/api/metrics/tasks/{task_instance_id}",
                self.task,
                "Metrics of one task instance (its opaque id) and of each of its attempts",
                tags=tags,
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
            Route(
                "GET",
                "/api/metrics/runs/{run_id}",
                self.run,
                "Metrics of every finished attempt of a run",
                tags=tags,
                permission=Permission.READ,
                scope=Scope.RUN,
            ),
            Route(
                "GET",
                "/api/metrics/dags/{dag_id}",
                self.dag,
                "Aggregate (with p50/p95) and time series of one DAG",
                query=(SINCE, LIMIT, BUCKET),
                tags=tags,
                permission=Permission.READ,
                scope=Scope.DAG,
            ),
            Route(
                "GET",
                "/metrics",
                self.prometheus,
                "Prometheus text exposition 0.0.4 (a browser asking for HTML gets the dashboard)",
                response="text/plain",
                tags=tags,
                permission=Permission.READ,
                scope=Scope.GLOBAL,
            ),
        ]

    def overview(self, request: Request) -> dict[str, Any]:
        return overview_json(self.metrics.overview(request.arg("since"), request.arg("dag_id")))

    def timeseries(self, request: Request) -> list[dict[str, Any]]:
        series = self.metrics.timeseries(
            request.arg("since"), request.arg("dag_id"), _limit(request), request.arg("bucket")
        )
        return series_json(series)

    def task(self, request: Request) -> dict[str, Any]:
        return task_metrics_json(self.metrics.task(request.params["task_instance_id"]))

    def run(self, request: Request) -> list[dict[str, Any]]:
        return [point_json(p) for p in self.metrics.run(request.params["run_id"])]

    def dag(self, request: Request) -> dict[str, Any]:
        metrics = self.metrics.dag(
            request.params["dag_id"], request.arg("since"), _limit(request), request.arg("bucket")
        )
        return dag_metrics_json(metrics)

    def prometheus(self, request: Request) -> Response:
        return Response(200, self.metrics.prometheus().encode(), CONTENT_TYPE)


def _limit(request: Request) -> int:
    raw = request.arg("limit")
    if raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, found '{raw}'")
    return int(raw)
