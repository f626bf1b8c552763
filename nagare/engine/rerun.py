"""What a manual retry re-opens (`POST /api/runs/{run}/retry`, task retry with
`?downstream=true`). Pure: the DAG and the statuses of a run's tasks in, task ids out."""

from __future__ import annotations

from collections.abc import Mapping

from nagare.engine.next_steps import descendants
from nagare.models import DagDef, TaskStatus, topological_order

# The statuses a run-level retry re-opens (Airflow's "clear failed").
RETRIED = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})


def run_retry(dag: DagDef, statuses: Mapping[str, TaskStatus]) -> tuple[list[str], list[str]]:
    """(tasks to retry at once, tasks to re-open as pending), in run order: every failed,
    upstream_failed or cancelled task; one none of whose dependencies is re-opened too is
    retried at once, the others wait (pending) for their dependencies to run again."""
    chosen = [t for t in topological_order(dag.tasks) if statuses.get(t) in RETRIED]
    reopened = set(chosen)
    now: list[str] = []
    later: list[str] = []
    for task_id in chosen:
        task = dag.task(task_id)
        deps = task.depends_on if task is not None else ()
        (later if reopened.intersection(deps) else now).append(task_id)
    return now, later


def downstream_reruns(dag: DagDef, task_id: str, statuses: Mapping[str, TaskStatus]) -> list[str]:
    """Task retry with `?downstream=true`: the successful (or skipped) tasks that depend on
    `task_id`, directly or not, re-opened to run again after it (Airflow's "clear downstream")."""
    rerun = {TaskStatus.SUCCESS, TaskStatus.SKIPPED}
    return [t for t in descendants(dag, task_id) if statuses.get(t) in rerun]
