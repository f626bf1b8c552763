"""The DAG page's API: the grid (runs x tasks, one compact matrix), the calendar (runs per day
by status) and the stored versions of a DAG, against a real server with real runs."""

from __future__ import annotations

import time
from typing import Any

from conftest import wait_for

from nagare.http.dagpage_api import calendar_start
from nagare.store import DAY_MS

FLOW = """
id: flow
schedule: "workflow_dispatch"
tasks:
  - id: items
    command: echo '["a", "b", "c"]'
  - id: each
    type: map
    map_over: items
    command: '[ "{{item}}" != "b" ]'
  - id: after
    depends_on: [each]
    trigger_rule: all_done
    command: echo after
"""
FLOW_V2 = FLOW.replace("echo after", "echo after v2").replace(
    "tasks:\n", "tasks:\n  - id: first\n    command: echo first\n"
)


def test_grid_calendar_and_versions(nagare_factory: Any) -> None:
    server = nagare_factory(dags={"flow.yaml": FLOW})
    first = server.trigger("flow")
    assert server.wait_run(first)["status"] == "failed"
    grid = server.get("/api/dags/flow/grid?limit=10")
    assert [r["run_id"] for r in grid["runs"]] == [first]
    assert [t["task_id"] for t in grid["tasks"]] == ["items", "each", "after"]
    assert [t["map"] for t in grid["tasks"]] == [False, True, False]
    codes = grid["codes"]
    assert [codes[row] for row in grid["matrix"]] == ["success", "failed", "success"]
    assert grid["maps"] == {"each": [{"success": 2, "failed": 1}]}

    # a new version: the old run keeps its own, the list says which is loaded now
    v1 = server.get(f"/api/runs/{first}")["dag_version"]
    (server.root / "dags" / "flow.yaml").write_text(FLOW_V2)
    wait_for(
        lambda: server.get("/api/dags/flow")["tasks"][0]["task_id"] == "first", 10, message="v2"
    )
    versions = server.get("/api/dags/flow/versions")
    assert [v["stored"] for v in versions["versions"]] == [False, True]  # v2 not run yet
    assert versions["versions"][1] | {"first_seen": None, "last_run_at": None} == {
        "digest": v1,
        "first_seen": None,
        "runs": 1,
        "last_run_id": first,
        "last_run_at": None,
        "current": False,
        "stored": True,
    }
    current = versions["current"]
    assert server.get(f"/api/dags/flow/versions/{current}")["tasks"][0]["task_id"] == "first"
    old = server.get(f"/api/dags/flow/versions/{v1}")
    assert [t["task_id"] for t in old["tasks"]] == ["items", "each", "after"]
    assert '"command": "echo after"' in old["text"] and not old["current"]
    second = server.trigger("flow")
    server.wait_run(second)
    versions = server.get("/api/dags/flow/versions")["versions"]
    assert [(v["digest"], v["runs"], v["current"]) for v in versions] == [
        (current, 1, True),
        (v1, 1, False),
    ]
    grid = server.get("/api/dags/flow/grid")
    assert [r["run_id"] for r in grid["runs"]] == [second, first]
    assert grid["runs"][0]["dag_version"] == current
    rows = dict(zip([t["task_id"] for t in grid["tasks"]], grid["matrix"], strict=True))
    assert rows == {"first": "s.", "items": "ss", "each": "ff", "after": "ss"}

    offset = -int(time.localtime().tm_gmtoff // 60)  # any offset works; a non-zero one here
    cal = server.get(f"/api/dags/flow/calendar?days=7&utc_offset_minutes={offset}")
    assert len(cal["days"]) == 1 and cal["days"][0]["counts"] == {"failed": 2}
    assert cal["utc_offset_minutes"] == offset

    for path, status in [
        ("/api/dags/nope/grid", 404),
        ("/api/dags/nope/versions", 404),
        ("/api/dags/flow/versions/0123", 404),
        ("/api/dags/flow/grid?limit=0", 400),
        ("/api/dags/flow/grid?limit=x", 400),
        ("/api/dags/flow/calendar?utc_offset_minutes=9999", 400),
    ]:
        assert server.call("GET", path).status == status, path


def test_calendar_start_is_the_first_moment_of_a_local_day() -> None:
    now = 20_000 * DAY_MS + 3_600_000  # 01:00 UTC
    assert calendar_start(now, 1, 0) == 20_000 * DAY_MS
    assert calendar_start(now, 365, 0) == (20_000 - 364) * DAY_MS
    # at UTC-2 it is still 23:00 the day before
    assert calendar_start(now, 1, -7_200_000) == 19_999 * DAY_MS + 7_200_000
