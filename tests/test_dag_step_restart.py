"""`type: dag` steps across a restart of the real server (`python -m nagare`, kill -9): the
waiting parent and its child are rows, so a child that ends after the restart ends its parent
with its outputs, and killing the parent after the restart kills the child."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from conftest import wait_for
from test_restart import ServerProcess

from nagare.clock import now_ms
from nagare.models import RunStatus, TaskStatus
from nagare.store import Store

CHILD = """
id: child
outputs:
  GOT: "{{ .tasks.hold.outputs.VALUE }}"
tasks:
  - id: hold
    type: wait
    event: go
    output_jq: {VALUE: .value}
"""

PARENT = """
id: parent
tasks:
  - {id: call, type: dag, dag_id: child}
  - id: after
    depends_on: [call]
    command: echo "child said $GOT"
"""


def started(server: ServerProcess) -> tuple[str, str]:
    """A parent run whose `call` waits for its child, itself waiting for the event `go`."""
    run_id = server.post("/api/dags/parent/runs").json["run_id"]
    child = wait_for(lambda: server.task(run_id, "call").get("child_run_id"), 10)
    wait_for(lambda: server.task(child, "hold")["status"] == "waiting", 10)
    assert server.task(run_id, "call")["status"] == "waiting"
    return run_id, str(child)


def restarted(tmp_path: Path) -> tuple[ServerProcess, str, str]:
    server = ServerProcess(tmp_path)
    server.dag("child.yaml", CHILD)
    server.dag("parent.yaml", PARENT)
    server.start()
    run_id, child = started(server)
    server.signal(signal.SIGKILL)
    server.start()
    return server, run_id, child


def test_a_child_ending_after_a_restart_ends_its_parent_with_its_outputs(tmp_path: Path) -> None:
    server, run_id, child = restarted(tmp_path)
    try:
        assert server.task(run_id, "call")["status"] == "waiting"
        assert server.post("/api/events/go", {"value": "hello"}).status == 200
        assert server.wait_run(child)["status"] == "success"
        assert server.wait_run(run_id)["status"] == "success"
        assert server.task(run_id, "call")["outputs"] == {"GOT": "hello"}
        assert server.task(run_id, "call")["child_run_id"] == child
    finally:
        server.stop()


def test_a_parent_killed_after_a_restart_kills_its_child(tmp_path: Path) -> None:
    server, run_id, child = restarted(tmp_path)
    try:
        assert server.post(f"/api/runs/{run_id}/kill").status == 200
        assert server.wait_run(child)["status"] == "cancelled"
        assert server.wait_run(run_id)["status"] == "cancelled"
        assert server.task(run_id, "call")["status"] == "cancelled"
        assert server.task(child, "hold")["status"] == "cancelled"
    finally:
        server.stop()


def test_a_child_that_ended_while_the_server_was_down_ends_its_parent_at_start(
    nagare_factory: Any, tmp_path: Path
) -> None:
    """The child's end is written while no server runs (the crash came between the child's
    end and its parent's): the next start ends the parent."""
    first = nagare_factory(dags={"child.yaml": CHILD, "parent.yaml": PARENT})
    run_id = first.trigger("parent")
    child = wait_for(lambda: first.task(run_id, "call").get("child_run_id"), 10)
    wait_for(lambda: first.task(child, "hold")["status"] == "waiting", 10)
    first.app.stop()
    store = Store(str(tmp_path / "nagare.db"))
    try:
        hold = store.tasks.get(child, "hold")
        assert hold is not None
        store.tasks.transition([hold.id], [TaskStatus.WAITING], TaskStatus.SUCCESS, now_ms())
        assert store.runs.finish(child, RunStatus.SUCCESS, now_ms(), outputs={"GOT": "x"})
    finally:
        store.close()
    second = nagare_factory()
    assert second.wait_run(run_id)["status"] == "success"
    assert second.task(run_id, "call")["outputs"] == {"GOT": "x"}
