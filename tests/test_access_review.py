"""Attacks on users, keys, sessions and the audit log (auth_mode builtin), against a real server
on port 0 and the real store: names that pass for other actors, a trailing newline, names that
differ only in case, key names that forge audit entries, a sign-in posted by another site's form,
facts forged in an audit entry's detail, a busy session's absolute end, and a flood of refused
calls in the audit log."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, http, wait_for
from test_roles import (
    API_KEY,
    HELLO,
    OTHER,
    PASSWORD,
    Who,
    add_user,
    admin_headers,
    audit,
    new_key,
    sign_in,
    start,
)

from nagare.access import all_roles, parse_roles
from nagare.accounts import SESSION_CAP_MS, Accounts, is_account_name
from nagare.errors import BadRequest, Conflict
from nagare.http.auth import RefusalBudget
from nagare.http.server import (
    NagareHTTPServer,
    Request,
    Response,
    audit_detail,
    masked_query_token,
)
from nagare.passwords import MAX_PASSWORD_CHARS, hash_password, verify_password
from nagare.sso import SsoRefused, user_name
from nagare.store import Store

HOUR_MS = 3600_000
SIGNED = """
    id: signed
    trigger: {type: webhook, path: /api/webhooks/signed, secret: a-webhook-secret-0123}
    tasks:
      - id: say
        command: echo hi
"""
_BAD_SIGNATURE = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
GATE = """
    id: gate
    tasks:
      - id: ask
        type: approval
"""


def _accounts(tmp_path: Path) -> tuple[Store, Accounts]:
    store = Store(str(tmp_path / "nagare.db"))
    return store, Accounts(store, all_roles({}), 12)


# ---------------------------------------------------------------- names


def test_a_user_cannot_take_the_name_of_another_kind_of_actor(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    admin = Who(n, admin_headers())
    for name in ("api-key", "anonymous", "worker", "API-Key", "Anonymous"):
        body = {"name": name, "role": "viewer", "password": PASSWORD}
        refused = admin.call("POST", "/api/users", body)
        assert refused.status == 400, (name, refused.body)
        assert "another kind of caller" in refused.json["error"]["message"]
    assert [u["name"] for u in admin.call("GET", "/api/users").json] == []
    # names that hold a ':' (key:x, webhook:/x, cli:root) were never valid
    for name in ("key:ci", "webhook:x", "cli:root"):
        body = {"name": name, "role": "viewer", "password": PASSWORD}
        assert admin.call("POST", "/api/users", body).status == 400


def test_a_trailing_newline_does_not_make_another_user(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    admin = Who(n, admin_headers())
    add_user(n, "bob", "viewer")
    body = {"name": "bob\n", "role": "admin", "password": PASSWORD}
    refused = admin.call("POST", "/api/users", body)
    assert refused.status == 400 and "not a valid user name" in refused.json["error"]["message"]
    assert [u["name"] for u in admin.call("GET", "/api/users").json] == ["bob"]
    [entry] = audit(n, action="user.create", outcome="bad_request")
    assert entry.target == "user:?"  # never a name with a line break in the audit log
    # nor in a path: /api/users/bob%0A is not bob
    assert admin.call("PUT", "/api/users/bob%0A", {"role": "admin"}).status == 400
    assert admin.call("DELETE", "/api/dags/hello%0A/runs").status in (400, 405)


def test_names_that_differ_only_in_case_are_one_name(tmp_path: Path) -> None:
    store, accounts = _accounts(tmp_path)
    try:
        accounts.add_user("alice", "viewer", PASSWORD, 1_000)
        with pytest.raises(Conflict, match="'alice' already exists"):
            accounts.add_user("Alice", "admin", PASSWORD, 1_000)
        # single sign-on skips such names, and the reserved ones
        assert accounts.ensure_sso_user("https://idp a", "ALICE", "viewer", 1_000) == "ALICE-2"
        assert accounts.ensure_sso_user("https://idp b", "api-key", "admin", 1_000) == "api-key-2"
        assert accounts.ensure_sso_user("https://idp c", "Worker", "viewer", 1_000) == "Worker-2"
        assert [u.name for u in accounts.users()] == ["ALICE-2", "Worker-2", "alice", "api-key-2"]
    finally:
        store.close()


def test_key_names_cannot_forge_an_actor_or_a_fact(tmp_path: Path) -> None:
    store, accounts = _accounts(tmp_path)
    try:
        for name in ("ci\nforged", "ci role=admin", "", " ", "-x", "x" * 65):
            with pytest.raises(BadRequest, match="not a valid key name"):
                accounts.create_key(name, "viewer", None, "test", 1_000)
        record, _ = accounts.create_key("ci-deploy", "viewer", None, "test", 1_000)
        assert record.name == "ci-deploy"
    finally:
        store.close()
    assert is_account_name("alice@example.com") and not is_account_name("alice\n")


# ---------------------------------------------------------------- signing in


def test_a_sign_in_must_be_json_so_no_other_site_can_post_one(
    nagare_factory: Callable[..., Nagare],
) -> None:
    """A form of another site can send text/plain (`{"name": ..., "password": ...}` in it) but
    not application/json: the browser would be signed in under the attacker's account."""
    n = start(nagare_factory)
    add_user(n, "mallory", "viewer")
    body = b'{"name": "mallory", "password": "%s", "x": "="}' % PASSWORD.encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        request = urllib.request.Request(
            n.url + "/api/auth/login", data=body, method="POST", headers={"Content-Type": kind}
        )
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"a {kind} sign-in was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 400 and "Set-Cookie" not in err.headers
            assert "application/json" in err.read().decode()
    signed = http(
        "POST",
        n.url + "/api/auth/login",
        raw=body,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert signed.status == 200 and "nagare_session=" in signed.headers["Set-Cookie"]


def test_a_failed_sign_in_under_another_actors_name_is_not_that_actor(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    for name in ("api-key", "key:ci", "alice\nmallory"):
        tried = http("POST", n.url + "/api/auth/login", {"name": name, "password": "x" * 8})
        assert tried.status == 401
    entries = audit(n, action="auth.signin")
    assert {e.actor for e in entries} == {"?"}
    assert sorted(e.detail for e in entries) == [
        'name="alice mallory"',
        "name=api-key",
        "name=key:ci",
    ]
    tried = http("POST", n.url + "/api/auth/login", {"name": "bob", "password": "x" * 8})
    assert tried.status == 401 and audit(n, action="auth.signin")[0].actor == "bob"


# ---------------------------------------------------------------- the audit log


def test_a_fact_whose_value_could_read_as_more_facts_is_quoted() -> None:
    assert audit_detail("", {"by": "alice", "comment": "ok by=admin"}) == (
        'by=alice comment="ok by=admin"'
    )
    assert audit_detail("", {"comment": 'say "hi"\nthere'}) == 'comment="say \\"hi\\" there"'
    assert audit_detail("", {"comment": ""}) == 'comment=""'
    assert audit_detail("x=1", {"run_id": "hello__manual__2026"}) == (
        "x=1 run_id=hello__manual__2026"
    )


def test_an_approval_comment_cannot_forge_the_approver(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory, dags={"gate.yaml": GATE})
    admin = Who(n, admin_headers())
    run_id = admin.call("POST", "/api/dags/gate/runs").json["run_id"]
    path = f"/api/runs/{run_id}/tasks/ask/approve"

    def waiting() -> bool:
        return n.task(run_id, "ask")["status"] == "waiting"

    wait_for(waiting, 20, message="the approval to wait")
    answer = admin.call("POST", path, {"comment": "fine via=cli by=root"})
    assert answer.status == 200, answer.body
    [entry] = audit(n, action="task.approve")
    assert entry.detail == 'by=api comment="fine via=cli by=root"'


def test_a_flood_of_refused_calls_is_counted_not_recorded(
    nagare_factory: Callable[..., Nagare], caplog: pytest.LogCaptureFixture
) -> None:
    budget = RefusalBudget(per_minute=2)
    assert [budget.spend("a", 60_000 + i) for i in range(4)] == [0, 0, 1, 2]
    assert budget.spend("b", 60_010) == 0  # another address has its own
    assert budget.spend("a", 120_000) == 0  # the next minute starts again
    small = RefusalBudget(per_minute=1, max_tracked=2)
    for address in ("a", "b", "c", "d"):
        assert small.spend(address, 0) == 0
        assert len(small._windows) <= 2  # memory stays bounded, even within one minute
    n = start(nagare_factory, dags={"hello.yaml": HELLO, "signed.yaml": SIGNED})
    per_minute = n.app.api.refusals.per_minute
    with caplog.at_level(logging.WARNING, logger="nagare.http"):
        # more than two minutes' worth: one minute goes over its budget even when the minute
        # turns during the flood
        for _ in range(2 * per_minute + 10):
            assert http("POST", n.url + "/api/dags/hello/runs").status == 401
    refused = audit(n, action="dag.trigger", outcome="unauthorized")
    assert per_minute <= len(refused) <= 2 * per_minute
    assert "the audit log records no more of them" in caplog.text
    # a webhook sender with a bad signature proved no one either
    with caplog.at_level(logging.WARNING, logger="nagare.http"):
        for _ in range(70):
            bad = http("POST", n.url + "/api/webhooks/signed", {"x": 1}, headers=_BAD_SIGNATURE)
            assert bad.status == 403
    bad_hooks = audit(n, action="webhook.receive", outcome="forbidden")
    assert len(refused) + len(bad_hooks) <= 3 * per_minute  # one budget (three minutes at most)
    # identified callers are always recorded
    assert Who(n, admin_headers()).call("POST", "/api/dags/hello/runs").status == 201
    assert audit(n, action="dag.trigger", outcome="ok")


# ---------------------------------------------------------------- sessions


def test_a_busy_session_still_ends_a_week_after_sign_in(tmp_path: Path) -> None:
    store, accounts = _accounts(tmp_path)
    try:
        accounts.add_user("alice", "viewer", PASSWORD, 0)
        token, _ = accounts.start_session("alice", "127.0.0.1", 0)
        now = 0
        while now + 11 * HOUR_MS < SESSION_CAP_MS:  # used every 11 hours: it slides
            now += 11 * HOUR_MS
            assert accounts.session(token, now) is not None, now
        assert accounts.session(token, SESSION_CAP_MS) is None
        assert accounts.session(token, SESSION_CAP_MS - 1) is None  # and it was removed
        # a session_hours longer than the cap is the cap
        assert Accounts(store, all_roles({}), 24 * 30).session_cap_ms == 30 * 24 * HOUR_MS
    finally:
        store.close()


# ---------------------------------------------------------------- secrets and timing


def test_a_query_token_is_starred_in_the_server_log_however_it_is_spelt(
    nagare_factory: Callable[..., Nagare], caplog: pytest.LogCaptureFixture
) -> None:
    line = '"GET /api/runs/r/tasks/t/logs?attempt=1&%74oken=SECRET&Token=S2&x=token HTTP/1.1" 200'
    assert masked_query_token(line) == (
        '"GET /api/runs/r/tasks/t/logs?attempt=1&%74oken=***&Token=***&x=token HTTP/1.1" 200'
    )
    caplog.set_level(logging.DEBUG, logger="nagare.http")
    n = start(nagare_factory)
    key = new_key(n, "reader", "viewer")
    run_id = Who(n, admin_headers()).call("POST", "/api/dags/hello/runs").json["run_id"]
    n.wait_run(run_id)
    for name in ("token", "%74oken", "t%6Fken"):
        got = http("GET", f"{n.url}/api/runs/{run_id}/tasks/say/logs?{name}={key}")
        assert got.status == 200 and got.text == "hi\n", (name, got.body)
    server_log = "\n".join(r.getMessage() for r in caplog.records)
    assert "oken=***" in server_log and key not in server_log


def test_a_too_long_password_takes_as_long_as_a_wrong_one() -> None:
    """Else a known name (its hash checked, the long password refused at once) answers faster
    than an unknown one (a dummy check): the time would tell which names exist."""
    stored = hash_password(PASSWORD)
    started = time.perf_counter()
    assert not verify_password("a wrong password", stored)
    wrong = time.perf_counter() - started
    started = time.perf_counter()
    assert not verify_password("x" * (MAX_PASSWORD_CHARS + 1), stored)
    too_long = time.perf_counter() - started
    assert too_long > wrong / 3, (too_long, wrong)


def test_an_unverified_email_is_not_taken_as_the_name() -> None:
    claims = {"email": "ceo@example.com", "email_verified": False, "sub": "u123"}
    assert user_name(claims, "preferred_username") == "u123"
    assert user_name({**claims, "email_verified": True}, "preferred_username") == "ceo@example.com"
    assert user_name({"email": "ann@example.com", "sub": "1"}, "email") == "ann@example.com"
    with pytest.raises(SsoRefused):
        user_name({**claims, "sub": "x" * 200}, "email")


# ---------------------------------------------------------------- log streams


CHATTY = """
    id: chatty
    tags: [finance]
    tasks:
      - id: talk
        command: for i in $(seq 1 300); do echo "line $i"; sleep 0.05; done
"""


def _open_stream(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "text/event-stream", **headers})
    return urllib.request.urlopen(request, timeout=10)


def _closes(stream: Any, within: float) -> bool:
    """Whether the server closes `stream` within `within` seconds (it keeps sending lines)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not stream.readline():
            return True
    return False


def test_a_log_stream_ends_when_its_session_or_key_does(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory, dags={"chatty.yaml": CHATTY})
    admin = Who(n, admin_headers())
    run_id = admin.call("POST", "/api/dags/chatty/runs").json["run_id"]
    wait_for(lambda: n.task(run_id, "talk")["status"] == "running", 20, message="the task")
    url = f"{n.url}/api/runs/{run_id}/tasks/talk/logs"
    add_user(n, "vic", "viewer")
    vic = sign_in(n, "vic")
    key = new_key(n, "reader", "viewer")
    by_cookie = _open_stream(url, vic.headers)
    by_token = _open_stream(f"{url}?token={key}", {})
    kept = _open_stream(url, admin_headers())
    for stream in (by_cookie, by_token, kept):
        assert stream.readline().startswith(b"retry:")
        wait_for(lambda s=stream: s.readline().startswith(b"data: line"), 10, message="a line")
    assert vic.call("POST", "/api/auth/logout").status == 200
    [record] = [k for k in admin.call("GET", "/api/keys").json if k["name"] == "reader"]
    assert admin.call("DELETE", f"/api/keys/{record['id']}").status == 200
    assert _closes(by_cookie, 5), "the signed-out session's stream went on"
    assert _closes(by_token, 5), "the revoked key's stream went on"
    assert not _closes(kept, 1)  # the admin's stream goes on
    kept.close()
    # a new role that still sees the DAG keeps the stream; disabling the user ends it
    add_user(n, "fin", "finance-ops")
    fin = sign_in(n, "fin")
    theirs = _open_stream(url, fin.headers)
    wait_for(lambda: theirs.readline().startswith(b"data: line"), 10, message="a line")
    assert admin.call("PUT", "/api/users/fin", {"role": "viewer"}).status == 200
    assert not _closes(theirs, 1)  # a viewer of every DAG still reads it
    assert admin.call("PUT", "/api/users/fin", {"disabled": True}).status == 200
    assert _closes(theirs, 5)


def test_a_manager_limited_to_some_tags_cannot_read_other_teams_in_the_audit_log(
    nagare_factory: Callable[..., Nagare],
) -> None:
    roles = parse_roles({"fin-manager": {"base": "manager", "tags": ["finance"]}})
    n = nagare_factory(
        dags={"hello.yaml": HELLO, "other.yaml": OTHER},
        auth_mode="builtin",
        api_key=API_KEY,
        roles=roles,
        retention_days=0,
    )
    admin = Who(n, admin_headers())
    assert admin.call("POST", "/api/dags/other/runs").status == 201  # an ops team's action
    add_user(n, "fm", "fin-manager")
    fm = sign_in(n, "fm")
    refused = fm.call("GET", "/api/audit")
    assert refused.status == 403 and "sees only some DAGs" in refused.json["error"]["message"]
    assert "audit" in fm.call("GET", "/api/me").json["permissions"]  # the UI hides it by tags
    assert admin.call("GET", "/api/audit").status == 200


def test_a_borrowed_session_cannot_guess_the_password_it_would_change(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    add_user(n, "alice", "viewer")
    alice = sign_in(n, "alice")
    answers = [
        alice.call("POST", "/api/me/password", {"current": f"guess {i:04}", "new": "x" * 12})
        for i in range(6)
    ]
    assert [a.status for a in answers] == [403] * 5 + [429]
    assert "Retry-After" in answers[-1].headers
    # the limit is the sign-in's: the right password waits too, then works
    right = alice.call("POST", "/api/me/password", {"current": PASSWORD, "new": "x" * 12})
    assert right.status == 429


def test_an_unexpected_error_logs_the_path_without_its_query_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The one place a request's path reaches the log at ERROR: its token is starred too."""

    def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    def broken_stream(request: Request) -> Response:
        def stream(write: Callable[[bytes], None]) -> None:
            raise RuntimeError("a bug in a stream")

        return Response(200, content_type="text/event-stream", stream=stream)

    for app in (broken, broken_stream):
        server = NagareHTTPServer(("127.0.0.1", 0), app, 1_000_000)
        stop = threading.Event()
        thread = threading.Thread(target=server.run, args=(stop,), daemon=True)
        thread.start()
        try:
            with caplog.at_level(logging.ERROR, logger="nagare.http"):
                http("GET", f"http://127.0.0.1:{server.port}/api/x?token=ngk_SECRET&a=1")
        finally:
            server.shutdown()
            server.server_close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "?token=***&a=1" in logged and "ngk_SECRET" not in logged
    assert "stream for" in logged and "unexpected error serving" in logged


def test_a_single_sign_on_sign_in_is_noted_and_purges_ended_sessions(tmp_path: Path) -> None:
    store, accounts = _accounts(tmp_path)
    try:
        accounts.add_user("bob", "viewer", PASSWORD, 0)
        old, _ = accounts.start_session("bob", "127.0.0.1", 0)
        later = 13 * HOUR_MS
        name = accounts.ensure_sso_user("https://idp ann", "ann", "viewer", later)
        assert accounts.user(name).last_login_at == later
        assert store.sessions.count("bob") == 0  # bob's ended session went with it
        assert accounts.session(old, later) is None
    finally:
        store.close()


def test_a_lone_surrogate_echoed_back_is_json_not_a_500(
    nagare_factory: Callable[..., Nagare],
) -> None:
    """Found by the OpenAPI fuzzer: YAML reads "\\ud800" as a lone surrogate, which no UTF-8
    can carry; the validation answer escapes it instead of failing."""
    n = start(nagare_factory)
    body = b'{"\\ud800\\udc00": null}'
    answer = http("POST", n.url + "/api/dags/validate", raw=body, headers=admin_headers())
    assert answer.status == 200, answer.body
    assert answer.json["valid"] is False
