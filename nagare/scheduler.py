"""The scheduler thread: fires cron slots on time and moves runs forward.

It sleeps on a condition until the next cron slot or retry is due, or until it is woken by a
finished task, a new run or a DAG-folder change; a slow sweep over active runs is only a safety
net. Decisions are pure functions (`slots_to_fire`, `progress.plan_run`) of data and `now`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nagare.clock import now_ms, to_iso
from nagare.cron import Schedule, Schedules, dag_schedules
from nagare.dag_folder import DagFolder
from nagare.engine.assignment import parse_map_items
from nagare.engine.conditions import UPSTREAM_DID_NOT_SUCCEED
from nagare.engine.new_run import map_children
from nagare.engine.next_steps import Plan, plan_changes
from nagare.engine.params import run_values, triggered_values
from nagare.engine.run_gate import Condition, run_gate
from nagare.engine.run_rules import handler_step
from nagare.errors import InvalidParams
from nagare.liveness import Heartbeat
from nagare.logs import LogFiles
from nagare.models import (
    HANDLER_TASK_IDS,
    WAIT_POOL,
    DagDef,
    InstanceLike,
    Run,
    RunStatus,
    TaskInstance,
    TaskState,
    TaskStatus,
    Trigger,
)
from nagare.store import DagState

log = logging.getLogger("nagare.scheduler")
SWEEP_SECONDS = 5.0
MAP_SOURCE_WAIT_MS = 10_000  # a map source's log on a dead master: how long to wait


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class SchedulerSettings(Protocol):
        """The settings the scheduler reads (`Config` has them)."""

        @property
        def max_map_items(self) -> int: ...
        @property
        def max_catchup_runs(self) -> int: ...
        @property
        def misfire_grace_seconds(self) -> float: ...


@dataclass
class Firing:
    """What a DAG's schedule asks for now."""

    slots: list[tuple[int, Trigger]] = field(default_factory=list)
    last_slot: int | None = None
    dropped: int = 0


def slots_to_fire(
    schedule: Schedule | Schedules,
    state: DagState,
    now: int,
    catchup: bool,
    max_catchup: int,
    grace_ms: int,
) -> Firing:
    """Which slots to run now. A slot is `scheduled` when it is found within `grace_ms` of its
    time, else `catchup`; without catchup, late slots are skipped (only the watermark moves)."""
    since = state.last_slot if state.last_slot is not None else state.watermark
    limit = max_catchup if catchup else 1
    slots, dropped = schedule.slots_between(since, now, limit)
    if not slots:
        return Firing()
    firing = Firing(last_slot=slots[-1], dropped=dropped if catchup else 0)
    for slot in slots:
        on_time = now - slot <= grace_ms
        if on_time:
            firing.slots.append((slot, Trigger.SCHEDULED))
        elif catchup:
            firing.slots.append((slot, Trigger.CATCHUP))
    return firing


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _SchedulerDags(Protocol):
        def version(self, digest: str) -> DagDef: ...

        def ensure_state(self, dag_id: str, now: int) -> DagState: ...

        def set_last_slot(self, dag_id: str, slot: int, now: int) -> None: ...

    class _SchedulerRuns(Protocol):
        def active_ids(self) -> list[str]: ...

        def finish(
            self,
            run_id: str,
            status: RunStatus,
            now: int,
            dag: DagDef | None = None,
            failed: Sequence[str] = (),
            reason: str = "",
            outputs: dict[str, str] | None = None,
        ) -> RunStatus | None: ...

        def release_waiting(self, dag: DagDef, now: int) -> list[str]: ...

        def dags_with_waiting(self) -> list[str]: ...

        def next_deadline(self) -> int | None: ...

        def past_deadline(self, now: int) -> list[str]: ...

        def end_handling(self, run_id: str) -> bool: ...

        def end_unstarted(self, run_id: str, status: RunStatus, reason: str, now: int) -> bool: ...

        def get(self, run_id: str, counts: bool = True) -> Run | None: ...

        def start(
            self,
            dag: DagDef,
            trigger: Trigger,
            execution_date: int,
            conf: dict[str, str],
            now: int,
            params: dict[str, Any] | None = None,
        ) -> Run | None: ...

    class _SchedulerTasks(Protocol):
        def child_counts(
            self, run_id: str, allowed_failures: bool = False
        ) -> dict[str, dict[TaskStatus, int]]: ...

        def complete(
            self,
            task_instance_id: str,
            from_status: Sequence[TaskStatus],
            to_status: TaskStatus,
            now: int,
            message: str,
            output_tail: str = "",
        ) -> bool: ...

        def due_retries(self, now: int) -> list[TaskInstance]: ...

        def expand_map(
            self, parent_id: str, children: Sequence[TaskInstance], now: int
        ) -> bool: ...

        def get(self, run_id: str, task_id: str) -> TaskInstance | None: ...

        def next_retry_at(self) -> int | None: ...

        def queued_ids(self, pool: str) -> list[str]: ...

        def run_states(self, run_id: str) -> list[TaskState]: ...

        def start_internal(
            self, task_instance_id: str, from_status: Sequence[TaskStatus], now: int
        ) -> bool: ...

        def states_of(self, task_instance_ids: Sequence[str]) -> list[TaskState]: ...

        def transition(
            self,
            task_ids: Sequence[str],
            from_status: Iterable[TaskStatus],
            to_status: TaskStatus,
            now: int,
            message: str | None = None,
        ) -> list[str]: ...

    class SchedulerStore(Protocol):
        """The parts of the store the scheduler reads and writes, and what of them."""

        @property
        def dags(self) -> _SchedulerDags: ...

        @property
        def runs(self) -> _SchedulerRuns: ...

        @property
        def tasks(self) -> _SchedulerTasks: ...


class StepWaits(Protocol):
    """What the scheduler asks of the steps that wait (nagare.waits.Waits)."""

    def begin(self, task_instance_ids: Iterable[str], now: int) -> None: ...

    def expire(self, now: int) -> None: ...

    def next_deadline(self) -> int | None: ...

    def child_ended(self, run_id: str) -> None: ...

    def run_outputs(self, run: Run, dag: DagDef) -> tuple[dict[str, str] | None, str]: ...


class Scheduler:
    def __init__(
        self,
        store: SchedulerStore,
        folder: DagFolder,
        logs: LogFiles,
        settings: SchedulerSettings,
        on_queued: Callable[[dict[str, int]], None],
        clock: Callable[[], int] = now_ms,
        fire_schedules: bool = True,
        condition: Condition | None = None,
    ) -> None:
        self.store = store
        # called with the id of a run whose deadline passed (app wires the run service's
        # `expire`: it kills the running tasks and cancels the rest)
        self.expire: Callable[[str], None] = lambda run_id: None
        self.condition = condition  # evaluates a DAG's `when` (jq); None: no DAG has one
        # runs a DAG's `preconditions` for a run (set by `app`; the verdict: `preconditions_done`)
        self.check_preconditions: Callable[[DagDef, Run], None] | None = None
        self._checking: set[str] = set()  # runs whose preconditions run now
        self._checked: set[str] = set()  # runs whose preconditions passed, not yet started
        self.folder = folder
        self.logs = logs
        self.settings = settings
        self.on_queued = on_queued
        self.clock = clock
        self.fire_schedules = fire_schedules
        # whether this master leads (app wires `Leadership.leads`): only the leader fires cron
        # slots and ends runs past their deadline; every master promotes and settles runs
        self.leads: Callable[[], bool] = lambda: True
        self._cond = threading.Condition()
        # run id -> ids of task instances that finished since the last pass (None: reload all)
        self._dirty: dict[str, set[str] | None] = {}
        self._views: dict[str, _View] = {}
        self._schedules_changed = True
        self._next_slot: dict[str, int] = {}
        self._last_sweep: int | None = None  # epoch ms of the last safety sweep
        self.last_lag_ms = 0
        # the earliest `ready_at` of a task up for retry, as far as known (a lower bound; None
        # with _retry_known: none), so that a pass reads the retries only when one is due
        self._retry_at: int | None = None
        self._retry_known = False
        # the earliest run deadline as far as known (see _next_run_deadline)
        self._run_deadline: int | None = None
        self._run_deadline_known = False
        # one pass at a time: the scheduler thread's, or a caller's of `settle_finished`
        self._pass_lock = threading.Lock()
        self.liveness = Heartbeat("scheduler", SWEEP_SECONDS)  # a pass at least this often
        # the steps that wait (app wires nagare.waits.Waits; None: no such step ever begins)
        self.waits: StepWaits | None = None
        # called with a run's id when it ended, or its handlers did (`nagare exec` waits on it)
        self.on_run_ended: Callable[[str], None] = lambda run_id: None

    # ------------------------------------------------------------ waking

    def wake(self, run_id: str | None = None) -> None:
        """Something changed: a run (its next pass reloads it), or, without a run, the DAGs or
        their state. Ended tasks go through `settle_finished`."""
        with self._cond:
            if run_id:
                _mark(self._dirty, run_id, None)
                self._run_deadline_known = False  # a new or changed run may bring a deadline
            else:
                self._schedules_changed = True
            self._cond.notify()

    def sweep_now(self) -> None:
        """Reload every active run at the next pass (the safety sweep, brought forward)."""
        with self._cond:
            self._last_sweep = None
            self._cond.notify()

    def settle_finished(
        self,
        finished: Iterable[tuple[str, str, int | None]],
        states: Mapping[str, TaskState] | None = None,
    ) -> None:
        """Task instances ended: (run id, task instance id, retry time or None) each. Their runs
        are settled now, in the calling thread (the dispatcher, which has just refilled its
        slots; an HTTP thread for a remote worker's result), unless the scheduler thread is in
        a pass: then that thread takes them next. Handing every batch of ended tasks to the
        scheduler thread would cost thread switches and a contended GIL per batch (2-6% of the
        server's CPU in a 1,000-task fan-out). `states`: the planning fields of (some of) them
        as their close returned them, used instead of reading them again when settled here
        (the scheduler thread reads them)."""
        with self._cond:
            retry = self._mark_finished(finished)
        settled = self._pass_lock.acquire(blocking=False)
        if settled:
            try:
                settled = self._settle_dirty(states or {})
            finally:
                self._pass_lock.release()
        if retry or not settled:  # a retry's time may bring its next wake-up forward
            with self._cond:
                self._cond.notify()

    def _settle_dirty(self, states: Mapping[str, TaskState]) -> bool:
        """Under `_pass_lock`: advance the runs marked so far (with `states` known); False (and
        every one of them left for a reload by the scheduler thread) when that failed."""
        with self._cond:
            dirty, self._dirty = self._dirty, {}
        try:
            self._advance_all(dirty, known=states)
        except Exception:
            log.exception("settling finished tasks failed; the scheduler thread retries")
            with self._cond:
                for run_id in dirty:
                    self._dirty[run_id] = None
            return False
        return True

    def _mark_finished(self, finished: Iterable[tuple[str, str, int | None]]) -> bool:
        """Under `_cond`: note ended task instances; whether one is up for retry."""
        retry = False
        for run_id, task_instance_id, retry_at in finished:
            _mark(self._dirty, run_id, task_instance_id)
            if retry_at is not None:
                self._retry_at = _earliest(self._retry_at, retry_at)
                retry = True
        return retry

    def hand_over(self, finished: Iterable[tuple[str, str, int | None]]) -> None:
        """Task instances ended where no pass should run (a remote worker's result in an HTTP
        thread, an expired lease in the reaper): the scheduler thread settles their runs next."""
        with self._cond:
            self._mark_finished(finished)
            self._cond.notify()

    def run(self, stop: threading.Event) -> None:
        """The scheduler loop; once `stop` is set (after the pools stopped), it settles the runs
        of the tasks that ended in the last moments (no schedules fire, nothing is announced),
        so nothing is left for the next start to discover."""
        while not stop.is_set():  # an exception ends it: app logs it, backs off and runs it again
            with self._pass_lock:
                delay = self.tick(self.clock())
            self.liveness.beat()
            with self._cond:
                if not self._dirty and not self._schedules_changed and not stop.is_set():
                    self._cond.wait(max(0.0, delay))
        self._drain()

    def stop(self) -> None:
        """Wake the loop to see its `stop` event."""
        with self._cond:
            self._cond.notify_all()

    def _drain(self) -> None:
        try:
            with self._pass_lock:
                with self._cond:
                    dirty, self._dirty = self._dirty, {}
                self._advance_all(dirty, announce=False)
        except Exception:
            log.exception("settling the last finished tasks failed; the next start does it")

    # ------------------------------------------------------------ one pass

    def tick(self, now: int) -> float:
        """Run one pass at `now` (epoch ms); returns seconds until the next pass is needed."""
        with self._cond:
            dirty, self._dirty = self._dirty, {}
            schedules_changed, self._schedules_changed = self._schedules_changed, False
        leads = self.leads()
        if self.fire_schedules and leads:
            for run_id in self._fire_schedules(now, schedules_changed):
                dirty[run_id] = None
        for run_id, task_id in self._queue_due_retries(now):
            _mark(dirty, run_id, task_id)
        due = self._next_run_deadline() if leads else None
        if due is not None and due <= now:
            with self._cond:
                self._run_deadline_known = False  # re-read once these have ended
            for run_id in self.store.runs.past_deadline(now):
                self.expire(run_id)
                dirty[run_id] = None
        if self.waits is not None and leads:  # like a run's deadline: the leader's duty
            self.waits.expire(now)
        if self._sweep_due(now):
            for dag_id in self.store.runs.dags_with_waiting():
                dirty.update(dict.fromkeys(self._release(dag_id, now)))
            self._last_sweep = now
            with self._cond:
                self._retry_known = False  # a retry no finished task announced: found here
            active = self.store.runs.active_ids()
            self._views = {k: v for k, v in self._views.items() if k in active}
            dirty.update(dict.fromkeys(active))
        self._advance_all(dirty)
        return self._seconds_to_next(max(now, self.clock()))  # the pass itself took time

    def _sweep_due(self, now: int) -> bool:
        """The safety sweep reloads every active run every SWEEP_SECONDS (and at once if the
        clock was set back)."""
        last = self._last_sweep
        return last is None or not 0 <= now - last < int(SWEEP_SECONDS * 1000)

    def _advance_all(
        self,
        dirty: dict[str, set[str] | None],
        announce: bool = True,
        known: Mapping[str, TaskState] | None = None,
    ) -> None:
        pools: Counter[str] = Counter()
        for run_id in sorted(dirty):
            pools.update(self.advance(run_id, self.clock(), dirty[run_id], known))
        self._begin_queued_waits(pools)
        if pools and announce:
            self.on_queued(dict(pools))

    def _begin_queued_waits(self, pools: Counter[str]) -> None:
        """Queued steps that wait (handlers, retries) are begun by the engine, not a slot."""
        if pools.pop(WAIT_POOL, 0) and self.waits is not None:
            self.waits.begin(self.store.tasks.queued_ids(WAIT_POOL), self.clock())

    def _seconds_to_next(self, now: int) -> float:
        candidates = [now + int(SWEEP_SECONDS * 1000)]
        leads = self.leads()
        if leads:  # a master that does not lead neither fires slots nor ends runs late
            candidates.extend(self._next_slot.values())
        retry_at = self._next_retry()
        if retry_at is not None:
            candidates.append(retry_at)
        deadline = self._next_run_deadline() if leads else None
        if deadline is not None:
            candidates.append(deadline)
        waits_until = self.waits.next_deadline() if self.waits is not None and leads else None
        if waits_until is not None:
            candidates.append(waits_until)
        return max(0.0, (min(candidates) - now) / 1000)

    # ------------------------------------------------------------ cron

    def _fire_schedules(self, now: int, changed: bool) -> set[str]:
        dags = self.folder.snapshot.dags
        if changed:
            self._next_slot = {k: v for k, v in self._next_slot.items() if k in dags}
        created: set[str] = set()
        for dag in dags.values():
            if not dag.is_scheduled:
                self._next_slot.pop(dag.dag_id, None)
                continue
            due = self._next_slot.get(dag.dag_id)
            if due is not None and due > now and not changed:
                continue
            created |= self._fire_dag(dag, now)
        if created:
            with self._cond:
                self._run_deadline_known = False
        return created

    def _fire_dag(self, dag: DagDef, now: int) -> set[str]:
        schedule = dag_schedules(dag.cron_expressions, dag.timezone, dag.start_date, dag.end_date)
        state = self.store.dags.ensure_state(dag.dag_id, now)
        if state.paused:
            self._next_slot.pop(dag.dag_id, None)
            return set()
        grace = int(self.settings.misfire_grace_seconds * 1000)
        firing = slots_to_fire(
            schedule, state, now, dag.catchup, self.settings.max_catchup_runs, grace
        )
        if firing.dropped:
            log.warning(
                "DAG '%s': %d missed slots are older than the catch-up cap "
                "(max_catchup_runs=%d) and are not run",
                dag.dag_id,
                firing.dropped,
                self.settings.max_catchup_runs,
                extra={"dag_id": dag.dag_id},
            )
        created = set()
        values, resolved = run_values(dag, {}, "json")  # the defaults (checked at load)
        for slot, trigger in firing.slots:
            run = self.store.runs.start(dag, trigger, slot, values, now, resolved)
            if run is not None:
                created.add(run.run_id)
                self.last_lag_ms = max(0, now - slot)
                log.info(
                    "DAG '%s': %s run %s for slot %s",
                    dag.dag_id,
                    trigger,
                    run.run_id,
                    to_iso(slot),
                    extra={"dag_id": dag.dag_id, "run_id": run.run_id},
                )
        if firing.last_slot is not None:
            self.store.dags.set_last_slot(dag.dag_id, firing.last_slot, now)
        last = (
            firing.last_slot
            if firing.last_slot is not None
            else (state.last_slot if state.last_slot is not None else state.watermark)
        )
        self._next_slot[dag.dag_id] = schedule.next_after(max(last, now))
        return created

    # ------------------------------------------------------------ retries

    def _next_run_deadline(self) -> int | None:
        """The earliest deadline of an active run, read from the store only when unknown: a run
        created or woken since the last read may have one (every new run is woken or made by a
        pass). A pass runs per batch of ended tasks; a query each would cost throughput."""
        with self._cond:
            if self._run_deadline_known:
                return self._run_deadline
            self._run_deadline_known = True
        found = self.store.runs.next_deadline()
        with self._cond:
            self._run_deadline = found
            return found

    def _next_retry(self) -> int | None:
        """The earliest retry time (re-read from the store only when not known)."""
        with self._cond:
            if self._retry_known:
                return self._retry_at
            # hints given before this read are in the store already (sent after the commit)
            self._retry_known, self._retry_at = True, None
        found = self.store.tasks.next_retry_at()
        with self._cond:  # hints that came during the read are kept
            self._retry_at = _earliest(self._retry_at, found)
            return self._retry_at

    def _queue_due_retries(self, now: int) -> list[tuple[str, str]]:
        retry_at = self._next_retry()
        if retry_at is None or retry_at > now:
            return []
        with self._cond:
            self._retry_known = False  # re-read after these leave up_for_retry
        due = self.store.tasks.due_retries(now)
        if not due:
            return []
        moved = set(
            self.store.tasks.transition(
                [t.id for t in due], [TaskStatus.UP_FOR_RETRY], TaskStatus.QUEUED, now
            )
        )
        pools = Counter(t.pool for t in due if t.id in moved)
        self._begin_queued_waits(pools)
        if pools:
            self.on_queued(dict(pools))
        return [(t.run_id, t.id) for t in due]

    # ------------------------------------------------------------ runs

    def advance(
        self,
        run_id: str,
        now: int,
        finished: set[str] | None = None,
        known: Mapping[str, TaskState] | None = None,
    ) -> Counter[str]:
        """Settle everything a run can decide now; returns how many tasks each pool got.

        With `finished` (task instances that ended since the last pass) and a cached view of the
        run, only what follows those tasks is read (but for the `known` states of ended
        tasks) and decided; otherwise the run is reloaded."""
        view = self._views.get(run_id) if finished is not None else None
        changed: set[str] | None = None
        if view is None:
            view = self._load(run_id)
            if view is None:
                return self._advance_handlers(run_id, now)
            if self._gated(view, now):
                return Counter()
        else:
            changed = self._refresh(view, finished or set(), known or {})
        dag = view.dag
        child_counts = (
            self.store.tasks.child_counts(run_id, dag.map_allows_failure)
            if dag.map_task_ids
            else {}
        )
        plan = plan_changes(
            dag, dag.order, view.by_task, child_counts, view.run.killed, changed, view.waits
        )
        pools = self._apply(view, plan, now)
        if changed is None:
            pools += _waiting_pools(dag, list(view.by_task.values()), child_counts)
        if plan.run_status is not None and not (
            plan.expand or plan.trigger or plan.queue or plan.wait
        ):
            self._views.pop(run_id, None)
            failed = [t.task_id for t in view.by_task.values() if t.status is TaskStatus.FAILED]
            status, reason, outputs = plan.run_status, "", None
            if status is RunStatus.SUCCESS and dag.outputs and self.waits is not None:
                outputs, reason = self.waits.run_outputs(view.run, dag)
                status = RunStatus.FAILED if reason else status
            ended = self.store.runs.finish(run_id, status, now, dag, failed, reason, outputs)
            if ended is not None:
                self.on_run_ended(run_id)
                log.info(
                    "run %s finished: %s",
                    run_id,
                    ended,
                    extra={"dag_id": dag.dag_id, "run_id": run_id},
                )
                pools += self._after_end(run_id, dag, now)
                if view.run.parent is not None and self.waits is not None:
                    self.waits.child_ended(run_id)
        elif plan.expand or plan.trigger or plan.map_done or plan.wait:
            self._views.pop(run_id, None)  # engine-side work changed rows: reload next pass
            with self._cond:
                self._dirty[run_id] = None
                self._cond.notify()  # a settling thread's pass leaves it to the scheduler
        return pools

    def _after_end(self, run_id: str, dag: DagDef, now: int) -> Counter[str]:
        """A run ended: its first handler was queued with it (its pool is woken); without
        handlers a slot of its DAG freed."""
        run = self.store.runs.get(run_id, counts=False)
        if run is not None and run.handling:
            states = self.store.tasks.run_states(run_id)
            return Counter(t.pool for t in states if t.status is TaskStatus.QUEUED)
        if dag.max_active_runs:  # (runs held under a limit removed since: the sweep)
            self._wake_released(self._release(dag.dag_id, now))
        return Counter()

    def _release(self, dag_id: str, now: int) -> list[str]:
        """Let waiting runs of a DAG start as far as its max_active_runs allows."""
        dag = self.folder.get(dag_id)
        if dag is None:
            return []
        released = self.store.runs.release_waiting(dag, now)
        for run_id in released:
            log.info(
                "run %s starts: a slot of max_active_runs freed",
                run_id,
                extra={"dag_id": dag_id, "run_id": run_id},
            )
        return released

    def _wake_released(self, run_ids: list[str]) -> None:
        if run_ids:
            with self._cond:
                for run_id in run_ids:
                    self._dirty[run_id] = None
                self._cond.notify()

    def _advance_handlers(self, run_id: str, now: int) -> Counter[str]:
        """A finished run whose handlers run: `exit` after the other one, then the run is no
        longer active (a slot of its DAG frees)."""
        run = self.store.runs.get(run_id, counts=False)
        if run is None or run.held:
            return Counter()
        if run.parent is not None and run.status.terminal and self.waits is not None:
            self.waits.child_ended(run_id)  # (ended by a kill or a deadline: its caller ends)
        if not run.handling:  # ended elsewhere (a kill): a slot of its DAG may have freed
            dag = self.folder.get(run.dag_id)
            if dag is not None and dag.max_active_runs:
                self._wake_released(self._release(run.dag_id, now))
            return Counter()
        states = {
            t.task_id: t
            for t in self.store.tasks.run_states(run_id)
            if t.task_id in HANDLER_TASK_IDS
        }
        step = handler_step({k: v.status for k, v in states.items()})
        if step.queue:
            self.store.tasks.transition(
                [states[t].id for t in step.queue], [TaskStatus.PENDING], TaskStatus.QUEUED, now
            )
            return Counter(t.pool for t in states.values() if t.task_id in step.queue)
        if not step.done:  # a handler queued by the run's end: make sure its pool looks
            return Counter(t.pool for t in states.values() if t.status is TaskStatus.QUEUED)
        if step.done and self.store.runs.end_handling(run_id):
            self.on_run_ended(run_id)
            log.info("run %s: handlers ended", run_id, extra={"run_id": run_id})
            self._wake_released(self._release(run.dag_id, now))
        return Counter()

    def _gated(self, view: _View, now: int) -> bool:
        """A new run of a DAG with `when` or `preconditions`: decide first whether it starts
        (True: not yet, or it ended)."""
        run, dag = view.run, view.dag
        if not (dag.when or dag.preconditions) or run.status is not RunStatus.QUEUED:
            return False
        if any(t.status is not TaskStatus.PENDING for t in view.by_task.values()):
            return False  # it started: the gate was passed
        verdict = run_gate(dag, run, self.condition) if self.condition is not None else None
        if verdict is None and dag.preconditions and self.check_preconditions is not None:
            with self._cond:
                if run.run_id in self._checked:
                    self._checked.discard(run.run_id)
                    return False
                waiting = run.run_id in self._checking
                self._checking.add(run.run_id)
            self._views.pop(run.run_id, None)
            if not waiting:
                self.check_preconditions(dag, run)
            return True
        if verdict is None:
            return False
        status, reason = verdict
        self._end_unstarted(run.run_id, dag.dag_id, status, reason, now)
        return True

    def preconditions_done(self, run_id: str, status: RunStatus | None, reason: str) -> None:
        """(any thread) The verdict of a run's DAG preconditions: None lets it start."""
        with self._cond:
            self._checking.discard(run_id)
            if status is None:
                self._checked.add(run_id)
        if status is None:
            self.wake(run_id)
            return
        run = self.store.runs.get(run_id, counts=False)
        if run is not None:
            self._end_unstarted(run_id, run.dag_id, status, reason, self.clock())

    def _end_unstarted(
        self, run_id: str, dag_id: str, status: RunStatus, reason: str, now: int
    ) -> None:
        self._views.pop(run_id, None)
        if self.store.runs.end_unstarted(run_id, status, reason, now):
            self.on_run_ended(run_id)
            log.info(
                "run %s %s: %s", run_id, status, reason, extra={"dag_id": dag_id, "run_id": run_id}
            )

    def _load(self, run_id: str) -> _View | None:
        run = self.store.runs.get(run_id, counts=False)
        if run is None or run.status.terminal or run.held:
            self._views.pop(run_id, None)
            return None
        dag = self.store.dags.version(run.dag_version)
        # handlers are not part of the run's plan (nor of its status): `_advance_handlers`
        states = [
            t for t in self.store.tasks.run_states(run_id) if t.task_id not in HANDLER_TASK_IDS
        ]
        view = _View(run, dag, {t.task_id: t for t in states}, {t.id: t.task_id for t in states})
        self._views[run_id] = view
        return view

    def _refresh(self, view: _View, finished: set[str], known: Mapping[str, TaskState]) -> set[str]:
        """Re-read the finished task instances of a cached run; returns the changed task ids.
        A `known` state (what the close of its attempt returned, this turn) is not read again
        when it is final; a retry's state (up_for_retry, queued) may move on meanwhile, so it is
        read."""
        ids = [i for i in finished if i in view.task_ids]
        given = [known[i] for i in ids if i in known and known[i].status.terminal]
        unknown = [i for i in ids if i not in known or not known[i].status.terminal]
        changed = set()
        for state in [*given, *self.store.tasks.states_of(unknown)]:
            if view.by_task.get(state.task_id) != state:
                view.by_task[state.task_id] = state
                changed.add(state.task_id)
        return changed

    def _apply(self, view: _View, plan: Plan, now: int) -> Counter[str]:
        run, dag = view.run, view.dag
        pools: Counter[str] = Counter()
        if plan.upstream_failed:
            self._settle(view, plan.upstream_failed, TaskStatus.UPSTREAM_FAILED, plan.reasons, now)
        if plan.skipped:
            self._settle(view, plan.skipped, TaskStatus.SKIPPED, plan.reasons, now)
        if plan.queue:
            moved = self.store.tasks.transition(
                [t.id for t in plan.queue], [TaskStatus.PENDING], TaskStatus.QUEUED, now
            )
            view.moved(plan.queue, moved, TaskStatus.QUEUED)
            queued = set(moved)
            pools.update(t.pool for t in plan.queue if t.id in queued)
        if view.stale:
            self._views.pop(run.run_id, None)
        for task_id, status, message in plan.map_done:
            self.store.tasks.complete(task_id, [TaskStatus.RUNNING], status, now, message)
        for parent in plan.expand:
            pools.update(self._expand(run, dag, parent, now))
        for task in plan.trigger:
            self._trigger(run, dag, task, now)
        if plan.wait and self.waits is not None:
            self.waits.begin([t.id for t in plan.wait], now)
        return pools

    def _settle(
        self,
        view: _View,
        tasks: list[InstanceLike],
        status: TaskStatus,
        reasons: dict[str, str],
        now: int,
    ) -> None:
        """pending -> upstream_failed / skipped, one statement per reason (a few fixed texts)."""
        groups: dict[str, list[InstanceLike]] = {}
        for task in tasks:
            groups.setdefault(reasons.get(task.id, UPSTREAM_DID_NOT_SUCCEED), []).append(task)
        for reason, group in groups.items():
            moved = self.store.tasks.transition(
                [t.id for t in group], [TaskStatus.PENDING], status, now, message=reason
            )
            view.moved(group, moved, status)

    def _expand(self, run: Run, dag: DagDef, parent: InstanceLike, now: int) -> Counter[str]:
        definition = dag.task(parent.task_id)
        assert definition is not None
        source = self.store.tasks.get(run.run_id, definition.map_over)
        stdout, cut_at = None, None
        if source is not None:
            stdout = self.logs.read_stdout(run.run_id, source.id, source.attempt)
            cut_at = self.logs.stdout_cut_at(run.run_id, source.id, source.attempt)
            if stdout is None and cut_at is None and self.logs.shared is not None:
                stdout, cut_at, complete = self.logs.shared_stdout(source.id, source.attempt)
                if not shared_stdout_ready(complete, source.completed_at, now):
                    return Counter()  # the master that ran it expands it, or a later pass
        try:
            items = parse_map_items(
                stdout or "", definition.map_over, self.settings.max_map_items, cut_at
            )
        except ValueError as exc:
            self.store.tasks.complete(
                parent.id, [TaskStatus.PENDING], TaskStatus.FAILED, now, str(exc)
            )
            return Counter()
        children = map_children(parent, definition.command, definition.max_attempts, items, now)
        if not self.store.tasks.expand_map(parent.id, children, now):
            return Counter()
        if not children:
            self.store.tasks.complete(
                parent.id,
                [TaskStatus.RUNNING],
                TaskStatus.SUCCESS,
                now,
                "map over an empty array: nothing to do",
            )
            return Counter()
        log.info(
            "run %s: %s fans out to %d children",
            run.run_id,
            parent.task_id,
            len(children),
            extra={"dag_id": run.dag_id, "run_id": run.run_id, "task_id": parent.task_id},
        )
        return Counter({definition.pool: len(children)})

    def _trigger(self, run: Run, dag: DagDef, task: InstanceLike, now: int) -> None:
        definition = dag.task(task.task_id)
        assert definition is not None
        if not self.store.tasks.start_internal(task.id, [TaskStatus.PENDING], now):
            return
        target = self.folder.get(definition.dag_id)
        if target is None:
            self.store.tasks.complete(
                task.id,
                [TaskStatus.RUNNING],
                TaskStatus.FAILED,
                now,
                f"DAG '{definition.dag_id}' is not loaded, so it cannot be triggered",
            )
            return
        try:
            values, resolved = triggered_values(target, definition.params, dag, run)
        except InvalidParams as exc:
            message = f"cannot trigger '{target.dag_id}': {exc}"
            self.store.tasks.complete(
                task.id, [TaskStatus.RUNNING], TaskStatus.FAILED, now, message, message
            )
            return
        child = self.store.runs.start(target, Trigger.TRIGGERED, now, values, now, resolved)
        if child is None:
            self.store.tasks.complete(
                task.id,
                [TaskStatus.RUNNING],
                TaskStatus.FAILED,
                now,
                f"could not create a run of '{target.dag_id}'",
            )
            return
        self.wake(child.run_id)
        self.store.tasks.complete(
            task.id,
            [TaskStatus.RUNNING],
            TaskStatus.SUCCESS,
            now,
            f"triggered run {child.run_id}",
            f"triggered run {child.run_id}",
        )


@dataclass
class _View:
    """The scheduler's cached picture of an active run (its non-child task states)."""

    run: Run
    dag: DagDef
    by_task: dict[str, TaskState]
    task_ids: dict[str, str]  # task instance id -> task id
    stale: bool = False
    waits: dict[str, int] = field(default_factory=dict)  # see progress.plan_changes

    def moved(self, planned: list[InstanceLike], moved: list[str], status: TaskStatus) -> None:
        """Record the outcome of a compare-and-set; a lost race makes the view stale."""
        done = set(moved)
        for task in planned:
            if task.id in done:
                self.by_task[task.task_id] = self.by_task[task.task_id]._replace(status=status)
        if len(done) != len(planned):
            self.stale = True


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _mark(dirty: dict[str, set[str] | None], run_id: str, finished: str | None) -> None:
    """Note a change of `run_id`: one finished task instance, or (None) anything."""
    if finished is None:
        dirty[run_id] = None
    elif run_id not in dirty:
        dirty[run_id] = {finished}
    else:
        seen = dirty[run_id]
        if seen is not None:
            seen.add(finished)


def _waiting_pools(
    dag: DagDef, tasks: list[TaskState], child_counts: dict[str, dict[TaskStatus, int]]
) -> Counter[str]:
    """Queued tasks of this run per pool (new runs, manual retries): wake their workers."""
    pools = Counter(t.pool for t in tasks if t.status is TaskStatus.QUEUED)
    for parent, counts in child_counts.items():
        definition = dag.task(parent)
        if counts.get(TaskStatus.QUEUED) and definition is not None:
            pools[definition.pool] += counts[TaskStatus.QUEUED]
    return pools


def shared_stdout_ready(complete: bool, source_ended: int | None, now: int) -> bool:
    """Whether a map may expand from its source's stdout as the shared database holds it (the
    source ran on another master): once that master marked the log complete, or, when it never
    will (it died), once the source ended MAP_SOURCE_WAIT_MS ago (its last unshipped lines, at
    most the shipping interval's, are then lost)."""
    if complete:
        return True
    return source_ended is not None and now - source_ended >= MAP_SOURCE_WAIT_MS
