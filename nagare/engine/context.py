"""A task's context (the JSON its templates and its `when:` condition see), the outputs of its
upstream tasks as environment variables, and the assignment of a task that uses them. Pure:
the caller reads the run's task rows (`UpstreamRow`) only when the task needs them
(`needs_upstream`), so a task that uses none of this costs nothing extra.

Context: `{"dag": {"id"}, "run": {"id", "trigger", "logical_date", "scheduled_time", "conf"},
"params": {...}, "tasks": {"<id>": {"status", "exit_code", "outputs"}}, "item", "index"}`;
`tasks` holds the task's upstream tasks, transitively, and nothing else. A map task's outputs
are lists of its children's values in index order (null for a child that published none).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Container
from dataclasses import replace
from typing import Any, NamedTuple

from nagare.clock import to_iso
from nagare.engine.assignment import build_assignment, env_value, render_command
from nagare.engine.expressions import ExpressionError, condition, render
from nagare.models import (
    RAW_STEP_KEYS,
    SLOT_TRIGGERS,
    Assignment,
    Claim,
    DagDef,
    Outcome,
    Run,
    TaskDef,
)
from nagare.patterns import has_template


class UpstreamRow(NamedTuple):
    """What the context needs of one task instance of the run."""

    task_id: str
    base_task_id: str
    map_index: int | None
    status: str
    exit_code: int | None
    outputs: dict[str, str] | None


def run_params(run: Run) -> dict[str, Any]:
    """The run's parameters as the context's `.params`: the resolved, typed values of a DAG
    with `params:`; for a DAG without, its conf (strings)."""
    return dict(run.params) if run.params else dict(run.conf)


def when_skip_reason(expression: str) -> str:
    """Why a task whose `when:` was false is skipped."""
    return f"when: {expression} was false"


def when_skipped(expression: str) -> Outcome:
    """The outcome of a task skipped by its `when:` (it never ran)."""
    return Outcome(exit_code=None, skipped=when_skip_reason(expression))


def needs_upstream(claim: Claim, definition: TaskDef) -> bool:
    """Whether starting this task needs the run's task rows: it has templates or a condition,
    or some upstream task may have published outputs for its environment."""
    return definition.uses_context or (claim.run.has_outputs and bool(definition.depends_on))


def upstream_distances(dag: DagDef, task_id: str) -> dict[str, int]:
    """Every task `task_id` depends on, directly or not, with its distance (1 = direct)."""
    found: dict[str, int] = {}
    definition = dag.task(task_id)
    queue = deque((dep, 1) for dep in (definition.depends_on if definition else ()))
    while queue:
        current, distance = queue.popleft()
        if current in found:
            continue
        found[current] = distance
        upstream = dag.task(current)
        if upstream is not None:
            queue.extend((dep, distance + 1) for dep in upstream.depends_on)
    return found


def upstream_tasks(dag: DagDef, task_id: str, rows: list[UpstreamRow]) -> dict[str, dict[str, Any]]:
    """`.tasks` of the context: the upstream tasks of `task_id` (its base id for a map child)."""
    return tasks_context(rows, upstream_distances(dag, task_id))


def tasks_context(
    rows: list[UpstreamRow], wanted: Container[str] | None = None
) -> dict[str, dict[str, Any]]:
    """`.tasks` of a context: the tasks of `rows` (only those `wanted`, if given)."""
    tasks: dict[str, dict[str, Any]] = {}
    children: dict[str, list[UpstreamRow]] = {}
    for row in rows:
        if wanted is not None and row.base_task_id not in wanted:
            continue
        if row.map_index is None:
            tasks[row.task_id] = {
                "status": row.status,
                "exit_code": row.exit_code,
                "outputs": dict(row.outputs or {}),
            }
        else:
            children.setdefault(row.base_task_id, []).append(row)
    for parent, rows_of in children.items():
        entry = tasks.setdefault(parent, {"status": "", "exit_code": None, "outputs": {}})
        entry["outputs"] = map_outputs(rows_of)
    return tasks


def map_outputs(children: list[UpstreamRow]) -> dict[str, list[str | None]]:
    """A map parent's outputs: each name's values over its children in index order."""
    ordered = sorted(children, key=lambda r: r.map_index or 0)
    names = dict.fromkeys(name for r in ordered for name in (r.outputs or {}))
    return {name: [(r.outputs or {}).get(name) for r in ordered] for name in names}


def output_env(dag: DagDef, task_id: str, tasks: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every output of the upstream tasks as an environment variable, the nearest upstream
    winning on a clash (then the later in DAG order); a map's lists as compact JSON."""
    distances = upstream_distances(dag, task_id)
    rank = dag.rank
    env: dict[str, str] = {}
    for upstream in sorted(tasks, key=lambda t: (-distances.get(t, 0), rank.get(t, 0))):
        for name, value in tasks[upstream]["outputs"].items():
            env[name] = env_value(value)
    return env


def run_context(dag: DagDef, run: Run) -> dict[str, Any]:
    """The run's part of a context: `{dag: {id}, run: {id, trigger, logical_date,
    scheduled_time, conf}, params}` (params: the run's typed parameters, or its conf for a DAG
    without `params:`). A DAG's own `when` sees just this."""
    execution = to_iso(run.execution_date)
    return {
        "dag": {"id": dag.dag_id},
        "run": {
            "id": run.run_id,
            "trigger": str(run.trigger),
            "logical_date": execution,
            "scheduled_time": execution if run.trigger in SLOT_TRIGGERS else None,
            "conf": dict(run.conf),
        },
        "params": run_params(run),
    }


def build_context(
    dag: DagDef, claim: Claim, definition: TaskDef, tasks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    task = claim.task
    if task.item is not None:
        item: Any = json.loads(task.item)
    elif definition.with_item is not None:
        item = json.loads(definition.with_item)
    else:
        item = None
    return {
        **run_context(dag, claim.run),
        "tasks": tasks,
        "item": item,
        "index": task.map_index,
    }


def start_assignment(
    claim: Claim,
    definition: TaskDef,
    base_env: dict[str, str],
    rows: list[UpstreamRow] | None,
    output_file: str = "",
) -> Assignment | Outcome:
    """The assignment of a task about to start (`rows`: the run's task rows when
    `needs_upstream`, else None), or the outcome of one that does not run: skipped by its
    `when:`, or failed by a condition or template that failed (with jq's message)."""
    if rows is None:
        return build_assignment(claim, definition, base_env, None, output_file)
    dag = claim.dag
    tasks = upstream_tasks(dag, definition.task_id, rows)
    outputs = output_env(dag, definition.task_id, tasks)
    assignment = build_assignment(claim, definition, base_env, outputs, output_file)
    if not definition.uses_context:
        return assignment
    context = build_context(dag, claim, definition, tasks)
    if definition.when:
        try:
            if not condition(definition.when, context):
                return when_skipped(definition.when)
        except ExpressionError as exc:
            return Outcome(exit_code=None, error=f"when: {definition.when}: {exc}")
    try:
        return rendered(assignment, definition, claim.task.item, context)
    except ExpressionError as exc:
        return Outcome(exit_code=None, error=str(exc))


def rendered(
    assignment: Assignment, definition: TaskDef, item_json: str | None, context: dict[str, Any]
) -> Assignment:
    """The assignment with its templated fields rendered (only those that hold templates)."""
    fields = definition.templated
    changes: dict[str, Any] = {}
    if "command" in fields:
        changes["command"] = render(render_command(assignment.command, item_json), context)
    if "image" in fields:
        changes["image"] = render(assignment.image, context)
    if "workdir" in fields:
        changes["workdir"] = render(assignment.workdir, context)
    if "volumes" in fields:
        changes["volumes"] = tuple(render(v, context) for v in assignment.volumes)
    if "env" in fields:
        env = dict(assignment.env)
        for name, value in definition.env.items():
            env[name] = render(value, context)
        changes["env"] = env
    if "step" in fields:
        changes["step"] = render_step(definition.step, context)
    return replace(assignment, **changes) if changes else assignment


def render_step(step: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """A step's fields with the templates of its strings rendered (the jq of RAW_STEP_KEYS
    is left as written)."""
    return {k: v if k in RAW_STEP_KEYS else render_value(v, context) for k, v in step.items()}


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """A JSON value with the templates of its strings rendered."""
    if isinstance(value, str):
        return render(value, context) if has_template(value) else value
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value
