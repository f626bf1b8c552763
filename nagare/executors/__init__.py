"""The executor seam: every way Nagare runs an attempt (a local process, a container; the step
types to come) implements `Executor`.

`start(assignment, listener)` begins one attempt and returns an `AttemptHandle` at once; the
attempt reports through its `AttemptListener`: `started` (a process id, when there is one),
`line` for each line of output, and `ended` exactly once with the `Outcome` (exit code, timed
out, cancelled, error, metrics). `handle.cancel(reason)` may be called from any thread, any time
(after the end it does nothing).

Threads: an executor belongs to the thread that owns its `Reactor` (the server's dispatcher, a
worker's task loop). `start` is called in that thread and `ended` always arrives in it, so the
caller's bookkeeping of running attempts needs no lock; `line` arrives in whatever thread reads
the output (the owning thread for local processes, an attempt's own thread for containers).

Executors never touch the store or HTTP: they get an assignment and a listener and report an
outcome. That is what lets a remote worker reuse them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from nagare.executors.reactor import Reactor
from nagare.models import Assignment, Outcome

OnLine = Callable[[str, str], None]  # (stream: "stdout" | "stderr" | "nagare", line)


class AttemptListener(Protocol):
    def line(self, stream: str, text: str) -> None: ...

    def started(self, pid: int, start_time: float) -> None:
        """A process started: its pid and its start time in boot-clock ticks (see procfs)."""

    def ended(self, outcome: Outcome) -> None: ...


class AttemptHandle(Protocol):
    def cancel(self, reason: str = "killed") -> None: ...


class Executor(Protocol):
    @property
    def executor_type(self) -> str: ...

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle: ...


class _NotStarted:
    """The handle of an attempt that could not start: nothing to cancel."""

    def cancel(self, reason: str = "killed") -> None:
        return None


def not_started(reactor: Reactor, listener: AttemptListener, outcome: Outcome) -> AttemptHandle:
    """An attempt that ended before it started: `ended` is still reported by the owning thread
    at its next turn (never from inside `start`)."""
    reactor.post(lambda: listener.ended(outcome))
    return _NotStarted()


class Unavailable:
    """The executor of a step type this process cannot run: each attempt fails at once, saying
    so."""

    def __init__(self, reactor: Reactor, step_type: str) -> None:
        self.reactor = reactor
        self.step_type = step_type

    @property
    def executor_type(self) -> str:
        return self.step_type

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        message = f"step type '{self.step_type}' is not supported by this Nagare"
        return not_started(self.reactor, listener, Outcome(exit_code=None, error=message))


class LineSplitter:
    """Turns raw byte chunks into lines; a line longer than `max_bytes` is cut and marked, and
    the rest of it is skipped, so memory stays bounded for any output."""

    def __init__(self, stream: str, on_line: OnLine, max_bytes: int) -> None:
        self.stream = stream
        self.on_line = on_line
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._skipped = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                self._add(chunk[start:])
                return
            self._add(chunk[start:newline])
            self._emit()
            start = newline + 1

    def _add(self, part: bytes) -> None:
        room = self.max_bytes - len(self._buffer)
        if len(part) <= room:
            self._buffer += part
        else:
            self._buffer += part[: max(room, 0)]
            self._skipped += len(part) - max(room, 0)

    def _emit(self) -> None:
        text = self._buffer.decode("utf-8", errors="replace").rstrip("\r")
        if self._skipped:
            text += f" … [line truncated: {self._skipped} more bytes]"
        self._buffer.clear()
        self._skipped = 0
        self.on_line(self.stream, text)

    def close(self) -> None:
        if self._buffer or self._skipped:
            self._emit()
