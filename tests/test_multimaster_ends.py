"""Several masters on one database: an expired wait ends once however many masters act on
it."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import StoreFactory

from nagare.dagfile import parse_dag
from nagare.logs import LogFiles
from nagare.models import TaskStatus, Trigger
from nagare.waits import Waits

# ---------------------------------------------------------------- deadlines of waiting steps

GATE = "id: gate\ntasks:\n  - {id: ask, type: approval, timeout_seconds: 1}\n"


def test_two_masters_expiring_one_wait_end_it_once(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """Should two masters both act on an expired approval (two leaders overlapping for a
    moment), one ends it: one outcome, one announcement (so one scheduler pass and one set of
    handlers), one note in its log."""
    first = store_factory()
    second = store_factory.reopen(first)
    dag, errors = parse_dag(GATE)
    assert dag is not None, errors
    run = first.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
    assert run is not None
    logs = LogFiles(str(tmp_path / "logs"))  # a shared logs_dir: both would write here
    announced: list[list[str]] = []
    waits = [
        Waits(s, logs, lambda: 0, lambda e: announced.append([t for _, t, _ in e]))
        for s in (first, second)
    ]
    task = first.tasks.get(run.run_id, "ask")
    assert task is not None
    waits[0].begin([task.id], 0)
    task = first.tasks.by_id(task.id)
    assert task is not None and task.status is TaskStatus.WAITING
    barrier = threading.Barrier(2)

    def expire(w: Waits) -> None:
        barrier.wait()
        w.expire(1_001)

    threads = [threading.Thread(target=expire, args=(w,)) for w in waits]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert announced == [[task.id]]
    ended = first.tasks.by_id(task.id)
    assert ended is not None and ended.status is TaskStatus.FAILED and ended.timed_out
    (attempt,) = first.tasks.attempts(task.id)
    assert attempt.status is TaskStatus.FAILED
    text = (tmp_path / "logs" / run.run_id / f"{task.id}.1.log").read_text()
    assert text.count("timed out after 1 s waiting") == 1, text
