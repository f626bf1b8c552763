"""The HTTP server: the only module that uses http.server. It turns each request into a `Request`,
asks the application for a `Response` (or a streaming body), and never lets a traceback reach a
client: unexpected errors become a JSON 500 and are logged here.
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nagare.errors import BadRequest, ConfigError, NagareError, PayloadTooLarge

log = logging.getLogger("nagare.http")
REQUEST_TIMEOUT_SECONDS = 30
_TOKEN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)  # never log a query token


@dataclass
class Request:
    method: str
    path: str  # raw (still percent-encoded) path
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    # whether the client has closed its connection (long polls check it before handing out work)
    client_gone: Callable[[], bool] = lambda: False

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def json(self) -> Any:
        if not self.body.strip():
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[Callable[[bytes], None]], None] | None = None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        status, (json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
    )


def error_response(err: NagareError) -> Response:
    body = {"error": {"code": err.code, "message": err.message}}
    response = json_response(body, err.status)
    if err.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nagare"'
    allow = getattr(err, "allow", None)
    if allow:
        response.headers["Allow"] = ", ".join(allow)
    return response


App = Callable[[Request], Response]


class _Handler(BaseHTTPRequestHandler):
    server: NagareHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small responses leave at once, not after a delayed ACK
    # a buffered writer: the status line, headers and body of a response leave in one send
    # (one segment, one wake-up of the client), flushed at the end of each request
    wbufsize = 64 * 1024
    timeout = REQUEST_TIMEOUT_SECONDS
    server_version = "Nagare"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def _serve(self) -> None:
        try:
            request = self._request()
            response = self.server.app(request)
        except (ConnectionError, TimeoutError):  # a client too slow to send its body: drop it
            self.close_connection = True
            return
        except NagareError as err:
            response = error_response(err)
            self.close_connection = self.close_connection or err.status == 413
        except Exception:
            log.exception("unexpected error serving %s %s", self.command, self.path)
            response = error_response(NagareError("internal error; see the server log"))
        self._send(response)

    def _request(self) -> Request:
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request(
            method=self.command,
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            body=self._body(headers),
            client_gone=self._client_gone,
        )

    def _client_gone(self) -> bool:
        """True once the peer closed the connection (a peek reads end-of-file)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            data = self.connection.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError, ValueError):  # ValueError: TLS sockets
            return False
        except OSError:
            return True
        return bool(data == b"")

    def _body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.close_connection = True
            raise BadRequest("chunked request bodies are not supported; send Content-Length")
        raw = headers.get("content-length", "0") or "0"
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise BadRequest(f"invalid Content-Length '{raw}'") from None
        if length < 0:
            self.close_connection = True
            raise BadRequest(f"invalid Content-Length '{raw}'")
        limit = self.server.max_body_bytes
        if length > limit:
            self.close_connection = True
            raise PayloadTooLarge(f"the request body has {length} bytes; the limit is {limit}")
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.stream is not None:
                self._send_stream(response)
                return
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _send_stream(self, response: Response) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.wfile.flush()  # the client sees the stream open before its first event
        self.close_connection = True

        def write(data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()

        assert response.stream is not None
        try:
            response.stream(write)
        except (ConnectionError, TimeoutError, ValueError):
            pass
        except Exception:
            log.exception("stream for %s failed", self.path)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), _TOKEN_QUERY.sub(r"\1***", format % args))


class NagareHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        max_body_bytes: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.poll_interval = 0.5  # how soon `shutdown()` is noticed
        if tls is not None:  # the handshake runs in the request thread, under its timeout
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def run(self, stop: threading.Event) -> None:
        """Accept connections (each served in a thread of its own) until `shutdown()`."""
        self.serve_forever(poll_interval=self.poll_interval)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """HTTPS with the settings `tls_cert` and `tls_key` (PEM files); None when neither is set."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("tls_cert and tls_key must be given together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context
