"""The worker's own HTTP client for the cluster protocol (`ApiClient.cluster` on `_Wire`):
each answer a server or a proxy in front of it may send is read right, and each broken one is
an ApiError, never a traceback. Real sockets: a tiny server on port 0 answers with raw bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from nagare.client import ApiClient, ApiError

OK = b'{"tasks": [], "cancel": [], "lost": []}'


class RawServer:
    """Accepts connections and answers each request with the next canned bytes; `None` closes
    the connection without answering; once they run out it closes the connection, or with
    `hold` keeps it open (saying nothing more). Records the requests it read."""

    def __init__(self, answers: list[bytes | None], hold: bool = False) -> None:
        self.answers = answers
        self.hold = hold
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    request = self._read_request(conn)
                    if request is None:
                        break
                    self.requests.append(request)
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                while self.hold and conn.recv(65536):
                    pass

    def _read_request(self, conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(65536)
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[list[RawServer]]:
    servers: list[RawServer] = []
    yield servers
    for server in servers:
        server.close()


def _client(
    servers: list[RawServer], answers: list[bytes | None], hold: bool = False
) -> tuple[ApiClient, RawServer]:
    server = RawServer(answers, hold)
    servers.append(server)
    return ApiClient(f"http://127.0.0.1:{server.port}/prefix", api_key="tok", timeout=5), server


def _answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def test_a_request_goes_out_whole_with_its_headers_and_the_connection_is_kept(
    serve: list[RawServer],
) -> None:
    answer = _answer(OK, f"Content-Length: {len(OK)}")
    client, server = _client(serve, [answer, answer])
    assert client.cluster("heartbeat", {"worker_id": "w1"}) == {
        "tasks": [],
        "cancel": [],
        "lost": [],
    }
    assert client.cluster("heartbeat", {"worker_id": "w1"})["tasks"] == []
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].decode()
    assert head.startswith("POST /prefix/api/workers/heartbeat HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in head
    assert "Authorization: Bearer tok" in head and "Content-Type: application/json" in head
    assert server.requests[0].endswith(b'{"worker_id": "w1"}')
    client.close()


def test_chunked_interim_and_http10_answers_are_read(serve: list[RawServer]) -> None:
    chunked = _answer(
        b"5\r\n" + OK[:5] + b"\r\n" + f"{len(OK) - 5:x};ext=1\r\n".encode() + OK[5:] + b"\r\n"
        b"0\r\nX-Trailer: 1\r\n\r\n",
        "Transfer-Encoding: chunked",
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + _answer(OK, f"Content-Length: {len(OK)}")
    old = b"HTTP/1.0 200 OK\r\n" + f"Content-Length: {len(OK)}\r\n\r\n".encode() + OK
    client, server = _client(serve, [chunked, interim, old, _answer(OK, "Content-Length: 39")])
    for _ in range(3):
        assert client.cluster("poll", {})["lost"] == []
    assert server.connections == 1  # HTTP/1.0 without keep-alive: closed after the answer
    assert client._kept.connection is None
    assert client.cluster("poll", {})["lost"] == []
    assert server.connections == 2
    client.close()


def test_an_answer_without_length_is_read_to_the_end_and_the_connection_dropped(
    serve: list[RawServer],
) -> None:
    client, _ = _client(serve, [_answer(OK, "Connection: close")])
    assert client.cluster("poll", {})["cancel"] == []
    assert client._kept.connection is None
    client.close()


def test_an_error_answer_is_the_servers_error(serve: list[RawServer]) -> None:
    body = b'{"error": {"code": "unauthorized", "message": "bad token"}}'
    client, _ = _client(serve, [_answer(body, f"Content-Length: {len(body)}", status="401 No")])
    with pytest.raises(ApiError) as caught:
        client.cluster("poll", {})
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        401,
        "unauthorized",
        "bad token",
    )
    client.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",  # not HTTP
        _answer(OK[:10], f"Content-Length: {len(OK)}", "Connection: close"),  # cut short
        _answer(OK, "Content-Length: many"),
        _answer(OK, f"Content-Length: {len(OK)}", "Content-Length: 2"),  # ambiguous framing
        _answer(b"zz\r\n", "Transfer-Encoding: chunked", "Connection: close"),
        _answer(OK, *(f"X-{i}: y" for i in range(101)), f"Content-Length: {len(OK)}"),
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
        None,  # the connection closed without an answer
    ],
    ids=[
        "not-http",
        "truncated",
        "bad-length",
        "two-lengths",
        "bad-chunk",
        "headers",
        "long-line",
        "closed",
    ],
)
def test_a_broken_answer_is_an_unreachable_master(
    serve: list[RawServer], answer: bytes | None
) -> None:
    client, _ = _client(serve, [answer])
    with pytest.raises(ApiError) as caught:
        client.cluster("poll", {})
    assert caught.value.status == 0 and caught.value.code == "unreachable"
    assert client._kept.connection is None
    client.close()


def test_a_kept_connection_closed_by_the_server_is_replaced_once(serve: list[RawServer]) -> None:
    answer = _answer(OK, f"Content-Length: {len(OK)}")
    client, server = _client(serve, [answer, None, answer])
    assert client.cluster("poll", {})["tasks"] == []
    assert client.cluster("poll", {})["tasks"] == []  # the first connection closed: a new one
    assert server.connections == 2
    client.close()


def test_no_answer_in_time_is_a_timeout(serve: list[RawServer]) -> None:
    client, _ = _client(serve, [b"HTTP/1.1 200 OK\r\n"], hold=True)  # then nothing
    with pytest.raises(ApiError) as caught:
        client.cluster("poll", {}, timeout=0.3)
    assert caught.value.code == "timeout"
    client.close()


def test_nobody_listening_is_unreachable() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ApiError) as caught:
        ApiClient(f"http://127.0.0.1:{port}").cluster("poll", {})
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
