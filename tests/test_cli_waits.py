"""`nagare approve`, `nagare reject` and `nagare emit` as real subprocesses against a real
server (the style of test_cli_client.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from conftest import Nagare, pythonpath_env
from test_approval_wait import waiting
from test_cli_client import cli, fails, ok

from nagare.cli_client import event_payload

DAGS = {
    "gate.yaml": """
id: gate
tasks:
  - id: ask
    type: approval
    message: proceed?
    approvers: [alice]
  - id: plain
    command: "true"
""",
    "hold.yaml": """
id: hold
tasks:
  - id: ev
    type: wait
    event: "go-{{ .run.id }}"
    output_jq: {WHO: .who}
""",
}


def test_approve_and_reject_from_the_command_line(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags=DAGS)
    first, second = n.trigger("gate"), n.trigger("gate")
    waiting(n, first, "ask")
    waiting(n, second, "ask")
    denied = fails("approve", first, "ask", "--by", "mallory", api=n.url)
    assert (
        denied.strip()
        == "error: 'mallory' may not answer the approval 'ask': its approvers are alice"
    )
    missing = cli("approve", first, "ask", api=n.url, env={"USER": "bob"})  # --by: $USER
    assert missing.returncode == 1 and "'bob' may not answer" in missing.stderr
    out = ok("approve", first, "ask", "-m", "ship it", "--by", "alice", api=n.url)
    assert out.strip() == f"Approved task ask in run {first} → success"
    task = n.task(first, "ask")
    assert task["outputs"]["approved_by"] == "alice" and task["outputs"]["comment"] == "ship it"
    answered = fails("approve", first, "ask", "--by", "alice", api=n.url)
    assert answered.strip() == f"error: task 'ask' of run '{first}' is success, not waiting"
    plain = fails("reject", first, "plain", "--by", "alice", api=n.url)
    assert plain.strip() == f"error: task 'plain' of run '{first}' does not wait for an approval"
    assert fails("approve", "no_such_run", "ask", api=n.url).strip() == (
        "error: run 'no_such_run' not found, and no DAG has that id"
    )
    rejected = json.loads(
        ok("reject", second, "ask", "--by=alice", "-m", "no", "--json", api=n.url)
    )
    assert rejected["status"] == "failed" and rejected["exit_code"] == 1
    assert rejected["message"].endswith(": no")


def test_emit_with_data_file_and_stdin(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    n = nagare_factory(dags=DAGS)
    runs = [n.trigger("hold") for _ in range(3)]
    for run_id in runs:
        waiting(n, run_id, "ev")
    out = ok("emit", f"go-{runs[0]}", "--data", '{"who": "text"}', api=n.url)
    assert out == f"Event go-{runs[0]} resolved 1 waiting task:\n  {runs[0]} ev\n"
    payload = tmp_path / "payload.json"
    payload.write_text('{"who": "file"}')
    assert json.loads(
        ok("emit", f"go-{runs[1]}", "--data", f"@{payload}", "--json", api=n.url)
    ) == {"matched": [{"run_id": runs[1], "task_id": "ev"}]}
    piped = subprocess.run(
        [sys.executable, "-m", "nagare", "emit", f"go-{runs[2]}", "--data", "-", "--api", n.url],
        input='{"who": "stdin"}',
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    assert [n.task(r, "ev")["outputs"]["WHO"] for r in runs] == ["text", "file", "stdin"]
    assert (
        ok("emit", "nobody-waits", api=n.url).strip()
        == "Event nobody-waits: no waiting task matched"
    )
    bad = fails("emit", "x", "--data", "{nope", api=n.url, code=2)
    assert bad.startswith("error: the payload is not valid JSON (")
    missing = fails("emit", "x", "--data", f"@{tmp_path / 'none.json'}", api=n.url, code=2)
    assert missing.startswith(f"error: cannot read the payload file {tmp_path / 'none.json'}")
    assert "not a valid event name" in fails("emit", "bad.name!", api=n.url)


def test_event_payload_reader() -> None:
    assert event_payload(None, lambda: "unused") is None
    assert event_payload("[1, 2]", lambda: "unused") == [1, 2]
    assert event_payload("-", lambda: '{"a": 1}') == {"a": 1}
