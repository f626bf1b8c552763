"""Whether a new run starts at all: the DAG's own `when` condition, a jq expression over a
minimal context `{dag, run, params}` (built here; the task-level context with `tasks`, `item`
and `index` is the template engine's). Pure: the jq evaluation is passed in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nagare.clock import to_iso
from nagare.engine.context import run_params
from nagare.models import SLOT_TRIGGERS, DagDef, Run, RunStatus

Condition = Callable[[str, Any], bool]  # (jq expression, context) -> holds; ValueError: failed


def run_context(dag: DagDef, run: Run) -> dict[str, Any]:
    """`{dag: {id}, run: {id, trigger, logical_date, scheduled_time, conf}, params}` (params: the
    run's typed parameters, or its conf for a DAG without `params:`)."""
    logical = to_iso(run.execution_date)
    return {
        "dag": {"id": dag.dag_id},
        "run": {
            "id": run.run_id,
            "trigger": str(run.trigger),
            "logical_date": logical,
            "scheduled_time": logical if run.trigger in SLOT_TRIGGERS else None,
            "conf": dict(run.conf),
        },
        "params": run_params(run),
    }


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
