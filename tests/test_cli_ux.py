"""The command line as a new user meets it: flags anywhere, `exec` of one file with progress,
a DAG id where a run is meant, `history` and `tags`, errors that say what went wrong (in JSON
with --json), help with an example. Each runs `python -m nagare` as a subprocess; the client
commands talk to a real server on port 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, pythonpath_env, wait_for

GREET = """
id: greet
tags: [demo, nightly]
tasks:
  - id: hello
    command: echo "hello $WHO"
  - id: bye
    depends_on: hello
    command: sleep 0.2; echo bye
"""
BROKEN = "id: broken\ntasks: [\n"
CHILD = """
id: child
tasks:
  - id: work
    command: echo child-work
"""
PARENT = """
id: parent
tasks:
  - id: call
    type: dag
    dag_id: child
  - id: after
    depends_on: call
    command: echo parent-after
"""
SLOW = """
id: slow
tags: [demo]
tasks:
  - id: sleeper
    command: sleep 30
  - id: after
    depends_on: sleeper
    command: echo never
"""
QUIET = """
id: quiet
tasks:
  - id: silent
    command: "true"
"""


def nagare(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", *args],
        cwd=cwd,
        env=pythonpath_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- exec


def test_exec_of_a_file_loads_that_file_alone(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "greet.yaml", GREET)
    write(tmp_path / "dags" / "broken.yaml", BROKEN)
    result = nagare("exec", "dags/greet.yaml", "-p", "WHO=you", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[hello] hello you" in result.stdout
    assert "broken" not in result.stderr and "WARNING" not in result.stderr
    assert "run of 'greet' finished: success in " in result.stderr


SPY_PARSES = """
import sys
import nagare.dag_folder as folder
from nagare.cli import main

real, parsed = folder.load_dag_file, []


def spy(path, *args, **kwargs):
    parsed.append(path)
    return real(path, *args, **kwargs)


folder.load_dag_file = spy
code = main(["exec", sys.argv[1], "--quiet"])
print("parsed:", *parsed, file=sys.stderr)
sys.exit(code)
"""


def test_exec_parses_its_file_once(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "greet.yaml", GREET)
    write(tmp_path / "dags" / "broken.yaml", BROKEN)
    result = subprocess.run(
        [sys.executable, "-c", SPY_PARSES, "dags/greet.yaml"],
        cwd=tmp_path,
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    parsed = next(line for line in result.stderr.splitlines() if line.startswith("parsed:"))
    assert parsed.split()[1:] == [str(tmp_path / "dags" / "greet.yaml")]


def test_exec_of_a_missing_file_says_file_not_found(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "broken.yaml", BROKEN)
    result = nagare("exec", "dags/nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: file not found: dags/nope.yaml\n"
    folder = nagare("exec", "dags", cwd=tmp_path)
    assert folder.returncode == 2 and "dags is a folder" in folder.stderr


def test_exec_loads_the_dags_a_file_calls_silently(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "parent.yaml", PARENT)
    write(tmp_path / "dags" / "child.yaml", CHILD)
    write(tmp_path / "dags" / "broken.yaml", BROKEN)
    result = nagare("exec", "dags/parent.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[work] child-work" in result.stdout and "[after] parent-after" in result.stdout
    assert "broken" not in result.stderr


def test_exec_of_an_unknown_dag_id_suggests_the_closest(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "greet.yaml", GREET)
    write(tmp_path / "dags" / "broken.yaml", BROKEN)
    result = nagare("exec", "gret", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: DAG 'gret' not found in dags; did you mean 'greet'? "
        "(1 file has errors: `nagare validate dags` lists them)"
    ]
    named = nagare("exec", "broken", cwd=tmp_path)  # broken.yaml is likely the one meant
    assert named.returncode == 2
    assert named.stderr.splitlines()[1].startswith("broken.yaml:3: invalid YAML")


def test_exec_progress_lines_and_the_live_status_line(tmp_path: Path) -> None:
    dag = write(tmp_path / "greet.yaml", GREET)
    lines = nagare("exec", str(dag), "--progress", "lines", cwd=tmp_path)
    assert lines.returncode == 0, lines.stderr
    err = lines.stderr.splitlines()
    started = err.index(next(line for line in err if line.startswith("task bye started (+")))
    ended = err.index(next(line for line in err if line.startswith("task bye success in ")))
    assert started < ended
    assert any(line.startswith("task hello success in ") for line in err)
    assert "\x1b[K" not in lines.stderr  # no status line unless live
    assert lines.stdout.splitlines() == ["[hello] hello ", "[bye] bye"]  # stdout: output only
    live = nagare("exec", str(dag), "--progress", cwd=tmp_path)
    assert live.returncode == 0
    assert "0/2 tasks done, " in live.stderr and "\x1b[K" in live.stderr  # (\r read as \n)
    off = nagare("exec", str(dag), cwd=tmp_path)  # not a terminal: no progress
    assert "started" not in off.stderr and "\x1b[K" not in off.stderr


def test_exec_is_woken_by_the_run_end_not_by_polling(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"quiet.yaml": QUIET})
    run_id = n.app.runs.trigger("quiet", {}).run_id
    began = time.monotonic()
    assert n.app.wait_for_run(run_id, every=60) == "success"  # a 60 s safety net, unused
    assert time.monotonic() - began < 10


def test_exec_interrupted_kills_its_tasks(tmp_path: Path) -> None:
    dag = write(tmp_path / "slow.yaml", SLOW)
    with subprocess.Popen(
        [sys.executable, "-m", "nagare", "exec", str(dag), "--progress", "lines"],
        env=pythonpath_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        try:
            assert proc.stderr.readline().startswith("task sleeper started")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 130
        finally:
            proc.kill()
        rest = proc.stderr.read()
    assert "interrupted: killing the run's tasks" in rest
    assert "sleeper                        cancelled (killed)" in rest
    assert "run of 'slow' finished: interrupted" in rest


# ---------------------------------------------------------------- validate and help


def test_validate_prints_one_path_form_sorted_by_line(tmp_path: Path) -> None:
    write(tmp_path / "dags" / "one.yaml", "id: one\ntasks:\n  - id: a\n    command: x\n")
    write(
        tmp_path / "dags" / "two.yaml",
        "id: two\ntasks:\n  - id: a\n    comand: x\n  - id: b\n    command: x\n    retries: -1\n",
    )
    result = nagare("validate", cwd=tmp_path)
    assert result.returncode == 1
    out = result.stdout.splitlines()
    assert "ok   dags/one.yaml: DAG 'one' (1 task)" in out
    errors = [line for line in out if line.startswith("dags/two.yaml:")]
    numbers = [int(line.split(":")[1]) for line in errors]
    assert len(errors) >= 3 and numbers == sorted(numbers)
    assert not any(line.startswith("two.yaml") for line in out)


@pytest.mark.parametrize("command", ["serve", "worker", "validate", "exec", "logs", "history"])
def test_each_command_has_a_description_and_an_example(command: str) -> None:
    result = nagare(command, "--help")
    assert result.returncode == 0
    paragraphs = result.stdout.split("\n\n")
    assert paragraphs[1].strip() and not paragraphs[1].startswith(("options", "positional"))
    assert paragraphs[-1].startswith(f"example: nagare {command}")


def test_worker_help_lists_only_worker_flags() -> None:
    out = nagare("worker", "--help").stdout
    assert "--join" in out and "--pools" in out and "--token" in out
    for flag in ("--port", "--db", "--dags", "--lease-timeout-seconds", "--tls-cert"):
        assert flag not in out


# ---------------------------------------------------------------- client commands


@pytest.fixture
def server(nagare_factory: Callable[..., Nagare]) -> Nagare:
    dags = {"greet.yaml": GREET, "slow.yaml": SLOW, "quiet.yaml": QUIET}
    return nagare_factory(dags=dags)


def test_connection_flags_before_the_command(server: Nagare) -> None:
    assert "greet" in nagare("--api", server.url, "dags").stdout
    stats = nagare("--json", f"--api={server.url}", "stats")
    assert stats.returncode == 0 and json.loads(stats.stdout)["loaded_dags"] == 3
    keyed = nagare("--api", server.url, "--api-key", "k", "--json", "tags")
    assert keyed.returncode == 0, keyed.stderr


def test_client_flags_without_a_command_say_so(tmp_path: Path) -> None:
    for args in (("--api", "http://127.0.0.1:9"), ("--json",)):
        done = nagare(*args, cwd=tmp_path)
        assert done.returncode == 2, done
        assert "client flags: name a command after them" in done.stderr
        assert "Traceback" not in done.stderr
    assert json.loads(nagare("--json", cwd=tmp_path).stderr)["error"]["code"] == "usage"
    assert not (tmp_path / "nagare.db").exists()  # no server was started


def test_a_dag_id_means_its_latest_run(server: Nagare) -> None:
    none_yet = nagare("run", "greet", "--api", server.url)
    assert none_yet.returncode == 1
    assert (
        none_yet.stderr == "error: DAG 'greet' has no run yet (start one: nagare trigger greet)\n"
    )
    server.wait_run(server.trigger("greet"))
    latest = server.trigger("greet", {"WHO": "again"})
    server.wait_run(latest)
    run = nagare("run", "greet", "--api", server.url)
    assert run.returncode == 0 and f"Run:       {latest}" in run.stdout
    assert run.stderr == f"latest run of DAG greet: {latest}\n"
    assert nagare("status", "greet", "--api", server.url).stdout == run.stdout  # (Dagu's verb)
    assert "hello again" in nagare("logs", "greet", "hello", "--api", server.url).stdout
    assert "bye" in nagare("tasks", "greet", "--api", server.url).stdout
    follow = nagare("logs", "greet", "bye", "-f", "--api", server.url)
    assert follow.stdout == "bye\n" and "task bye finished: success" in follow.stderr
    slow = server.trigger("slow")
    wait_for(lambda: server.task(slow, "sleeper")["status"] == "running", 15)
    killed = nagare("kill", "slow", "--api", server.url)
    assert killed.returncode == 0 and f"Killed run {slow}" in killed.stdout
    neither = nagare("run", "nope", "--api", server.url)
    assert neither.stderr == "error: run 'nope' not found, and no DAG has that id\n"


def test_history_of_a_dag_with_duration_and_end(server: Nagare) -> None:
    server.wait_run(server.trigger("greet"))
    out = nagare("history", "greet", "--api", server.url).stdout.splitlines()
    assert out[0].split() == ["RUN", "ID", "STATUS", "TRIGGER", "STARTED", "DURATION", "ENDED"]
    row = out[1].split()
    assert row[1:3] == ["success", "manual"] and row[5].endswith(("ms", "s"))
    assert len(row) == 8  # run id, status, trigger, started (2), duration, ended (2)
    data = json.loads(nagare("history", "greet", "--json", "--api", server.url).stdout)
    assert data["total"] == 1
    unknown = nagare("history", "nope", "--api", server.url)
    assert unknown.returncode == 1 and unknown.stderr == "error: DAG 'nope' not found\n"


def test_runs_of_an_unknown_dag_is_an_error(server: Nagare) -> None:
    result = nagare("runs", "--dag", "nope", "--api", server.url)
    assert result.returncode == 1 and result.stderr == "error: DAG 'nope' not found\n"
    empty = nagare("runs", "--dag", "quiet", "--api", server.url)  # known, no runs: a table
    assert empty.returncode == 0 and "Showing 0 of 0 total runs" in empty.stdout


def test_logs_say_why_a_task_has_none(server: Nagare) -> None:
    run_id = server.trigger("slow")
    pending = nagare("logs", run_id, "after", "--api", server.url)
    assert pending.returncode == 3 and pending.stdout == ""
    assert pending.stderr == (
        "error: task after has no log: it has not started "
        "(pending: its upstream tasks have not finished)\n"
    )
    wait_for(lambda: server.task(run_id, "sleeper")["status"] == "running", 15)
    running = nagare("logs", run_id, "sleeper", "--api", server.url)
    assert running.returncode == 0
    assert (
        running.stderr == "task sleeper: its log is empty so far (it is running: -f follows it)\n"
    )
    as_json = nagare("logs", run_id, "after", "--json", "--api", server.url)
    assert as_json.returncode == 3
    assert json.loads(as_json.stderr)["error"]["code"] == "no_log"
    with subprocess.Popen(
        [sys.executable, "-m", "nagare", "logs", run_id, "after", "-f", "--api", server.url],
        env=pythonpath_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        try:
            note = proc.stderr.readline()
            server.call("POST", f"/api/runs/{run_id}/kill")
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()
        assert note.startswith("task after: it has not started (pending")
        assert note.rstrip().endswith("waiting for it to start")
        assert "task after finished: cancelled" in proc.stderr.read()
    cancelled = nagare("logs", run_id, "after", "--api", server.url)
    assert cancelled.returncode == 3 and "it was cancelled before it started" in cancelled.stderr
    quiet = server.trigger("quiet")
    server.wait_run(quiet)
    empty = nagare("logs", quiet, "silent", "--api", server.url)
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr == "task silent: its log is empty (it printed nothing)\n"


def test_errors_are_json_with_json(server: Nagare) -> None:
    result = nagare("--json", "run", "nope", "--api", server.url)
    assert result.returncode == 1 and result.stdout == ""
    assert json.loads(result.stderr) == {
        "error": {"code": "not_found", "message": "run 'nope' not found, and no DAG has that id"}
    }
    usage = nagare("--json", "logs", "only_a_run")
    assert usage.returncode == 2
    assert json.loads(usage.stderr) == {
        "error": {
            "code": "usage",
            "message": "nagare logs: the following arguments are required: TASK_ID",
        }
    }
    bad = nagare("emit", "done", "--data", "{nope", "--json", "--api", server.url)
    assert bad.returncode == 2
    assert json.loads(bad.stderr)["error"]["message"].startswith("the payload is not valid JSON")


def test_tags_lists_tags_with_their_dag_counts(server: Nagare) -> None:
    out = nagare("tags", "--api", server.url).stdout.splitlines()
    assert out[0].split() == ["TAG", "DAGS", "DAG", "IDS"]
    assert out[1].split() == ["demo", "2", "greet,", "slow"]
    assert out[2].split() == ["nightly", "1", "greet"]
    data = json.loads(nagare("tags", "--json", "--api", server.url).stdout)
    assert data[0] == {"tag": "demo", "dags": 2, "dag_ids": ["greet", "slow"]}


@pytest.fixture
def html_site() -> Iterator[str]:
    """A web server that is not Nagare: every path answers an HTML page (404 for /api/...)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!DOCTYPE html><html><body>" + b"x" * 400 + b"</body></html>"
            self.send_response(404 if self.path.startswith("/api/runs") else 200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join()
    httpd.server_close()


def test_a_web_page_is_not_a_nagare_api(html_site: str) -> None:
    for command in (["dags"], ["runs"]):  # answered 200 HTML, and 404 HTML
        result = nagare(*command, "--api", html_site)
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: {html_site} is not a Nagare API: it answered ")
        assert "<html" not in result.stderr and "xxx" not in result.stderr
    as_json = json.loads(nagare("stats", "--json", "--api", html_site).stderr)
    assert as_json["error"]["code"] == "not_nagare"
