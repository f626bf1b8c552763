"""A database made by the previous release upgrades in place with its history intact.

`fixtures/release15/` holds what that release wrote (made by its `make.py` with the release's
own code): an SQL dump of its database (with its `PRAGMA user_version`), its log folder, and
the API answers it gave about its runs. The newest code opens the database, migrates it to the
last version (`len(MIGRATIONS)`, whatever later features add), and serves the same runs, tasks,
attempts and logs: every field the old release answered keeps its value (new fields may be
added). The upgraded history then keeps working: a run-level retry of an old failed run."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from conftest import Nagare

from nagare.store.schema import MIGRATIONS

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "release15"


def assert_kept(old: Any, new: Any, where: str = "") -> None:
    """Every value of `old` is in `new` unchanged (objects may have gained keys)."""
    if isinstance(old, dict):
        assert isinstance(new, dict), (where, new)
        for key, value in old.items():
            assert key in new, f"{where}.{key} is gone"
            assert_kept(value, new[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), (where, old, new)
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            assert_kept(a, b, f"{where}[{index}]")
    else:
        assert old == new, (where, old, new)


def plant_release_database(root: Path) -> int:
    """The previous release's database and logs under `root`; returns its schema version."""
    sql = (FIXTURE / "nagare.sql").read_text()
    match = re.search(r"PRAGMA user_version=(\d+);", sql)
    assert match is not None
    conn = sqlite3.connect(root / "nagare.db")
    try:
        conn.executescript(sql)
    finally:
        conn.close()
    shutil.copytree(FIXTURE / "logs", root / "logs")
    return int(match[1])


def test_a_database_of_the_previous_release_upgrades_in_place_with_its_history_intact(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    old_version = plant_release_database(tmp_path)
    assert 0 < old_version <= len(MIGRATIONS)
    answers = json.loads((FIXTURE / "answers.json").read_text())
    nagare = nagare_factory(retention_days=0)  # its runs are old: keep them
    assert nagare.app.store.db.schema_version == len(MIGRATIONS)

    assert_kept(answers["runs"], nagare.get("/api/runs"), "runs")
    for key, tasks in answers["tasks"].items():
        if key.endswith("/attempts"):
            run_id, task_id, _ = key.split("/")
            path = f"/api/runs/{run_id}/tasks/{quote(task_id, safe='')}/attempts"
        else:
            path = f"/api/runs/{key}/tasks"
        assert_kept(tasks, nagare.get(path), key)
    for key, text in answers["logs"].items():
        run_id, task_id, attempt = key.split("/")
        assert nagare.log(run_id, task_id, int(attempt)) == text, key

    # the history keeps working with the new code: the old failed run is retried in place
    flaky = next(r["run_id"] for r in answers["runs"]["data"] if r["dag_id"] == "flaky")
    assert nagare.call("POST", f"/api/runs/{flaky}/retry").status == 200
    assert nagare.wait_run(flaky)["status"] == "failed"
    tries = nagare.get(f"/api/runs/{flaky}/tasks/boom/attempts")
    assert [a["attempt"] for a in tries] == [1, 2, 3, 4]
    assert nagare.log(flaky, "boom", 1) == answers["logs"][f"{flaky}/boom/1"]
    assert "try 3" in nagare.log(flaky, "boom", 3)


def test_the_fixture_is_a_database_of_an_earlier_schema_or_this_one() -> None:
    """The dump is text (no *.db committed) and its version is one this code can migrate."""
    sql = (FIXTURE / "nagare.sql").read_text()
    assert sql.startswith("BEGIN TRANSACTION;")
    assert "CREATE TABLE runs" in sql and 'INSERT INTO "task_attempts"' in sql
