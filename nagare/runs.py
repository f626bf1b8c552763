"""What users do to runs: trigger, kill, retry, pause/activate, backfill.

Each operation is a compare-and-set in the store; then the scheduler is woken and, for a kill,
the local pools are told to kill the process group (callbacks wired by `app`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nagare.clock import now_ms, to_iso
from nagare.cron import dag_schedules
from nagare.dag_folder import DagFolder
from nagare.dagfile.calls import MAX_CALL_DEPTH
from nagare.engine.assignment import env_value
from nagare.engine.new_run import run_id_for
from nagare.engine.next_steps import descendants
from nagare.engine.params import Source, run_values
from nagare.engine.rerun import downstream_reruns, run_retry
from nagare.engine.run_rules import SUPERSEDED
from nagare.errors import BadRequest, Conflict, NotFound, Unprocessable
from nagare.models import (
    ACTIVE_TASK,
    HANDLER_TASK_IDS,
    Claim,
    DagDef,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    TaskType,
    Trigger,
)
from nagare.patterns import ENV_NAME

log = logging.getLogger("nagare.runs")
MAX_CONF_KEYS = 200


@dataclass(frozen=True)
class BackfillSlot:
    execution_date: int
    run_id: str
    exists: bool  # a run of this slot exists already: it is skipped


@dataclass
class Backfill:
    dag_id: str
    created: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    slots: list[BackfillSlot] = field(default_factory=list)  # every slot of the range, in order
    dry_run: bool = False
    max_active_runs: int = 0
    overlap_policy: str = "queue"

    @property
    def note(self) -> str:
        return backfill_note(len([s for s in self.slots if not s.exists]), self)


def backfill_note(new: int, backfill: Backfill) -> str:
    """How the new runs will start, given the DAG's `max_active_runs` and `overlap_policy`."""
    cap, policy = backfill.max_active_runs, backfill.overlap_policy
    if not new:
        return "every slot in the range has a run already: nothing to create"
    if not cap:
        return f"{new} run(s), started at once (no max_active_runs)"
    if new <= cap:
        return f"{new} run(s), at most {cap} active at once (max_active_runs)"
    if policy == "skip":
        return (
            f"max_active_runs is {cap} with overlap_policy skip: runs beyond the cap are "
            "recorded skipped, not run"
        )
    if policy == "latest":
        return (
            f"max_active_runs is {cap} with overlap_policy latest: waiting runs are superseded "
            "by newer ones, so only the newest slots run"
        )
    return f"{new} run(s), at most {cap} active at once (max_active_runs); the others wait"


def clean_conf(conf: Any) -> dict[str, str]:
    """Run parameters: an object of NAME -> scalar; values become strings (env vars)."""
    if conf is None:
        return {}
    if not isinstance(conf, dict):
        raise Unprocessable(f"conf must be an object of NAME: value, found {json_type(conf)}")
    if len(conf) > MAX_CONF_KEYS:
        raise Unprocessable(f"conf has {len(conf)} keys; at most {MAX_CONF_KEYS} are allowed")
    result = {}
    for key, value in conf.items():
        if not ENV_NAME.match(str(key)):
            raise Unprocessable(
                f"conf key '{key}' is not a valid environment variable name "
                "(expected [A-Za-z_][A-Za-z0-9_]*)"
            )
        result[str(key)] = env_value(value)
    return result


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _RunServiceDags(Protocol):
        def set_paused(self, dag_id: str, paused: bool, now: int) -> None: ...

        def version(self, digest: str) -> DagDef: ...

    class _RunServiceRuns(Protocol):
        def finish(
            self,
            run_id: str,
            status: RunStatus,
            now: int,
            dag: DagDef | None = None,
            failed: Sequence[str] = (),
        ) -> RunStatus | None: ...

        def mark_timed_out(self, run_id: str, reason: str) -> bool: ...

        def get(self, run_id: str, counts: bool = True) -> Run | None: ...

        def mark_killed(self, run_id: str) -> bool: ...

        def start(
            self,
            dag: DagDef,
            trigger: Trigger,
            execution_date: int,
            conf: dict[str, str],
            now: int,
            params: dict[str, Any] | None = None,
            parent: tuple[str, str] | None = None,
        ) -> Run | None: ...

    class _RunServiceTasks(Protocol):
        def children(self, run_id: str, parent_task_id: str) -> list[TaskInstance]: ...

        def get(self, run_id: str, task_id: str) -> TaskInstance | None: ...

        def of_run(self, run_id: str, include_children: bool = True) -> list[TaskInstance]: ...

        def reopen(
            self,
            run_id: str,
            queue: Sequence[tuple[str, int]],
            running: Sequence[str],
            pending: Sequence[str],
            now: int,
        ) -> int: ...

        def transition(
            self,
            task_ids: Sequence[str],
            from_status: Iterable[TaskStatus],
            to_status: TaskStatus,
            now: int,
            message: str | None = None,
        ) -> list[str]: ...

    class RunServiceStore(Protocol):
        """The parts of the store the run service reads and writes, and what of them."""

        @property
        def dags(self) -> _RunServiceDags: ...

        @property
        def runs(self) -> _RunServiceRuns: ...

        @property
        def tasks(self) -> _RunServiceTasks: ...


class RunService:
    def __init__(
        self,
        store: RunServiceStore,
        folder: DagFolder,
        max_catchup_runs: int,
        wake: Callable[[str | None], None],
        kill_local: Callable[[str], bool],
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.folder = folder
        self.max_catchup_runs = max_catchup_runs
        self.wake = wake
        self.kill_local = kill_local
        self.clock = clock
        # waiting steps a kill cancelled (app wires nagare.waits: their attempts close, their
        # child runs are killed)
        self.on_waits_cancelled: Callable[[list[TaskInstance]], None] = lambda tasks: None

    # ------------------------------------------------------------ DAG level

    def dag(self, dag_id: str) -> DagDef:
        dag = self.folder.get(dag_id)
        if dag is None:
            raise NotFound(f"DAG '{dag_id}' not found")
        return dag

    def trigger(
        self,
        dag_id: str,
        conf: Any = None,
        trigger: Trigger = Trigger.MANUAL,
        params: Any = None,
    ) -> Run:
        """A new run. For a DAG with `params:`, `params` (typed JSON values) or `conf` (values as
        text, converted like `nagare exec -p`) are checked (InvalidParams, 422); for a DAG
        without, either is today's conf (any names, values as strings)."""
        dag = self.dag(dag_id)
        values, resolved = self.run_parameters(dag, conf, params)
        now = self.clock()
        run = self.store.runs.start(dag, trigger, now, values, now, resolved)
        if run is None:
            raise Conflict(f"could not create a run of '{dag_id}'")
        log.info(
            "DAG '%s': %s run %s created",
            dag_id,
            trigger,
            run.run_id,
            extra={"dag_id": dag_id, "run_id": run.run_id},
        )
        self.wake(run.run_id)
        return self.store.runs.get(run.run_id) or run

    # ------------------------------------------------------------ child runs (`dag` steps)

    def start_child(self, claim: Claim, dag_id: str, params: dict[str, Any]) -> str:
        """A run of `dag_id` called by a `dag` step (its parent); returns its id. Refused
        (Unprocessable) when it would nest deeper than MAX_CALL_DEPTH calls."""
        chain = self._call_chain(claim.run.run_id)
        if len(chain) > MAX_CALL_DEPTH:
            path = " → ".join([*chain, dag_id])
            raise Unprocessable(f"calls would nest deeper than {MAX_CALL_DEPTH}: {path}")
        dag = self.dag(dag_id)
        values, resolved = self.run_parameters(dag, None, params)
        now = self.clock()
        parent = (claim.run.run_id, claim.task.task_id)
        run = self.store.runs.start(dag, Trigger.TRIGGERED, now, values, now, resolved, parent)
        if run is None:
            raise Conflict(f"could not create a run of '{dag_id}'")
        log.info(
            "DAG '%s': run %s called by %s of run %s",
            dag_id,
            run.run_id,
            claim.task.task_id,
            claim.run.run_id,
            extra={"dag_id": dag_id, "run_id": run.run_id},
        )
        self.wake(run.run_id)
        return run.run_id

    def _call_chain(self, run_id: str) -> list[str]:
        """The DAG ids of a run and the runs that called it, the first caller first (at most
        MAX_CALL_DEPTH + 1 of them: enough to know that a call is too deep)."""
        chain: list[str] = []
        current: str | None = run_id
        while current is not None and len(chain) <= MAX_CALL_DEPTH:
            run = self.store.runs.get(current, counts=False)
            if run is None:
                break
            chain.append(run.dag_id)
            current = run.parent[0] if run.parent else None
        return chain[::-1]

    def kill_child(self, run_id: str) -> None:
        """The calling step was killed (or timed out): its child run is killed."""
        self.kill_run(run_id)

    @staticmethod
    def run_parameters(
        dag: DagDef, conf: Any, params: Any
    ) -> tuple[dict[str, str], dict[str, Any]]:
        if conf is not None and params is not None:
            raise BadRequest("give either 'params' or 'conf', not both")
        given, source, name = (
            (params, "json", "params") if params is not None else (conf, "text", "conf")
        )
        if not dag.params:
            return clean_conf(given), {}
        if given is not None and not isinstance(given, dict):
            raise Unprocessable(
                f"{name} must be an object of NAME: value, found {json_type(given)}"
            )
        kind: Source = "json" if source == "json" else "text"
        return run_values(dag, given, kind)

    def set_paused(self, dag_id: str, paused: bool) -> bool:
        self.dag(dag_id)
        self.store.dags.set_paused(dag_id, paused, self.clock())
        self.wake(None)
        return paused

    def backfill(self, dag_id: str, start: int, end: int, dry_run: bool = False) -> Backfill:
        """A run per slot of the DAG's schedule in [start, end], the slots with a run skipped;
        with `dry_run`, only what it would create."""
        dag = self.dag(dag_id)
        if not dag.is_scheduled:
            raise Unprocessable(f"DAG '{dag_id}' has no schedule, so it has no slots to backfill")
        if end < start:
            raise BadRequest(f"end ({to_iso(end)}) is before start ({to_iso(start)})")
        limit = self.max_catchup_runs
        schedule = dag_schedules(dag.cron_expressions, dag.timezone, dag.start_date, dag.end_date)
        slots, dropped = schedule.slots_between(start - 1, end, limit)
        if dropped:
            raise Unprocessable(
                f"the range holds {len(slots) + dropped} slots; at most {limit} "
                "can be backfilled at once (max_catchup_runs)"
            )
        result = Backfill(
            dag_id,
            dry_run=dry_run,
            max_active_runs=dag.max_active_runs,
            overlap_policy=str(dag.overlap_policy),
        )
        now = self.clock()
        for slot in slots:
            run_id = run_id_for(dag_id, Trigger.BACKFILL, slot, now)
            exists = self.store.runs.get(run_id, counts=False) is not None
            result.slots.append(BackfillSlot(slot, run_id, exists))
        if dry_run:
            return result
        values, resolved = run_values(dag, {}, "json")  # the defaults (checked at load)
        for slot in slots:
            run = self.store.runs.start(dag, Trigger.BACKFILL, slot, values, now, resolved)
            if run is None:
                result.skipped.append(run_id_for(dag_id, Trigger.BACKFILL, slot, now))
            else:
                result.created.append(run.run_id)
                self.wake(run.run_id)
        return result

    # ------------------------------------------------------------ kill

    def run(self, run_id: str) -> Run:
        run = self.store.runs.get(run_id)
        if run is None:
            raise NotFound(f"run '{run_id}' not found")
        return run

    def task(self, run_id: str, task_id: str) -> TaskInstance:
        self.run(run_id)
        task = self.store.tasks.get(run_id, task_id)
        if task is None:
            raise NotFound(f"task '{task_id}' not found in run '{run_id}'")
        return task

    def kill_run(self, run_id: str) -> Run:
        run = self.run(run_id)
        if run.status.terminal:
            raise Conflict(f"run '{run_id}' already finished ({run.status})")
        self.store.runs.mark_killed(run_id)
        log.info("run %s killed", run_id, extra={"dag_id": run.dag_id, "run_id": run_id})
        self._end(run, RunStatus.CANCELLED, "killed")
        return self.run(run_id)

    def expire(self, run_id: str) -> None:
        """The run's deadline passed: running tasks are killed, the rest cancelled, and the run
        ends `failed` with the reason "timed out after N s"."""
        run = self.store.runs.get(run_id, counts=False)
        if run is None or run.status.terminal:
            return
        timeout = self.store.dags.version(run.dag_version).timeout_seconds
        reason = f"timed out after {timeout:g} s"
        if not self.store.runs.mark_timed_out(run_id, reason):
            return
        log.warning("run %s %s", run_id, reason, extra={"dag_id": run.dag_id, "run_id": run_id})
        self._end(run, RunStatus.FAILED, f"run {reason}")

    def _end(self, run: Run, status: RunStatus, message: str) -> None:
        """Cancel what is active (killing what runs); the run ends now if nothing still runs
        (with its handlers, unless it never started), else when its last task stops."""
        self._cancel(self.store.tasks.of_run(run.run_id), message)
        tasks = self.store.tasks.of_run(run.run_id)
        if not any(t.status in ACTIVE_TASK for t in tasks):
            dag = None if run.held else self.store.dags.version(run.dag_version)
            failed = [t.task_id for t in tasks if t.status is TaskStatus.FAILED]
            self.store.runs.finish(run.run_id, status, self.clock(), dag, failed)
        self.wake(run.run_id)

    def kill_task(self, run_id: str, task_id: str) -> TaskInstance:
        task = self.task(run_id, task_id)
        if task.status.terminal:
            raise Conflict(f"task '{task_id}' already finished ({task.status})")
        log.info(
            "task %s of run %s killed",
            task_id,
            run_id,
            extra={"run_id": run_id, "task_id": task_id},
        )
        targets = [task]
        if task.map_index is None:
            targets += [
                c for c in self.store.tasks.children(run_id, task_id) if c.status in ACTIVE_TASK
            ]
        self._cancel(targets)
        self.wake(run_id)
        return self.task(run_id, task_id)

    def _cancel(self, tasks: list[TaskInstance], message: str = "killed") -> None:
        now = self.clock()
        active = [t for t in tasks if t.status in ACTIVE_TASK]
        moved = set(
            self.store.tasks.transition(
                [t.id for t in active], ACTIVE_TASK, TaskStatus.CANCELLED, now, message=message
            )
        )
        for task in active:
            if task.id in moved and task.status is TaskStatus.RUNNING:
                self.kill_local(task.id)
        waiting = [t for t in active if t.id in moved and t.status is TaskStatus.WAITING]
        if waiting:
            self.on_waits_cancelled(waiting)

    # ------------------------------------------------------------ retry

    def retry_run(self, run_id: str) -> Run:
        """Re-open every failed, upstream_failed and cancelled task of a finished run (same run,
        new attempts); 409 while it is active or when there is nothing to retry."""
        run = self.run(run_id)
        if not run.status.terminal:
            raise Conflict(f"run '{run_id}' is {run.status}; only a finished run can be retried")
        dag = self.store.dags.version(run.dag_version)
        tasks = {t.task_id: t for t in self.store.tasks.of_run(run_id, include_children=False)}
        now, later = run_retry(dag, {i: t.status for i, t in tasks.items()})
        if not now and not later:
            raise Conflict(
                f"run '{run_id}' has no failed, upstream_failed or cancelled task to retry"
            )
        plan = _RetryPlan()
        for task_id in now:
            definition = dag.task(task_id)
            assert definition is not None  # run_retry names tasks of the DAG only
            one = self._retry_plan(run_id, tasks[task_id], definition.type, definition.retries)
            plan.queue += one.queue
            plan.running += one.running
            plan.pending += one.pending
        plan.pending += [tasks[t].id for t in later]
        self.store.tasks.reopen(run_id, plan.queue, plan.running, plan.pending, self.clock())
        log.info(
            "run %s retried (%d task(s))",
            run_id,
            len(now) + len(later),
            extra={"dag_id": run.dag_id, "run_id": run_id},
        )
        self.wake(run_id)
        return self.run(run_id)

    def retry_task(self, run_id: str, task_id: str, downstream: bool = False) -> TaskInstance:
        task = self.task(run_id, task_id)
        if task.status in (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING):
            raise Conflict(
                f"task '{task_id}' is {task.status}; only a finished task can be retried"
            )
        if task.task_id in HANDLER_TASK_IDS:
            raise Conflict(
                f"'{task_id}' is a handler: it runs when its run ends (retry a task of the run, "
                "and the handlers run again when it ends)"
            )
        run = self.run(run_id)
        if run.handling:
            raise Conflict(f"the handlers of run '{run_id}' are still running; retry after them")
        if run.status is RunStatus.SKIPPED or run.reason == SUPERSEDED:
            raise Conflict(
                f"run '{run_id}' never started ({run.reason or run.status}); trigger a new run"
            )
        dag = self.store.dags.version(run.dag_version)
        definition = dag.task(task.base_task_id)
        if definition is None:
            raise NotFound(f"task '{task.base_task_id}' is not in the run's DAG")
        plan = self._retry_plan(run_id, task, definition.type, definition.retries)
        pending = self._dependants(run_id, dag, task.base_task_id, exclude=plan.running)
        if downstream:  # its successful dependants run again too
            tops = self.store.tasks.of_run(run_id, include_children=False)
            again = set(
                downstream_reruns(dag, task.base_task_id, {t.task_id: t.status for t in tops})
            )
            pending += [t.id for t in tops if t.task_id in again and t.id not in plan.running]
        self.store.tasks.reopen(
            run_id, plan.queue, plan.running, pending + plan.pending, self.clock()
        )
        log.info(
            "task %s of run %s retried",
            task_id,
            run_id,
            extra={"dag_id": run.dag_id, "run_id": run_id, "task_id": task_id},
        )
        self.wake(run_id)
        return self.task(run_id, task_id)

    def _retry_plan(
        self, run_id: str, task: TaskInstance, kind: TaskType, retries: int
    ) -> _RetryPlan:
        plan = _RetryPlan()
        if task.map_index is not None:
            plan.queue.append((task.id, retries))
            parent = self.store.tasks.get(run_id, task.base_task_id)
            if parent is not None and parent.status.terminal:
                plan.running.append(parent.id)
            return plan
        if kind is TaskType.MAP:
            children = self.store.tasks.children(run_id, task.task_id)
            failed = [c for c in children if c.status is not TaskStatus.SUCCESS]
            if children and failed:
                plan.queue += [(c.id, retries) for c in failed]
                plan.running.append(task.id)
            else:
                plan.pending.append(task.id)  # expand again from the source's output
            return plan
        if kind is TaskType.TRIGGER_DAG:
            plan.pending.append(task.id)
            return plan
        plan.queue.append((task.id, retries))
        return plan

    def _dependants(self, run_id: str, dag: DagDef, task_id: str, exclude: list[str]) -> list[str]:
        names = set(descendants(dag, task_id))
        if not names:
            return []
        return [
            t.id
            for t in self.store.tasks.of_run(run_id, include_children=False)
            if t.task_id in names
            and t.id not in exclude
            and t.status in (TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED, TaskStatus.SKIPPED)
        ]


@dataclass
class _RetryPlan:
    queue: list[tuple[str, int]] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
