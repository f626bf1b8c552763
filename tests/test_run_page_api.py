"""The run page's backend (issue 18): one rule for a killed run and a killed task (cancelled),
why a queued task waits (`reason`), and every attempt of a run in one request."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Nagare, wait_for

from nagare.engine.next_steps import ended_status, plan_run
from nagare.metrics import PoolInfo, queued_reason
from nagare.models import DagDef, RunStatus, TaskDef, TaskInstance, TaskType
from nagare.models import TaskStatus as S

NagareFactory = Callable[..., Nagare]

# ---------------------------------------------------------------- run status (pure)


def test_a_run_ends_cancelled_when_its_only_non_successes_were_killed() -> None:
    assert ended_status([S.SUCCESS, S.SKIPPED]) is RunStatus.SUCCESS
    assert ended_status([S.SUCCESS, S.CANCELLED, S.UPSTREAM_FAILED]) is RunStatus.CANCELLED
    assert ended_status([S.CANCELLED]) is RunStatus.CANCELLED
    # a real failure wins: the run failed, whatever else was killed
    assert ended_status([S.FAILED, S.CANCELLED, S.UPSTREAM_FAILED]) is RunStatus.FAILED
    assert ended_status([S.SUCCESS, S.UPSTREAM_FAILED]) is RunStatus.FAILED


def instances(statuses: dict[str, S]) -> list[TaskInstance]:
    return [
        TaskInstance(id=f"ti-{t}", run_id="r", task_id=t, base_task_id=t, status=s)
        for t, s in statuses.items()
    ]


def test_killing_one_task_plans_the_same_outcome_as_killing_the_run() -> None:
    dag = DagDef(
        "d",
        (
            TaskDef(task_id="a", command="true"),
            TaskDef(task_id="b", command="true", depends_on=("a",)),
            TaskDef(task_id="c", command="true"),
        ),
    )
    first = plan_run(
        dag, dag.order, instances({"a": S.CANCELLED, "b": S.PENDING, "c": S.SUCCESS}), {}, False
    )
    assert [t.task_id for t in first.upstream_failed] == ["b"]
    assert first.run_status is RunStatus.CANCELLED
    killed = plan_run(
        dag, dag.order, instances({"a": S.CANCELLED, "b": S.CANCELLED, "c": S.SUCCESS}), {}, True
    )
    assert killed.run_status is RunStatus.CANCELLED


def test_a_map_whose_only_unsuccessful_children_were_killed_is_cancelled() -> None:
    dag = DagDef(
        "d",
        (
            TaskDef(task_id="items", command="true"),
            TaskDef(task_id="each", command="true", type=TaskType.MAP, map_over="items"),
        ),
    )
    tasks = instances({"items": S.SUCCESS, "each": S.RUNNING})
    plan = plan_run(dag, dag.order, tasks, {"each": {S.SUCCESS: 2, S.CANCELLED: 1}}, False)
    assert plan.map_done == [("ti-each", S.CANCELLED, "1 of 3 map children were killed")]
    assert plan.run_status is RunStatus.CANCELLED
    plan = plan_run(dag, dag.order, tasks, {"each": {S.FAILED: 1, S.CANCELLED: 1}}, False)
    assert plan.map_done[0][1] is S.FAILED and plan.run_status is RunStatus.FAILED


# ---------------------------------------------------------------- queued reason (pure)


def test_the_reason_a_queued_task_waits() -> None:
    assert queued_reason("gpu", None) == "waiting for a worker in pool gpu — none online"
    offline = PoolInfo("gpu", 0, 0, 3, 0, remote_workers=2, remote_workers_online=0)
    assert (
        queued_reason("gpu", offline)
        == "waiting for a worker in pool gpu — none online (2 offline)"
    )
    full = PoolInfo("default", 4, 4, 2, 4)
    assert queued_reason("default", full) == "pool full: 4/4 running"
    mixed = PoolInfo("p", 1, 1, 1, 3, remote_workers=1, remote_workers_online=1, remote_capacity=2)
    assert queued_reason("p", mixed) == "pool full: 3/3 running"
    free = PoolInfo("p", 4, 1, 1, 1)
    assert queued_reason("p", free) == "waiting for a slot in pool p: 1/4 running"


# ---------------------------------------------------------------- end to end

DAGS = {
    "stuck.yaml": """\
    id: stuck
    tasks:
      - id: train
        command: "echo never"
        pool: gpu
    """,
    "flaky.yaml": """\
    id: flaky
    tasks:
      - id: try
        command: "test $NAGARE_ATTEMPT -ge 2"
        retries: 1
        retry_delay_seconds: 0
      - id: nap
        command: "sleep 30"
      - id: after
        command: "true"
        depends_on: [nap]
    """,
}


def test_a_queued_task_says_why_a_killed_task_cancels_its_run_and_attempts_come_in_one_request(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags=DAGS)
    stuck = nagare.trigger("stuck")
    task = wait_for(lambda: nagare.get(f"/api/runs/{stuck}/tasks/train"), message="the task")
    assert task["status"] == "queued"
    assert task["reason"] == "waiting for a worker in pool gpu — none online"
    [listed] = nagare.get(f"/api/runs/{stuck}/tasks")
    assert listed["reason"] == task["reason"]
    run = nagare.get(f"/api/runs/{stuck}")
    assert run["started_at"] is None  # never started: the page shows no start time

    flaky = nagare.trigger("flaky")
    wait_for(
        lambda: (
            nagare.get(f"/api/runs/{flaky}/tasks/try")["status"] == "success"
            and nagare.get(f"/api/runs/{flaky}/tasks/nap")["status"] == "running"
        ),
        message="try to succeed on its second attempt while nap runs",
    )
    assert nagare.call("POST", f"/api/runs/{flaky}/tasks/nap/kill").status == 200
    run = nagare.wait_run(flaky, timeout=5)
    assert run["status"] == "cancelled"  # as if the run had been killed
    # the killed attempt's row closes when its process is gone
    attempts = wait_for(
        lambda: (a := nagare.get(f"/api/runs/{flaky}/attempts"))[0]["completed_at"] and a,
        message="the killed attempt to close",
    )
    assert [(a["task_id"], a["attempt"], a["status"]) for a in attempts] == [
        ("nap", 1, "cancelled"),
        ("try", 1, "failed"),
        ("try", 2, "success"),
    ]
    assert all(a["started_at"] and a["completed_at"] for a in attempts)
    assert nagare.call("GET", "/api/runs/nope/attempts").status == 404
