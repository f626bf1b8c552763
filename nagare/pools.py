"""Local worker pools: `worker_pools: {default: 4, gpu: 0}` slots that claim queued tasks
(compare-and-set in the store, so a task can never run twice) and run them through an executor.

One dispatcher thread serves every pool: it claims tasks for free slots, starts each attempt
through the executor its task definition names (the executor seam: start -> handle, the end
reported through a listener) and records the attempts that ended, together with the next claims,
in one transaction. The thread owns the `Reactor` the executors report to (local processes are
watched by it; a container's own thread posts its end to it), so the running attempts are only
ever touched by this thread; a kill asks the attempt's handle, which posts it there. It knows no
concrete executor. A pool of size 0 runs nothing locally: its tasks wait `queued` for a remote
worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from nagare.clock import now_ms
from nagare.dag_folder import read_secret_file
from nagare.engine.assignment import captures_stdout, effective_run_as
from nagare.engine.attempt_end import SHUTDOWN_REASON, attempt_finish
from nagare.engine.context import UpstreamRow, needs_upstream, start_assignment
from nagare.engine.outputs import OutputError, masked_outputs, with_outputs
from nagare.engine.secrets import resolve, task_secrets, with_secrets
from nagare.executors import AttemptHandle, Executor
from nagare.executors.reactor import Reactor
from nagare.liveness import DistinctErrors, Heartbeat, short_error
from nagare.logs import (
    AttemptLog,
    LogFiles,
    append_pid_records,
    output_path,
    read_output_file,
    remove_output_file,
)
from nagare.models import (
    LOCAL_WORKER,
    SLOT_STEPS,
    Assignment,
    Attempt,
    AttemptFinish,
    Claim,
    Outcome,
    TaskState,
)
from nagare.store import Clock, StorageFull

log = logging.getLogger("nagare.pools")
IDLE_WAIT_SECONDS = 5.0  # a pool with free slots looks for queued tasks at least this often
EARLY_KILL_SECONDS = 60.0
KILL_RECORD_SECONDS = 3.0  # on shutdown, how long the killed attempts may take to be recorded
# while every local slot is busy, the runs of ended attempts are settled in batches: at most
# this many attempts, or this long after the first of them ended
SETTLE_BATCH = 64
SETTLE_DELAY_SECONDS = 0.02
RECORD_RETRY_SECONDS = 1.0  # ended attempts the database did not take are tried again this often
# an attempt whose log cannot be written (a full disk) is killed and fails with this reason
LOG_WRITE_FAILED = "cannot write the task's log"


@dataclass(eq=False)
class _Attempt:
    """One attempt a local slot runs; also its listener (the executor seam's callbacks)."""

    pools: WorkerPools
    claim: Claim
    pool: str
    log: AttemptLog | None = None
    handle: AttemptHandle | None = None  # set once started (under the pools' lock)
    cancel_reason: str = ""  # why it was killed, if it was (under the pools' lock)
    log_failure: str = ""  # its log could not be written: the attempt fails with this
    output_file: str = ""  # its $NAGARE_OUTPUT (read when it ends)

    def line(self, stream: str, text: str) -> None:
        assert self.log is not None
        self.log.on_line(stream, text)
        if self.log.failed is not None and not self.log_failure:
            self.log_failure = f"{LOG_WRITE_FAILED}: {self.log.failed}"
            self.pools.cancel(self.claim.task.id, self.log_failure)
        sink = self.pools.line_sink
        if sink is not None:  # (`nagare exec` prints it: masked as the log is)
            sink(self.claim.task.task_id, stream, self.log.masked(text))

    def started(self, pid: int, start_time: float) -> None:
        """Its process started: the pid record is written at the end of this turn."""
        assert self.log is not None
        self.pools.add_pid_record(self.log, pid, start_time)

    def ended(self, outcome: Outcome) -> None:
        self.pools.add_ended(self, outcome)


@dataclass
class _Unsettled:
    """Ended attempts (recorded) whose runs the dispatcher has not settled yet."""

    batch: int = SETTLE_BATCH
    delay: float = SETTLE_DELAY_SECONDS
    finished: list[tuple[str, str, int | None]] = field(default_factory=list)
    since: float = 0.0  # when the first of them was added (monotonic seconds)
    # the planning fields the close of the latest turn's attempts returned (the scheduler
    # reads those of earlier turns again: a state at most a turn old is handed over)
    states: dict[str, TaskState] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.finished)

    def add(
        self,
        ended: list[tuple[_Attempt, AttemptFinish]],
        now: float,
        states: dict[str, TaskState] | None = None,
    ) -> None:
        if ended and not self.finished:
            self.since = now
        self.finished.extend((a.claim.task.run_id, a.claim.task.id, f.retry_at) for a, f in ended)
        self.states = states or {}

    def ready(self, more_ended: bool, slot_free: bool, now: float) -> bool:
        """Whether to settle at `now`: when no other attempt has ended meanwhile, when a slot
        is free (settling may give it a task), or when the batch is full or old enough."""
        if not self.finished:
            return False
        return (
            not more_ended
            or slot_free
            or len(self.finished) >= self.batch
            or now - self.since >= self.delay
        )

    def take(self) -> tuple[list[tuple[str, str, int | None]], dict[str, TaskState]]:
        taken, self.finished = self.finished, []
        states, self.states = self.states, {}
        return taken, states


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _PoolsTasks(Protocol):
        def claim_of(self, task_instance_id: str, attempt: int | None = None) -> Claim | None: ...

        def finish_and_claim(
            self,
            finishes: Sequence[AttemptFinish],
            wants: Mapping[str, int],
            worker: str,
            now: Clock,
            lease_ms: int | None = None,
            ended_states: dict[str, TaskState] | None = None,
        ) -> list[Claim]: ...

        def finish_attempt(self, finish: AttemptFinish) -> bool: ...

        def running_attempts(self, worker: str) -> list[Attempt]: ...

        def context_rows(self, run_id: str) -> list[UpstreamRow]: ...

    class PoolsStore(Protocol):
        """The parts of the store the dispatcher reads and writes, and what of them."""

        @property
        def tasks(self) -> _PoolsTasks: ...


class WorkerPools:
    def __init__(
        self,
        store: PoolsStore,
        logs: LogFiles,
        sizes: dict[str, int],
        reactor: Reactor,
        executor_for: Callable[[Assignment], Executor],
        on_finished: Callable[[list[tuple[str, str, int | None]], Mapping[str, TaskState]], None],
        kill_leftover: Callable[[int, float | None], bool],
        clock: Callable[[], int] = now_ms,
        line_sink: Callable[[str, str, str], None] | None = None,
        run_as: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.run_as = dict(run_as or {})  # pool -> the user its local tasks run as
        self.logs = logs
        self.sizes = dict(sizes)
        self.reactor = reactor  # owned by the dispatcher thread
        self.executor_for = executor_for
        self.on_finished = on_finished
        self.kill_leftover = kill_leftover  # kills a crashed server's leftover process group
        self.clock = clock
        self.line_sink = line_sink
        # the worker name of this server's attempts: "local"; on a database several masters
        # share, "local@<master id>" with leases of `lease_ms` that the master renews (app wires)
        self.worker = LOCAL_WORKER
        self.lease_ms: int | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # signalled when a task finishes
        self._running: dict[str, _Attempt] = {}
        self._early_kills: dict[str, float] = {}
        self._busy: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self._hot: set[str] = {p for p, size in self.sizes.items() if size > 0}
        # the dispatcher thread's own: attempts whose end was reported this turn, pid records
        self._ended: list[tuple[_Attempt, Outcome]] = []
        self._pid_records: dict[str, list[str]] = {}  # run log folder -> records to append
        self._recorded: list[tuple[_Attempt, AttemptFinish]] = []  # ended, to record next turn
        # ended attempts whose recording failed (a full database): kept, their slots still
        # busy, and recorded again on a later turn (from `_retry_at` on) — nothing is lost
        self._unrecorded: list[tuple[_Attempt, AttemptFinish]] = []
        self._retry_at = 0.0
        self._record_error = ""
        self._errors = DistinctErrors()  # what was logged already (each distinct error once)
        self.liveness = Heartbeat("dispatcher", IDLE_WAIT_SECONDS)
        self.settling = _Unsettled()  # which ended attempts wait for a batch, and how long
        self._recheck_at = 0.0
        self._accepting = True
        self._base_env = dict(os.environ)
        # names of server variables that hold secrets (webhook `secret_env`s), set by `app`
        self.hidden_env: Callable[[], set[str]] = set

    # ------------------------------------------------------------ lifecycle

    @property
    def has_slots(self) -> bool:
        """Whether any pool runs tasks here (else no dispatcher loop is needed)."""
        return any(self.sizes.values())

    def notify(self, queued: dict[str, int]) -> None:
        """Tasks of these pools were queued: the dispatcher claims them for free slots."""
        with self._lock:
            self._hot.update(p for p in queued if self.sizes.get(p))
        self.reactor.wake()

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False
        self.reactor.wake()

    def shutdown(self, grace_seconds: float) -> list[str]:
        """Stop claiming, let running tasks finish for `grace_seconds`, then kill the rest; they
        go back to `queued` for the next start. Returns the ids of interrupted tasks once their
        ends are recorded (or after a few more seconds); then the dispatcher loop ends."""
        self.stop_accepting()
        with self._idle:
            self._idle.wait_for(lambda: not self._running, max(0.0, grace_seconds))
            interrupted = list(self._running)
            attempts = list(self._running.values())
        for attempt in attempts:
            self.cancel(attempt.claim.task.id, SHUTDOWN_REASON)
        with self._idle:
            self._idle.wait_for(lambda: not self._running, KILL_RECORD_SECONDS)
        return interrupted

    def recover(
        self,
        removed_containers: Mapping[tuple[str, int], str] | None = None,
        earlier: Sequence[str] = (),
    ) -> list[str]:
        """After a crash: every attempt this server left `running` is closed (on a shared
        database also those of `earlier`, the worker names of its own earlier starts). Its orphaned
        process group (if still alive) is killed, not adopted: its output pipes died with the
        old server, so its log and exit code could never be collected. The attempt counts as
        failed and the task's retry policy decides what follows. `removed_containers` names the
        leftover containers app already removed, by (task instance id, attempt). Returns the
        affected run ids."""
        removed_containers = removed_containers or {}
        runs = []
        # (on a shared database: also what a server of the single-master name left running)
        workers = dict.fromkeys((self.worker, LOCAL_WORKER, *earlier))
        for attempt in (a for w in workers for a in self.store.tasks.running_attempts(w)):
            claim = self.store.tasks.claim_of(attempt.task_instance_id, attempt.attempt)
            if claim is None:
                continue
            task = claim.task
            recorded = self.logs.read_pid(task.run_id, task.id, attempt.attempt)
            killed = recorded is not None and self.kill_leftover(*recorded)
            message = "the server stopped while this attempt ran" + (
                "; its leftover process group was killed" if killed else ""
            )
            container = removed_containers.get((task.id, attempt.attempt))
            if container:
                message += f"; its leftover container {container} was removed"
            self.store.tasks.finish_attempt(
                self._finish_of(claim, Outcome(exit_code=None, error=message), None)
            )
            with contextlib.suppress(OSError):
                log_file = self.logs.open_attempt(task.run_id, task.id, attempt.attempt)
                log_file.note(message)
                log_file.close()
            runs.append(task.run_id)
            log.warning(
                "recovered task %s of run %s: %s",
                task.task_id,
                task.run_id,
                message,
                extra={"run_id": task.run_id, "task_id": task.task_id, "attempt": attempt.attempt},
            )
        return runs

    # ------------------------------------------------------------ status

    def cancel(self, task_instance_id: str, reason: str = "killed") -> bool:
        """Kill a locally running task through its handle (any thread; the first reason
        counts). False if it is not running here."""
        with self._lock:
            attempt = self._running.get(task_instance_id)
            if attempt is None:
                self._remember_early_kill(task_instance_id)
                return False
            attempt.cancel_reason = attempt.cancel_reason or reason
            handle = attempt.handle
        if handle is not None:
            handle.cancel(reason)
        return True

    def _remember_early_kill(self, task_instance_id: str) -> None:
        """A kill for a task not (yet) registered here: it may have just been claimed."""
        now = time.monotonic()
        self._early_kills[task_instance_id] = now
        for key, seen in list(self._early_kills.items()):
            if now - seen > EARLY_KILL_SECONDS:
                del self._early_kills[key]

    def busy(self) -> dict[str, int]:
        with self._lock:
            return dict(self._busy)

    # ------------------------------------------------------------ the dispatcher thread

    def run(self, stop: threading.Event) -> None:
        """The dispatcher loop (it owns the reactor): turns until the pools stop accepting work
        (`shutdown`, or `stop`) and nothing runs any more."""
        while self.turn(time.monotonic()):
            if stop.is_set():
                self.stop_accepting()

    def turn(self, now: float, max_wait: float = IDLE_WAIT_SECONDS) -> bool:
        """One turn of the dispatcher at `now` (monotonic seconds): record the attempts that
        ended together with the claims for the slots free, start those, settle runs, then wait
        (at most `max_wait`, and not past the next recheck) for an end, a queued task or a
        kill. False once the pools stopped accepting work and nothing runs."""
        if now >= self._recheck_at:  # safety net: a queued task nobody announced
            self._recheck_at = now + IDLE_WAIT_SECONDS
            with self._lock:
                self._hot.update(p for p, size in self.sizes.items() if size > 0)
        ended, self._recorded = self._recorded, []
        if self._unrecorded and now >= self._retry_at:
            ended, self._unrecorded = self._unrecorded + ended, []
        claims, ended, states = self._record_and_claim(ended, now)
        for claim in claims:
            self._begin(claim)
        self._write_pid_records()
        for attempt, finish in ended:
            _log_end(attempt, finish)
        unsettled = self.settling
        unsettled.add(ended, now, states)
        # the ended attempts' runs are settled (in this thread, see Scheduler.settle_finished)
        # once the freed slots are busy again; while every slot is busy and more attempts have
        # ended meanwhile, those go first, and the runs of a whole batch are settled together:
        # one scheduler pass, not one per turn
        self._recorded = self._wait(0.0) if unsettled else []
        if unsettled and unsettled.ready(  # (the guard skips the lock _slot_free takes)
            bool(self._recorded), self._slot_free(), time.monotonic()
        ):
            self.on_finished(*unsettled.take())
        if self._recorded:
            self._beat()
            return True
        with self._lock:
            if not self._accepting and not self._running:
                return False
        self._beat()
        wait = min(max_wait, self._recheck_at - time.monotonic())
        if self._unrecorded:
            wait = min(wait, self._retry_at - time.monotonic())
        self._recorded = self._wait(max(0.0, wait))
        return True

    def _beat(self) -> None:
        """A turn's work is done (before it waits: the wait is at most IDLE_WAIT_SECONDS);
        failing while the dispatcher holds attempts it cannot record."""
        error = ""
        if self._unrecorded:
            error = f"cannot record {len(self._unrecorded)} ended attempt(s): {self._record_error}"
        self.liveness.beat(error)

    def _slot_free(self) -> bool:
        """Whether a local slot is free: its pool has no queued task left, so settling a run
        now may give it one."""
        with self._lock:
            return any(self._busy[pool] < size for pool, size in self.sizes.items())

    def _free_slots(self, ended: list[tuple[_Attempt, AttemptFinish]]) -> dict[str, int]:
        """Free slots of the pools that may have queued tasks, with the slots the `ended`
        attempts leave (none once shutting down)."""
        freed = Counter(attempt.pool for attempt, _ in ended)
        with self._lock:
            if not self._accepting:
                return {}
            free = {pool: self.sizes[pool] - self._busy[pool] + freed[pool] for pool in self._hot}
        return {pool: n for pool, n in free.items() if n > 0}

    def _record_and_claim(
        self, ended: list[tuple[_Attempt, AttemptFinish]], now: float
    ) -> tuple[list[Claim], list[tuple[_Attempt, AttemptFinish]], dict[str, TaskState]]:
        """Record the attempts that ended and claim tasks for the free slots: one transaction
        for all of them (slots that finish together share one commit). Returns the claims, the
        attempts recorded (the others are kept for a later turn and keep their slots) and the
        planning fields of the tasks they moved, as the close returned them (none when the
        attempts were recorded one by one)."""
        wants = self._free_slots(ended)
        states: dict[str, TaskState] = {}
        if not ended and not wants:
            return [], [], states
        try:
            claims = self.store.tasks.finish_and_claim(
                [f for _, f in ended], wants, self.worker, self.clock, self.lease_ms, states
            )
        except Exception as exc:
            states = {}
            self._log_once(exc, "recording %d attempts and claiming tasks failed", len(ended))
            claims = []
            kept = [e for e in ended if not self._record_alone(*e)]  # one bad row spoils no other
            if kept:
                self._unrecorded.extend(kept)
                self._retry_at = now + RECORD_RETRY_SECONDS
                ended = [e for e in ended if e not in kept]
        else:
            if not self._unrecorded and self._errors.clear():
                log.info("the dispatcher's writes work again")
        got = {pool: 0 for pool in wants}
        for claim in claims:
            got[claim.task.pool] = got.get(claim.task.pool, 0) + 1
        with self._idle:
            self._hot.difference_update(p for p, n in wants.items() if got.get(p, 0) < n)
            for attempt, _ in ended:
                self._running.pop(attempt.claim.task.id, None)
                self._busy[attempt.pool] -= 1
            if ended:
                self._idle.notify_all()
        return claims, ended, states

    def _record_alone(self, attempt: _Attempt, finish: AttemptFinish) -> bool:
        """Record one ended attempt; False when the database is full: it is kept and tried
        again. Any other failure is logged and the attempt dropped (a row that can never be
        written must not hold its slot for good; the next start's recovery closes it)."""
        try:
            self.store.tasks.finish_attempt(finish)
        except StorageFull as exc:
            self._record_error = short_error(exc)
            self._log_once(
                exc,
                "recording task %s of run %s failed; kept until the database takes it",
                attempt.claim.task.task_id,
                attempt.claim.task.run_id,
                extra=_context(attempt.claim),
            )
            return False
        except Exception as exc:
            self._log_once(
                exc,
                "recording task %s of run %s failed",
                attempt.claim.task.task_id,
                attempt.claim.task.run_id,
                extra=_context(attempt.claim),
            )
        return True

    def _log_once(self, exc: Exception, message: str, *args: object, **kw: Any) -> None:
        """Log an error with its traceback the first time it is seen, then no more (a full
        disk fails every turn)."""
        if self._errors.first(short_error(exc)):
            log.error(message + ": %s", *args, short_error(exc), exc_info=exc, **kw)

    def _wait(self, timeout: float) -> list[tuple[_Attempt, AttemptFinish]]:
        """Block until attempts end, tasks are queued, or `timeout`; the attempts that ended."""
        with self._lock:
            hurry = self._accepting and bool(self._hot_free())
        self.reactor.run_once(0.0 if hurry or self._ended else timeout)
        ended, self._ended = self._ended, []
        return [self._concluded(attempt, outcome) for attempt, outcome in ended]

    def _concluded(self, attempt: _Attempt, outcome: Outcome) -> tuple[_Attempt, AttemptFinish]:
        try:
            return attempt, self._conclude(attempt, outcome)
        except Exception as exc:  # never lose an ended attempt: it is recorded as failed
            log.exception("concluding task %s failed", attempt.claim.task.task_id)
            failed = Outcome(exit_code=None, error=f"internal error: {short_error(exc)}")
            return attempt, attempt_finish(attempt.claim, failed, self.clock())

    def _hot_free(self) -> list[str]:
        return [p for p in self._hot if self.sizes[p] > self._busy[p]]

    def add_ended(self, attempt: _Attempt, outcome: Outcome) -> None:
        """(dispatcher thread) An attempt's end, recorded at the end of this turn."""
        self._ended.append((attempt, outcome))

    def add_pid_record(self, attempt_log: AttemptLog, pid: int, start_time: float) -> None:
        """(dispatcher thread) A started process, appended to its run's pids file (see
        `_write_pid_records`) at the end of this turn."""
        folder = os.path.dirname(attempt_log.path)
        self._pid_records.setdefault(folder, []).append(attempt_log.pid_record(pid, start_time))

    # ------------------------------------------------------------ one attempt

    def _begin(self, claim: Claim) -> None:
        """Start a claimed attempt through the executor its definition names."""
        task = claim.task
        attempt = _Attempt(self, claim, task.pool)
        with self._lock:
            self._running[task.id] = attempt
            self._busy[task.pool] = self._busy.get(task.pool, 0) + 1
            if self._early_kills.pop(task.id, None) is not None:
                attempt.cancel_reason = "killed"  # the kill came between the claim and now
        try:
            outcome = self._start(attempt)
        except Exception:
            log.exception(
                "task %s of run %s could not be started",
                task.task_id,
                task.run_id,
                extra=_context(claim),
            )
            outcome = Outcome(exit_code=None, error="internal error")
        if outcome is not None:
            self.add_ended(attempt, outcome)

    def _start(self, attempt: _Attempt) -> Outcome | None:
        """None when the attempt runs; else the Outcome of an attempt that cannot start."""
        claim = attempt.claim
        task, run = claim.task, claim.run
        definition = claim.definition
        if definition is None or definition.type not in SLOT_STEPS:
            return Outcome(exit_code=None, error="task definition not found")
        with self._lock:
            reason = attempt.cancel_reason
        if reason:
            return Outcome(exit_code=None, cancelled=True, error=f"{reason} before start")
        base_env = {} if definition.image else self._base_env  # containers: never the host's
        hidden = self.hidden_env()
        if claim.dag.secret_sources:  # a secret's source variable stays hidden
            hidden = hidden | claim.dag.secret_sources
        if hidden and base_env:
            base_env = {k: v for k, v in base_env.items() if k not in hidden}
        try:
            attempt.log = self.logs.open_attempt(
                run.run_id,
                task.id,
                claim.attempt,
                captures_stdout(claim.dag, definition, task.task_id),
            )
        except OSError as exc:  # its run's log folder cannot be made (a full disk)
            return Outcome(exit_code=None, error=f"{LOG_WRITE_FAILED}: {exc}")
        rows = (
            self.store.tasks.context_rows(run.run_id) if needs_upstream(claim, definition) else None
        )
        attempt.output_file = output_path(attempt.log.path)
        assignment = start_assignment(claim, definition, base_env, rows, attempt.output_file)
        if isinstance(assignment, Outcome):  # skipped by its `when:`, or a template failed
            return assignment
        user, problem = effective_run_as(
            definition.run_as, self.run_as.get(task.pool, ""), f"pool '{task.pool}'"
        )
        if problem:
            return Outcome(exit_code=None, error=problem)
        if user != assignment.run_as:
            assignment = replace(assignment, run_as=user)
        secrets = task_secrets(claim.dag, definition)
        if secrets:
            values, problem = resolve(secrets, os.environ, read_secret_file)
            if problem:
                return Outcome(exit_code=None, error=problem)
            assignment = with_secrets(assignment, values)
            attempt.log.set_secrets(assignment.secrets)
        handle = self.executor_for(assignment).start(assignment, attempt)
        with self._lock:
            attempt.handle = handle
            reason = attempt.cancel_reason
        if reason:  # killed while it started
            handle.cancel(reason)
        return None

    def _write_pid_records(self) -> None:
        """Append the pid records of the attempts started this turn, one write per run."""
        records, self._pid_records = self._pid_records, {}
        for folder, lines in records.items():
            try:
                append_pid_records(folder, lines)
            except OSError as exc:
                if self._errors.first(short_error(exc)):
                    log.error("cannot record task process ids in %s: %s", folder, exc)

    def _conclude(self, attempt: _Attempt, outcome: Outcome) -> AttemptFinish:
        """How the attempt ended, as the store records it (its message also goes to the log)."""
        with self._lock:
            reason = attempt.cancel_reason
        if attempt.log_failure and reason == attempt.log_failure:  # killed for it: it failed
            outcome = replace(outcome, exit_code=None, cancelled=False, error=reason)
            reason = ""
        if reason and not outcome.cancelled and not outcome.timed_out:
            outcome.cancelled = True
        if outcome.succeeded and attempt.log is not None:
            outcome = _with_outputs(attempt, outcome)  # (removes the file it read)
        elif attempt.output_file:  # never left on disk with a secret a task wrote
            remove_output_file(attempt.output_file)
        try:
            return self._finish_of(attempt.claim, outcome, attempt.log, reason)
        finally:
            if attempt.log is not None:
                attempt.log.close()

    def _finish_of(
        self,
        claim: Claim,
        outcome: Outcome,
        attempt_log: AttemptLog | None,
        cancel_reason: str = "",
    ) -> AttemptFinish:
        """How the attempt ended, as the store records it (its message also goes to the log)."""
        tail = attempt_log.tail() if attempt_log is not None else ""
        finish = attempt_finish(claim, outcome, self.clock(), cancel_reason, tail)
        if attempt_log is not None:
            finish.message = attempt_log.masked(finish.message)
            if finish.message:
                attempt_log.note(finish.message)
            finish.output_tail = attempt_log.tail()
        return finish


def _with_outputs(attempt: _Attempt, outcome: Outcome) -> Outcome:
    """A successful outcome with the outputs the attempt published (or failed by them)."""
    assert attempt.log is not None
    definition = attempt.claim.definition
    name = definition.output if definition is not None else ""
    try:
        text = read_output_file(attempt.output_file) if attempt.output_file else None
    except OutputError as exc:
        remove_output_file(attempt.output_file)
        return replace(outcome, error=f"outputs: {exc}")
    if text is not None:  # read: the database keeps the values (masked); the file goes
        remove_output_file(attempt.output_file)
    if text is None and not name:  # a step's executor may have published some itself
        return masked_outputs(outcome, attempt.log.masked) if outcome.outputs else outcome
    stdout, cut = attempt.log.captured_stdout() if name else (None, False)
    return masked_outputs(with_outputs(outcome, text, name, stdout, cut), attempt.log.masked)


def _log_end(attempt: _Attempt, finish: AttemptFinish) -> None:
    if log.isEnabledFor(logging.DEBUG):
        claim = attempt.claim
        log.debug(
            "task %s of run %s: attempt %d ended %s",
            claim.task.task_id,
            claim.task.run_id,
            claim.attempt,
            finish.attempt_status,
            extra=_context(claim),
        )


def _context(claim: Claim) -> dict[str, object]:
    """Log context of an attempt (see server_log)."""
    return {
        "dag_id": claim.run.dag_id,
        "run_id": claim.task.run_id,
        "task_id": claim.task.task_id,
        "attempt": claim.attempt,
    }
