"""DAG-level `preconditions`: the commands that decide whether a new run starts at all. They run
on the server, through the local executor (the same process handling as a task: its own process
group, killed with the server, a time limit), with the environment a task of the run would get
before its own `env`. The verdict goes back to the scheduler through `on_done(run_id, status,
reason)` (status None: the run may start)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nagare.clock import to_iso
from nagare.engine.assignment import SECRET_VARIABLES
from nagare.engine.conditions import precondition_reason, with_preconditions
from nagare.executors import Executor
from nagare.executors.reactor import Reactor
from nagare.models import SLOT_TRIGGERS, Assignment, DagDef, Outcome, Run, RunStatus

log = logging.getLogger("nagare.run_checks")
CHECK_TIMEOUT_SECONDS = 60.0  # DAG preconditions are meant to be quick checks
TAIL_LINES = 20

OnDone = Callable[[str, RunStatus | None, str], None]


def check_env(base: Mapping[str, str], dag: DagDef, run: Run) -> dict[str, str]:
    """The server's environment without Nagare's secrets, the run's NAGARE_* variables, its
    parameters (conf), then the DAG's env."""
    hidden = set(SECRET_VARIABLES)
    if dag.trigger is not None and dag.trigger.secret_env:
        hidden.add(dag.trigger.secret_env)
    env = {k: v for k, v in base.items() if k not in hidden}
    execution = to_iso(run.execution_date) or ""
    env.update(
        {
            "NAGARE_DAG_ID": dag.dag_id,
            "NAGARE_RUN_ID": run.run_id,
            "NAGARE_TRIGGER": str(run.trigger),
            "NAGARE_EXECUTION_DATE": execution,
            "NAGARE_SCHEDULED_TIME": execution if run.trigger in SLOT_TRIGGERS else "",
        }
    )
    env.update({k: str(v) for k, v in run.conf.items()})
    env.update(dag.env)
    return env


def verdict(outcome: Outcome, tail: str) -> tuple[RunStatus | None, str]:
    """How the checks ended: (None, "") when they all passed."""
    if outcome.succeeded:
        return None, ""
    reason = precondition_reason(outcome.exit_code, tail)
    if reason:
        return RunStatus.SKIPPED, reason
    if outcome.timed_out:
        return RunStatus.FAILED, f"preconditions timed out after {CHECK_TIMEOUT_SECONDS:g}s"
    what = outcome.error or f"exit code {outcome.exit_code}"
    return RunStatus.FAILED, f"preconditions could not run: {what}"


@dataclass
class _Check:
    """One run's checks; also their listener (the executor seam's callbacks)."""

    run_id: str
    on_done: OnDone
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def line(self, stream: str, text: str) -> None:
        self.lines.append(text)

    def started(self, pid: int, start_time: float) -> None:
        return None

    def ended(self, outcome: Outcome) -> None:
        status, reason = verdict(outcome, "\n".join(self.lines))
        try:
            self.on_done(self.run_id, status, reason)
        except Exception:
            log.exception("recording the preconditions of run %s failed", self.run_id)


class RunPreconditions:
    """Starts the checks of a run in the reactor's thread (where the executor lives)."""

    def __init__(
        self,
        reactor: Reactor,
        executor: Executor,
        base_env: Mapping[str, str],
        on_done: OnDone,
    ) -> None:
        self.reactor = reactor
        self.executor = executor
        self.base_env = dict(base_env)
        self.on_done = on_done

    def check(self, dag: DagDef, run: Run) -> None:
        """(any thread) Run `dag.preconditions` for `run`; the verdict comes to `on_done`."""
        assignment = Assignment(
            task_instance_id=f"{run.run_id}/preconditions",
            run_id=run.run_id,
            dag_id=dag.dag_id,
            task_id="preconditions",
            attempt=1,
            command=with_preconditions(":", dag.preconditions),
            env=check_env(self.base_env, dag, run),
            timeout_seconds=CHECK_TIMEOUT_SECONDS,
        )
        self.reactor.post(lambda: self._start(assignment))

    def _start(self, assignment: Assignment) -> None:
        check = _Check(assignment.run_id, self.on_done)
        try:
            self.executor.start(assignment, check)
        except Exception as exc:
            log.exception("the preconditions of run %s could not start", assignment.run_id)
            check.ended(Outcome(exit_code=None, error=f"internal error: {exc}"))
