"""Metrics: time windows compared as real timestamps, buckets, newest-N ordering, percentiles and
success rate (service over a real SQLite file with rows planted at known times), metrics of real
tasks (memory of a forked child, CPU of a busy loop), the Prometheus exposition parsed with
prometheus_client, and what /metrics answers to scrapers and to browsers."""

from __future__ import annotations

import random
import statistics
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, http, wait_for
from planting import (
    DAY,
    HOUR,
    MINUTE,
    Attempt,
    plant_run,
    rebuild_rollup,
    undo_migration_11,
    undo_migration_13,
)
from prometheus_client.parser import text_string_to_metric_families

from nagare.clock import parse_iso, to_iso
from nagare.dag_folder import DagFolder
from nagare.errors import BadRequest, NotFound
from nagare.http.serialize import (
    dag_metrics_json,
    overview_json,
    point_json,
    series_json,
    task_metrics_json,
)
from nagare.metrics import LiveState, MetricsService, parse_bucket, parse_span
from nagare.prometheus import Family, render
from nagare.store import MetricPoint, Store
from nagare.store.metrics import SLOWEST_SORT_LIMIT, run_outcomes_query
from nagare.store.schema import MIGRATIONS

NOW = parse_iso("2026-11-21T10:37:12.345Z")  # deliberately not on an hour
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def service(store: Store, tmp_path: Path) -> MetricsService:
    (tmp_path / "dags").mkdir(exist_ok=True)
    return MetricsService(store, DagFolder(str(tmp_path / "dags")), LiveState, clock=lambda: NOW)


def points_json(points: list[MetricPoint]) -> list[dict[str, Any]]:
    return [point_json(p) for p in points]


def plant_at(store: Store, times: list[int], dag_id: str = "d", **fields: Any) -> None:
    """One finished run per time, with one attempt finished at that time."""
    for number, at in enumerate(times):
        plant_run(store, dag_id, at - 1000, [Attempt(f"t{number % 3}", at, **fields)])


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1h", HOUR),
        ("6h", 6 * HOUR),
        ("24h", DAY),
        ("7d", 7 * DAY),
        ("30d", 30 * DAY),
        ("90m", 90 * MINUTE),
        ("2d", 2 * DAY),
        ("3650d", 3650 * DAY),
    ],
)
def test_since_accepts_presets_and_any_minutes_hours_or_days(text: str, ms: int) -> None:
    assert parse_span(text) == ms


@pytest.mark.parametrize(
    "text", ["", "abc", "1w", "0h", "-1h", "1.5h", "1h30m", "24", "h", "3651d", "1 h", "१h"]
)
def test_since_rejects_garbage_instead_of_defaulting(text: str) -> None:
    with pytest.raises(BadRequest, match="since must be"):
        parse_span(text)


def test_bucket_sizes() -> None:
    assert parse_bucket("") == 0
    assert [parse_bucket(b) for b in ("1m", "5m", "15m", "1h", "6h", "1d")] == [
        MINUTE,
        5 * MINUTE,
        15 * MINUTE,
        HOUR,
        6 * HOUR,
        DAY,
    ]
    with pytest.raises(BadRequest, match="bucket must be one of 1m, 5m, 15m, 1h, 6h, 1d"):
        parse_bucket("7m")


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize("since", ["1h", "6h", "24h", "7d", "30d", "90m"])
def test_window_boundaries_compare_real_timestamps(
    store: Store, service: MetricsService, since: str
) -> None:
    times = []
    for span in (HOUR, 90 * MINUTE, 6 * HOUR, DAY, 7 * DAY, 30 * DAY):
        times += [NOW - span - 1, NOW - span, NOW - span + 1]
    times += [NOW, NOW - 1, NOW - 30 * MINUTE]
    plant_at(store, times)
    start = NOW - parse_span(since)
    overview = overview_json(service.overview(since))
    assert overview["since"] == to_iso(start)
    assert overview["until"] == to_iso(NOW)
    assert overview["total_tasks"] == sum(1 for t in times if t >= start)


def test_a_window_starting_inside_an_hour_is_exact_on_both_sides_of_the_hour(
    store: Store, service: MetricsService
) -> None:
    at = parse_iso
    inside = [
        at("2026-11-21T09:37:12.345Z"),  # exactly the start of a 1h window at NOW
        at("2026-11-21T09:59:59.999Z"),  # the partial first hour (attempt rows)
        at("2026-11-21T10:00:00.000Z"),  # whole hours (the roll-up)
        at("2026-11-21T10:37:12.345Z"),
    ]
    outside = [at("2026-11-21T09:37:12.344Z"), at("2026-11-21T09:00:00.000Z")]
    plant_at(store, inside + outside)
    assert overview_json(service.overview("1h"))["total_tasks"] == 4
    assert overview_json(service.overview("6h"))["total_tasks"] == 6


def test_recent_windows_are_not_empty_over_http(nagare: Nagare) -> None:
    """Upstream compared timestamps as strings: its 1h and 6h windows were always empty."""
    nagare.write_dag("a.yaml", "id: a\ntasks:\n  - id: t\n    command: 'true'\n")
    wait_for(lambda: nagare.call("GET", "/api/dags/a").status == 200)
    nagare.wait_run(nagare.trigger("a"))
    for since in ("1h", "6h", "24h", "7d", "30d", "5m"):
        overview = nagare.get(f"/api/metrics/overview?since={since}")
        assert overview["total_tasks"] == 1, since
        assert overview["dag_stats"][0]["dag_id"] == "a"
        assert overview["slowest_tasks"][0]["task_id"] == "t"


# ---------------------------------------------------------------- buckets and newest N


def random_history(store: Store, count: int = 400) -> list[tuple[str, Attempt]]:
    rng = random.Random(7)
    planted = []
    for _ in range(count):
        dag_id = rng.choice(["alpha", "beta", "gamma"])
        attempt = Attempt(
            "t",
            NOW - rng.randrange(0, 3 * DAY),
            duration_ms=rng.randrange(0, 5000),
            status=rng.choice(["success", "success", "success", "failed", "cancelled"]),
            memory=rng.randrange(0, 10**9),
            cpu_user_ms=rng.randrange(0, 3000),
            cpu_system_ms=rng.randrange(0, 300),
        )
        plant_run(store, dag_id, attempt.completed_at - 5000, [attempt])  # type: ignore[operator]
        planted.append((dag_id, attempt))
    return planted


def expected_buckets(
    rows: list[tuple[str, Attempt]], start: int, bucket: int
) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for _, a in rows:
        assert a.completed_at is not None
        if a.completed_at < start:
            continue
        b = out.setdefault(
            a.completed_at // bucket * bucket,
            {"count": 0, "success": 0, "failed": 0, "cancelled": 0, "max": 0, "mem": 0, "cpu": 0},
        )
        b["count"] += 1
        b[a.status] += 1
        b["max"] = max(b["max"], a.duration_ms)
        b["mem"] = max(b["mem"], a.memory)
        b["cpu"] += a.cpu_user_ms + a.cpu_system_ms
    return out


@pytest.mark.parametrize("bucket", ["1m", "5m", "15m", "1h", "6h", "1d"])
@pytest.mark.parametrize("since", ["90m", "6h", "2d", "3d"])
def test_buckets_add_up_to_the_attempt_rows(
    store: Store, service: MetricsService, since: str, bucket: str
) -> None:
    rows = random_history(store)
    size = parse_bucket(bucket)
    start = NOW - parse_span(since)
    points = series_json(service.timeseries(since, "", 10_000, bucket))
    expected = expected_buckets(rows, start, size)
    assert [parse_iso(p["timestamp"]) for p in points] == sorted(expected)
    for point in points:
        want = expected[parse_iso(point["timestamp"])]
        assert point["count"] == want["count"]
        assert (point["success"], point["failed"], point["cancelled"]) == (
            want["success"],
            want["failed"],
            want["cancelled"],
        )
        assert point["max_duration_ms"] == want["max"]
        assert point["memory_bytes"] == want["mem"]
        assert point["total_cpu_ms"] == want["cpu"]


@pytest.mark.parametrize("since", ["1h", "90m", "6h", "24h", "2d", "3d"])
def test_overview_and_dag_stats_match_the_attempt_rows(
    store: Store, service: MetricsService, since: str
) -> None:
    rows = random_history(store)
    start = NOW - parse_span(since)
    inside = [(d, a) for d, a in rows if a.completed_at is not None and a.completed_at >= start]
    overview = overview_json(service.overview(since))
    assert overview["total_tasks"] == len(inside)
    assert overview["total_cpu_ms"] == sum(a.cpu_user_ms + a.cpu_system_ms for _, a in inside)
    assert overview["max_memory_bytes"] == max(a.memory for _, a in inside)
    durations = sorted((a.duration_ms for _, a in inside), reverse=True)
    assert [t["duration_ms"] for t in overview["slowest_tasks"]] == durations[:10]
    counts = {s["dag_id"]: s["count"] for s in overview["dag_stats"]}
    assert counts == {d: sum(1 for x, _ in inside if x == d) for d in {d for d, _ in inside}}
    assert [s["count"] for s in overview["dag_stats"]] == sorted(counts.values(), reverse=True)


def test_bucketing_keeps_a_30_day_chart_to_a_few_hundred_points(
    store: Store, service: MetricsService
) -> None:
    plant_at(store, [NOW - i * 10 * MINUTE for i in range(30 * 24 * 6)])  # every 10 minutes
    raw = series_json(service.timeseries("30d", "", 10_000, ""))
    assert len(raw) == 4320
    hourly = series_json(service.timeseries("30d", "", 10_000, "1h"))
    assert 720 <= len(hourly) <= 721
    assert sum(p["count"] for p in hourly) == 4320
    daily = series_json(service.timeseries("30d", "", 500, "1d"))
    assert len(daily) == 31
    newest = series_json(service.timeseries("30d", "", 100, "1h"))
    assert len(newest) == 100
    assert newest[-1]["timestamp"] == "2026-11-21T10:00:00.000Z"
    assert newest == hourly[-100:] or newest[1:] == hourly[-99:]  # first bucket may be cut


def test_time_series_returns_the_newest_points_oldest_first(
    store: Store, service: MetricsService
) -> None:
    times = [NOW - i * MINUTE for i in range(20)]
    plant_at(store, times)
    points = series_json(service.timeseries("1h", "", 5, ""))
    assert [parse_iso(p["timestamp"]) for p in points] == sorted(times)[-5:]
    buckets = series_json(service.timeseries("1h", "", 3, "1m"))
    stamps = [parse_iso(p["timestamp"]) for p in buckets]
    assert stamps == [NOW // MINUTE * MINUTE - i * MINUTE for i in (2, 1, 0)]
    assert all(p["count"] == 1 for p in buckets)


def test_time_series_filters_by_dag(store: Store, service: MetricsService) -> None:
    plant_at(store, [NOW - MINUTE, NOW - 2 * MINUTE], dag_id="one")
    plant_at(store, [NOW - 3 * MINUTE], dag_id="two")
    assert {p["dag_id"] for p in series_json(service.timeseries("1h", "two", 500, ""))} == {"two"}
    assert series_json(service.timeseries("1h", "one", 500, "1h"))[0]["count"] == 2
    assert series_json(service.timeseries("1h", "missing", 500, "")) == []


# ---------------------------------------------------------------- percentiles and success rate


def test_percentiles_interpolate_between_the_nearest_ranks(
    store: Store, service: MetricsService
) -> None:
    durations = list(range(1, 21))
    random.Random(3).shuffle(durations)
    for number, duration in enumerate(durations):
        plant_at(store, [NOW - number * MINUTE], dag_id="p", duration_ms=duration)
    plant_at(store, [NOW - MINUTE], dag_id="one", duration_ms=42)
    plant_at(store, [NOW - 2 * DAY], dag_id="old", duration_ms=42)
    aggregate = dag_metrics_json(service.dag("p", "1h", 500, ""))["aggregate"]
    assert (aggregate["p50_duration_ms"], aggregate["p95_duration_ms"]) == (10.5, 19.05)
    assert aggregate["max_duration_ms"] == 20
    assert aggregate["avg_duration_ms"] == 10.5
    one = dag_metrics_json(service.dag("one", "1h", 500, ""))["aggregate"]
    assert (one["p50_duration_ms"], one["p95_duration_ms"]) == (42, 42)
    empty = dag_metrics_json(service.dag("old", "1h", 500, ""))["aggregate"]
    assert (empty["task_count"], empty["p50_duration_ms"], empty["success_rate"]) == (0, None, None)


def test_percentiles_agree_with_the_statistics_module(
    store: Store, service: MetricsService
) -> None:
    rng = random.Random(11)
    durations = [rng.randrange(0, 100_000) for _ in range(137)]
    for number, duration in enumerate(durations):
        plant_at(store, [NOW - number * MINUTE], dag_id="r", duration_ms=duration)
    aggregate = dag_metrics_json(service.dag("r", "7d", 500, ""))["aggregate"]
    cuts = statistics.quantiles(durations, n=100, method="inclusive")
    assert aggregate["p50_duration_ms"] == pytest.approx(statistics.median(durations))
    assert aggregate["p95_duration_ms"] == pytest.approx(cuts[94])
    assert aggregate["run_count"] == 137
    assert aggregate["task_count"] == 137


def test_success_rate_counts_outcomes_not_exit_codes(store: Store, service: MetricsService) -> None:
    plant_run(
        store,
        "s",
        NOW - HOUR,
        [
            Attempt("ok", NOW - 10, status="success", exit_code=0),
            Attempt("broken_start", NOW - 9, status="failed", exit_code=0),  # executor error
            Attempt("bad", NOW - 8, status="failed", exit_code=1),
            Attempt("killed", NOW - 7, status="cancelled", exit_code=143),
        ],
        status="failed",
    )
    overview = overview_json(service.overview("1h"))
    assert (overview["success"], overview["failed"], overview["cancelled"]) == (1, 2, 1)
    assert overview["success_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert overview["dag_stats"][0]["success_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert dag_metrics_json(service.dag("s", "1h", 10, ""))["aggregate"][
        "success_rate"
    ] == pytest.approx(1 / 3, abs=1e-6)


def test_an_empty_window_has_no_success_rate(service: MetricsService) -> None:
    overview = overview_json(service.overview("1h"))
    assert overview["total_tasks"] == 0
    assert overview["success_rate"] is None
    assert overview["dag_stats"] == [] and overview["slowest_tasks"] == []
    assert series_json(service.timeseries("1h", "", 10, "")) == []
    assert series_json(service.timeseries("1h", "", 10, "5m")) == []


def test_running_attempts_are_not_metrics(store: Store, service: MetricsService) -> None:
    plant_run(store, "r", NOW - MINUTE, [Attempt("t", None)], status="running")
    assert overview_json(service.overview("1h"))["total_tasks"] == 0
    assert series_json(service.timeseries("1h", "", 10, "")) == []


def test_the_incremental_roll_up_equals_a_rebuild(store: Store, service: MetricsService) -> None:
    random_history(store, 200)
    before = [series_json(service.timeseries(s, "", 10_000, "1h")) for s in ("6h", "3d")]
    rebuild_rollup(store)
    assert [series_json(service.timeseries(s, "", 10_000, "1h")) for s in ("6h", "3d")] == before


def test_task_run_and_dag_metrics(store: Store, service: MetricsService) -> None:
    run_id, ids = plant_run(
        store,
        "d",
        NOW - HOUR,
        [
            Attempt("a", NOW - 30 * MINUTE, status="failed", exit_code=1, attempt=1),
            Attempt("a", NOW - 20 * MINUTE, attempt=2, duration_ms=77),
            Attempt("b", NOW - 10 * MINUTE),
        ],
    )
    task = task_metrics_json(service.task(ids["a"]))
    assert (task["task_instance_id"], task["run_id"], task["dag_id"]) == (ids["a"], run_id, "d")
    assert (task["attempt"], task["status"], task["duration_ms"]) == (2, "success", 77)
    assert [a["attempt"] for a in task["attempts"]] == [1, 2]
    assert [a["status"] for a in task["attempts"]] == ["failed", "success"]
    rows = points_json(service.run(run_id))
    assert [(r["task_id"], r["attempt"]) for r in rows] == [("a", 1), ("a", 2), ("b", 1)]
    with pytest.raises(NotFound):
        task_metrics_json(service.task("0" * 20))
    with pytest.raises(NotFound):
        points_json(service.run("nope"))
    with pytest.raises(NotFound, match="not loaded and has no recorded metrics"):
        dag_metrics_json(service.dag("nope", "1h", 10, ""))


# ---------------------------------------------------------------- real tasks over HTTP


def _script(root: Path, name: str, code: str) -> str:
    path = root / name
    path.write_text(textwrap.dedent(code))
    return f"{sys.executable} {path}"


def test_real_tasks_report_the_memory_of_a_forked_child_and_their_cpu(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    alloc = _script(
        tmp_path,
        "alloc.py",
        """
        import subprocess, sys
        child = "import time; b = b'x' * (200 * 2**20); time.sleep(1.0)"
        subprocess.run([sys.executable, "-c", child], check=True)
        """,
    )
    burn = _script(
        tmp_path,
        "burn.py",
        """
        import subprocess, sys
        child = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.0: pass"
        subprocess.run([sys.executable, "-c", child], check=True)
        """,
    )
    nagare = nagare_factory(
        dags={
            "m.yaml": f"""
            id: m
            tasks:
              - id: alloc
                command: "{alloc}"
              - id: burn
                command: "{burn}"
            """
        }
    )
    run_id = nagare.trigger("m")
    assert nagare.wait_run(run_id, timeout=60)["status"] == "success"
    tasks = nagare.tasks(run_id)
    memory = nagare.get(f"/api/metrics/tasks/{tasks['alloc']['id']}")
    assert memory["peak_memory_bytes"] >= 200 * 2**20
    cpu = nagare.get(f"/api/metrics/tasks/{tasks['burn']['id']}")
    # the child burns exactly 1 s of CPU (plus interpreter start-ups); on a loaded machine the
    # wall time stretches, the CPU time does not
    assert 1000 <= cpu["cpu_ms"] <= 1800
    assert cpu["cpu_ms"] <= 1.1 * cpu["duration_ms"] + 100
    rows = nagare.get(f"/api/metrics/runs/{run_id}")
    assert {r["task_id"] for r in rows} == {"alloc", "burn"}
    series = nagare.get("/api/metrics/timeseries?since=1h&dag_id=m")
    assert max(p["memory_bytes"] for p in series) >= 200 * 2**20
    dag = nagare.get("/api/metrics/dags/m?since=1h&bucket=1m")
    assert dag["aggregate"]["task_count"] == 2 and dag["aggregate"]["run_count"] == 1
    assert sum(p["count"] for p in dag["time_series"]) == 2


def test_a_retried_task_has_metrics_per_attempt(nagare: Nagare, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    nagare.write_dag(
        "r.yaml",
        f"""
        id: r
        tasks:
          - id: flaky
            command: "test -f {marker} || {{ touch {marker}; exit 3; }}"
            retries: 1
        """,
    )
    wait_for(lambda: nagare.call("GET", "/api/dags/r").status == 200)
    run_id = nagare.trigger("r")
    assert nagare.wait_run(run_id)["status"] == "success"
    task = nagare.get(f"/api/metrics/tasks/{nagare.task(run_id, 'flaky')['id']}")
    assert (task["attempt"], task["status"], task["task_status"]) == (2, "success", "success")
    assert [(a["status"], a["exit_code"]) for a in task["attempts"]] == [
        ("failed", 3),
        ("success", 0),
    ]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/metrics/overview?since=yesterday", 400),
        ("/api/metrics/overview?since=0h", 400),
        ("/api/metrics/timeseries?since=1w", 400),
        ("/api/metrics/timeseries?limit=0", 400),
        ("/api/metrics/timeseries?limit=10001", 400),
        ("/api/metrics/timeseries?limit=ten", 400),
        ("/api/metrics/timeseries?bucket=7m", 400),
        ("/api/metrics/dags/a?since=24", 400),
        ("/api/metrics/overview?window=1h", 422),
        ("/api/metrics/tasks/not%20an%20id", 400),
        ("/api/metrics/tasks/0123456789abcdef0123", 404),
        ("/api/metrics/runs/nope", 404),
        ("/api/metrics/dags/nope", 404),
    ],
)
def test_bad_metrics_requests_get_clear_errors(nagare: Nagare, path: str, status: int) -> None:
    result = nagare.call("GET", path)
    assert result.status == status, result.body
    assert result.json["error"]["message"]


def test_metrics_routes_need_the_api_key_and_are_in_openapi(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(api_key="s3cret")
    document = nagare.get("/api/openapi.json")
    for path in (
        "/api/metrics/overview",
        "/api/metrics/timeseries",
        "/api/metrics/tasks/{task_instance_id}",
        "/api/metrics/runs/{run_id}",
        "/api/metrics/dags/{dag_id}",
        "/metrics",
    ):
        operation = document["paths"][path]["get"]
        assert operation["security"] == [{"apiKey": []}], path
        concrete = path.replace("{", "x").replace("}", "")
        assert http("GET", nagare.url + concrete).status == 401, path
    names = [p["name"] for p in document["paths"]["/api/metrics/timeseries"]["get"]["parameters"]]
    assert names == ["since", "dag_id", "limit", "bucket"]


# ---------------------------------------------------------------- Prometheus


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_exposition_parses_with_prometheus_client(nagare: Nagare) -> None:
    nagare.write_dag(
        "p.yaml",
        """
        id: p
        tasks:
          - id: src
            command: "echo '[1, 2, 3]'"
          - id: each
            type: map
            map_over: src
            command: "echo {{item}}"
          - id: bad
            command: "exit 2"
        """,
    )
    wait_for(lambda: nagare.call("GET", "/api/dags/p").status == 200)
    assert nagare.wait_run(nagare.trigger("p"))["status"] == "failed"
    result = nagare.call("GET", "/metrics")
    assert result.status == 200
    assert result.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = families(result.text)

    runs = {
        (s.labels["dag"], s.labels["status"]): s.value for s in found["nagare_dag_runs"].samples
    }
    assert runs == {("p", "failed"): 1}
    assert found["nagare_dag_runs"].type == "counter"
    tasks = {
        (s.labels["task"], s.labels["status"]): s.value for s in found["nagare_task_runs"].samples
    }
    assert tasks == {("src", "success"): 1, ("each", "success"): 3, ("bad", "failed"): 1}

    histogram = found["nagare_task_duration_seconds"]
    assert histogram.type == "histogram"
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    assert {s.labels["dag"] for s in buckets} == {"p"} and {s.labels["pool"] for s in buckets} == {
        "default"
    }
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf"
    count = next(s.value for s in histogram.samples if s.name.endswith("_count"))
    assert counts[-1] == count == 5

    def value(name: str, **labels: str) -> float:
        return next(
            s.value
            for s in found[name].samples
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("nagare_runs_running") == 0
    assert value("nagare_tasks_queued", pool="default") == 0
    assert value("nagare_pool_slots", pool="default", state="idle") == 4
    assert value("nagare_pool_slots", pool="default", state="busy") == 0
    assert value("nagare_workers", status="online") == 0
    assert value("nagare_scheduler_lag_seconds") >= 0
    assert value("nagare_dags_loaded") == 1
    assert value("nagare_dag_load_errors") == 0
    assert found["nagare_build_info"].samples[0].labels["version"]
    assert value("process_resident_memory_bytes") > 10 * 2**20
    assert value("process_open_fds") > 0
    assert value("process_cpu_seconds") > 0
    assert value("process_start_time_seconds") > 1.7e9
    labels = {k for f in found.values() for s in f.samples for k in s.labels}
    assert labels <= {"dag", "task", "status", "pool", "state", "le", "version", "python"}


def test_prometheus_gauges_follow_live_state(nagare_factory: Callable[..., Nagare]) -> None:
    nagare = nagare_factory(
        dags={"w.yaml": "id: w\ntasks:\n  - id: t\n    command: sleep 30\n    pool: one\n"},
        worker_pools={"one": 1},
    )
    first, second = nagare.trigger("w"), nagare.trigger("w")

    def scrape() -> dict[str, Any]:
        return families(nagare.call("GET", "/metrics").text)

    def busy() -> dict[str, Any] | None:
        found = scrape()
        slots = {
            s.labels["state"]: s.value
            for s in found["nagare_pool_slots"].samples
            if s.labels["pool"] == "one"
        }
        queued = {s.labels["pool"]: s.value for s in found["nagare_tasks_queued"].samples}
        return found if slots.get("busy") == 1 and queued.get("one") == 1 else None

    found = wait_for(busy, message="one busy slot and one queued task")
    assert found["nagare_runs_running"].samples[0].value == 1
    assert found["nagare_runs_queued"].samples[0].value == 1
    for run_id in (first, second):
        nagare.call("POST", f"/api/runs/{run_id}/kill")


def test_scheduler_lag_is_exported(nagare_factory: Callable[..., Nagare]) -> None:
    nagare = nagare_factory(
        dags={"s.yaml": "id: s\nschedule: '@every 1s'\ntasks:\n  - id: t\n    command: 'true'\n"}
    )
    wait_for(lambda: nagare.get("/api/runs?trigger=scheduled")["total"] >= 1, 10)
    lag = families(nagare.call("GET", "/metrics").text)["nagare_scheduler_lag_seconds"]
    assert lag.samples[0].value == nagare.app.scheduler.last_lag_ms / 1000
    assert 0 <= lag.samples[0].value < 2


def test_prometheus_text_escapes_label_values() -> None:
    odd = 'a "quoted" back\\slash\nnewline'
    family = Family("nagare_test_total", "counter", "Help with \\ and\nnewline.")
    family.add(3, dag=odd, status="ok")
    gauge = Family("nagare_ratio", "gauge", "A float.").add(0.25)
    parsed = families(render([family, gauge]))
    sample = parsed["nagare_test"].samples[0]
    assert sample.labels == {"dag": odd, "status": "ok"} and sample.value == 3
    assert parsed["nagare_ratio"].samples[0].value == 0.25


def test_metrics_answers_scrapers_with_text_and_browsers_with_the_dashboard(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(api_key="k3y")
    key = {"Authorization": "Bearer k3y"}
    for accept in ("", PROMETHEUS_ACCEPT, "text/plain", "*/*", "text/html;q=0.1,text/plain"):
        headers = {**key, "Accept": accept} if accept else key
        result = nagare.call("GET", "/metrics", headers=headers)
        assert result.status == 200, accept
        assert result.headers["Content-Type"].startswith("text/plain; version=0.0.4"), accept
        assert "# TYPE nagare_dag_runs_total counter" in result.text
    scrape = http("GET", nagare.url + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert scrape.status == 401
    assert scrape.headers["WWW-Authenticate"] == 'Bearer realm="nagare"'
    assert nagare.call("HEAD", "/metrics").status == 200
    page = http("GET", nagare.url + "/metrics", headers={"Accept": BROWSER_ACCEPT})  # no key
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.body == http("GET", nagare.url + "/", headers={"Accept": BROWSER_ACCEPT}).body


def test_upgrading_a_database_fills_the_metric_tables(tmp_path: Path) -> None:
    """Migration 3 computes the roll-up, counters and histogram from the attempts recorded
    before it, exactly as recording them one by one does."""
    path = str(tmp_path / "old.db")
    store = Store(path)
    random_history(store, 120)
    plant_run(store, "d", NOW - HOUR, [Attempt("m[0]", NOW - 1), Attempt("m[1]", NOW - 2)])
    tables = ("metric_rollup", "metric_counters", "metric_durations")

    def snapshot(db: Store) -> list[list[tuple[Any, ...]]]:
        with db.db.read() as conn:
            return [
                [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4")]
                for t in tables
            ]

    recorded = snapshot(store)
    with store.db.write() as conn:  # back to schema 2
        for table in tables:
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP INDEX attempts_duration")
        conn.execute("DROP INDEX attempts_dag_duration")
        conn.execute("DROP TABLE webhook_deliveries")  # migrations 4 and 5 come again too
        conn.execute("DROP TABLE workers")
        conn.execute("DROP INDEX ti_leases")
        conn.execute("ALTER TABLE task_instances DROP COLUMN lease_expires_at")
        conn.execute("ALTER TABLE task_instances DROP COLUMN lease_confirmed")
        undo_later_migrations(conn)
        conn.execute("PRAGMA user_version=2")
    store.close()
    upgraded = Store(path)
    assert upgraded.db.schema_version == len(MIGRATIONS)
    assert snapshot(upgraded) == recorded
    upgraded.close()


def undo_later_migrations(conn: Any) -> None:
    """What the migrations after 6 added goes too (a lower user_version runs them again):
    run parameters (7), task outputs (8), run rules (9), conditions (10), steps that wait (11)."""
    conn.execute("ALTER TABLE runs DROP COLUMN params")
    conn.execute("ALTER TABLE task_instances DROP COLUMN outputs")
    conn.execute("ALTER TABLE runs DROP COLUMN has_outputs")
    conn.execute("DROP INDEX runs_deadline")
    conn.execute("DROP INDEX runs_handling")
    for column in ("reason", "held", "deadline_at", "handling", "failed_tasks"):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    conn.execute("ALTER TABLE task_instances DROP COLUMN allowed_failure")
    conn.execute("ALTER TABLE runs DROP COLUMN warnings")
    undo_migration_11(conn)


FINISHED_ATTEMPT_INDEXES = {
    "attempts_completed": "completed_at",
    "attempts_dag_completed": "dag_id, completed_at",
    "attempts_duration": "duration_ms, completed_at",
    "attempts_dag_duration": "dag_id, duration_ms, completed_at",
}


def test_attempt_indexes_hold_finished_attempts_only(tmp_path: Path) -> None:
    """Migration 6 makes the completion and duration indexes partial (starting an attempt
    writes nothing to them); every window query still runs on them, the duration walk that
    a big window forces included."""
    path = str(tmp_path / "old.db")
    store = Store(path)
    with store.db.write() as conn:  # back to schema 5: indexes over every attempt
        for name, columns in FINISHED_ATTEMPT_INDEXES.items():
            conn.execute(f"DROP INDEX {name}")
            conn.execute(f"CREATE INDEX {name} ON task_attempts({columns})")
        undo_later_migrations(conn)
        conn.execute("PRAGMA user_version=5")
    history = random_history(store, 60)
    plant_run(store, "alpha", NOW - HOUR, [Attempt("t", None)])  # still running
    store.close()
    store = Store(path)
    with store.db.read() as conn:
        definitions = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type='index'"))
    for name in FINISHED_ATTEMPT_INDEXES:
        assert definitions[name].endswith("WHERE completed_at IS NOT NULL"), definitions[name]
    start = NOW - 4 * DAY
    walked = store.metrics.slowest_attempts(start, 5, window_attempts=SLOWEST_SORT_LIMIT + 1)
    sorted_ = store.metrics.slowest_attempts(start, 5, window_attempts=1)
    assert [p.duration_ms for p in walked] == [p.duration_ms for p in sorted_]
    assert [p.duration_ms for p in walked] == sorted(
        (a.duration_ms for _, a in history), reverse=True
    )[:5]
    assert len(store.metrics.points(start, "", 1000)) == len(history)  # not the running one
    store.close()


# ---------------------------------------------------------------- run-level outcomes


def retried_runs(store: Store, dag_id: str, times: list[int]) -> None:
    """Runs whose only task failed once and then succeeded (one run success, attempts 50 %)."""
    for at in times:
        plant_run(
            store,
            dag_id,
            at - 10 * MINUTE,
            [
                Attempt("t", at - MINUTE, status="failed", exit_code=1, attempt=1),
                Attempt("t", at, attempt=2),
            ],
        )


def test_run_level_success_next_to_attempt_level(store: Store, service: MetricsService) -> None:
    """A DAG whose every run succeeded after a retry: attempts 50 %, runs 100 %. Runs count in
    the window their completion falls in; running runs are not outcomes; a DAG whose runs
    finished without any attempt (skipped) is listed too."""
    retried_runs(store, "flaky", [NOW - 10 * MINUTE, NOW - 20 * MINUTE, NOW - 2 * DAY])
    plant_run(store, "broken", NOW - HOUR, [Attempt("t", NOW - 5, status="failed")], "failed")
    plant_run(store, "broken", NOW - HOUR, [Attempt("t", NOW - 6)], "success")
    plant_run(store, "broken", NOW - HOUR, [Attempt("t", NOW - 7, status="cancelled")], "cancelled")
    plant_run(store, "broken", NOW - MINUTE, [Attempt("t", None)], status="running")
    plant_run(store, "quiet", NOW - MINUTE, [], status="skipped")
    overview = overview_json(service.overview("1h"))
    stats = {d["dag_id"]: d for d in overview["dag_stats"]}
    assert [d["dag_id"] for d in overview["dag_stats"]] == ["flaky", "broken", "quiet"]
    assert stats["flaky"]["success_rate"] == 0.5
    assert stats["flaky"]["runs"] == {
        "finished": 2,
        "success": 2,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
        "success_rate": 1.0,
    }
    assert stats["broken"]["runs"]["finished"] == 3  # not the running one
    assert stats["broken"]["runs"]["success_rate"] == 0.5  # the cancelled run is no outcome
    assert stats["quiet"]["count"] == 0 and stats["quiet"]["runs"]["skipped"] == 1
    assert stats["quiet"]["runs"]["success_rate"] is None
    assert overview["runs"]["finished"] == 6 and overview["runs"]["success"] == 3
    week = {d["dag_id"]: d for d in overview_json(service.overview("7d"))["dag_stats"]}
    assert week["flaky"]["runs"]["success"] == 3
    one = overview_json(service.overview("1h", "flaky"))  # the overview of one DAG
    assert [d["dag_id"] for d in one["dag_stats"]] == ["flaky"]
    assert (one["total_tasks"], one["runs"]["finished"]) == (4, 2)
    assert {t["dag_id"] for t in one["slowest_tasks"]} == {"flaky"}
    aggregate = dag_metrics_json(service.dag("flaky", "1h", 10, ""))["aggregate"]
    assert (aggregate["success_rate"], aggregate["runs"]["success_rate"]) == (0.5, 1.0)


def test_run_outcomes_read_one_range_of_a_covering_index(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "plan.db"))  # SQLite's query plan
    with store.db.read() as conn:
        for dag_id in ("", "d"):
            sql, params = run_outcomes_query(NOW, dag_id)
            plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "SEARCH runs USING COVERING INDEX runs_completed (completed_at>?)" in plan
    store.close()


def test_a_database_of_schema_11_gets_the_run_completion_index(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    store = Store(path)
    retried_runs(store, "flaky", [NOW - MINUTE])
    with store.db.write() as conn:
        conn.execute("DROP INDEX runs_completed")
        undo_migration_13(conn)
        conn.execute("PRAGMA user_version=11")
    store.close()
    upgraded = Store(path)
    assert upgraded.db.schema_version == len(MIGRATIONS)
    assert upgraded.metrics.run_outcomes(NOW - HOUR)["flaky"].success == 1
    upgraded.close()


# ---------------------------------------------------------------- percentiles per bucket


@pytest.mark.parametrize(("since", "bucket"), [("6h", "15m"), ("3d", "1h"), ("3d", "1d")])
def test_each_bucket_has_its_own_p50_and_p95(
    store: Store, service: MetricsService, since: str, bucket: str
) -> None:
    rows = random_history(store, 300)
    size = parse_bucket(bucket)
    start = NOW - parse_span(since)
    durations: dict[int, list[int]] = {}
    for _, a in rows:
        assert a.completed_at is not None
        if a.completed_at >= start:
            durations.setdefault(a.completed_at // size * size, []).append(a.duration_ms)
    points = series_json(service.timeseries(since, "", 10_000, bucket))
    assert {parse_iso(p["timestamp"]) for p in points} == set(durations)
    for point in points:
        values = durations[parse_iso(point["timestamp"])]
        cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else []
        assert point["p50_duration_ms"] == pytest.approx(statistics.median(values), abs=1e-3)
        assert point["p95_duration_ms"] == pytest.approx(cuts[94] if cuts else values[0], abs=1e-3)
        assert point["p50_duration_ms"] <= point["p95_duration_ms"] <= point["max_duration_ms"]


def test_bucket_percentiles_of_one_dag_and_above_the_limit(
    store: Store, service: MetricsService, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number, duration in enumerate([5, 1, 3, 100]):
        plant_at(store, [NOW - number * MINUTE], dag_id="p", duration_ms=duration)
    plant_at(store, [NOW - MINUTE], dag_id="other", duration_ms=10_000)
    (point,) = series_json(service.timeseries("1h", "p", 10, "1h"))
    assert (point["count"], point["p50_duration_ms"], point["p95_duration_ms"]) == (4, 4.0, 85.75)
    (dag_point,) = dag_metrics_json(service.dag("p", "1h", 10, "1h"))["time_series"]
    assert dag_point == point
    monkeypatch.setattr("nagare.metrics.PERCENTILE_LIMIT", 3)
    (point,) = series_json(service.timeseries("1h", "p", 10, "1h"))
    assert (point["count"], point["p50_duration_ms"], point["p95_duration_ms"]) == (4, None, None)
