"""DAGs that call DAGs (`type: dag` steps): what a DAG returns to its caller (its DAG-level
`outputs:`), and the checks over the call graph of every loaded DAG (cycles, depth), which no
single file can make on its own: the DAG folder applies them to the set it assembled.

Only calls with a literal `dag_id` are edges of the graph: a templated one is known when the
step starts (the depth limit then holds at run time), and a DAG that is not loaded may be added
later (calling it before fails only that step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode

from nagare.dagfile.nodes import Collector, is_null, node_kind, scalar_text
from nagare.engine.expressions import template_errors
from nagare.models import DagDef, TaskDef, TaskType
from nagare.patterns import OUTPUT_NAME, has_template

MAX_CALL_DEPTH = 10  # nested `dag` calls below a run started any other way
MAX_DAG_OUTPUTS = 100

CallError = tuple[int, str, str]  # (line, field, message) of a `dag` step


def read_outputs(node: Node, errors: Collector) -> dict[str, str]:
    """`outputs: {NAME: "{{ template }}"}` of a DAG; every template must compile."""
    if is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        errors.add(
            node, "outputs", f"expected a mapping of NAME: template, found {node_kind(node)}"
        )
        return {}
    if len(node.value) > MAX_DAG_OUTPUTS:
        errors.add(node, "outputs", f"at most {MAX_DAG_OUTPUTS} outputs, found {len(node.value)}")
        return {}
    outputs: dict[str, str] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value) if isinstance(key_node, ScalarNode) else ""
        if not OUTPUT_NAME.match(name):
            errors.add(
                key_node,
                f"outputs.{name}" if name else "outputs",
                f"'{name}' is not a valid output name (expected letters, digits and '_', "
                "not starting with a digit)",
            )
            continue
        text = scalar_text(value_node, f"outputs.{name}", errors)
        if text is None:
            continue
        for problem in template_errors(text):
            errors.add(value_node, f"outputs.{name}", problem)
        outputs[name] = text
    return outputs


# ---------------------------------------------------------------- the call graph


def _calls(dag: DagDef) -> Iterator[tuple[str, TaskDef]]:
    """(field, task) of each `dag` step of the DAG with a literal dag_id, handlers included."""
    for index, task in enumerate(dag.tasks):
        if task.type is TaskType.DAG and not has_template(task.dag_id):
            yield f"tasks[{index}] ({task.task_id}).dag_id", task
    for kind, task in dag.handler_on.items():
        if task.type is TaskType.DAG and not has_template(task.dag_id):
            yield f"handler_on.{kind.value}.dag_id", task


def call_errors(dags: Mapping[str, DagDef]) -> dict[str, list[CallError]]:
    """dag_id -> the errors of its `dag` steps: a call that comes back to the DAG (a cycle,
    named by its chain) or a chain of calls deeper than MAX_CALL_DEPTH. Calls of DAGs that are
    not in `dags` are left to run time."""
    graph = {
        dag_id: [(field, task) for field, task in _calls(dag) if task.dag_id in dags]
        for dag_id, dag in dags.items()
    }
    found: dict[str, list[CallError]] = {}
    cyclic: set[str] = set()
    for dag_id in graph:
        for field, task, chain in _cycles_through(graph, dag_id):
            cyclic.add(dag_id)
            message = f"calls form a cycle: {' → '.join(chain)}"
            found.setdefault(dag_id, []).append((task.line, field, message))
    depths: dict[str, list[str]] = {}
    for dag_id in graph:
        if dag_id in cyclic:
            continue
        chain = _deepest(graph, dag_id, cyclic, depths)
        if len(chain) - 1 > MAX_CALL_DEPTH:
            field, task = next((f, t) for f, t in graph[dag_id] if t.dag_id == chain[1])
            message = (
                f"calls nest {len(chain) - 1} deep: {' → '.join(chain)} (at most {MAX_CALL_DEPTH})"
            )
            found.setdefault(dag_id, []).append((task.line, field, message))
    return found


def _cycles_through(
    graph: Mapping[str, list[tuple[str, TaskDef]]], start: str
) -> Iterator[tuple[str, TaskDef, list[str]]]:
    """For each step of `start` whose call comes back to `start`: the shortest such chain."""
    for field, task in graph[start]:
        path = _shortest_path(graph, task.dag_id, start)
        if path is not None:
            yield field, task, [start, *path]


def _shortest_path(
    graph: Mapping[str, list[tuple[str, TaskDef]]], source: str, target: str
) -> list[str] | None:
    """The DAG ids from `source` to `target` along calls (breadth first), or None."""
    previous: dict[str, str | None] = {source: None}
    queue = [source]
    for current in queue:
        if current == target:
            path = [current]
            while (before := previous[path[-1]]) is not None:
                path.append(before)
            return path[::-1]
        for _, task in graph.get(current, ()):
            if task.dag_id not in previous:
                previous[task.dag_id] = current
                queue.append(task.dag_id)
    return None


def _deepest(
    graph: Mapping[str, list[tuple[str, TaskDef]]],
    dag_id: str,
    cyclic: set[str],
    memo: dict[str, list[str]],
) -> list[str]:
    """The longest chain of calls from `dag_id` (DAG ids, itself first), cycles left aside."""
    if dag_id in memo:
        return memo[dag_id]
    memo[dag_id] = [dag_id]  # (a guard: a cycle not through `dag_id` never recurses forever)
    best: list[str] = []
    for _, task in graph.get(dag_id, ()):
        if task.dag_id in cyclic:
            continue
        below = _deepest(graph, task.dag_id, cyclic, memo)
        if len(below) > len(best):
            best = below
    memo[dag_id] = [dag_id, *best]
    return memo[dag_id]
