"""HTTP/1.1 framing (`nagare/http/wire.py`): the header reader as a pure function over bytes,
and the real server on port 0 over real sockets (keep-alive, `Expect: 100-continue`, refused
header lines, the `Date` header)."""

from __future__ import annotations

import email.utils
import io

import pytest

from nagare.http.wire import MAX_HEADER_LINE, MAX_HEADERS, HeaderError, http_date, read_headers
from tests.conftest import Nagare
from tests.test_http_limits import _answer, _connect, _exchange, _read_all


def _headers(raw: bytes) -> dict[str, str]:
    return read_headers(io.BufferedReader(io.BytesIO(raw)))  # type: ignore[arg-type]


def test_headers_are_lower_cased_trimmed_and_the_last_of_a_name_wins() -> None:
    raw = b"Host: x\r\nX-Twice: one\r\nx-twice:  two \t\r\nEmpty:\r\n\r\nbody"
    assert _headers(raw) == {"host": "x", "x-twice": "two", "empty": ""}


def test_a_folded_line_continues_its_header_with_one_space() -> None:
    assert _headers(b"X-Long: a\r\n  b\r\n\tc\r\nHost: h\r\n\r\n") == {
        "x-long": "a b c",
        "host": "h",
    }


def test_bare_newlines_and_end_of_file_end_the_headers() -> None:
    assert _headers(b"A: 1\nB: 2\n\n") == {"a": "1", "b": "2"}
    assert _headers(b"A: 1\r\n") == {"a": "1"}


@pytest.mark.parametrize(
    "line",
    [b"no colon", b"Bad Name: x", b": no name", b"Na(me): x", b" folded first: x"],
    ids=["no-colon", "space-in-name", "no-name", "not-a-token", "fold-first"],
)
def test_a_line_that_is_not_a_header_is_a_400(line: bytes) -> None:
    with pytest.raises(HeaderError) as caught:
        _headers(line + b"\r\nHost: x\r\n\r\n")
    assert caught.value.status == 400 and "not a header line" in caught.value.explain


def test_two_content_lengths_that_differ_are_a_400_and_a_repeated_equal_one_is_kept() -> None:
    assert _headers(b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n") == {"content-length": "5"}
    with pytest.raises(HeaderError) as caught:
        _headers(b"Content-Length: 5\r\ncontent-length: 50\r\n\r\n")
    assert caught.value.status == 400 and "Content-Length" in caught.value.explain


def test_limits_of_line_length_and_line_count() -> None:
    assert len(_headers(b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS)) + b"\r\n")) == 100
    with pytest.raises(HeaderError, match="Too many headers") as many:
        _headers(b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n")
    assert many.value.status == 431
    with pytest.raises(HeaderError, match="Line too long") as long:
        _headers(b"X: " + b"a" * MAX_HEADER_LINE + b"\r\n\r\n")
    assert long.value.status == 431


def test_http_date_is_the_imf_fixdate_of_the_standard_library() -> None:
    for timestamp in (0.0, 951_782_400.5, 1_796_558_824.0, 4_102_444_799.0):
        assert http_date(timestamp) == email.utils.formatdate(timestamp, usegmt=True)


def test_a_malformed_header_line_gets_the_json_400(nagare: Nagare) -> None:
    status, _, body = _exchange(nagare, b"GET /api/health HTTP/1.1\r\nHost x\r\n\r\n")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert "not a header line" in body["error"]["message"]


def test_a_kept_alive_connection_answers_requests_in_turn(nagare: Nagare) -> None:
    with _connect(nagare) as sock:
        for _ in range(3):
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            status, headers, _ = _answer(head)
            sock.recv(int(headers["content-length"]))
            assert status == 200
            assert headers["server"] == "Nagare"
            assert headers["date"].endswith(" GMT") and len(headers["date"]) == 29
        sock.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")  # HTTP/1.0: closed after the answer
        assert _answer(_read_all(sock))[0] == 200


def test_expect_100_continue_is_answered_before_the_body_is_sent(nagare: Nagare) -> None:
    with _connect(nagare) as sock:
        sock.sendall(
            b"POST /api/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        sock.settimeout(5)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        status, _, body = _answer(_read_all(sock))
        assert (status, body["error"]["code"]) == (404, "not_found")


def test_a_path_of_two_slashes_is_read_as_one(nagare: Nagare) -> None:
    status, _, body = _exchange(nagare, b"GET //api/health HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 200, body
