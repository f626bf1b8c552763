"""The SQLite policy: WAL checkpoints off the writer's path, task ids that keep index writes
close together."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

from conftest import wait_for

from nagare.planning import new_instance_id
from nagare.store import Store
from nagare.store.db import CHECKPOINT_EVERY_COMMITS


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


def test_wal_checkpoints_run_in_a_thread_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "nagare.db"
    store = Store(str(path))
    store.db.release_free_pages()  # the schema goes into the file
    for number in range(CHECKPOINT_EVERY_COMMITS - 1):
        with store.db.write() as conn:
            conn.execute(
                "INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES (?, 0, 0)",
                (f"d{number}",),
            )
    # the writer itself does not checkpoint a short WAL: the rows are in the WAL only
    assert _rows_in_main_file(path, tmp_path / "copy.db") == 0
    assert "checkpoint" not in {t.name for t in threading.enumerate()}
    with store.db.write() as conn:
        conn.execute("INSERT INTO dag_state(dag_id, watermark, updated_at) VALUES ('last', 0, 0)")
    assert "checkpoint" in {t.name for t in threading.enumerate()}
    wait_for(
        lambda: _rows_in_main_file(path, tmp_path / "copy.db") == CHECKPOINT_EVERY_COMMITS,
        message="the background checkpoint copied every committed row into the file",
    )
    store.close()
    assert "checkpoint" not in {t.name for t in threading.enumerate()}


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
