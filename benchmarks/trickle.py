"""The `trickle1000` workload: `GET /api/health` latency while 1,000 slow clients (slowloris)
trickle their requests one byte every few seconds, then while 1,500 do (more than the server's
open-file limit at start), next to the same probe on the same server with no load (the floor).

The server runs with a soft open-file limit of 1,024 (a common default; the hard limit is left
as it is). Each slow client connects, then sends one byte of `GET /api/dags HTTP/1.1` and a
never-ending header every `TRICKLE_SECONDS`; a client the server drops (closed or answered)
connects again `RECONNECT_SECONDS` later, so 1,000 keep trying. The probe opens a new connection per
request, as a load balancer's health check does, and gives up after `PROBE_TIMEOUT` seconds (a
failure; it counts as that many seconds in the percentiles).
"""

from __future__ import annotations

import contextlib
import http.client
import resource
import selectors
import socket
import threading
import time

from harness import Server, percentile
from report import Row
from workloads import Settings

CLIENTS = (1000, 1500)  # the slow clients of each measurement, one after the other
TRICKLE_SECONDS = 3.0  # each slow client sends a byte this often
RECONNECT_SECONDS = 1.0  # a dropped client connects again this much later
SOFT_OPEN_FILES = 1024  # the server's soft RLIMIT_NOFILE at start
PROBE_TIMEOUT = 5.0
PROBE_INTERVAL = 0.05
SLOW_REQUEST = b"GET /api/dags HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 4096
TARGET_P99_MS = 100.0


class _Slowloris:
    """`clients` connections, each trickling a byte every TRICKLE_SECONDS, in one thread."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.clients = clients  # may be raised while it runs
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}
        self.due: dict[socket.socket, float] = {}
        self.stop = threading.Event()
        self.connects = 0
        self.drops = 0
        self.failed_connects = 0
        self.returning: list[float] = []  # when each dropped client connects again
        self.thread = threading.Thread(target=self._run, daemon=True, name="slowloris")

    def __enter__(self) -> _Slowloris:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for sock in list(self.sent):
            self._close(sock)
        self.selector.close()

    @property
    def open(self) -> int:
        return len(self.sent)

    def _connect(self, now: float, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", self.port)) not in (0, 115):  # 115: EINPROGRESS
            self.failed_connects += 1
            sock.close()
            return
        self.connects += 1
        self.sent[sock] = 0
        # spread the bytes of all clients evenly over the trickle period
        self.due[sock] = now + (index % 100) / 100 * TRICKLE_SECONDS
        self.selector.register(sock, selectors.EVENT_READ)

    def _close(self, sock: socket.socket) -> None:
        self.sent.pop(sock, None)
        self.due.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(sock)
        sock.close()

    def _dropped(self, sock: socket.socket) -> None:
        self.drops += 1
        self._close(sock)
        self.returning.append(time.monotonic() + RECONNECT_SECONDS)

    def _run(self) -> None:
        index = 0
        while not self.stop.is_set():
            now = time.monotonic()
            self.returning = [at for at in self.returning if at > now]  # these may come back
            while self.open + len(self.returning) < self.clients and not self.stop.is_set():
                self._connect(now, index)
                index += 1
                if self.failed_connects > 10 * self.clients:
                    break
            for key, _ in self.selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    sock.recv(65536)  # an answer (503) or the end: either way it was dropped
                self._dropped(sock)
            now = time.monotonic()
            for sock, due in list(self.due.items()):
                if due > now:
                    continue
                position = self.sent[sock]
                try:
                    sock.send(SLOW_REQUEST[position : position + 1])
                except (BlockingIOError, InterruptedError):
                    pass  # still connecting
                except OSError:
                    self._dropped(sock)
                    continue
                else:
                    self.sent[sock] = min(position + 1, len(SLOW_REQUEST) - 1)
                self.due[sock] = now + TRICKLE_SECONDS


def _probe(port: int, seconds: float) -> tuple[list[float], int]:
    """GET /api/health on a new connection every PROBE_INTERVAL for `seconds`: the latencies
    (a failure counts as PROBE_TIMEOUT) and the number of failures."""
    samples: list[float] = []
    failures = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
        try:
            conn.request("GET", "/api/health")
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        finally:
            conn.close()
        elapsed = time.perf_counter() - started
        if not ok:
            failures += 1
            elapsed = max(elapsed, PROBE_TIMEOUT)
        samples.append(elapsed)
        time.sleep(max(0.0, PROBE_INTERVAL - (time.perf_counter() - started)))
    return samples, failures


def _limit_open_files() -> None:
    """In the server's child process before exec: the soft open-file limit of many hosts."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_OPEN_FILES, hard))


def _text(samples: list[float], failures: int) -> str:
    p50, p99 = percentile(samples, 50) * 1000, percentile(samples, 99) * 1000
    failed = f", {failures}/{len(samples)} failed" if failures else ""
    return f"p50 {p50:.1f} ms / p99 {p99:.1f} ms{failed}"


def trickle1000(cfg: Settings) -> list[Row]:
    """Health latency with 1,000 then 1,500 trickling clients against the floor (no load), all
    on the same server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * max(CLIENTS):  # this process holds the client sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * max(CLIENTS)), hard))
    measure = 4.0 if cfg.quick else 8.0
    found: list[tuple[int, list[float], int, int, int]] = []
    with Server(cfg.launcher, preexec=_limit_open_files) as server:
        floor, floor_failures = _probe(server.port, 2.0 if cfg.quick else 3.0)
        cfg.say(f"  floor (no load): {_text(floor, floor_failures)}")
        with _Slowloris(server.port, CLIENTS[0]) as slow:
            for clients in CLIENTS:
                slow.clients = clients
                time.sleep(2.0)  # the clients connect and the server's slots fill
                before = (slow.connects, slow.drops)
                loaded, failures = _probe(server.port, measure)
                connects, drops = slow.connects - before[0], slow.drops - before[1]
                cfg.say(
                    f"  with {clients} slow clients: {_text(loaded, failures)}; "
                    f"{connects} connects, {drops} dropped by the server meanwhile"
                )
                found.append((clients, loaded, failures, connects, drops))
    return [_row(*result, floor, floor_failures, measure) for result in found]


def _row(
    clients: int,
    loaded: list[float],
    failures: int,
    connects: int,
    drops: int,
    floor: list[float],
    floor_failures: int,
    measure: float,
) -> Row:
    p99 = percentile(loaded, 99) * 1000
    return Row(
        f"health with {clients} trickling clients",
        _text(loaded, failures),
        _text(floor, floor_failures),
        f"p99 {p99 / (percentile(floor, 99) * 1000):.1f}x",
        f"p99 <= {TARGET_P99_MS:.0f} ms, none failed",
        p99 <= TARGET_P99_MS and failures == 0,
        f"GET /api/health on a new connection every {PROBE_INTERVAL * 1000:.0f} ms for "
        f"{measure:.0f} s while {clients} clients each send a byte every "
        f"{TRICKLE_SECONDS:.0f} s and reconnects {RECONNECT_SECONDS:.0f} s after a drop "
        f"({connects} connects, "
        f"{drops} dropped meanwhile); server started with a soft open-file limit of "
        f"{SOFT_OPEN_FILES}; a probe not answered 200 within {PROBE_TIMEOUT:.0f} s is a failure",
    )
