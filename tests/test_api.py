"""The JSON HTTP API against a real server: every route of the route table, its success path and
its error paths, authentication, body limits and the static files.

Every error must have the one JSON shape `{"error": {"code", "message"}}` with a specific
message, and never a traceback or a Python class name.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from conftest import HttpResult, Nagare, http, wait_for

from nagare import __version__
from nagare.access import Permission
from nagare.http.routing import Route

NagareFactory = Callable[..., Nagare]

RUN_KEYS = {
    "run_id",
    "dag_id",
    "status",
    "trigger",
    "execution_date",
    "conf",
    "params",  # workflow language §2
    "created_at",
    "started_at",
    "completed_at",
    "task_counts",
    "warnings",  # workflow language §4: allowed failures
    "reason",  # why a run was skipped
    "dag_version",  # the digest of the definition it runs
    "parent",  # the calling `dag` task ({run_id, task_id}); null until sub-DAG calls exist
}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
LEAKS = re.compile(
    r"Traceback|File \"|<class |<module|NoneType|\b[A-Z][A-Za-z]*(Error|Exception)\b"
    r"|\bnagare\.[a-z_]+\.|0x[0-9a-f]{6,}"
)
PYTHON_TYPE_NAMES = re.compile(r"\b(str|list|dict|int|float|bool|NoneType|tuple)\b")

HELLO = """\
id: hello
description: "two steps"
tasks:
  - id: t1
    command: "echo step-one"
  - id: t2
    depends_on: [t1]
    command: "echo step-two"
"""

FAILING = """\
id: failing
tasks:
  - id: boom
    command: "echo going-down; exit 1"
"""


# ---------------------------------------------------------------- helpers


def assert_error(result: HttpResult, status: int, code: str, *fragments: str) -> str:
    """The one error shape, with the right status, code and a specific message."""
    assert result.status == status, (result.status, result.body)
    assert result.headers.get("Content-Type", "").startswith("application/json"), result.headers
    body = result.json
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip(), body
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not LEAKS.search(result.text), result.text
    return str(message)


def finished_run(nagare: Nagare, dag_id: str = "hello", conf: dict[str, Any] | None = None) -> str:
    run_id = nagare.trigger(dag_id, conf)
    nagare.wait_run(run_id)
    return run_id


def wait_task(nagare: Nagare, run_id: str, task_id: str, *statuses: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task = nagare.task(run_id, task_id)
        return task if task["status"] in statuses else None

    return wait_for(check, 15, message=f"{task_id} in {statuses}")  # type: ignore[no-any-return]


def wait_log(nagare: Nagare, run_id: str, task_id: str, text: str) -> None:
    wait_for(lambda: text in nagare.log(run_id, task_id), 15, message=f"'{text}' in the log")


def sample_path(route: Route, run_id: str, task_id: str = "t1", dag_id: str = "hello") -> str:
    samples = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id}

    def fill(match: re.Match[str]) -> str:
        return quote(samples.get(match.group(1), "sample"), safe="")

    return re.sub(r"\{([a-z_]+)\}", fill, route.path)


def raw_get(nagare: Nagare, path: str) -> tuple[int, bytes]:
    """GET a path exactly as written (no client-side normalisation of `..`)."""
    conn = HTTPConnection("127.0.0.1", nagare.app.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------- system


def test_health_is_open_and_reports_the_version(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(api_key="k")
    result = http("GET", nagare.url + "/api/health")
    assert result.status == 200
    assert result.json["status"] == "ok" and result.json["version"] == __version__
    assert all(c["status"] == "ok" for c in result.json["components"].values())


def test_a_response_leaves_in_one_write(nagare: Nagare, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    writes: list[int] = []
    write = socket.SocketIO.write

    def counting(self: socket.SocketIO, data: bytes) -> int | None:
        writes.append(len(data))
        return write(self, data)

    monkeypatch.setattr(socket.SocketIO, "write", counting)
    result = http("GET", nagare.url + "/api/dags")  # a new connection: headers, then a body
    assert result.status == 200 and result.body
    # status line, headers and body in one segment: one wake-up of the client
    assert len(writes) == 1 and writes[0] > len(result.body), writes


def openapi_doc(nagare: Nagare) -> dict[str, Any]:
    result = http("GET", nagare.url + "/api/openapi.json")  # open: no key needed
    assert result.status == 200, result.body
    assert result.headers["Content-Type"].startswith("application/json")
    return result.json  # type: ignore[no-any-return]


def test_openapi_is_a_3_1_document_of_every_route(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(api_key="k")
    doc = openapi_doc(nagare)
    assert doc["openapi"].startswith("3.1")
    assert isinstance(doc["info"]["title"], str) and doc["info"]["title"]
    assert doc["info"]["version"] == __version__

    routes = nagare.app.api.routes
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert documented == {(r.doc_path, r.doc_method) for r in routes}

    schemes = doc["components"]["securitySchemes"]
    for route in routes:
        op = doc["paths"][route.doc_path][route.doc_method.lower()]
        assert op["summary"] == route.summary
        for param in op["parameters"]:
            assert param["in"] in ("path", "query")
            assert param["in"] == "query" or param["required"] is True
            assert "type" in param["schema"]
        assert str(route.status) in op["responses"]
        assert all("description" in r for r in op["responses"].values())
        for name in (n for s in op.get("security", []) for n in s):
            assert name in schemes
        if route.auth == "open":
            assert "security" not in op, route.path
        else:
            assert op["security"], route.path
        query = {p["name"] for p in op["parameters"] if p["in"] == "query"}
        assert query == {q.name for q in route.query}, route.path
    for ref in re.findall(r'"\$ref": ?"#/components/schemas/([^"]+)"', json.dumps(doc)):
        assert ref in doc["components"]["schemas"]


def test_openapi_declares_path_parameters_and_unique_operation_ids(nagare: Nagare) -> None:
    doc = openapi_doc(nagare)
    operation_ids = []
    for route in nagare.app.api.routes:
        op = doc["paths"][route.doc_path][route.doc_method.lower()]
        operation_ids.append(op["operationId"])
        declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"\{([a-z_]+)\}", route.doc_path)), route.path
    assert len(operation_ids) == len(set(operation_ids)), operation_ids
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_openapi_is_generated_from_the_route_table(nagare: Nagare) -> None:
    before = nagare.get("/api/openapi.json")
    assert "/api/extra/{dag_id}" not in before["paths"]
    nagare.app.api.add_routes(
        [
            Route(
                "GET",
                "/api/extra/{dag_id}",
                lambda request: {"ok": True},
                "An added route",
                permission=Permission.READ,
            )
        ]
    )
    after = nagare.get("/api/openapi.json")
    assert after["paths"]["/api/extra/{dag_id}"]["get"]["summary"] == "An added route"
    assert nagare.get("/api/extra/abc") == {"ok": True}


def test_stats_counts_runs_and_dags(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO, "failing.yaml": FAILING})
    empty = nagare.get("/api/stats")
    for key in ("active_runs", "failed_runs_24h", "total_runs", "loaded_dags"):
        assert isinstance(empty[key], int), key
    assert (empty["total_runs"], empty["failed_runs_24h"], empty["loaded_dags"]) == (0, 0, 2)

    finished_run(nagare, "hello")
    finished_run(nagare, "failing")
    stats = nagare.get("/api/stats")
    assert stats["total_runs"] == 2
    assert stats["failed_runs_24h"] == 1
    assert stats["active_runs"] == 0


def test_workers_is_an_empty_list(nagare: Nagare) -> None:
    assert nagare.get("/api/workers") == []


def test_pools_lists_configured_pools(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(worker_pools={"gpu": 2})
    pools = {p["pool"]: p for p in nagare.get("/api/pools")}
    assert set(pools) >= {"default", "gpu"}
    assert pools["default"]["local_slots"] == 4
    assert pools["gpu"]["local_slots"] == 2
    assert pools["gpu"]["running"] == 0 and pools["gpu"]["queued"] == 0


# ---------------------------------------------------------------- DAGs


def test_dags_are_sorted_by_id_with_next_run_only_for_cron(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "z.yaml": "id: a_manual\ntasks:\n  - id: t\n    command: 'true'\n",
            "a.yaml": "id: c_manual\nschedule: workflow_dispatch\n"
            "tasks:\n  - id: t\n    command: 'true'\n",
            "m.yaml": "id: b_cron\nschedule: '0 0 1 1 *'\ntimezone: UTC\n"
            "tasks:\n  - id: t\n    command: 'true'\n",
        }
    )
    dags = nagare.get("/api/dags")
    assert [d["dag_id"] for d in dags] == ["a_manual", "b_cron", "c_manual"]
    by_id = {d["dag_id"]: d for d in dags}
    for dag in dags:
        assert {
            "dag_id",
            "description",
            "schedule",
            "timezone",
            "catchup",
            "paused",
            "file",
        } <= set(dag)
        assert {"next_run_at", "last_run", "tasks", "trigger"} <= set(dag)
        assert dag["last_run"] is None and dag["paused"] is False
        assert dag["tasks"][0]["task_id"] == "t"
        assert dag["tasks"][0]["depends_on"] == []
        assert dag["tasks"][0]["pool"] == "default"
    assert by_id["a_manual"]["next_run_at"] is None
    assert by_id["c_manual"]["next_run_at"] is None
    next_run = by_id["b_cron"]["next_run_at"]
    assert ISO_Z.match(next_run), next_run
    assert next_run[4:].startswith("-01-01T00:00:00")
    assert next_run > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    assert by_id["b_cron"]["file"] == "m.yaml"


def test_dags_never_expose_env_values_or_webhook_secrets(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "secretive.yaml": """\
            id: secretive
            env:
              PASSWORD: hunter2
            trigger:
              type: webhook
              path: /api/webhooks/secretive
              secret: s3cr3t
            tasks:
              - id: t
                command: "true"
                env:
                  TASK_PASSWORD: hunter2
            """,
            "broken.yaml": """\
            id: broken
            env:
              PASSWORD: hunter2
            trigger:
              type: webhook
              path: /api/webhooks/broken
              secret: s3cr3t
            tasks:
              - id: t
                command: "true"
                dependson: [nothing]
            """,
        }
    )
    finished_run(nagare, "secretive")
    responses = [
        nagare.call("GET", "/api/dags"),
        nagare.call("GET", "/api/dags/secretive"),
        nagare.call("GET", "/api/dags/errors"),
        nagare.call("POST", "/api/dags/secretive/pause"),
        nagare.call("POST", "/api/dags/secretive/activate"),
        nagare.call("POST", "/api/dags/secretive/runs"),
        nagare.call("POST", "/api/dags/secretive/backfill", {"start": "x", "end": "y"}),
    ]
    for result in responses:
        assert result.headers["Content-Type"].startswith("application/json")
        assert b"s3cr3t" not in result.body, result.body
        assert b"hunter2" not in result.body, result.body
    dag = responses[1].json
    assert dag["trigger"]["signed"] is True
    assert dag["trigger"]["path"] == "/api/webhooks/secretive"
    assert "broken.yaml" in responses[2].json


def test_dag_errors_lists_broken_files_while_good_files_load(nagare: Nagare) -> None:
    assert nagare.get("/api/dags/errors") == {}
    nagare.write_dag("good.yaml", HELLO)
    nagare.write_dag(
        "broken.yaml",
        """\
        id: broken
        tasks:
          - id: a
            command: "true"
            dependson: [b]
        """,
    )
    nagare.app.folder.scan()
    errors = nagare.get("/api/dags/errors")
    assert list(errors) == ["broken.yaml"]
    assert isinstance(errors["broken.yaml"], list) and errors["broken.yaml"]
    assert all(isinstance(e, str) for e in errors["broken.yaml"])
    assert errors["broken.yaml"] == [
        "broken.yaml:5: tasks[0] (a).dependson: unknown key 'dependson'; did you mean 'depends_on'?"
    ]
    assert [d["dag_id"] for d in nagare.get("/api/dags")] == ["hello"]
    assert_error(nagare.call("GET", "/api/dags/broken"), 404, "not_found", "broken")


def test_dag_by_id(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    dag = nagare.get("/api/dags/hello")
    assert dag["dag_id"] == "hello"
    assert dag["description"] == "two steps"
    assert [t["task_id"] for t in dag["tasks"]] == ["t1", "t2"]
    assert dag["tasks"][1]["depends_on"] == ["t1"]
    run_id = finished_run(nagare)
    last = nagare.get("/api/dags/hello")["last_run"]
    assert last["run_id"] == run_id and set(last) == RUN_KEYS

    assert_error(nagare.call("GET", "/api/dags/nope"), 404, "not_found", "DAG 'nope' not found")
    assert_error(nagare.call("GET", "/api/dags/bad%20id"), 400, "bad_request", "'bad id'", "dag id")


def test_dag_yaml_is_the_file_as_written(nagare_factory: NagareFactory) -> None:
    source = "# a comment the parser drops\n" + HELLO + "# trailing comment\n"
    nagare = nagare_factory(dags={"hello.yaml": source})
    result = nagare.call("GET", "/api/dags/hello/yaml")
    assert result.status == 200
    assert result.headers["Content-Type"].startswith("text/yaml")
    assert result.body == source.encode()
    assert_error(nagare.call("GET", "/api/dags/nope/yaml"), 404, "not_found", "'nope'")
    assert_error(nagare.call("GET", "/api/dags/-x/yaml"), 400, "bad_request", "'-x'")


# ---------------------------------------------------------------- trigger


def test_trigger_returns_a_run_with_snake_case_keys(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    result = nagare.call("POST", "/api/dags/hello/runs")
    assert result.status == 201, result.body
    run = result.json
    assert set(run) == RUN_KEYS
    assert run["dag_id"] == "hello"
    assert run["trigger"] == "manual"
    assert run["status"] in ("queued", "running")
    assert run["conf"] == {}
    assert ISO_Z.match(run["execution_date"]) and ISO_Z.match(run["created_at"])
    assert run["completed_at"] is None
    assert isinstance(run["task_counts"], dict)
    assert nagare.wait_run(run["run_id"])["status"] == "success"
    # An empty object is a body too.
    assert nagare.call("POST", "/api/dags/hello/runs", {}).status == 201


def test_trigger_conf_becomes_task_env_as_strings(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "conf.yaml": """\
            id: conf_env
            tasks:
              - id: show
                command: 'echo "NAME=$NAME NUM=$NUM FLAG=$FLAG OFF=$OFF FLT=$FLT"'
            """
        }
    )
    conf = {"NAME": "ada lovelace", "NUM": 42, "FLAG": True, "OFF": False, "FLT": 1.5}
    result = nagare.call("POST", "/api/dags/conf_env/runs", {"conf": conf})
    assert result.status == 201, result.body
    run = result.json
    expected = {"NAME": "ada lovelace", "NUM": "42", "FLAG": "true", "OFF": "false", "FLT": "1.5"}
    assert run["conf"] == expected
    assert nagare.wait_run(run["run_id"])["status"] == "success"
    assert nagare.get(f"/api/runs/{run['run_id']}")["conf"] == expected
    log = nagare.log(run["run_id"], "show")
    assert "NAME=ada lovelace NUM=42 FLAG=true OFF=false FLT=1.5" in log


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"conf": [1, 2]}, "conf must be an object"),
        ({"conf": "A=1"}, "conf must be an object"),
        ({"conf": 5}, "conf must be an object"),
        ({"conf": {"1BAD": "x"}}, "'1BAD'"),
        ({"conf": {"BAD-KEY": "x"}}, "'BAD-KEY'"),
        ({"conf": {"": "x"}}, "''"),
        ({"conf": {f"K{i}": "v" for i in range(201)}}, "at most 200"),
    ],
)
def test_trigger_rejects_invalid_conf_with_422(
    nagare_factory: NagareFactory, body: dict[str, Any], fragment: str
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    assert_error(nagare.call("POST", "/api/dags/hello/runs", body), 422, "unprocessable", fragment)
    assert nagare.get("/api/runs")["total"] == 0


@pytest.mark.parametrize("conf", [[1, 2], "A=1", 5])
def test_trigger_conf_type_error_names_no_python_types(
    nagare_factory: NagareFactory, conf: Any
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    message = assert_error(
        nagare.call("POST", "/api/dags/hello/runs", {"conf": conf}), 422, "unprocessable"
    )
    assert not PYTHON_TYPE_NAMES.search(message), message


def test_trigger_bad_bodies_are_400(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    path = "/api/dags/hello/runs"
    assert_error(nagare.call("POST", path, raw=b"{not json"), 400, "bad_request", "not valid JSON")
    assert_error(
        nagare.call("POST", path, raw=b"\xff\xfe\x00garbage"), 400, "bad_request", "not valid JSON"
    )
    assert_error(
        nagare.call("POST", path, raw=b"hello", headers={"Content-Type": "text/plain"}),
        400,
        "bad_request",
        "not valid JSON",
    )
    assert_error(
        nagare.call(
            "POST",
            path,
            raw=b"conf=1",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        400,
        "bad_request",
    )
    assert_error(nagare.call("POST", path, [1]), 400, "bad_request", "JSON object")
    assert_error(nagare.call("POST", path, {"conf": {}, "confx": 1}), 400, "bad_request", "confx")
    assert nagare.get("/api/runs")["total"] == 0


def test_trigger_unknown_dag_is_404(nagare: Nagare) -> None:
    assert_error(
        nagare.call("POST", "/api/dags/nope/runs"), 404, "not_found", "DAG 'nope' not found"
    )
    assert_error(nagare.call("POST", "/api/dags/bad%20id/runs"), 400, "bad_request", "'bad id'")


# ---------------------------------------------------------------- pause / activate


def test_pause_and_activate_are_persisted(nagare_factory: NagareFactory, tmp_path: Path) -> None:
    cron = (
        "id: nightly\nschedule: '0 3 * * *'\ntimezone: UTC\n"
        "tasks:\n  - id: t\n    command: 'true'\n"
    )
    nagare = nagare_factory(dags={"nightly.yaml": cron})
    assert nagare.get("/api/dags/nightly")["next_run_at"] is not None

    result = nagare.call("POST", "/api/dags/nightly/pause")
    assert result.status == 200 and result.json == {"dag_id": "nightly", "paused": True}
    assert nagare.get("/api/dags")[0]["paused"] is True
    assert nagare.get("/api/dags/nightly")["paused"] is True
    assert nagare.get("/api/dags/nightly")["next_run_at"] is None

    # Survives a restart on the same database.
    nagare.app.stop()
    again = nagare_factory(root=tmp_path)
    assert again.get("/api/dags")[0]["paused"] is True

    result = again.call("POST", "/api/dags/nightly/activate")
    assert result.status == 200 and result.json == {"dag_id": "nightly", "paused": False}
    assert again.get("/api/dags")[0]["paused"] is False
    assert again.get("/api/dags/nightly")["next_run_at"] is not None

    for action in ("pause", "activate"):
        assert_error(again.call("POST", f"/api/dags/nope/{action}"), 404, "not_found", "DAG 'nope'")


# ---------------------------------------------------------------- backfill

DAILY = """\
id: daily
schedule: "0 0 * * *"
timezone: UTC
tasks:
  - id: t
    command: "true"
"""
HOURLY = """\
id: hourly
schedule: "0 * * * *"
timezone: UTC
tasks:
  - id: t
    command: "true"
"""


def test_backfill_creates_deterministic_runs_once(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"daily.yaml": DAILY})
    span = {"start": "2023-12-31T12:00:00Z", "end": "2024-01-03T12:00:00Z"}
    result = nagare.call("POST", "/api/dags/daily/backfill", span)
    assert result.status == 201, result.body
    body = result.json
    assert body["created"] and body["skipped"] == []
    created = body["created"]
    assert len(created) == 3 and len(set(created)) == 3
    for run_id, day in zip(sorted(created), ("20240101", "20240102", "20240103"), strict=True):
        assert run_id.startswith("daily__") and day in run_id

    runs = nagare.get("/api/runs?trigger=backfill&limit=10")
    assert runs["total"] == 3
    assert sorted(r["execution_date"] for r in runs["data"]) == [
        "2024-01-01T00:00:00.000Z",
        "2024-01-02T00:00:00.000Z",
        "2024-01-03T00:00:00.000Z",
    ]
    for run in runs["data"]:
        assert nagare.wait_run(run["run_id"])["status"] == "success"

    again = nagare.call("POST", "/api/dags/daily/backfill", span)
    assert again.status == 201, again.body
    assert again.json["created"] == []
    assert sorted(again.json["skipped"]) == sorted(created)
    assert nagare.get("/api/runs")["total"] == 3


def test_backfill_dry_run_lists_the_slots_and_creates_nothing(
    nagare_factory: NagareFactory,
) -> None:
    capped = DAILY.replace("id: daily", "id: daily\nmax_active_runs: 2")
    nagare = nagare_factory(dags={"daily.yaml": capped})
    path = "/api/dags/daily/backfill"
    first = {"start": "2024-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}
    assert nagare.call("POST", path, first).status == 201
    span = {"start": "2024-01-01", "end": "2024-01-04", "dry_run": True}
    result = nagare.call("POST", path, span)
    assert result.status == 200, result.body
    body = result.json
    assert body["dry_run"] and body["created"] == [] and body["max_active_runs"] == 2
    assert [(s["execution_date"][:10], s["exists"]) for s in body["slots"]] == [
        ("2024-01-01", True),
        ("2024-01-02", False),
        ("2024-01-03", False),
        ("2024-01-04", False),
    ]
    assert "at most 2 active at once" in body["note"]
    assert nagare.get("/api/runs?trigger=backfill")["total"] == 1  # nothing created
    bad = nagare.call("POST", path, {**span, "dry_run": "yes"})
    assert_error(bad, 400, "bad_request", "dry_run")


def test_backfill_errors(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO, "daily.yaml": DAILY, "hourly.yaml": HOURLY})
    path = "/api/dags/daily/backfill"
    assert_error(
        nagare.call(
            "POST", "/api/dags/hello/backfill", {"start": "2024-01-01", "end": "2024-01-02"}
        ),
        422,
        "unprocessable",
        "no schedule",
    )
    assert_error(
        nagare.call("POST", path, {"start": "yesterday", "end": "2024-01-02T00:00:00Z"}),
        400,
        "bad_request",
        "yesterday",
    )
    assert_error(
        nagare.call("POST", path, {"start": "2024-01-05T00:00:00Z", "end": "2024-01-01T00:00:00Z"}),
        400,
        "bad_request",
        "before start",
    )
    assert_error(nagare.call("POST", path, {"start": "2024-01-01"}), 400, "bad_request", "end")
    assert_error(nagare.call("POST", path), 400, "bad_request", "start")
    assert_error(nagare.call("POST", path, raw=b"{oops"), 400, "bad_request", "not valid JSON")
    assert_error(
        nagare.call(
            "POST", "/api/dags/nope/backfill", {"start": "2024-01-01", "end": "2024-01-02"}
        ),
        404,
        "not_found",
        "DAG 'nope'",
    )
    # 60 days of hourly slots = 1440 > max_catchup_runs (1000): nothing is created.
    assert_error(
        nagare.call(
            "POST",
            "/api/dags/hourly/backfill",
            {"start": "2024-01-01T00:00:00Z", "end": "2024-03-01T00:00:00Z"},
        ),
        422,
        "unprocessable",
        "1000",
    )
    assert nagare.get("/api/runs?trigger=backfill")["total"] == 0


# ---------------------------------------------------------------- runs


def test_runs_list_filters_paginates_newest_first(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO, "failing.yaml": FAILING})
    empty = nagare.get("/api/runs")
    assert empty == {"data": [], "total": 0, "page": 1, "limit": 50}

    order = [finished_run(nagare, "hello") for _ in range(4)]
    order.append(finished_run(nagare, "failing"))
    newest_first = order[::-1]

    everything = nagare.get("/api/runs")
    assert [r["run_id"] for r in everything["data"]] == newest_first
    assert everything["total"] == 5
    assert all(set(r) == RUN_KEYS for r in everything["data"])
    assert nagare.get("/api/runs?status=all&trigger=all") == everything

    hello = nagare.get("/api/runs?dag_id=hello")
    assert hello["total"] == 4 and [r["run_id"] for r in hello["data"]] == newest_first[1:]
    failed = nagare.get("/api/runs?status=failed")
    assert [r["run_id"] for r in failed["data"]] == [order[-1]] and failed["total"] == 1
    assert nagare.get("/api/runs?status=success&dag_id=failing")["data"] == []
    assert nagare.get("/api/runs?trigger=manual")["total"] == 5
    assert nagare.get("/api/runs?trigger=backfill") == {
        "data": [],
        "total": 0,
        "page": 1,
        "limit": 50,
    }
    assert nagare.get("/api/runs?dag_id=nobody")["data"] == []

    pages = [nagare.get(f"/api/runs?limit=2&page={n}") for n in (1, 2, 3, 4)]
    assert [[r["run_id"] for r in p["data"]] for p in pages] == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:5],
        [],
    ]
    assert all(p["total"] == 5 and p["limit"] == 2 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]
    assert nagare.get("/api/runs?limit=500")["limit"] == 500


def test_runs_list_search_by_run_id_and_tag(nagare_factory: NagareFactory) -> None:
    tagged = FAILING.replace("id: failing\n", "id: failing\ntags: [nightly, demo]\n", 1)
    assert tagged != FAILING
    nagare = nagare_factory(dags={"hello.yaml": HELLO, "failing.yaml": tagged})
    hello = finished_run(nagare, "hello")
    failing = finished_run(nagare, "failing")

    def ids(query: str) -> list[str]:
        return [r["run_id"] for r in nagare.get(f"/api/runs?{query}")["data"]]

    assert ids(f"q={failing[-10:]}") == [failing]
    assert ids(f"q={quote(failing[:12].upper())}") == [failing]  # case-insensitive
    assert ids("q=__manual__") == [failing, hello]  # `_` is a character, not a wildcard
    assert ids("q=%25") == [] and ids("q=nothing-like-it") == []
    assert ids("q=%20%20") == [failing, hello]  # blank: no search
    assert ids("tag=demo") == [failing]
    assert ids("tag=demo&tag=other") == [failing]  # any of the tags
    assert ids("tag=other") == []  # no DAG has it: no run
    assert ids("tag=demo&status=success") == []
    assert nagare.get(f"/api/runs?tag=nightly&q={failing[-6:]}")["total"] == 1


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        ("limit=501", ("'limit'", "501")),
        ("limit=0", ("'limit'", "0")),
        ("limit=ten", ("'limit'", "'ten'")),
        ("page=0", ("'page'",)),
        ("page=-3", ("'page'",)),
        ("status=bogus", ("'status'", "'bogus'")),
        ("trigger=bogus", ("'trigger'", "'bogus'")),
    ],
)
def test_runs_list_rejects_bad_query_parameters(
    nagare: Nagare, query: str, fragments: tuple[str, ...]
) -> None:
    assert_error(nagare.call("GET", "/api/runs?" + query), 400, "bad_request", *fragments)


def test_runs_list_rejects_unknown_query_parameter(nagare: Nagare) -> None:
    assert_error(nagare.call("GET", "/api/runs?stauts=failed"), 422, "unprocessable", "stauts")


def test_run_by_id(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    run_id = finished_run(nagare)
    run = nagare.get(f"/api/runs/{run_id}")
    assert set(run) == RUN_KEYS
    assert run["run_id"] == run_id and run["status"] == "success"
    assert run["task_counts"] == {"success": 2}
    assert ISO_Z.match(run["started_at"]) and ISO_Z.match(run["completed_at"])
    assert_error(nagare.call("GET", "/api/runs/nope"), 404, "not_found", "run 'nope' not found")
    assert_error(nagare.call("GET", "/api/runs/bad%20id"), 400, "bad_request", "'bad id'")


KILLABLE = """\
id: killable
tasks:
  - id: long
    command: 'echo before-kill; sleep 30 & echo $! > {pidfile}; wait'
  - id: long2
    command: 'sleep 30'
  - id: after
    depends_on: [long]
    command: 'echo never'
"""


def test_kill_run_kills_processes_and_keeps_partial_output(
    nagare_factory: NagareFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "sleep.pid"
    nagare = nagare_factory(dags={"killable.yaml": KILLABLE.format(pidfile=pidfile)})
    run_id = nagare.trigger("killable")
    wait_task(nagare, run_id, "long", "running")
    wait_task(nagare, run_id, "long2", "running")
    wait_log(nagare, run_id, "long", "before-kill")
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5, message="the pid file")
    pid = int(pidfile.read_text())

    started = time.monotonic()
    result = nagare.call("POST", f"/api/runs/{run_id}/kill")
    assert result.status == 200, result.body
    assert set(result.json) == RUN_KEYS and result.json["run_id"] == run_id

    def cancelled() -> bool:
        return bool(nagare.get(f"/api/runs/{run_id}")["status"] == "cancelled")

    wait_for(cancelled, 2.0, message="the run to be cancelled")
    wait_for(lambda: pid_gone(pid), 2.0, message="the sleep process to die")
    assert time.monotonic() - started < 3
    tasks = nagare.tasks(run_id)
    assert {t: tasks[t]["status"] for t in tasks} == {
        "long": "cancelled",
        "long2": "cancelled",
        "after": "cancelled",
    }
    assert "before-kill" in nagare.log(run_id, "long")

    message = assert_error(nagare.call("POST", f"/api/runs/{run_id}/kill"), 409, "conflict")
    assert "cancelled" in message and run_id in message


def test_kill_run_errors(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    run_id = finished_run(nagare)
    message = assert_error(nagare.call("POST", f"/api/runs/{run_id}/kill"), 409, "conflict")
    assert "already finished" in message and "success" in message
    assert_error(nagare.call("POST", "/api/runs/nope/kill"), 404, "not_found", "run 'nope'")


# ---------------------------------------------------------------- tasks

MAPPED = """\
id: mapped
tasks:
  - id: source
    command: "echo 'preparing'; echo '[\\"a.csv\\", \\"b.csv\\"]'"
  - id: process_file
    type: map
    map_over: source
    command: "echo processing {{item}}"
  - id: zz_final
    depends_on: [process_file]
    command: "echo all done"
"""


def test_tasks_in_dag_order_with_map_children_after_parent(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"mapped.yaml": MAPPED})
    run_id = finished_run(nagare, "mapped")
    assert nagare.get(f"/api/runs/{run_id}")["status"] == "success"
    tasks = nagare.get(f"/api/runs/{run_id}/tasks")
    assert [t["task_id"] for t in tasks] == [
        "source",
        "process_file",
        "process_file[0]",
        "process_file[1]",
        "zz_final",
    ]
    ids = [t["id"] for t in tasks]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)
    assert all(t["status"] == "success" and t["run_id"] == run_id for t in tasks)
    children = [t for t in tasks if t["task_id"].startswith("process_file[")]
    assert [(c["map_index"], c["item"]) for c in children] == [(0, "a.csv"), (1, "b.csv")]
    assert tasks[0]["map_index"] is None

    child = nagare.get(f"/api/runs/{run_id}/tasks/process_file%5B0%5D")
    assert child["task_id"] == "process_file[0]" and child["item"] == "a.csv"
    assert child["id"] == ids[2]
    assert "processing a.csv" in nagare.log(run_id, "process_file[0]")
    assert nagare.get(f"/api/runs/{run_id}/tasks/process_file%5B1%5D")["item"] == "b.csv"

    assert_error(nagare.call("GET", "/api/runs/nope/tasks"), 404, "not_found", "run 'nope'")


def test_task_by_id(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    run_id = finished_run(nagare)
    task = nagare.get(f"/api/runs/{run_id}/tasks/t1")
    for key in ("id", "run_id", "task_id", "status", "attempt", "max_attempts", "pool", "command"):
        assert key in task, key
    for key in ("exit_code", "timed_out", "queued_at", "started_at", "completed_at"):
        assert key in task, key
    assert task["task_id"] == "t1" and task["status"] == "success" and task["exit_code"] == 0
    assert task["attempt"] == 1 and task["max_attempts"] == 1 and task["pool"] == "default"
    assert task["command"] == "echo step-one" and task["timed_out"] is False
    assert "step-one" in task["output_tail"]
    assert task["metrics"]["exit_code"] == 0 and task["metrics"]["executor_type"] == "local"

    base = f"/api/runs/{run_id}/tasks"
    assert_error(nagare.call("GET", base + "/nope"), 404, "not_found", "task 'nope' not found")
    assert_error(nagare.call("GET", base + "/t1%5B0%5D"), 404, "not_found", "'t1[0]'")
    assert_error(nagare.call("GET", base + "/bad%20id"), 400, "bad_request", "'bad id'")
    assert_error(nagare.call("GET", "/api/runs/nope/tasks/t1"), 404, "not_found", "run 'nope'")


def test_attempts_lists_every_attempt_oldest_first(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "retrying.yaml": """\
            id: retrying
            tasks:
              - id: flaky
                retries: 2
                retry_delay_seconds: 0
                command: 'echo "attempt $NAGARE_ATTEMPT"; exit 3'
            """
        }
    )
    run_id = finished_run(nagare, "retrying")
    assert nagare.get(f"/api/runs/{run_id}")["status"] == "failed"
    task = nagare.task(run_id, "flaky")
    assert task["attempt"] == 3 and task["max_attempts"] == 3 and task["status"] == "failed"
    attempts = nagare.get(f"/api/runs/{run_id}/tasks/flaky/attempts")
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status"] for a in attempts] == ["failed", "failed", "failed"]
    assert [a["exit_code"] for a in attempts] == [3, 3, 3]
    assert all(a["task_id"] == "flaky" and a["id"] == task["id"] for a in attempts)
    starts = [a["started_at"] for a in attempts]
    assert starts == sorted(starts)
    for number in (1, 2, 3):
        assert f"attempt {number}" in nagare.log(run_id, "flaky", attempt=number)

    base = f"/api/runs/{run_id}/tasks"
    assert_error(nagare.call("GET", base + "/nope/attempts"), 404, "not_found", "task 'nope'")
    assert_error(nagare.call("GET", "/api/runs/nope/tasks/flaky/attempts"), 404, "not_found")


def test_kill_task(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "sleepy.yaml": """\
            id: sleepy
            tasks:
              - id: nap
                command: "echo napping; sleep 30"
              - id: quick
                command: "echo quick"
            """
        }
    )
    run_id = nagare.trigger("sleepy")
    wait_task(nagare, run_id, "nap", "running")
    wait_task(nagare, run_id, "quick", "success")
    result = nagare.call("POST", f"/api/runs/{run_id}/tasks/nap/kill")
    assert result.status == 200, result.body
    assert result.json["task_id"] == "nap" and result.json["status"] == "cancelled"
    run = nagare.wait_run(run_id, timeout=5)
    assert run["status"] in ("failed", "cancelled")
    assert "napping" in nagare.log(run_id, "nap")

    message = assert_error(
        nagare.call("POST", f"/api/runs/{run_id}/tasks/nap/kill"), 409, "conflict"
    )
    assert "already finished" in message and "cancelled" in message
    message = assert_error(
        nagare.call("POST", f"/api/runs/{run_id}/tasks/quick/kill"), 409, "conflict"
    )
    assert "success" in message
    assert_error(nagare.call("POST", f"/api/runs/{run_id}/tasks/nope/kill"), 404, "not_found")
    assert_error(nagare.call("POST", "/api/runs/nope/tasks/nap/kill"), 404, "not_found")


BUSY = """\
id: busy
tasks:
  - id: first
    pool: solo
    command: "sleep 30"
  - id: second
    pool: solo
    command: "sleep 30"
  - id: waiter
    depends_on: [first, second]
    command: "echo done"
"""


def test_retry_refuses_unfinished_tasks(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"busy.yaml": BUSY}, worker_pools={"solo": 1})
    run_id = nagare.trigger("busy")

    def split() -> dict[str, str] | None:
        tasks = nagare.tasks(run_id)
        statuses = sorted(tasks[t]["status"] for t in ("first", "second"))
        return (
            {t: v["status"] for t, v in tasks.items()}
            if statuses
            == [
                "queued",
                "running",
            ]
            else None
        )

    statuses = wait_for(split, 10, message="one running and one queued task")
    assert statuses["waiter"] == "pending"
    for task_id, status in statuses.items():
        message = assert_error(
            nagare.call("POST", f"/api/runs/{run_id}/tasks/{task_id}/retry"), 409, "conflict"
        )
        assert f"'{task_id}'" in message and status in message
    assert_error(nagare.call("POST", f"/api/runs/{run_id}/tasks/nope/retry"), 404, "not_found")
    assert_error(nagare.call("POST", "/api/runs/nope/tasks/first/retry"), 404, "not_found")
    assert nagare.call("POST", f"/api/runs/{run_id}/kill").status == 200
    nagare.wait_run(run_id, timeout=5)


def test_retry_reopens_the_run_and_runs_upstream_failed_dependants(
    nagare_factory: NagareFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    nagare = nagare_factory(
        dags={
            "flaky.yaml": f"""\
            id: flaky
            tasks:
              - id: fragile
                command: 'test -f {flag} || exit 1; sleep 0.5; echo recovered'
              - id: downstream
                depends_on: [fragile]
                command: 'echo downstream-ran'
            """
        }
    )
    run_id = nagare.trigger("flaky")
    first = nagare.wait_run(run_id)
    assert first["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["fragile"]["status"] == "failed"
    assert tasks["downstream"]["status"] == "upstream_failed"

    flag.write_text("yes")
    result = nagare.call("POST", f"/api/runs/{run_id}/tasks/fragile/retry")
    assert result.status == 200, result.body
    assert result.json["task_id"] == "fragile" and result.json["attempt"] >= 1
    assert result.json["status"] in ("pending", "queued", "running")
    reopened = nagare.get(f"/api/runs/{run_id}")
    assert reopened["status"] in ("queued", "running"), reopened

    final = nagare.wait_run(run_id)
    assert final["status"] == "success"
    assert final["completed_at"] > first["completed_at"]
    tasks = nagare.tasks(run_id)
    assert tasks["fragile"]["status"] == "success" and tasks["fragile"]["attempt"] == 2
    assert tasks["downstream"]["status"] == "success"
    assert "downstream-ran" in nagare.log(run_id, "downstream")
    attempts = nagare.get(f"/api/runs/{run_id}/tasks/fragile/attempts")
    assert [(a["attempt"], a["status"]) for a in attempts] == [(1, "failed"), (2, "success")]


def test_retry_a_successful_task_runs_it_again(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    run_id = finished_run(nagare)
    result = nagare.call("POST", f"/api/runs/{run_id}/tasks/t2/retry")
    assert result.status == 200, result.body
    assert nagare.wait_run(run_id)["status"] == "success"
    task = nagare.task(run_id, "t2")
    assert task["attempt"] == 2 and task["status"] == "success"
    assert "step-two" in nagare.log(run_id, "t2", attempt=2)
    assert nagare.task(run_id, "t1")["attempt"] == 1


# ---------------------------------------------------------------- auth


def api_routes(nagare: Nagare) -> list[Route]:
    """Routes of the table that the API key guards or opens (webhooks use per-DAG HMAC)."""
    return [
        r
        for r in nagare.app.api.routes
        if r.path.startswith("/api/") and not r.path.startswith("/api/webhooks/")
    ]


def known_params(route: Route) -> bool:
    return set(re.findall(r"\{([a-z_]+)\}", route.path)) <= {"dag_id", "run_id", "task_id"}


def test_every_keyed_route_needs_the_key(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO}, api_key="k")
    run_id = finished_run(nagare)
    open_paths = {  # (spec: open) -> their answer without a key (signing in: 409 in key mode)
        "/api/health": 200,
        "/api/openapi.json": 200,
        "/api/schema/dag.json": 200,
        "/api/auth/config": 200,
        "/api/auth/login": 409,
        "/api/auth/oidc/login": 409,  # single sign-on: auth_mode oidc only
        "/api/auth/oidc/callback": 409,
    }
    checked = 0
    for route in api_routes(nagare):
        url = nagare.url + sample_path(route, run_id)
        if route.path in open_paths:
            assert route.auth == "open", route.path
            assert http(route.method, url).status == open_paths[route.path], route.path
            continue
        assert route.auth != "open", f"{route.method} {route.path} must not be open"
        assert_error(http(route.method, url), 401, "unauthorized", "missing API key")
        for headers, fragment in (
            ({"Authorization": "Bearer wrong"}, "invalid API key"),
            ({"Authorization": "Bearer kk"}, "invalid API key"),
            ({"Authorization": "Bearer "}, "missing API key"),
            ({"Authorization": "Basic k"}, "missing API key"),
            ({"Authorization": "k"}, "missing API key"),
            ({"X-Api-Key": "k"}, "missing API key"),
        ):
            result = http(route.method, url, headers=headers)
            assert_error(result, 401, "unauthorized", fragment)
            assert result.headers.get("WWW-Authenticate", "").startswith("Bearer")
        checked += 1
    assert checked >= 20
    assert nagare.get("/api/runs")["total"] == 1  # none of the refused POSTs did anything


def test_the_key_is_accepted_as_bearer_and_as_token_only_on_logs(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO}, api_key="k")
    run_id = finished_run(nagare)
    bearer = {"Authorization": "Bearer k"}
    token_routes = []
    for route in api_routes(nagare):
        if route.method != "GET":
            continue
        url = nagare.url + sample_path(route, run_id)
        accepted = http("GET", url, headers=bearer)
        # accounts (auth_mode builtin or oidc) and single sign-on (oidc only): 409 here
        if route.path in ("/api/users", "/api/keys") or route.path.startswith("/api/auth/oidc/"):
            assert accepted.status == 409, (route.path, accepted.body)
        elif known_params(route):
            assert accepted.status == 200, (route.path, accepted.body)
        else:
            assert accepted.status != 401, route.path
        with_token = http("GET", url + "?token=k")
        if route.path.endswith("/logs"):
            token_routes.append(route.path)
            assert with_token.status == 200, with_token.body
            assert "step-one" in with_token.text
            assert_error(http("GET", url + "?token=wrong"), 401, "unauthorized", "invalid")
        elif route.auth != "open":
            assert_error(with_token, 401, "unauthorized", "missing API key")
    assert token_routes == ["/api/runs/{run_id}/tasks/{task_id}/logs"]
    for route in api_routes(nagare):
        if route.method != "GET" and route.auth != "open":
            url = nagare.url + sample_path(route, run_id) + "?token=k"
            assert_error(http(route.method, url), 401, "unauthorized")
    for scheme in ("Bearer", "bearer"):
        result = http(
            "POST", nagare.url + "/api/dags/hello/runs", headers={"Authorization": f"{scheme} k"}
        )
        assert result.status == 201, result.body


# ---------------------------------------------------------------- protocol errors


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/dags/hello/runs", "POST"),
        ("DELETE", "/api/dags", "GET"),
        ("PUT", "/api/health", "GET"),
        ("POST", "/api/runs", "GET"),
        ("GET", "/api/runs/x/kill", "POST"),
        ("DELETE", "/api/runs/x/tasks/t1", "GET"),
    ],
)
def test_wrong_method_is_405(nagare: Nagare, method: str, path: str, allowed: str) -> None:
    assert_error(nagare.call(method, path), 405, "method_not_allowed", method, allowed)


def test_405_lists_allowed_methods_in_allow_header(nagare: Nagare) -> None:
    result = nagare.call("DELETE", "/api/dags")
    assert result.status == 405
    assert result.headers.get("Allow") == "GET, POST"  # POST creates a DAG (the editor)


@pytest.mark.parametrize(
    "path", ["/api/nope", "/api/dags/hello/nope", "/api/runs/x/tasks/y/z/w", "/api", "/api/"]
)
def test_unknown_api_path_is_404_json(nagare: Nagare, path: str) -> None:
    assert_error(nagare.call("GET", path), 404, "not_found")


def test_request_body_over_the_limit_is_413(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"hello.yaml": HELLO}, max_body_bytes=100)
    big = {"conf": {"A": "x" * 200}}
    message = assert_error(
        nagare.call("POST", "/api/dags/hello/runs", big), 413, "payload_too_large"
    )
    assert "100" in message
    exact = json.dumps({"conf": {"A": "x" * 81}}).encode()
    assert len(exact) == 100
    assert nagare.call("POST", "/api/dags/hello/runs", raw=exact).status == 201
    assert_error(
        nagare.call("POST", "/api/dags/hello/backfill", raw=b"{" + b" " * 200 + b"}"),
        413,
        "payload_too_large",
    )


def test_no_error_leaks_internals(nagare_factory: NagareFactory) -> None:
    """A sweep of odd requests: every answer is a clean JSON error (or success)."""
    nagare = nagare_factory(dags={"hello.yaml": HELLO})
    run_id = finished_run(nagare)
    probes: list[tuple[str, str, bytes | None]] = [
        ("POST", "/api/dags/hello/runs", b'{"conf": {"A": {"deep": [1, {"x": null}]}}}'),
        ("POST", "/api/dags/hello/runs", b"[[[[[[[[[["),
        ("POST", "/api/dags/hello/runs", b'"just a string"'),
        ("POST", "/api/dags/hello/runs", b"1e999999"),
        ("POST", "/api/dags/hello/backfill", b'{"start": 5, "end": null}'),
        ("POST", "/api/dags/hello/backfill", b'{"start": [], "end": {}}'),
        ("POST", "/api/dags/hello/backfill", b"[]"),
        ("GET", "/api/runs?page=99999999999999999999", None),
        ("GET", "/api/runs?limit=1.5", None),
        ("GET", f"/api/runs/{run_id}/tasks/t1/logs?tail=x", None),
        ("GET", f"/api/runs/{run_id}/tasks/t1/logs?attempt=-1", None),
        ("GET", "/api/runs/%ff%fe", None),
        ("GET", "/api/dags/%00", None),
        ("GET", "/api/runs/" + "a" * 500, None),
    ]
    for method, path, raw in probes:
        result = nagare.call(method, path, raw=raw)
        assert result.status < 500, (path, result.status, result.body)
        assert not LEAKS.search(result.text), (path, result.text)
        if result.status >= 400:
            assert_error(result, result.status, result.json["error"]["code"])


# ---------------------------------------------------------------- static


def test_root_serves_the_dashboard(nagare: Nagare) -> None:
    result = nagare.call("GET", "/")
    assert result.status == 200
    assert result.headers["Content-Type"].startswith("text/html")
    assert b"<html" in result.body.lower()
    deep = nagare.call("GET", "/runs/some-run")  # a client-side route gets the app shell
    assert deep.status == 200 and deep.body == result.body
    assert_error(nagare.call("GET", "/missing.js"), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc/passwd",
        "/%252e%252e/%252e%252e/etc/passwd",
        "/..%5c..%5cetc/passwd",
        "/../nagare/app.py",
        "/%2e%2e/nagare/app.py",
        "/..%2fpyproject.toml",
        "//etc/passwd",
        "/.%2e/.%2e/etc/passwd",
    ],
)
def test_static_paths_never_escape_web_static(nagare: Nagare, path: str) -> None:
    index = nagare.call("GET", "/").body
    status, body = raw_get(nagare, path)
    assert status in (200, 404), (status, body)
    if status == 200:
        assert body == index
    for secret in (b"root:", b"composition root", b"[build-system]"):
        assert secret not in body
