"""The incremental planner decides exactly what a full pass would, from any settled state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nagare.engine.next_steps import Plan, plan_changes, plan_run
from nagare.models import DagDef, TaskDef, TaskState, TaskStatus, TaskType

S = TaskStatus
FINISHED = [S.SUCCESS, S.FAILED, S.CANCELLED]


@st.composite
def dags(draw: st.DrawFn) -> DagDef:
    count = draw(st.integers(1, 12))
    tasks = []
    for index in range(count):
        deps = draw(st.sets(st.integers(0, index - 1), max_size=3)) if index else set()
        tasks.append(
            TaskDef(
                task_id=f"t{index}", command="x", depends_on=tuple(f"t{d}" for d in sorted(deps))
            )
        )
    return DagDef(dag_id="d", tasks=tuple(tasks))


def states(dag: DagDef, status: dict[str, TaskStatus]) -> dict[str, TaskState]:
    return {
        t.task_id: TaskState(f"ti-{t.task_id}", "r", t.task_id, status[t.task_id], "p", i)
        for i, t in enumerate(dag.tasks)
    }


def settle(dag: DagDef, status: dict[str, TaskStatus]) -> None:
    """Apply full plans until nothing is left to decide (what the engine reaches after a pass)."""
    while True:
        plan = plan_run(dag, dag.order, list(states(dag, status).values()), {}, False)
        if not (plan.queue or plan.upstream_failed):
            return
        for task in plan.queue:
            status[task.task_id] = S.QUEUED
        for task in plan.upstream_failed:
            status[task.task_id] = S.UPSTREAM_FAILED


def summary(plan: Plan) -> tuple[set[str], set[str], object]:
    return (
        {t.task_id for t in plan.queue},
        {t.task_id for t in plan.upstream_failed},
        plan.run_status,
    )


@settings(max_examples=300, deadline=None)
@given(dag=dags(), data=st.data())
def test_incremental_plan_matches_a_full_plan(dag: DagDef, data: st.DataObject) -> None:
    status = {t.task_id: S.PENDING for t in dag.tasks}
    settle(dag, status)
    waits: dict[str, int] = {}  # kept across passes, as the scheduler's view of a run keeps it
    for _ in range(data.draw(st.integers(1, 4))):
        active = sorted(k for k, v in status.items() if v is S.QUEUED)
        if not active:
            break
        finished = data.draw(st.lists(st.sampled_from(active), min_size=1, unique=True))
        for task_id in finished:
            status[task_id] = data.draw(st.sampled_from(FINISHED))
        by_task = states(dag, status)
        full = plan_run(dag, dag.order, list(by_task.values()), {}, False)
        partial = plan_changes(dag, dag.order, by_task, {}, False, finished, waits)
        assert summary(partial) == summary(full)
        settle(dag, status)


def test_map_parents_are_always_reconsidered() -> None:
    dag = DagDef(
        dag_id="d",
        tasks=(
            TaskDef(task_id="src", command="x"),
            TaskDef(
                task_id="m", type=TaskType.MAP, map_over="src", command="x", depends_on=("src",)
            ),
            TaskDef(task_id="after", command="x", depends_on=("m",)),
        ),
    )
    status = {"src": S.SUCCESS, "m": S.RUNNING, "after": S.PENDING}
    plan = plan_changes(dag, dag.order, states(dag, status), {"m": {S.SUCCESS: 3}}, False, [])
    assert [d[1] for d in plan.map_done] == [S.SUCCESS]
    assert [t.task_id for t in plan.queue] == ["after"]


def test_a_wide_fan_in_resumes_where_it_waited() -> None:
    """The task after a 300-wide fan-out: deps finishing in any order, one per pass, with the
    remembered wait position, queue it exactly when the last one succeeds."""
    wide = tuple(TaskDef(task_id=f"w{i}", command="x") for i in range(300))
    end = TaskDef(task_id="end", command="x", depends_on=tuple(t.task_id for t in wide))
    dag = DagDef(dag_id="d", tasks=(*wide, end))
    status = {t.task_id: S.QUEUED for t in wide} | {"end": S.PENDING}
    waits: dict[str, int] = {}
    order = [f"w{i}" for i in (*range(150, 300), *range(149, -1, -1))]
    for done, task_id in enumerate(order, start=1):
        status[task_id] = S.SUCCESS
        plan = plan_changes(dag, dag.order, states(dag, status), {}, False, [task_id], waits)
        assert [t.task_id for t in plan.queue] == (["end"] if done == len(order) else [])
