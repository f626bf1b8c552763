"""The task fields of conditions and failure handling: `trigger_rule`, `preconditions`,
`allow_failure` and the retry policy (`retry_backoff`, `retry_max_delay_seconds`,
`retry_on_exit_codes`, `retry_on_timeout`), validated with where, what and what was expected."""

from __future__ import annotations

from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nagare.dagfile.nodes import (
    Collector,
    boolean,
    integer,
    mapping,
    node_kind,
    number,
    scalar_text,
    string_list,
)
from nagare.errors import close_matches
from nagare.models import AllowFailure, TaskType, TriggerRule

ALLOW_FAILURE_KEYS = ("exit_codes",)
RULES = tuple(r.value for r in TriggerRule)
# Steps whose failed attempts have a server's reply code as their exit code (an HTTP status, an
# SMTP reply; README, "type: http", "type: mail"): their `retry_on_exit_codes` and
# `allow_failure.exit_codes` go up to 599.
STATUS_EXIT_STEPS = frozenset({TaskType.HTTP, TaskType.CHAT, TaskType.MAIL})


def max_exit_code(kind: TaskType) -> int:
    return 599 if kind in STATUS_EXIT_STEPS else 255


def condition_fields(
    fields: dict[str, Node], path: str, errors: Collector, maximum: int = 255
) -> dict[str, Any]:
    """The TaskDef keyword arguments of the fields present (absent fields keep the defaults);
    `maximum`: the highest exit code of the task's type."""
    found: dict[str, Any] = {}
    if "trigger_rule" in fields:
        found["trigger_rule"] = _trigger_rule(fields["trigger_rule"], path, errors)
    if "preconditions" in fields:
        found["preconditions"] = _preconditions(fields["preconditions"], path, errors)
    if "allow_failure" in fields:
        found["allow_failure"] = _allow_failure(fields["allow_failure"], path, errors, maximum)
    if "retry_backoff" in fields:
        found["retry_backoff"] = _backoff(fields["retry_backoff"], path, errors)
    if "retry_max_delay_seconds" in fields:
        field = f"{path}.retry_max_delay_seconds"
        found["retry_max_delay_seconds"] = (
            number(fields["retry_max_delay_seconds"], field, errors, positive=True) or 0
        )
    if "retry_on_exit_codes" in fields:
        found["retry_on_exit_codes"] = exit_codes(
            fields["retry_on_exit_codes"], f"{path}.retry_on_exit_codes", errors, maximum
        )
    if "retry_on_timeout" in fields:
        value = boolean(fields["retry_on_timeout"], f"{path}.retry_on_timeout", errors)
        found["retry_on_timeout"] = True if value is None else value
    return found


def check_conditions(
    kind: TaskType, fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    """What does not fit the task's type."""
    if kind is TaskType.TRIGGER_DAG and "preconditions" in fields:
        errors.add(
            fields["preconditions"],
            f"{path}.preconditions",
            "'preconditions' cannot be used with type 'trigger_dag' (it runs no command)",
        )


def _trigger_rule(node: Node, path: str, errors: Collector) -> TriggerRule:
    field = f"{path}.trigger_rule"
    value = scalar_text(node, field, errors)
    if value is None:
        return TriggerRule.ALL_SUCCESS
    try:
        return TriggerRule(value)
    except ValueError:
        close = close_matches(value, RULES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        errors.add(
            node,
            field,
            f"unknown trigger_rule '{value}'{hint} (expected one of {', '.join(RULES)})",
        )
        return TriggerRule.ALL_SUCCESS


def preconditions(node: Node, field: str, errors: Collector) -> tuple[str, ...]:
    """A list of shell commands (a single string is a list of one)."""
    commands = string_list(node, field, errors, True)
    for index, command in enumerate(commands):
        if not command.strip():
            at = node.value[index] if isinstance(node, SequenceNode) else node
            errors.add(at, f"{field}[{index}]", "expected a shell command, found an empty string")
    return tuple(c for c in commands if c.strip())


def _preconditions(node: Node, path: str, errors: Collector) -> tuple[str, ...]:
    return preconditions(node, f"{path}.preconditions", errors)


def _allow_failure(
    node: Node, path: str, errors: Collector, maximum: int = 255
) -> AllowFailure | None:
    field = f"{path}.allow_failure"
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return AllowFailure() if boolean(node, field, errors) else None
    if not isinstance(node, MappingNode):
        errors.add(
            node,
            field,
            f"expected true, false or {{exit_codes: [..]}}, found {node_kind(node)}",
        )
        return None
    values = mapping(node, ALLOW_FAILURE_KEYS, field, errors)
    if "exit_codes" not in values:
        errors.add(node, f"{field}.exit_codes", "'exit_codes' is required (expected e.g. [2, 3])")
        return None
    codes = exit_codes(values["exit_codes"], f"{field}.exit_codes", errors, maximum)
    return AllowFailure(exit_codes=codes) if codes else None


def exit_codes(node: Node, field: str, errors: Collector, maximum: int = 255) -> tuple[int, ...]:
    """A non-empty list of exit codes 1-`maximum` (255; 599 for steps with HTTP statuses)."""
    if not isinstance(node, SequenceNode) or not node.value:
        errors.add(
            node,
            field,
            f"expected a non-empty list of exit codes (1-{maximum}), found {node_kind(node)}",
        )
        return ()
    codes = []
    for index, item in enumerate(node.value):
        code = integer(item, f"{field}[{index}]", errors, minimum=1)
        if code is not None and code > maximum:
            errors.add(
                item, f"{field}[{index}]", f"expected an exit code 1-{maximum}, found {code}"
            )
        elif code is not None:
            codes.append(code)
    return tuple(dict.fromkeys(codes))


def _backoff(node: Node, path: str, errors: Collector) -> float:
    field = f"{path}.retry_backoff"
    if not isinstance(node, ScalarNode) or node.tag not in (
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
    ):
        errors.add(node, field, f"expected a multiplier >= 1, found {node_kind(node)}")
        return 1
    value = float(node.value)
    if not value >= 1 or value == float("inf"):
        errors.add(node, field, f"expected a multiplier >= 1, found {node.value}")
        return 1
    return value
