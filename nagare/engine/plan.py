"""`nagare dry`: the plan of a run, as far as it is known before anything runs. Pure.

The tasks in the order they can run, each with its command (with_items already expanded; a
map's `{{item}}` is known only once its source ran) and the environment it will get from the
DAG (DAG env, run parameters, task env; secrets by name, never a value).
"""

from __future__ import annotations

from dataclasses import dataclass

from nagare.engine.params import run_values
from nagare.engine.secrets import MASK, task_secrets
from nagare.errors import InvalidParams
from nagare.models import WAITING_STEPS, DagDef, TaskDef, TaskType, topological_order


@dataclass(frozen=True)
class PlannedTask:
    task_id: str
    type: str
    depends_on: tuple[str, ...]
    command: str
    env: dict[str, str]
    pool: str
    where: str  # "local", or "docker <image>"
    notes: tuple[str, ...]  # what is decided only when the run runs


def run_params(dag: DagDef, raw: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The run parameters of `-p K=V` as a run gets them (checked and converted to their
    declared types as `nagare exec -p` does, defaults filled in; their environment form), and
    the problems found."""
    try:
        conf, _ = run_values(dag, raw, "text")
    except InvalidParams as err:
        return {}, [f"{name}: {message}" for name, message in err.details] or [err.message]
    return conf, []


def dry_plan(dag: DagDef, params: dict[str, str]) -> list[PlannedTask]:
    """Every task of `dag` in run order, with what it will run."""
    order = {task_id: index for index, task_id in enumerate(topological_order(dag.tasks))}
    planned = []
    for task in sorted(dag.tasks, key=lambda t: order[t.task_id]):
        env = {**dag.env, **params, **task.env}
        for secret in task_secrets(dag, task):
            source = f"env {secret.env}" if secret.env else f"file {secret.file}"
            env[secret.name] = f"{MASK} (secret, from {source})"
        notes = []
        if task.type is TaskType.MAP:
            notes.append(f"one child per item of the JSON array '{task.map_over}' prints")
        if task.type is TaskType.TRIGGER_DAG:
            notes.append(f"starts a run of DAG '{task.dag_id}'")
        step = step_note(task)
        if step:
            notes.append(step)
        if task.retries:
            notes.append(f"up to {task.retries} retries")
        if task.timeout_seconds:
            notes.append(f"timeout {task.timeout_seconds:g} s")
        planned.append(
            PlannedTask(
                task_id=task.task_id,
                type=str(task.type),
                depends_on=task.depends_on,
                command=task.command,
                env=env,
                pool="-" if task.type in WAITING_STEPS else task.pool,
                where=_where(task),
                notes=tuple(notes),
            )
        )
    return planned


def _where(task: TaskDef) -> str:
    if task.type in WAITING_STEPS:
        return "in the engine, no slot"
    return f"docker {task.image}" if task.image else "local"


def step_note(task: TaskDef) -> str:
    """What a step does, in a few words (templates as written)."""
    step = task.step
    if task.type is TaskType.HTTP:
        return f"{step.get('method') or 'GET'} {step.get('url', '')}"
    if task.type is TaskType.MAIL:
        return f"mail to {', '.join(step.get('to', []))}: {step.get('subject', '')}"
    if task.type is TaskType.SSH:
        user = f"{step['user']}@" if step.get("user") else ""
        port = f":{step['port']}" if step.get("port") else ""
        return f"runs the command on {user}{step.get('host', '')}{port} over ssh"
    if task.type is TaskType.CHAT:
        return f"asks {step.get('provider', '')} model {step.get('model', '')}"
    if task.type is TaskType.DAG:
        return f"calls DAG '{task.dag_id}' and waits for its run"
    if task.type is TaskType.APPROVAL:
        message = step.get("message", "")
        return "waits for an approval" + (f": {message}" if message else "")
    if task.type is TaskType.WAIT:
        return f"waits for the event '{step.get('event', '')}'"
    return ""


def plan_text(dag: DagDef, params: dict[str, str], planned: list[PlannedTask]) -> str:
    """The plan as `nagare dry` prints it."""
    lines = [f"DAG '{dag.dag_id}': {len(planned)} task(s), in run order (nothing is run)"]
    if params:
        lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
    for number, task in enumerate(planned, start=1):
        after = ", ".join(task.depends_on) or "-"
        lines.append(f"{number:>3}. {task.task_id}  [{task.type}, pool {task.pool}, {task.where}]")
        lines.append(f"     after: {after}")
        if task.command:
            command = task.command.rstrip("\n").replace("\n", "\n              ")
            lines.append(f"     command: {command}")
        for name, value in sorted(task.env.items()):
            lines.append(f"     env {name}={value}")
        lines.extend(f"     note: {note}" for note in task.notes)
    return "\n".join(lines) + "\n"
