"""Reading typed values out of composed YAML nodes, collecting every error with its line.

String fields keep the literal text of their scalar (`PORT: 5432` is "5432"); numbers and
booleans must have the YAML type the field expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nagare.dagfile.yaml_nodes import scalar as yaml_scalar
from nagare.errors import close_matches
from nagare.patterns import ENV_NAME, NAME

ID_PATTERN = NAME
ID_EXPECTED = "letters, digits, '_', '.', '-' (starting with a letter or digit, at most 100)"

# Bounds of what one file can report: a broken file gets a readable answer, never megabytes.
MAX_ERRORS = 50  # errors listed per file; the rest are counted in one last line
MAX_FIELD_CHARS = 100
MAX_MESSAGE_CHARS = 300
MAX_VALUE_CHARS = 120  # a value quoted in a message (an id too long by a few still shows)


def clip(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class DagError:
    """One problem in a DAG file: where (file, line, field), what was found, what was expected."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class Collector:
    """Gathers the errors of one file: the first `MAX_ERRORS`, each field and message clipped,
    and how many more there were (`summary` adds that count as a last error)."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[DagError] = []
        self.more = 0

    @property
    def full(self) -> bool:
        """No more errors will be listed (callers may skip costly hints)."""
        return len(self.errors) >= MAX_ERRORS

    def add(self, node: Node | None, field: str, message: str) -> None:
        self.add_at(node.start_mark.line + 1 if node is not None else 0, field, message)

    def add_at(self, line: int, field: str, message: str) -> None:
        if self.full:
            self.more += 1
            return
        self.errors.append(
            DagError(
                self.file, line, clip(field, MAX_FIELD_CHARS), clip(message, MAX_MESSAGE_CHARS)
            )
        )

    def summary(self) -> list[DagError]:
        """The errors listed, and one saying how many were left out."""
        if not self.more:
            return self.errors
        more = f"... and {self.more} more error(s) not listed (fix the ones above first)"
        return [*self.errors, DagError(self.file, 0, "", more)]


# ---------------------------------------------------------------- node readers

TAG_NAMES = {
    "str": "the string",
    "int": "the number",
    "float": "the number",
    "bool": "the boolean",
}


def node_kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "null":
        return "nothing (null)"
    return f"{TAG_NAMES.get(tag, tag)} '{clip(str(node.value), MAX_VALUE_CHARS)}'"


def mapping(
    node: MappingNode,
    allowed: tuple[str, ...],
    path: str,
    errors: Collector,
    suggest: tuple[str, ...] | None = None,
) -> dict[str, Node]:
    """Keys -> value nodes; unknown or duplicate keys are errors with a suggestion (from
    `suggest` when given: the keys that fit here, of all those allowed)."""
    candidates = allowed if suggest is None else suggest
    result: dict[str, Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            errors.add(key_node, path, f"expected a string key, found {node_kind(key_node)}")
            continue
        key = str(key_node.value)
        field = f"{path}.{key}" if path else key
        if key not in allowed:
            close = close_matches(key, candidates, n=1, cutoff=0.6)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(candidates)})"
            )
            errors.add(key_node, field, f"unknown key '{key}'{hint}")
            continue
        if key in result:
            errors.add(key_node, field, f"'{key}' is given twice")
        result[key] = value_node
    return result


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def scalar_text(node: Node, field: str, errors: Collector) -> str | None:
    """A string field: the scalar's literal text (null -> "")."""
    if not isinstance(node, ScalarNode):
        errors.add(node, field, f"expected a string, found {node_kind(node)}")
        return None
    return "" if is_null(node) else str(node.value)


def integer(node: Node, field: str, errors: Collector, minimum: int = 0) -> int | None:
    if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:int":
        errors.add(node, field, f"expected a whole number >= {minimum}, found {node_kind(node)}")
        return None
    value = int(yaml_scalar(node.value))
    if value < minimum:
        errors.add(node, field, f"expected a whole number >= {minimum}, found {value}")
        return None
    return value


def number(node: Node, field: str, errors: Collector, positive: bool) -> float | None:
    expected = "a number > 0" if positive else "a number >= 0"
    if not isinstance(node, ScalarNode) or node.tag not in (
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
    ):
        errors.add(node, field, f"expected {expected} (seconds), found {node_kind(node)}")
        return None
    value = float(yaml_scalar(node.value))
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        errors.add(node, field, f"expected {expected} (seconds), found {node.value}")
        return None
    return value


def boolean(node: Node, field: str, errors: Collector) -> bool | None:
    if not isinstance(node, ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
        errors.add(node, field, f"expected true or false, found {node_kind(node)}")
        return None
    return bool(yaml_scalar(node.value))


def string_list(node: Node, field: str, errors: Collector, allow_single: bool) -> list[str]:
    if allow_single and isinstance(node, ScalarNode):
        text = scalar_text(node, field, errors)
        return [text] if text else []
    if not isinstance(node, SequenceNode):
        errors.add(node, field, f"expected a list of strings, found {node_kind(node)}")
        return []
    items: list[str] = []
    for index, item in enumerate(node.value):
        text = scalar_text(item, f"{field}[{index}]", errors)
        if text is not None:
            items.append(text)
    return items


def env_map(node: Node, field: str, errors: Collector) -> dict[str, str]:
    if is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        errors.add(node, field, f"expected a mapping of NAME: value, found {node_kind(node)}")
        return {}
    env: dict[str, str] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            errors.add(key_node, field, f"expected a variable name, found {node_kind(key_node)}")
            continue
        name = str(key_node.value)
        if not ENV_NAME.match(name):
            errors.add(
                key_node,
                f"{field}.{name}",
                f"'{name}' is not a valid variable name (expected [A-Za-z_][A-Za-z0-9_]*)",
            )
            continue
        value = scalar_text(value_node, f"{field}.{name}", errors)
        if value is not None:
            env[name] = value
    return env


def task_path(index: int, node: Node) -> str:
    """How errors name a task: `tasks[2] (kick)`, or `tasks[2]` when its `id` is missing or
    not a valid id (that error says why, and an unreadable id never lands in other messages)."""
    task_id = ""
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:  # the last `id` wins, as in `mapping`
            if isinstance(key_node, ScalarNode) and key_node.value == "id":
                readable = isinstance(value_node, ScalarNode) and not is_null(value_node)
                task_id = str(value_node.value) if readable else ""
    if ID_PATTERN.match(task_id):
        return f"tasks[{index}] ({task_id})"
    return f"tasks[{index}]"


def check_id(node: Node, value: str, field: str, errors: Collector) -> None:
    if not ID_PATTERN.match(value):
        shown = clip(value, MAX_VALUE_CHARS)
        errors.add(node, field, f"'{shown}' is not a valid id (expected {ID_EXPECTED})")
