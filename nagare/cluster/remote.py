"""The worker's side of the cluster: `nagare worker --join URL` pulls tasks from the master
with a long poll, runs them with the same executors as the master (local `sh -c` or Docker),
streams their output back in batches and reports each outcome; the master decides retries.

Loops (each a `run(stop)`-style method that `app.WorkerApp` starts in a thread of its own): the
poll loop (joins the master, then long-polls for work), the heartbeat loop (renews the leases,
carries kills), the shipper (log batches, then results, in order) and the task loop, which owns
the `Reactor` of the executors:
it starts every task (through the executor seam, as the master's dispatcher does), watches the
local ones and receives every task's end. Memory is bounded: a task whose lines cannot be
shipped waits (its output pipe fills, the process pauses) instead of buffering without limit.
A worker that loses the master keeps its tasks, retries with backoff and delivers the results
it holds once the master is back.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from nagare.client import ApiClient, ApiError, Masters
from nagare.cluster.protocol import (
    MAX_LINES,
    MAX_RESULTS,
    PROTOCOL,
    Directives,
    LogBatch,
    PollRequest,
    ResultAck,
    TaskResult,
    Welcome,
    WorkerHello,
    decode_directives,
    decode_log_ack,
    decode_result_ack,
    decode_welcome,
    encode_hello,
    encode_log_batch,
    encode_poll,
    encode_result,
)
from nagare.engine.assignment import SECRET_VARIABLES, effective_run_as
from nagare.engine.attempt_end import HANDED_BACK_REASON, RETURNED_REASON
from nagare.engine.outputs import OutputError, with_outputs
from nagare.engine.prefetch import RECENT_TASKS, overdue, prefetch_now
from nagare.engine.secrets import apply_mask, mask_values
from nagare.errors import NagareError
from nagare.executors import AttemptHandle, Executor
from nagare.executors.reactor import Reactor
from nagare.logs import read_output_file, remove_output_file
from nagare.models import Assignment, Outcome

log = logging.getLogger("nagare.worker")
BATCH_CHARS = 256 * 1024  # text per log batch: well under the master's 1 MiB body limit
BUFFER_CHARS = 16 * 1024 * 1024  # unshipped output the worker keeps before tasks must wait
SHIP_INTERVAL = 0.05
RESULT_LINGER = 0.005  # seconds at most: see RemoteWorker._linger
BATCHES_PER_ROUND = 8
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
FATAL_STATUSES = (400, 401, 403, 404)


# outputs a result may carry: the result must stay under the master's request body limit
# (max_body_bytes, 1 MiB by default), with room for the rest of it
MAX_SHIPPED_OUTPUT_BYTES = 768 * 1024


def _shippable(outcome: Outcome) -> Outcome:
    """Outcome with outputs small enough to ship, or failed saying they are not."""
    size = sum(len(k) + len(v.encode()) for k, v in (outcome.outputs or {}).items())
    if size <= MAX_SHIPPED_OUTPUT_BYTES:
        return outcome
    return replace(
        outcome,
        outputs=None,
        error=f"outputs: {size} bytes in all; a task on a remote worker may publish at most "
        f"{MAX_SHIPPED_OUTPUT_BYTES // 1024} KiB (they travel with its result)",
    )


def _batches(results: list[TaskResult]) -> list[list[TaskResult]]:
    """Results grouped for polls: up to MAX_RESULTS, and about BATCH_CHARS of lines and outputs
    each (a result larger than that goes alone), so a poll stays under the master's body limit."""
    batches: list[list[TaskResult]] = []
    size = 0
    for result in results:
        weight = sum(len(line) for _, line in result.lines) + sum(
            len(k) + len(v) for k, v in (result.outcome.outputs or {}).items()
        )
        if not batches or len(batches[-1]) >= MAX_RESULTS or size + weight > BATCH_CHARS:
            batches.append([])
            size = 0
        batches[-1].append(result)
        size += weight
    return batches


class WorkerRejected(NagareError):
    """The master refused this worker (bad token, invalid identity): retrying cannot help."""


@dataclass(eq=False)
class _Task:
    """A task this worker runs; also its listener (the executor seam's callbacks)."""

    worker: RemoteWorker
    assignment: Assignment
    handle: AttemptHandle | None = None  # once started (under the worker's lock)
    cancel_reason: str = ""  # why it was stopped, if it was (under the worker's lock)
    lost: bool = False  # the master no longer counts on it: drop its lines and result
    done: bool = False  # the process ended; its result may still wait for delivery
    output_file: str = ""  # its $NAGARE_OUTPUT on this host
    masked: tuple[str, ...] = ()  # its secret values, prepared for masking
    answer: int = 0  # which of the master's answers handed it out (see RemoteWorker._linger)
    slot: bool = False  # it holds one of the worker's max_tasks slots (under the worker's lock)
    since: float = 0.0  # when it took its slot, or began to wait for one (monotonic)

    def __post_init__(self) -> None:
        self.masked = mask_values(self.assignment.secrets)

    @property
    def key(self) -> tuple[str, int]:
        return (self.assignment.task_instance_id, self.assignment.attempt)

    def line(self, stream: str, text: str) -> None:
        self.worker._line(self, stream, text)

    def started(self, pid: int, start_time: float) -> None:
        return None

    def ended(self, outcome: Outcome) -> None:
        self.worker._ended(self, outcome)


class RemoteWorker:
    def __init__(
        self,
        master: ApiClient | Masters,
        hello: WorkerHello,
        reactor: Reactor,
        executor_for: Callable[[Assignment], Executor],
        grace_seconds: float = 10.0,
        base_env: dict[str, str] | None = None,
        run_as: str = "",
        prefetch: int = 0,
    ) -> None:
        self.master = master
        self.prefetch = prefetch  # at most this many tasks wait for a slot (engine.prefetch)
        self.run_as = run_as  # the user every task of this worker runs as ("" = its own)
        self.hello = hello
        self.reactor = reactor  # owned by the task loop
        self.executor_for = executor_for
        self.grace_seconds = grace_seconds
        env = dict(os.environ) if base_env is None else base_env
        self.base_env = {k: v for k, v in env.items() if k not in SECRET_VARIABLES}
        self.settings = Welcome(hello.worker_id)  # the master's timings, once it answers
        self._lock = threading.Condition()
        self._tasks: dict[str, _Task] = {}
        self._lines: dict[tuple[str, int], list[tuple[str, str]]] = {}
        self._buffered = 0  # characters waiting in _lines
        self._results: list[TaskResult] = []
        self._draining = threading.Event()  # no new work: shutting down
        self._finished = threading.Event()  # everything delivered: the shipper may stop
        self._unreachable_since: float | None = None
        self._drain_deadline: float | None = None
        self._fatal: WorkerRejected | None = None
        self.on_fatal: Callable[[], None] = lambda: None  # app wires: stop the process
        self._outputs_dir = ""  # where the tasks' $NAGARE_OUTPUT files are (made on first use)
        self._answers = 0  # answers that handed out tasks, counted (poll loop and shipper)
        self._busy = 0  # slots taken (under the lock)
        self._waiting: deque[_Task] = deque()  # prefetched tasks waiting for a slot, in order
        self._recent: deque[float] = deque(maxlen=RECENT_TASKS)  # run times of the last tasks

    # ------------------------------------------------------------ lifecycle (see WorkerApp)

    @property
    def fatal(self) -> WorkerRejected | None:
        """Why the master refused this worker, if it did (the worker then stops)."""
        return self._fatal

    def leave(self) -> None:
        """`stop` is set: take no new work; the master answers the outstanding poll at once."""
        self._draining.set()
        self._say_goodbye()

    def finish(self) -> None:
        """After the poll loop ended: finish or hand back running tasks within the grace
        period and deliver their results; then the other loops end."""
        self._drain()

    def say_goodbye(self) -> None:
        self._say_goodbye()

    def _join(self, stop: threading.Event) -> None:
        delay = BACKOFF_FIRST
        while not stop.is_set():
            try:
                answer = self.master.cluster("register", encode_hello(self.hello))
            except ApiError as err:
                if err.status in FATAL_STATUSES:
                    raise WorkerRejected(self._refusal(err)) from None
                if err.code == "untrusted_certificate":
                    raise WorkerRejected(err.message) from None
                log.warning("cannot join %s yet: %s; retrying", self.master.base_url, err)
                stop.wait(delay)
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            self.settings = decode_welcome(answer)
            log.info(
                "worker %s joined %s (pools %s, up to %d tasks)",
                self.hello.worker_id,
                self.master.base_url,
                ",".join(self.hello.pools),
                self.hello.max_tasks,
            )
            return

    def _refusal(self, err: ApiError) -> str:
        what = {401: "the cluster token was refused (check --token)"}.get(err.status, err.message)
        return f"the master at {self.master.base_url} refused this worker: {what} [{err.message}]"

    # ------------------------------------------------------------ polling

    def poll_loop(self, stop: threading.Event) -> None:
        """Join the master (retrying with backoff), then long-poll for work until `stop`. A
        master that refuses this worker stops it (`fatal`, then `on_fatal`)."""
        joined = False
        while not stop.is_set():
            try:
                if not joined:
                    self._join(stop)
                    joined = True
                self._poll_until(stop)
            except WorkerRejected as err:
                self._fatal = err
                stop.set()
                self.on_fatal()
            except Exception:  # a bug here must not leave a worker that only heartbeats
                log.exception("the poll loop failed; polling again shortly")
                stop.wait(1.0)

    def _poll_until(self, stop: threading.Event) -> None:
        delay = BACKOFF_FIRST
        while not stop.is_set():
            try:
                answer = self.master.cluster(
                    "poll",
                    encode_poll(PollRequest(self._hello(), self.settings.poll_wait_seconds)),
                    timeout=self.settings.poll_wait_seconds + 15,
                )
            except ApiError as err:
                if err.status == 401:
                    raise WorkerRejected(self._refusal(err)) from None
                self._unreachable(err)
                stop.wait(delay * (0.5 + random.random()))
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            delay = BACKOFF_FIRST
            self._reachable()
            directives = decode_directives(answer)
            self._obey(directives)
            # claimed just as the worker stops: handed back at once
            self._start_all(directives.tasks, hand_back=stop.is_set())

    def _hello(self) -> WorkerHello:
        """Who the worker is, what it holds and how many tasks it prefetches now. A prefetched
        task is listed in `waiting`, not `held`, until it starts: the master renews its lease
        and tells of its kill without marking it confirmed, so if the worker dies before it
        starts, the lease runs out unconfirmed and the task is queued again without spending a
        retry."""
        with self._lock:
            waiting = tuple(t.key for t in self._waiting)  # (a lost task leaves the line)
            lined_up = set(waiting)
            held = tuple(t.key for t in self._held() if t.key not in lined_up)
            prefetch = self._prefetch_now()
        leaving = self._draining.is_set()
        return replace(
            self.hello,
            held=held,
            waiting=waiting,
            leaving=leaving,
            prefetch=0 if leaving else prefetch,
        )

    def _prefetch_now(self) -> int:
        """(lock held) How many tasks beyond its slots the worker takes now."""
        running = [t.since for t in self._tasks.values() if t.slot and not t.done]
        return prefetch_now(self.prefetch, self._recent, running, time.monotonic())

    def _held(self) -> list[_Task]:
        return [t for t in self._tasks.values() if not t.lost]

    def _obey(self, directives: Directives) -> None:
        """Stop what the master killed; drop what it no longer counts on."""
        for task_instance_id in directives.cancel:
            self._stop_task(task_instance_id, "killed", lost=False)
        for task_instance_id in directives.lost:
            self._stop_task(task_instance_id, "the master no longer holds this task", lost=True)

    def _stop_task(self, task_instance_id: str, reason: str, lost: bool) -> None:
        with self._lock:
            task = self._tasks.get(task_instance_id)
            if task is None:
                return
            if lost:
                self._forget(task)
            first = not task.cancel_reason
            task.cancel_reason = task.cancel_reason or reason
            handle = task.handle
            waited = self._unwait(task)
            self._lock.notify_all()
        if first:
            log.info("stopping task %s: %s", task.assignment.task_id, reason)
        if handle is not None:
            handle.cancel(reason)
        if waited:  # never started: it ends now, without a slot
            self.reactor.post(lambda: self._begin(task))

    def _unwait(self, task: _Task) -> bool:
        """(lock held) Take a task out of the waiting line; False if it was not in it."""
        try:
            self._waiting.remove(task)
        except ValueError:
            return False
        return True

    def _forget(self, task: _Task) -> None:
        """(lock held) A lost task: its lines and result are dropped."""
        task.lost = True
        dropped = self._lines.pop(task.key, [])
        self._buffered -= sum(len(line) for _, line in dropped)
        if task.done:
            self._tasks.pop(task.assignment.task_instance_id, None)

    def _unreachable(self, err: ApiError) -> None:
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning("lost the master (%s); retrying with backoff", err)

    def _reachable(self) -> None:
        if self._unreachable_since is not None:
            log.info(
                "reached the master again after %.1fs", time.monotonic() - self._unreachable_since
            )
            self._unreachable_since = None

    # ------------------------------------------------------------ heartbeats

    def heartbeat_loop(self, stop: threading.Event) -> None:
        """Renew leases and hear of kills until every result is delivered (past `stop`: the
        tasks that finish while draining still hold leases)."""
        while not self._finished.wait(self.settings.heartbeat_seconds):
            try:
                answer = self.master.cluster("heartbeat", encode_hello(self._hello()), timeout=10)
            except ApiError as err:
                log.debug("heartbeat failed: %s", err)
                continue
            self._obey(decode_directives(answer))

    def _say_goodbye(self) -> None:
        """A heartbeat saying the worker is leaving: the master hands it no more work."""
        try:
            answer = self.master.cluster("heartbeat", encode_hello(self._hello()), timeout=5)
        except ApiError as err:
            log.debug("goodbye not delivered: %s", err)
        else:
            self._obey(decode_directives(answer))

    # ------------------------------------------------------------ running tasks

    def _start_all(self, assignments: list[Assignment], hand_back: bool) -> None:
        """Start the tasks of one answer (they share its number: see `_linger`)."""
        if not assignments:
            return
        with self._lock:
            self._answers += 1
            answer = self._answers
            held = [self._hold(assignment, hand_back, answer) for assignment in assignments]
        tasks = [task for task in held if task is not None]
        if tasks:
            self.reactor.post(lambda: self._begin_all(tasks))  # one wake-up of the task loop

    def _hold(self, assignment: Assignment, hand_back: bool, answer: int) -> _Task | None:
        """(lock held) A task handed out: held (and reported so) from now on. Returned to be
        begun when it takes a free slot or is handed back at once (it ends without a slot);
        lined up for the next free slot otherwise (a prefetched task: None)."""
        task = _Task(self, assignment, answer=answer)
        self._tasks[assignment.task_instance_id] = task
        if hand_back:
            task.cancel_reason = HANDED_BACK_REASON
        elif self._busy >= self.hello.max_tasks:
            task.since = time.monotonic()
            self._waiting.append(task)
            return None
        else:
            self._take_slot(task)
        return task

    def _take_slot(self, task: _Task) -> None:
        """(lock held)"""
        task.slot = True
        task.since = time.monotonic()
        self._busy += 1

    def _free_slot(self, task: _Task, outcome: Outcome) -> _Task | None:
        """(lock held) A task ended: its slot goes to the first waiting task, returned."""
        if not task.slot:
            return None
        task.slot = False
        self._busy -= 1
        if not outcome.cancelled:
            self._recent.append(time.monotonic() - task.since)
        if not self._waiting or self._draining.is_set():
            return None
        following = self._waiting.popleft()
        self._take_slot(following)
        return following

    def _hand_back_overdue(self) -> None:
        """(task loop) Prefetched tasks that waited too long for a slot (a task ahead of them
        runs long) go back to the queue unstarted, for any worker, without spending a retry."""
        with self._lock:
            if not self._waiting:
                return
            late = [
                self._waiting[i]
                for i in overdue([t.since for t in self._waiting], time.monotonic())
            ]
        for task in late:
            self._stop_task(task.assignment.task_instance_id, RETURNED_REASON, lost=False)

    def task_loop(self, stop: threading.Event) -> None:
        """Starts tasks, watches local processes and receives every task's end, until every
        result is delivered (or given up) at shutdown (past `stop`: draining needs it)."""
        while not self._finished.is_set():
            try:
                self.reactor.run_once(0.5)
                self._hand_back_overdue()
            except Exception:  # a bug here must not stop the tasks that run
                log.exception("the task loop failed; going on")
        self.reactor.close()

    def _begin_all(self, tasks: list[_Task]) -> None:
        """(task loop) Start the tasks of one answer, one after the other."""
        for task in tasks:
            try:
                self._begin(task)
            except Exception:  # a bug in one start must not keep the others from starting
                log.exception("task %s could not be started", task.assignment.task_id)

    def _begin(self, task: _Task) -> None:
        """(task loop) Start a task through the executor its assignment names."""
        assignment = task.assignment
        with self._lock:
            handed_back = bool(task.cancel_reason)
        if handed_back:
            self._ended(task, Outcome(exit_code=None, cancelled=True))
            return
        user, problem = effective_run_as(
            assignment.run_as, self.run_as, f"worker {self.hello.worker_id}"
        )
        if problem:
            self._ended(task, Outcome(exit_code=None, error=problem))
            return
        base = {} if assignment.image else self.base_env  # containers: never the host's
        output_file = self._output_file(assignment)
        task.output_file = output_file
        runnable = replace(
            assignment,
            env={**base, **assignment.env, "NAGARE_OUTPUT": output_file},
            run_as=user,
            output_file=output_file,
        )
        try:
            handle = self.executor_for(assignment).start(runnable, task)
        except Exception as exc:  # an executor failure is the task's, not the worker's
            log.exception("task %s crashed its executor", assignment.task_id)
            self._ended(
                task, Outcome(exit_code=None, error=f"worker {self.hello.worker_id}: {exc}")
            )
            return
        with self._lock:
            task.handle = handle
            reason = task.cancel_reason
        if reason:  # stopped while it started
            handle.cancel(reason)

    def _ended(self, task: _Task, outcome: Outcome) -> None:
        with self._lock:
            reason = task.cancel_reason
        if reason and not outcome.cancelled and not outcome.timed_out:
            outcome.cancelled = True
        if task.output_file:  # the outputs travel with the result ($NAGARE_OUTPUT is ours)
            written = True  # (unknown unless read: removed then)
            if outcome.succeeded:
                try:
                    text = read_output_file(task.output_file)
                except OutputError as exc:
                    outcome = replace(outcome, error=f"outputs: {exc}")
                else:
                    written = text is not None
                    outcome = _shippable(with_outputs(outcome, text, "", None, False))
            if written:
                remove_output_file(task.output_file)
        self._report(task, outcome)

    def _output_file(self, assignment: Assignment) -> str:
        """This attempt's $NAGARE_OUTPUT, in the worker's own folder (made once)."""
        if not self._outputs_dir:
            self._outputs_dir = tempfile.mkdtemp(prefix="nagare-worker-outputs-")
        name = f"{assignment.task_instance_id}.{assignment.attempt}.outputs"
        return os.path.join(self._outputs_dir, name)

    def _line(self, task: _Task, stream: str, line: str) -> None:
        if task.masked:  # masked before it leaves this host
            line = apply_mask(line, task.masked)
        with self._lock:
            while self._buffered > BUFFER_CHARS and not task.lost and not task.cancel_reason:
                self._lock.wait(0.5)  # backpressure: the shipper is behind
            if task.lost:
                return
            self._lines.setdefault(task.key, []).append((stream, line))
            self._buffered += len(line)

    def _report(self, task: _Task, outcome: Outcome) -> None:
        assignment = task.assignment
        with self._lock:
            task.done = True
            following = self._free_slot(task, outcome)
            if following is not None:
                self.reactor.post(lambda: self._begin(following))
            if task.lost:
                self._tasks.pop(assignment.task_instance_id, None)
                return
            self._results.append(
                TaskResult(
                    worker_id=self.hello.worker_id,
                    task_instance_id=assignment.task_instance_id,
                    attempt=assignment.attempt,
                    outcome=outcome,
                    cancel_reason=task.cancel_reason,
                )
            )
            self._lock.notify_all()

    # ------------------------------------------------------------ shipping to the master

    def ship_loop(self, stop: threading.Event) -> None:
        """Ships log batches, then results, until every one is delivered (or given up) at
        shutdown (past `stop`: the results of draining tasks go out too)."""
        delay = BACKOFF_FIRST
        while True:
            with self._lock:
                if self._finished.is_set() and not self._lines and not self._results:
                    return
                if not self._lines and not self._results:
                    self._lock.wait(SHIP_INTERVAL * 4)
                    continue
            if self._ship_once():
                delay = BACKOFF_FIRST
                with self._lock:  # lines gather into batches; a result goes out at once
                    if not self._results:
                        self._lock.wait(SHIP_INTERVAL)
            else:
                with self._lock:  # back off; a new result or a stopped task looks again sooner
                    self._lock.wait(delay)
                delay = min(BACKOFF_MAX, delay * 2)
                if self._finished.is_set() and self._gave_up():
                    return

    def _ship_once(self) -> bool:
        """Ship every task's pending lines, then the results whose lines are all shipped.
        False when the master could not be reached (everything stays for the next try)."""
        with self._lock:
            if self._results and self.settings.protocol >= PROTOCOL:
                self._linger()
            self._attach_last_lines()
            keys = list(self._lines)
        for key in keys:
            for _ in range(BATCHES_PER_ROUND):  # a loud task cannot starve the others
                if not self._ship_lines(key):
                    return False
                with self._lock:
                    if key not in self._lines:
                        break
        with self._lock:
            ready = [r for r in self._results if (r.task_instance_id, r.attempt) not in self._lines]
        if self.settings.protocol >= PROTOCOL:
            return all(self._deliver(batch) for batch in _batches(ready))
        return all(self._ship_result(result) for result in ready)

    def _linger(self) -> None:
        """(lock held) A result is ready while tasks handed out with it or after it still run:
        give them up to RESULT_LINGER to end too, so that one poll carries their results
        together (short tasks handed out together end together), not one poll each, and a
        straggler's result joins the next batch's instead of going alone. Tasks handed out
        before it (a long task) are not waited for."""
        deadline = time.monotonic() + RESULT_LINGER
        answers = [t.answer for r in self._results if (t := self._tasks.get(r.task_instance_id))]
        oldest = min(answers, default=0)
        while any(t.slot and not t.done and t.answer >= oldest for t in self._held()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._lock.wait(left)

    def _attach_last_lines(self) -> None:
        """(lock held) A finished task's last lines travel with its result when they fit in
        one batch: one request instead of two for most tasks."""
        for index, result in enumerate(self._results):
            key = (result.task_instance_id, result.attempt)
            pending = self._lines.get(key)
            if not pending or result.lines or len(pending) > MAX_LINES:
                continue
            size = sum(len(line) for _, line in pending)
            if size <= BATCH_CHARS:
                self._results[index] = replace(result, lines=tuple(pending))
                self._buffered -= size
                del self._lines[key]

    def _ship_lines(self, key: tuple[str, int]) -> bool:
        with self._lock:
            pending = self._lines.get(key, [])
            batch: list[tuple[str, str]] = []
            size = 0
            for stream, line in pending:
                if batch and (size + len(line) > BATCH_CHARS or len(batch) >= MAX_LINES):
                    break
                batch.append((stream, line))
                size += len(line)
        if not batch:
            return True
        message = LogBatch(self.hello.worker_id, key[0], key[1], tuple(batch))
        try:
            answer = self.master.cluster("log", encode_log_batch(message))
        except ApiError as err:
            if err.status in (404, 409):
                self._stop_task(key[0], f"the master refused its log: {err.message}", lost=True)
                return True
            if err.status == 400:
                log.error("the master refused a log batch: %s", err.message)
            else:
                self._unreachable(err)
                return False
        else:
            if decode_log_ack(answer).cancel:
                self._stop_task(key[0], "killed", lost=False)
        with self._lock:
            shipped = self._lines.get(key)
            if shipped is not None:  # (a task lost meanwhile had its lines dropped already)
                del shipped[: len(batch)]
                self._buffered -= size
                if not shipped:
                    del self._lines[key]
            self._lock.notify_all()
        return True

    def _deliver(self, results: list[TaskResult]) -> bool:
        """Results in a poll that does not wait: the master records them, renews the leases
        and hands out work for the slots they freed, in one request and one transaction. False
        when the master could not be reached (they stay for the next try: a result the master
        recorded already is refused when sent again, so it is never recorded twice)."""
        request = PollRequest(self._hello(), 0.0, tuple(results))
        try:
            answer = self.master.cluster("poll", encode_poll(request))
        except ApiError as err:
            if err.status == 400:  # one of them is refused: alone, each is named or recorded
                log.warning("the master refused a poll with %d results: %s", len(results), err)
                return all(self._ship_result(result) for result in results)
            self._unreachable(err)
            return False
        self._reachable()
        directives = decode_directives(answer)
        acks = {(ack.task_instance_id, ack.attempt): ack for ack in directives.results}
        unheard = []
        for result in results:
            ack = acks.get((result.task_instance_id, result.attempt))
            if ack is None:
                unheard.append(result)
            else:
                self._acknowledged(result, ack)
        self._obey(directives)
        # after the acks: a task may come back as a retry
        self._start_all(directives.tasks, hand_back=self._draining.is_set())
        if unheard:  # a master of the first protocol: results go one per request
            log.info("the master takes no results in polls; sending them one by one")
            self.settings = replace(self.settings, protocol=1)
            return all(self._ship_result(result) for result in unheard)
        return True

    def _acknowledged(self, result: TaskResult, ack: ResultAck) -> None:
        if ack.refused:
            log.warning(
                "the master refused the result of %s: %s", result.task_instance_id, ack.refused
            )
        else:
            log.info("task %s ended: %s", result.task_instance_id, ack.status)
        self._delivered(result)

    def _ship_result(self, result: TaskResult) -> bool:
        task_instance_id = result.task_instance_id
        try:
            answer = self.master.cluster("result", encode_result(result))
        except ApiError as err:
            if err.status in (400, 404, 409):
                log.warning(
                    "the master refused the result of %s: %s", task_instance_id, err.message
                )
            else:
                self._unreachable(err)
                return False
        else:
            log.info("task %s ended: %s", task_instance_id, decode_result_ack(answer).status)
        self._delivered(result)
        return True

    def _delivered(self, result: TaskResult) -> None:
        """The master has the result (or refused it): the worker is done with its task."""
        with self._lock:
            self._results.remove(result)
            task = self._tasks.get(result.task_instance_id)
            if task is not None and task.assignment.attempt == result.attempt:
                del self._tasks[result.task_instance_id]
            self._lock.notify_all()

    def _gave_up(self) -> bool:
        """While draining, delivery is tried for a bounded time."""
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline

    # ------------------------------------------------------------ shutdown

    def _drain(self) -> None:
        """Stop taking work; let running tasks finish within the grace period, hand the rest
        back (the master queues them again without spending a retry); deliver results."""
        self._draining.set()
        deadline = time.monotonic() + self.grace_seconds
        with self._lock:
            waiting = list(self._waiting)
        for task in waiting:  # never started: back to the queue at once
            self._stop_task(task.assignment.task_instance_id, HANDED_BACK_REASON, lost=False)
        with self._lock:
            running = [t for t in self._tasks.values() if not t.done]
        if running:
            log.info(
                "stopping: %d running task(s) get %.0fs to finish", len(running), self.grace_seconds
            )
        with self._lock:
            self._lock.wait_for(
                lambda: all(t.done for t in self._tasks.values()),
                max(0.0, deadline - time.monotonic()),
            )
            left = [t for t in self._tasks.values() if not t.done]
        for task in left:
            self._stop_task(task.assignment.task_instance_id, HANDED_BACK_REASON, lost=False)
        with self._lock:
            self._lock.wait_for(lambda: all(t.done for t in self._tasks.values()), 10)
        self._drain_deadline = time.monotonic() + 10
        self._finished.set()
        with self._lock:
            self._lock.notify_all()
            self._lock.wait_for(lambda: not self._results and not self._lines, 10)
