"""Structured server logging: `--log-format json` makes every stderr line a JSON object, and
lines about a run or a task carry its run_id / task_id (text lines show them as key=value)."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import http, pythonpath_env, wait_for

from nagare.config import load_config
from nagare.errors import ConfigError
from nagare.server_log import JsonFormatter, TextFormatter

DAG = """
id: logged
tasks:
  - id: first
    command: "echo one"
  - id: second
    command: "exit 4"
    depends_on: [first]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_server(root: Path, *flags: str) -> tuple[str, str]:
    """Start `python -m nagare` with `flags`, run the DAG once, stop; (run id, stderr)."""
    (root / "dags").mkdir()
    (root / "dags" / "logged.yaml").write_text(textwrap.dedent(DAG))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nagare", "--port", f"127.0.0.1:{port}", "--db", "n.db", *flags],
        cwd=root,
        env=pythonpath_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _healthy(url), 15, message="the server to start")
        wait_for(lambda: http("GET", url + "/api/dags/logged").status == 200, 10)
        run_id = http("POST", url + "/api/dags/logged/runs").json["run_id"]
        wait_for(
            lambda: http("GET", url + f"/api/runs/{run_id}").json["status"] == "failed",
            15,
            message="the run to fail",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    return run_id, stderr


def _healthy(url: str) -> bool:
    try:
        return http("GET", url + "/api/health", timeout=1).status == 200
    except OSError:
        return False


def test_json_log_lines_parse_and_carry_run_and_task_ids(tmp_path: Path) -> None:
    run_id, stderr = run_server(tmp_path, "--log-format", "json", "--log-level", "debug")
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert lines, "the server logged nothing"
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert line["time"].endswith("Z")
    about_run = [line for line in lines if line.get("run_id") == run_id]
    assert any("finished: failed" in line["message"] for line in about_run), about_run
    assert all(line["dag_id"] == "logged" for line in about_run)
    tasks = {line.get("task_id") for line in about_run}
    assert {"first", "second"} <= tasks, about_run
    assert any(line["message"].startswith("Nagare") for line in lines)  # the start line


def test_text_log_lines_show_run_and_task_ids(tmp_path: Path) -> None:
    run_id, stderr = run_server(tmp_path, "--log-level", "debug")
    finished = [line for line in stderr.splitlines() if f"run {run_id} finished" in line]
    assert finished and f"run_id={run_id}" in finished[0], stderr
    assert any(f"run_id={run_id} task_id=second" in line for line in stderr.splitlines())


def test_formatters_keep_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "nagare.x", logging.ERROR, __file__, 1, "failed %s", ("x",), None
        )
        record.exc_info = sys.exc_info()
    record.run_id = "r1"
    data = json.loads(JsonFormatter().format(record))
    assert (data["message"], data["run_id"], data["level"]) == ("failed x", "r1", "error")
    assert "ValueError: boom" in data["exception"]
    text = TextFormatter().format(record)
    assert text.splitlines()[0].endswith("failed x [run_id=r1]")
    assert "ValueError: boom" in text


def test_log_format_is_a_setting(tmp_path: Path) -> None:
    settings = tmp_path / "nagare.yaml"
    assert load_config({"config": str(settings)}, environ={}).log_format == "text"
    assert load_config({"config": str(settings), "log_format": "json"}, {}).log_format == "json"
    with pytest.raises(ConfigError, match="expected one of text, json, found 'xml'"):
        load_config({"config": str(settings)}, environ={"NAGARE_LOG_FORMAT": "xml"})
