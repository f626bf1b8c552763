"""The test's own HTTP servers for the `http` and `chat` step types: real `http.server`s on
127.0.0.1 port 0, each in a thread of the test process, optionally over TLS with a self-signed
certificate the test generates (`cryptography`), and an executor harness for those steps.

`WebServer` answers by path (see `_Handler.do_GET`) and records every request it received;
`ChatServer` speaks the two chat wire protocols (OpenAI's `/v1/chat/completions`, Anthropic's
`/v1/messages`, non-streaming) and answers from a script of statuses, then with an echo of the
last user message. No model runs on these machines: this server is the honest substitute."""

from __future__ import annotations

import datetime
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from executor_harness import ExecutorHarness

from nagare.executors import Executor
from nagare.executors.web import ChatExecutor, HttpExecutor

JSON_DOC = {"status": "ok", "items": [1, 2, 3], "name": "nagare", "ratio": 1.5, "none": None}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Script:
    """What the server answers, in order, before its normal answers: (status, headers, body)."""

    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> tuple[int, dict[str, str], bytes] | None:
        with self.lock:
            return self.answers.pop(0) if self.answers else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.received: list[Received] = []
        self.script = Script()
        self.counters: dict[str, int] = {}
        self.sent_bytes = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def count(self, key: str) -> int:
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]


class _Base(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _record(self) -> Received:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        received = Received(self.command, self.path, dict(self.headers.items()), body)
        with self.server.lock:
            self.server.received.append(received)
        return received

    def answer(
        self, status: int, body: bytes, content_type: str = "application/json", **headers: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def scripted(self) -> bool:
        step = self.server.script.next()
        if step is None:
            return False
        status, headers, body = step
        self.answer(status, body, **{k.replace("-", "_"): v for k, v in headers.items()})
        return True


class _Handler(_Base):
    """Paths: /json, /text, /status/N, /flaky/KEY/N (N times 503, then 200), /slow/SECONDS,
    /big/BYTES (streamed), /drip (a byte at a time, never ending), /echo (what it received)."""

    def do_GET(self) -> None:
        received = self._record()
        parts = self.path.split("?")[0].strip("/").split("/")
        name = parts[0]
        if self.scripted():
            return
        if name == "json":
            self.answer(200, json.dumps(JSON_DOC).encode())
        elif name == "text":
            self.answer(200, b"hello\nworld\n", "text/plain")
        elif name == "status":
            self.answer(int(parts[1]), b'{"error": "as asked"}')
        elif name == "flaky":
            failing = self.server.count(parts[1]) <= int(parts[2])
            self.answer(503 if failing else 200, b'{"try": "again"}' if failing else b"{}")
        elif name == "slow":
            self.server.stop.wait(float(parts[1]))
            self.answer(200, b'{"slow": true}')
        elif name == "big":
            self._stream(int(parts[1]))
        elif name == "drip":
            self._drip()
        elif name == "echo":
            self.answer(200, json.dumps(_echo(received)).encode())
        else:
            self.answer(404, b'{"error": "not found"}')

    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET

    def _stream(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = (b"x" * 1023 + b"\n") * 64  # 64 KiB of 1 KiB lines
        left = size
        try:
            while left > 0:
                part = chunk[: min(left, len(chunk))]
                self.wfile.write(part)
                with self.server.lock:
                    self.server.sent_bytes += len(part)
                left -= len(part)
        except OSError:
            return  # the client stopped reading and closed

    def _drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        try:
            while not self.server.stop.wait(0.05):
                self.wfile.write(b"x")
                self.wfile.flush()
        except OSError:
            return


def _echo(received: Received) -> dict[str, Any]:
    return {
        "method": received.method,
        "path": received.path,
        "headers": received.headers,
        "body": received.body.decode(errors="replace"),
    }


class _ChatHandler(_Base):
    def do_POST(self) -> None:
        received = self._record()
        if self.scripted():
            return
        data = received.json
        last = [m["content"] for m in data["messages"] if m["role"] == "user"][-1]
        content = f"echo: {last}"
        if self.path == "/v1/chat/completions":
            body = {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": data["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
            }
        elif self.path == "/v1/messages":
            body = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": data["model"],
                "content": [{"type": "text", "text": content}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 13, "output_tokens": 5},
            }
        else:
            self.answer(404, b'{"error": "unknown path"}')
            return
        self.answer(200, json.dumps(body).encode())


@dataclass
class Running:
    server: _Server
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    @property
    def received(self) -> list[Received]:
        return self.server.received

    def script(self, *answers: tuple[int, dict[str, str], bytes]) -> None:
        self.server.script.answers.extend(answers)


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler], certificate: tuple[Path, Path] | None = None
) -> Iterator[Running]:
    server = _Server(handler)
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Running(server, "https" if certificate else "http")
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def web_server(certificate: tuple[Path, Path] | None = None) -> Any:
    return serving(_Handler, certificate)


def chat_server() -> Any:
    return serving(_ChatHandler)


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files in `folder`)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nagare test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# ---------------------------------------------------------------- the executor harness


class WebHarness(ExecutorHarness):
    """An `http` or `chat` executor on the test thread's reactor; `close()` also reports the
    attempts' threads still alive shortly after their end."""

    def __init__(self, shared: Path, kind: str, **options: Any) -> None:
        self.kind = kind
        self.options = options
        super().__init__(shared, 65536)

    def _make_executor(self) -> Executor:
        if self.kind == "chat":
            return ChatExecutor(self.reactor, **self.options)
        return HttpExecutor(self.reactor, max_line_bytes=self.max_line_bytes, **self.options)

    def step(self, step: dict[str, Any], **fields: Any) -> Any:
        return self.start("", step_type=self.kind, step=step, **fields)

    def _leftovers(self) -> list[str]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and calls_alive():
            time.sleep(0.02)
        return [f"thread {name} still alive" for name in calls_alive()]


def calls_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "web-call" and t.is_alive()]
