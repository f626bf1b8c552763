"""The security pass: every route's auth, CORS, planted secrets, path handling, fuzzing of the
OpenAPI document, bounded slow/huge inputs, TLS."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nagare.http.routing import ANY
from tests.conftest import Nagare, http, wait_for

KEY = "planted-api-key-1f2e3d"
TOKEN = "planted-cluster-token-9a8b7c"
HOOK_SECRET = "planted-webhook-secret-5d6e7f"
HOOK_ENV_SECRET = "planted-webhook-env-secret-0a1b"
PLANTED = (KEY, TOKEN, HOOK_SECRET, HOOK_ENV_SECRET)

# Routes that answer without the API key, and why. The cluster protocol routes
# (`/api/workers/register|heartbeat|poll|result|log`) take the cluster token instead, or the API
# key when no token is set: with a key set they answer 401 without it too (checked below).
OPEN_ROUTES = {
    ("GET", "/api/health"): "liveness probes",
    ("GET", "/api/openapi.json"): "the API description",
    ("GET", "/api/schema/dag.json"): "the DAG file format, for editors",
    (ANY, "/api/webhooks/{webhook_path...}"): "per-DAG HMAC signature instead",
    ("GET", "/api/auth/config"): "how to sign in, for the sign-in page",
    ("POST", "/api/auth/login"): "signing in (a name and password instead)",
    ("GET", "/api/auth/oidc/login"): "single sign-on: to the provider (who checks the person)",
    ("GET", "/api/auth/oidc/callback"): "single sign-on: back from the provider (its ID token)",
}
CLUSTER_PREFIX = "/api/workers/"  # the token-protected protocol routes
SAMPLE_PARAMS = {
    "dag_id": "hello",
    "run_id": "hello__manual__x",
    "task_id": "say",
    "task_instance_id": "abc",
    "webhook_path": "x",
    "user_name": "alice",
    "key_id": "k_0123456789ab",
}

HELLO = """
    id: hello
    env: {FROM_DAG: "yes"}
    tasks:
      - id: say
        command: env; echo done
"""
HOOK = f"""
    id: hooked
    trigger:
      type: webhook
      path: /api/webhooks/planted
      secret: "{HOOK_SECRET}"
      extract_payload: {{WHO: ".who"}}
    tasks:
      - id: show
        command: env
"""
HOOK_ENV = """
    id: hooked_env
    trigger: {type: webhook, path: /api/webhooks/planted-env, secret_env: NAGARE_PLANTED_SECRET}
    tasks:
      - id: show
        command: env
"""


def _sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _concrete(path: str) -> str:
    for name, value in SAMPLE_PARAMS.items():
        path = path.replace("{" + name + "...}", value).replace("{" + name + "}", value)
    return path


# ---------------------------------------------------------------- the route table


def test_every_api_route_needs_the_key_unless_listed_as_open(nagare_factory: Any) -> None:
    n = nagare_factory(dags={"hello.yaml": HELLO}, api_key=KEY)
    routes = n.app.api.router.routes
    assert len(routes) > 20
    checked = 0
    for route in routes:
        where = (route.method, route.path)
        if where in OPEN_ROUTES:
            assert route.auth != "key", where
            continue
        expected = "token" if route.path.startswith(CLUSTER_PREFIX) else "key"
        assert route.auth == expected, f"{where} is open but not listed in OPEN_ROUTES"
        method = "POST" if route.method == ANY else route.method
        url = n.url + _concrete(route.path)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
            result = http(method, url, headers={**headers, "Accept": "application/json"})
            assert result.status == 401, (where, headers, result.status, result.body)
            assert result.json["error"]["code"] == "unauthorized"
        if not route.query_token:  # ?token= is honoured on log streams only
            result = http(method, f"{url}?token={KEY}", headers={"Accept": "application/json"})
            assert result.status == 401, where
        checked += 1
    assert checked >= 20
    assert http("GET", n.url + "/api/health").status == 200
    assert http("GET", n.url + "/api/openapi.json").status == 200


# ---------------------------------------------------------------- CORS


def _preflight(n: Nagare, origin: str, path: str = "/api/dags") -> Any:
    return http(
        "OPTIONS",
        n.url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )


def test_cors_allow_list_with_a_key(nagare_factory: Any) -> None:
    ui = "https://ui.example.com"
    n = nagare_factory(api_key=KEY, cors_allowed_origins=(ui,))
    ok = _preflight(n, ui, "/api/dags/hello/runs")
    assert ok.status == 204  # answered before auth
    assert ok.headers["Access-Control-Allow-Origin"] == ui
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    denied = _preflight(n, "https://evil.example.com")
    assert "Access-Control-Allow-Origin" not in denied.headers
    unauthorized = http("GET", n.url + "/api/dags", headers={"Origin": ui})
    assert unauthorized.status == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == ui  # the UI can read the 401
    fine = http("GET", n.url + "/api/dags", headers={"Origin": ui, **n.headers})
    assert fine.status == 200 and fine.headers["Access-Control-Allow-Origin"] == ui


def test_cors_never_sends_a_wildcard_when_a_key_is_set(nagare_factory: Any) -> None:
    n = nagare_factory(api_key=KEY, cors_allowed_origins=("*",))
    for result in (
        _preflight(n, "https://any.example.com"),
        http("GET", n.url + "/api/dags", headers={"Origin": "https://any.example.com"}),
    ):
        assert result.headers.get("Access-Control-Allow-Origin") in (None,)


def test_cors_wildcard_only_without_a_key(nagare: Nagare) -> None:
    result = http("GET", nagare.url + "/api/health", headers={"Origin": "https://x.example"})
    assert result.headers["Access-Control-Allow-Origin"] == "*"
    assert _preflight(nagare, "https://x.example").status == 204
    assert "Access-Control-Allow-Origin" not in http("GET", nagare.url + "/api/health").headers


# ---------------------------------------------------------------- planted secrets


def test_planted_secrets_never_leave_the_server(
    nagare_factory: Any, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setenv("NAGARE_API_KEY", KEY)
    monkeypatch.setenv("NAGARE_TOKEN", TOKEN)
    monkeypatch.setenv("NAGARE_PLANTED_SECRET", HOOK_ENV_SECRET)
    caplog.set_level(logging.DEBUG)
    n = nagare_factory(
        dags={"hello.yaml": HELLO, "hook.yaml": HOOK, "hook_env.yaml": HOOK_ENV},
        api_key=KEY,
        token=TOKEN,
    )
    bodies: list[bytes] = []
    run_ids = [n.trigger("hello", {"A": "1"})]
    for path, secret in (("planted", HOOK_SECRET), ("planted-env", HOOK_ENV_SECRET)):
        body = json.dumps({"who": "me"}).encode()
        result = http(
            "POST",
            f"{n.url}/api/webhooks/{path}",
            raw=body,
            headers={"X-Hub-Signature-256": _sign(body, secret)},
        )
        assert result.status == 202, result.body
        run_ids.append(result.json["run_id"])
        for wrong in ("sha256=00", ""):
            bad = http(
                "POST",
                f"{n.url}/api/webhooks/{path}",
                raw=body,
                headers={"X-Hub-Signature-256": wrong} if wrong else {},
            )
            bodies.append(bad.body)
    for run_id in run_ids:
        n.wait_run(run_id)
    # every GET route with the key, and the error answers without it
    for route in n.app.api.router.routes:
        if route.method != "GET" or "{" in route.path:
            continue
        bodies.append(n.call("GET", route.path).body)
        bodies.append(http("GET", n.url + route.path, headers={"Authorization": "Bearer x"}).body)
    for dag_id in ("hello", "hooked", "hooked_env"):
        bodies.append(n.call("GET", f"/api/dags/{dag_id}").body)
    for run_id in run_ids:
        bodies.append(n.call("GET", f"/api/runs/{run_id}").body)
        for task in n.get(f"/api/runs/{run_id}/tasks"):
            task_path = f"/api/runs/{run_id}/tasks/{quote(task['task_id'])}"
            log = n.call("GET", task_path + "/logs").body
            assert b"FROM_DAG" in log or b"NAGARE_RUN_ID" in log  # it did print its env
            bodies.append(log)
            bodies.append(n.call("GET", task_path + "/attempts").body)
    bodies.append(http("GET", n.url + "/api/dags?token=" + KEY).body)
    server_log = "\n".join(r.getMessage() for r in caplog.records)
    for secret in PLANTED:
        for body in bodies:
            assert secret.encode() not in body, (secret, body[:300])
        assert secret not in server_log
    # the YAML route shows the file as written (documented): the inline secret is there,
    # the environment one never is
    assert HOOK_ENV_SECRET.encode() not in n.call("GET", "/api/dags/hooked_env/yaml").body
    log_files = b"".join(p.read_bytes() for p in (n.root / "logs").rglob("*") if p.is_file())
    for secret in PLANTED:
        assert secret.encode() not in log_files


# ---------------------------------------------------------------- path handling


def _raw(n: Nagare, target: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", n.app.port), timeout=5) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "target",
    [
        "/api/runs/..%2F..%2Fetc/tasks/say/logs",
        "/api/runs/%2e%2e/tasks/say/logs",
        "/api/runs/x/tasks/..%2f..%2fnagare.db/logs",
        "/api/runs/x/tasks/%252e%252e/logs",
        "/api/runs/../../etc/passwd/tasks/say/logs",
        "/api/dags/..%2f..%2fetc%2fpasswd/yaml",
        "/api/dags/%2e%2e/yaml",
        "/api/metrics/tasks/..%2f..",
        "/api/runs/a%00b",
    ],
)
def test_ids_are_validated_and_log_routes_cannot_escape(nagare_factory: Any, target: str) -> None:
    n = nagare_factory(dags={"hello.yaml": HELLO}, api_key=KEY)
    status, body = _raw(n, target)
    assert status in (400, 404), (status, body)
    assert b"root:" not in body and b"SQLite" not in body and b"Traceback" not in body


def test_static_files_do_not_follow_symlinks_out(tmp_path: Path) -> None:
    from nagare.errors import NotFound
    from nagare.http.server import Request
    from nagare.http.static import StaticFiles

    root = tmp_path / "web"
    root.mkdir()
    (root / "index.html").write_text("<html>ui</html>")
    (tmp_path / "secret.txt").write_text("top secret")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    (root / "dir").symlink_to(tmp_path)
    static = StaticFiles(root)
    for path in ("/leak.txt", "/dir/secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
        try:
            response = static.serve(Request("GET", path, {}, {}))
        except NotFound:
            continue
        assert b"top secret" not in response.body, path


# ---------------------------------------------------------------- fuzz


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


@pytest.mark.slow
def test_fuzz_every_operation_of_the_openapi_document(nagare_factory: Any) -> None:
    n = nagare_factory(dags={"hello.yaml": HELLO}, api_key=KEY)
    spec = n.get("/api/openapi.json")
    operations = _operations(spec)
    junk = st.text(max_size=40)
    values = st.one_of(
        junk,
        st.integers(-(10**12), 10**12).map(str),
        st.sampled_from(
            ["hello", "say", "..", "%2e%2e", "a/b", "0", "-1", "99999999999999999999", "\x00"]
        ),
    )
    bodies = st.one_of(
        st.none(),
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | junk,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk, inner, max_size=4),
            max_leaves=10,
        ).map(lambda v: json.dumps(v).encode()),
    )

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.sampled_from(operations), st.data())
    def one(operation: tuple[str, str, dict[str, Any]], data: Any) -> None:
        method, path, op = operation
        query: list[tuple[str, str]] = []
        for param in op.get("parameters", []):
            value = data.draw(values)
            if param["in"] == "path":
                path = path.replace("{" + param["name"] + "}", quote(value, safe="") or "x")
            elif data.draw(st.booleans()):
                query.append((param["name"], value))
        if data.draw(st.booleans()):
            query.append((data.draw(st.sampled_from(["x", "page", "limit"])), data.draw(values)))
        target = path + (
            "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query) if query else ""
        )
        headers = dict(n.headers) if data.draw(st.booleans()) else {}
        if data.draw(st.booleans()):
            headers["Accept"] = data.draw(
                st.sampled_from(["text/html", "*/*", "text/event-stream"])
            )
        raw = data.draw(bodies) if method != "GET" else None
        if headers.get("Accept") == "text/event-stream":
            headers["Accept"] = "application/json"  # a live stream would wait for the task
        result = http(method, n.url + target, raw=raw, headers=headers, timeout=10)
        assert result.status < 500, (method, target, result.status, result.body[:500])
        assert b"Traceback" not in result.body and b'File "' not in result.body

    one()
    assert n.get("/api/health")["status"] == "ok"


# ---------------------------------------------------------------- slow and huge inputs


def test_huge_headers_and_slow_clients_are_bounded(nagare_factory: Any) -> None:
    nagare = nagare_factory(request_timeout_seconds=0.5)
    with socket.create_connection(("127.0.0.1", nagare.app.port), timeout=5) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.split(b" ", 2)[1] in (b"400", b"431")
    many = "".join(f"X-H{i}: v\r\n" for i in range(200))
    with socket.create_connection(("127.0.0.1", nagare.app.port), timeout=5) as sock:
        sock.sendall(f"GET /api/health HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        assert sock.recv(4096).split(b" ", 2)[1] in (b"400", b"431")
    # slowloris: a client that never finishes its headers (or its body) is dropped
    slow = socket.create_connection(("127.0.0.1", nagare.app.port), timeout=5)
    slow.sendall(b"POST /api/dags/x/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    started = time.monotonic()
    assert nagare.get("/api/health")["status"] == "ok"  # others are served meanwhile
    slow.settimeout(5)
    rest = b""
    while chunk := slow.recv(4096):
        rest += chunk
    assert rest == b""  # dropped at the request deadline, no answer and no 500
    assert time.monotonic() - started < 4
    slow.close()
    assert nagare.get("/api/health")["status"] == "ok"


# ---------------------------------------------------------------- TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_serves_https(nagare_factory: Any, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    n = nagare_factory(dags={"hello.yaml": HELLO}, tls_cert=str(cert), tls_key=str(key))
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{n.app.port}/api/health"
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"
    # plain HTTP on the TLS port gets no API answer, and the server stays up
    with socket.create_connection(("127.0.0.1", n.app.port), timeout=5) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            assert b'"status"' not in sock.recv(4096)
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        assert response.status == 200
    wait_for(lambda: os.path.exists(cert), 1)
