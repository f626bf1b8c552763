"""HTTP/1.1 framing on a connection: the request line and the header block read, the status
line and the headers written. It is the part of the standard library's `BaseHTTPRequestHandler`
the server used, on `socketserver` alone: importing `http.server` loads `http.client` for its
header reader, and with it `email` (the parser), `ssl` (OpenSSL's libcrypto mapped) and
`html.entities`, about 2.5 MB of an idle server that serves no TLS and sends no mail.

The rules are `http.server`'s (request line, version, `//` paths, keep-alive, `Connection`,
`Expect: 100-continue`, at most 100 header lines of at most 64 KiB each), with stricter ones
where it let `email` guess: a header line without a name and a colon is a 400 (not the end of
the headers), two Content-Length headers that differ are a 400 (RFC 9112: the body's framing
would be ambiguous), and a folded header line (obs-fold) joins its header with one space. What
`server.py` answers, and how it reads a body and streams, stays there.
"""

from __future__ import annotations

import io
import socketserver
import time
from http import HTTPStatus
from typing import Any

MAX_HEADER_LINE = 65536  # bytes of one header line (http.client's limit)
MAX_HEADERS = 100  # header lines of one request (http.client's limit)
_TOKEN_CHARS = frozenset(  # what a header name may hold (RFC 9110's token)
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_BLANKS = " \t"
_TOO_LARGE = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class HeaderError(ValueError):
    """A header block the server refuses: `status` and the message of the answer."""

    def __init__(self, status: HTTPStatus, message: str, explain: str) -> None:
        super().__init__(f"{message}: {explain}")
        self.status, self.message, self.explain = status, message, explain


def read_headers(rfile: io.BufferedIOBase) -> dict[str, str]:
    """The header block up to its empty line: names lower-cased (a repeated name keeps its
    last value), values without surrounding blanks. HeaderError for a line too long, too many
    lines or a line that is not `name: value`."""
    headers: dict[str, str] = {}
    last = ""
    for count in range(MAX_HEADERS + 2):
        raw = rfile.readline(MAX_HEADER_LINE + 1)
        if len(raw) > MAX_HEADER_LINE:
            explain = f"got more than {MAX_HEADER_LINE} bytes when reading header line"
            raise HeaderError(_TOO_LARGE, "Line too long", explain)
        if raw in (b"\r\n", b"\n", b""):
            return headers
        if count == MAX_HEADERS:
            explain = f"got more than {MAX_HEADERS} headers"
            raise HeaderError(_TOO_LARGE, "Too many headers", explain)
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if line[:1] in (" ", "\t") and last:  # obs-fold: the previous header goes on
            headers[last] = f"{headers[last]} {line.strip(_BLANKS)}".strip(_BLANKS)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN_CHARS.issuperset(name):
            explain = f"not a header line ({line[:80]!r})"
            raise HeaderError(HTTPStatus.BAD_REQUEST, "Bad request", explain)
        last = name.lower()
        value = value.strip(_BLANKS)
        if last == "content-length" and headers.get(last, value) != value:
            # two lengths: a proxy in front may have framed the body by the other (smuggling)
            explain = "two Content-Length headers with different values"
            raise HeaderError(HTTPStatus.BAD_REQUEST, "Bad request", explain)
        headers[last] = value
    return headers  # not reached: the range allows one line past the limit


def http_date(timestamp: float) -> str:
    """`Sun, 06 Dec 2026 11:47:04 GMT` (RFC 9110's IMF-fixdate), in English whatever the
    locale."""
    t = time.gmtime(timestamp)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _version_number(version: str) -> tuple[int, int] | None:
    """(1, 1) for `HTTP/1.1`; None when `version` is not `HTTP/<digits>.<digits>`."""
    if not version.startswith("HTTP/"):
        return None
    parts = version[len("HTTP/") :].split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 10 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


class RequestHandler(socketserver.StreamRequestHandler):
    """One connection: `handle_one_request` until the connection is to close. A subclass reads
    the request line into `raw_requestline`, calls `parse_request`, and answers with
    `send_response`, `send_header` and `end_headers` (or `send_error`)."""

    protocol_version = "HTTP/1.1"
    server_version = "Nagare"
    close_connection = True
    raw_requestline = b""
    requestline = ""
    command = ""
    path = ""
    request_version = "HTTP/0.9"
    headers: dict[str, str]
    _headers_buffer: list[bytes]

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        raise NotImplementedError

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        """A line about the request (`send_response` logs each answer); nothing by default."""

    def parse_request(self) -> bool:
        """Request line and headers into `command`, `path`, `request_version` and `headers`,
        and whether the connection stays open; False once an error has been answered."""
        self.command, self.request_version, self.close_connection = "", "HTTP/0.9", True
        self.headers = {}
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) >= 3 and not self._take_version(words[-1]):
            return False
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
            return False
        if len(words) == 2:
            self.close_connection = True
            if words[0] != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({words[0]!r})")
                return False
        self.command, self.path = words[0], words[1]
        if self.path.startswith("//"):  # a `//host` path would read as another site's address
            self.path = "/" + self.path.lstrip("/")
        try:
            self.headers = read_headers(self.rfile)
        except HeaderError as err:
            self.send_error(err.status, err.message, err.explain)
            return False
        return self._connection_rules()

    def _take_version(self, version: str) -> bool:
        number = _version_number(version)
        if number is None:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
            return False
        if number >= (2, 0):
            invalid = f"Invalid HTTP version ({version[len('HTTP/') :]})"
            self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, invalid)
            return False
        self.close_connection = number < (1, 1)
        self.request_version = version
        return True

    def _connection_rules(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        expect = self.headers.get("expect", "").lower()
        if expect == "100-continue" and self.request_version >= "HTTP/1.1":
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
            self.wfile.flush()  # the client waits for it before it sends the body
        return True

    def send_response(self, code: int, message: str | None = None) -> None:
        """The status line and the `Server` and `Date` headers, into the header buffer."""
        self.log_message('"%s" %s %s', self.requestline, str(int(code)), "-")
        self.send_response_only(code, message)
        self.send_header("Server", self.server_version)
        self.send_header("Date", http_date(time.time()))

    def send_response_only(self, code: int, message: str | None = None) -> None:
        if self.request_version == "HTTP/0.9":
            return
        if message is None:
            message = _phrase(code)
        line = f"{self.protocol_version} {int(code)} {message}\r\n"
        self._buffered().append(line.encode("latin-1", "strict"))

    def send_header(self, keyword: str, value: str) -> None:
        if self.request_version != "HTTP/0.9":
            self._buffered().append(f"{keyword}: {value}\r\n".encode("latin-1", "strict"))
        if keyword.lower() == "connection":
            if value.lower() == "close":
                self.close_connection = True
            elif value.lower() == "keep-alive":
                self.close_connection = False

    def end_headers(self) -> None:
        if self.request_version != "HTTP/0.9":
            self._buffered().append(b"\r\n")
            self.wfile.write(b"".join(self._headers_buffer))
            self._headers_buffer = []

    def address_string(self) -> str:
        return str(self.client_address[0])

    def _buffered(self) -> list[bytes]:
        if not hasattr(self, "_headers_buffer"):
            self._headers_buffer = []
        return self._headers_buffer
