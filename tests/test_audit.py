"""The audit log end to end: a real server on port 0 records every state-changing action with
who, from where, on what and how it ended (refused attempts too); `GET /api/audit` filters and
pages it; `nagare audit` shows it; retention deletes old entries; no secret ever lands in it; a
failed audit write never changes an action's answer."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nagare.access import Permission
from nagare.http.routing import ANY
from nagare.logs import LogFiles
from nagare.retention import RetentionSweep
from nagare.store import AuditEntry, StorageFull, Store
from tests.conftest import Nagare, http, pythonpath_env, wait_for

KEY = "planted-audit-key-7c6b5a"
HOOK_SECRET = "planted-audit-hook-secret-3e4f"
PARAM_SECRET = "planted-audit-param-secret-9d8c"
PAYLOAD_SECRET = "planted-audit-payload-secret-1a2b"
WRONG_KEY = "planted-audit-wrong-key-6f5e"
DAY_MS = 86_400_000

HELLO = """
    id: hello
    tasks:
      - id: say
        command: echo hello
"""
SLOW = """
    id: slow
    tasks:
      - id: sleeper
        command: sleep 30
"""
FAILING = """
    id: failing
    tasks:
      - id: boom
        command: exit 1
"""
GATE = """
    id: gate
    tasks:
      - id: ask
        type: approval
        message: ship it?
        approvers: [alice]
"""
WAITER = """
    id: waiter
    tasks:
      - id: hold
        type: wait
        event: go
"""
NIGHTLY = """
    id: nightly
    schedule: "0 3 * * *"
    tasks:
      - id: a
        command: "true"
"""
HOOK = f"""
    id: hooked
    trigger:
      type: webhook
      path: /api/webhooks/planted
      secret: "{HOOK_SECRET}"
    tasks:
      - id: show
        command: "true"
"""
MADE = "id: made\ntasks:\n  - id: a\n    command: 'true'\n"
DAGS = {
    "hello.yaml": HELLO,
    "slow.yaml": SLOW,
    "failing.yaml": FAILING,
    "gate.yaml": GATE,
    "waiter.yaml": WAITER,
    "nightly.yaml": NIGHTLY,
    "hook.yaml": HOOK,
}
# POST routes that change nothing, and why they are not audited
UNAUDITED = {
    ("POST", "/api/dags/validate"): "checks a text, loads and writes nothing",
}
SAMPLES = {
    "dag_id": "hello",
    "run_id": "hello__manual__x",
    "task_id": "say",
    "file": "absent.yaml",
    "name": "sample-event",
    "webhook_path": "absent",
    "user_name": "nobody",
    "key_id": "k_000000000000",
}


@pytest.fixture
def keyed(nagare_factory: Callable[..., Nagare]) -> Nagare:
    return nagare_factory(DAGS, api_key=KEY)


def audit(server: Nagare, query: str = "") -> dict[str, Any]:
    return server.get("/api/audit" + query)  # type: ignore[no-any-return]


def entries(server: Nagare, query: str = "") -> list[dict[str, Any]]:
    return audit(server, query)["data"]  # type: ignore[no-any-return]


def last(server: Nagare, action: str) -> dict[str, Any]:
    """The newest entry of `action`."""
    found = entries(server, f"?action={action}&limit=1")
    assert found, f"no audit entry for {action}"
    return found[0]


def post(server: Nagare, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
    result = server.call("POST", path, body, **kw)
    assert result.status == status, (path, result.status, result.body)
    return result.json


def task_status(server: Nagare, run_id: str, task_id: str, *wanted: str) -> None:
    wait_for(
        lambda: server.task(run_id, task_id)["status"] in wanted,
        message=f"{run_id}/{task_id} to be {' or '.join(wanted)}",
    )


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def concrete(path: str) -> str:
    for name, value in SAMPLES.items():
        path = path.replace("{" + name + "...}", value).replace("{" + name + "}", value)
    return path


# ---------------------------------------------------------------- the API


def test_an_action_is_recorded_with_who_when_where_what_and_how(keyed: Nagare) -> None:
    run_id = keyed.trigger("hello")
    [entry] = entries(keyed)
    assert entry["actor"] == "api-key"
    assert entry["action"] == "dag.trigger"
    assert entry["target"] == "dag:hello"
    assert entry["address"] == "127.0.0.1"
    assert entry["outcome"] == "ok"
    assert entry["at"].endswith("Z")
    assert entry["detail"] == f"run_id={run_id}"
    assert isinstance(entry["id"], int)


def test_the_audit_log_needs_credentials(keyed: Nagare) -> None:
    result = http("GET", keyed.url + "/api/audit")
    assert result.status == 401
    assert result.json["error"]["code"] == "unauthorized"


def test_filters_and_paging(keyed: Nagare) -> None:
    keyed.trigger("hello")
    post(keyed, "/api/dags/hello/pause")
    post(keyed, "/api/dags/hello/activate")
    post(keyed, "/api/dags/nope/pause", status=404)
    everything = audit(keyed)
    assert everything["total"] == 4
    actions = [e["action"] for e in everything["data"]]
    assert actions == ["dag.pause", "dag.activate", "dag.pause", "dag.trigger"]  # newest first
    assert [e["action"] for e in entries(keyed, "?action=dag.pause")] == ["dag.pause"] * 2
    assert len(entries(keyed, "?action=dag.")) == 4  # a family
    assert entries(keyed, "?action=dag") == []  # not a family: no such action
    assert entries(keyed, "?action=run.") == []
    assert [e["target"] for e in entries(keyed, "?outcome=not_found")] == ["dag:nope"]
    assert len(entries(keyed, "?target=dag:hello")) == 3
    assert len(entries(keyed, "?actor=api-key")) == 4
    assert entries(keyed, "?actor=someone") == []
    page = audit(keyed, "?limit=3&page=2")
    assert (page["total"], page["page"], page["limit"]) == (4, 2, 3)
    assert [e["action"] for e in page["data"]] == ["dag.trigger"]
    assert audit(keyed, "?page=9")["data"] == []
    oldest, newest = everything["data"][-1]["at"], everything["data"][0]["at"]
    assert len(entries(keyed, f"?since={oldest}")) == 4
    assert entries(keyed, f"?until={oldest}") == []
    assert entries(keyed, f"?since={newest}&until=2999-01-01")[0] == everything["data"][0]
    assert entries(keyed, "?since=2999-01-01T00:00:00Z") == []
    combined = entries(keyed, "?action=dag.pause&outcome=ok&target=dag:hello")
    assert [e["outcome"] for e in combined] == ["ok"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?bogus=1", 422),
        ("?actor=a&Actor=b", 422),
        ("?since=yesterday", 400),
        ("?until=2026-13-01", 400),
        ("?limit=0", 400),
        ("?limit=501", 400),
        ("?page=x", 400),
        ("?page=0", 400),
        ("?actor=" + "a" * 201, 400),
    ],
)
def test_a_bad_query_is_refused_with_the_error_shape(
    keyed: Nagare, query: str, status: int
) -> None:
    result = keyed.call("GET", "/api/audit" + query)
    assert result.status == status, result.body
    assert set(result.json["error"]) == {"code", "message"}


# ---------------------------------------------------------------- every action


def test_every_state_changing_route_declares_an_audit_action(keyed: Nagare) -> None:
    for route in keyed.app.api.router.routes:
        if route.method in ("GET", "HEAD") or route.permission == Permission.CLUSTER:
            continue  # reads, and the workers' protocol (leases, not users' actions)
        where = (route.method, route.path)
        assert route.action or where in UNAUDITED, f"{where} changes state but has no action"


def test_calling_each_route_with_an_action_records_one_entry(keyed: Nagare) -> None:
    """Walks the whole route table: whatever routes exist (users, keys, sign-in included), each
    one with an action leaves exactly one entry with its outcome, whichever way it ends."""
    routes = [r for r in keyed.app.api.router.routes if r.action]
    assert len(routes) >= 14
    for route in routes:
        before = audit(keyed, f"?action={route.action}")["total"]
        method = "POST" if route.method == ANY else route.method
        result = keyed.call(method, concrete(route.path), headers={"Accept": "application/json"})
        found = audit(keyed, f"?action={route.action}")
        assert found["total"] == before + 1, (route.path, result.status, result.body)
        entry = found["data"][0]
        expected = "ok" if result.status < 400 else result.json["error"]["code"]
        assert entry["outcome"] == expected, (route.path, entry)
        assert entry["address"] == "127.0.0.1"
        if route.permission == Permission.WEBHOOK:
            assert entry["actor"] == f"webhook:{concrete(route.path)}", entry
        elif route.permission != Permission.OPEN:  # (a sign-in's actor is the name it tried)
            assert entry["actor"] == "api-key", entry


def test_each_action_is_recorded_with_its_target_and_detail(keyed: Nagare) -> None:
    # trigger, pause, activate
    run_id = keyed.trigger("hello")
    assert last(keyed, "dag.trigger")["detail"] == f"run_id={run_id}"
    post(keyed, "/api/dags/hello/pause")
    post(keyed, "/api/dags/hello/activate")
    assert last(keyed, "dag.pause")["target"] == last(keyed, "dag.activate")["target"]
    # kill a task, kill a run
    first, second = keyed.trigger("slow"), keyed.trigger("slow")
    task_status(keyed, first, "sleeper", "running")
    post(keyed, f"/api/runs/{first}/tasks/sleeper/kill")
    assert last(keyed, "task.kill")["target"] == f"task:{first}/sleeper"
    post(keyed, f"/api/runs/{second}/kill")
    assert last(keyed, "run.kill")["target"] == f"run:{second}"
    # retry a task, retry a run
    failed = keyed.trigger("failing")
    keyed.wait_run(failed)
    post(keyed, f"/api/runs/{failed}/tasks/boom/retry")
    assert last(keyed, "task.retry")["target"] == f"task:{failed}/boom"
    keyed.wait_run(failed)
    wait_for(lambda: keyed.task(failed, "boom")["attempt"] == 2 and keyed.wait_run(failed))
    post(keyed, f"/api/runs/{failed}/retry")
    assert last(keyed, "run.retry")["target"] == f"run:{failed}"
    # approve, reject (a refused answer too), with a capped comment
    asked, asked_again = keyed.trigger("gate"), keyed.trigger("gate")
    task_status(keyed, asked, "ask", "waiting")
    comment = "looks good\n" + "x" * 300
    post(keyed, f"/api/runs/{asked}/tasks/ask/approve", {"by": "alice", "comment": comment})
    approved = last(keyed, "task.approve")
    assert approved["target"] == f"task:{asked}/ask"
    assert approved["detail"].startswith('by=alice comment="looks good xxx')
    assert approved["detail"].endswith('..."') and len(approved["detail"]) < 230
    task_status(keyed, asked_again, "ask", "waiting")
    post(keyed, f"/api/runs/{asked_again}/tasks/ask/reject", {"by": "mallory"}, status=403)
    refused = last(keyed, "task.reject")
    assert (refused["outcome"], refused["detail"]) == ("forbidden", "by=mallory")
    post(keyed, f"/api/runs/{asked_again}/tasks/ask/reject", {"by": "alice"})
    assert last(keyed, "task.reject")["outcome"] == "ok"
    # emit an event
    held = keyed.trigger("waiter")
    task_status(keyed, held, "hold", "waiting")
    post(keyed, "/api/events/go", {"n": 1})
    emitted = last(keyed, "event.emit")
    assert (emitted["target"], emitted["detail"]) == ("event:go", f"matched={held}/hold")
    # backfill
    post(keyed, "/api/dags/nightly/backfill", {"start": "2026-11-01", "end": "2026-11-03"}, 201)
    assert last(keyed, "dag.backfill")["detail"] == (
        "start=2026-11-01T00:00:00.000Z end=2026-11-03T00:00:00.000Z runs=2"
    )
    # DAG create, save, delete
    made = post(keyed, "/api/dags", {"text": MADE}, 201)
    created = last(keyed, "dag.create")
    assert created["target"] == "file:made.yaml"
    assert created["detail"] == f"file=made.yaml version={made['version']} dag_id=made"
    saved = keyed.call(
        "PUT",
        "/api/dag-files/made.yaml",
        {"text": MADE + "description: again\n", "version": made["version"]},
    ).json
    assert last(keyed, "dag.save")["detail"] == (
        f"file=made.yaml version={saved['version']} dag_id=made"
    )
    result = keyed.call("DELETE", f"/api/dag-files/made.yaml?version={saved['version']}")
    assert result.status == 200
    deleted = last(keyed, "dag.delete")
    assert (deleted["target"], deleted["detail"]) == (
        "file:made.yaml",
        f"version={saved['version']}",
    )
    # git sync (off here: refused with 409, recorded as such)
    post(keyed, "/api/git/sync", status=409)
    assert (last(keyed, "git.sync")["outcome"], last(keyed, "git.sync")["target"]) == (
        "conflict",
        "",
    )
    assert {e["actor"] for e in entries(keyed, "?limit=500")} == {"api-key"}
    assert {e["address"] for e in entries(keyed, "?limit=500")} == {"127.0.0.1"}


def test_a_webhook_is_recorded_as_its_path_refused_or_not(keyed: Nagare) -> None:
    body = json.dumps({"who": PAYLOAD_SECRET}).encode()
    hook = keyed.url + "/api/webhooks/planted"
    answer = http("POST", hook, raw=body, headers={"X-Hub-Signature-256": sign(body, HOOK_SECRET)})
    assert answer.status == 202
    for wrong in (sign(body, "not-the-secret"), ""):
        headers = {"X-Hub-Signature-256": wrong} if wrong else {}
        assert http("POST", hook, raw=body, headers=headers).status == 403
    assert http("POST", keyed.url + "/api/webhooks/nothing-here", raw=body).status == 404
    found = entries(keyed, "?action=webhook.receive")
    assert [e["outcome"] for e in found] == ["not_found", "forbidden", "forbidden", "ok"]
    assert [e["actor"] for e in found] == [
        "webhook:/api/webhooks/nothing-here",
        *["webhook:/api/webhooks/planted"] * 3,
    ]
    assert found[-1]["target"] == "webhook:planted"
    assert found[-1]["detail"] == f"run_id={answer.json['run_id']}"
    assert entries(keyed, "?actor=webhook:/api/webhooks/planted&outcome=forbidden")[0] == found[1]


def test_refused_attempts_are_recorded(keyed: Nagare) -> None:
    anonymous = http("POST", keyed.url + "/api/dags/hello/pause")
    wrong = http(
        "POST", keyed.url + "/api/runs/x/kill", headers={"Authorization": f"Bearer {WRONG_KEY}"}
    )
    assert (anonymous.status, wrong.status) == (401, 401)
    found = entries(keyed, "?outcome=unauthorized")
    assert [(e["action"], e["target"], e["actor"]) for e in found] == [
        ("run.kill", "run:x", "anonymous"),
        ("dag.pause", "dag:hello", "anonymous"),
    ]
    assert keyed.get("/api/dags/hello")["paused"] is False  # nothing happened


def test_without_a_key_the_actor_is_anonymous(nagare_factory: Callable[..., Nagare]) -> None:
    open_server = nagare_factory({"hello.yaml": HELLO})
    run_id = open_server.trigger("hello")
    [entry] = entries(open_server)
    assert (entry["actor"], entry["action"], entry["outcome"]) == ("anonymous", "dag.trigger", "ok")
    assert entry["detail"] == f"run_id={run_id}"


# ---------------------------------------------------------------- the command line


def nagare_cli(server: Nagare, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", *args, "--api", server.url, "--api-key", KEY],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_lines_actions_are_recorded_and_listed(keyed: Nagare) -> None:
    assert nagare_cli(keyed, "trigger", "hello").returncode == 0
    assert nagare_cli(keyed, "pause", "hello").returncode == 0
    run_id = last(keyed, "dag.trigger")["detail"].split()[0].removeprefix("run_id=")
    keyed.wait_run(run_id)
    assert nagare_cli(keyed, "kill", run_id).returncode == 1  # finished: 409
    found = entries(keyed)
    assert [(e["action"], e["actor"], e["outcome"]) for e in found] == [
        ("run.kill", "api-key", "conflict"),
        ("dag.pause", "api-key", "ok"),
        ("dag.trigger", "api-key", "ok"),
    ]
    assert all(e["detail"].endswith("via=cli") for e in found)
    listed = nagare_cli(keyed, "audit", "--json", "--action", "dag.", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert (page["total"], page["limit"], page["data"][0]["action"]) == (2, 1, "dag.pause")
    table = nagare_cli(keyed, "audit", "--outcome", "ok", "--since", "1h")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "ADDRESS"]
    assert lines[1].split()[2:] == ["api-key", "dag.pause", "dag:hello", "ok", "127.0.0.1"]
    assert lines[-1] == "entries 1-2 of 2"
    assert nagare_cli(keyed, "audit", "--until", "2000-01-01").stdout.strip() == "entries none of 0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "expected an ISO 8601 time"),
        (("--limit", "501"), "expected at most 500"),
        (("--page", "0"), "expected a number of at least 1"),
    ],
)
def test_the_audit_verb_refuses_bad_flags(
    keyed: Nagare, args: tuple[str, ...], message: str
) -> None:
    done = nagare_cli(keyed, "audit", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_the_audit_verb_needs_the_key(keyed: Nagare) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nagare", "audit", "--api", keyed.url],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "missing API key" in done.stderr


# ---------------------------------------------------------------- retention


def plant_entries(store: Store, now: int, ages_days: list[float]) -> None:
    for age in ages_days:
        store.audit.record(AuditEntry(at=now - int(age * DAY_MS), actor="a", action="dag.pause"))


def audit_times(store: Store) -> list[int]:
    with store.db.read() as conn:
        return [r[0] for r in conn.execute("SELECT at FROM audit_log ORDER BY at")]


def test_retention_deletes_old_entries_in_bounded_batches(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "nagare.db"))
    now = 1_800_000_000_000
    plant_entries(store, now, [40, 35, 31, 30.5, 29, 1])
    logs = LogFiles(str(tmp_path / "logs"))
    sweep = RetentionSweep(store, logs, 30, clock=lambda: now, audit_batch=3)
    assert [sweep.sweep_once(now).audit for _ in range(3)] == [3, 1, 0]
    assert audit_times(store) == [now - 29 * DAY_MS, now - DAY_MS]
    assert (
        RetentionSweep(store, logs, 0, clock=lambda: now).sweep_once(now + 99 * DAY_MS).audit == 0
    )
    assert len(audit_times(store)) == 2  # retention_days 0 keeps everything
    store.close()


def test_cleanup_deletes_old_entries_too(tmp_path: Path) -> None:
    from nagare.clock import now_ms

    store = Store(str(tmp_path / "nagare.db"))
    plant_entries(store, now_ms(), [50, 45, 40, 2])
    store.close()

    def cleanup(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nagare", "cleanup", "--older-than", "30d", *args],
            cwd=tmp_path,
            env=pythonpath_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    dry = cleanup("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1].endswith("; 3 audit log entries")
    done = cleanup()
    assert done.returncode == 0, done.stderr
    assert "deleted 0 runs, 0 task instances, 0 attempts; 3 audit log entries" in done.stdout
    store = Store(str(tmp_path / "nagare.db"))
    assert len(audit_times(store)) == 1
    store.close()


# ---------------------------------------------------------------- secrets


def test_planted_secrets_never_reach_the_audit_log(keyed: Nagare) -> None:
    keyed.trigger("hello", {"PASSWORD": PARAM_SECRET})
    keyed.call("POST", "/api/dags/hello/runs", {"params": {"PASSWORD": PARAM_SECRET}})
    post(keyed, "/api/dags/hello/runs", {PARAM_SECRET: 1}, status=400)
    post(keyed, "/api/events/go", {"token": PAYLOAD_SECRET})
    body = json.dumps({"secret": PAYLOAD_SECRET}).encode()
    hook = keyed.url + "/api/webhooks/planted"
    for secret in (HOOK_SECRET, WRONG_KEY):
        http("POST", hook, raw=body, headers={"X-Hub-Signature-256": sign(body, secret)})
    http(
        "POST",
        keyed.url + "/api/dags/hello/pause",
        headers={"Authorization": f"Bearer {WRONG_KEY}"},
    )
    answer = keyed.call("GET", "/api/audit?limit=500")
    assert answer.json["total"] == 7
    planted = (KEY, HOOK_SECRET, PARAM_SECRET, PAYLOAD_SECRET, WRONG_KEY)
    for secret in planted:
        assert secret not in answer.text
    db = keyed.root / "nagare.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT * FROM audit_log").fetchall()
    assert len(rows) == 7
    for secret in planted:
        assert secret not in repr(rows)
    files = b"".join(p.read_bytes() for p in keyed.root.glob("nagare.db*"))
    for secret in (KEY, WRONG_KEY):  # stored nowhere, in no table, page or WAL frame
        assert secret.encode() not in files


# ---------------------------------------------------------------- a failed write


def _pack_database(server: Nagare) -> None:
    """No free page left (SQLite's max_page_count) and the audit log's pages full: the next
    audit entry cannot be written."""
    store = server.app.store
    writer = store.db._writer
    writer.execute(f"PRAGMA max_page_count={writer.execute('PRAGMA page_count').fetchone()[0]}")
    for size in (2000, 500, 100, 20, 0):
        with contextlib.suppress(StorageFull):
            while True:
                store.audit.record(AuditEntry(at=1, actor="a", action="x", detail="d" * size))


def test_a_full_database_never_changes_an_actions_answer(
    keyed: Nagare, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="nagare.http")
    _pack_database(keyed)
    before = audit(keyed)["total"]
    killed = keyed.call("POST", "/api/runs/hello__manual__x/kill")
    assert (killed.status, killed.json["error"]["code"]) == (404, "not_found")
    synced = keyed.call("POST", "/api/git/sync")
    assert (synced.status, synced.json["error"]["code"]) == (409, "conflict")
    assert "could not record run.kill by api-key in the audit log" in caplog.text
    keyed.app.store.db._writer.execute("PRAGMA max_page_count=1073741823")
    assert audit(keyed)["total"] == before  # nothing recorded, nothing half-written
    with keyed.app.store.db.read() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    post(keyed, "/api/dags/hello/pause")
    assert last(keyed, "dag.pause")["outcome"] == "ok"


def test_a_failing_audit_write_never_undoes_a_done_action(
    keyed: Nagare, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="nagare.http")
    with keyed.app.store.db.write() as conn:  # every audit insert fails; other writes work
        conn.execute(
            "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    run_id = keyed.trigger("hello")
    assert keyed.wait_run(run_id)["status"] == "success"
    assert "could not record dag.trigger by api-key in the audit log" in caplog.text
    with keyed.app.store.db.write() as conn:
        conn.execute("DROP TRIGGER audit_fails")
    assert audit(keyed)["total"] == 0
    keyed.trigger("hello")
    assert audit(keyed)["total"] == 1
