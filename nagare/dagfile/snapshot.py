"""DAG definitions as stable JSON: stored once per version with the runs that use them."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from nagare.models import AllowFailure, DagDef, Resources, TaskDef, TaskType, TriggerRule


def dag_to_json(dag: DagDef) -> str:
    """A stable JSON form of a definition (stored with each run so edits never change it)."""
    return json.dumps(_dag_dict(dag), sort_keys=True, separators=(",", ":"))


def _dag_dict(dag: DagDef) -> dict[str, object]:
    return {
        "dag_id": dag.dag_id,
        "description": dag.description,
        "schedule": dag.schedule,
        "timezone": dag.timezone,
        "catchup": dag.catchup,
        "env": dag.env,
        "file": dag.file,
        "tasks": [_task_dict(t) for t in dag.tasks],
        **({"when": dag.when} if dag.when else {}),
        **({"preconditions": list(dag.preconditions)} if dag.preconditions else {}),
    }


def _task_dict(task: TaskDef) -> dict[str, object]:
    data: dict[str, object] = {
        "task_id": task.task_id,
        "type": task.type.value,
        "command": task.command,
        "depends_on": list(task.depends_on),
        "env": task.env,
        "timeout_seconds": task.timeout_seconds,
        "retries": task.retries,
        "retry_delay_seconds": task.retry_delay_seconds,
        "pool": task.pool,
        "map_over": task.map_over,
        "dag_id": task.dag_id,
        "image": task.image,
        "workdir": task.workdir,
        "volumes": list(task.volumes),
        "line": task.line,
    }
    if task.resources:
        data["resources"] = asdict(task.resources)
    if task.run_as:  # only when set: the JSON (and hash) of other definitions stays as it was
        data["run_as"] = task.run_as
    data.update(_condition_dict(task))
    return data


def _condition_dict(task: TaskDef) -> dict[str, object]:
    """The conditions and failure handling fields that differ from their defaults."""
    data: dict[str, object] = {}
    if task.trigger_rule is not TriggerRule.ALL_SUCCESS:
        data["trigger_rule"] = task.trigger_rule.value
    if task.preconditions:
        data["preconditions"] = list(task.preconditions)
    if task.allow_failure is not None:
        data["allow_failure"] = list(task.allow_failure.exit_codes)
    if task.retry_backoff != 1:
        data["retry_backoff"] = task.retry_backoff
    if task.retry_max_delay_seconds:
        data["retry_max_delay_seconds"] = task.retry_max_delay_seconds
    if task.retry_on_exit_codes:
        data["retry_on_exit_codes"] = list(task.retry_on_exit_codes)
    if not task.retry_on_timeout:
        data["retry_on_timeout"] = False
    return data


def _condition_fields(item: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `_condition_dict` (popped from `item`)."""
    found: dict[str, Any] = {}
    if "trigger_rule" in item:
        found["trigger_rule"] = TriggerRule(item.pop("trigger_rule"))
    if "preconditions" in item:
        found["preconditions"] = tuple(item.pop("preconditions"))
    if "allow_failure" in item:
        found["allow_failure"] = AllowFailure(tuple(item.pop("allow_failure")))
    if "retry_on_exit_codes" in item:
        found["retry_on_exit_codes"] = tuple(item.pop("retry_on_exit_codes"))
    return found


def dag_from_json(text: str) -> DagDef:
    """The inverse of dag_to_json (webhook trigger details are not part of a run's snapshot)."""
    data = json.loads(text)
    tasks = []
    for item in data["tasks"]:
        resources = item.pop("resources", None)
        conditions = _condition_fields(item)
        tasks.append(
            TaskDef(
                **{
                    **item,
                    "type": TaskType(item["type"]),
                    "depends_on": tuple(item["depends_on"]),
                    "volumes": tuple(item["volumes"]),
                },
                resources=Resources(**resources) if resources else None,
                **conditions,
            )
        )
    return DagDef(
        dag_id=data["dag_id"],
        tasks=tuple(tasks),
        description=data["description"],
        schedule=data["schedule"],
        timezone=data["timezone"],
        catchup=data["catchup"],
        env=data["env"],
        file=data["file"],
        when=data.get("when", ""),
        preconditions=tuple(data.get("preconditions", ())),
    )
