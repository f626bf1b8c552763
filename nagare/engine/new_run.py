"""How a new run looks: its id and its initial task instances. Pure functions, but for the
id generator."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

from nagare.clock import compact_stamp, slot_stamp
from nagare.engine.assignment import render_command
from nagare.models import (
    EXECUTOR_STEPS,
    SLOT_TRIGGERS,
    DagDef,
    InstanceLike,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    TaskType,
    Trigger,
)

_ids_lock = threading.Lock()
_last_id_micros = 0


def new_instance_id() -> str:
    """20 hex digits: microseconds since the epoch (strictly increasing within the process),
    then 28 random bits. Ids made together sort together: the index entries of tasks that are
    created, claimed and finished together share pages, so each write touches fewer of them."""
    global _last_id_micros
    with _ids_lock:
        _last_id_micros = max(time.time_ns() // 1000, _last_id_micros + 1)
        micros = _last_id_micros
    return f"{micros:013x}{random.getrandbits(28):07x}"


def run_id_for(dag_id: str, trigger: Trigger, execution_date: int, now: int) -> str:
    """Slot runs get a deterministic id (a slot can never run twice); others a time stamp."""
    if trigger in SLOT_TRIGGERS:
        return f"{dag_id}__scheduled__{slot_stamp(execution_date)}"
    return f"{dag_id}__{trigger}__{compact_stamp(now)}"


def build_run(
    dag: DagDef,
    version: str,
    trigger: Trigger,
    execution_date: int,
    conf: dict[str, str],
    now: int,
    run_id: str,
) -> tuple[Run, list[TaskInstance]]:
    run = Run(
        run_id=run_id,
        dag_id=dag.dag_id,
        status=RunStatus.QUEUED,
        trigger=trigger,
        execution_date=execution_date,
        conf=conf,
        created_at=now,
        dag_version=version,
    )
    tasks = []
    gated = bool(dag.when or dag.preconditions)  # first: does the run start? (Scheduler._gated)
    for position, task in enumerate(dag.tasks):
        ready = (
            not task.depends_on
            and (task.type is TaskType.COMMAND or task.type in EXECUTOR_STEPS)
            and not gated
        )
        tasks.append(
            TaskInstance(
                id=new_instance_id(),
                run_id=run_id,
                task_id=task.task_id,
                base_task_id=task.task_id,
                status=TaskStatus.QUEUED if ready else TaskStatus.PENDING,
                max_attempts=task.max_attempts,
                pool=task.instance_pool,
                command=task.command,
                position=position,
                queued_at=now if ready else None,
            )
        )
    return run, tasks


def map_children(
    parent: InstanceLike, command: str, max_attempts: int, items: list[Any], now: int
) -> list[TaskInstance]:
    children = []
    for index, item in enumerate(items):
        item_json = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
        children.append(
            TaskInstance(
                id=new_instance_id(),
                run_id=parent.run_id,
                task_id=f"{parent.task_id}[{index}]",
                base_task_id=parent.task_id,
                status=TaskStatus.QUEUED,
                max_attempts=max_attempts,
                pool=parent.pool,
                map_index=index,
                item=item_json,
                command=render_command(command, item_json),
                position=parent.position,
                queued_at=now,
            )
        )
    return children
