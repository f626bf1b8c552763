"""What a run returns to the `dag` step that called it: its DAG's `outputs:` templates,
rendered when the run succeeds over `{dag, run, params, tasks}`, where `tasks` holds every task
of the run (status, exit code, outputs; a map task's outputs are lists). Pure."""

from __future__ import annotations

from typing import Any

from nagare.engine.context import UpstreamRow, run_context, tasks_context
from nagare.engine.expressions import ExpressionError, render
from nagare.models import DagDef, Run


def dag_outputs(dag: DagDef, run: Run, rows: list[UpstreamRow]) -> dict[str, str]:
    """The rendered outputs; ExpressionError names the output whose template failed."""
    context: dict[str, Any] = {**run_context(dag, run), "tasks": tasks_context(rows)}
    outputs: dict[str, str] = {}
    for name, template in dag.outputs.items():
        try:
            outputs[name] = render(template, context)
        except ExpressionError as exc:
            raise ExpressionError(f"outputs.{name}: {exc}") from None
    return outputs
