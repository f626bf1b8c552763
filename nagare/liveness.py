"""Whether the background loops are alive: each loop beats a `Heartbeat` once per iteration, and
`assess(beats, now)` decides, as a pure function, whether the process is healthy and which
loops are not (what `/api/health` answers).

A loop is `ok` while it beats within its declared interval plus STALL_GRACE_SECONDS (generous:
a slow but legitimate pass — a big catch-up, a long retention batch — must not make it flap);
`stalled` past that; `failing` while it is in back-off after an exception, or says it cannot do
its work (a dispatcher that cannot record ended attempts), with its last error; `stopped` when
it ended while the process still runs. A loop that has not started (the checkpoint loop before
its first checkpoint is due) is not reported at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

STALL_GRACE_SECONDS = 60.0  # added to a loop's interval before it counts as stalled
BACKOFF_FIRST_SECONDS = 0.5  # after a loop's exception: 0.5 s, doubling, at most 30 s
BACKOFF_MAX_SECONDS = 30.0
MAX_ERROR_CHARS = 200  # an error in the health answer: one short line, never a traceback


class LoopStatus(StrEnum):
    OK = "ok"
    FAILING = "failing"
    STALLED = "stalled"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Beat:
    """What a loop last said about itself (monotonic seconds)."""

    name: str
    interval: float  # the most time between two beats of a healthy loop
    last: float | None  # the last beat; None: not started
    error: str = ""  # set while failing
    stopped: bool = False


@dataclass(frozen=True)
class LoopHealth:
    status: LoopStatus
    last_progress_seconds: float
    error: str = ""


@dataclass(frozen=True)
class Health:
    ok: bool
    loops: dict[str, LoopHealth]


class Heartbeat:
    """One loop's progress. The loop's thread beats; anyone may read `beat_now()`."""

    def __init__(self, name: str, interval: float) -> None:
        self.name = name
        self.interval = interval
        self._lock = threading.Lock()
        self._last: float | None = None
        self._error = ""
        self._stopped = False

    def started(self) -> None:
        """The loop's thread started (reported from now on; its first beat may take an
        interval)."""
        with self._lock:
            if self._last is None:
                self._last = time.monotonic()

    def beat(self, error: str = "", now: float | None = None) -> None:
        """An iteration completed (`error`: it did, but its work cannot be done)."""
        error = short_error(error) if error else ""  # (a beat per dispatcher turn: no call)
        with self._lock:
            self._last = time.monotonic() if now is None else now
            self._error = error
            self._stopped = False

    def failed(self, error: str) -> None:
        """The loop raised and is in back-off: failing until it beats again."""
        with self._lock:
            self._error = short_error(error) or "failed"
            if self._last is None:
                self._last = time.monotonic()

    def stopped(self) -> None:
        with self._lock:
            self._stopped = True

    def beat_now(self) -> Beat:
        with self._lock:
            return Beat(self.name, self.interval, self._last, self._error, self._stopped)


class Heartbeats:
    """The app's registry: one heartbeat per loop name."""

    def __init__(self) -> None:
        self._beats: dict[str, Heartbeat] = {}
        self._lock = threading.Lock()

    def add(self, heartbeat: Heartbeat) -> Heartbeat:
        with self._lock:
            self._beats[heartbeat.name] = heartbeat
        return heartbeat

    def beats(self) -> list[Beat]:
        with self._lock:
            beats = list(self._beats.values())
        return [b.beat_now() for b in beats]


def assess(beats: Iterable[Beat], now: float) -> Health:
    """Healthy or not at `now` (monotonic seconds), and how each started loop is."""
    loops = {}
    for beat in beats:
        if beat.last is None:
            continue
        age = max(0.0, now - beat.last)
        loops[beat.name] = LoopHealth(_status(beat, age), round(age, 1), beat.error)
    return Health(all(h.status is LoopStatus.OK for h in loops.values()), loops)


def _status(beat: Beat, age: float) -> LoopStatus:
    if beat.stopped:
        return LoopStatus.STOPPED
    if beat.error:
        return LoopStatus.FAILING
    if age > beat.interval + STALL_GRACE_SECONDS:
        return LoopStatus.STALLED
    return LoopStatus.OK


def backoff_seconds(failures: int) -> float:
    """How long a loop waits after its `failures`-th exception in a row (from 1)."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * (1 << max(0, min(failures - 1, 16))))


def short_error(error: str | BaseException) -> str:
    """An error as one short line: `Type: message` for an exception, the text otherwise."""
    if isinstance(error, BaseException):
        message = str(error)
        error = message if _is_ours(error) else f"{type(error).__name__}: {message}"
    line = " ".join(str(error).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def _is_ours(error: BaseException) -> bool:
    """Nagare's own errors (and OSError) already say what failed."""
    return isinstance(error, OSError) or type(error).__module__.startswith("nagare")


class DistinctErrors:
    """Says whether an error is worth logging: each distinct one once, until `clear()` (the
    work succeeded again), so that a loop failing on every turn does not flood the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def first(self, error: str) -> bool:
        if error in self._seen:
            return False
        if len(self._seen) >= 100:
            self._seen.clear()
        self._seen.add(error)
        return True

    def clear(self) -> bool:
        """Forget them; True if there were any (the caller may log a recovery)."""
        had = bool(self._seen)
        self._seen.clear()
        return had
