"""A small client for the Nagare HTTP API: the only module that uses urllib.

Each method names a domain action and returns the parsed JSON answer (dicts and lists as the API
documents them). Every failure, from the server or from the network, raises `ApiError`.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

from nagare import __version__
from nagare.errors import NagareError

JsonObject = dict[str, Any]
# what a kept-alive connection the server closed in the meantime raises on its next use
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
JsonList = list[dict[str, Any]]
SSE_END_EVENT = "end"


class ApiError(NagareError):
    """An API call failed: `status` is the HTTP status (0 when no answer arrived)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


MAX_HEADER_LINE = 65536  # what http.client accepts too
MAX_HEADERS = 100


class _Wire:
    """A kept-alive connection for the cluster protocol, on a plain (or TLS) socket: writes each
    request whole in one send and reads the answer's status line, the few headers it needs and
    the body (Content-Length, chunked, or up to the end), without http.client's objects and
    header parser (a worker sends a few messages per task: they were most of its own CPU time
    per task). Failures raise what http.client would: OSError (a timeout is TimeoutError),
    `RemoteDisconnected` when a kept connection was closed, `HTTPException` for a bad answer."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        self.host, self.port, self.context = host, port, context
        self.timeout: float = 30
        self.sock: socket.socket | None = None
        self._file: Any = None  # the socket's buffered reader

    def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send a whole request; (status, body, whether the server closes the connection)."""
        if self.sock is None:
            self._connect()
        else:
            self.sock.settimeout(self.timeout)
        assert self.sock is not None
        self.sock.sendall(request)
        while True:
            status, version = self._status()
            headers = self._headers()
            if status >= 200:
                break  # (1xx: an interim answer; the real one follows)
        closes = headers.get("connection", "").lower() == "close" or (
            version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive"
        )
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, self._chunked(), closes
        length = headers.get("content-length")
        if length is None:
            return status, self._file.read(), True
        return status, self._exactly(_content_length(length)), closes

    def close(self) -> None:
        sock, file, self.sock, self._file = self.sock, self._file, None, None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock, self._file = sock, sock.makefile("rb")

    def _line(self) -> bytes:
        line: bytes = self._file.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def _status(self) -> tuple[int, str]:
        line = self._line()
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        version, _, rest = line.decode("iso-8859-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise http.client.BadStatusLine(line.decode("iso-8859-1", "replace").strip())
        return int(code), version

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                return headers
            name, _, value = line.decode("iso-8859-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length" and headers.get(name, value) != value:
                raise http.client.HTTPException("two different Content-Length headers")
            headers[name] = value
        raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")

    def _exactly(self, size: int) -> bytes:
        data: bytes = self._file.read(size)
        if len(data) < size:
            raise http.client.IncompleteRead(data, size - len(data))
        return data

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.IncompleteRead(b"".join(parts)) from None
            if size == 0:
                break
            parts.append(self._exactly(size))
            self._exactly(2)  # the CRLF after the chunk
        while self._line() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts)


def _content_length(text: str) -> int:
    try:
        length = int(text)
    except ValueError:
        raise http.client.HTTPException(f"bad Content-Length: {text[:40]!r}") from None
    if length < 0:
        raise http.client.HTTPException(f"bad Content-Length: {text[:40]!r}")
    return length


class ApiClient:
    """`ApiClient("http://localhost:8080", api_key="...")`: one method per API action."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 30) -> None:
        self.base_url = _check_base_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self._kept = threading.local()  # per thread: a kept-alive connection (cluster calls)
        self._kept_all: set[_Wire] = set()  # for `close`
        self._cluster_head = ""  # the cluster messages' headers (see `_cluster_request`)
        self._cluster_prefix = ""
        self._open_lock = threading.Lock()

    def close(self) -> None:
        """Close the kept-alive connections of every thread."""
        with self._open_lock:
            connections, self._kept_all = self._kept_all, set()
        for connection in connections:
            connection.close()

    # ------------------------------------------------------------ system

    def health(self) -> JsonObject:
        return self._object("GET", "/api/health")

    def stats(self) -> JsonObject:
        return self._object("GET", "/api/stats")

    def workers(self) -> JsonList:
        return self._list("GET", "/api/workers")

    def audit(self, filters: dict[str, Any]) -> JsonObject:
        """A page of the audit log: `filters` are GET /api/audit's query (empty ones left out)."""
        return self._object("GET", "/api/audit", query=filters)

    def cluster(self, verb: str, body: JsonObject, timeout: float | None = None) -> JsonObject:
        """One message of the cluster protocol (`POST /api/workers/<verb>`), as a worker sends
        it; `api_key` carries the cluster token. Each thread keeps its connection alive (a
        worker talks all the time); a kept connection the server has closed is replaced once."""
        request = self._cluster_request(verb, json.dumps(body).encode())
        for first_try in (True, False):
            connection, reused = self._connection()
            try:
                connection.timeout = timeout or self.timeout
                status, raw, closes = connection.exchange(request)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(connection)
                if first_try and reused and isinstance(exc, _STALE_CONNECTION):
                    continue
                raise _network_error(self.base_url, exc) from None
            if closes:
                self._drop(connection)
            return self._cluster_answer(verb, status, raw)
        raise AssertionError("unreachable")  # pragma: no cover

    def _cluster_request(self, verb: str, body: bytes) -> bytes:
        """The whole request, head and body: one send."""
        if not self._cluster_head:
            parts = urlsplit(self.base_url)
            authorization = f"Authorization: Bearer {self.api_key}\r\n" if self.api_key else ""
            self._cluster_head = (
                f"Host: {parts.netloc.rpartition('@')[2]}\r\nAccept-Encoding: identity\r\n"
                f"Accept: application/json\r\nUser-Agent: nagare-client/{__version__}\r\n"
                f"{authorization}Content-Type: application/json\r\n"
            )
            self._cluster_prefix = parts.path  # (a Nagare behind a proxy, under a path)
        path = f"{self._cluster_prefix}/api/workers/{quote(verb, safe='')}"
        head = f"POST {path} HTTP/1.1\r\n{self._cluster_head}Content-Length: {len(body)}\r\n\r\n"
        return head.encode("latin-1") + body

    def _connection(self) -> tuple[_Wire, bool]:
        kept: _Wire | None = getattr(self._kept, "connection", None)
        if kept is not None:
            return kept, True
        parts = urlsplit(self.base_url)
        secure = parts.scheme == "https"
        context = ssl.create_default_context() if secure else None
        connection = _Wire(parts.hostname or "", parts.port or (443 if secure else 80), context)
        self._kept.connection = connection
        with self._open_lock:
            self._kept_all.add(connection)
        return connection, False

    def _drop(self, connection: _Wire) -> None:
        self._kept.connection = None
        with self._open_lock:
            self._kept_all.discard(connection)
        connection.close()

    def _cluster_answer(self, verb: str, status: int, raw: bytes) -> JsonObject:
        if status >= 400:
            raise _error_answer(status, raw, "")
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiError(
                status, "bad_response", f"POST /api/workers/{verb} answered with invalid JSON"
            ) from None
        if not isinstance(data, dict):
            raise _unexpected("POST", f"/api/workers/{verb}", "a JSON object", data)
        return data

    # ------------------------------------------------------------ DAGs

    def dags(self, tags: Sequence[str] = ()) -> JsonList:
        """The loaded DAGs; with `tags`, those having any of them."""
        return self._list("GET", "/api/dags", {"tag": list(tags)})

    def dag(self, dag_id: str) -> JsonObject:
        return self._object("GET", _path("api", "dags", dag_id))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> JsonObject:
        body = {} if conf is None else {"conf": conf}
        return self._object("POST", _path("api", "dags", dag_id, "runs"), body=body)

    def backfill(self, dag_id: str, start: str, end: str, dry_run: bool = False) -> JsonObject:
        body = {"start": start, "end": end, "dry_run": dry_run}
        return self._object("POST", _path("api", "dags", dag_id, "backfill"), body=body)

    def pause(self, dag_id: str) -> JsonObject:
        return self._object("POST", _path("api", "dags", dag_id, "pause"))

    def activate(self, dag_id: str) -> JsonObject:
        return self._object("POST", _path("api", "dags", dag_id, "activate"))

    # ------------------------------------------------------------ runs

    def runs(
        self,
        dag_id: str = "",
        status: str = "",
        trigger: str = "",
        page: int | None = None,
        limit: int | None = None,
    ) -> JsonObject:
        query = {"dag_id": dag_id, "status": status, "trigger": trigger}
        return self._object("GET", "/api/runs", query={**query, "page": page, "limit": limit})

    def run(self, run_id: str) -> JsonObject:
        return self._object("GET", _path("api", "runs", run_id))

    def kill_run(self, run_id: str) -> JsonObject:
        return self._object("POST", _path("api", "runs", run_id, "kill"))

    # ------------------------------------------------------------ tasks

    def tasks(self, run_id: str) -> JsonList:
        return self._list("GET", _path("api", "runs", run_id, "tasks"))

    def task(self, run_id: str, task_id: str) -> JsonObject:
        return self._object("GET", _task_path(run_id, task_id))

    def attempts(self, run_id: str, task_id: str) -> JsonList:
        return self._list("GET", _task_path(run_id, task_id, "attempts"))

    def kill_task(self, run_id: str, task_id: str) -> JsonObject:
        return self._object("POST", _task_path(run_id, task_id, "kill"))

    def retry_task(self, run_id: str, task_id: str, downstream: bool = False) -> JsonObject:
        query = {"downstream": "true"} if downstream else None
        return self._object("POST", _task_path(run_id, task_id, "retry"), query=query)

    def retry_run(self, run_id: str) -> JsonObject:
        return self._object("POST", _path("api", "runs", run_id, "retry"))

    def approve(self, run_id: str, task_id: str, by: str = "", comment: str = "") -> JsonObject:
        """Approve a task waiting for approval (409 unless it waits for one)."""
        body = {"by": by, "comment": comment}
        return self._object("POST", _task_path(run_id, task_id, "approve"), body=body)

    def reject(self, run_id: str, task_id: str, by: str = "", comment: str = "") -> JsonObject:
        """Reject a task waiting for approval: it fails (or waits again, with retries left)."""
        body = {"by": by, "comment": comment}
        return self._object("POST", _task_path(run_id, task_id, "reject"), body=body)

    # ------------------------------------------------------------ events

    def emit(self, name: str, payload: Any = None) -> JsonObject:
        """Emit an event: `{"matched": [{run_id, task_id}]}`, the `wait` tasks it resolved."""
        return self._object("POST", _path("api", "events", name), body=payload)

    def logs_text(
        self, run_id: str, task_id: str, attempt: int | None = None, tail: int | None = None
    ) -> str:
        """The log of one attempt (default: the latest) as text, optionally only the last lines."""
        path = _task_path(run_id, task_id, "logs")
        query = {"attempt": attempt, "tail": tail}
        raw = self._call("GET", path, query=query, accept="text/plain")
        return raw.decode("utf-8", errors="replace")

    def follow_logs(
        self, run_id: str, task_id: str, attempt: int | None = None
    ) -> Iterator[tuple[str, str]]:
        """Yield `(event, data)` from the SSE log stream: `("message", line)` for every log line,
        then `("end", '{"status": ...}')` once the task finished; the stream has no timeout."""
        path = _task_path(run_id, task_id, "logs")
        request = self._request("GET", path, {"attempt": attempt}, None, "text/event-stream")
        with self._open(request, timeout=None) as response:
            for event, data in parse_sse(_lines(response, self.base_url)):
                yield event, data
                if event == SSE_END_EVENT:
                    return
        raise ApiError(
            0,
            "stream_closed",
            f"the log stream of task '{task_id}' in run '{run_id}' closed before its end event",
        )

    # ------------------------------------------------------------ API keys

    def keys(self) -> JsonList:
        return self._list("GET", "/api/keys")

    def create_key(self, name: str, role: str, expires_at: str | None = None) -> JsonObject:
        body: dict[str, Any] = {"name": name, "role": role}
        if expires_at:
            body["expires_at"] = expires_at
        return self._object("POST", "/api/keys", body=body)

    def revoke_key(self, key_id: str) -> JsonObject:
        return self._object("DELETE", _path("api", "keys", key_id))

    # ------------------------------------------------------------ plumbing

    def _object(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> JsonObject:
        data = self._json(method, path, query, body, timeout)
        if not isinstance(data, dict):
            raise _unexpected(method, path, "a JSON object", data)
        return data

    def _list(self, method: str, path: str, query: dict[str, Any] | None = None) -> JsonList:
        data = self._json(method, path, query, None, None)
        if not isinstance(data, list):
            raise _unexpected(method, path, "a JSON array", data)
        return cast(JsonList, data)

    def _json(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: Any,
        timeout: float | None = None,
    ) -> Any:
        raw = self._call(method, path, query=query, body=body, timeout=timeout)
        try:
            return json.loads(raw)
        except ValueError:
            if _looks_like_html(raw):
                raise _not_nagare(self.base_url, 200) from None
            raise ApiError(
                200,
                "bad_response",
                f"{method} {path} answered with invalid JSON: {_excerpt(raw)}",
            ) from None

    def _call(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        accept: str = "application/json",
        timeout: float | None = None,
    ) -> bytes:
        request = self._request(method, path, query, body, accept)
        with self._open(request, timeout=timeout or self.timeout) as response:
            try:
                return cast(bytes, response.read())
            except (OSError, http.client.HTTPException) as exc:
                raise _network_error(self.base_url, exc) from None

    def _request(
        self, method: str, path: str, query: dict[str, Any] | None, body: Any, accept: str
    ) -> urllib.request.Request:
        url = self.base_url + path + _query_string(query)
        headers = {"Accept": accept, "User-Agent": f"nagare-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        return urllib.request.Request(url, data=data, method=method, headers=headers)

    def _open(self, request: urllib.request.Request, timeout: float | None) -> Any:
        try:
            if timeout is None:
                return urllib.request.urlopen(request)
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            raise _http_error(err, self.base_url) from None
        except urllib.error.URLError as err:
            raise _network_error(self.base_url, err.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(self.base_url, exc) from None


# ---------------------------------------------------------------- other JSON services

MAX_SERVICE_ANSWER_BYTES = 1024 * 1024


def fetch_json(
    url: str,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, Any]:
    """One call to another service's JSON endpoint (an OpenID provider's discovery document,
    keys or token endpoint): a GET, or a POST of `form` (URL-encoded). Returns the status and
    the parsed answer (None when it is not JSON), error statuses included; raises ApiError
    (status 0) when no answer arrives or it is larger than MAX_SERVICE_ANSWER_BYTES."""
    data = urlencode(form).encode() if form is not None else None
    all_headers = {"Accept": "application/json", "User-Agent": f"nagare/{__version__}"}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, _json_or_none(_read_capped(response, url))
    except urllib.error.HTTPError as err:
        with err:
            return err.code, _json_or_none(_read_capped(err, url))
    except urllib.error.URLError as err:
        raise _service_error(url, err.reason) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _service_error(url, exc) from None


def _read_capped(response: Any, url: str) -> bytes:
    raw = cast(bytes, response.read(MAX_SERVICE_ANSWER_BYTES + 1))
    if len(raw) > MAX_SERVICE_ANSWER_BYTES:
        raise ApiError(0, "too_large", f"{url} answered more than {MAX_SERVICE_ANSWER_BYTES} bytes")
    return raw


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _service_error(url: str, reason: object) -> ApiError:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ApiError(
            0,
            "untrusted_certificate",
            f"the TLS certificate of {url} is not trusted ({reason.verify_message})",
        )
    if isinstance(reason, TimeoutError):
        return ApiError(0, "timeout", f"no answer from {url} in time")
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return ApiError(0, "unreachable", f"cannot reach {url}: {text}")


# ---------------------------------------------------------------- SSE


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Server-Sent Events from text lines (without line endings) -> `(event, data)`.

    Follows the SSE rules: `data:` lines of one event are joined with newlines, `event:` names it
    (default `message`), `id:` and `retry:` are read and not yielded, `:` lines are comments and a
    blank line ends the event. Events without data are dropped."""
    event, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = "", []
            continue
        name, value = _sse_field(line)
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event or "message", "\n".join(data)


def _sse_field(line: str) -> tuple[str, str]:
    if line.startswith(":"):
        return "", ""
    name, _, value = line.partition(":")
    return name, value[1:] if value.startswith(" ") else value


def _lines(response: Any, base_url: str) -> Iterator[str]:
    while True:
        try:
            raw = response.readline()
        except (OSError, http.client.HTTPException) as exc:
            raise _network_error(base_url, exc) from None
        if not raw:
            return
        yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


# ---------------------------------------------------------------- helpers


def _check_base_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiError(
            0,
            "bad_url",
            f"invalid API URL '{base_url}': expected http://HOST:PORT or https://HOST:PORT",
        )
    return url


def _path(*segments: str) -> str:
    """`/api/runs/<run_id>`: each segment percent-encoded, including `/`, `[` and `]`."""
    return "".join("/" + quote(str(s), safe="") for s in segments)


def _task_path(run_id: str, task_id: str, *rest: str) -> str:
    return _path("api", "runs", run_id, "tasks", task_id, *rest)


def _query_string(query: dict[str, Any] | None) -> str:
    pairs = {k: v for k, v in (query or {}).items() if v is not None and v not in ("", [])}
    return "?" + urlencode(pairs, doseq=True) if pairs else ""


def _http_error(err: urllib.error.HTTPError, base_url: str) -> ApiError:
    """The server's `{"error": {"code", "message"}}` answer (or its raw text) as an ApiError."""
    try:
        raw = err.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        err.close()
    return _error_answer(err.code, raw, str(err.reason), base_url)


def _error_answer(status: int, raw: bytes, reason: str, base_url: str = "") -> ApiError:
    code, message = _error_fields(raw)
    if message is None and base_url and status < 500 and _looks_like_html(raw):
        # (a gateway's 502/503 page may stand in front of a Nagare that is down)
        return _not_nagare(base_url, status)
    if message is None:
        message = f"server returned {status}: {_excerpt(raw) or reason}"
    return ApiError(status, code or f"http_{status}", message)


def _error_fields(raw: bytes) -> tuple[str | None, str | None]:
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None, None
    code = error.get("code")
    return (code if isinstance(code, str) else None), error["message"]


class Masters:
    """The masters a worker joins (`--join URL1,URL2,...`, masters sharing one database): its
    cluster messages go to the current one; one that cannot be reached (no answer, or 502-504
    from a proxy in front of it) is left for the next, in turn, and the message is sent there
    (every message names the worker, its pools and the attempts it holds, so it also registers
    the worker with a master that never saw it; leases are rows of the shared database, so any
    master renews them and accepts their results)."""

    FAILOVER_STATUSES = frozenset({0, 502, 503, 504})

    def __init__(self, urls: list[str], api_key: str = "", timeout: float = 30) -> None:
        if not urls:
            raise ValueError("no master URL given")
        self.clients = [ApiClient(url, api_key=api_key, timeout=timeout) for url in urls]
        self._current = 0
        self._lock = threading.Lock()
        self.on_switch: Callable[[str, str], None] = lambda old, new: None

    @property
    def base_url(self) -> str:
        return self.clients[self._current].base_url

    def cluster(self, verb: str, body: JsonObject, timeout: float | None = None) -> JsonObject:
        """One message, to the current master, or to each next one while they cannot be reached
        (the last one's error is raised when none answers)."""
        last: ApiError | None = None
        for _ in range(len(self.clients)):
            index = self._current
            try:
                return self.clients[index].cluster(verb, body, timeout)
            except ApiError as err:
                if err.status not in self.FAILOVER_STATUSES or err.code == "untrusted_certificate":
                    raise
                if not self._move_on(index) and len(self.clients) == 1:
                    raise
                last = err
        assert last is not None
        raise last

    def _move_on(self, failed: int) -> bool:
        """Make the master after `failed` the current one (unless another thread did)."""
        with self._lock:
            if self._current != failed or len(self.clients) == 1:
                return False
            self._current = (failed + 1) % len(self.clients)
            old, new = self.clients[failed].base_url, self.clients[self._current].base_url
        self.on_switch(old, new)
        return True

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _network_error(base_url: str, reason: object) -> ApiError:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ApiError(
            0,
            "untrusted_certificate",
            f"the TLS certificate of {base_url} is not trusted ({reason.verify_message}); for a "
            "private CA, point SSL_CERT_FILE at its certificate",
        )
    if isinstance(reason, TimeoutError):
        return ApiError(0, "timeout", f"no answer from Nagare at {base_url} in time ({reason})")
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return ApiError(0, "unreachable", f"cannot reach Nagare at {base_url}: {text}")


def _unexpected(method: str, path: str, expected: str, data: Any) -> ApiError:
    found = type(data).__name__
    return ApiError(200, "bad_response", f"{method} {path} returned {found}, expected {expected}")


def _looks_like_html(raw: bytes) -> bool:
    """A markup page (`<!DOCTYPE html>`, `<html>`, ...): what a web server, not Nagare, sends."""
    return raw[:512].lstrip().startswith(b"<")


def _not_nagare(base_url: str, status: int) -> ApiError:
    return ApiError(
        status,
        "not_nagare",
        f"{base_url} is not a Nagare API: it answered {status} with an HTML page, not JSON "
        "(check --api or $NAGARE_API_URL: the URL of the Nagare server, e.g. "
        "http://localhost:8080)",
    )


def _excerpt(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
