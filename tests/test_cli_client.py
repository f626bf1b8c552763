"""The API client commands (`nagare dags`, `trigger`, `logs -f`, ...) run as real subprocesses
against a real server, plus in-process tests of `nagare.client.ApiClient`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, pythonpath_env, wait_for

from nagare.cli import main
from nagare.client import ApiClient, ApiError, parse_sse

QUICK = """
id: quick
tasks:
  - id: hello
    command: 'echo "A=$A B=$B"'
  - id: count
    depends_on: [hello]
    command: "for i in 1 2 3 4 5; do echo line $i; done"
"""
SCHEDULED = """
id: nightly
schedule: "0 3 * * *"
tasks:
  - id: a
    command: "true"
"""
SLOW = """
id: slow
tasks:
  - id: sleeper
    command: "sleep 30"
  - id: after
    depends_on: [sleeper]
    command: "echo never"
"""
LONG_COMMAND = "echo " + "x" * 80
CLIENT_COMMANDS = (
    *("dags", "trigger", "pause", "activate", "runs", "run", "tasks", "logs", "retry", "kill"),
    *("stats", "workers", "approve", "reject", "emit", "backfill", "history", "tags"),
)


def gated_dag(gate: Path) -> str:
    """A task that prints one line, waits for `gate` to exist, then prints another."""
    return f"""
id: gated
tasks:
  - id: talker
    command: "echo first; while [ ! -f {gate} ]; do sleep 0.02; done; echo second"
"""


def flaky_dag(marker: Path) -> str:
    """Fails on its first attempt (exit 3), succeeds on the next."""
    return f"""
id: flaky
tasks:
  - id: boom
    command: "if [ -f {marker} ]; then echo fine; else touch {marker}; echo bad; exit 3; fi"
"""


MAPPED = """
id: mapped
tasks:
  - id: items
    command: "echo '[\\"a\\", \\"b\\"]'"
  - id: t
    type: map
    map_over: items
    command: "echo item {{item}}"
"""


@pytest.fixture
def server(nagare_factory: Callable[..., Nagare], tmp_path: Path) -> Nagare:
    dags = {
        "quick.yaml": QUICK,
        "nightly.yaml": SCHEDULED,
        "slow.yaml": SLOW,
        "gated.yaml": gated_dag(tmp_path / "gate"),
        "flaky.yaml": flaky_dag(tmp_path / "marker"),
        "long.yaml": f"id: long\ntasks:\n  - id: t\n    command: {LONG_COMMAND}\n",
        "mapped.yaml": MAPPED,
    }
    return nagare_factory(dags=dags)


def cli(
    *args: str, api: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m nagare ARGS [--api URL]` as a user would run it."""
    command = [sys.executable, "-m", "nagare", *args]
    if api is not None:
        command += ["--api", api]
    return subprocess.run(
        command,
        env=pythonpath_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=30,
    )


def ok(*args: str, api: str | None = None, env: dict[str, str] | None = None) -> str:
    result = cli(*args, api=api, env=env)
    assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
    return result.stdout


def fails(*args: str, api: str | None = None, code: int = 1) -> str:
    """Run a command that must fail with `code`; returns its stderr."""
    result = cli(*args, api=api)
    assert result.returncode == code, (args, result.returncode, result.stdout, result.stderr)
    return result.stderr


def wait_task_status(n: Nagare, run_id: str, task_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        task = n.task(run_id, task_id)
        return task if task["status"] == status else None

    return wait_for(reached, 15, message=f"{task_id} in {run_id} to be {status}")  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- commands


@pytest.mark.slow
def test_dags_lists_schedule_tasks_and_status(server: Nagare) -> None:
    lines = ok("dags", api=server.url).splitlines()
    assert lines[0].split() == ["DAG", "ID", "SCHEDULE", "TASKS", "STATUS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["quick"].split() == ["quick", "manual", "2", "active"]
    assert "0 3 * * *" in rows["nightly"] and rows["nightly"].endswith("active")
    assert lines[0].index("SCHEDULE") == rows["quick"].index("manual")  # aligned columns
    data = json.loads(ok("dags", "--json", api=server.url))
    assert [d["dag_id"] for d in data] == sorted(rows)


@pytest.mark.slow
def test_pause_and_activate(server: Nagare) -> None:
    assert ok("pause", "nightly", api=server.url).strip() == "Paused DAG nightly"
    assert server.get("/api/dags/nightly")["paused"] is True
    assert "paused" in next(r for r in ok("dags", api=server.url).splitlines() if "nightly" in r)
    answer = json.loads(ok("activate", "nightly", "--json", api=server.url))
    assert answer == {"dag_id": "nightly", "paused": False}
    assert ok("activate", "nightly", api=server.url).strip() == "Activated DAG nightly"


@pytest.mark.slow
def test_unknown_dag_is_an_error_with_the_server_message(server: Nagare) -> None:
    for command in ("trigger", "pause", "activate"):
        result = cli(command, "nope", api=server.url)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr.strip() == "error: DAG 'nope' not found"


@pytest.mark.slow
def test_trigger_params_become_conf_and_task_env(server: Nagare) -> None:
    run = json.loads(ok("trigger", "quick", "-p", "A=1", "-p", "B=x", "--json", api=server.url))
    assert run["dag_id"] == "quick"
    assert run["conf"] == {"A": "1", "B": "x"}
    assert server.wait_run(run["run_id"])["status"] == "success"
    assert ok("logs", run["run_id"], "hello", api=server.url) == "A=1 B=x\n"


@pytest.mark.slow
def test_trigger_human_message_and_conf_json(server: Nagare) -> None:
    out = ok("trigger", "quick", "--conf", '{"A": "2", "B": "z"}', "-p", "B=y", api=server.url)
    prefix = "Triggered DAG quick → run "
    assert out.startswith(prefix)
    run_id = out.strip()[len(prefix) :]
    assert server.get(f"/api/runs/{run_id}")["conf"] == {"A": "2", "B": "y"}


def test_backfill_dry_run_then_for_real(server: Nagare) -> None:
    span = ("--start", "2024-01-01", "--end", "2024-01-02T23:00:00Z")
    dry = ok("backfill", "nightly", *span, "--dry-run", api=server.url)
    assert "Would create 2 of 2 slot run(s)" in dry and dry.count("would create") == 2
    assert server.get("/api/runs?trigger=backfill")["total"] == 0
    done = json.loads(ok("backfill", "nightly", *span, "--json", api=server.url))
    assert len(done["created"]) == 2 and not done["dry_run"]
    again = ok("backfill", "nightly", *span, api=server.url)
    assert "Created 0 of 2" in again and again.count("exists, skipped") == 2
    assert "no schedule" in fails("backfill", "quick", *span, api=server.url)
    fails("backfill", "nightly", "--start", "2024-01-01", api=server.url, code=2)


@pytest.mark.slow
def test_usage_errors_exit_2(server: Nagare) -> None:
    assert "expected KEY=VALUE" in fails("trigger", "quick", "-p", "A", api=server.url, code=2)
    assert "JSON object" in fails("trigger", "quick", "--conf", "[1]", api=server.url, code=2)
    assert "at least 1" in fails("runs", "--limit", "0", api=server.url, code=2)
    fails("logs", "only-a-run-id", api=server.url, code=2)


@pytest.mark.slow
def test_runs_filters_with_both_flag_forms(server: Nagare) -> None:
    first = server.trigger("quick")
    second = server.trigger("quick")
    server.trigger("nightly")
    for run_id in (first, second):
        server.wait_run(run_id)
    out = ok("runs", "--dag", "quick", api=server.url)
    assert out.splitlines()[0].split() == ["RUN", "ID", "DAG", "STATUS", "TRIGGER", "CREATED"]
    assert [line.split()[0] for line in out.splitlines()[1:3]] == [second, first]
    assert out.splitlines()[-1] == "Showing 2 of 2 total runs"
    out = ok("runs", "--dag=quick", "--limit=1", "--page=2", f"--api={server.url}")
    assert first in out and second not in out
    assert out.splitlines()[-1] == "Showing 1 of 2 total runs (page 2)"
    filters = ("--dag", "quick", "--status", "success", "--trigger=manual")
    page = json.loads(ok("runs", *filters, "--json", api=server.url))
    assert page["total"] == 2 and {r["run_id"] for r in page["data"]} == {first, second}
    stderr = fails("runs", "--status", "bogus", api=server.url)
    assert "query parameter 'status' must be one of" in stderr


@pytest.mark.slow
def test_run_and_tasks_show_details(server: Nagare) -> None:
    run_id = server.trigger("quick", {"A": "1"})
    server.wait_run(run_id)
    details = ok("run", run_id, api=server.url).splitlines()
    assert details[0].split() == ["Run:", run_id]
    assert details[2].split() == ["Status:", "success"]
    assert any(line.startswith("Completed:") for line in details)
    created = next(line for line in details if line.startswith("Created:")).split(None, 1)[1]
    assert len(created) == len("2026-11-21 10:15:00") and created[4] == "-" and created[13] == ":"
    assert json.loads(ok("run", run_id, "--json", api=server.url))["run_id"] == run_id
    tasks = ok("tasks", run_id, api=server.url).splitlines()
    assert tasks[0].split() == ["TASK", "STATUS", "ATTEMPT", "DURATION", "EXIT", "COMMAND"]
    hello = tasks[1].split()
    assert hello[:3] == ["hello", "success", "1/1"] and hello[4] == "0"
    assert [t["task_id"] for t in json.loads(ok("tasks", run_id, "--json", api=server.url))] == [
        "hello",
        "count",
    ]
    assert fails("run", "no_such_run", api=server.url).strip() == (
        "error: run 'no_such_run' not found, and no DAG has that id"
    )


@pytest.mark.slow
def test_tasks_cuts_long_commands(server: Nagare) -> None:
    run_id = server.trigger("long")
    server.wait_run(run_id)
    row = ok("tasks", run_id, api=server.url).splitlines()[1]
    assert row.endswith(LONG_COMMAND[:47] + "...")


@pytest.mark.slow
def test_logs_text_tail_and_attempt(server: Nagare) -> None:
    run_id = server.trigger("quick")
    server.wait_run(run_id)
    assert ok("logs", run_id, "count", "--tail", "2", api=server.url) == "line 4\nline 5\n"
    assert ok("logs", run_id, "count", "--attempt=1", api=server.url).count("\n") == 5
    assert json.loads(ok("logs", run_id, "count", "--tail=1", "--json", api=server.url)) == [
        "line 5"
    ]
    assert "has no attempt 9" in fails("logs", run_id, "count", "--attempt", "9", api=server.url)
    assert "not found" in fails("logs", run_id, "nope", api=server.url)


@pytest.mark.slow
def test_logs_follow_streams_live_until_the_end(server: Nagare, tmp_path: Path) -> None:
    run_id = server.trigger("gated")
    command = [sys.executable, "-m", "nagare", "logs", run_id, "talker", "-f", "--api", server.url]
    with subprocess.Popen(
        command, env=pythonpath_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            assert proc.stdout.readline() == "first\n"  # arrives while the task still runs
            assert server.task(run_id, "talker")["status"] == "running"
            (tmp_path / "gate").touch()
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
        assert proc.stdout.read() == "second\n"
        assert proc.stderr.read().strip() == "task talker finished: success"


@pytest.mark.slow
def test_logs_follow_json_events_of_a_finished_map_child(server: Nagare) -> None:
    run_id = server.trigger("mapped")
    server.wait_run(run_id)
    out = ok("logs", run_id, "t[1]", "-f", "--json", api=server.url)
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"event": "message", "data": "item b"}
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"]) == {"status": "success"}


@pytest.mark.slow
def test_kill_a_running_task(server: Nagare) -> None:
    run_id = server.trigger("slow")
    wait_task_status(server, run_id, "sleeper", "running")
    out = ok("kill", run_id, "sleeper", api=server.url)
    assert out.strip() == f"Killed task sleeper in run {run_id}"
    assert server.wait_run(run_id, timeout=10)["status"] in ("failed", "cancelled")
    assert server.task(run_id, "sleeper")["status"] == "cancelled"
    assert "already finished" in fails("kill", run_id, "sleeper", api=server.url)


@pytest.mark.slow
def test_kill_a_whole_run(server: Nagare) -> None:
    run_id = server.trigger("slow")
    wait_task_status(server, run_id, "sleeper", "running")
    answer = json.loads(ok("kill", run_id, "--json", api=server.url))
    assert answer["run_id"] == run_id
    assert server.wait_run(run_id, timeout=10)["status"] == "cancelled"
    assert {t["status"] for t in server.tasks(run_id).values()} == {"cancelled"}
    assert ok("kill", server.trigger("slow"), api=server.url).startswith("Killed run ")
    stderr = fails("kill", run_id, api=server.url)
    assert stderr.strip() == f"error: run '{run_id}' already finished (cancelled)"


@pytest.mark.slow
def test_retry_a_failed_task(server: Nagare) -> None:
    run_id = server.trigger("flaky")
    assert server.wait_run(run_id)["status"] == "failed"
    tasks = ok("tasks", run_id, api=server.url).splitlines()
    assert tasks[1].split()[:2] == ["boom", "failed"] and tasks[1].split()[4] == "3"
    out = ok("retry", run_id, "boom", api=server.url)
    assert out.strip() == f"Queued retry for task boom in run {run_id}"
    assert server.wait_run(run_id)["status"] == "success"
    assert ok("logs", run_id, "boom", api=server.url) == "fine\n"
    assert ok("logs", run_id, "boom", "--attempt", "1", api=server.url).startswith("bad\n")
    assert "not found" in fails("retry", run_id, "ghost", api=server.url)


@pytest.mark.slow
def test_stats_and_workers(server: Nagare) -> None:
    lines = ok("stats", api=server.url).splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [
        "active_runs",
        "failed_runs_24h",
        "total_runs",
        "loaded_dags",
    ]
    assert "loaded_dags: 7" in lines
    assert json.loads(ok("stats", "--json", api=server.url))["loaded_dags"] == 7
    assert ok("workers", api=server.url).strip() == "No workers connected"
    assert json.loads(ok("workers", "--json", api=server.url)) == []


@pytest.mark.slow
def test_api_url_from_the_environment(server: Nagare) -> None:
    assert "loaded_dags: 7" in ok("stats", env={"NAGARE_API_URL": server.url})


@pytest.mark.slow
def test_api_key(nagare_factory: Callable[..., Nagare]) -> None:
    keyed = nagare_factory(dags={"quick.yaml": QUICK}, api_key="k")
    stderr = fails("dags", "--api-key", "wrong", api=keyed.url)
    assert stderr.startswith("error: invalid API key")
    assert "NAGARE_API_KEY" in stderr
    assert fails("dags", api=keyed.url).startswith("error: missing API key")
    assert "quick" in ok("dags", "--api-key=k", api=keyed.url)
    assert "quick" in ok("dags", api=keyed.url, env={"NAGARE_API_KEY": "k"})


@pytest.mark.slow
def test_unreachable_server_and_bad_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert fails("dags", api=url).startswith(f"error: cannot reach Nagare at {url}: ")
    assert "invalid API URL 'localhost:8080'" in fails("stats", api="localhost:8080")


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nagare {command} ")
    assert "--api URL" in out and "--api-key KEY" in out and "--json" in out


# ---------------------------------------------------------------- ApiClient in-process


@pytest.mark.slow
def test_client_addresses_map_children(server: Nagare) -> None:
    client = ApiClient(server.url)
    run_id = client.trigger("mapped")["run_id"]
    server.wait_run(run_id)
    assert client.task(run_id, "t[0]")["item"] == "a"
    assert client.logs_text(run_id, "t[1]") == "item b\n"
    assert [a["attempt"] for a in client.attempts(run_id, "t[0]")] == [1]
    events = list(client.follow_logs(run_id, "t[0]"))
    assert events[0] == ("message", "item a")
    assert events[-1][0] == "end"
    assert [t["task_id"] for t in client.tasks(run_id)] == ["items", "t", "t[0]", "t[1]"]


@pytest.mark.slow
def test_client_parses_server_errors(server: Nagare) -> None:
    client = ApiClient(server.url + "/")
    with pytest.raises(ApiError) as err:
        client.dag("nope")
    assert (err.value.status, err.value.code, err.value.message) == (
        404,
        "not_found",
        "DAG 'nope' not found",
    )
    with pytest.raises(ApiError) as err:
        client.runs(status="bogus")
    assert (err.value.status, err.value.code) == (400, "bad_request")
    with pytest.raises(ApiError) as err:
        client.kill_task("no_run", "t[0]")
    assert err.value.status == 404 and "no_run" in err.value.message


def test_client_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiError) as err:
        ApiClient(url, timeout=2).health()
    assert (err.value.status, err.value.code) == (0, "unreachable")
    assert err.value.message.startswith(f"cannot reach Nagare at {url}: ")


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with the status/body queued in `server.answers`."""

    server: Any

    def do_GET(self) -> None:
        self.server.seen.append((self.command, self.path, dict(self.headers)))
        status, body = self.server.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Any]:
    httpd: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.seen, httpd.answer = [], (200, b"{}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield httpd
    httpd.shutdown()
    thread.join()
    httpd.server_close()


def test_client_encodes_task_ids_and_query(recorder: Any) -> None:
    client = ApiClient(f"http://127.0.0.1:{recorder.server_port}", api_key="s3cret")
    client.retry_task("r1", "t[0]")
    client.runs(dag_id="a b", status="failed", limit=5)
    recorder.answer = (200, b"x\n")
    client.logs_text("r1", "t[12]", attempt=2, tail=3)
    paths = [path for _, path, _ in recorder.seen]
    assert paths == [
        "/api/runs/r1/tasks/t%5B0%5D/retry",
        "/api/runs?dag_id=a+b&status=failed&limit=5",
        "/api/runs/r1/tasks/t%5B12%5D/logs?attempt=2&tail=3",
    ]
    assert recorder.seen[0][0] == "POST"
    assert recorder.seen[0][2]["Authorization"] == "Bearer s3cret"


def test_client_errors_without_the_json_shape(recorder: Any) -> None:
    client = ApiClient(f"http://127.0.0.1:{recorder.server_port}")
    recorder.answer = (502, b"<html>Bad gateway</html>")
    with pytest.raises(ApiError) as err:
        client.stats()
    assert (err.value.status, err.value.code) == (502, "http_502")
    assert err.value.message == "server returned 502: <html>Bad gateway</html>"
    recorder.answer = (200, b"not json")
    with pytest.raises(ApiError, match="invalid JSON"):
        client.stats()
    recorder.answer = (200, b"[]")
    with pytest.raises(ApiError, match="expected a JSON object"):
        client.stats()


def test_parse_sse_follows_the_event_stream_rules() -> None:
    stream = [
        "retry: 1000",
        "",
        ": ping",
        "",
        "id: 1",
        "data: hello",
        "",
        "id: 2",
        "data:two",
        "data:  lines",
        "",
        "event: end",
        'data: {"status": "success"}',
        "",
    ]
    assert list(parse_sse(iter(stream))) == [
        ("message", "hello"),
        ("message", "two\n lines"),
        ("end", '{"status": "success"}'),
    ]
