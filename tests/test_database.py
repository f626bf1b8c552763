"""The SQLite policy: WAL checkpoints off the writer's path, bounded readers, wide transitions
in few statements, task ids that keep index writes close together. (What every store backend
does is the store contract's: tests/test_store_contract.py.)"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import wait_for

from nagare.dagfile import parse_dag
from nagare.engine.new_run import new_instance_id
from nagare.models import TaskStatus, Trigger
from nagare.store import Database, Store
from nagare.store.db import CHECKPOINT_EVERY_COMMITS, DatabaseError
from nagare.store.tasks import TRANSITION_CHUNK


def _rows_in_main_file(path: Path, copy: Path) -> int:
    """Rows of dag_state in the database file alone (what a checkpoint copied out of the WAL)."""
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM dag_state").fetchone()[0])
    except sqlite3.DatabaseError:  # copied in the middle of a checkpoint
        return -1
    finally:
        conn.close()


def test_wal_checkpoints_run_in_the_checkpointer_loop(tmp_path: Path) -> None:
    path = tmp_path / "nagare.db"
    store = Store(str(path))
    store.db.release_free_pages()  # the schema goes into the file
    checkpointer = store.db.checkpointer
    assert checkpointer is not None
    stop = threading.Event()
    loop = threading.Thread(target=checkpointer.run, args=(stop,), name="checkpoint")
    loop.start()  # as app starts it
    for number in range(CHECKPOINT_EVERY_COMMITS - 1):
        with store.db.write() as conn:
            conn.execute(
                "INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES (?, 0, 0)",
                (f"d{number}",),
            )
    # neither the writer nor the loop checkpoints a short WAL: the rows are in the WAL only
    assert _rows_in_main_file(path, tmp_path / "copy.db") == 0
    with store.db.write() as conn:
        conn.execute("INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES ('last', 0, 0)")
    wait_for(
        lambda: _rows_in_main_file(path, tmp_path / "copy.db") == CHECKPOINT_EVERY_COMMITS,
        message="the background checkpoint copied every committed row into the file",
    )
    store.close()  # the loop leaves at once, without waiting for `stop`
    loop.join(5)
    assert not loop.is_alive()


def test_the_checkpointer_loop_is_started_at_the_first_request_only(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "nagare.db"))
    checkpointer = store.db.checkpointer
    assert checkpointer is not None
    starts: list[int] = []
    checkpointer.start_with(lambda: starts.append(1))  # as app does, with its thread
    for number in range(CHECKPOINT_EVERY_COMMITS - 1):
        with store.db.write() as conn:
            conn.execute(
                "INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES (?, 0, 0)",
                (f"d{number}",),
            )
    assert starts == []  # an idle server pays for no thread and no connection
    for number in range(CHECKPOINT_EVERY_COMMITS * 2):
        with store.db.write() as conn:
            conn.execute(
                "INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES (?, 0, 0)",
                (f"e{number}",),
            )
    assert starts == [1]  # started once, at the first checkpoint due
    store.close()


def test_without_the_checkpointer_loop_the_writer_still_works(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "nagare.db"))  # a command-line tool: no loop runs
    for number in range(CHECKPOINT_EVERY_COMMITS * 2):
        with store.db.write() as conn:
            conn.execute(
                "INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES (?, 0, 0)",
                (f"d{number}",),
            )
    assert len(store.dags.states()) == CHECKPOINT_EVERY_COMMITS * 2
    store.close()


def test_readers_are_bounded_and_a_nested_read_reuses_its_connection(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "nagare.db"), readers=2)
    with db.read() as first, db.read() as nested:
        assert nested is first  # the same thread never waits for itself
    holding = threading.Barrier(3)
    release = threading.Event()
    seen: list[object] = []

    def hold() -> None:
        with db.read() as conn:
            seen.append(conn)
            holding.wait()
            release.wait(10)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    holding.wait()  # both readers are lent out
    third: list[object] = []
    waiter = threading.Thread(target=lambda: third.append(db.read().__enter__()))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and third == []  # a third reader waits for one to come back
    release.set()
    waiter.join(5)
    assert third and third[0] in seen  # it got one of the two connections, not a new one
    for thread in holders:
        thread.join(5)
    db.close()


def test_a_wide_transition_takes_one_statement_per_chunk_of_ids(tmp_path: Path) -> None:
    """Queueing a 1,200-wide fan-out: statements of TRANSITION_CHUNK ids (below SQLite's limit
    on parameters), not one per task."""
    store = Store(str(tmp_path / "nagare.db"))
    dag, errors = parse_dag(
        "id: w\ntasks:\n  - id: s\n    command: 'true'\n"
        "  - id: t\n    with_items: [" + ", ".join(map(str, range(1200))) + "]\n"
        "    command: 'true'\n    depends_on: [s]\n"
    )
    assert dag is not None, errors
    run = store.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
    assert run is not None
    ids = [t.id for t in store.tasks.of_run(run.run_id) if t.task_id != "s"]
    assert len(ids) == 1200 > 2 * TRANSITION_CHUNK
    statements: list[str] = []
    with store.db.write() as conn:
        conn.set_trace_callback(statements.append)
    moved = store.tasks.transition(ids, [TaskStatus.PENDING], TaskStatus.QUEUED, 9)
    with store.db.write() as conn:
        conn.set_trace_callback(None)
    assert len(moved) == 1200
    assert sum(s.startswith("UPDATE task_instances") for s in statements) == 3
    store.close()


def test_task_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [new_instance_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in ids)


def test_task_ids_made_in_threads_never_collide() -> None:
    made: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_instance_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(m,)) for m in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for m in made for i in m]
    assert len(set(every)) == len(every)
    assert all(m == sorted(m) for m in made)


def test_closing_never_closes_a_reader_under_a_thread_that_uses_it(tmp_path: Path) -> None:
    """A request still being answered while the server stops keeps its reader until it is
    done; reads that start after the close get a clear DatabaseError, never a crash."""
    db = Database(str(tmp_path / "n.db"), readers=2)
    inside, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def long_read() -> None:
        with db.read() as conn:
            inside.set()
            release.wait(5)
            seen.append(conn.execute("SELECT count(*) FROM runs").fetchone()[0])

    reader = threading.Thread(target=long_read)
    reader.start()
    assert inside.wait(5)
    db.close()
    with pytest.raises(DatabaseError, match="closed"), db.read():
        pass
    release.set()
    reader.join(5)
    assert seen == [0]  # its statement ran on its still-open connection
    with pytest.raises(DatabaseError, match="closed"), db.read():
        pass
