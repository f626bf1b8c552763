"""The HTTP server. It turns each request into a `Request`, asks the application for a `Response`
(or a streaming body), and never lets a traceback reach a client: unexpected errors become a
JSON 500 and are logged here, and every error of the protocol itself (a malformed request line,
over-long headers, a bad HTTP version) is the same JSON shape. Every method, known or not, goes
to the application. The request line and headers are read and the status line and headers
written by `wire.py` (not `http.server`, whose imports cost an idle server ~2.5 MB); `ssl` is
imported only when TLS is configured.

Reading a request has one deadline for the whole of it (request line, headers, body), however
slowly a client trickles; connections are capped (`gate.py`).
"""

from __future__ import annotations

import io
import json
import logging
import re
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from nagare.access import NOBODY, Principal
from nagare.errors import (
    BadRequest,
    ConfigError,
    InvalidParams,
    NagareError,
    Overloaded,
    PayloadTooLarge,
    TooManyRequests,
)
from nagare.http.gate import (
    RETRY_AFTER_SECONDS,
    Gate,
    Limits,
    Slots,
    Ticket,
    reserved_path,
    too_many,
)
from nagare.http.serialize import params_details_json
from nagare.http.wire import RequestHandler

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("nagare.http")
WRITE_TIMEOUT_SECONDS = 30  # each send of a response (a client that stops reading is dropped)
_SERVER_ERRORS = {  # what the protocol layer answers itself, as error codes of the JSON shape
    400: "bad_request",
    408: "request_timeout",
    414: "uri_too_long",
    431: "headers_too_large",
    501: "not_implemented",
    503: "overloaded",
    505: "http_version_not_supported",
}
MAX_DETAIL_VALUE_CHARS = 200  # one fact of an audit entry's detail (an approval's comment)
MAX_DETAIL_CHARS = 1000


def audit_detail(detail: str, facts: dict[str, object]) -> str:
    """`detail` with `name=value` facts appended, each value on one line and cut at
    MAX_DETAIL_VALUE_CHARS (a value with a space, '=' or '"', or an empty one, in JSON's double
    quotes), the whole at MAX_DETAIL_CHARS."""
    parts = [detail] if detail else []
    for name, value in facts.items():
        text = " ".join(str(value).split())
        if len(text) > MAX_DETAIL_VALUE_CHARS:
            text = text[: MAX_DETAIL_VALUE_CHARS - 3] + "..."
        if _UNQUOTED.search(text):  # quoted: a comment cannot pass for facts (`x by=admin`)
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{name}={text}")
    return " ".join(parts)[:MAX_DETAIL_CHARS]


_UNQUOTED = re.compile(r'[\s="]|^$')  # a fact's value with one of these is quoted
_QUERY_PAIR = re.compile(r"([?&])([^=&\s\"]*)=([^&\s\"]*)")


def masked_query_token(line: str) -> str:
    """`line` with the value of every `token=` query parameter starred, however its name is
    spelt (`%74oken` is `token` to the parser too): a key never reaches the server log."""

    def star(match: re.Match[str]) -> str:
        if unquote_plus(match.group(2)).lower() != "token":
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}=***"

    return _QUERY_PAIR.sub(star, line)


@dataclass
class Request:
    method: str
    path: str  # raw (still percent-encoded) path
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    address: str = ""  # the client's IP address
    principal: Principal = NOBODY  # who it is, once the route's checks admitted it
    # what a handler adds to its route's audit entry: actor (a sign-in's name), target, detail
    audit: dict[str, str] = field(default_factory=dict)
    # whether the client has closed its connection (long polls check it before handing out work)
    client_gone: Callable[[], bool] = lambda: False

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def int_arg(self, name: str, default: int, low: int, high: int) -> int:
        """A whole-number query parameter in [low, high] (`default` when absent); BadRequest
        naming it otherwise."""
        raw = self.arg(name)
        if raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(
                f"query parameter '{name}' must be a whole number, found '{raw[:40]}'"
            ) from None
        if not low <= value <= high:
            raise BadRequest(
                f"query parameter '{name}' must be between {low} and {high}, found {value}"
            )
        return value

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def note(self, **facts: object) -> None:
        """Add facts to this request's audit entry (`run_id=... runs=3`): ids, counts, names,
        never a secret, a request body or a run's params."""
        self.audit["detail"] = audit_detail(self.audit.get("detail", ""), facts)

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
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"
    try:
        body = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (a YAML "\ud800" echoed back): JSON escapes
        body = (json.dumps(data, separators=(",", ":")) + "\n").encode()
    return Response(status, body)


def error_response(err: NagareError) -> Response:
    body: dict[str, Any] = {"error": {"code": err.code, "message": err.message}}
    if isinstance(err, InvalidParams):
        body["error"]["details"] = params_details_json(err)
    response = json_response(body, err.status)
    if err.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nagare"'
    if err.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(err, TooManyRequests):
        response.headers["Retry-After"] = str(err.retry_after)
    allow = getattr(err, "allow", None)
    if allow:
        response.headers["Allow"] = ", ".join(allow)
    return response


App = Callable[[Request], Response]


class _Deadline(io.RawIOBase):
    """The socket as a raw stream whose reads share one deadline: a request must arrive whole
    by `deadline` (monotonic), whatever the pace of its bytes. `arm` sets the deadline of the
    next request; `disarm` leaves reads (there are none while a response is written) unbounded.
    The bytes the gate already read come first."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        super().__init__()
        self.sock = sock
        self.prefix = prefix
        self.deadline: float | None = None
        self._then: float | None = None  # seconds for the rest once the first byte arrived

    def arm(self, deadline: float, then_seconds: float | None = None) -> None:
        self.deadline, self._then = deadline, then_seconds

    def disarm(self) -> None:
        self.deadline = self._then = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the request was not received in time")
            self.sock.settimeout(remaining)
        n = self.sock.recv_into(buffer)
        if n and self._then is not None:  # the next request has begun: its own deadline
            self.deadline, self._then = time.monotonic() + self._then, None
        return n


class _InFlight:
    """The requests the application is answering (a stop waits for them before the database
    closes under them)."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is being answered, at most `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


class _Handler(RequestHandler):
    server: NagareHTTPServer
    disable_nagle_algorithm = True  # small responses leave at once, not after a delayed ACK
    # a buffered writer: the status line, headers and body of a response leave in one send
    # (one segment, one wake-up of the client), flushed at the end of each request
    wbufsize = 64 * 1024
    timeout = WRITE_TIMEOUT_SECONDS

    def __init__(
        self, request: Any, client_address: Any, server: Any, ticket: Ticket | None = None
    ) -> None:
        self.ticket = ticket or Ticket(False, time.monotonic())
        self.requests = 0
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the file socketserver opened; reads go through the deadline
        self.reader = _Deadline(self.connection, self.ticket.prefix)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        """One request: read it within its deadline, then answer it (every method goes to
        `_serve`; the protocol's own errors are JSON through `send_error`)."""
        self._arm()
        self.requests += 1
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.command = ""
                self.request_version = "HTTP/1.1"
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            if self.request_version == "HTTP/0.9":
                self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not supported")
                return
            self._serve()
            self.wfile.flush()
        except (OSError, ValueError):  # timed out, reset, a failed TLS handshake, closed
            self.close_connection = True

    def _arm(self) -> None:
        limits = self.server.limits
        if self.requests == 0:  # the first request counts from the connection's accept
            total = limits.reserved_read_seconds if self.ticket.reserved else limits.request_seconds
            self.reader.arm(self.ticket.accepted_at + total)
        else:  # a kept-alive connection: the next request begins soon, then has its deadline
            self.reader.arm(time.monotonic() + limits.idle_seconds, limits.request_seconds)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The protocol's own errors, in the JSON error shape."""
        if self.request_version in ("HTTP/0.9", ""):  # else no status line would be written
            self.request_version = "HTTP/1.0"
        status = HTTPStatus(code)
        text = message or status.phrase
        if explain and explain != text:
            text = f"{text}: {explain}"
        self.close_connection = True
        self._done_reading()
        body = {"error": {"code": _SERVER_ERRORS.get(code, "error"), "message": text}}
        self._send(json_response(body, code))
        self.wfile.flush()

    def _done_reading(self) -> None:
        """The request is in (or refused): no read deadline while the answer is written."""
        self.reader.disarm()
        self.connection.settimeout(WRITE_TIMEOUT_SECONDS)

    def _serve(self) -> None:
        try:
            try:
                request = self._request()
            finally:
                self._done_reading()
            if self.ticket.reserved and not reserved_path(request.path):
                self.close_connection = True
                self._send(error_response(Overloaded(too_many(self.server.limits))))
                return
            with self.server.requests:
                response = self.server.app(request)
                self._send(response)
            return
        except (ConnectionError, TimeoutError):  # a client too slow to send its body: drop it
            self.close_connection = True
            return
        except NagareError as err:
            response = error_response(err)
            self.close_connection = self.close_connection or err.status == 413
        except Exception:
            log.exception(
                "unexpected error serving %s %s", self.command, masked_query_token(self.path)
            )
            response = error_response(NagareError("internal error; see the server log"))
        self._send(response)

    def _request(self) -> Request:
        parts = urlsplit(self.path)
        headers = self.headers
        return Request(
            method=self.command,
            path=parts.path or "/",
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=headers,
            body=self._body(headers),
            address=str(self.client_address[0]) if self.client_address else "",
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
            log.exception("stream for %s failed", masked_query_token(self.path))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), masked_query_token(format % args))


class NagareHTTPServer(socketserver.TCPServer):
    """Accepts connections; each one that gets a slot (see `gate.py`) is served in a thread of
    its own, the others wait in the gate's thread for their request line or a 503."""

    allow_reuse_address = True
    request_queue_size = 1024  # a burst of connections waits in the kernel, not refused

    def server_bind(self) -> None:
        """Bind, without `http.server`'s reverse DNS lookup of the listen address (`getfqdn`:
        a wait on a slow resolver at every start, for a name nothing here reads)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        max_body_bytes: int,
        tls: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limits = limits or Limits()
        self.slots = Slots(self.limits)
        self.poll_interval = 0.5  # how soon `shutdown()` is noticed
        self._gate: Gate | None = None  # started at the first connection beyond the cap
        self._gate_stop = threading.Event()
        self._gate_thread: threading.Thread | None = None
        self.requests = _InFlight()  # requests inside the application
        if tls is not None:  # the handshake runs in the request thread, under its deadline
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def run(self, stop: threading.Event) -> None:
        """Accept connections until `shutdown()`."""
        self.serve_forever(poll_interval=self.poll_interval)

    def process_request(self, request: Any, client_address: Any) -> None:
        accepted_at = time.monotonic()
        if self.slots.take_general():
            self.serve_connection(request, client_address, Ticket(False, accepted_at))
        else:
            self._gate_for_overflow().admit(request, client_address, accepted_at)

    def serve_connection(self, request: Any, client_address: Any, ticket: Ticket) -> None:
        """A thread for a connection that holds a slot (freed when the connection ends)."""
        thread = threading.Thread(
            target=self._connection, args=(request, client_address, ticket), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the slot goes back, the client is closed
            self.slots.release(ticket.reserved)
            self.shutdown_request(request)

    def _connection(self, request: Any, client_address: Any, ticket: Ticket) -> None:
        try:
            _Handler(request, client_address, self, ticket)
        except Exception:
            log.exception("unexpected error on the connection from %s", client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release(ticket.reserved)

    def _gate_for_overflow(self) -> Gate:
        if self._gate is None:
            self._gate = Gate(self.limits, self.slots, self.serve_connection)
            self._gate_thread = threading.Thread(
                target=self._gate.run, args=(self._gate_stop,), daemon=True, name="http-gate"
            )
            self._gate_thread.start()
        return self._gate

    def server_close(self) -> None:
        super().server_close()
        self._gate_stop.set()
        if self._gate is not None and self._gate_thread is not None:
            self._gate.wake()
            self._gate_thread.join(timeout=5)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """HTTPS with the settings `tls_cert` and `tls_key` (PEM files); None when neither is set."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("tls_cert and tls_key must be given together")
    import ssl  # OpenSSL's libcrypto and libssl: mapped only by a server that speaks TLS

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} / key {key}: {exc}") from None
    return context
