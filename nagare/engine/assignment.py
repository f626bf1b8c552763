"""What one attempt runs: the command with its map item, its environment (the assignment an
executor gets), and the items a map task fans out over. Pure functions."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from nagare.clock import to_iso
from nagare.engine.conditions import with_preconditions
from nagare.models import (
    EXECUTOR_STEPS,
    HANDLER_TASK_IDS,
    SLOT_TRIGGERS,
    Assignment,
    Claim,
    DagDef,
    Run,
    TaskDef,
    TaskInstance,
    TaskType,
)

SECRET_VARIABLES = ("NAGARE_API_KEY", "NAGARE_TOKEN")


def item_text(item_json: str | None) -> str:
    """A map item as it is substituted: strings as-is, other values as compact JSON."""
    if item_json is None:
        return ""
    value = json.loads(item_json)
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_command(command: str, item_json: str | None) -> str:
    if item_json is None:
        return command
    return command.replace("{{item}}", item_text(item_json))


def nagare_env(dag: DagDef, run: Run, task: TaskInstance, attempt: int) -> dict[str, str]:
    """The variables Nagare itself gives every task."""
    execution = _run_time(run.execution_date)
    env = {
        "NAGARE_DAG_ID": dag.dag_id,
        "NAGARE_RUN_ID": run.run_id,
        "NAGARE_TASK_ID": task.task_id,
        "NAGARE_ATTEMPT": str(attempt),
        "NAGARE_TRIGGER": str(run.trigger),
        "NAGARE_EXECUTION_DATE": execution,
        "NAGARE_SCHEDULED_TIME": execution if run.trigger in SLOT_TRIGGERS else "",
    }
    if task.map_index is not None:
        env["NAGARE_MAP_INDEX"] = str(task.map_index)
        env["NAGARE_MAP_ITEM"] = item_text(task.item)
    if task.task_id in HANDLER_TASK_IDS:  # a handler: how the run it handles ended
        env["NAGARE_RUN_STATUS"] = str(run.status)
        env["NAGARE_FAILED_TASKS"] = ",".join(run.failed_tasks)
    return env


@functools.lru_cache(maxsize=64)
def _run_time(ms: int | None) -> str:
    """A run's execution date as its tasks see it (the same for all of them: formatted once)."""
    return to_iso(ms) or ""


def task_env(
    base: dict[str, str],
    dag: DagDef,
    definition: TaskDef,
    run: Run,
    task: TaskInstance,
    attempt: int,
    outputs: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Base environment (minus Nagare's secrets and the DAG's webhook secret), then Nagare
    variables, DAG env, the run's parameters (conf: their environment form), the upstream
    tasks' outputs, task env; later wins, so a run parameter overrides a DAG-level default.

    For containers and remote workers `base` is empty: they never get the server's environment.
    """
    hidden = set(SECRET_VARIABLES)
    if dag.trigger is not None and dag.trigger.secret_env:
        hidden.add(dag.trigger.secret_env)  # the webhook secret stays with the server
    env = {k: v for k, v in base.items() if k not in hidden}
    env.update(nagare_env(dag, run, task, attempt))
    env.update(dag.env)
    env.update({k: str(v) for k, v in run.conf.items()})
    if outputs:
        env.update(outputs)
    env.update(definition.env)
    return env


def effective_run_as(task_user: str, enforced: str, where: str) -> tuple[str, str]:
    """The user a task runs as, and why it cannot run ("" when it can): `enforced` is the user
    its pool (or its worker) runs every task as — a task may name that same user or none;
    `where` names the setting in the message (e.g. "pool 'default'")."""
    if enforced and task_user and task_user != enforced:
        return "", (
            f"run_as: {where} runs its tasks as '{enforced}'; this task asks for '{task_user}' "
            f"(remove run_as, or name '{enforced}')"
        )
    return task_user or enforced, ""


def run_as_errors(dag: DagDef, pool_users: dict[str, str]) -> list[tuple[int, str, str]]:
    """Load-time check (`parse_dag(extra_check=...)`) of the server's `pool_run_as`: a task in a
    pool with a user may name only that user. (A remote worker's `--run-as` is checked when the
    task reaches it.)"""
    found = []
    for task in dag.tasks:
        enforced = pool_users.get(task.pool, "")
        _, problem = effective_run_as(task.run_as, enforced, f"pool '{task.pool}'")
        if problem:
            found.append((task.line, f"{task.task_id}.run_as", problem))
    return found


def build_assignment(
    claim: Claim,
    definition: TaskDef,
    base_env: dict[str, str],
    outputs: Mapping[str, str] | None = None,
    output_file: str = "",
) -> Assignment:
    """What the executor runs for this claim (`definition`: its task's, from `claim.dag`);
    `base_env` is the executing host's environment (empty for containers and for remote
    workers, which add their own); `outputs`: the upstream tasks' outputs as variables;
    `output_file`: where `$NAGARE_OUTPUT` points on this host ("": the executor picks)."""
    task, run, dag = claim.task, claim.run, claim.dag
    env = task_env(base_env, dag, definition, run, task, claim.attempt, outputs)
    if output_file:
        env["NAGARE_OUTPUT"] = output_file
    return Assignment(
        task_instance_id=task.id,
        run_id=run.run_id,
        dag_id=dag.dag_id,
        task_id=task.task_id,
        attempt=claim.attempt,
        command=with_preconditions(task.command, definition.preconditions),
        env=env,
        timeout_seconds=definition.timeout_seconds,
        image=definition.image,
        workdir=definition.workdir,
        volumes=definition.volumes,
        resources=definition.resources,
        capture_stdout=captures_stdout(dag, definition, task.task_id),
        run_as=definition.run_as,
        output_file=output_file,
        step_type=definition.type if definition.type in EXECUTOR_STEPS else TaskType.COMMAND,
        step=definition.step,
    )


def captures_stdout(dag: DagDef, definition: TaskDef | None, task_id: str) -> bool:
    """Whether an attempt's stdout is kept: it feeds a map, or it is an `output: NAME`."""
    return task_id in dag.map_sources or (definition is not None and bool(definition.output))


def parse_map_items(stdout: str, source: str, limit: int, cut_at: int | None = None) -> list[Any]:
    """The JSON array a map task fans out over: the whole stdout, else its last non-empty line.
    `cut_at`: the cap the source's captured stdout was cut at (what is left is never parsed).

    Raises ValueError with a message for the task log.
    """
    if cut_at is not None:
        raise ValueError(
            f"the stdout of '{source}' is larger than {size_text(cut_at)}, the most a map "
            "source may print (its items would be cut)"
        )
    text = stdout.strip()
    value = _json_array(text)
    if value is None:
        lines = [line for line in text.splitlines() if line.strip()]
        value = _json_array(lines[-1].strip()) if lines else None
    if value is None:
        shown = text[-300:] if text else "(no output)"
        raise ValueError(
            f"the stdout of '{source}' is not a JSON array (expected the whole stdout or its "
            f'last non-empty line to be e.g. ["a", "b"]); it ended with: {shown}'
        )
    if len(value) > limit:
        raise ValueError(
            f"'{source}' produced {len(value)} map items; the limit is {limit} "
            "(max_map_items in nagare.yaml)"
        )
    return value


def size_text(count: int) -> str:
    """A byte count in the largest binary unit that divides it: 64 MiB, 3 KiB, 100 bytes."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def _json_array(text: str) -> list[Any] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def env_value(value: Any) -> str:
    """A JSON value as an environment value: strings as-is, whole numbers without `.0`,
    booleans true/false, null empty, objects and arrays as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
