"""The poll(2) loop of one thread: readable file descriptors, timers and calls posted from other
threads, all run in the thread that owns the loop.

The server's dispatcher thread owns one `Reactor`: the local executor registers each running
task's stdout, stderr and pidfd here and keeps its timers (timeout, kill escalation, memory
samples, output drain) here, and every executor reports an attempt's end through `post`, so an
attempt's state is only ever touched by that one thread. Other threads may only `post` and
`wake`: a kill is posted to the thread that owns the process, never signalled from the killing
thread.

poll(2) rather than epoll: registering and dropping an attempt's three descriptors costs no
system call (epoll would cost six `epoll_ctl` calls per attempt), and a few dozen descriptors per
poll are cheap.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import select
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("nagare.reactor")


class Timer:
    """A call the reactor makes at a monotonic time, unless cancelled first."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    """Readable descriptors, timers and posted calls for the one thread that calls `run_once`.

    `add_reader`, `remove_reader` and `call_at` belong to that thread; `post` and `wake` may be
    called from any thread."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._readers: dict[int, Callable[[int], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._posted: deque[Callable[[], None]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll.register(self._wake_fd, select.POLLIN)

    # ------------------------------------------------------------ any thread

    def post(self, callback: Callable[[], None]) -> None:
        """Run `callback` in the owning thread at its next turn (at once if it is waiting)."""
        self._posted.append(callback)
        self.wake()

    def wake(self) -> None:
        """Interrupt a `run_once` that is waiting."""
        with contextlib.suppress(OSError, ValueError):
            os.eventfd_write(self._wake_fd, 1)

    # ------------------------------------------------------------ the owning thread

    def add_reader(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call `callback(fd)` whenever `fd` is readable or hung up."""
        self._poll.register(fd, select.POLLIN)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call `callback` once `time.monotonic()` reaches `when`."""
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + seconds, callback)

    @property
    def idle(self) -> bool:
        """Nothing registered and nothing due: no descriptor, timer or posted call."""
        return not self._readers and not self._posted and not self._live_timers()

    def _live_timers(self) -> bool:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return bool(self._timers)

    def run_once(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: until something happens), then run the callbacks
        of readable descriptors, due timers and posted calls."""
        for fd, _ in self._poll.poll(self._wait_ms(timeout)):  # any event (data, hang-up): read
            if fd == self._wake_fd:
                with contextlib.suppress(OSError):
                    os.eventfd_read(self._wake_fd)
                continue
            callback = self._readers.get(fd)
            if callback is not None:
                _call(callback, fd)
        self._run_due_timers()
        self._run_posted()

    def _wait_ms(self, timeout: float | None) -> int | None:
        if self._posted:
            return 0
        wait = math.inf if timeout is None else timeout
        if self._live_timers():
            wait = min(wait, self._timers[0][0] - time.monotonic())
        return math.ceil(max(0.0, wait) * 1000) if wait < math.inf else None

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                _call(timer.callback)

    def _run_posted(self) -> None:
        for _ in range(len(self._posted)):  # calls posted meanwhile wait for the next turn
            _call(self._posted.popleft())

    def close(self) -> None:
        for fd in list(self._readers):
            self.remove_reader(fd)
        self._timers.clear()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1


def _call(callback: Callable[..., None], *args: object) -> None:
    """One callback's failure is logged and spoils no other (nor the loop)."""
    try:
        callback(*args)
    except Exception:
        log.exception("a callback of the task loop failed")
