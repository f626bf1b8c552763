"""The executor seam: an executor runs one `Assignment` and returns an `Outcome`.

Executors never touch the store or HTTP; they get callbacks for output lines and the process
start, and a `Cancellation` to watch. That is what lets a remote worker reuse them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from nagare.models import Assignment, Outcome

OnLine = Callable[[str, str], None]  # (stream: "stdout" | "stderr", line)
OnStart = Callable[[int, float], None]  # (pid, process create time)


class Cancellation:
    """A cancel flag. The executor running the attempt registers a callback (e.g. signal the
    process group) that runs at once when the flag is set, from whichever thread sets it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []
        self.reason = ""

    def cancel(self, reason: str = "killed") -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            self.reason = reason
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` when cancelled (immediately if that already happened)."""
        with self._lock:
            if not self._set:
                self._callbacks.append(callback)
                return
        callback()

    @property
    def is_set(self) -> bool:
        return self._set


class Executor(Protocol):
    @property
    def executor_type(self) -> str: ...

    def run(
        self,
        assignment: Assignment,
        on_line: OnLine,
        cancel: Cancellation,
        on_start: OnStart | None = None,
    ) -> Outcome: ...


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
