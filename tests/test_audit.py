"""The audit log end to end: a real server on port 0 records every state-changing action with
who, from where, on what and how it ended; `GET /api/audit` filters and pages it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Nagare

KEY = "planted-audit-key-7c6b5a"

HELLO = """
    id: hello
    tasks:
      - id: say
        command: echo hello
"""


@pytest.fixture
def keyed(nagare_factory: Callable[..., Nagare]) -> Nagare:
    return nagare_factory({"hello.yaml": HELLO}, api_key=KEY)


def audit(server: Nagare, query: str = "") -> dict[str, Any]:
    return server.get("/api/audit" + query)  # type: ignore[no-any-return]


def entries(server: Nagare, query: str = "") -> list[dict[str, Any]]:
    return audit(server, query)["data"]  # type: ignore[no-any-return]


def test_an_action_is_recorded_with_who_when_where_what_and_how(keyed: Nagare) -> None:
    run_id = keyed.trigger("hello")
    [entry] = entries(keyed)
    assert entry["actor"] == "api-key"
    assert entry["action"] == "dag.trigger"
    assert entry["target"] == "dag:hello"
    assert entry["address"] == "127.0.0.1"
    assert entry["outcome"] == "ok"
    assert entry["at"].endswith("Z")
    assert run_id in entry["detail"]


def test_the_audit_log_needs_credentials(keyed: Nagare) -> None:
    result = keyed.call("GET", "/api/audit", headers={"Authorization": ""})
    assert result.status == 401
    assert result.json["error"]["code"] == "unauthorized"


def test_filters_and_paging(keyed: Nagare) -> None:
    keyed.trigger("hello")
    assert keyed.call("POST", "/api/dags/hello/pause").status == 200
    assert keyed.call("POST", "/api/dags/hello/activate").status == 200
    assert keyed.call("POST", "/api/dags/nope/pause").status == 404
    everything = audit(keyed)
    assert everything["total"] == 4
    actions = [e["action"] for e in everything["data"]]
    assert actions == ["dag.pause", "dag.activate", "dag.pause", "dag.trigger"]  # newest first
    assert [e["action"] for e in entries(keyed, "?action=dag.pause")] == ["dag.pause"] * 2
    assert len(entries(keyed, "?action=dag.")) == 4
    assert entries(keyed, "?action=run.") == []
    assert [e["target"] for e in entries(keyed, "?outcome=not_found")] == ["dag:nope"]
    assert len(entries(keyed, "?target=dag:hello")) == 3
    assert len(entries(keyed, "?actor=api-key")) == 4
    assert entries(keyed, "?actor=someone") == []
    page = audit(keyed, "?limit=3&page=2")
    assert (page["total"], page["page"], page["limit"]) == (4, 2, 3)
    assert [e["action"] for e in page["data"]] == ["dag.trigger"]
    first = everything["data"][-1]["at"]
    last = everything["data"][0]["at"]
    assert len(entries(keyed, f"?since={first}")) == 4
    assert entries(keyed, f"?until={first}") == []
    assert len(entries(keyed, f"?since={last}&until=2999-01-01")) >= 1
    assert entries(keyed, "?since=2999-01-01T00:00:00Z") == []


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?bogus=1", 422),
        ("?since=yesterday", 400),
        ("?until=2026-13-01", 400),
        ("?limit=0", 400),
        ("?limit=501", 400),
        ("?page=x", 400),
        ("?actor=" + "a" * 201, 400),
    ],
)
def test_a_bad_query_is_refused_with_the_error_shape(
    keyed: Nagare, query: str, status: int
) -> None:
    result = keyed.call("GET", "/api/audit" + query)
    assert result.status == status, result.body
    assert set(result.json["error"]) == {"code", "message"}
