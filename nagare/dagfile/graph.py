"""Graph checks of a DAG definition: duplicate ids, references, cycles."""

from __future__ import annotations

from collections.abc import Iterator

from nagare.dagfile.nodes import Collector
from nagare.errors import close_matches
from nagare.models import DagDef, TaskDef, TaskType


def check_graph(dag: DagDef, errors: Collector) -> None:
    by_id: dict[str, TaskDef] = {}
    for task in dag.tasks:
        if task.task_id in by_id:
            errors.add_at(
                task.line,
                f"tasks.{task.task_id}",
                f"duplicate task id '{task.task_id}'",
            )
        by_id[task.task_id] = task
    for task in dag.tasks:
        check_references(task, by_id, errors)
    cycle = find_cycle(dag.tasks)
    if len(cycle) > 2:  # a task depending on itself is reported above
        first = by_id[cycle[0]]
        errors.add_at(
            first.line,
            f"tasks.{cycle[0]}.depends_on",
            "dependency cycle: " + " -> ".join(cycle),
        )


def check_references(task: TaskDef, by_id: dict[str, TaskDef], errors: Collector) -> None:
    field = f"tasks.{task.task_id}"
    for dep in task.depends_on:
        if dep == task.task_id:
            errors.add_at(task.line, f"{field}.depends_on", f"task '{dep}' depends on itself")
        elif dep not in by_id and dep != task.map_over:
            if errors.full:  # not listed anyway: skip the costly hint
                errors.add_at(task.line, "", "")
                continue
            close = close_matches(dep, list(by_id), n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else (f" (expected one of: {', '.join(sorted(by_id))})")
            )
            errors.add_at(task.line, f"{field}.depends_on", f"unknown task '{dep}'{hint}")
    if task.map_over and task.map_over == task.task_id:
        errors.add_at(task.line, f"{field}.map_over", "a map task cannot map over itself")
    elif task.map_over and task.map_over in by_id and by_id[task.map_over].type is TaskType.MAP:
        errors.add_at(
            task.line,
            f"{field}.map_over",
            f"'{task.map_over}' is a map task; map over a task that prints a JSON array",
        )


def find_cycle(tasks: tuple[TaskDef, ...] | list[TaskDef]) -> list[str]:
    """The first dependency cycle as a path `[a, b, c, a]`, or [] when the graph is acyclic."""
    deps = {t.task_id: t.depends_on for t in tasks}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in deps:
        if state.get(start):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(deps[start]))]
        path: list[str] = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next((d for d in children if d in deps), None)  # each edge is looked at once
            if child is not None:
                if state.get(child) == 1:
                    return [*path[path.index(child) :], child]
                if not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(deps[child])))
                    path.append(child)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return []
