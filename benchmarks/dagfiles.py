"""The DAG files of the workloads, generated as YAML text (JSON-compatible flow style)."""

from __future__ import annotations

import json

NOOP = "true"


def _dag(dag_id: str, tasks: list[dict[str, object]]) -> str:
    header = f"id: {dag_id}\nschedule: workflow_dispatch\ntasks:\n"
    return header + "".join(f"  - {json.dumps(task)}\n" for task in tasks)


def chain(dag_id: str, length: int, pools: tuple[str, ...] = ()) -> str:
    """t0000 -> t0001 -> ... : `length` tasks, each waiting for the previous one (with `pools`,
    the tasks take them in turn)."""
    tasks: list[dict[str, object]] = []
    for index in range(length):
        task: dict[str, object] = {"id": f"t{index:04d}", "command": NOOP}
        if pools:
            task["pool"] = pools[index % len(pools)]
        if index:
            task["depends_on"] = [f"t{index - 1:04d}"]
        tasks.append(task)
    return _dag(dag_id, tasks)


OUTPUT_HOP = 'echo "V=$((${V:-0} + 1))" >> "$NAGARE_OUTPUT"'


def output_chain(dag_id: str, length: int) -> str:
    """A chain where each task reads its upstream's output V and publishes V + 1."""
    tasks: list[dict[str, object]] = []
    for index in range(length):
        task: dict[str, object] = {"id": f"t{index:04d}", "command": OUTPUT_HOP}
        if index:
            task["depends_on"] = [f"t{index - 1:04d}"]
        tasks.append(task)
    return _dag(dag_id, tasks)


def fanout(dag_id: str, width: int) -> str:
    """start -> `width` parallel tasks -> end."""
    middle = [f"w{index:04d}" for index in range(width)]
    tasks: list[dict[str, object]] = [{"id": "start", "command": NOOP}]
    tasks += [{"id": name, "command": NOOP, "depends_on": ["start"]} for name in middle]
    tasks.append({"id": "end", "command": NOOP, "depends_on": middle})
    return _dag(dag_id, tasks)


def map_source_command(items: int) -> str:
    """A shell command whose single stdout line is the JSON array [0, 1, ..., items-1]."""
    return f'echo "[$(seq -s, 0 {items - 1})]"'


def map_over(dag_id: str, items: int) -> str:
    """source prints an `items`-long JSON array; a map task runs `true` once per item."""
    tasks: list[dict[str, object]] = [
        {"id": "source", "command": map_source_command(items)},
        {"id": "each", "type": "map", "map_over": "source", "command": NOOP},
    ]
    return _dag(dag_id, tasks)


def history(dag_id: str, width: int) -> str:
    """The DAG the seeded history belongs to: a chain of `width` tasks."""
    return chain(dag_id, width)
