"""DAG definitions as stable JSON: stored once per version with the runs that use them."""

from __future__ import annotations

import json
from dataclasses import asdict

from nagare.models import DagDef, Resources, SecretDef, TaskDef, TaskType


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
        **({"secrets": [asdict(s) for s in dag.secrets]} if dag.secrets else {}),
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
    if task.secrets:  # names and sources only (values are read when the task starts)
        data["secrets"] = [asdict(s) for s in task.secrets]
    return data


def dag_from_json(text: str) -> DagDef:
    """The inverse of dag_to_json (webhook trigger details are not part of a run's snapshot)."""
    data = json.loads(text)
    tasks = []
    for item in data["tasks"]:
        resources = item.pop("resources", None)
        secrets = tuple(SecretDef(**s) for s in item.pop("secrets", ()))
        tasks.append(
            TaskDef(
                **{
                    **item,
                    "type": TaskType(item["type"]),
                    "depends_on": tuple(item["depends_on"]),
                    "volumes": tuple(item["volumes"]),
                },
                resources=Resources(**resources) if resources else None,
                secrets=secrets,
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
        secrets=tuple(SecretDef(**s) for s in data.get("secrets", ())),
    )
