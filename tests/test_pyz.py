"""Ship what you ran: build nagare.pyz and use it as a user would."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, http, pyz_env, serve_pyz, wait_for

pytestmark = pytest.mark.slow


def test_built_pyz_serves_and_runs_the_hello_dag(built_pyz: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "dags", tmp_path / "dags")
    with serve_pyz(built_pyz, tmp_path) as url:
        assert (tmp_path / "nagare.db").exists()
        assert http("GET", url + "/").status == 200
        dags = {d["dag_id"] for d in http("GET", url + "/api/dags").json}
        assert {"hello_world", "map_reduce", "env_test"} <= dags
        run_id = http("POST", url + "/api/dags/hello_world/runs").json["run_id"]
        run = wait_for(lambda: _finished(url, run_id), 20, message="the hello run")
        assert run["status"] == "success"
        log = http("GET", f"{url}/api/runs/{run_id}/tasks/t2/logs").text
        assert log == "Step 2 complete\n"


def test_pyz_exec_and_validate(built_pyz: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "dags", tmp_path / "dags")
    env = pyz_env(tmp_path)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(built_pyz), "exec", "dags/map_reduce.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "[process_file[2]] processing c.csv" in result.stdout
    assert time.monotonic() - started < 30
    result = subprocess.run(
        [sys.executable, str(built_pyz), "validate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _finished(url: str, run_id: str) -> dict | None:  # type: ignore[type-arg]
    run = http("GET", f"{url}/api/runs/{run_id}").json
    return run if run["status"] in ("success", "failed", "cancelled") else None
