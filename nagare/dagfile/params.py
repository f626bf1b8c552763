"""`params:` of a DAG file (the declared run parameters) and the `params:` a `trigger_dag` task
passes to its target: read from YAML nodes, every problem reported with its line."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nagare.dagfile.nodes import (
    Collector,
    boolean,
    is_null,
    mapping,
    node_kind,
    scalar_text,
)
from nagare.dagfile.yaml_nodes import scalar as yaml_scalar
from nagare.engine.params import MAX_PARAMS, check_value, default_problems, of_type
from nagare.errors import close_matches
from nagare.models import DagDef, ParamDef, ParamType, TriggerDef
from nagare.patterns import ENV_NAME

PARAM_KEYS = (
    "type",
    "default",
    "required",
    "enum",
    "minimum",
    "maximum",
    "pattern",
    "description",
)
TYPE_LIST = ", ".join(t.value for t in ParamType)
NUMERIC = (ParamType.INTEGER, ParamType.NUMBER)
NAME_EXPECTED = "a variable name [A-Za-z_][A-Za-z0-9_]* (it becomes the task's env var)"


def build_params(node: Node, errors: Collector) -> tuple[ParamDef, ...]:
    """The DAG's `params:` mapping: `NAME: default` (a string) or `NAME: {type, default, ...}`."""
    if is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        errors.add(
            node,
            "params",
            f"expected a mapping of NAME: default or NAME: {{type: ..., default: ...}}, "
            f"found {node_kind(node)}",
        )
        return ()
    if len(node.value) > MAX_PARAMS:
        errors.add(node, "params", f"{len(node.value)} parameters; the limit is {MAX_PARAMS}")
        return ()
    params: dict[str, ParamDef] = {}
    for key_node, value_node in node.value:
        name = _name(key_node, "params", errors)
        if name is None:
            continue
        if name in params:
            errors.add(key_node, f"params.{name}", f"'{name}' is given twice")
        param = _param(name, value_node, errors)
        if param is not None:
            params[name] = param
    return tuple(params.values())


def _name(key_node: Node, field: str, errors: Collector) -> str | None:
    if not isinstance(key_node, ScalarNode):
        errors.add(key_node, field, f"expected a parameter name, found {node_kind(key_node)}")
        return None
    name = str(key_node.value)
    if not ENV_NAME.match(name):
        errors.add(key_node, f"{field}.{name}", f"'{name}' is not valid (expected {NAME_EXPECTED})")
        return None
    return name


def _param(name: str, node: Node, errors: Collector) -> ParamDef | None:
    field = f"params.{name}"
    if isinstance(node, SequenceNode):
        errors.add(
            node,
            field,
            "expected a default value or a mapping with 'type', 'default', ..., found a list "
            "(write {type: array, default: [...]} for a list parameter)",
        )
        return None
    if isinstance(node, ScalarNode):  # shorthand: a string parameter with its default
        if is_null(node):
            return ParamDef(name)
        return ParamDef(name, default=str(node.value), has_default=True, required=False)
    assert isinstance(node, MappingNode)
    fields = mapping(node, PARAM_KEYS, field, errors)
    kind = _type(fields, field, errors)
    param = ParamDef(
        name,
        type=kind,
        enum=_enum(fields, kind, field, errors),
        minimum=_bound(fields, "minimum", kind, field, errors),
        maximum=_bound(fields, "maximum", kind, field, errors),
        pattern=_pattern(fields, kind, field, errors),
        description=scalar_text(fields["description"], f"{field}.description", errors) or ""
        if "description" in fields
        else "",
    )
    if param.minimum is not None and param.maximum is not None and param.minimum > param.maximum:
        errors.add(
            fields["maximum"],
            f"{field}.maximum",
            f"maximum {fields['maximum'].value} is below minimum {fields['minimum'].value}",
        )
    return _with_default(param, fields, node, field, errors)


def _type(fields: dict[str, Node], field: str, errors: Collector) -> ParamType:
    if "type" not in fields:
        return ParamType.STRING
    text = scalar_text(fields["type"], f"{field}.type", errors)
    if text is None:
        return ParamType.STRING
    try:
        return ParamType(text)
    except ValueError:
        close = close_matches(text, [t.value for t in ParamType], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        errors.add(
            fields["type"],
            f"{field}.type",
            f"unknown type '{text}'{hint} (expected one of: {TYPE_LIST})",
        )
        return ParamType.STRING


def _with_default(
    param: ParamDef, fields: dict[str, Node], node: Node, field: str, errors: Collector
) -> ParamDef:
    required = None
    if "required" in fields:
        required = boolean(fields["required"], f"{field}.required", errors)
    if "default" not in fields or is_null(fields["default"]):
        if required is False:
            return replace(param, required=False)
        return param
    if required:
        errors.add(
            fields["required"],
            f"{field}.required",
            "a parameter with a default is never required (remove 'required: true' or the default)",
        )
    value = yaml_value(fields["default"], param.type)
    checked, problem = check_value(param, value, "json")
    if problem:
        errors.add(fields["default"], f"{field}.default", problem)
    return replace(param, default=checked, has_default=True, required=False)


def _enum(
    fields: dict[str, Node], kind: ParamType, field: str, errors: Collector
) -> tuple[Any, ...] | None:
    if "enum" not in fields:
        return None
    node = fields["enum"]
    if not isinstance(node, SequenceNode) or not node.value:
        errors.add(node, f"{field}.enum", f"expected a non-empty list, found {node_kind(node)}")
        return None
    values = []
    for index, item in enumerate(node.value):
        typed = of_type(kind, yaml_value(item, kind))
        if typed is None:
            errors.add(
                item,
                f"{field}.enum[{index}]",
                f"expected a value of type {kind}, found {node_kind(item)}",
            )
            continue
        values.append(typed[0])
    return tuple(values)


def _bound(
    fields: dict[str, Node], key: str, kind: ParamType, field: str, errors: Collector
) -> float | None:
    if key not in fields:
        return None
    node = fields[key]
    if kind not in NUMERIC:
        errors.add(node, f"{field}.{key}", f"'{key}' applies to integer and number parameters")
        return None
    value = yaml_value(node, ParamType.NUMBER)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        errors.add(node, f"{field}.{key}", f"expected a number, found {node_kind(node)}")
        return None
    return value


def _pattern(fields: dict[str, Node], kind: ParamType, field: str, errors: Collector) -> str:
    if "pattern" not in fields:
        return ""
    node = fields["pattern"]
    text = scalar_text(node, f"{field}.pattern", errors) or ""
    if kind is not ParamType.STRING:
        errors.add(node, f"{field}.pattern", "'pattern' applies to string parameters")
        return ""
    try:
        re.compile(text)
    except re.error as exc:
        errors.add(node, f"{field}.pattern", f"'{text}' is not a valid regular expression: {exc}")
        return ""
    return text


def yaml_value(node: Node, kind: ParamType | None = None) -> Any:
    """A YAML node as a JSON value. A scalar meant for a string parameter keeps its literal text
    (`default: 0755` is "0755"), as every string field of a DAG file does."""
    if isinstance(node, MappingNode):
        return {str(k.value): yaml_value(v) for k, v in node.value}
    if isinstance(node, SequenceNode):
        return [yaml_value(item) for item in node.value]
    if is_null(node):
        return None
    if kind is ParamType.STRING:
        return str(node.value)
    tag = node.tag.rsplit(":", 1)[-1]
    if tag in ("int", "float", "bool"):
        value = yaml_scalar(node.value)
        if tag == "float" and not math.isfinite(float(value)):
            return str(node.value)
        return value
    return str(node.value)


# ---------------------------------------------------------------- checks across the file


def trigger_dag_params(node: Node, field: str, errors: Collector) -> dict[str, Any]:
    """A `trigger_dag` task's `params:`: NAME -> value (checked against the target when the task
    runs: the target may be another file)."""
    if is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        errors.add(node, field, f"expected a mapping of NAME: value, found {node_kind(node)}")
        return {}
    values: dict[str, Any] = {}
    for key_node, value_node in node.value:
        name = _name(key_node, field, errors)
        if name is not None:
            values[name] = yaml_value(value_node)
    return values


def check_dag_params(
    dag: DagDef, params_node: Node | None, trigger_node: Node | None, errors: Collector
) -> None:
    """A scheduled DAG must run with its defaults alone; a webhook extracts declared names."""
    if not dag.params:
        return
    if dag.is_scheduled:
        for problem in default_problems(dag):
            errors.add(
                _key_node(params_node, problem.param),
                f"params.{problem.param}",
                f"has no default, but the DAG has a schedule (scheduled runs get the defaults; "
                f"give a default or remove the schedule); {problem.message}",
            )
    if dag.trigger is not None:
        _check_extract(dag.params, dag.trigger, trigger_node, errors)


def _key_node(node: Node | None, name: str) -> Node | None:
    if isinstance(node, MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == name:
                return key_node
    return node


def _extract_node(trigger: Node | None, name: str) -> Node | None:
    if isinstance(trigger, MappingNode):
        for key_node, value in trigger.value:
            if isinstance(key_node, ScalarNode) and key_node.value == "extract_payload":
                return _key_node(value, name)
    return trigger


def _check_extract(
    params: tuple[ParamDef, ...], trigger: TriggerDef, node: Node | None, errors: Collector
) -> None:
    names = [p.name for p in params]
    for name in trigger.extract_payload:
        if name not in names:
            close = close_matches(name, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (declared: {', '.join(names)})"
            errors.add(
                _extract_node(node, name),
                f"trigger.extract_payload.{name}",
                f"'{name}' is not a declared parameter{hint}; with params: declared, the "
                "extracted values are the run's parameters",
            )
