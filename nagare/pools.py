"""Local worker pools: `worker_pools: {default: 4, gpu: 0}` threads that claim queued tasks
(compare-and-set in the store, so a task can never run twice) and run them through an executor.

A pool of size 0 runs nothing locally: its tasks wait `queued` for a remote worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from nagare.attempts import SHUTDOWN_REASON, attempt_finish, build_assignment
from nagare.clock import now_ms
from nagare.executors import Cancellation, Executor
from nagare.executors.local import kill_orphan_group
from nagare.logs import AttemptLog, LogFiles
from nagare.models import Outcome, TaskDef, TaskType
from nagare.store import AttemptFinish, Claim, Store

log = logging.getLogger("nagare.pools")
IDLE_WAIT_SECONDS = 5.0
EARLY_KILL_SECONDS = 60.0


class _Wakeups:
    """Wake-up permits of one pool: queuing n tasks wakes at most n idle threads (not all of
    them), and a permit given while every thread is busy is not lost."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cond = threading.Condition()
        self._permits = 0

    def give(self, count: int) -> None:
        with self._cond:
            self._permits = min(self.size, self._permits + count)
            self._cond.notify(count)

    def take(self, timeout: float) -> None:
        with self._cond:
            if self._cond.wait_for(lambda: self._permits > 0, timeout):
                self._permits -= 1


@dataclass
class _Running:
    cancel: Cancellation
    run_id: str


class WorkerPools:
    def __init__(
        self,
        store: Store,
        logs: LogFiles,
        sizes: dict[str, int],
        executor_for: Callable[[TaskDef], Executor],
        on_finished: Callable[[str, str], None],
        clock: Callable[[], int] = now_ms,
        line_sink: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.store = store
        self.logs = logs
        self.sizes = dict(sizes)
        self.executor_for = executor_for
        self.on_finished = on_finished
        self.clock = clock
        self.line_sink = line_sink
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # signalled when a task finishes
        self._wakeups = {pool: _Wakeups(size) for pool, size in self.sizes.items()}
        self._running: dict[str, _Running] = {}
        self._early_kills: dict[str, float] = {}
        self._busy: dict[str, int] = dict.fromkeys(self.sizes, 0)
        self._accepting = True
        self._threads: list[threading.Thread] = []
        self._base_env = dict(os.environ)
        # names of server variables that hold secrets (webhook `secret_env`s), set by `app`
        self.hidden_env: Callable[[], set[str]] = set

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for pool, size in self.sizes.items():
            for number in range(size):
                thread = threading.Thread(
                    target=self._work, args=(pool,), daemon=True, name=f"pool-{pool}-{number + 1}"
                )
                thread.start()
                self._threads.append(thread)

    def notify(self, queued: dict[str, int]) -> None:
        """`queued[pool]` tasks were queued: wake that many idle threads of the pool."""
        for pool, count in queued.items():
            wakeups = self._wakeups.get(pool)
            if wakeups is not None:
                wakeups.give(count)

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False
        for wakeups in self._wakeups.values():
            wakeups.give(wakeups.size)

    def shutdown(self, grace_seconds: float) -> list[str]:
        """Stop claiming, let running tasks finish for `grace_seconds`, then kill the rest; they
        go back to `queued` for the next start. Returns the ids of interrupted tasks."""
        self.stop_accepting()
        deadline = time.monotonic() + grace_seconds
        with self._idle:
            self._idle.wait_for(lambda: not self._running, max(0.0, grace_seconds))
            interrupted = list(self._running)
            for entry in self._running.values():
                entry.cancel.cancel(SHUTDOWN_REASON)
        for thread in self._threads:
            thread.join(max(0.5, deadline - time.monotonic() + 2.0))
        return interrupted

    def recover(self, removed_containers: Mapping[tuple[str, int], str] | None = None) -> list[str]:
        """After a crash: every attempt this server left `running` is closed. Its orphaned
        process group (if still alive) is killed, not adopted: its output pipes died with the
        old server, so its log and exit code could never be collected. The attempt counts as
        failed and the task's retry policy decides what follows. `removed_containers` names the
        leftover containers app already removed, by (task instance id, attempt). Returns the
        affected run ids."""
        removed_containers = removed_containers or {}
        runs = []
        for attempt in self.store.running_attempts("local"):
            task = self.store.get_task_by_id(attempt.task_instance_id)
            if task is None:
                continue
            recorded = self.logs.read_pid(task.run_id, task.id, attempt.attempt)
            killed = recorded is not None and kill_orphan_group(*recorded)
            message = "the server stopped while this attempt ran" + (
                "; its leftover process group was killed" if killed else ""
            )
            container = removed_containers.get((task.id, attempt.attempt))
            if container:
                message += f"; its leftover container {container} was removed"
            claim = Claim(task=task, run=self.store.get_run(task.run_id), attempt=attempt.attempt)  # type: ignore[arg-type]
            self.store.finish_attempt(
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
        """Kill a locally running task (its whole process group). False if not running here."""
        with self._lock:
            entry = self._running.get(task_instance_id)
            if entry is None:
                self._remember_early_kill(task_instance_id)
        if entry is None:
            return False
        entry.cancel.cancel(reason)
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

    # ------------------------------------------------------------ worker threads

    def _work(self, pool: str) -> None:
        wakeups = self._wakeups[pool]
        claim: Claim | None = None
        while self._accepting or claim is not None:
            if claim is None:
                claim = self._claim(pool)
                if claim is None:
                    wakeups.take(IDLE_WAIT_SECONDS)
                    continue
            finish = self._execute(pool, claim)
            claim = self._finish(finish, pool, claim)

    def _claim(self, pool: str) -> Claim | None:
        try:
            return self.store.claim_next(pool, "local", self.clock)
        except Exception:
            log.exception("claiming a task of pool '%s' failed", pool)
            return None

    def _finish(self, finish: AttemptFinish, pool: str, done: Claim) -> Claim | None:
        """Record the attempt and claim the next task of the pool in the same transaction."""
        try:
            _, claim = self.store.finish_and_claim(
                finish, pool if self._accepting else None, "local", self.clock
            )
        except Exception:
            log.exception(
                "recording task %s of run %s failed",
                done.task.task_id,
                done.task.run_id,
                extra=_context(done),
            )
            claim = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s of run %s: attempt %d ended %s",
                done.task.task_id,
                done.task.run_id,
                done.attempt,
                finish.attempt_status,
                extra=_context(done),
            )
        with self._idle:
            self._running.pop(done.task.id, None)
            self._busy[pool] -= 1
            self._idle.notify_all()
        self.on_finished(done.task.run_id, done.task.id)
        return claim

    def _execute(self, pool: str, claim: Claim) -> AttemptFinish:
        task = claim.task
        cancel = Cancellation()
        with self._lock:
            self._running[task.id] = _Running(cancel, task.run_id)
            self._busy[pool] += 1
            if self._early_kills.pop(task.id, None) is not None:
                cancel.cancel("killed")  # the kill came between the claim and this point
        try:
            return self._run_attempt(claim, cancel)
        except Exception:
            log.exception(
                "task %s of run %s crashed the worker thread",
                task.task_id,
                task.run_id,
                extra=_context(claim),
            )
            return self._finish_of(claim, Outcome(exit_code=None, error="internal error"), None)

    def _run_attempt(self, claim: Claim, cancel: Cancellation) -> AttemptFinish:
        task, run = claim.task, claim.run
        dag = self.store.dag_version(run.dag_version)
        definition = dag.task(task.base_task_id)
        if definition is None or (
            definition.type is not TaskType.COMMAND and definition.type is not TaskType.MAP
        ):
            return self._finish_of(
                claim, Outcome(exit_code=None, error="task definition not found"), None
            )
        base_env = {} if definition.image else self._base_env  # containers: never the host's
        hidden = self.hidden_env()
        if hidden and base_env:
            base_env = {k: v for k, v in base_env.items() if k not in hidden}
        assignment = build_assignment(dag, definition, claim, base_env)
        executor = self.executor_for(definition)
        attempt_log = self.logs.open_attempt(
            run.run_id, task.id, claim.attempt, assignment.capture_stdout
        )
        on_line: Callable[[str, str], None] = attempt_log.on_line
        if self.line_sink is not None:
            on_line = _tee(on_line, task.task_id, self.line_sink)
        try:
            outcome = executor.run(assignment, on_line, cancel, on_start=attempt_log.record_pid)
            if cancel.is_set and not outcome.cancelled and not outcome.timed_out:
                outcome.cancelled = True
            return self._finish_of(
                claim,
                outcome,
                attempt_log,
                cancel.reason,
                definition.timeout_seconds,
                definition.retry_delay_seconds,
            )
        finally:
            attempt_log.close()

    def _finish_of(
        self,
        claim: Claim,
        outcome: Outcome,
        attempt_log: AttemptLog | None,
        cancel_reason: str = "",
        timeout: float = 0,
        retry_delay: float = 0,
    ) -> AttemptFinish:
        """How the attempt ended, as the store records it (its message also goes to the log)."""
        finish = attempt_finish(
            claim,
            outcome,
            self.clock(),
            cancel_reason=cancel_reason,
            timeout=timeout,
            retry_delay=retry_delay,
        )
        if attempt_log is not None:
            if finish.message:
                attempt_log.note(finish.message)
            finish.output_tail = attempt_log.tail()
        return finish


def _context(claim: Claim) -> dict[str, object]:
    """Log context of an attempt (see server_log)."""
    return {
        "dag_id": claim.run.dag_id,
        "run_id": claim.task.run_id,
        "task_id": claim.task.task_id,
        "attempt": claim.attempt,
    }


def _tee(
    first: Callable[[str, str], None], task_id: str, sink: Callable[[str, str, str], None]
) -> Callable[[str, str], None]:
    def on_line(stream: str, line: str) -> None:
        first(stream, line)
        sink(task_id, stream, line)

    return on_line
