"""Retention: finished runs older than `retention_days` are deleted with their task instances,
attempts (metrics) and log folders, and so are the audit log's entries older than that. A run
that is not finished is never deleted.

`RetentionSweep` is the server's background loop: each pass deletes at most one batch of the
oldest such runs (an index walk, never a full scan), then hands the freed pages back to the file
system (incremental vacuum), and at most one batch of the oldest audit entries. When a pass
found a full batch (of either) it comes back after a second,
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
FOLDER_QUIET_SECONDS = 3600.0  # a log folder untouched this long may be pruned (not leading)
FIRST_PASS_SECONDS = 30.0  # after start: leave the start-up to the scheduler and pools
BATCH_RUNS = 100
BATCH_AUDIT = 1000  # audit entries per pass: small rows, one indexed range delete


@dataclass
class Removed:
    """What one pass (or a whole cleanup) deleted, or would delete."""

    runs: int = 0
    tasks: int = 0
    attempts: int = 0
    audit: int = 0  # audit log entries

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

        def existing(self, run_ids: list[str]) -> set[str]: ...

    class _RetentionAudit(Protocol):
        def delete_before(self, cutoff: int, limit: int) -> int: ...

        def count_before(self, cutoff: int) -> int: ...

    class RetentionStore(Protocol):
        """The parts of the store the retention sweep reads and writes, and what of them."""

        @property
        def retention(self) -> _RetentionRetention: ...

        @property
        def audit(self) -> _RetentionAudit: ...


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
        audit_batch: int = BATCH_AUDIT,
    ) -> None:
        self.store = store
        self.logs = logs
        self.retention_days = retention_days
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.first_pass = first_pass
        self.audit_batch = audit_batch
        self.liveness = Heartbeat("retention", BEAT_SECONDS)
        self.leads: Callable[[], bool] = lambda: True  # only the leading master sweeps

    def run(self, stop: threading.Event) -> None:
        """A sweep after `first_pass`, then every `interval` (while a backlog remains, every
        BACKLOG_SECONDS); it beats at least every BEAT_SECONDS meanwhile (an exception ends
        it: app logs it, backs off and runs it again)."""
        wait = self.first_pass
        while self._wait(stop, wait):
            removed = self.sweep_once(self.clock())
            self.liveness.beat()
            backlog = removed.runs >= self.batch or removed.audit >= self.audit_batch
            wait = BACKLOG_SECONDS if backlog else self.interval

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        """Wait `seconds`, beating on the way; False once `stop` is set."""
        due = time.monotonic() + seconds
        while not stop.wait(max(0.0, min(BEAT_SECONDS, due - time.monotonic()))):
            self.liveness.beat()
            if time.monotonic() >= due:
                return True
        return False

    def sweep_once(self, now: int) -> Removed:
        """One bounded pass: delete at most `batch` runs finished before the cutoff and at most
        `audit_batch` audit entries recorded before it."""
        if self.retention_days <= 0:
            return Removed()
        if not self.leads():
            self.prune_folders(now)
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
        removed.audit = delete_audit_batch(self.store, cutoff, self.audit_batch)
        if removed.audit:
            log.info(
                "retention: deleted %d audit entries older than %d days",
                removed.audit,
                self.retention_days,
            )
        return removed

    def prune_folders(self, now: int) -> int:
        """(a master that does not lead) The leader deletes old runs with its own log folders;
        this master removes its folders of runs that are gone, left untouched for an hour
        (a folder whose run row is not written yet is never that old). Returns how many."""
        quiet = now / 1000 - FOLDER_QUIET_SECONDS
        folders = self.logs.run_folders(older_than=quiet)
        if not folders:
            return 0
        gone = set(folders) - self.store.retention.existing(folders)
        for run_id in sorted(gone):
            self.logs.remove_run(run_id)
        if gone:
            log.info("retention: removed %d log folders of runs deleted by the leader", len(gone))
        return len(gone)


def delete_batch(store: RetentionStore, logs: LogFiles, cutoff: int, limit: int) -> list[OldRun]:
    """Delete up to `limit` of the oldest finished runs created before `cutoff`, their rows and
    their log folders, then release the freed database pages. Returns the deleted runs."""
    runs = store.retention.delete_old_runs(cutoff, limit)
    for run in runs:
        logs.remove_run(run.run_id)
    if runs:
        store.retention.release_free_pages()
    return runs


def delete_audit_batch(store: RetentionStore, cutoff: int, limit: int) -> int:
    """Delete up to `limit` of the oldest audit entries recorded before `cutoff`, then release
    the freed database pages. Returns how many."""
    deleted = store.audit.delete_before(cutoff, limit)
    if deleted:
        store.retention.release_free_pages()
    return deleted


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
    removed = _cleanup_runs(store, logs, cutoff, dry_run, on_run, batch)
    removed.audit = _cleanup_audit(store, cutoff, dry_run, batch)
    return removed


def _cleanup_audit(store: RetentionStore, cutoff: int, dry_run: bool, batch: int) -> int:
    if dry_run:
        return store.audit.count_before(cutoff)
    deleted = 0
    while True:
        count = delete_audit_batch(store, cutoff, batch)
        deleted += count
        if count < batch:
            return deleted


def _cleanup_runs(
    store: RetentionStore,
    logs: LogFiles,
    cutoff: int,
    dry_run: bool,
    on_run: Callable[[OldRun], None],
    batch: int,
) -> Removed:
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
