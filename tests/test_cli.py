"""The server side of the command line as a user runs it: exec, validate, help, version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import pythonpath_env


def nagare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", *args],
        cwd=cwd,
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = """
id: greet
tasks:
  - id: hello
    command: echo "hello $WHO"
  - id: bye
    depends_on: hello
    command: echo bye
"""
FAILING = """
id: broken_run
tasks:
  - id: boom
    command: echo about to fail; exit 4
  - id: after
    depends_on: boom
    command: echo never
"""


def test_exec_runs_a_file_to_success_and_prints_task_output(tmp_path: Path) -> None:
    dag = write(tmp_path / "flows" / "greet.yaml", GOOD)
    result = nagare("exec", str(dag), "-p", "WHO=world", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[hello] hello world" in result.stdout and "[bye] bye" in result.stdout
    assert "finished: success" in result.stderr
    assert not (tmp_path / "nagare.db").exists()  # a temporary database unless --db is given


def test_exec_exits_1_when_the_run_fails(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "f.yaml", FAILING)
    result = nagare("exec", "broken_run", cwd=tmp_path)
    assert result.returncode == 1
    assert "[boom] about to fail" in result.stdout
    assert "boom" in result.stderr and "exit code 4" in result.stderr
    assert "upstream_failed" in result.stderr


def test_exec_records_the_run_with_db(tmp_path: Path) -> None:
    dag = write(tmp_path / "greet.yaml", GOOD)
    result = nagare("exec", str(dag), "--db", "history.db", "--quiet", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == ""
    assert (tmp_path / "history.db").exists()


def test_exec_of_an_invalid_file_prints_every_error(tmp_path: Path) -> None:
    dag = write(tmp_path / "bad.yaml", "id: x\ntasks:\n  - id: a\n    comand: x\n    retries: -1\n")
    result = nagare("exec", str(dag), cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.yaml:4: tasks[0] (a).comand: unknown key 'comand'; did you mean 'command'?" in (
        result.stderr
    )
    assert "tasks[0] (a).retries" in result.stderr


def test_exec_of_an_unknown_dag_id(tmp_path: Path) -> None:
    result = nagare("exec", "nope", cwd=tmp_path)
    assert result.returncode == 2 and "DAG 'nope' not found" in result.stderr


def test_exec_rejects_a_bad_parameter(tmp_path: Path) -> None:
    dag = write(tmp_path / "greet.yaml", GOOD)
    result = nagare("exec", str(dag), "-p", "novalue", cwd=tmp_path)
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr


def test_validate_reports_good_and_bad_files(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "good.yaml", GOOD)
    write(
        tmp_path / "dags" / "cycle.yaml",
        "id: c\ntasks:\n  - {id: a, command: x, depends_on: b}\n"
        "  - {id: b, command: x, depends_on: a}\n",
    )
    write(tmp_path / "dags" / "typo.yaml", "id: t\ntasks:\n  - id: a\n    comand: x\n")
    result = nagare("validate", cwd=tmp_path)
    assert result.returncode == 1
    assert "ok   dags/good.yaml: DAG 'greet' (2 tasks)" in result.stdout
    assert "dependency cycle: a -> b -> a" in result.stdout
    assert (
        "dags/typo.yaml:4: tasks[0] (a).comand: unknown key 'comand'; did you mean 'command'?"
        in result.stdout.splitlines()
    )
    assert "1 valid, 2 invalid" in result.stderr
    assert nagare("validate", "dags/good.yaml", cwd=tmp_path).returncode == 0


def test_validate_applies_the_servers_dag_limits_from_its_settings(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "good.yaml", GOOD)
    write(tmp_path / "dags" / "root.yaml", "id: r\ntasks:\n  - {id: a, command: x, run_as: root}\n")
    write(tmp_path / "nagare.yaml", "max_dag_file_bytes: 80\npool_run_as: {default: nobody}\n")
    result = nagare("validate", cwd=tmp_path)
    assert result.returncode == 1 and "0 valid, 2 invalid" in result.stderr
    assert "the limit is 80 (max_dag_file_bytes in nagare.yaml)" in result.stdout
    assert "pool 'default' runs its tasks as 'nobody'" in result.stdout
    assert nagare("validate", "--config", "none.yaml", cwd=tmp_path).returncode == 0


def test_help_version_and_worker_mode_flags(tmp_path: Path) -> None:
    top = nagare("--help", cwd=tmp_path)
    assert top.returncode == 0 and "exec" in top.stdout and "validate" in top.stdout
    serve = nagare("serve", "--help", cwd=tmp_path)
    for flag in (
        "--port",
        "--db",
        "--dags",
        "--api-key",
        "--config",
        "--worker",
        "--join",
        "--pools",
        "--token",
    ):
        assert flag in serve.stdout
    assert nagare("--version", cwd=tmp_path).stdout.startswith("nagare ")
    worker = nagare("worker", "--help", cwd=tmp_path).stdout
    for flag in ("--max-tasks", "--worker-id", "--join", "--token"):
        assert flag in worker
    for flag in ("--lease-timeout-seconds", "--port", "--db", "--retention-days"):
        assert flag not in worker  # the master's settings
    no_master = nagare("--worker", cwd=tmp_path)
    assert no_master.returncode == 2
    assert "--join is required in worker mode (e.g. --join http://master:8080)" in no_master.stderr
    bad_pools = nagare("worker", "--join", "http://127.0.0.1:1", "--pools", "a b", cwd=tmp_path)
    assert bad_pools.returncode == 2
    assert "worker settings: pools: expected pool names like 'gpu', found 'a b'" in (
        bad_pools.stderr
    )
    bad_url = nagare("worker", "--join", "ftp://x", cwd=tmp_path)
    assert bad_url.returncode == 2 and "--join" in bad_url.stderr
    assert "Traceback" not in no_master.stderr + bad_pools.stderr + bad_url.stderr


def test_bad_settings_are_reported_without_a_traceback(tmp_path: Path) -> None:
    write(tmp_path / "nagare.yaml", "worker_pools: {default: -1}\n")
    result = nagare("--port", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 2
    assert "worker_pools.default: expected a whole number >= 0" in result.stderr
    assert "Traceback" not in result.stderr
