"""Webhook triggers: HMAC, jq extraction, every error path, de-duplication, load."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nagare.dagfile import parse_dag
from nagare.models import TriggerDef
from nagare.webhooks import compile_errors, extract, signature_ok, stringify
from tests.conftest import ROOT, Nagare, http, wait_for

SECRET = "s3cr3t-webhook-value"
GITHUB_PUSH = {
    "ref": "refs/heads/main",
    "pusher": {"name": "octocat", "email": "octo@example.com"},
    "head_commit": {"id": "6dcb09b5b57875f334f61aebed695e2e4193db5e", "message": "Fix"},
    "commits": [{"id": "a"}, {"id": "b"}],
    "repository": {"full_name": "octo/hello", "private": False, "stars": 12.0},
}

SIGNED = f"""
    id: hook
    schedule: workflow_dispatch
    trigger:
      type: webhook
      path: /api/webhooks/build
      method: post
      secret: "{SECRET}"
      extract_payload:
        AUTHOR: ".pusher.name"
        COUNT: ".commits | length"
        PRIVATE: ".repository.private"
        STARS: ".repository.stars"
        MISSING: ".nothing"
        FIRST: ".commits[0]"
        BAD: ".ref.deep"
    tasks:
      - id: show
        command: 'echo "A=$AUTHOR C=$COUNT P=$PRIVATE S=$STARS F=$FIRST M=[$MISSING]"'
"""

OPEN = """
    id: open_hook
    schedule: workflow_dispatch
    trigger:
      type: webhook
      path: /api/webhooks/open/deep/path
      method: PUT
      extract_payload: {N: ".n"}
    tasks:
      - id: t
        command: 'echo "N=$N"'
"""


def sign(body: bytes, secret: str = SECRET, prefix: str = "sha256=") -> str:
    return prefix + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(
    n: Nagare, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
) -> Any:
    return http(
        method,
        n.url + path,
        raw=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


@pytest.fixture
def hooks(nagare_factory: Any) -> Nagare:
    return nagare_factory(dags={"hook.yaml": SIGNED, "open.yaml": OPEN}, api_key="the-api-key")


def test_seed_webhook_demo_end_to_end_with_github_payload(
    nagare_factory: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("NAGARE_GITHUB_WEBHOOK_SECRET", SECRET)
    dags = {"webhook_example.yaml": (ROOT / "dags" / "webhook_example.yaml").read_text()}
    n = nagare_factory(dags=dags)
    body = json.dumps(GITHUB_PUSH).encode()
    result = post(
        n,
        "/api/webhooks/github",
        body,
        {"X-Hub-Signature-256": sign(body), "X-GitHub-Event": "push"},
    )
    assert result.status == 202, result.body
    run_id = result.json["run_id"]
    run = n.wait_run(run_id)
    assert run["status"] == "success"
    assert run["trigger"] == "webhook"
    assert run["conf"] == {
        "COMMIT_AUTHOR": "octocat",
        "COMMIT_HASH": GITHUB_PUSH["head_commit"]["id"],
    }
    log = n.log(run_id, "print_payload")
    assert "Author: octocat" in log and "Commit: 6dcb09b5" in log
    assert n.get("/api/runs?trigger=webhook")["total"] == 1
    # the secret is not in the task's environment
    assert SECRET not in n.log(run_id, "print_payload")


def test_signed_webhook_extracts_values_and_reports_runtime_errors(hooks: Nagare) -> None:
    body = json.dumps(GITHUB_PUSH).encode()
    started = time.monotonic()
    result = post(
        hooks, "/api/webhooks/build", body, {"X-Hub-Signature-256": sign(body, prefix="")}
    )
    assert result.status == 202, result.body
    assert time.monotonic() - started < 1.0
    assert set(result.json) == {"run_id"}
    run = hooks.wait_run(result.json["run_id"])
    conf = run["conf"]
    assert conf["AUTHOR"] == "octocat"
    assert conf["COUNT"] == "2"
    assert conf["PRIVATE"] == "false"
    assert conf["STARS"] == "12"
    assert conf["MISSING"] == ""
    assert conf["FIRST"] == '{"id":"a"}'
    assert conf["BAD"] == ""
    assert "BAD: jq expression '.ref.deep' failed" in conf["NAGARE_WEBHOOK_ERRORS"]
    assert run["trigger"] == "webhook"
    log = hooks.log(run["run_id"], "show")
    assert 'A=octocat C=2 P=false S=12 F={"id":"a"} M=[]' in log


def test_signature_errors(hooks: Nagare) -> None:
    body = json.dumps(GITHUB_PUSH).encode()
    missing = post(hooks, "/api/webhooks/build", body)
    assert missing.status == 403 and missing.json["error"]["message"] == "missing signature"
    for bad in (sign(body, "wrong"), "sha256=", "sha1=abc", sign(body + b" ")):
        result = post(hooks, "/api/webhooks/build", body, {"X-Hub-Signature-256": bad})
        assert result.status == 403, bad
        assert result.json["error"]["message"] in ("invalid signature", "missing signature")
        assert SECRET not in result.text
    # verified before parsing: a bad signature on bad JSON is a 403, not a 400
    assert (
        post(hooks, "/api/webhooks/build", b"{nope", {"X-Hub-Signature-256": "sha256=00"}).status
        == 403
    )
    assert hooks.get("/api/runs")["total"] == 0


def test_error_paths(hooks: Nagare) -> None:
    assert post(hooks, "/api/webhooks/nothing-here", b"{}").status == 404
    assert post(hooks, "/api/webhooks/build", b"{}", method="GET").status == 404  # wrong method
    bad = b"{not json"
    result = post(hooks, "/api/webhooks/build", bad, {"X-Hub-Signature-256": sign(bad)})
    assert result.status == 400 and "not valid JSON" in result.json["error"]["message"]
    assert _status_of_announced_body(hooks, "/api/webhooks/build", 1024 * 1024 + 1) == 413
    fits = b'{"x": "' + b"a" * (1024 * 1024 - 20) + b'"}'
    assert (
        post(hooks, "/api/webhooks/build", fits, {"X-Hub-Signature-256": sign(fits)}).status == 202
    )
    # empty body allowed; method case-insensitive (DAG says PUT, query strings ignored)
    empty = post(hooks, "/api/webhooks/open/deep/path?source=ci", b"", method="PUT")
    assert empty.status == 202, empty.body
    assert hooks.wait_run(empty.json["run_id"])["conf"] == {"N": ""}
    # no API key needed, but the API itself still wants it
    assert http("GET", hooks.url + "/api/runs").status == 401


def test_paused_dag_answers_409(hooks: Nagare) -> None:
    assert hooks.call("POST", "/api/dags/open_hook/pause").status == 200
    result = post(hooks, "/api/webhooks/open/deep/path", b'{"n": 1}', method="PUT")
    assert result.status == 409 and result.json["error"]["message"].startswith("dag paused")
    hooks.call("POST", "/api/dags/open_hook/activate")
    assert post(hooks, "/api/webhooks/open/deep/path", b'{"n": 1}', method="PUT").status == 202


def test_delivery_id_deduplication(hooks: Nagare) -> None:
    body = b'{"n": 7}'
    first = post(hooks, "/api/webhooks/open/deep/path", body, {"X-GitHub-Delivery": "d-1"}, "PUT")
    again = post(hooks, "/api/webhooks/open/deep/path", body, {"X-GitHub-Delivery": "d-1"}, "PUT")
    other = post(hooks, "/api/webhooks/open/deep/path", body, {"X-GitHub-Delivery": "d-2"}, "PUT")
    assert first.status == again.status == other.status == 202
    assert first.json["run_id"] == again.json["run_id"] != other.json["run_id"]
    assert hooks.get("/api/runs")["total"] == 2


def test_secret_env_and_redaction(nagare_factory: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("NAGARE_TEST_HOOK_SECRET", SECRET)
    dag = """
        id: env_hook
        trigger: {type: webhook, path: /api/webhooks/env, secret_env: NAGARE_TEST_HOOK_SECRET}
        tasks:
          - id: t
            command: env
    """
    n = nagare_factory(dags={"e.yaml": dag})
    body = b'{"a": 1}'
    result = post(n, "/api/webhooks/env", body, {"X-Hub-Signature-256": sign(body)})
    assert result.status == 202
    run_id = result.json["run_id"]
    n.wait_run(run_id)
    assert "NAGARE_TEST_HOOK_SECRET" not in n.log(run_id, "t")
    dag_json = n.get("/api/dags/env_hook")
    assert dag_json["trigger"]["signed"] is True
    assert SECRET not in json.dumps(n.get("/api/dags"))
    monkeypatch.delenv("NAGARE_TEST_HOOK_SECRET")
    assert post(n, "/api/webhooks/env", body, {"X-Hub-Signature-256": sign(body)}).status == 403


def test_load_errors_for_bad_jq_and_duplicate_paths(nagare_factory: Any) -> None:
    bad_jq = """
        id: bad_jq
        trigger: {type: webhook, path: /api/webhooks/x, extract_payload: {A: ".a[["}}
        tasks: [{id: t, command: "true"}]
    """
    first = """
        id: first
        trigger: {type: webhook, path: /api/webhooks/same}
        tasks: [{id: t, command: "true"}]
    """
    second = first.replace("id: first", "id: second")
    n = nagare_factory(dags={"a_bad.yaml": bad_jq, "b_first.yaml": first, "c_second.yaml": second})
    errors = n.get("/api/dags/errors")
    assert "does not compile" in errors["a_bad.yaml"][0]
    assert "trigger.extract_payload.A" in errors["a_bad.yaml"][0]
    loaded = [d["dag_id"] for d in n.get("/api/dags")]
    assert loaded in (["first"], ["second"])  # the file loaded first keeps the path
    loser = "c_second.yaml" if loaded == ["first"] else "b_first.yaml"
    assert f"is already used by DAG '{loaded[0]}'" in errors[loser][0]


def test_validate_cli_reports_webhook_problems(tmp_path: Path) -> None:
    from nagare.cli import main

    (tmp_path / "a.yaml").write_text(
        "id: a\ntrigger: {type: webhook, path: /api/webhooks/p, extract_payload: {X: '..['}}\n"
        "tasks: [{id: t, command: 'true'}]\n"
    )
    same_path = "trigger: {type: webhook, path: /api/webhooks/q}\ntasks: [{id: t, command: 'x'}]\n"
    (tmp_path / "b.yaml").write_text("id: b\n" + same_path)
    (tmp_path / "c.yaml").write_text("id: c\n" + same_path)
    assert main(["validate", str(tmp_path)]) == 1


def test_pure_helpers() -> None:
    assert stringify("x") == "x"
    assert stringify(3.0) == "3" and stringify(3.5) == "3.5" and stringify(10**20) == str(10**20)
    assert stringify(True) == "true" and stringify(None) == ""
    assert stringify({"a": [1, 2]}) == '{"a":[1,2]}'
    conf, errors = extract({"A": ".a", "B": ".b.c", "E": "empty"}, {"a": [1], "b": 1})
    assert conf == {"A": "[1]", "B": "", "E": ""} and len(errors) == 1
    body = b"{}"
    assert signature_ok("k", sign(body, "k"), body)
    assert signature_ok("k", sign(body, "k", ""), body)
    assert not signature_ok("k", sign(body, "other"), body)
    dag, errs = parse_dag(
        "id: d\ntrigger: {type: webhook, path: /api/webhooks/d, extract_payload: {A: '.['}}\n"
        "tasks: [{id: t, command: 'true'}]\n",
        "d.yaml",
        extra_check=compile_errors,
    )
    assert dag is None and "does not compile" in str(errs[0])
    assert TriggerDef("webhook").signature_header == "X-Hub-Signature-256"


@pytest.mark.slow
def test_load_200_webhooks_from_20_clients(nagare_factory: Any) -> None:
    n = nagare_factory(dags={"open.yaml": OPEN}, worker_pools={"default": 8})

    def send(i: int) -> tuple[int, str]:
        result = post(
            n, "/api/webhooks/open/deep/path", json.dumps({"n": i}).encode(), method="PUT"
        )
        assert result.status == 202, result.body
        return i, result.json["run_id"]

    with ThreadPoolExecutor(20) as pool:
        sent = list(pool.map(send, range(200)))
    assert len({run_id for _, run_id in sent}) == 200
    for i, run_id in sent:
        assert n.get(f"/api/runs/{run_id}")["conf"] == {"N": str(i)}

    def all_done() -> bool:
        runs = n.get("/api/runs?limit=500")
        return runs["total"] == 200 and all(r["status"] == "success" for r in runs["data"])

    wait_for(all_done, timeout=60, message="200 webhook runs to finish")


def _status_of_announced_body(n: Nagare, path: str, length: int) -> int:
    """Announce a body of `length` bytes and read the answer before sending any of it."""
    with socket.create_connection(("127.0.0.1", n.app.port), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_a_delivery_id_is_remembered_for_24_hours(tmp_path: Path) -> None:
    from nagare.dag_folder import DagFolder
    from nagare.models import Run, RunStatus, Trigger
    from nagare.store import Store
    from nagare.webhooks import DEDUPE_WINDOW_MS, Delivery, WebhookService

    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "h.yaml").write_text(
        "id: h\ntrigger: {type: webhook, path: /api/webhooks/h}\ntasks: [{id: t, command: x}]\n"
    )
    folder = DagFolder(str(tmp_path / "dags"), extra_check=compile_errors)
    folder.scan()
    store = Store(str(tmp_path / "n.db"))
    now = [1_000_000_000_000]
    started: list[str] = []

    def start(dag_id: str, conf: dict[str, str]) -> Run:
        started.append(f"run{len(started)}")
        return Run(started[-1], dag_id, RunStatus.QUEUED, Trigger.WEBHOOK, now[0], conf, now[0])

    service = WebhookService(store, folder, start, clock=lambda: now[0])
    hit = Delivery("post", "/api/webhooks/h", {"x-github-delivery": "abc"}, b"")
    assert service.receive(hit) == "run0"
    now[0] += DEDUPE_WINDOW_MS - 1
    assert service.receive(hit) == "run0"
    now[0] += 2
    assert service.receive(hit) == "run1"  # older than 24 h: a new delivery
    assert service.receive(Delivery("POST", "/api/webhooks/h", {}, b"")) == "run2"
    store.close()
