"""Connection admission: how many connections the server holds, and the gate that answers the
ones beyond the cap.

Every accepted connection takes a slot. Under `max_connections` it is served at once (a thread
of its own). Beyond it, the connection waits in the gate (one thread, one selector, no thread
per connection) until its request line arrives, for at most `GATE_SECONDS`: a request for a
reserved path (`/api/health`, `/metrics`, the dashboard's pages, the cluster protocol) then
takes one of the `reserved_connections` slots and is served; anything else, a request line that
does not arrive in time, or a full reserve gets a JSON `503` with `Retry-After` and is closed. The
decisions are the pure functions at the top; the gate is the only I/O here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from nagare.errors import Overloaded

log = logging.getLogger("nagare.http")

GATE_SECONDS = 2.0  # how long a connection beyond the cap may take to send its request line
GATE_CAPACITY = 256  # connections waiting in the gate at once; the oldest make way for new ones
RESERVED_READ_SECONDS = 5.0  # a reserved connection sends the rest of its request this fast
KEEPALIVE_IDLE_SECONDS = 15.0  # longest wait for the next request on a kept-alive connection
FD_MARGIN = 128  # descriptors kept for the database, log files, task pipes and the listener
RETRY_AFTER_SECONDS = 1
MAX_REQUEST_LINE = 8192


@dataclass(frozen=True)
class Limits:
    max_connections: int = 512
    reserved_connections: int = 32
    request_seconds: float = 30.0

    @property
    def idle_seconds(self) -> float:
        return min(KEEPALIVE_IDLE_SECONDS, self.request_seconds)

    @property
    def gate_seconds(self) -> float:
        return min(GATE_SECONDS, self.request_seconds)

    @property
    def reserved_read_seconds(self) -> float:
        return min(RESERVED_READ_SECONDS, self.request_seconds)


@dataclass(frozen=True)
class Ticket:
    """What a connection's handler needs to know: which slot it holds, the bytes the gate
    already read from it, and when it was accepted (its first request's deadline counts
    from there)."""

    reserved: bool
    accepted_at: float
    prefix: bytes = b""


def reserved_path(path: str) -> bool:
    """Paths the reserve serves: what monitoring reads (the liveness probe and the Prometheus
    scrape), the cluster protocol and the dashboard's pages (every path outside `/api`)."""
    if path in ("/api/health", "/metrics") or path.startswith("/api/workers/"):
        return True
    return not (path == "/api" or path.startswith("/api/"))


def affordable_connections(limits: Limits, open_file_limit: int) -> int:
    """`max_connections`, lowered so that it, the reserve and the gate fit in the process's
    open-file limit with `FD_MARGIN` to spare (never below 16)."""
    room = open_file_limit - FD_MARGIN - GATE_CAPACITY - limits.reserved_connections
    return min(limits.max_connections, max(16, room))


def request_path(line: bytes) -> str | None:
    """The path of a request line (`GET /api/health?x HTTP/1.1`); None when it is not one."""
    words = line.decode("latin-1").split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        return None
    return urlsplit(words[1]).path or "/"


def overloaded_answer(what: str) -> bytes:
    """A complete `503` response (the connection is closed after it)."""
    error = Overloaded(what)
    body = json.dumps({"error": {"code": error.code, "message": what}}).encode() + b"\n"
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_SECONDS}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def too_many(limits: Limits) -> str:
    return (
        f"too many connections: the server holds its limit of {limits.max_connections}; retry later"
    )


class Slots:
    """The busy connection counts, general and reserved, under a lock."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.general = 0
        self.reserved = 0
        self._lock = threading.Lock()

    def take_general(self) -> bool:
        with self._lock:
            if self.general >= self.limits.max_connections:
                return False
            self.general += 1
            return True

    def take_for_reserved_path(self) -> bool | None:
        """A general slot when one is free (one freed meanwhile: False), else a reserved one
        (True); None when both are full."""
        with self._lock:
            if self.general < self.limits.max_connections:
                self.general += 1
                return False
            if self.reserved >= self.limits.reserved_connections:
                return None
            self.reserved += 1
            return True

    def release(self, reserved: bool) -> None:
        with self._lock:
            if reserved:
                self.reserved -= 1
            else:
                self.general -= 1


@dataclass
class _Waiting:
    sock: socket.socket
    address: object
    accepted_at: float
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    handshaken: bool = False


class Gate:
    """Connections beyond the cap wait here for their request line (see the module's doc).
    `serve(sock, address, ticket)` hands a connection that got a slot to a handler thread."""

    def __init__(
        self,
        limits: Limits,
        slots: Slots,
        serve: Callable[[socket.socket, object, Ticket], None],
    ) -> None:
        self.limits = limits
        self.slots = slots
        self.serve = serve
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[int, _Waiting] = {}  # by file descriptor, oldest first
        self._incoming: list[tuple[socket.socket, object, float]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)

    def admit(self, sock: socket.socket, address: object, accepted_at: float) -> None:
        """From the accepting thread: the gate takes the connection over."""
        with self._lock:
            self._incoming.append((sock, address, accepted_at))
            first = len(self._incoming) == 1  # else the gate was woken and has not taken them
        if first:
            self.wake()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._turn(time.monotonic())
            except Exception:  # the gate must survive anything one connection does
                log.exception("connection gate failed a turn")
        self._close_all()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _turn(self, now: float) -> None:
        deadline = min((w.deadline for w in self._waiting.values()), default=now + 1.0)
        for key, _ in self._selector.select(max(0.0, min(deadline - now, 1.0))):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                continue
            waiting = self._waiting.get(key.fd)
            if waiting is not None:
                self._progress(waiting)
        self._take_incoming()
        now = time.monotonic()
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            self._reject(waiting, too_many(self.limits))

    def _take_incoming(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for sock, address, accepted_at in incoming:
            while len(self._waiting) >= GATE_CAPACITY:  # the oldest has had its chance
                oldest = next(iter(self._waiting.values()))
                self._progress(oldest)  # its line may have come since the last look
                if self._waiting.get(oldest.sock.fileno()) is oldest:
                    self._reject(oldest, too_many(self.limits))
            try:
                sock.setblocking(False)
                deadline = time.monotonic() + self.limits.gate_seconds
                waiting = _Waiting(sock, address, accepted_at, deadline)
                self._selector.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                _close(sock)
                continue
            self._waiting[sock.fileno()] = waiting
            self._progress(waiting)  # its request line may be there already

    def _progress(self, waiting: _Waiting) -> None:
        sock = waiting.sock
        tls = _tls(sock)
        try:
            if tls and not waiting.handshaken:
                sock.do_handshake()  # type: ignore[attr-defined]
                waiting.handshaken = True
            while True:
                data = sock.recv(4096)
                if not data:
                    self._forget(waiting)
                    _close(sock)
                    return
                waiting.buffer += data
                if not (tls and sock.pending()):  # type: ignore[attr-defined]
                    break
        except OSError as exc:
            event = _wants(exc)
            if event is None:  # reset, or a failed TLS handshake: nothing to answer
                self._forget(waiting)
                _close(sock)
            else:
                self._selector.modify(sock, event)
            return
        self._decide(waiting)

    def _decide(self, waiting: _Waiting) -> None:
        line, found, _ = bytes(waiting.buffer).partition(b"\n")
        if not found:
            if len(waiting.buffer) > MAX_REQUEST_LINE:
                self._reject(waiting, too_many(self.limits))
            return
        path = request_path(line)
        if path is None or not reserved_path(path):
            self._reject(waiting, too_many(self.limits))
            return
        reserved = self.slots.take_for_reserved_path()
        if reserved is None:
            self._reject(waiting, too_many(self.limits) + " (the reserve is full too)")
            return
        self._forget(waiting)
        sock = waiting.sock
        try:
            sock.setblocking(True)
        except OSError:
            self.slots.release(reserved)
            _close(sock)
            return
        ticket = Ticket(reserved, waiting.accepted_at, bytes(waiting.buffer))
        self.serve(sock, waiting.address, ticket)

    def _reject(self, waiting: _Waiting, message: str) -> None:
        self._forget(waiting)
        sock = waiting.sock
        with contextlib.suppress(OSError, ValueError):
            sock.send(overloaded_answer(message))
            _drain(sock)
            sock.shutdown(socket.SHUT_WR)
        _close(sock)

    def _forget(self, waiting: _Waiting) -> None:
        self._waiting.pop(waiting.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(waiting.sock)

    def _close_all(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for sock, _, _ in incoming:
            _close(sock)
        for waiting in list(self._waiting.values()):
            self._forget(waiting)
            _close(waiting.sock)
        self._selector.close()
        _close(self._wake_r)
        _close(self._wake_w)


def _tls(sock: socket.socket) -> bool:
    """Whether `sock` speaks TLS (no socket does before `ssl` is imported: a server without
    TLS never imports it)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def _wants(exc: OSError) -> int | None:
    """The selector event a non-blocking socket waits for after `exc`; None when `exc` is a
    failure of the connection."""
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return selectors.EVENT_READ
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(exc, ssl.SSLWantWriteError):
        return selectors.EVENT_WRITE
    if ssl is not None and isinstance(exc, ssl.SSLWantReadError):
        return selectors.EVENT_READ
    return None


def _drain(sock: socket.socket) -> None:
    """Read what the client already sent: closing a socket with unread data resets the
    connection, and the client could lose the answer."""
    for _ in range(16):
        try:
            if not sock.recv(65536):
                return
        except OSError as exc:
            if _wants(exc) is not None:
                return
            raise


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
