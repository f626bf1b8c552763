"""Task logs over HTTP: plain text (whole, `?tail=N`) or a Server-Sent-Event stream that replays
the history then follows live lines (`id:` = line number, resume with `Last-Event-ID`),
sends `: ping` keep-alives and ends with `event: end` carrying the task status.

Without `?attempt` the stream follows the task across retries: when an attempt ends and the task
will run again, `event: attempt` announces the next attempt number and its lines follow
(numbered from 1 again); `event: end` comes only once the task is finished.
With `timestamps`, each line's data starts with its time and stream (logs.stamped).
On a database several masters share, lines written on another master come from the database:
the follower looks at least every SHARED_POLL_SECONDS (and at once when that master's wake-up
says the log grew), and at the attempt's end waits (at most DRAIN_SECONDS) for the writer's
mark that its log is closed, so the stream holds every line before `event: end`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from nagare.logs import DRAIN_SECONDS, SHARED_POLL_SECONDS, LogFiles, LogFollower, Stamp, stamped
from nagare.models import TaskInstance, TaskStatus

Write = Callable[[bytes], None]
WAITING = (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.UP_FOR_RETRY)
_AGAIN = ("up_for_retry", "queued", "running", "waiting")  # following the latest: a retry comes
# an attempt is open: running in a slot, or a step waiting in the engine (approval, event, child)
OPEN = (TaskStatus.RUNNING, TaskStatus.WAITING)


@dataclass
class LogStream:
    logs: LogFiles
    task: TaskInstance
    attempt: int | None  # None: follow the latest attempt
    start_line: int
    timestamps: bool
    load_task: Callable[[], TaskInstance | None]
    ping_seconds: float
    stopping: threading.Event
    # whether the caller may still read it (signed out, key revoked, role changed: the stream
    # closes, and the browser's reconnection meets the 401 or 403); asked once a ping interval
    admitted: Callable[[], bool] = lambda: True
    _next_check: float = 0.0

    def __call__(self, write: Write) -> None:
        try:
            self._stream(write)
        except _Refused:
            return

    def _check(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.ping_seconds
        if not self.admitted():
            raise _Refused

    def _stream(self, write: Write) -> None:
        write(b"retry: 1000\n\n")
        start = self.start_line
        task: TaskInstance | None = self.task
        done = 0  # the last attempt streamed to its end
        while True:
            task = self._await_start(write, task, done)
            if task is None:
                return
            attempt = self.attempt or task.attempt
            status = self._stream_attempt(write, task, attempt, start)
            if self.attempt is not None or status not in _AGAIN:
                write(f"event: end\ndata: {json.dumps({'status': status})}\n\n".encode())
                return
            write(f"event: attempt\ndata: {json.dumps({'attempt': attempt + 1})}\n\n".encode())
            start, done, task = 0, attempt, self.load_task()

    def _stream_attempt(self, write: Write, task: TaskInstance, attempt: int, start: int) -> str:
        follower = self.logs.follower(task.run_id, task.id, attempt, start, self.timestamps)
        try:
            status = self._follow(write, follower, self.logs.key(task.id, attempt), attempt)
            self._drain(write, follower, waits=attempt > 0)  # (0: it never ran, no log)
            return status
        finally:
            follower.close()

    def _drain(self, write: Write, follower: LogFollower, waits: bool) -> None:
        """The attempt is over: its last lines (from another master, once it shipped them)."""
        deadline = time.monotonic() + (DRAIN_SECONDS if waits else 0.0)
        while True:
            for number, text, stamp in follower.read_new():
                write(_event(number, text, stamp))
            if follower.complete or time.monotonic() >= deadline or self.stopping.is_set():
                return
            self.stopping.wait(0.05)

    def _await_start(
        self, write: Write, task: TaskInstance | None, done: int
    ) -> TaskInstance | None:
        """A task that has not started (again) yet: keep the stream open until it does."""
        while (
            task is not None
            and self.attempt is None
            and self._waiting(task, done)
            and not self.stopping.is_set()
        ):
            self.stopping.wait(min(self.ping_seconds, 0.5))
            self._check()
            write(b": waiting\n\n")
            task = self.load_task()
        if self.stopping.is_set() or task is None:
            return None
        return task

    def _waiting(self, task: TaskInstance, done: int) -> bool:
        if task.status in WAITING:
            return True
        return task.status in OPEN and task.attempt <= done

    def _follow(self, write: Write, follower: LogFollower, key: str, attempt: int) -> str:
        # a log that may grow on another master is looked at every SHARED_POLL_SECONDS
        wait = min(self.ping_seconds, SHARED_POLL_SECONDS) if follower.shared else self.ping_seconds
        quiet_since = time.monotonic()
        while True:
            self._check()
            version = self.logs.hub.version(key)
            lines = follower.read_new()
            for number, text, stamp in lines:
                write(_event(number, text, stamp))
            if lines:
                quiet_since = time.monotonic()
                continue
            finished = self._finished(attempt)
            if finished is not None:
                return finished
            if self.stopping.is_set():
                return "server_stopping"
            self.logs.hub.wait(key, version, wait)
            if time.monotonic() - quiet_since >= self.ping_seconds:
                write(b": ping\n\n")
                quiet_since = time.monotonic()

    def _finished(self, attempt: int) -> str | None:
        """The task status once the followed attempt is over, else None."""
        task = self.load_task()
        if task is None:
            return "deleted"
        if task.attempt > attempt or task.status not in OPEN:
            return str(task.status)
        return None


class _Refused(Exception):
    """The caller may no longer read the stream."""


def _event(number: int, text: str, stamp: Stamp | None) -> bytes:
    if stamp is not None:
        text = stamped(text, stamp)
    lines = text.split("\r")  # a data field cannot hold a bare CR
    body = "".join(f"data: {part}\n" for part in lines)
    return f"id: {number}\n{body}\n".encode()
