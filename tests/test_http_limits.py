"""The HTTP server under slow clients and too many connections, and its answers to every method
and every malformed request: real server on port 0, real sockets."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from nagare.http.gate import Limits, affordable_connections, request_path, reserved_path
from tests.conftest import Nagare, wait_for

KEY = "limits-api-key-4c3b2a"


def _connect(n: Nagare) -> socket.socket:
    return socket.create_connection(("127.0.0.1", n.app.port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _answer(data: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    is_json = headers.get("content-type") == "application/json" and body.strip()
    return status, headers, json.loads(body) if is_json else body


def _exchange(n: Nagare, raw: bytes) -> tuple[int, dict[str, str], Any]:
    with _connect(n) as sock:
        sock.sendall(raw)
        return _answer(_read_all(sock))


def _get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode()


def _seconds_until_closed(sock: socket.socket, trickle: float | None, limit: float) -> float:
    """Trickle a header byte every `trickle` s (or stay silent) until the server closes."""
    started = time.monotonic()
    sock.settimeout(trickle or limit)
    while time.monotonic() - started < limit:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if trickle:
            try:
                sock.send(b"a")
            except OSError:
                return time.monotonic() - started
    raise AssertionError(f"the server kept the connection for {limit}s")


# ---------------------------------------------------------------- deadlines


def test_a_trickling_client_is_dropped_at_the_request_deadline(nagare_factory: Any) -> None:
    n = nagare_factory(request_timeout_seconds=1.0)
    with _connect(n) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nX-Slow: ")
        # a byte every 0.2 s: each read is quick, the request never ends
        elapsed = _seconds_until_closed(sock, trickle=0.2, limit=5)
    assert 0.8 <= elapsed <= 2.5
    with _connect(n) as sock:  # a body that trickles is bounded the same way
        sock.sendall(b"POST /api/dags/x/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        elapsed = _seconds_until_closed(sock, trickle=0.2, limit=5)
    assert 0.8 <= elapsed <= 2.5
    assert n.get("/api/health")["status"] == "ok"


def test_an_idle_kept_alive_connection_is_closed(nagare_factory: Any) -> None:
    n = nagare_factory(request_timeout_seconds=1.0)
    with _connect(n) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        elapsed = _seconds_until_closed(sock, trickle=None, limit=5)
    assert 0.8 <= elapsed <= 2.5


# ---------------------------------------------------------------- connection cap and reserve


def _fill(n: Nagare, count: int) -> list[socket.socket]:
    """`count` slow clients, each holding a connection with an unfinished request."""
    held = []
    for _ in range(count):
        sock = _connect(n)
        sock.sendall(b"GET /api/dags HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    assert n.app.http is not None
    slots = n.app.http.slots
    wait_for(lambda: slots.general == count, 5, message=f"{count} busy connections")
    return held


def test_beyond_the_cap_new_connections_get_a_503_and_the_reserve_serves_health(
    nagare_factory: Any,
) -> None:
    n = nagare_factory(
        max_connections=3, reserved_connections=2, request_timeout_seconds=6, api_key=KEY
    )
    held = _fill(n, 3)
    try:
        started = time.monotonic()
        status, headers, body = _exchange(n, _get("/api/dags", f"Authorization: Bearer {KEY}"))
        assert status == 503, body
        assert body["error"]["code"] == "overloaded"
        assert "too many connections" in body["error"]["message"]
        assert headers["retry-after"] == "1"
        assert headers["content-type"] == "application/json"
        # the reserve: the liveness probe, the dashboard and the cluster protocol still answer
        status, _, body = _exchange(n, _get("/api/health"))
        assert (status, body["status"]) == (200, "ok")
        status, headers, _ = _exchange(n, _get("/"))
        assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
        poll = json.dumps({"worker_id": "w1"}).encode()
        status, _, body = _exchange(
            n,
            b"POST /api/workers/poll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(poll)}\r\n\r\n".encode()
            + poll,
        )
        assert status not in (401, 503), body  # the protocol answered (an unknown worker)
        # a connection that got a reserved slot serves only reserved paths
        with _connect(n) as sock:
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.sendall(_get("/api/dags", f"Authorization: Bearer {KEY}"))
            assert _answer(_read_all(sock))[0] == 503
        # a silent client beyond the cap is answered 503 after the gate's short wait
        with _connect(n) as sock:
            status, _, body = _answer(_read_all(sock))
        assert status == 503
        assert time.monotonic() - started < 5.5  # all of it while the slow clients held on
        assert n.app.http is not None and n.app.http.slots.general == 3
    finally:
        for sock in held:
            sock.close()


def test_a_full_reserve_answers_503_too(nagare_factory: Any) -> None:
    n = nagare_factory(max_connections=2, reserved_connections=1, request_timeout_seconds=6)
    held = _fill(n, 2)
    try:
        probe = _connect(n)  # takes the reserve and does not finish its request
        held.append(probe)
        probe.sendall(b"GET /api/health HTTP/1.1\r\n")
        assert n.app.http is not None
        slots = n.app.http.slots
        wait_for(lambda: slots.reserved == 1, 5, message="the reserve taken")
        status, _, body = _exchange(n, _get("/api/health"))
        assert status == 503
        assert "reserve is full" in body["error"]["message"]
    finally:
        for sock in held:
            sock.close()
    # once they are gone the server answers everyone again
    wait_for(lambda: slots.general == 0 and slots.reserved == 0, 5, message="slots freed")
    assert n.get("/api/health")["status"] == "ok"


def test_the_admission_rules() -> None:
    assert reserved_path("/api/health")
    assert reserved_path("/api/workers/poll")
    assert reserved_path("/") and reserved_path("/runs/x") and reserved_path("/app.js")
    assert not reserved_path("/api/dags") and not reserved_path("/api/health/x")
    assert reserved_path("/metrics") and not reserved_path("/api")
    assert request_path(b"GET /api/health?x=1 HTTP/1.1\r") == "/api/health"
    assert request_path(b"GET /api/health") is None
    limits = Limits(max_connections=512, reserved_connections=32)
    assert affordable_connections(limits, 20000) == 512
    assert affordable_connections(limits, 1024) == 512
    assert affordable_connections(limits, 800) == 800 - 128 - 256 - 32
    assert affordable_connections(limits, 100) == 16


# ---------------------------------------------------------------- every method, JSON errors


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/dags", "GET, POST"),
        ("FOO", "/api/dags", "GET, POST"),
        ("TRACE", "/api/runs", "GET"),
        ("PUT", "/api/runs/x/kill", "POST"),
        ("GET", "/api/workers/poll", "POST"),
        ("GET", "/metrics", "GET"),
    ],
)
def test_a_wrong_method_needs_the_key_before_it_is_told_405(
    nagare_factory: Any, method: str, path: str, allow: str
) -> None:
    n = nagare_factory(api_key=KEY)
    raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-Echo: marker-5e6f\r\nConnection: close\r\n"
    status, headers, body = _exchange(n, (raw + "\r\n").encode())
    if path == "/metrics" and method == "GET":
        assert status == 401  # the route exists; only the key is missing
        return
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized"
    assert "allow" not in headers
    status, headers, body = _exchange(n, (raw + f"Authorization: Bearer {KEY}\r\n\r\n").encode())
    assert status == 405, body
    assert body["error"]["code"] == "method_not_allowed"
    assert headers["allow"] == allow
    assert headers["content-type"] == "application/json"
    assert b"marker-5e6f" not in json.dumps(body).encode()  # TRACE echoes nothing


def test_unknown_paths_need_the_key_before_404(nagare_factory: Any) -> None:
    n = nagare_factory(api_key=KEY)
    assert _exchange(n, _get("/api/nope"))[0] == 401
    assert _exchange(n, b"FOO /api/nope HTTP/1.1\r\nConnection: close\r\n\r\n")[0] == 401
    status, _, body = _exchange(n, _get("/api/nope", f"Authorization: Bearer {KEY}"))
    assert (status, body["error"]["code"]) == (404, "not_found")
    # open routes stay open, a wrong method on them says so
    assert _exchange(n, _get("/api/health"))[0] == 200
    status, headers, _ = _exchange(n, b"POST /api/health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert (status, headers["allow"]) == (405, "GET")


def test_every_method_gets_json_without_a_key(nagare: Nagare) -> None:
    for method in ("FOO", "TRACE", "PROPFIND", "CONNECT"):
        status, headers, body = _exchange(
            nagare, f"{method} /api/dags HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
        )
        assert (status, body["error"]["code"]) == (405, "method_not_allowed"), method
        assert headers["content-type"] == "application/json"
        status, headers, body = _exchange(
            nagare, f"{method} / HTTP/1.1\r\nConnection: close\r\n\r\n".encode()
        )
        assert status == 404 and body["error"]["code"] == "not_found", method


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /\r\n\r\n", 400, "bad_request"),  # HTTP/0.9
        (b"GET / HTTP/1.x\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, "headers_too_large"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n",
            431,
            "headers_too_large",
        ),
    ],
    ids=["garbage", "http-0.9", "bad-version", "http-2", "long-line", "long-header", "headers"],
)
def test_malformed_requests_get_the_json_error_shape(
    nagare: Nagare, raw: bytes, status: int, code: str
) -> None:
    got, headers, body = _exchange(nagare, raw)
    assert (got, body["error"]["code"]) == (status, code), body
    assert headers["content-type"] == "application/json"
    assert body["error"]["message"]


def test_the_gate_speaks_tls(nagare_factory: Any, tmp_path: Any) -> None:
    import ssl

    from tests.test_security import _self_signed

    cert, key = _self_signed(tmp_path)
    n = nagare_factory(
        max_connections=1, request_timeout_seconds=6, tls_cert=str(cert), tls_key=str(key)
    )
    context = ssl.create_default_context(cafile=str(cert))

    def tls(raw: bytes) -> bytes:
        with context.wrap_socket(_connect(n), server_hostname="127.0.0.1") as sock:
            sock.sendall(raw)
            return _read_all(sock)

    held = context.wrap_socket(_connect(n), server_hostname="127.0.0.1")
    try:
        held.sendall(b"GET /api/dags HTTP/1.1\r\n")
        assert n.app.http is not None
        slots = n.app.http.slots
        wait_for(lambda: slots.general == 1, 5, message="the one slot taken")
        assert _answer(tls(_get("/api/health")))[0] == 200
        status, _, body = _answer(tls(_get("/api/dags")))
        assert (status, body["error"]["code"]) == (503, "overloaded")
    finally:
        held.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from nagare.wiring import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard open-file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
