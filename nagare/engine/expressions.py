"""jq, the one expression language of DAG files: `{{ <jq> }}` templates in templated fields,
bare `when:` conditions, and the webhooks' payload extraction. The only module that imports
`jq` (tests/test_architecture.py); pure.

A `{{ … }}` is a template only when its expression starts with one of the context's top-level
names (`.dag`, `.run`, `.params`, `.tasks`, `.item`, `.index`) or is `item`; anything else (Go
and Helm templates, `docker ps --format '{{.Names}}'`) is left exactly as written. `{{ "{{" }}`
writes a literal `{{`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from nagare.patterns import TEMPLATE, template_expression

if TYPE_CHECKING:
    from nagare.models import DagDef

LITERAL_OPEN = '"{{"'


class ExpressionError(ValueError):
    """A jq expression that does not compile or fails at run time; the message is jq's."""


@dataclass(frozen=True)
class _Program:
    expression: str
    program: Any  # jq's compiled program


def _compile(expression: str) -> _Program:
    import jq  # loaded by the first DAG that uses an expression, not by every server

    try:
        return _Program(expression, jq.compile(expression))
    except ValueError as exc:
        raise ExpressionError(_first_line(exc, "syntax error")) from None


_compiled = lru_cache(maxsize=4096)(_compile)  # the programs that runs evaluate, kept


def compile_error(expression: str) -> str:
    """Why a jq expression does not compile ("" when it does). The program is not kept: a
    server checks every expression of every DAG at load, and each compiled program holds about
    13 KB of jq's heap; the ones a run evaluates are compiled again then, and kept."""
    try:
        _compile(expression)
    except ExpressionError as exc:
        return str(exc)
    return ""


def first_result(expression: str, value: Any) -> Any:
    """The expression's first result over `value` (None when it yields nothing)."""
    program = _compiled(expression).program
    try:
        return next(iter(program.input_value(value)), None)
    except ValueError as exc:
        raise ExpressionError(_first_line(exc, "jq error")) from None


def template_errors(text: str) -> list[str]:
    """Load-time check of a templated field: every template in it must compile."""
    problems = []
    for expression in template_expressions(text):
        problem = compile_error(expression)
        if problem:
            problems.append(f"template '{{{{ {expression} }}}}' does not compile: {problem}")
    return problems


def template_expressions(text: str) -> list[str]:
    """The jq expressions of the templates in `text` (the literal `{{ "{{" }}` excluded)."""
    found = []
    for match in TEMPLATE.finditer(text):
        expression = template_expression(match.group(1))
        if expression is not None and expression != LITERAL_OPEN:
            found.append(expression)
    return found


def render(text: str, context: dict[str, Any]) -> str:
    """`text` with each template replaced by its result over `context`: a string as-is,
    null (or no result) as nothing, anything else as compact JSON. ExpressionError names the
    template that failed."""

    def replace(match: re.Match[str]) -> str:
        expression = template_expression(match.group(1))
        if expression is None:
            return match.group(0)
        if expression == LITERAL_OPEN:
            return "{{"
        try:
            return as_text(first_result(expression, context))
        except ExpressionError as exc:
            raise ExpressionError(f"template '{{{{ {expression} }}}}' failed: {exc}") from None

    return TEMPLATE.sub(replace, text)


def condition(expression: str, context: dict[str, Any]) -> bool:
    """A `when:` condition: false and null (or no result) are false, anything else true."""
    value = first_result(expression, context)
    return value is not None and value is not False


def as_text(value: Any) -> str:
    """A jq result as template text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _first_line(exc: Exception, default: str) -> str:
    text = str(exc).strip()
    if not text:
        return default
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].removeprefix("jq: error: ").strip() if lines else default


def compile_errors(dag: DagDef) -> list[tuple[int, str, str]]:
    """Load-time check (`parse_dag(extra_check=...)`): every jq expression must compile."""
    found: list[tuple[int, str, str]] = []
    if dag.when:
        message = compile_error(dag.when)
        if message:
            found.append(
                (dag.when_line, "when", f"jq condition '{dag.when}' does not compile: {message}")
            )
    trigger = dag.trigger
    if trigger is None:
        return found
    for name, expression in trigger.extract_payload.items():
        message = compile_error(expression)
        if message:
            found.append(
                (
                    0,
                    f"trigger.extract_payload.{name}",
                    f"jq expression '{expression}' does not compile: {message}",
                )
            )
    return found
