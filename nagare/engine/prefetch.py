"""A remote worker's prefetch: while its tasks are short, it takes a few more than it has slots
for, so that a freed slot starts the next task at once instead of after a round trip to the
master; a task that then waits too long for a slot goes back to the queue for any worker.

Pure: times are the worker's monotonic seconds, passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

SHORT_TASK_SECONDS = 0.5  # tasks this short gain from prefetch (a round trip is milliseconds)
RECENT_TASKS = 8  # the worker judges by its last tasks' run times
WAIT_LIMIT_SECONDS = 1.0  # a prefetched task not started by then is handed back


def prefetch_now(
    limit: int, recent: Sequence[float], running_since: Sequence[float], now: float
) -> int:
    """How many tasks beyond its slots the worker asks for now: `limit` when its last
    RECENT_TASKS tasks (`recent`: their run times, the last RECENT_TASKS at most) each ran under
    SHORT_TASK_SECONDS and no task it runs has run longer; else none (a long task would keep a
    prefetched one waiting while another worker is free)."""
    if limit <= 0 or len(recent) < RECENT_TASKS:
        return 0
    if max(recent) >= SHORT_TASK_SECONDS:
        return 0
    if any(now - since >= SHORT_TASK_SECONDS for since in running_since):
        return 0
    return limit


def overdue(waiting_since: Sequence[float], now: float) -> list[int]:
    """The positions of the waiting tasks that waited WAIT_LIMIT_SECONDS or longer for a slot:
    they go back to the queue, unstarted, without spending a retry."""
    return [i for i, since in enumerate(waiting_since) if now - since >= WAIT_LIMIT_SECONDS]
