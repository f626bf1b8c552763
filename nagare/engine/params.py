"""Run parameters: the one check every path that creates a run goes through (API, CLI, UI form,
webhook, `trigger_dag`, schedules), and the values it stores. Pure functions.

A value comes either as JSON (`source="json"`: the API's `params`, the UI form, a webhook's
extracted values, a `trigger_dag`'s `params:`, defaults), checked strictly against the declared
type, or as text (`source="text"`: `nagare exec -p K=V`, the API's `conf`, a parent run's
string conf), where a string is first converted to the declared type (`"10"` -> 10,
`"true"` -> true, JSON text for objects and arrays).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nagare.engine.assignment import env_value
from nagare.errors import InvalidParams, close_matches
from nagare.models import DagDef, ParamDef, ParamType, Run

Source = Literal["json", "text"]
MAX_PARAMS = 200  # declared by one DAG, or given to one run
MAX_SHOWN = 80  # characters of a value quoted in a message

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
INTEGER_TEXT = re.compile(r"^[+-]?[0-9]+$")

TYPE_NAMES = {
    ParamType.STRING: "a string",
    ParamType.INTEGER: "an integer",
    ParamType.NUMBER: "a number",
    ParamType.BOOLEAN: "true or false",
    ParamType.OBJECT: "a JSON object",
    ParamType.ARRAY: "a JSON array",
}


@dataclass(frozen=True)
class ParamProblem:
    param: str
    message: str


def resolve_params(
    declared: tuple[ParamDef, ...], given: Mapping[str, Any], source: Source
) -> tuple[dict[str, Any], list[ParamProblem]]:
    """The run's parameters (declared order, defaults filled in) and every problem: unknown
    names, missing required ones, values of the wrong type or outside enum/bounds/pattern. A
    null value counts as not given."""
    by_name = {p.name: p for p in declared}
    problems = [
        ParamProblem(name, unknown_message(name, by_name)) for name in given if name not in by_name
    ]
    resolved: dict[str, Any] = {}
    for param in declared:
        value = given.get(param.name)
        if value is None:
            if param.has_default:
                resolved[param.name] = param.default
            elif param.required:
                problems.append(
                    ParamProblem(param.name, f"required, not given (expected {expected(param)})")
                )
            continue
        checked, problem = check_value(param, value, source)
        if problem:
            problems.append(ParamProblem(param.name, problem))
        else:
            resolved[param.name] = checked
    return resolved, problems


def check_value(param: ParamDef, value: Any, source: Source) -> tuple[Any, str]:
    """`value` as the parameter's type, or a message saying what was found and expected."""
    if source == "text" and isinstance(value, str):
        converted = from_text(param.type, value)
        if converted is None:
            return None, f"expected {expected(param)}, found '{shown(value)}'"
        value = converted[0]
    typed = of_type(param.type, value)
    if typed is None:
        return None, f"expected {expected(param)}, found {describe(value)}"
    value = typed[0]
    if param.enum is not None and not any(same(value, choice) for choice in param.enum):
        return None, f"expected one of {choices(param.enum)}, found {describe(value)}"
    if param.minimum is not None and value < param.minimum:
        return None, f"expected {expected(param)}, found {describe(value)}"
    if param.maximum is not None and value > param.maximum:
        return None, f"expected {expected(param)}, found {describe(value)}"
    if param.pattern and re.search(param.pattern, value) is None:
        return None, f"expected a string matching {param.pattern}, found {describe(value)}"
    return value, ""


def of_type(kind: ParamType, value: Any) -> tuple[Any] | None:
    """(value,) when a JSON value has the type (an integer given as 3.0 becomes 3), else None."""
    if kind is ParamType.STRING:
        return (value,) if isinstance(value, str) else None
    if kind is ParamType.BOOLEAN:
        return (value,) if isinstance(value, bool) else None
    if kind is ParamType.OBJECT:
        return (value,) if isinstance(value, dict) else None
    if kind is ParamType.ARRAY:
        return (value,) if isinstance(value, list) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind is ParamType.INTEGER:
        if isinstance(value, float):
            return (int(value),) if value.is_integer() else None
        return (value,)
    return (value,)


def from_text(kind: ParamType, text: str) -> tuple[Any] | None:
    """A command-line (or conf) string as a JSON value of the declared type, else None."""
    stripped = text.strip()
    if kind is ParamType.STRING:
        return (text,)
    if kind is ParamType.INTEGER:
        return (int(stripped),) if INTEGER_TEXT.match(stripped) else None
    if kind is ParamType.NUMBER:
        if INTEGER_TEXT.match(stripped):
            return (int(stripped),)
        try:
            number = float(stripped)
        except ValueError:
            return None
        return (number,) if math.isfinite(number) else None
    if kind is ParamType.BOOLEAN:
        word = stripped.lower()
        if word in TRUE_WORDS:
            return (True,)
        return (False,) if word in FALSE_WORDS else None
    try:
        return (json.loads(text),)
    except ValueError:
        return None


def same(value: Any, choice: Any) -> bool:
    """Equal as JSON values (true is not 1)."""
    if isinstance(value, bool) != isinstance(choice, bool):
        return False
    return bool(value == choice)


def expected(param: ParamDef) -> str:
    """What a parameter accepts, in words: "an integer from 1 to 10000"."""
    if param.enum is not None:
        return f"one of {choices(param.enum)}"
    text = TYPE_NAMES[param.type]
    low, high = (number_text(v) for v in (param.minimum, param.maximum))
    if low and high:
        text += f" from {low} to {high}"
    elif low:
        text += f" >= {low}"
    elif high:
        text += f" <= {high}"
    if param.pattern:
        text += f" matching {param.pattern}"
    return text


def number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(value)


def choices(values: tuple[Any, ...]) -> str:
    return ", ".join(json.dumps(v, ensure_ascii=False) for v in values)


def describe(value: Any) -> str:
    """A found value for a message: its JSON type and (short) text."""
    text = shown(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    if isinstance(value, bool):
        return f"the boolean {text}"
    if isinstance(value, int | float):
        return f"the number {text}"
    if isinstance(value, str):
        return f"the string {text}"
    if isinstance(value, list):
        return f"the array {text}"
    if value is None:
        return "null"
    return f"the object {text}"


def shown(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "\u2026"


def unknown_message(name: str, by_name: Mapping[str, ParamDef]) -> str:
    close = close_matches(name, list(by_name), n=1)
    if close:
        return f"unknown parameter; did you mean '{close[0]}'?"
    known = ", ".join(by_name) or "none"
    return f"unknown parameter (expected one of: {known})"


# ---------------------------------------------------------------- a run's conf and params


def run_values(
    dag: DagDef, given: Mapping[str, Any] | None, source: Source
) -> tuple[dict[str, str], dict[str, Any]]:
    """(conf, params) of a new run of `dag`. With `params:` declared, `given` is checked
    (InvalidParams names every bad parameter), params are the resolved values and conf their
    environment form; without, every value becomes a string in conf and params stay empty
    (the caller checked the names, see `runs.clean_conf`).
    """
    given = given or {}
    if not dag.params:
        return {str(name): env_value(value) for name, value in given.items()}, {}
    if len(given) > MAX_PARAMS:
        raise InvalidParams(f"{len(given)} parameters given; at most {MAX_PARAMS}", [])
    resolved, problems = resolve_params(dag.params, given, source)
    if problems:
        raise InvalidParams(
            problems_message(dag.dag_id, problems), [(p.param, p.message) for p in problems]
        )
    return {name: env_value(value) for name, value in resolved.items()}, resolved


def problems_message(dag_id: str, problems: list[ParamProblem]) -> str:
    listed = "; ".join(f"{p.param}: {p.message}" for p in problems)
    return f"invalid parameters for DAG '{dag_id}': {listed}"


def default_problems(dag: DagDef) -> list[ParamProblem]:
    """What a run started with no values (a schedule, catch-up, backfill) would lack."""
    return resolve_params(dag.params, {}, "json")[1]


def triggered_values(
    target: DagDef, task_params: Mapping[str, Any], parent: DagDef, parent_run: Run
) -> tuple[dict[str, str], dict[str, Any]]:
    """(conf, params) of the run a `trigger_dag` task starts: its own `params:` when it has
    them; else, for a target with `params:`, the parent run's values of the names the target
    declares (the rest take their defaults); else the parent run's conf (as before params)."""
    if task_params:
        return run_values(target, task_params, "json")
    if not target.params:
        return dict(parent_run.conf), {}
    declared = {p.name for p in target.params}
    typed = bool(parent.params)
    source = parent_run.params if typed else parent_run.conf
    inherited = {k: v for k, v in source.items() if k in declared}
    return run_values(target, inherited, "json" if typed else "text")
