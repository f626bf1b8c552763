"""The executors of the `http` and `chat` step types: HTTP calls with the standard library's
client (`http.client`, `ssl`; no SDK). What to send and what an answer means is pure, in
`engine/http_step.py` and `engine/chat_step.py`; this module does the I/O.

One attempt runs in a thread of its own (the client blocks) and reports its end to the reactor
of the thread that owns the executor, like a container attempt. Its `_Call` is also its handle:
the first of the thread's result, a kill (`cancel`, any thread) and the timeout (a timer of the
reactor) ends the attempt, at once: a kill or a timeout shuts the connection's socket down, so
a thread blocked reading wakes up and ends soon after (its late result, and any line after the
end, is dropped). A connection being opened (name lookup, connect, TLS handshake) is not
interruptible; it is bounded by the socket timeout.

Bounded memory whatever the answer: a body is read in chunks and reading stops at
`MAX_BODY_BYTES` (1 MiB, the `body` output); the first `LOG_BODY_BYTES` (64 KiB) go to the log as
they arrive. Secret values (and a chat step's `api_key`) are masked in everything this module
writes: lines, errors, outputs.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from nagare.engine.chat_step import ChatCall, chat_answer, chat_call, retry_wait
from nagare.engine.http_step import (
    EXIT_NO_RESPONSE,
    EXIT_UNUSABLE,
    LOG_BODY_BYTES,
    MAX_BODY_BYTES,
    Answer,
    StepError,
    WebRequest,
    expected_statuses,
    http_outputs,
    http_request,
    status_expected,
)
from nagare.engine.secrets import apply_mask, mask, mask_values
from nagare.executors import AttemptHandle, AttemptListener, LineSplitter, not_started
from nagare.executors.reactor import Reactor, Timer
from nagare.models import Assignment, AttemptMetrics, Outcome, TaskType

log = logging.getLogger("nagare.web")

# With no timeout_seconds, a call gives up when the server sends nothing for this long.
IDLE_TIMEOUT_SECONDS = 600.0
CHUNK_BYTES = 64 << 10
ERROR_BODY_LOG_BYTES = 8 << 10  # of a chat error answer, in the log


class _Over(Exception):
    """The attempt already ended (killed or timed out): the thread stops."""


# ---------------------------------------------------------------- one attempt


class _Call:
    """One attempt's state, shared by its thread, the killing thread and the reactor's timer;
    also its handle. `finish` delivers exactly one outcome."""

    def __init__(
        self,
        reactor: Reactor,
        listener: AttemptListener,
        kind: str,
        secrets: tuple[str, ...],
    ) -> None:
        self.reactor = reactor
        self.listener = listener
        self.kind = kind
        self.stopped = threading.Event()  # set when the attempt ended (waits are cut short)
        self._masked = mask_values(secrets)
        # reentrant: a listener may cancel the attempt from inside `line` (its log cannot be
        # written), in the thread that holds the lock to deliver that line
        self._lock = threading.RLock()
        self._over = False
        self._sock: socket.socket | None = None
        self._timer: Timer | None = None
        self._began = time.monotonic()

    # ------------------------------------------------------------ output

    def mask(self, text: str) -> str:
        return apply_mask(text, self._masked) if self._masked else text

    def line(self, stream: str, text: str) -> None:
        with self._lock:
            if self._over:
                return
            self.listener.line(stream, self.mask(text))

    def note(self, text: str) -> None:
        self.line("nagare", f"[nagare] {text}")

    # ------------------------------------------------------------ the end

    def finish(self, outcome: Outcome) -> None:
        """From any thread: end the attempt with `outcome`, unless it already ended."""
        with self._lock:
            if self._over:
                return
            self._over = True
            sock, self._sock = self._sock, None
        self.stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        if sock is not None:
            _shut(sock)
        ended = replace(
            outcome,
            error=self.mask(outcome.error),
            outputs={k: self.mask(v) for k, v in outcome.outputs.items()}
            if outcome.outputs
            else outcome.outputs,
            metrics=AttemptMetrics(
                duration_ms=int((time.monotonic() - self._began) * 1000),
                exit_code=outcome.exit_code,
                executor_type=self.kind,
            ),
        )
        self.reactor.post(lambda: self.listener.ended(ended))

    def cancel(self, reason: str = "killed") -> None:
        self.finish(Outcome(exit_code=None, cancelled=True, error=reason))

    def expire(self) -> None:
        """The reactor's timer: timeout_seconds passed."""
        self.finish(Outcome(exit_code=None, timed_out=True, error="timed out"))

    # ------------------------------------------------------------ the connection

    def attach(self, sock: socket.socket | None) -> None:
        """The thread's open connection: a kill or the timeout shuts it down."""
        with self._lock:
            if not self._over:
                self._sock = sock
                return
        if sock is not None:
            _shut(sock)
        raise _Over

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def check(self) -> None:
        if self.stopped.is_set():
            raise _Over

    # ------------------------------------------------------------ running

    def begin(self, reactor: Reactor, timeout: float, body: Callable[[], Outcome]) -> None:
        """(the reactor's thread) Start the attempt's thread and its timeout."""
        if timeout > 0:
            self._timer = reactor.call_later(timeout, self.expire)
        threading.Thread(target=self._run, args=(body,), daemon=True, name="web-call").start()

    def _run(self, body: Callable[[], Outcome]) -> None:
        try:
            outcome = body()
        except _Over:
            return
        except Exception as exc:  # a bug here fails the task, never the thread that owns it
            if self.stopped.is_set():
                return  # the kill or the timeout closed the connection under it
            log.exception("%s step failed in its executor", self.kind)
            outcome = Outcome(exit_code=None, error=f"internal error: {exc}")
        self.finish(outcome)


def _shut(sock: socket.socket) -> None:
    """Wake a thread blocked on `sock` (a plain shutdown, also under TLS) and close it."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# ---------------------------------------------------------------- one exchange


def _tls_context(insecure: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def _exchange(
    call: _Call, request: WebRequest, socket_timeout: float
) -> Iterator[http.client.HTTPResponse]:
    """Send `request` and yield the response (status and headers read; the body not yet).
    Network failures raise StepError(EXIT_NO_RESPONSE's message)."""
    connection: http.client.HTTPConnection
    if request.scheme == "https":
        connection = http.client.HTTPSConnection(
            request.host,
            request.port,
            timeout=socket_timeout,
            context=_tls_context(request.insecure),
        )
    else:
        connection = http.client.HTTPConnection(request.host, request.port, timeout=socket_timeout)
    try:
        try:
            connection.connect()
            call.attach(connection.sock)
            connection.request(
                request.method, request.target, body=request.body, headers=dict(request.headers)
            )
            yield connection.getresponse()
        except _Over:
            raise
        except (OSError, http.client.HTTPException) as exc:
            call.check()
            raise StepError(_network_problem(exc, request, socket_timeout)) from None
    finally:
        call.detach()
        connection.close()


def _network_problem(exc: Exception, request: WebRequest, socket_timeout: float) -> str:
    """Why no HTTP answer came, in a user's words."""
    where = f"{request.host}:{request.port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name '{request.host}': {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is the service running?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"the TLS certificate of {where} is not trusted: {exc.verify_message or exc} "
            "(insecure: true skips the check)"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {where}: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} for {socket_timeout:g}s"
    if isinstance(exc, http.client.HTTPException):
        return f"{where} did not answer with valid HTTP: {type(exc).__name__} {exc}".strip()
    return f"cannot reach {where}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


def _read_body(
    call: _Call, response: http.client.HTTPResponse, on_chunk: Callable[[bytes], None]
) -> tuple[bytes, bool]:
    """The body, in chunks, up to MAX_BODY_BYTES (True when more was left unread)."""
    data = bytearray()
    try:
        while True:
            chunk = response.read1(CHUNK_BYTES)
            call.check()
            if not chunk:
                return bytes(data), False
            room = MAX_BODY_BYTES - len(data)
            if len(chunk) > room:
                data += chunk[:room]
                on_chunk(chunk[:room])
                return bytes(data), True
            data += chunk
            on_chunk(chunk)
    except (OSError, http.client.HTTPException) as exc:
        call.check()
        raise StepError(f"the answer broke off after {len(data)} bytes of body: {exc}") from None


class _BodyLog:
    """The first LOG_BODY_BYTES of a body into the log as lines, as they arrive."""

    def __init__(self, call: _Call, max_line_bytes: int, limit: int = LOG_BODY_BYTES) -> None:
        self.limit = limit
        self.logged = 0
        self._lines = LineSplitter("stdout", call.line, max_line_bytes)

    def feed(self, chunk: bytes) -> None:
        room = self.limit - self.logged
        if room > 0:
            part = chunk[:room]
            self.logged += len(part)
            self._lines.feed(part)

    def close(self) -> None:
        self._lines.close()


def _answer(response: http.client.HTTPResponse, body: bytes, cut: bool) -> Answer:
    return Answer(response.status, response.reason, tuple(response.getheaders()), body, cut)


def _unusable(assignment: Assignment, exc: StepError, kind: str) -> Outcome:
    """A step that cannot be sent: it fails before any connection."""
    return Outcome(
        exit_code=EXIT_UNUSABLE,
        error=mask(str(exc), assignment.secrets),
        metrics=AttemptMetrics(exit_code=EXIT_UNUSABLE, executor_type=kind),
    )


def _socket_timeout(assignment: Assignment, idle: float) -> float:
    timeout = assignment.timeout_seconds
    return min(idle, timeout + 1) if timeout > 0 else idle


# ---------------------------------------------------------------- type: http


class HttpExecutor:
    """`type: http`: one request per attempt; `ended` arrives in the thread owning `reactor`."""

    def __init__(
        self,
        reactor: Reactor,
        max_line_bytes: int = 65536,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self.reactor = reactor
        self.max_line_bytes = max_line_bytes
        self.idle_timeout = idle_timeout

    @property
    def executor_type(self) -> str:
        return TaskType.HTTP

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        try:
            request = http_request(assignment.step, assignment.env)
        except StepError as exc:
            return not_started(
                self.reactor, listener, _unusable(assignment, exc, self.executor_type)
            )
        call = _Call(self.reactor, listener, TaskType.HTTP, assignment.secrets)
        call.begin(
            self.reactor,
            assignment.timeout_seconds,
            lambda: self._attempt(call, assignment, request),
        )
        return call

    def _attempt(self, call: _Call, assignment: Assignment, request: WebRequest) -> Outcome:
        size = f" ({len(request.body)} bytes of body)" if request.body else ""
        call.note(f"> {request.method} {request.url}{size}")
        started = time.monotonic()
        try:
            with _exchange(call, request, _socket_timeout(assignment, self.idle_timeout)) as got:
                ms = int((time.monotonic() - started) * 1000)
                call.note(f"< {got.status} {got.reason} ({ms} ms)")
                for name, value in got.getheaders():
                    call.note(f"< {name}: {value}")
                body_log = _BodyLog(call, self.max_line_bytes)
                body, cut = _read_body(call, got, body_log.feed)
                body_log.close()
                answer = _answer(got, body, cut)
        except StepError as exc:
            return Outcome(exit_code=EXIT_NO_RESPONSE, error=str(exc))
        _note_body(call, answer, body_log.logged)
        return _http_outcome(answer, assignment)


def _note_body(call: _Call, answer: Answer, logged: int) -> None:
    size = len(answer.body)
    if answer.cut:
        length = answer.header("Content-Length")
        total = f" of {length} bytes" if length else ""
        call.note(
            f"body larger than {MAX_BODY_BYTES} bytes{total}: reading stopped there, the "
            f"`body` output is cut to its first {MAX_BODY_BYTES} bytes, the log shows {logged}"
        )
    elif size > logged:
        call.note(f"body: {size} bytes, the first {logged} logged")
    else:
        call.note(f"body: {size} bytes")


def _http_outcome(answer: Answer, assignment: Assignment) -> Outcome:
    expected = expected_statuses(assignment.step)
    if not status_expected(answer.status, expected):
        return Outcome(
            exit_code=answer.status,
            error=f"HTTP {answer.status} {answer.reason}: expected {', '.join(expected)} "
            f"(expect_status); the exit code is the status",
        )
    try:
        outputs = http_outputs(answer, assignment.step.get("output_jq") or {})
    except StepError as exc:
        return Outcome(exit_code=EXIT_UNUSABLE, error=str(exc))
    return Outcome(exit_code=0, outputs=outputs)


# ---------------------------------------------------------------- type: chat


class ChatExecutor:
    """`type: chat`: one LLM call per attempt (up to `len(retry_delays) + 1` tries on 429 and
    5xx answers); `ended` arrives in the thread owning `reactor`."""

    def __init__(
        self,
        reactor: Reactor,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        retry_delays: tuple[float, ...] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.retry_delays = retry_delays
        self.clock = clock

    @property
    def executor_type(self) -> str:
        return TaskType.CHAT

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        try:
            chat = chat_call(assignment.step, assignment.env)
        except StepError as exc:
            return not_started(
                self.reactor, listener, _unusable(assignment, exc, self.executor_type)
            )
        secrets = (*assignment.secrets, chat.api_key) if chat.api_key else assignment.secrets
        call = _Call(self.reactor, listener, TaskType.CHAT, secrets)
        call.begin(
            self.reactor,
            assignment.timeout_seconds,
            lambda: self._attempt(call, assignment, chat),
        )
        return call

    def _attempt(self, call: _Call, assignment: Assignment, chat: ChatCall) -> Outcome:
        call.note(f"> POST {chat.request.url} ({chat.provider}, model {chat.model})")
        for role, content in chat.messages:
            _transcript(call, role, content)
        tries = 0
        while True:
            tries += 1
            try:
                answer = self._try(call, chat, _socket_timeout(assignment, self.idle_timeout))
            except StepError as exc:
                return Outcome(exit_code=EXIT_NO_RESPONSE, error=str(exc))
            if 200 <= answer.status <= 299:
                return _chat_outcome(call, chat, answer)
            wait = self._wait(answer, tries)
            if wait is None:
                return _chat_failure(chat, answer, tries)
            call.note(f"HTTP {answer.status}: trying again in {wait:g}s (try {tries + 1})")
            if call.stopped.wait(wait):
                raise _Over

    def _wait(self, answer: Answer, tries: int) -> float | None:
        retry_after = answer.header("Retry-After")
        now = self.clock()
        if self.retry_delays is None:
            return retry_wait(answer.status, retry_after, tries, now)
        return retry_wait(answer.status, retry_after, tries, now, self.retry_delays)

    def _try(self, call: _Call, chat: ChatCall, socket_timeout: float) -> Answer:
        started = time.monotonic()
        with _exchange(call, chat.request, socket_timeout) as got:
            body, cut = _read_body(call, got, lambda chunk: None)
            answer = _answer(got, body, cut)
        ms = int((time.monotonic() - started) * 1000)
        call.note(f"< {answer.status} {answer.reason} ({ms} ms, {len(body)} bytes)")
        if not 200 <= answer.status <= 299:
            shown = answer.body[:ERROR_BODY_LOG_BYTES].decode("utf-8", errors="replace")
            for text in shown.splitlines() or [""]:
                call.line("stderr", text)
        return answer


def _transcript(call: _Call, role: str, content: str) -> None:
    lines = content.split("\n")
    call.line("stdout", f"{role}: {lines[0]}")
    for text in lines[1:]:
        call.line("stdout", f"  {text}")


def _chat_outcome(call: _Call, chat: ChatCall, answer: Answer) -> Outcome:
    try:
        reply = chat_answer(chat.provider, answer)
    except StepError as exc:
        return Outcome(exit_code=EXIT_UNUSABLE, error=str(exc))
    _transcript(call, "assistant", reply.content)
    call.note(f"tokens: {reply.input_tokens} in, {reply.output_tokens} out")
    return Outcome(exit_code=0, outputs=reply.outputs())


def _chat_failure(chat: ChatCall, answer: Answer, tries: int) -> Outcome:
    after = f" after {tries} tries" if tries > 1 else ""
    hint = " (no api_key was given)" if answer.status == 401 and not chat.api_key else ""
    return Outcome(
        exit_code=answer.status,
        error=f"the {chat.provider} API answered HTTP {answer.status} {answer.reason}{after}"
        f"{hint}; the exit code is the status",
    )
