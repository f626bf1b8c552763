"""The master's side of the cluster: remote workers pull tasks with a long poll, hold them under
leases they renew with every message, stream their logs here and report outcomes that the
master turns into the task's next state exactly as for a local task (retries, timeouts).

A queued task reaches a waiting poll at once (`notify` wakes it); a kill reaches the holder at
once (`cancel` wakes its poll); a worker that stops talking loses its leases after
`lease_seconds` and its attempts are closed as lost (the retry policy decides what follows). A
result for an attempt the worker no longer holds is refused, so one attempt has one outcome.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from nagare import __version__
from nagare.clock import now_ms
from nagare.cluster.protocol import (
    PROTOCOL,
    Directives,
    LogAck,
    LogBatch,
    PollRequest,
    ResultAck,
    TaskResult,
    Welcome,
    WorkerHello,
)
from nagare.dag_folder import read_secret_file
from nagare.engine.assignment import captures_stdout, effective_run_as
from nagare.engine.attempt_end import UNCONFIRMED_REASON, attempt_finish
from nagare.engine.context import UpstreamRow, needs_upstream, start_assignment
from nagare.engine.outputs import masked_outputs, with_outputs
from nagare.engine.secrets import resolve, task_secrets, with_secrets
from nagare.errors import Conflict, NotFound
from nagare.liveness import Heartbeat
from nagare.logs import AttemptLog, LogFiles
from nagare.models import (
    SLOT_STEPS,
    Assignment,
    AttemptFinish,
    Claim,
    Outcome,
    TaskInstance,
    TaskStatus,
    is_local_worker,
)
from nagare.store import Exchange, HeldAttempt, WorkerRecord

log = logging.getLogger("nagare.cluster")
# What a worker runs: commands, map children (parents never reach the queue) and the step types
# that take a slot (http, mail, ssh, chat: the worker's StepExecutors run them).
RUNNABLE = SLOT_STEPS


@dataclass(frozen=True)
class WorkerStatus:
    """A registered worker and whether it is online (it spoke within a lease)."""

    worker: WorkerRecord
    online: bool

    @property
    def status(self) -> str:
        return "online" if self.online else "offline"


@dataclass
class PoolWorkers:
    """Remote workers serving one pool."""

    online: int = 0
    total: int = 0
    capacity: int = 0


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _CoordinatorTasks(Protocol):
        def by_id(self, task_instance_id: str) -> TaskInstance | None: ...

        def claim_of(self, task_instance_id: str, attempt: int | None = None) -> Claim | None: ...

        def context_rows(self, run_id: str) -> list[UpstreamRow]: ...

    class _CoordinatorWorkers(Protocol):
        def claim(
            self,
            worker_id: str,
            pools: Sequence[str],
            count: int,
            now: int,
            lease_until: int,
            capacity: int | None = None,
        ) -> list[Claim]: ...

        def exchange(
            self,
            seen: WorkerRecord,
            leaving: bool,
            finishes: Sequence[AttemptFinish],
            held: Sequence[tuple[str, int]],
            now: int,
            lease_until: int,
            capacity: int | None = None,
            waiting: Sequence[tuple[str, int]] = (),
        ) -> Exchange: ...

        def expire(self, finish: AttemptFinish, worker_id: str, now: int) -> bool: ...

        def expired(self, now: int) -> list[tuple[str, int, str, bool]]: ...

        def extend(self, until: int) -> int: ...

        def finish(self, finish: AttemptFinish, worker_id: str, now: int) -> bool | None: ...

        def held_count(self, worker_id: str) -> int: ...

        def holder(self, task_instance_id: str, attempt: int, now: int) -> str | None: ...

        def holders(
            self, attempts: Sequence[tuple[str, int]], now: int
        ) -> dict[tuple[str, int], str]: ...

        def registered(self) -> list[WorkerRecord]: ...

        def renew(
            self,
            worker_id: str,
            held: Sequence[tuple[str, int]],
            lease_until: int,
            seen: WorkerRecord | None = None,
            leaving: bool = False,
            waiting: Sequence[tuple[str, int]] = (),
        ) -> list[HeldAttempt]: ...

    class CoordinatorStore(Protocol):
        """The parts of the store the coordinator reads and writes, and what of them."""

        @property
        def tasks(self) -> _CoordinatorTasks: ...

        @property
        def workers(self) -> _CoordinatorWorkers: ...


class Coordinator:
    def __init__(
        self,
        store: CoordinatorStore,
        logs: LogFiles,
        lease_seconds: float,
        on_finished: Callable[[list[tuple[str, str, int | None]]], None],
        on_queued: Callable[[dict[str, int]], None] = lambda queued: None,
        clock: Callable[[], int] = now_ms,
        run_as: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.run_as = dict(run_as or {})  # pool_run_as: shipped with the pool's tasks
        self.logs = logs
        self.lease_seconds = lease_seconds
        self.on_finished = on_finished
        self.on_queued = on_queued  # a handed-back task is queued again: wake whoever serves it
        self.clock = clock
        self._cond = threading.Condition()
        self._waiting: Counter[str] = Counter()  # worker id -> its polls waiting now
        self._generation = 0  # bumped whenever waiting polls should look again
        # worker id -> task instance to stop -> when the kill came: what wakes a waiting poll
        # at once (the kill itself is the task's status, which every master's exchange with the
        # worker reads); dropped when taken, when the attempt ends, or after a lease term
        self._cancels: dict[str, dict[str, int]] = {}
        self._open: dict[tuple[str, int], _OpenAttempt] = {}  # handed out: worker, log, claim
        self._logs_lock = threading.Lock()
        self._stopping = False
        self.liveness = Heartbeat("lease_reaper", 1.0)
        self._leaving: set[str] = set()  # workers shutting down: their polls get no work

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    # ------------------------------------------------------------ lifecycle

    def start(self, others_live: bool = False) -> None:
        """Alone on its database, the workers could not renew their leases while this master
        was down: their leases get a full term. With another master live they could (a worker
        fails over): a lease that ran out then belongs to a lost worker and is not extended;
        a master's own attempts' leases are never extended (their master renews them)."""
        if others_live:
            return
        extended = self.store.workers.extend(self.clock() + self.lease_ms)
        if extended:
            log.info("%d remote task(s) in flight keep their leases", extended)

    def run(self, stop: threading.Event) -> None:
        """Close the attempts of workers that stopped renewing their leases."""
        interval = max(0.05, min(1.0, self.lease_seconds / 4))
        while not stop.wait(interval):  # an exception ends it: app logs, backs off, runs it again
            self.reap(self.clock())
            self.liveness.beat()

    def stop(self) -> None:
        """Answer every waiting poll now (the server is going away)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # ------------------------------------------------------------ signals from the engine

    def notify(self, queued: dict[str, int]) -> None:
        """Tasks were queued: waiting polls look again."""
        if queued:
            self._wake()

    def cancel(self, task_instance_id: str) -> bool:
        """A task was killed: if a remote worker holds it, tell that worker at once."""
        task = self.store.tasks.by_id(task_instance_id)
        if task is None or is_local_worker(task.worker):
            return False
        with self._cond:
            self._cancels.setdefault(task.worker, {})[task_instance_id] = self.clock()
            self._generation += 1
            self._cond.notify_all()
        return True

    def _wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    # ------------------------------------------------------------ protocol

    def register(self, hello: WorkerHello) -> Welcome:
        self._seen(hello)
        log.info(
            "worker %s (%s) joined: pools %s, up to %d tasks",
            hello.worker_id,
            hello.hostname,
            ",".join(hello.pools),
            hello.max_tasks,
        )
        return Welcome(
            worker_id=hello.worker_id,
            lease_seconds=self.lease_seconds,
            heartbeat_seconds=self.heartbeat_seconds,
            poll_wait_seconds=self.poll_wait_seconds,
            version=__version__,
            protocol=PROTOCOL,
        )

    @property
    def heartbeat_seconds(self) -> float:
        return max(0.05, self.lease_seconds / 6)

    @property
    def poll_wait_seconds(self) -> float:
        return max(0.1, min(10.0, self.lease_seconds / 3))

    def heartbeat(self, hello: WorkerHello) -> Directives:
        directives = self._seen(hello)
        if hello.leaving:
            log.info("worker %s is leaving", hello.worker_id)
        directives.cancel.extend(self._take_cancels(hello.worker_id))
        return directives

    def poll(
        self, request: PollRequest, client_gone: Callable[[], bool] = lambda: False
    ) -> Directives:
        """Long poll: records the results it carries, renews leases and hands out work in one
        transaction, then answers as soon as there is work, a kill, or `wait_seconds` passed.
        No work is handed out once the worker has hung up (it died while waiting)."""
        hello = request.hello
        deadline = time.monotonic() + min(request.wait_seconds, self.poll_wait_seconds)
        with self._cond:
            generation = self._generation
        directives = self._exchange(hello, request.results)
        while True:
            directives.cancel.extend(self._take_cancels(hello.worker_id))
            remaining = deadline - time.monotonic()
            if directives.tasks or directives.cancel or directives.lost or remaining <= 0:
                return directives
            with self._cond:
                if self._stopping or hello.worker_id in self._leaving:
                    return directives
                if self._generation == generation:
                    self._waiting[hello.worker_id] += 1
                    self._cond.wait(remaining)
                    self._waiting[hello.worker_id] -= 1
                generation = self._generation
                if self._stopping or hello.worker_id in self._leaving:
                    return directives
            if client_gone():
                return directives
            # the master's count, not the worker's (its figure is as old as the poll): a slot
            # frees when a result arrives, and that wakes this poll
            free = hello.capacity - self.store.workers.held_count(hello.worker_id)
            if free > 0:
                directives.tasks.extend(self._hand_out(hello, free))

    def waiting_polls(self, worker_id: str) -> int:
        """How many long polls of this worker wait for work right now."""
        with self._cond:
            return self._waiting[worker_id]

    def log_lines(self, batch: LogBatch) -> LogAck:
        attempt_log = self._attempt(batch.worker_id, batch.task_instance_id, batch.attempt).log
        for stream, line in batch.lines:
            attempt_log.on_line(stream, line)
        with self._cond:
            cancel = batch.task_instance_id in self._cancels.get(batch.worker_id, ())
        return LogAck(cancel)

    def result(self, result: TaskResult) -> ResultAck:
        """One result in a request of its own (a worker of protocol 1): recorded like a
        poll's, refused with Conflict (409) when the worker does not hold the attempt."""
        now = self.clock()
        holder = self.store.workers.holder(result.task_instance_id, result.attempt, now)
        ended = self._prepare(result, now, holder)
        moved = self.store.workers.finish(ended.finish, result.worker_id, now)
        acks, settled = self._settle([ended], [moved])
        self._announce(settled)
        ack = acks[0]
        if ack.refused:
            raise Conflict(ack.refused)
        self._wake()  # the worker has a free slot again: its waiting poll hands it out
        return ResultAck(ack.status)

    def _exchange(self, hello: WorkerHello, results: Sequence[TaskResult]) -> Directives:
        """Record the results, refresh the worker, renew its leases and claim work for its free
        slots: one transaction; then the claims become assignments, and the runs of the
        recorded results are handed to the scheduler for one pass (last: its thread then
        competes with no part of this answer)."""
        now = self.clock()
        ended, refused = self._prepare_all(results, now)
        reported = {(r.task_instance_id, r.attempt) for r in results}
        exchange = self.store.workers.exchange(
            self._record_of(hello, now),
            hello.leaving,
            [e.finish for e in ended],
            [h for h in hello.held if h not in reported],  # each has its answer in `results`
            now,
            now + self.lease_ms,
            hello.capacity,
            [w for w in hello.waiting if w not in reported],
        )
        self._note_leaving(hello)
        directives = self._directives(exchange.held)
        acks, settled = self._settle(ended, exchange.recorded)
        directives.results = refused + acks
        for claim in exchange.claims:
            assignment = self._assignment(claim, hello.worker_id)
            if assignment is not None:
                directives.tasks.append(assignment)
        self._announce(settled)
        return directives

    def _prepare_all(
        self, results: Sequence[TaskResult], now: int
    ) -> tuple[list[_Ended], list[ResultAck]]:
        """Each result's finish (one per attempt, the first if sent twice), or why it is
        refused before anything is written."""
        ended: list[_Ended] = []
        refused: list[ResultAck] = []
        # who holds each attempt: one query for them all, before anything is written to their
        # logs (the store checks again, in its transaction)
        holders = self.store.workers.holders(
            [(r.task_instance_id, r.attempt) for r in results], now
        )
        seen: set[tuple[str, int]] = set()
        for result in results:
            key = (result.task_instance_id, result.attempt)
            if key in seen:
                continue
            seen.add(key)
            try:
                ended.append(self._prepare(result, now, holders.get(key)))
            except (NotFound, Conflict) as err:
                refused.append(self._refused(result, err.message))
        return ended, refused

    def _prepare(self, result: TaskResult, now: int, holder: str | None) -> _Ended:
        """How the attempt ended, its last lines and note written to its log; NotFound or
        Conflict (nothing written) when `holder`, the worker that holds it, is another one."""
        held = self._attempt(result.worker_id, result.task_instance_id, result.attempt)
        claim, attempt_log = held.claim, held.log
        task = claim.task
        # a refused late result leaves no trace in the attempt's log
        if holder != result.worker_id:
            self._close_log(task.id, result.attempt)
            raise Conflict(_not_held(result.worker_id, task.task_id, result.attempt))
        for stream, line in result.lines:
            attempt_log.on_line(stream, line)
        outcome = result.outcome
        name = claim.definition.output if claim.definition is not None else ""
        if outcome.succeeded and (name or outcome.outputs):
            stdout, cut = attempt_log.captured_stdout() if name else (None, False)
            outcome = with_outputs(outcome, None, name, stdout, cut)
        outcome = masked_outputs(outcome, attempt_log.masked)  # the worker's values too
        finish = attempt_finish(claim, outcome, now, result.cancel_reason, attempt_log.tail())
        finish.message = attempt_log.masked(finish.message)
        if finish.message:
            attempt_log.note(finish.message)
        finish.output_tail = attempt_log.tail()
        return _Ended(result, task, finish)

    def _settle(
        self, ended: Sequence[_Ended], recorded: Sequence[bool | None]
    ) -> tuple[list[ResultAck], _Settled]:
        """After the transaction: close the logs and acknowledge each result; what the engine
        must hear of (`_announce`) is returned."""
        acks = []
        queued: Counter[str] = Counter()
        finished: list[tuple[str, str, int | None]] = []
        for end, moved in zip(ended, recorded, strict=True):
            task, finish = end.task, end.finish
            self._close_log(task.id, finish.attempt)
            if moved is None:
                message = _not_held(end.result.worker_id, task.task_id, finish.attempt)
                acks.append(self._refused(end.result, message))
                continue
            self._discard_cancel(end.result.worker_id, task.id)
            if moved and finish.status is TaskStatus.QUEUED:
                queued[task.pool] += 1
            finished.append((task.run_id, task.id, finish.retry_at))
            status = finish.status if moved else self._status_of(task.id)
            acks.append(ResultAck(str(status), task.id, finish.attempt))
        return acks, _Settled(dict(queued), finished)

    def _announce(self, settled: _Settled) -> None:
        """Wake whoever serves a task queued again, and hand the recorded ends to the
        scheduler (one pass for them all)."""
        if settled.queued:
            self.on_queued(settled.queued)
        if settled.finished:
            self.on_finished(settled.finished)

    def _refused(self, result: TaskResult, message: str) -> ResultAck:
        status = self._status_of(result.task_instance_id)
        return ResultAck(status, result.task_instance_id, result.attempt, message)

    def _status_of(self, task_instance_id: str) -> str:
        task = self.store.tasks.by_id(task_instance_id)
        return "" if task is None else str(task.status)

    # ------------------------------------------------------------ leases

    def reap(self, now: int) -> int:
        """Close every attempt whose lease ran out; returns how many."""
        self._forget_old_cancels(now)
        closed = 0
        for task_instance_id, attempt, worker, confirmed in self.store.workers.expired(now):
            if self._expire(task_instance_id, attempt, worker, confirmed, now):
                closed += 1
        return closed

    def _expire(
        self, task_instance_id: str, attempt: int, worker: str, confirmed: bool, now: int
    ) -> bool:
        """A lost worker's attempt fails (its retries decide what follows); one it never
        confirmed (e.g. handed out to a worker that had just died) is queued again."""
        claim = self.store.tasks.claim_of(task_instance_id, attempt)
        if claim is None:
            return False
        task, run = claim.task, claim.run
        lost = f"worker {worker} lost: no word from it for {self.lease_seconds:g}s"
        finish = attempt_finish(
            claim,
            Outcome(exit_code=None, error=lost, cancelled=not confirmed),
            now,
            "" if confirmed else UNCONFIRMED_REASON,
        )
        if not confirmed:
            finish.message = f"{lost}; {finish.message}"
        with self._logs_lock:
            entry = self._open.get((task.id, attempt))
        # the open log keeps the output tail; after a master restart there is none yet
        attempt_log = (
            entry.log
            if entry
            else self.logs.open_attempt(task.run_id, task.id, attempt, resume=True)
        )
        finish.output_tail = attempt_log.tail()
        try:  # of two masters' reapers, the one that closed it notes it and announces it
            if not self.store.workers.expire(finish, worker, now):
                return False
            attempt_log.note(finish.message)
        finally:
            if entry is None:
                attempt_log.close()
        self._close_log(task.id, attempt)
        self._discard_cancel(worker, task.id)
        self._wake()
        if finish.status is TaskStatus.QUEUED:
            self.on_queued({task.pool: 1})
        log.warning(
            "task %s of run %s: %s",
            task.task_id,
            task.run_id,
            finish.message,
            extra={"dag_id": run.dag_id, "run_id": run.run_id, "task_id": task.task_id},
        )
        self.on_finished([(task.run_id, task.id, finish.retry_at)])
        return True

    # ------------------------------------------------------------ registry

    def workers(self) -> list[WorkerStatus]:
        now = self.clock()
        return [WorkerStatus(w, self._online(w, now)) for w in self.store.workers.registered()]

    def pool_workers(self) -> dict[str, PoolWorkers]:
        now = self.clock()
        pools: dict[str, PoolWorkers] = {}
        for worker in self.store.workers.registered():
            online = self._online(worker, now)
            for pool in worker.pools:
                entry = pools.setdefault(pool, PoolWorkers())
                entry.total += 1
                if online:
                    entry.online += 1
                    entry.capacity += worker.max_tasks
        return pools

    def _online(self, worker: WorkerRecord, now: int) -> bool:
        return worker.state == "online" and worker.last_seen >= now - self.lease_ms

    # ------------------------------------------------------------ helpers

    def _seen(self, hello: WorkerHello) -> Directives:
        """Register/refresh the worker and renew the leases of what it holds."""
        now = self.clock()
        renewed = self.store.workers.renew(
            hello.worker_id,
            hello.held,
            now + self.lease_ms,
            self._record_of(hello, now),
            hello.leaving,
            hello.waiting,
        )
        self._note_leaving(hello)
        return self._directives(renewed)

    def _record_of(self, hello: WorkerHello, now: int) -> WorkerRecord:
        return WorkerRecord(
            hello.worker_id,
            hello.hostname,
            hello.pools,
            hello.max_tasks,
            hello.version,
            "",
            now,
            now,
        )

    def _note_leaving(self, hello: WorkerHello) -> None:
        """A leaving worker's polls get no more work (and the one waiting answers now)."""
        with self._cond:
            if hello.leaving:
                self._leaving.add(hello.worker_id)
                self._generation += 1
                self._cond.notify_all()
            else:
                self._leaving.discard(hello.worker_id)

    @staticmethod
    def _directives(renewed: Sequence[HeldAttempt]) -> Directives:
        directives = Directives()
        for held in renewed:
            if held.lost:
                directives.lost.append(held.task_instance_id)
            elif held.cancel:
                directives.cancel.append(held.task_instance_id)
        return directives

    def _take_cancels(self, worker_id: str) -> list[str]:
        with self._cond:
            return sorted(self._cancels.pop(worker_id, {}))

    def ended_elsewhere(self, task_instance_ids: Sequence[str]) -> None:
        """Tasks ended on another master: their pending kills here are void."""
        wanted = set(task_instance_ids)
        with self._cond:
            for worker_id, pending in list(self._cancels.items()):
                for task_instance_id in wanted.intersection(pending):
                    del pending[task_instance_id]
                if not pending:
                    del self._cancels[worker_id]

    def _forget_old_cancels(self, now: int) -> None:
        """Kills pending longer than a lease: the worker polled another master (which told it,
        from the task's status) or was lost; either way this master's copy is done."""
        with self._cond:
            for worker_id, pending in list(self._cancels.items()):
                for task_instance_id, since in list(pending.items()):
                    if now - since > self.lease_ms:
                        del pending[task_instance_id]
                if not pending:
                    del self._cancels[worker_id]

    def _discard_cancel(self, worker_id: str, task_instance_id: str) -> None:
        with self._cond:
            pending = self._cancels.get(worker_id)
            if pending is not None:
                pending.pop(task_instance_id, None)
                if not pending:
                    del self._cancels[worker_id]

    def _hand_out(self, hello: WorkerHello, free: int) -> list[Assignment]:
        now = self.clock()
        claims = self.store.workers.claim(
            hello.worker_id, hello.pools, free, now, now + self.lease_ms, hello.capacity
        )
        tasks = []
        for claim in claims:
            assignment = self._assignment(claim, hello.worker_id)
            if assignment is not None:
                tasks.append(assignment)
        return tasks

    def _assignment(self, claim: Claim, worker_id: str) -> Assignment | None:
        definition = claim.definition
        attempt_log = self.logs.open_attempt(
            claim.run.run_id,
            claim.task.id,
            claim.attempt,
            capture_stdout=captures_stdout(claim.dag, definition, claim.task.task_id),
        )
        if definition is None or definition.type not in RUNNABLE:
            self._refuse(claim, worker_id, attempt_log, _failed("task definition not found"))
            return None
        pool = claim.task.pool
        user, problem = effective_run_as(
            definition.run_as, self.run_as.get(pool, ""), f"pool '{pool}'"
        )
        if problem:
            self._refuse(claim, worker_id, attempt_log, _failed(problem))
            return None
        rows = (
            self.store.tasks.context_rows(claim.run.run_id)
            if needs_upstream(claim, definition)
            else None
        )
        prepared = start_assignment(claim, definition, {}, rows)  # never this host's env
        if isinstance(prepared, Outcome):  # skipped by its `when:`, or a template failed
            self._refuse(claim, worker_id, attempt_log, prepared)
            return None
        # secrets are resolved here, on the master, and travel with this assignment only
        values, problem = resolve(task_secrets(claim.dag, definition), os.environ, read_secret_file)
        if problem:
            self._refuse(claim, worker_id, attempt_log, _failed(problem))
            return None
        attempt_log.set_secrets(tuple(values.values()))
        with self._logs_lock:
            self._open[(claim.task.id, claim.attempt)] = _OpenAttempt(worker_id, attempt_log, claim)
        attempt_log.note_before_output(f"running on worker {worker_id}")
        if values:
            prepared = with_secrets(prepared, values)
        # stdout is captured here, from the streamed log; the worker enforces its own --run-as
        # and picks its own $NAGARE_OUTPUT
        return replace(prepared, capture_stdout=False, run_as=user)

    def _refuse(
        self, claim: Claim, worker_id: str, attempt_log: AttemptLog, outcome: Outcome
    ) -> None:
        """End an attempt that is not handed out (it failed or was skipped before it ran)."""
        finish = attempt_finish(claim, outcome, self.clock())
        attempt_log.note(finish.message)
        attempt_log.close()
        self.store.workers.finish(finish, worker_id, self.clock())
        self.on_finished([(claim.run.run_id, claim.task.id, finish.retry_at)])

    def _attempt(self, worker_id: str, task_instance_id: str, attempt: int) -> _OpenAttempt:
        """An attempt this worker was handed, with its open log and claim (reopened after a
        master restart: NotFound or Conflict when it does not hold it)."""
        key = (task_instance_id, attempt)
        with self._logs_lock:
            entry = self._open.get(key)
        if entry is not None and entry.worker_id == worker_id:
            return entry
        claim = self.store.tasks.claim_of(task_instance_id, attempt)
        if claim is None:
            raise NotFound(f"task instance '{task_instance_id}' not found")
        task = claim.task
        if self.store.workers.holder(task_instance_id, attempt, self.clock()) != worker_id:
            raise Conflict(_not_held(worker_id, task.task_id, attempt))
        capture = captures_stdout(claim.dag, claim.definition, task.task_id)
        attempt_log = self.logs.open_attempt(
            task.run_id, task_instance_id, attempt, capture_stdout=capture, resume=True
        )
        # reopened (after a master restart): its lines are masked again (an unreadable secret
        # masks nothing more than the worker already did)
        values, _ = resolve(task_secrets(claim.dag, claim.definition), os.environ, read_secret_file)
        attempt_log.set_secrets(tuple(values.values()))
        entry = _OpenAttempt(worker_id, attempt_log, claim)
        with self._logs_lock:
            self._open[key] = entry
        return entry

    def _close_log(self, task_instance_id: str, attempt: int) -> None:
        with self._logs_lock:
            entry = self._open.pop((task_instance_id, attempt), None)
        if entry is not None:
            entry.log.close()


@dataclass(frozen=True)
class _OpenAttempt:
    """An attempt handed out to a worker: its log, open until the attempt ends, and the claim
    its result is decided with (as the local pools keep theirs)."""

    worker_id: str
    log: AttemptLog
    claim: Claim


@dataclass(frozen=True)
class _Settled:
    """What recorded results mean for the engine: tasks queued again (per pool) and the ends
    its scheduler settles."""

    queued: dict[str, int]
    finished: list[tuple[str, str, int | None]]


@dataclass(frozen=True)
class _Ended:
    """A result ready to record: the task it ends and how (see `Coordinator._prepare`)."""

    result: TaskResult
    task: TaskInstance
    finish: AttemptFinish


def _failed(error: str) -> Outcome:
    return Outcome(exit_code=None, error=error)


def _not_held(worker_id: str, task_id: str, attempt: int) -> str:
    return (
        f"worker {worker_id} does not hold attempt {attempt} of task '{task_id}' (its lease ran "
        "out, or the attempt was closed): the result is refused"
    )
