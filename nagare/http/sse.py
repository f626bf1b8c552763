"""Task logs over HTTP: plain text (whole, `?tail=N`) or a Server-Sent-Event stream that replays
the history then follows live lines (`id:` = line number, resume with `Last-Event-ID`),
sends `: ping` keep-alives and ends with `event: end` carrying the task status.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nagare.logs import LogFiles, LogFollower
from nagare.models import TaskInstance, TaskStatus

Write = Callable[[bytes], None]
WAITING = (TaskStatus.PENDING, TaskStatus.QUEUED)


@dataclass
class LogStream:
    logs: LogFiles
    task: TaskInstance
    attempt: int | None  # None: follow the latest attempt
    start_line: int
    load_task: Callable[[], TaskInstance | None]
    ping_seconds: float
    stopping: threading.Event

    def __call__(self, write: Write) -> None:
        write(b"retry: 1000\n\n")
        task = self._await_start(write)
        if task is None:
            return
        attempt = self.attempt or task.attempt
        follower = LogFollower(self.logs.path(task.run_id, task.id, attempt), self.start_line)
        key = self.logs.key(task.id, attempt)
        try:
            status = self._follow(write, follower, key, attempt)
            for number, text in follower.read_new():
                write(_event(number, text))
            write(f"event: end\ndata: {json.dumps({'status': status})}\n\n".encode())
        finally:
            follower.close()

    def _await_start(self, write: Write) -> TaskInstance | None:
        """A task that has not started yet: keep the stream open until it does."""
        task: TaskInstance | None = self.task
        while (
            task is not None
            and self.attempt is None
            and task.status in WAITING
            and not self.stopping.is_set()
        ):
            self.stopping.wait(min(self.ping_seconds, 0.5))
            write(b": waiting\n\n")
            task = self.load_task()
        if self.stopping.is_set() or task is None:
            return None
        return task

    def _follow(self, write: Write, follower: LogFollower, key: str, attempt: int) -> str:
        while True:
            version = self.logs.hub.version(key)
            lines = follower.read_new()
            for number, text in lines:
                write(_event(number, text))
            if not lines:
                finished = self._finished(attempt)
                if finished is not None:
                    return finished
                if self.stopping.is_set():
                    return "server_stopping"
                if self.logs.hub.wait(key, version, self.ping_seconds) == version:
                    write(b": ping\n\n")

    def _finished(self, attempt: int) -> str | None:
        """The task status once the followed attempt is over, else None."""
        task = self.load_task()
        if task is None:
            return "deleted"
        if task.attempt > attempt or task.status is not TaskStatus.RUNNING:
            return str(task.status)
        return None


def _event(number: int, text: str) -> bytes:
    lines = text.split("\r")  # a data field cannot hold a bare CR
    body = "".join(f"data: {part}\n" for part in lines)
    return f"id: {number}\n{body}\n".encode()
