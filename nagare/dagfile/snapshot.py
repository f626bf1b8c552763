"""DAG definitions as stable JSON: stored once per version with the runs that use them."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from nagare.models import (
    AllowFailure,
    DagDef,
    HandlerKind,
    OverlapPolicy,
    ParamDef,
    ParamType,
    Resources,
    SecretDef,
    TaskDef,
    TaskType,
    TriggerRule,
)


def dag_to_json(dag: DagDef) -> str:
    """A stable JSON form of a definition (stored with each run so edits never change it)."""
    return json.dumps(_dag_dict(dag), sort_keys=True, separators=(",", ":"))


def _dag_dict(dag: DagDef) -> dict[str, object]:
    data: dict[str, object] = {
        "dag_id": dag.dag_id,
        "description": dag.description,
        "schedule": dag.schedule,
        "timezone": dag.timezone,
        "catchup": dag.catchup,
        "env": dag.env,
        "file": dag.file,
        "tasks": [_task_dict(t) for t in dag.tasks],
        **({"secrets": [asdict(s) for s in dag.secrets]} if dag.secrets else {}),
        **_rules_dict(dag),
        **({"when": dag.when} if dag.when else {}),
        **({"preconditions": list(dag.preconditions)} if dag.preconditions else {}),
        **({"outputs": dag.outputs} if dag.outputs else {}),
    }
    if dag.params:  # only when declared: the JSON (and hash) of other definitions stays
        data["params"] = [param_dict(p) for p in dag.params]
    return data


def param_dict(param: ParamDef) -> dict[str, Any]:
    """A declared parameter as JSON (also the API's DAG `params`): only the keywords it has."""
    data: dict[str, Any] = {"name": param.name, "type": param.type.value}
    if param.has_default:
        data["default"] = param.default
    data["required"] = param.required
    if param.enum is not None:
        data["enum"] = list(param.enum)
    if param.minimum is not None:
        data["minimum"] = param.minimum
    if param.maximum is not None:
        data["maximum"] = param.maximum
    if param.pattern:
        data["pattern"] = param.pattern
    if param.description:
        data["description"] = param.description
    return data


def param_from_dict(data: dict[str, Any]) -> ParamDef:
    return ParamDef(
        name=data["name"],
        type=ParamType(data["type"]),
        default=data.get("default"),
        has_default="default" in data,
        required=data["required"],
        enum=tuple(data["enum"]) if "enum" in data else None,
        minimum=data.get("minimum"),
        maximum=data.get("maximum"),
        pattern=data.get("pattern", ""),
        description=data.get("description", ""),
    )


def _rules_dict(dag: DagDef) -> dict[str, object]:
    """The run rules, only those set: the JSON (and hash) of other definitions stays as it was."""
    data: dict[str, object] = {
        "schedules": list(dag.schedules),
        "start_date": dag.start_date,
        "end_date": dag.end_date,
        "tags": list(dag.tags),
        "max_active_runs": dag.max_active_runs,
        "overlap_policy": dag.overlap_policy.value
        if dag.overlap_policy is not OverlapPolicy.QUEUE
        else None,
        "timeout_seconds": dag.timeout_seconds,
        "handler_on": {k.value: _task_dict(t) for k, t in dag.handler_on.items()},
    }
    return {k: v for k, v in data.items() if v}


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
    if task.params:
        data["params"] = task.params
    if task.when:
        data["when"] = task.when
    if task.output:
        data["output"] = task.output
    if task.with_item is not None:
        data["with_item"] = task.with_item
    if task.secrets:  # names and sources only (values are read when the task starts)
        data["secrets"] = [asdict(s) for s in task.secrets]
    if task.step:
        data["step"] = task.step
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
    tasks = [_task_from(item) for item in data["tasks"]]
    handlers = {HandlerKind(k): _task_from(v) for k, v in data.get("handler_on", {}).items()}
    return DagDef(
        dag_id=data["dag_id"],
        tasks=tuple(tasks),
        description=data["description"],
        schedule=data["schedule"],
        timezone=data["timezone"],
        catchup=data["catchup"],
        env=data["env"],
        file=data["file"],
        params=tuple(param_from_dict(p) for p in data.get("params", ())),
        secrets=tuple(SecretDef(**s) for s in data.get("secrets", ())),
        schedules=tuple(data.get("schedules", ())),
        start_date=data.get("start_date"),
        end_date=data.get("end_date"),
        tags=tuple(data.get("tags", ())),
        max_active_runs=data.get("max_active_runs", 0),
        overlap_policy=OverlapPolicy(data.get("overlap_policy") or "queue"),
        timeout_seconds=data.get("timeout_seconds", 0),
        handler_on=handlers,
        when=data.get("when", ""),
        preconditions=tuple(data.get("preconditions", ())),
        outputs=data.get("outputs", {}),
    )


def _task_from(item: dict[str, Any]) -> TaskDef:
    resources = item.pop("resources", None)
    secrets = tuple(SecretDef(**s) for s in item.pop("secrets", ()))
    conditions = _condition_fields(item)
    return TaskDef(
        **{
            **item,
            "type": TaskType(item["type"]),
            "depends_on": tuple(item["depends_on"]),
            "volumes": tuple(item["volumes"]),
        },
        resources=Resources(**resources) if resources else None,
        secrets=secrets,
        **conditions,
    )
