"""Users, roles, sessions and API keys (auth_mode builtin) against a real server on port 0.

Every route of the route table is called by every role — as a signed-in user (cookie and CSRF
token) and with a created API key — and answers as the role's rights say: allowed → never
401/403, forbidden → 403 with the JSON error shape. Then: roles limited by tags, the worker
token, sessions (cookie flags, expiry, sign-out, removed and disabled users, a new password),
CSRF, the sign-in rate limit, keys (shown once, hashed at rest, expiry, revocation), passwords
never leaving the server, approvals by the signed-in user, the `nagare users` and `nagare keys`
commands, the README's table of roles, and a database of the previous release.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, HttpResult, Nagare, http, pythonpath_env, wait_for

from nagare.access import ROLE_RIGHTS, Permission, Role, all_roles, parse_roles
from nagare.accounts import Accounts, SignInLimit, sign_in_wait, with_failure, without_name_failures
from nagare.clock import now_ms, parse_iso, to_iso
from nagare.errors import Forbidden, TooManyRequests, Unauthorized
from nagare.http.accounts_api import session_cookie
from nagare.http.routing import ANY, Route, Router
from nagare.passwords import hash_password, token_hash, verify_password
from nagare.store import AuditFilter, KeyRecord, Store

API_KEY = "legacy-admin-key-0123456789"
WORKER_TOKEN = "worker-token-0123456789abcdef"
PASSWORD = "correct horse battery"
HELLO = """
    id: hello
    tags: [finance]
    tasks:
      - id: say
        command: echo hi
"""
OTHER = """
    id: other
    tags: [ops]
    tasks:
      - id: say
        command: echo other
"""
GATE = """
    id: gate
    tasks:
      - id: ask
        type: approval
        approvers: [alice]
"""
ROLES = {"finance-ops": {"base": "operator", "tags": ["finance"]}}
SAMPLE_PARAMS = {  # values that name nothing, so that an allowed call changes nothing
    "dag_id": "hello",
    "run_id": "hello__manual__none",
    "task_id": "say",
    "task_instance_id": "none",
    "webhook_path": "none",
    "user_name": "nobody-here",
    "key_id": "k_0123456789ab",
    "file": "none.yaml",
    "digest": "0" * 64,
    "name": "none",
}
ERROR_SHAPE = re.compile(r"^\{\"error\":\{\"code\":\"forbidden\",\"message\":\"[^\"]+\"\}\}\n$")


def _concrete(path: str) -> str:
    for name, value in SAMPLE_PARAMS.items():
        path = path.replace("{" + name + "...}", value).replace("{" + name + "}", value)
    return path


# ---------------------------------------------------------------- helpers


class Who:
    """One caller: a signed-in user (cookie + CSRF token) or a bearer token."""

    def __init__(self, n: Nagare, headers: dict[str, str], csrf: str = "") -> None:
        self.n = n
        self.headers = headers
        self.csrf = csrf

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> HttpResult:
        sent = {**self.headers, "Accept": "application/json", **headers}
        if self.csrf and method not in ("GET", "HEAD"):
            sent.setdefault("X-CSRF-Token", self.csrf)
        return http(method, self.n.url + path, body, headers=sent)


def start(factory: Callable[..., Nagare], **settings: Any) -> Nagare:
    """A builtin-mode server with the legacy key, a worker token and a tag-limited role."""
    settings.setdefault("dags", {"hello.yaml": HELLO, "other.yaml": OTHER})
    return factory(
        auth_mode="builtin",
        api_key=API_KEY,
        token=WORKER_TOKEN,
        roles=parse_roles(ROLES),
        retention_days=0,
        **settings,
    )


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def add_user(n: Nagare, name: str, role: str, password: str = PASSWORD) -> None:
    result = http(
        "POST",
        n.url + "/api/users",
        {"name": name, "role": role, "password": password},
        headers=admin_headers(),
    )
    assert result.status == 201, result.body


def sign_in(n: Nagare, name: str, password: str = PASSWORD) -> Who:
    result = http("POST", n.url + "/api/auth/login", {"name": name, "password": password})
    assert result.status == 200, result.body
    cookie = result.headers["Set-Cookie"].split(";", 1)[0]
    return Who(n, {"Cookie": cookie}, result.json["csrf"])


def new_key(n: Nagare, name: str, role: str, **extra: Any) -> str:
    body = {"name": name, "role": role, **extra}
    result = http("POST", n.url + "/api/keys", body, headers=admin_headers())
    assert result.status == 201, result.body
    return str(result.json["key"])


def bearer(n: Nagare, key: str) -> Who:
    return Who(n, {"Authorization": f"Bearer {key}"})


def audit(n: Nagare, **filters: Any) -> list[Any]:
    return n.app.store.audit.find(AuditFilter(**filters), 1, 500)[0]


def disk_bytes(n: Nagare) -> bytes:
    """The database as it is on disk, its write-ahead log included."""
    db = Path(n.app.config.db)
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


# ---------------------------------------------------------------- every role and every route


def _expect(n: Nagare, who: Who, route: Route, role: Role | None, label: str) -> None:
    method = "POST" if route.method == ANY else route.method
    path = _concrete(route.path)
    body = None
    user = f"{role.value if role else 'viewer'}-user"
    if route.path == "/api/auth/login":  # open: a user's name and password
        body = {"name": user, "password": PASSWORD}
    if route.path == "/api/auth/logout" and "Cookie" in who.headers:
        who = sign_in(n, user)  # a session of its own: the walk keeps the other
    result = who.call(method, path, body)
    where = (label, route.method, route.path, result.status, result.body[:200])
    permission = route.permission
    assert permission is not None
    if permission == Permission.CLUSTER:  # the worker token only
        assert result.status == 401, where
    elif permission in (Permission.OPEN, Permission.WEBHOOK) or can_role(role, permission):
        assert result.status not in (401, 403), where
    else:
        assert result.status == 403, where
        assert ERROR_SHAPE.match(result.text), where


def can_role(role: Role | None, permission: Permission) -> bool:
    return role is not None and permission in ROLE_RIGHTS[role]


def test_every_role_on_every_route_as_a_user_and_as_a_key(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    routes = n.app.api.router.routes
    assert {r.permission for r in routes} == set(Permission)  # every kind of route is walked
    callers: list[tuple[str, Who, Role | None]] = []
    for role in Role:
        add_user(n, f"{role.value}-user", role.value)
        callers.append((f"{role.value}-user/session", sign_in(n, f"{role.value}-user"), role))
        key = new_key(n, f"{role.value}-key", role.value)
        callers.append((f"{role.value}-key/key", bearer(n, key), role))
    callers.append(("api-key/legacy", Who(n, admin_headers()), Role.ADMIN))
    checked = 0
    for label, who, role in callers:
        for route in routes:
            _expect(n, who, route, role, label)
            checked += 1
    assert checked == len(callers) * len(routes) > 500


def test_the_worker_token_opens_only_the_cluster_protocol(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    worker = bearer(n, WORKER_TOKEN)
    for route in n.app.api.router.routes:
        method = "POST" if route.method == ANY else route.method
        result = worker.call(method, _concrete(route.path), {})
        where = (route.method, route.path, result.status, result.body[:200])
        if route.permission == Permission.CLUSTER:
            assert result.status not in (401, 403), where
        elif route.permission in (Permission.OPEN, Permission.WEBHOOK):
            assert result.status != 403, where
        else:
            assert result.status == 401, where
            assert result.json["error"]["message"] == "invalid API key"


def test_a_route_without_a_permission_cannot_be_added(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    bare = Route("GET", "/api/unguarded", lambda request: {}, "no permission declared")
    with pytest.raises(ValueError, match="GET /api/unguarded"):
        Router([bare])
    with pytest.raises(ValueError, match="without a declared permission"):
        n.app.api.add_routes([bare])
    assert all(r.permission is not None for r in n.app.api.router.routes)


def test_a_role_limited_by_tags_sees_and_runs_only_its_dags(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    admin = Who(n, admin_headers())
    mine = admin.call("POST", "/api/dags/hello/runs").json["run_id"]
    theirs = admin.call("POST", "/api/dags/other/runs").json["run_id"]
    n.wait_run(mine)
    n.wait_run(theirs)
    add_user(n, "fin", "finance-ops")
    for who in (sign_in(n, "fin"), bearer(n, new_key(n, "fin-key", "finance-ops"))):
        assert [d["dag_id"] for d in who.call("GET", "/api/dags").json] == ["hello"]
        runs = who.call("GET", "/api/runs?limit=500").json
        assert {r["dag_id"] for r in runs["data"]} == {"hello"}
        assert mine in [r["run_id"] for r in runs["data"]] and runs["total"] == len(runs["data"])
        assert who.call("GET", "/api/runs?dag_id=other").json["data"] == []
        assert who.call("GET", "/api/runs?tag=ops").json["data"] == []
        me = who.call("GET", "/api/me").json
        assert me["tags"] == ["finance"] and me["role"] == "operator"
        for method, path in (
            ("GET", "/api/dags/other"),
            ("GET", "/api/dags/other/grid"),
            ("GET", f"/api/runs/{theirs}"),
            ("GET", f"/api/runs/{theirs}/tasks"),
            ("GET", f"/api/runs/{theirs}/tasks/say/logs"),
            ("POST", "/api/dags/other/runs"),
            ("POST", f"/api/runs/{theirs}/retry"),
            ("GET", "/api/stats"),  # every DAG at once
            ("GET", "/api/metrics/overview"),
        ):
            result = who.call(method, path)
            assert result.status == 403, (method, path, result.body)
            assert ERROR_SHAPE.match(result.text)
        assert who.call("GET", f"/api/runs/{mine}/tasks/say/logs").text == "hi\n"
        assert who.call("POST", "/api/dags/hello/runs").status == 201
        assert who.call("GET", "/api/dags/hello/yaml").status == 403  # an operator: no source


# ---------------------------------------------------------------- sessions and CSRF


def test_sign_in_sets_a_strict_http_only_cookie_and_answers_the_role(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    add_user(n, "alice", "developer")
    result = http("POST", n.url + "/api/auth/login", {"name": "alice", "password": PASSWORD})
    assert result.status == 200
    cookie = result.headers["Set-Cookie"]
    token = cookie.split(";")[0].removeprefix("nagare_session=")
    assert len(token) >= 40
    flags = [f.strip() for f in cookie.split(";")[1:]]
    # the cookie lasts as long as the session may (7 days); the server ends it 12 hours idle
    assert flags == ["HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={7 * 24 * 3600}"]
    body = result.json
    assert body["name"] == "alice" and body["role"] == "developer" and body["tags"] is None
    assert body["permissions"] == ["edit", "operate", "read", "self", "source"]
    assert token not in result.text
    assert token.encode() not in disk_bytes(n)  # stored as its SHA-256 only
    assert token_hash(token).encode() in disk_bytes(n)
    me = Who(n, {"Cookie": f"nagare_session={token}"}).call("GET", "/api/me").json
    assert me == {**body, "kind": "session", "auth_mode": "builtin", "csrf": body["csrf"]}
    assert session_cookie("t", 60, secure=True).endswith("; Secure")


def test_the_cookie_is_secure_under_tls(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    import ssl
    import urllib.request

    from test_security import _self_signed

    cert, key = _self_signed(tmp_path)
    n = start(nagare_factory, tls_cert=str(cert), tls_key=str(key))
    n.app.accounts.add_user("alice", "viewer", PASSWORD, now_ms())
    request = urllib.request.Request(
        f"https://127.0.0.1:{n.app.port}/api/auth/login",
        data=json.dumps({"name": "alice", "password": PASSWORD}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert response.headers["Set-Cookie"].endswith("; Secure")


def test_sessions_end_on_sign_out_expiry_removal_disabling_and_a_new_password(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    for name in ("alice", "bob", "carol", "dave"):
        add_user(n, name, "operator")
    admin = Who(n, admin_headers())
    # sign-out: the session is gone and the cookie cleared
    alice = sign_in(n, "alice")
    out = alice.call("POST", "/api/auth/logout")
    assert out.status == 200 and out.json == {}
    assert out.headers["Set-Cookie"].startswith("nagare_session=;")
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    gone = alice.call("GET", "/api/me")
    assert gone.status == 401 and "sign in again" in gone.json["error"]["message"]
    # expiry: a session started 13 hours ago (session_hours 12) is over, and purged at sign-in
    then = now_ms() - 13 * 3600_000
    token, _ = n.app.accounts.start_session("bob", "127.0.0.1", then)
    assert Who(n, {"Cookie": f"nagare_session={token}"}).call("GET", "/api/me").status == 401
    stale, _ = n.app.accounts.start_session("bob", "127.0.0.1", then)
    sign_in(n, "bob")
    assert n.app.store.sessions.get(token_hash(stale)) is None
    # the expiry slides with use: 11 hours later a session used an hour ago still holds
    token, _ = n.app.accounts.start_session("bob", "127.0.0.1", then)
    assert n.app.accounts.session(token, then + 11 * 3600_000) is not None
    assert n.app.accounts.session(token, then + 22 * 3600_000) is not None
    assert n.app.accounts.session(token, then + 35 * 3600_000) is None
    # removal and disabling
    bob, carol = sign_in(n, "bob"), sign_in(n, "carol")
    assert admin.call("DELETE", "/api/users/bob").status == 200
    assert bob.call("GET", "/api/me").status == 401
    assert admin.call("PUT", "/api/users/carol", {"disabled": True}).json["disabled"] is True
    assert carol.call("GET", "/api/me").status == 401
    assert (
        http("POST", n.url + "/api/auth/login", {"name": "carol", "password": PASSWORD}).status
        == 401
    )
    # a new password: the other sessions end, the one that changed it stays
    here, there = sign_in(n, "dave"), sign_in(n, "dave")
    new = "a brand new password"
    changed = here.call("POST", "/api/me/password", {"current": PASSWORD, "new": new})
    assert changed.status == 200, changed.body
    assert here.call("GET", "/api/me").status == 200
    assert there.call("GET", "/api/me").status == 401
    wrong = here.call("POST", "/api/me/password", {"current": "not it at all", "new": new})
    assert wrong.status == 403
    sign_in(n, "dave", new)
    # an admin's new password for a user ends all of its sessions
    assert admin.call("PUT", "/api/users/dave", {"password": PASSWORD}).status == 200
    assert here.call("GET", "/api/me").status == 401


def test_cookie_writes_need_the_csrf_token_and_bearer_writes_do_not(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    add_user(n, "ops", "operator")
    ops = sign_in(n, "ops")
    for headers in ({"X-CSRF-Token": ""}, {"X-CSRF-Token": "not-the-token"}):
        refused = ops.call("POST", "/api/dags/hello/pause", **headers)
        assert refused.status == 403 and "CSRF" in refused.json["error"]["message"]
    assert (
        n.app.store.dags.states().get("hello") is None
        or not n.app.store.dags.states()["hello"].paused
    )
    assert ops.call("POST", "/api/dags/hello/pause").json["paused"] is True
    assert ops.call("GET", "/api/dags/hello").status == 200  # reads need no token
    key = bearer(n, new_key(n, "ops-key", "operator"))
    assert key.call("POST", "/api/dags/hello/activate").json["paused"] is False
    refused_entry = audit(n, action="dag.pause", outcome="forbidden")
    assert refused_entry and refused_entry[0].actor == "ops"


# ---------------------------------------------------------------- the sign-in rate limit


def test_the_sign_in_limit_is_a_decision_over_recent_failures() -> None:
    limit = SignInLimit(per_name=3, per_address=5, window_ms=60_000)
    failures: dict[str, list[int]] = {}
    for at in (0, 1_000, 2_000):
        assert sign_in_wait(failures, "alice", "10.0.0.1", at, limit) == 0
        failures = with_failure(failures, "alice", "10.0.0.1", at, limit)
    assert sign_in_wait(failures, "alice", "10.0.0.1", 3_000, limit) == 57_000
    assert sign_in_wait(failures, "ALICE", "10.0.0.1", 3_000, limit) == 57_000
    assert sign_in_wait(failures, "alice", "10.0.0.2", 3_000, limit) == 0  # another address
    assert sign_in_wait(failures, "bob", "10.0.0.1", 3_000, limit) == 0  # another name
    assert sign_in_wait(failures, "alice", "10.0.0.1", 60_001, limit) == 0  # the window moved
    # many names from one address
    for at, name in enumerate(("b", "c")):
        failures = with_failure(failures, name, "10.0.0.1", 4_000 + at, limit)
    assert sign_in_wait(failures, "zed", "10.0.0.1", 5_000, limit) == 55_000
    # a success forgets that name's failures from that address, not the address's
    cleared = without_name_failures(failures, "alice", "10.0.0.1")
    assert sign_in_wait(cleared, "alice", "10.0.0.1", 5_000, limit) == 55_000
    relaxed = SignInLimit(per_name=3, per_address=100, window_ms=60_000)
    assert sign_in_wait(cleared, "alice", "10.0.0.1", 5_000, relaxed) == 0
    # bounded memory: old entries leave, and at most max_tracked keys stay
    small = SignInLimit(max_tracked=4, window_ms=60_000)
    crowd: dict[str, list[int]] = {}
    for at in range(10):
        crowd = with_failure(crowd, f"u{at}", f"10.0.1.{at}", at, small)
    assert len(crowd) == 4 and "address:10.0.1.9" in crowd
    assert with_failure(crowd, "x", "y", 1_000_000, small).keys() == {
        "name:x\0y",
        "address:y",
    }


def test_too_many_failed_sign_ins_answer_429_then_recover(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    add_user(n, "alice", "viewer")
    login = n.url + "/api/auth/login"
    for _ in range(5):
        wrong = http("POST", login, {"name": "alice", "password": "wrong password!"})
        assert wrong.status == 401
        assert wrong.json["error"]["message"] == "wrong name or password"
    limited = http("POST", login, {"name": "alice", "password": PASSWORD})
    assert limited.status == 429
    assert limited.json["error"]["code"] == "too_many_requests"
    message = limited.json["error"]["message"]
    assert message.startswith("too many failed sign-ins for 'alice'") and "try again in" in message
    seconds = int(limited.headers["Retry-After"])
    assert 890 <= seconds <= 900 and f"{seconds} s" in message
    # an unknown name gets the same answer as a wrong password
    unknown = http("POST", login, {"name": "mallory", "password": "whatever it is"})
    assert unknown.status == 401 and unknown.json == wrong.json
    # audited with the name tried as the actor, never the password
    entries = audit(n, action="auth.signin")
    outcomes = [(e.actor, e.outcome) for e in reversed(entries)]
    assert outcomes == [("alice", "unauthorized")] * 5 + [
        ("alice", "too_many_requests"),
        ("mallory", "unauthorized"),
    ]
    assert all(e.address == "127.0.0.1" for e in entries)
    # once the window has passed (now is passed in), the right password works again
    with pytest.raises(TooManyRequests):
        n.app.accounts.sign_in("alice", PASSWORD, "127.0.0.1", now_ms())
    later = now_ms() + 16 * 60_000
    assert n.app.accounts.sign_in("alice", PASSWORD, "127.0.0.1", later).name == "alice"


# ---------------------------------------------------------------- API keys


def test_a_key_is_shown_once_hashed_at_rest_and_refused_once_revoked_or_expired(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    admin = Who(n, admin_headers())
    soon = to_iso(now_ms() + 3600_000)
    created = admin.call("POST", "/api/keys", {"name": "ci", "role": "viewer", "expires_at": soon})
    assert created.status == 201
    key = created.json["key"]
    assert key.startswith("ngk_") and len(key) == 4 + 43
    assert created.json["prefix"] == key[:12] and created.json["created_by"] == "api-key"
    assert created.json["expires_at"] == soon
    listed = admin.call("GET", "/api/keys").json
    assert [k["id"] for k in listed] == [created.json["id"]]
    assert "key" not in listed[0] and key not in json.dumps(listed)
    assert key.encode() not in disk_bytes(n)
    assert key[12:].encode() not in disk_bytes(n)
    # it works, with its role, and notes its use (at most once a minute)
    ci = bearer(n, key)
    assert ci.call("GET", "/api/me").json["name"] == "key:ci"
    assert ci.call("POST", "/api/dags/hello/pause").status == 403
    used = admin.call("GET", "/api/keys").json[0]["last_used_at"]
    assert used is not None
    ci.call("GET", "/api/dags")
    assert admin.call("GET", "/api/keys").json[0]["last_used_at"] == used
    # expiry (now passed in), and a key that expired already
    with pytest.raises(Unauthorized, match="API key expired"):
        n.app.accounts.key_principal(key, now_ms() + 2 * 3600_000)
    old = "ngk_" + "x" * 43
    record = KeyRecord("k_00000000000e", "old", "viewer", old[:12], "test", 0, expires_at=1)
    n.app.store.keys.add(record, token_hash(old))
    expired = bearer(n, old).call("GET", "/api/dags")
    assert expired.status == 401 and expired.json["error"]["message"] == "API key expired"
    # revocation
    revoked = admin.call("DELETE", f"/api/keys/{created.json['id']}")
    assert revoked.status == 200 and revoked.json["revoked_at"] is not None
    refused = ci.call("GET", "/api/dags")
    assert refused.status == 401 and refused.json["error"]["message"] == "API key revoked"
    assert admin.call("DELETE", "/api/keys/k_ffffffffffff").status == 404
    assert admin.call("DELETE", "/api/keys/not-a-key-id").status == 400
    assert bearer(n, "ngk_unknown").call("GET", "/api/dags").json["error"]["message"] == (
        "invalid API key"
    )
    # bad requests
    for body in (
        {"name": "x", "role": "superuser"},
        {"name": "", "role": "viewer"},
        {"name": "x", "role": "viewer", "expires_at": "yesterday"},
        {"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"},
        {"name": "x", "role": "viewer", "key": "ngk_mine"},
    ):
        bad = admin.call("POST", "/api/keys", body)
        assert bad.status == 400, (body, bad.body)
    actions = [(e.action, e.outcome) for e in audit(n, action="key.")]
    assert ("key.create", "ok") in actions and ("key.revoke", "ok") in actions
    created_entry = audit(n, action="key.create", outcome="ok")[0]
    assert created_entry.detail == f"name=ci role=viewer expires_at={soon}"
    assert created_entry.target == f"key:{created.json['id']}" and key not in repr(audit(n))


def test_users_and_keys_answer_409_in_key_mode(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"hello.yaml": HELLO}, api_key=API_KEY)
    admin = Who(n, admin_headers())
    for method, path in (
        ("GET", "/api/users"),
        ("POST", "/api/users"),
        ("DELETE", "/api/users/alice"),
        ("GET", "/api/keys"),
        ("POST", "/api/keys"),
        ("DELETE", "/api/keys/k_0123456789ab"),
        ("POST", "/api/auth/login"),
    ):
        result = admin.call(method, path, {})
        assert result.status == 409, (method, path, result.body)
        assert "auth_mode" in result.json["error"]["message"]
    assert admin.call("GET", "/api/me").json == {
        "name": "api-key",
        "kind": "api_key",
        "role": "admin",
        "permissions": sorted(p.value for p in ROLE_RIGHTS[Role.ADMIN]),
        "tags": None,
        "auth_mode": "key",
        "csrf": "",
    }
    assert http("GET", n.url + "/api/me").status == 401
    assert http("GET", n.url + "/api/auth/config").json == {
        "auth_mode": "key",
        "password": False,
        "sso": False,
        "sso_name": "",
    }


def test_no_auth_is_still_the_anonymous_admin(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"hello.yaml": HELLO})
    me = n.get("/api/me")
    assert (me["name"], me["kind"], me["role"]) == ("anonymous", "anonymous", "admin")
    assert n.call("POST", "/api/dags/hello/pause").status == 200


# ---------------------------------------------------------------- users


def test_user_rules(nagare_factory: Callable[..., Nagare]) -> None:
    n = start(nagare_factory)
    admin = Who(n, admin_headers())
    cases = [
        ({"name": "bad name", "role": "viewer", "password": PASSWORD}, 400, "not a valid user"),
        ({"name": "x", "role": "superuser", "password": PASSWORD}, 400, "does not exist"),
        ({"name": "x", "role": "viewer", "password": "short"}, 400, "at least 8"),
        ({"name": "x", "role": "viewer"}, 400, "'password' must be a string"),
        ({"name": "x", "role": "viewer", "password": PASSWORD, "admin": True}, 400, "unknown"),
    ]
    for body, status, text in cases:
        result = admin.call("POST", "/api/users", body)
        assert result.status == status and text in result.json["error"]["message"], result.body
    created = admin.call(
        "POST", "/api/users", {"name": "root", "role": "admin", "password": PASSWORD}
    )
    assert created.status == 201
    assert set(created.json) == {
        "name",
        "role",
        "source",
        "created_at",
        "updated_at",
        "last_login_at",
        "disabled",
    }
    again = admin.call(
        "POST", "/api/users", {"name": "root", "role": "viewer", "password": PASSWORD}
    )
    assert again.status == 409
    # the last enabled admin stays one
    for method, path, body in (
        ("PUT", "/api/users/root", {"role": "viewer"}),
        ("PUT", "/api/users/root", {"disabled": True}),
        ("DELETE", "/api/users/root", None),
    ):
        result = admin.call(method, path, body)
        assert result.status == 409 and "last enabled admin" in result.json["error"]["message"]
    admin.call("POST", "/api/users", {"name": "root2", "role": "admin", "password": PASSWORD})
    assert admin.call("PUT", "/api/users/root", {"role": "viewer"}).json["role"] == "viewer"
    assert admin.call("PUT", "/api/users/root", {"role": "finance-ops"}).status == 200
    assert admin.call("PUT", "/api/users/nobody", {"role": "viewer"}).status == 404
    assert admin.call("PUT", "/api/users/root", {"disabled": "yes"}).status == 400
    # single sign-on users: created and updated by the provider's claims, no password here
    accounts: Accounts = n.app.accounts
    name = accounts.ensure_sso_user("sub-1", "Eve Example <eve@example.com>", "viewer", now_ms())
    assert name == "Eve-Example--eve@example.com-"
    assert accounts.ensure_sso_user("sub-1", "ignored", "operator", now_ms()) == name
    assert accounts.user(name).role == "operator" and accounts.user(name).source == "oidc"
    assert accounts.ensure_sso_user("sub-2", "root", "viewer", now_ms()) == "root-2"
    sso = admin.call("PUT", f"/api/users/{name}", {"password": PASSWORD})
    assert sso.status == 409 and "single sign-on" in sso.json["error"]["message"]
    with pytest.raises(Unauthorized):
        accounts.sign_in(name, "", "127.0.0.1", now_ms())
    admin.call("PUT", f"/api/users/{name}", {"disabled": True})
    with pytest.raises(Forbidden, match="disabled"):
        accounts.ensure_sso_user("sub-1", "x", "viewer", now_ms())


def test_passwords_never_reach_answers_logs_or_the_audit_log(
    nagare_factory: Callable[..., Nagare], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    planted, second = "Planted-Password-4711", "Second-Planted-Password-0815"
    n = start(nagare_factory)
    admin = Who(n, admin_headers())
    answers = [
        admin.call("POST", "/api/users", {"name": "pat", "role": "viewer", "password": planted}),
        http("POST", n.url + "/api/auth/login", {"name": "pat", "password": planted}),
        http("POST", n.url + "/api/auth/login", {"name": "pat", "password": second}),
        http("POST", n.url + "/api/auth/login", {"name": "nobody", "password": planted}),
        admin.call("PUT", "/api/users/pat", {"password": second}),
        admin.call("GET", "/api/users"),
        admin.call("POST", "/api/users", {"name": "x", "role": "nope", "password": planted}),
    ]
    pat = sign_in(n, "pat", second)
    answers.append(pat.call("POST", "/api/me/password", {"current": planted, "new": planted}))
    answers.append(pat.call("POST", "/api/me/password", {"current": second, "new": planted}))
    answers.append(pat.call("GET", "/api/me"))
    assert [a.status for a in answers] == [201, 200, 401, 401, 200, 200, 400, 403, 200, 200]
    stored = n.app.store.users.password_hash("pat")
    assert stored is not None and verify_password(planted, stored)
    for secret in (planted, second, stored):
        for answer in answers:
            assert secret not in answer.text
        assert secret == stored or secret.encode() not in disk_bytes(n)
        assert secret not in caplog.text
        for entry in audit(n):
            assert secret not in repr(entry)
    assert {e.action for e in audit(n)} >= {"user.create", "user.update", "user.passwd"}
    assert [e.detail for e in audit(n, action="user.update")] == ["password=changed"]
    assert [e.detail for e in audit(n, action="user.create", outcome="ok")] == ["role=viewer"]


# ---------------------------------------------------------------- approvals


def test_approvals_record_the_signed_in_user_and_approvers_name_users(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory, dags={"gate.yaml": GATE})
    add_user(n, "alice", "operator")
    add_user(n, "bob", "operator")
    admin = Who(n, admin_headers())

    def waiting_run() -> str:
        run_id = str(admin.call("POST", "/api/dags/gate/runs").json["run_id"])
        wait_for(
            lambda: admin.call("GET", f"/api/runs/{run_id}/tasks/ask").json["status"] == "waiting",
            10,
        )
        return run_id

    run_id = waiting_run()
    bob = sign_in(n, "bob")
    refused = bob.call("POST", f"/api/runs/{run_id}/tasks/ask/approve", {"by": "alice"})
    assert refused.status == 403 and "'bob' may not answer" in refused.json["error"]["message"]
    alice = sign_in(n, "alice")
    answered = alice.call(
        "POST", f"/api/runs/{run_id}/tasks/ask/approve", {"by": "mallory", "comment": "ok"}
    )
    assert answered.status == 200, answered.body
    assert answered.json["outputs"]["approved_by"] == "alice"
    entry = audit(n, action="task.approve", outcome="ok")[0]
    assert entry.actor == "alice" and entry.target == f"task:{run_id}/ask"
    # a created key answers as key:<name>; the legacy key keeps the typed name
    run_id = waiting_run()
    key = bearer(n, new_key(n, "bot", "operator"))
    refused = key.call("POST", f"/api/runs/{run_id}/tasks/ask/reject", {"by": "alice"})
    assert refused.status == 403 and "'key:bot'" in refused.json["error"]["message"]
    typed = admin.call("POST", f"/api/runs/{run_id}/tasks/ask/reject", {"by": "alice"})
    assert typed.status == 200, typed.body  # 'api-key' is no approver: the typed name counts


# ---------------------------------------------------------------- the command line


def _nagare(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or pythonpath_env(),
        check=False,
    )


def test_the_users_command_works_on_the_database_and_is_audited(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    n = start(nagare_factory)
    db = ["--db", n.app.config.db]
    added = _nagare(
        "users", "add", "carol", "--role", "viewer", "--password-stdin", *db, stdin=PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == "Added user carol (role viewer)\n"
    carol = sign_in(n, "carol")  # the running server sees the new user at once
    assert carol.call("GET", "/api/me").json["role"] == "viewer"
    listed = _nagare("users", "list", "--json", *db)
    assert [u["name"] for u in json.loads(listed.stdout)] == ["carol"]
    table = _nagare("users", "list", *db).stdout
    assert table.splitlines()[0].split() == ["NAME", "ROLE", "SOURCE", "STATE", "LAST", "SIGN-IN"]
    assert "carol" in table and PASSWORD not in table
    new = "another password 42"
    changed = _nagare("users", "passwd", "carol", "--password-stdin", *db, stdin=new + "\n")
    assert changed.returncode == 0, changed.stderr
    assert carol.call("GET", "/api/me").status == 401  # its sessions ended
    sign_in(n, "carol", new)
    for args, stdin, message in (
        (("users", "add", "dan", "--role", "boss", "--password-stdin"), PASSWORD, "role 'boss'"),
        (("users", "add", "dan", "--role", "viewer", "--password-stdin"), "short", "at least 8"),
        (("users", "add", "dan", "--role", "viewer"), "", "--password-stdin"),
        (("users", "add", "carol", "--role", "viewer", "--password-stdin"), PASSWORD, "exists"),
        (("users", "remove", "nobody"), "", "no user 'nobody'"),
        (("users", "passwd", "nobody", "--password-stdin"), PASSWORD, "no user 'nobody'"),
    ):
        failed = _nagare(*args, *db, stdin=stdin + "\n")
        assert failed.returncode == 2 and message in failed.stderr, (args, failed.stderr)
        assert "Traceback" not in failed.stderr
    missing = _nagare("users", "list", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no database at" in missing.stderr
    removed = _nagare("users", "remove", "carol", *db)
    assert removed.returncode == 0 and removed.stdout == "Removed user carol\n"
    entries = [e for e in audit(n) if e.actor.startswith("cli:")]
    assert [(e.action, e.target, e.address, e.detail) for e in reversed(entries)] == [
        ("user.create", "user:carol", "local", "role=viewer"),
        ("user.passwd", "user:carol", "local", ""),
        ("user.delete", "user:carol", "local", ""),
    ]
    assert PASSWORD.encode() not in disk_bytes(n) and new.encode() not in disk_bytes(n)


def test_the_users_command_reads_the_db_from_the_settings(tmp_path: Path) -> None:
    (tmp_path / "nagare.yaml").write_text(
        textwrap.dedent(
            f"""
            db: {tmp_path / "team.db"}
            auth_mode: builtin
            roles: {{finance-ops: {{base: operator, tags: [finance]}}}}
            """
        )
    )
    Store(str(tmp_path / "team.db")).close()
    config = ["--config", str(tmp_path / "nagare.yaml")]
    added = _nagare(
        "users", "add", "fin", "--role", "finance-ops", "--password-stdin", *config, stdin=PASSWORD
    )
    assert added.returncode == 0, added.stderr
    env = pythonpath_env(NAGARE_DB=str(tmp_path / "team.db"))
    assert json.loads(_nagare("users", "list", "--json", env=env).stdout)[0]["role"] == (
        "finance-ops"
    )


def test_the_keys_command_creates_lists_and_revokes_through_the_api(
    nagare_factory: Callable[..., Nagare],
) -> None:
    n = start(nagare_factory)
    api = ["--api", n.url, "--api-key", API_KEY]
    created = _nagare("keys", "create", "deploy", "--role", "operator", "--expires", "30d", *api)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("ngk_") and "not shown again" in created.stderr
    assert bearer(n, key).call("GET", "/api/me").json["name"] == "key:deploy"
    listed = json.loads(_nagare("keys", "list", "--json", *api).stdout)
    assert listed[0]["name"] == "deploy" and "key" not in listed[0]
    expires = listed[0]["expires_at"]
    assert abs(parse_iso(expires) - now_ms() - 30 * 86_400_000) < 120_000
    table = _nagare("keys", "list", *api).stdout
    assert listed[0]["id"] in table and key not in table
    revoked = _nagare("keys", "revoke", listed[0]["id"], *api)
    assert revoked.returncode == 0 and "Revoked API key" in revoked.stdout
    assert bearer(n, key).call("GET", "/api/me").status == 401
    dated = _nagare(
        "keys", "create", "d", "--role", "viewer", "--expires", "2099-01-31", "--json", *api
    )
    assert json.loads(dated.stdout)["expires_at"] == "2099-01-31T00:00:00.000Z"
    bad = _nagare("keys", "create", "d", "--role", "viewer", "--expires", "soon", *api)
    assert bad.returncode == 2 and "--expires" in bad.stderr
    refused = _nagare("keys", "list", "--api", n.url, "--api-key", key)
    assert refused.returncode == 1 and "API key revoked" in refused.stderr


# ---------------------------------------------------------------- docs and upgrade


def test_the_readme_table_of_roles_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- roles-table", 1)[1].split("-->", 1)[1]
    table = table.split("<!-- /roles-table -->", 1)[0].strip().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    order = [Role(r) for r in header[2:]]
    assert set(order) == set(Role)
    held = {p for rights in ROLE_RIGHTS.values() for p in rights}
    rows = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[Permission(cells[0].strip("`"))] = [c == "✓" for c in cells[2:]]
    assert set(rows) == held
    for permission, marks in rows.items():
        assert marks == [can_role(role, permission) for role in order], permission


def test_a_previous_release_database_opens_with_users(
    nagare_factory: Callable[..., Nagare], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from test_upgrade import plant_release_database

    plant_release_database(tmp_path)
    caplog.set_level(logging.WARNING)
    n = nagare_factory(auth_mode="builtin", retention_days=0)
    setup = f"python3 nagare.pyz users add admin --role admin --db {n.app.config.db}"
    assert setup in caplog.text
    assert "api_key is not configured" not in caplog.text
    assert http("GET", n.url + "/api/runs").status == 401
    added = _nagare(
        "users",
        "add",
        "admin",
        "--role",
        "admin",
        "--password-stdin",
        "--db",
        n.app.config.db,
        stdin=PASSWORD,
    )
    assert added.returncode == 0, added.stderr
    admin = sign_in(n, "admin")
    runs = admin.call("GET", "/api/runs").json
    assert runs["total"] > 0 and {r["dag_id"] for r in runs["data"]} >= {"flaky"}
    run_id = runs["data"][0]["run_id"]
    assert admin.call("GET", f"/api/runs/{run_id}/tasks").status == 200


def test_hashes_carry_their_costs_and_refuse_malformed_input() -> None:
    stored = hash_password(PASSWORD)
    assert stored.startswith("scrypt$16384$8$1$") and PASSWORD not in stored
    assert stored != hash_password(PASSWORD)  # a salt each
    assert verify_password(PASSWORD, stored) and not verify_password(PASSWORD + "x", stored)
    for bad in (None, "", "md5$x", "scrypt$a$b$c$d$e", "scrypt$16384$8$1$zz$00"):
        assert not verify_password(PASSWORD, bad)
    assert not verify_password("x" * 5000, stored)


def test_a_role_that_nagare_yaml_dropped_is_refused_never_widened(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "nagare.db"))
    try:
        declared = all_roles(parse_roles(ROLES))
        before = Accounts(store, declared, 12)
        before.add_user("fin", "finance-ops", PASSWORD, 1_000)
        token, _ = before.start_session("fin", "127.0.0.1", 1_000)
        _, key = before.create_key("fin-key", "finance-ops", None, "test", 1_000)
        principal = before.session(token, 2_000)
        assert principal is not None and principal.tags == frozenset({"finance"})
        after = Accounts(store, all_roles({}), 12)  # nagare.yaml no longer names finance-ops
        assert after.session(token, 2_000) is None
        with pytest.raises(Forbidden, match="no longer exists"):
            after.sign_in("fin", PASSWORD, "127.0.0.1", 2_000)
        with pytest.raises(Unauthorized, match="no longer exists"):
            after.key_principal(key, 2_000)
    finally:
        store.close()


def test_a_password_is_typed_twice_on_a_terminal_or_read_from_stdin() -> None:
    import io

    from nagare.cli_accounts import read_password
    from nagare.errors import BadRequest, ConfigError

    typed = iter(["s3cret-pass", "s3cret-pass", "one-pass", "other-pass"])
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return next(typed)

    assert read_password(False, io.StringIO(), ask) == "s3cret-pass"
    assert asked == ["Password: ", "Password again: "]
    with pytest.raises(BadRequest, match="differ"):
        read_password(False, io.StringIO(), ask)
    assert read_password(True, io.StringIO("from stdin  \nsecond line\n")) == "from stdin  "
    with pytest.raises(ConfigError, match="--password-stdin"):
        read_password(False, io.StringIO())  # not a terminal, and no prompt function


def test_with_users_and_no_token_workers_cannot_join(
    nagare_factory: Callable[..., Nagare], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    n = nagare_factory(auth_mode="builtin")
    for verb in ("register", "heartbeat", "poll", "log", "result"):
        refused = http("POST", f"{n.url}/api/workers/{verb}", {})
        assert refused.status == 401, (verb, refused.body)
        assert "no cluster token is set" in refused.json["error"]["message"]
    assert "anyone who can reach this port can join" not in caplog.text


def test_with_users_cors_never_answers_any_origin(nagare_factory: Callable[..., Nagare]) -> None:
    n = nagare_factory(dags={"hello.yaml": HELLO}, auth_mode="builtin")  # no api_key either
    result = http("GET", n.url + "/api/auth/config", headers={"Origin": "https://evil.example"})
    assert result.status == 200
    assert "Access-Control-Allow-Origin" not in result.headers
    preflight = http(
        "OPTIONS",
        n.url + "/api/auth/login",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    open_server = nagare_factory(dags={"hello.yaml": HELLO}, root=n.root / "open")
    anyone = http("GET", open_server.url + "/api/health", headers={"Origin": "https://x.example"})
    assert anyone.headers["Access-Control-Allow-Origin"] == "*"  # auth_mode key without a key


def test_a_new_role_applies_to_open_sessions_at_once(nagare_factory: Callable[..., Nagare]) -> None:
    n = start(nagare_factory)
    add_user(n, "eve", "viewer")
    eve = sign_in(n, "eve")
    assert eve.call("POST", "/api/dags/hello/pause").status == 403
    changed = Who(n, admin_headers()).call("PUT", "/api/users/eve", {"role": "operator"})
    assert changed.json["role"] == "operator"
    assert eve.call("GET", "/api/me").json["permissions"] == ["operate", "read", "self"]
    assert eve.call("POST", "/api/dags/hello/pause").status == 200
