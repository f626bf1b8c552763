"""The DAG page's API: the grid (runs x tasks, one compact matrix), the calendar (runs per day
by status) and the stored versions of a DAG, against a real server with real runs."""

from __future__ import annotations

import time
from typing import Any

from conftest import wait_for

from nagare.engine.new_run import build_run
from nagare.http.dagpage_api import calendar_start
from nagare.models import DagDef, RunStatus, TaskDef, TaskInstance, TaskStatus, Trigger
from nagare.store import DAY_MS, Store

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


def _dag(dag_id: str, *tasks: str) -> DagDef:
    return DagDef(dag_id, tasks=tuple(TaskDef(t) for t in tasks))


def _run(store: Store, dag: DagDef, at: int, states: dict[str, str], kids: int = 0) -> str:
    """A finished run of `dag` at `at` with its tasks in `states` (and `kids` children of a
    map task `m`, every third one failed)."""
    version = store.dags.save_version(dag, at)
    run, tasks = build_run(dag, version, Trigger.MANUAL, at, {}, at, f"{dag.dag_id}@{at}")
    run.status, run.completed_at = RunStatus.FAILED, at
    for task in tasks:
        task.status, task.queued_at = TaskStatus(states[task.task_id]), None
    children = [
        TaskInstance(
            id=f"{run.run_id}/{k}",
            run_id=run.run_id,
            task_id=f"m[{k}]",
            base_task_id="m",
            map_index=k,
            position=0,
            status=TaskStatus.FAILED if k % 3 == 0 else TaskStatus.SUCCESS,
            pool="default",
        )
        for k in range(kids)
    ]
    assert store.runs.insert(run, [*tasks, *children])
    return run.run_id


def test_history_store_grid_days_and_versions(store: Store) -> None:
    day = 20_000 * DAY_MS
    old = _dag("d", "gone", "a", "m")
    new = _dag("d", "m", "a", "added")
    first = _run(store, old, day + 1000, {"gone": "success", "a": "failed", "m": "failed"}, 6)
    second = _run(store, new, day + 2000, {"m": "success", "a": "skipped", "added": "queued"}, 2)
    _run(store, _dag("other", "a"), day + 3000, {"a": "success"})  # another DAG: never seen
    grid = store.history.grid("d", 10)
    assert [r.run_id for r in grid.runs] == [second, first]
    # the newest run's tasks in its order, then the older runs' own
    assert grid.tasks == ["m", "a", "added", "gone"]
    assert grid.cells[("m", first)].status == "failed"
    assert grid.cells[("m", first)].children == {"failed": 2, "success": 4}
    assert grid.cells[("m", second)].children == {"failed": 1, "success": 1}
    assert ("added", first) not in grid.cells and ("gone", second) not in grid.cells
    assert [r.run_id for r in store.history.grid("d", 1).runs] == [second]

    # days of the execution date, shifted by the offset: the runs, 1 s apart, share a day
    # unless an offset puts a midnight between them
    assert [(d.day, d.status, d.count) for d in store.history.per_day("d", 0, 0)] == [
        (20_000, "failed", 2)
    ]
    edge = -(day + 1500) % DAY_MS  # an offset that puts midnight between the two runs
    split = store.history.per_day("d", 0, edge)
    assert [(d.day, d.count) for d in split] == [(20_000, 1), (20_001, 1)]
    assert store.history.per_day("d", day + 1500, 0)[0].count == 1  # since: execution date

    versions = store.history.versions("d")
    assert [(v.runs, v.last_run_id) for v in versions] == [(1, second), (1, first)]
    assert versions[0].first_seen == day + 2000
    text, seen = store.history.version_of("d", versions[1].digest) or ("", 0)
    assert '"gone"' in text and seen == day + 1000
    assert store.history.version_of("other", versions[1].digest) is None  # not its DAG's
