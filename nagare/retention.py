"""Retention: finished runs older than `retention_days` are deleted with their task instances,
attempts (metrics) and log folders. A run that is not finished is never deleted.

`RetentionSweep` is the server's background loop: each pass deletes at most one batch of the
oldest such runs (an index walk, never a full scan), then hands the freed pages back to the file
system (incremental vacuum). When a pass found a full batch it comes back after a second,
otherwise after `interval` seconds. `cleanup` does the same to completion for `nagare cleanup`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from nagare.clock import now_ms
from nagare.liveness import Heartbeat
from nagare.logs import LogFiles
from nagare.store import OldRun

log = logging.getLogger("nagare.retention")
DAY_MS = 86_400_000
SWEEP_SECONDS = 600.0  # between passes when there is nothing left to delete
BACKLOG_SECONDS = 1.0  # between passes while old runs remain
BEAT_SECONDS = 5.0  # while waiting for the next sweep, the loop beats this often
FIRST_PASS_SECONDS = 30.0  # after start: leave the start-up to the scheduler and pools
BATCH_RUNS = 100


@dataclass
class Removed:
    """What one pass (or a whole cleanup) deleted, or would delete."""

    runs: int = 0
    tasks: int = 0
    attempts: int = 0

    def add(self, runs: list[OldRun]) -> None:
        self.runs += len(runs)
        self.tasks += sum(r.tasks for r in runs)
        self.attempts += sum(r.attempts for r in runs)


def cutoff_for(days: float, now: int) -> int:
    return now - int(days * DAY_MS)


if TYPE_CHECKING:  # structural types for mypy, never needed at run time

    class _RetentionRetention(Protocol):
        def delete_old_runs(self, cutoff: int, limit: int) -> list[OldRun]: ...

        def old_runs(
            self, cutoff: int, limit: int, after: tuple[int, str] | None = None
        ) -> list[OldRun]: ...

        def release_free_pages(self) -> None: ...

    class RetentionStore(Protocol):
        """The parts of the store the retention sweep reads and writes, and what of them."""

        @property
        def retention(self) -> _RetentionRetention: ...


class RetentionSweep:
    def __init__(
        self,
        store: RetentionStore,
        logs: LogFiles,
        retention_days: int,
        clock: Callable[[], int] = now_ms,
        interval: float = SWEEP_SECONDS,
        batch: int = BATCH_RUNS,
        first_pass: float = FIRST_PASS_SECONDS,
    ) -> None:
        self.store = store
        self.logs = logs
        self.retention_days = retention_days
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.first_pass = first_pass
        self.liveness = Heartbeat("retention", BEAT_SECONDS)

    def run(self, stop: threading.Event) -> None:
        """A sweep after `first_pass`, then every `interval` (while a backlog remains, every
        BACKLOG_SECONDS); it beats at least every BEAT_SECONDS meanwhile (an exception ends
        it: app logs it, backs off and runs it again)."""
        wait = self.first_pass
        while self._wait(stop, wait):
            removed = self.sweep_once(self.clock())
            self.liveness.beat()
            wait = BACKLOG_SECONDS if removed.runs >= self.batch else self.interval

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait `seconds`, beating on the way; False once `stop` is set."""
        due = time.monotonic() + seconds
        while not stop.wait(max(0.0, min(BEAT_SECONDS, due - time.monotonic()))):
            self.liveness.beat()
            if time.monotonic() >= due:
                return True
        return False

    def sweep_once(self, now: int) -> Removed:
        """One bounded pass: delete at most `batch` runs finished before the cutoff."""
        if self.retention_days <= 0:
            return Removed()
        cutoff = cutoff_for(self.retention_days, now)
        removed = Removed()
        removed.add(delete_batch(self.store, self.logs, cutoff, self.batch))
        if removed.runs:
            log.info(
                "retention: deleted %d runs older than %d days (%d task instances, %d attempts)",
                removed.runs,
                self.retention_days,
                removed.tasks,
                removed.attempts,
            )
        return removed


def delete_batch(store: RetentionStore, logs: LogFiles, cutoff: int, limit: int) -> list[OldRun]:
    """Delete up to `limit` of the oldest finished runs created before `cutoff`, their rows and
    their log folders, then release the freed database pages. Returns the deleted runs."""
    runs = store.retention.delete_old_runs(cutoff, limit)
    for run in runs:
        logs.remove_run(run.run_id)
    if runs:
        store.retention.release_free_pages()
    return runs


def cleanup(
    store: RetentionStore,
    logs: LogFiles,
    cutoff: int,
    dry_run: bool,
    on_run: Callable[[OldRun], None] = lambda run: None,
    batch: int = 500,
) -> Removed:
    """Everything the sweep would delete before `cutoff`, to completion; `on_run` sees each run
    once it is deleted (with `dry_run`: each run that would be, and nothing is deleted)."""
    removed = Removed()
    after: tuple[int, str] | None = None
    while True:
        if dry_run:
            runs = store.retention.old_runs(cutoff, batch, after)
            if runs:
                after = (runs[-1].created_at, runs[-1].run_id)
        else:
            runs = delete_batch(store, logs, cutoff, batch)
        for run in runs:
            on_run(run)
        removed.add(runs)
        if len(runs) < batch:
            return removed
