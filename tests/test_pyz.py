"""Ship what you ran: build nagare.pyz and use it as a user would."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, http, wait_for
from test_restart import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pyz") / "nagare.pyz"
    result = subprocess.run(
        [sys.executable, str(ROOT / "build_pyz.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return output


def test_built_pyz_serves_and_runs_the_hello_dag(pyz: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "dags", tmp_path / "dags")
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NAGARE_CACHE_DIR": str(tmp_path / "c")}
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(pyz), "--port", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 20, message="nagare.pyz to answer /api/health")
        assert (tmp_path / "nagare.db").exists()
        assert http("GET", url + "/").status == 200
        dags = {d["dag_id"] for d in http("GET", url + "/api/dags").json}
        assert {"hello_world", "map_reduce", "env_test"} <= dags
        run_id = http("POST", url + "/api/dags/hello_world/runs").json["run_id"]
        run = wait_for(lambda: _finished(url, run_id), 20, message="the hello run")
        assert run["status"] == "success"
        log = http("GET", f"{url}/api/runs/{run_id}/tasks/t2/logs").text
        assert log == "Step 2 complete\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_pyz_exec_and_validate(pyz: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "dags", tmp_path / "dags")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NAGARE_CACHE_DIR": str(tmp_path / "c")}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(pyz), "exec", "dags/map_reduce.yaml"],
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
        [sys.executable, str(pyz), "validate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _up(url: str) -> bool:
    try:
        return http("GET", url + "/api/health", timeout=1).status == 200
    except OSError:
        return False


def _finished(url: str, run_id: str) -> dict | None:  # type: ignore[type-arg]
    run = http("GET", f"{url}/api/runs/{run_id}").json
    return run if run["status"] in ("success", "failed", "cancelled") else None
