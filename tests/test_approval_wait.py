"""`type: approval` and `type: wait` on a real server: answering (who, when, approvers, 409 and
403), rejection with retries, timeouts, events (match, output_jq, bad payloads), a webhook
trigger with `emit_event`, handlers, no pool slot while waiting, the runs list filter, and
restarts of a real server process on the same database."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nagare, wait_for
from test_restart import ServerProcess

APPROVAL = """
id: release
params:
  version: {type: string, default: "1.2"}
tasks:
  - id: build
    command: echo built
  - id: ask
    type: approval
    depends_on: [build]
    message: "Ship {{ .params.version }} to production?"
    approvers: [alice, bob]
  - id: later
    type: approval
    depends_on: [ask]
    message: second thoughts
  - id: ship
    depends_on: [later]
    command: echo "shipping, approved by {{ .tasks.ask.outputs.approved_by }}"
"""
EVENTS = """
id: listen
tasks:
  - id: paid
    type: wait
    event: "payment-{{ .run.id }}"
    match: '.payload.status == "paid" and .payload.amount > .params.min'
    output_jq: {AMOUNT: .amount, NOTE: .note}
  - id: strict
    type: wait
    event: "payment-{{ .run.id }}"
    match: '.payload.amount | test("^[0-9]+$")'
  - id: after
    depends_on: [paid]
    command: echo "amount=$AMOUNT note=[$NOTE]"
params:
  min: {type: integer, default: 10}
"""


def waiting(n: Nagare, run_id: str, task_id: str, attempt: int = 1) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        task = n.tasks(run_id).get(task_id)  # (a handler exists once the run ended)
        return task if task and task["status"] == "waiting" and task["attempt"] == attempt else None

    return wait_for(reached, 15, message=f"{task_id} of {run_id} to wait")  # type: ignore[no-any-return]


def answer(n: Nagare, run_id: str, task_id: str, verb: str, **body: Any) -> Any:
    return n.call("POST", f"/api/runs/{run_id}/tasks/{task_id}/{verb}", body)


def test_approval_records_who_and_when_and_checks_approvers(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = nagare_factory(dags={"release.yaml": APPROVAL})
    run_id = n.trigger("release")
    task = waiting(n, run_id, "ask")
    assert task["pool"] == "~engine" and task["worker"] == "engine"
    assert task["waiting_for"]["message"] == "Ship 1.2 to production?"  # rendered
    assert task["waiting_for"]["approvers"] == ["alice", "bob"]
    assert task["reason"] == "waiting for approval: Ship 1.2 to production?"
    # not waiting for an approval: 409 (pending, a command, a finished task)
    for task_id in ("later", "build", "ship"):
        result = answer(n, run_id, task_id, "approve", by="alice")
        assert result.status == 409, (task_id, result.body)
    assert (
        "is pending, not waiting" in answer(n, run_id, "later", "approve").json["error"]["message"]
    )
    assert (
        "does not wait for an approval"
        in (answer(n, run_id, "build", "approve").json["error"]["message"])
    )
    assert answer(n, "nope", "ask", "approve").status == 404
    # approvers: only those names may answer
    denied = answer(n, run_id, "ask", "approve", by="mallory")
    assert denied.status == 403
    assert denied.json["error"]["message"] == (
        "'mallory' may not answer the approval 'ask': its approvers are alice, bob"
    )
    assert answer(n, run_id, "ask", "reject").status == 403  # no name: "api"
    assert n.task(run_id, "ask")["status"] == "waiting"
    done = answer(n, run_id, "ask", "approve", by="alice", comment="LGTM\n[nagare] forged")
    assert done.status == 200, done.body
    body = done.json
    assert body["status"] == "success"
    assert body["outputs"]["approved_by"] == "alice"
    assert body["outputs"]["comment"] == "LGTM [nagare] forged"  # one line in the log
    assert body["outputs"]["approved_at"].endswith("Z")
    assert body["message"] == (
        f"approved by alice at {body['outputs']['approved_at']}: LGTM [nagare] forged"
    )
    assert n.log(run_id, "ask").splitlines()[-1] == f"[nagare] {body['message']}"
    assert answer(n, run_id, "ask", "approve", by="alice").status == 409  # answered already
    waiting(n, run_id, "later")
    assert answer(n, run_id, "later", "approve", by="anyone").status == 200  # no approvers
    assert n.wait_run(run_id)["status"] == "success"
    assert n.log(run_id, "ship") == "shipping, approved by alice\n"


def test_reject_fails_and_a_retry_waits_again(nagare_factory: Callable[..., Nagare]) -> None:
    dag = """
    id: gate
    tasks:
      - id: ask
        type: approval
        message: go?
        retries: 1
    """
    n = nagare_factory(dags={"gate.yaml": dag})
    run_id = n.trigger("gate")
    waiting(n, run_id, "ask")
    rejected = answer(n, run_id, "ask", "reject", by="bob", comment="not today")
    assert rejected.status == 200
    assert rejected.json["status"] in ("up_for_retry", "waiting")  # (no retry delay)
    task = waiting(n, run_id, "ask", attempt=2)  # a new attempt waits again
    assert task["waiting_for"]["message"] == "go?"
    attempts = n.get(f"/api/runs/{run_id}/tasks/ask/attempts")
    assert attempts[0]["status"] == "failed" and attempts[0]["exit_code"] == 1
    assert "rejected by bob at " in n.log(run_id, "ask", attempt=1)
    final = answer(n, run_id, "ask", "reject", by="bob", comment="still no").json
    assert final["status"] == "failed" and final["exit_code"] == 1
    assert final["message"].startswith("rejected by bob at ")
    assert final["message"].endswith(": still no")
    assert n.wait_run(run_id)["status"] == "failed"


def test_approval_timeout_fails_it_timed_out(nagare_factory: Callable[..., Nagare]) -> None:
    dag = """
    id: hurry
    tasks:
      - id: ask
        type: approval
        timeout_seconds: 0.3
    """
    n = nagare_factory(dags={"hurry.yaml": dag})
    run_id = n.trigger("hurry")
    assert n.wait_run(run_id)["status"] == "failed"
    task = n.task(run_id, "ask")
    assert task["status"] == "failed" and task["timed_out"] is True
    assert task["message"] == "timed out after 0.3 s waiting"
    assert answer(n, run_id, "ask", "approve").status == 409


def test_killing_a_waiting_task_cancels_it(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"listen.yaml": EVENTS})
    run_id = n.trigger("listen")
    waiting(n, run_id, "paid")
    assert n.call("POST", f"/api/runs/{run_id}/tasks/paid/kill").status == 200
    assert n.task(run_id, "paid")["status"] == "cancelled"
    assert n.get(f"/api/runs/{run_id}/tasks/paid/attempts")[0]["status"] == "cancelled"
    assert n.call("POST", f"/api/events/payment-{run_id}", {"status": "paid", "amount": 99}).json[
        "matched"
    ] == [{"run_id": run_id, "task_id": "strict"}]  # (strict still waited; paid no longer)


def test_events_match_extract_and_bad_input(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"listen.yaml": EVENTS})
    run_id = n.trigger("listen")
    task = waiting(n, run_id, "paid")
    waiting(n, run_id, "strict")
    name = f"payment-{run_id}"
    assert task["waiting_for"]["event"] == name
    assert task["reason"].startswith(f"waiting for event '{name}' matching ")
    not_json = n.call("POST", f"/api/events/{name}", raw=b"{not json")
    assert not_json.status == 400
    assert "not valid JSON" in not_json.json["error"]["message"]
    assert n.call("POST", "/api/events/nobody-listens", {"x": 1}).json == {"matched": []}
    assert n.call("POST", "/api/events/-bad", {}).status == 400
    assert n.call("POST", f"/api/events/{name}", {"status": "open", "amount": 99}).json == {
        "matched": [{"run_id": run_id, "task_id": "strict"}]  # its match fails: it ends failed
    }
    strict = n.task(run_id, "strict")
    assert strict["status"] == "failed"
    assert strict["message"].startswith('match: .payload.amount | test("^[0-9]+$"): ')
    assert n.task(run_id, "paid")["status"] == "waiting"  # its match did not hold
    matched = n.call("POST", f"/api/events/{name}", {"status": "paid", "amount": 42}).json
    assert matched == {"matched": [{"run_id": run_id, "task_id": "paid"}]}
    paid = n.task(run_id, "paid")
    assert paid["outputs"] == {"AMOUNT": "42", "NOTE": ""}  # a missing field: empty
    assert n.wait_run(run_id)["status"] == "failed"  # (strict failed)
    assert n.log(run_id, "after") == "amount=42 note=[]\n"
    assert f"[nagare] event '{name}' arrived" in n.log(run_id, "paid")


def test_webhook_with_emit_event_resolves_waits(nagare_factory: Callable[..., Nagare]) -> None:
    hook = """
    id: ci_hook
    trigger:
      type: webhook
      path: /api/webhooks/ci
      secret: s3cret
      emit_event: ci-done
    tasks:
      - id: unused
        command: "true"
    """
    waiter = """
    id: deploy
    tasks:
      - id: ci
        type: wait
        event: ci-done
        match: .payload.ref == "main"
        output_jq: {SHA: .sha}
      - id: go
        depends_on: [ci]
        command: echo "deploying $SHA"
    """
    n = nagare_factory(dags={"hook.yaml": hook, "deploy.yaml": waiter})
    run_id = n.trigger("deploy")
    waiting(n, run_id, "ci")
    body = json.dumps({"ref": "main", "sha": "abc123"}).encode()
    signature = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json"}
    forged = n.call(
        "POST",
        "/api/webhooks/ci",
        raw=body,
        headers={**headers, "X-Hub-Signature-256": "sha256=00"},
    )
    assert forged.status == 403
    assert n.task(run_id, "ci")["status"] == "waiting"
    delivered = n.call(
        "POST", "/api/webhooks/ci", raw=body, headers={**headers, "X-Hub-Signature-256": signature}
    )
    assert delivered.status == 202, delivered.body
    assert delivered.json == {"matched": [{"run_id": run_id, "task_id": "ci"}]}
    assert n.wait_run(run_id)["status"] == "success"
    assert n.log(run_id, "go") == "deploying abc123\n"
    assert n.get("/api/runs?dag_id=ci_hook")["total"] == 0  # it started no run


def test_emit_event_trigger_load_errors() -> None:
    from nagare.dagfile import parse_dag

    text = """
id: h
trigger: {type: webhook, path: /api/webhooks/h, emit_event: "bad name", extract_payload: {A: .a}}
tasks:
  - {id: t, command: "true"}
  - {id: w, type: wait, event: "no spaces please"}
"""
    _, errors = parse_dag(text, "h.yaml")
    found = {e.field: e.message for e in errors}
    assert "not a valid event name" in found["trigger.emit_event"]
    assert "starts no run" in found["trigger.extract_payload"]
    assert "not a valid event name" in found["tasks[1] (w).event"]


def test_approval_as_a_failure_handler(nagare_factory: Callable[..., Nagare]) -> None:
    dag = """
    id: oncall
    handler_on:
      failure:
        type: approval
        message: "{{ .dag.id }} failed: acknowledge?"
    tasks:
      - id: boom
        command: exit 3
    """
    n = nagare_factory(dags={"oncall.yaml": dag})
    run_id = n.trigger("oncall")
    handler = waiting(n, run_id, "on_failure")
    assert handler["waiting_for"]["message"] == "oncall failed: acknowledge?"
    run = n.get(f"/api/runs/{run_id}")
    assert run["status"] == "failed" and run["handlers_running"] is True
    assert answer(n, run_id, "on_failure", "approve", by="oncall").status == 200
    wait_for(lambda: not n.get(f"/api/runs/{run_id}").get("handlers_running"), 10)
    assert n.task(run_id, "on_failure")["status"] == "success"


def test_waiting_takes_no_slot(nagare_factory: Callable[..., Nagare], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    dag = f"""
    id: busy
    tasks:
      - id: long
        command: "while [ ! -f {gate} ]; do sleep 0.05; done"
      - id: ask
        type: approval
      - id: ev
        type: wait
        event: busy-go
    """
    n = nagare_factory(dags={"busy.yaml": dag}, worker_pools={"default": 1})
    run_id = n.trigger("busy")
    waiting(n, run_id, "ask")
    waiting(n, run_id, "ev")
    assert n.task(run_id, "long")["status"] == "running"
    pools = {p["pool"]: p for p in n.get("/api/pools")}
    assert pools["default"]["running"] == 1 and pools["default"]["busy_slots"] == 1
    assert "~engine" not in pools
    assert answer(n, run_id, "ask", "approve").status == 200  # while the only slot is busy
    assert n.call("POST", "/api/events/busy-go").json["matched"] == [
        {"run_id": run_id, "task_id": "ev"}
    ]
    assert n.task(run_id, "long")["status"] == "running"
    gate.touch()
    assert n.wait_run(run_id)["status"] == "success"


def test_runs_filter_waiting_for_approval(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"release.yaml": APPROVAL, "listen.yaml": EVENTS})
    asking = n.trigger("release")
    listening = n.trigger("listen")
    waiting(n, asking, "ask")
    waiting(n, listening, "paid")
    page = n.get("/api/runs?waiting=approval")
    assert [r["run_id"] for r in page["data"]] == [asking] and page["total"] == 1
    assert [r["run_id"] for r in n.get("/api/runs?waiting=wait")["data"]] == [listening]
    assert n.get("/api/runs?waiting=approval&dag_id=listen")["total"] == 0
    bad = n.call("GET", "/api/runs?waiting=person")
    assert bad.status == 400 and "must be one of approval, dag, wait" in bad.text
    answer(n, asking, "ask", "approve", by="bob")
    waiting(n, asking, "later")  # the next approval of the run
    assert n.get("/api/runs?waiting=approval")["total"] == 1
    answer(n, asking, "later", "approve")
    assert n.get("/api/runs?waiting=approval")["total"] == 0


def test_example_dags_run(nagare_factory: Callable[..., Nagare]) -> None:
    names = ("approval_example.yaml", "wait_example.yaml", "upload_webhook_example.yaml")
    n = nagare_factory(dags={name: (ROOT / "dags" / name).read_text() for name in names})
    approval = n.trigger("approval_example")
    task = waiting(n, approval, "approve_release")
    assert task["waiting_for"]["message"] == (
        f"Release of run {approval} (3 fixes, 1 feature) to production?"
    )
    assert answer(n, approval, "approve_release", "approve", by="alice", comment="ok").status == 200
    assert n.wait_run(approval)["status"] == "success"
    assert n.log(approval, "release").startswith("released 1.4.2, approved by alice at 20")
    run_id = n.trigger("wait_example")
    waiting(n, run_id, "wait_for_upload")
    from test_cli_client import ok

    out = ok("emit", f"upload-{run_id}", "--data", '{"file": "report.csv", "rows": 3}', api=n.url)
    assert out.startswith(f"Event upload-{run_id} resolved 1 waiting task:")
    assert n.wait_run(run_id)["status"] == "success"
    assert n.log(run_id, "process") == "processing report.csv (3 rows)\n"
    hooked = n.trigger("upload_webhook_example")  # released by a webhook with emit_event
    waiting(n, hooked, "wait_for_upload")
    other = n.call("POST", "/api/webhooks/uploads", {"run": "another run", "file": "x.csv"})
    assert (other.status, other.json["matched"]) == (202, [])
    sent = n.call("POST", "/api/webhooks/uploads", {"run": hooked, "file": "report.csv"})
    assert sent.status == 202
    assert sent.json["matched"] == [{"run_id": hooked, "task_id": "wait_for_upload"}]
    assert n.wait_run(hooked)["status"] == "success"
    assert n.log(hooked, "process") == "processing report.csv\n"


# ---------------------------------------------------------------- restarts (a real process)


@pytest.mark.slow
def test_approval_and_event_survive_a_restart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    server.dag("release.yaml", APPROVAL)
    server.dag("listen.yaml", EVENTS)
    server.start()
    try:
        asking = server.post("/api/dags/release/runs").json["run_id"]
        listening = server.post("/api/dags/listen/runs").json["run_id"]
        for run_id, task_id in ((asking, "ask"), (listening, "paid")):
            wait_for(lambda r=run_id, t=task_id: server.task(r, t)["status"] == "waiting", 15)
        server.signal(15)
        server.start()  # the same database: both still wait
        assert server.task(asking, "ask")["status"] == "waiting"
        assert server.task(listening, "paid")["status"] == "waiting"
        result = server.post(f"/api/runs/{asking}/tasks/ask/approve", {"by": "bob"})
        assert result.status == 200 and result.json["status"] == "success"
        waiting_later = lambda: server.task(asking, "later")["status"] == "waiting"  # noqa: E731
        wait_for(waiting_later, 15)
        server.stop()  # kill -9 this time
        server.start()
        assert server.post(f"/api/runs/{asking}/tasks/later/approve").status == 200
        assert server.wait_run(asking)["status"] == "success"
        event = {"status": "paid", "amount": 11, "note": "after restarts"}
        matched = server.post(f"/api/events/payment-{listening}", event).json["matched"]
        assert {"run_id": listening, "task_id": "paid"} in matched
        wait_for(lambda: server.task(listening, "after")["status"] == "success", 15)
        assert server.task(listening, "paid")["outputs"]["NOTE"] == "after restarts"
    finally:
        server.stop()
