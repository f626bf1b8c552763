"""Whether a new run starts at all: the DAG's own `when` condition, a jq expression over a
minimal context `{dag, run, params}` (`context.run_context`, the run's part of a task's
context). Pure: the jq evaluation is passed in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nagare.engine.context import run_context
from nagare.models import DagDef, Run, RunStatus

Condition = Callable[[str, Any], bool]  # (jq expression, context) -> holds; ValueError: failed


def run_gate(dag: DagDef, run: Run, holds: Condition) -> tuple[RunStatus, str] | None:
    """None when the run may start; else how it ends without running anything and why:
    `skipped` when `when` is false, `failed` when the condition itself fails."""
    if not dag.when:
        return None
    try:
        if holds(dag.when, run_context(dag, run)):
            return None
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "error"
        return RunStatus.FAILED, f"when: {dag.when} failed: {message}"
    return RunStatus.SKIPPED, f"when: {dag.when} was false"
