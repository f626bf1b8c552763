"""Task logs over HTTP: plain text (`?tail=N`, `?attempt=N`) and Server-Sent Events (history
replay, live lines with `id:` = line number, `Last-Event-ID` resume, `: ping` keep-alives and a
final `event: end` carrying the task status).

SSE is read with a raw `http.client.HTTPConnection` (socket timeout set) and a small parser, so
the bytes on the wire are what is checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPResponse
from typing import Any
from urllib.parse import quote

import pytest
from conftest import Nagare, http, wait_for

NagareFactory = Callable[..., Nagare]


# ---------------------------------------------------------------- a small SSE client


@dataclass
class Event:
    id: str | None
    event: str
    data: str
    at: float  # time.monotonic() when the event was complete

    @property
    def number(self) -> int:
        assert self.id is not None, self
        return int(self.id)


@dataclass
class Comment:
    text: str
    at: float


@dataclass
class SseStream:
    """One open event stream; iterate to get `Event`s and `Comment`s as they arrive."""

    conn: HTTPConnection
    response: HTTPResponse
    retry: int | None = None
    items: list[Event | Comment] = field(default_factory=list)
    closed: bool = False

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str:
        return self.response.getheader(name) or ""

    def __iter__(self) -> Iterator[Event | Comment]:
        fields: dict[str, list[str]] = {}
        while True:
            raw = self.response.readline()
            if not raw:
                self.closed = True
                return
            line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            if line == "":
                if "data" in fields or "event" in fields:
                    event = Event(
                        id=fields.get("id", [None])[-1],
                        event=fields.get("event", ["message"])[-1],
                        data="\n".join(fields.get("data", [])),
                        at=time.monotonic(),
                    )
                    self.items.append(event)
                    yield event
                elif "retry" in fields:
                    self.retry = int(fields["retry"][-1])
                fields = {}
                continue
            if line.startswith(":"):
                comment = Comment(line[1:].strip(), time.monotonic())
                self.items.append(comment)
                yield comment
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)

    def until_end(self, timeout: float = 15) -> list[Event]:
        """Read until `event: end` (then the server must close); returns every event."""
        deadline = time.monotonic() + timeout
        for item in self:
            assert time.monotonic() < deadline, f"no end event within {timeout}s: {self.items}"
            if isinstance(item, Event) and item.event == "end":
                assert self.response.readline() == b"", "data after the end event"
                self.closed = True
                break
        else:
            raise AssertionError(f"the stream closed without an end event: {self.items[-5:]}")
        return self.events

    @property
    def events(self) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event)]

    @property
    def lines(self) -> list[Event]:
        return [e for e in self.events if e.event == "message"]

    @property
    def end(self) -> dict[str, Any]:
        ends = [e for e in self.events if e.event == "end"]
        assert len(ends) == 1, self.events[-3:]
        return json.loads(ends[0].data)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.close()


def logs_path(run_id: str, task_id: str, query: str = "") -> str:
    path = f"/api/runs/{run_id}/tasks/{quote(task_id, safe='')}/logs"
    return path + (f"?{query}" if query else "")


def open_stream(
    nagare: Nagare,
    run_id: str,
    task_id: str,
    query: str = "",
    headers: dict[str, str] | None = None,
    timeout: float = 5,
) -> SseStream:
    conn = HTTPConnection("127.0.0.1", nagare.app.port, timeout=timeout)
    all_headers = {**nagare.headers, "Accept": "text/event-stream", **(headers or {})}
    conn.request("GET", logs_path(run_id, task_id, query), headers=all_headers)
    return SseStream(conn, conn.getresponse())


def stream_all(nagare: Nagare, run_id: str, task_id: str, **kw: Any) -> SseStream:
    timeout = kw.pop("read_timeout", 15)
    stream = open_stream(nagare, run_id, task_id, **kw)
    try:
        assert stream.status == 200, stream.response.read()
        stream.until_end(timeout)
    finally:
        stream.close()
    return stream


def assert_numbered(events: list[Event], first: int, texts: list[str]) -> None:
    """Data events carry consecutive line numbers from `first`, without duplicates."""
    assert [e.data for e in events] == texts
    assert [e.number for e in events] == list(range(first, first + len(texts)))


def wait_status(nagare: Nagare, run_id: str, task_id: str, *statuses: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        task = nagare.task(run_id, task_id)
        return task if task["status"] in statuses else None

    return wait_for(check, 15, message=f"{task_id} in {statuses}")  # type: ignore[no-any-return]


def wait_log(nagare: Nagare, run_id: str, task_id: str, text: str, timeout: float = 15) -> None:
    wait_for(lambda: text in nagare.log(run_id, task_id), timeout, message=f"'{text}' logged")


def text_log(nagare: Nagare, run_id: str, task_id: str, query: str = "") -> tuple[int, str]:
    result = nagare.call("GET", logs_path(run_id, task_id, query))
    return result.status, result.text


def assert_error(result: Any, status: int, code: str, fragment: str) -> None:
    assert result.status == status, (result.status, result.body)
    body = result.json
    assert body == {"error": {"code": code, "message": body["error"]["message"]}}
    assert fragment in body["error"]["message"], body


# ---------------------------------------------------------------- DAGs

TEN = """\
id: ten
tasks:
  - id: printer
    command: 'for i in 1 2 3 4 5 6 7 8 9 10; do echo "line $i"; done'
"""

TWICE = """\
id: twice
tasks:
  - id: flaky
    retries: 1
    retry_delay_seconds: 0
    command: 'echo "attempt $NAGARE_ATTEMPT says hi"; test "$NAGARE_ATTEMPT" = 2'
"""

SLOW = """\
id: slow
tasks:
  - id: talker
    command: >-
      for i in 1 2 3; do echo "early $i"; done;
      sleep 1.2;
      for i in 4 5 6; do echo "late $i"; sleep 0.2; done
"""

DRIP = """\
id: drip
tasks:
  - id: dripper
    command: 'for i in 1 2 3 4 5 6 7 8; do echo "drop $i"; sleep 0.25; done'
"""


# ---------------------------------------------------------------- text logs


def test_text_log_whole_and_tail(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"ten.yaml": TEN})
    run_id = nagare.trigger("ten")
    assert nagare.wait_run(run_id)["status"] == "success"
    result = nagare.call("GET", logs_path(run_id, "printer"))
    assert result.status == 200
    assert result.headers["Content-Type"].startswith("text/plain")
    assert result.text == "".join(f"line {i}\n" for i in range(1, 11))
    assert text_log(nagare, run_id, "printer", "tail=3") == (200, "line 8\nline 9\nline 10\n")
    assert text_log(nagare, run_id, "printer", "tail=1") == (200, "line 10\n")
    assert text_log(nagare, run_id, "printer", "tail=50")[1] == result.text
    assert text_log(nagare, run_id, "printer", "tail=0")[1] == result.text

    for query, fragment in (
        ("tail=-1", "'tail'"),
        ("tail=x", "'tail'"),
        ("attempt=0", "'attempt'"),
    ):
        assert_error(
            nagare.call("GET", logs_path(run_id, "printer", query)), 400, "bad_request", fragment
        )
    assert_error(nagare.call("GET", logs_path(run_id, "nope")), 404, "not_found", "'nope'")
    assert_error(nagare.call("GET", logs_path("nope", "printer")), 404, "not_found", "'nope'")


def test_text_log_of_each_attempt(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"twice.yaml": TWICE})
    run_id = nagare.trigger("twice")
    assert nagare.wait_run(run_id)["status"] == "success"
    latest = nagare.log(run_id, "flaky")
    assert "attempt 2 says hi" in latest and "attempt 1" not in latest
    first = nagare.log(run_id, "flaky", attempt=1)
    assert first.startswith("attempt 1 says hi\n") and "attempt 2 says hi" not in first
    assert nagare.log(run_id, "flaky", attempt=2) == latest
    assert text_log(nagare, run_id, "flaky", "attempt=1&tail=1")[1].count("\n") == 1

    for query in ("attempt=3", "attempt=99"):
        result = nagare.call("GET", logs_path(run_id, "flaky", query))
        assert_error(result, 404, "not_found", "no attempt")
        streamed = open_stream(nagare, run_id, "flaky", query)
        try:
            assert streamed.status == 404
            assert json.loads(streamed.response.read())["error"]["code"] == "not_found"
        finally:
            streamed.close()


# ---------------------------------------------------------------- SSE


def test_sse_replays_history_then_follows_live_lines(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"slow.yaml": SLOW})
    run_id = nagare.trigger("slow")
    wait_log(nagare, run_id, "talker", "early 3")
    stream = open_stream(nagare, run_id, "talker")
    try:
        assert stream.status == 200
        assert stream.header("Content-Type").startswith("text/event-stream")
        assert stream.header("Cache-Control") == "no-cache"
        stream.until_end(15)
    finally:
        stream.close()

    texts = [f"early {i}" for i in (1, 2, 3)] + [f"late {i}" for i in (4, 5, 6)]
    assert_numbered(stream.lines, 1, texts)
    assert stream.end == {"status": "success"}
    assert stream.events[-1].event == "end"
    # History came at once; the late lines only once they were printed (live).
    lines = stream.lines
    assert lines[3].at - lines[2].at > 0.5
    pings = [
        c
        for c in stream.items
        if isinstance(c, Comment) and c.text == "ping" and lines[2].at < c.at < lines[3].at
    ]
    assert len(pings) >= 2, stream.items


def test_sse_resume_with_last_event_id_after_the_task_ended(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags={"ten.yaml": TEN})
    run_id = nagare.trigger("ten")
    nagare.wait_run(run_id)
    whole = stream_all(nagare, run_id, "printer")
    assert_numbered(whole.lines, 1, [f"line {i}" for i in range(1, 11)])
    resumed = stream_all(nagare, run_id, "printer", headers={"Last-Event-ID": "7"})
    assert_numbered(resumed.lines, 8, ["line 8", "line 9", "line 10"])
    assert resumed.end == {"status": "success"}
    past_end = stream_all(nagare, run_id, "printer", headers={"Last-Event-ID": "10"})
    assert past_end.lines == [] and past_end.end == {"status": "success"}
    tail = stream_all(nagare, run_id, "printer", query="tail=2")
    assert_numbered(tail.lines, 9, ["line 9", "line 10"])


def test_sse_resume_while_live_has_no_gaps_or_duplicates(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"drip.yaml": DRIP})
    run_id = nagare.trigger("drip")
    first = open_stream(nagare, run_id, "dripper")
    seen: list[Event] = []
    try:
        for item in first:
            if isinstance(item, Event):
                seen.append(item)
                if item.number == 3:
                    break
    finally:
        first.close()
    assert nagare.task(run_id, "dripper")["status"] == "running"

    second = stream_all(nagare, run_id, "dripper", headers={"Last-Event-ID": "3"})
    assert_numbered(second.lines, 4, [f"drop {i}" for i in range(4, 9)])
    assert_numbered(seen + second.lines, 1, [f"drop {i}" for i in range(1, 9)])
    assert second.end == {"status": "success"}


QUEUED = """\
id: gated
tasks:
  - id: gate
    pool: solo
    command: 'sleep 1'
  - id: by_dependency
    depends_on: [gate]
    command: 'echo one; echo two'
  - id: by_pool
    pool: solo
    command: 'echo three; echo four'
"""


@pytest.mark.parametrize(
    ("task_id", "waiting", "texts"),
    [
        ("by_dependency", "pending", ["one", "two"]),
        ("by_pool", "queued", ["three", "four"]),
    ],
)
def test_sse_of_a_task_not_started_yet_waits_then_streams(
    nagare_factory: NagareFactory, task_id: str, waiting: str, texts: list[str]
) -> None:
    nagare = nagare_factory(dags={"gated.yaml": QUEUED}, worker_pools={"solo": 1})
    run_id = nagare.trigger("gated")
    wait_status(nagare, run_id, "gate", "running")
    assert nagare.task(run_id, task_id)["status"] == waiting
    stream = stream_all(nagare, run_id, task_id)
    assert_numbered(stream.lines, 1, texts)
    assert stream.end == {"status": "success"}
    first_line = stream.lines[0]
    assert any(isinstance(i, Comment) and i.at < first_line.at for i in stream.items)


def test_sse_of_a_killed_task_ends_cancelled(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "sleepy.yaml": """\
            id: sleepy
            tasks:
              - id: nap
                command: 'echo started; sleep 30'
            """
        }
    )
    run_id = nagare.trigger("sleepy")
    stream = open_stream(nagare, run_id, "nap")
    try:
        assert stream.status == 200
        for item in stream:
            if isinstance(item, Event):
                assert (item.number, item.data) == (1, "started")
                break
        killed_at = time.monotonic()
        assert nagare.call("POST", f"/api/runs/{run_id}/tasks/nap/kill").status == 200
        stream.until_end(5)
    finally:
        stream.close()
    assert stream.end == {"status": "cancelled"}
    assert stream.events[-1].at - killed_at < 3
    assert "started" in nagare.log(run_id, "nap")


def test_sse_of_an_old_attempt_replays_that_attempt(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"twice.yaml": TWICE})
    run_id = nagare.trigger("twice")
    nagare.wait_run(run_id)
    stream = stream_all(nagare, run_id, "flaky", query="attempt=1")
    assert stream.lines[0].data == "attempt 1 says hi"
    assert all("attempt 2 says hi" not in e.data for e in stream.lines)
    latest = stream_all(nagare, run_id, "flaky")
    assert latest.lines[0].data == "attempt 2 says hi"
    assert latest.end == {"status": "success"}


def test_sse_accepts_the_key_as_token_query(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"ten.yaml": TEN}, api_key="k")
    run_id = nagare.trigger("ten")
    nagare.wait_run(run_id)
    nagare.headers.clear()  # only the query token from here on
    stream = stream_all(nagare, run_id, "printer", query="token=k")
    assert len(stream.lines) == 10 and stream.end == {"status": "success"}
    refused = open_stream(nagare, run_id, "printer", "token=nope")
    try:
        assert refused.status == 401
        assert json.loads(refused.response.read())["error"]["code"] == "unauthorized"
    finally:
        refused.close()


# ---------------------------------------------------------------- big output


def test_a_10_mb_line_is_truncated_and_does_not_hang(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "huge.yaml": """\
            id: huge
            tasks:
              - id: wide
                command: "head -c 10000000 /dev/zero | tr '\\\\0' x; echo; echo after-the-line"
            """
        }
    )
    run_id = nagare.trigger("huge")
    stream = stream_all(nagare, run_id, "wide", read_timeout=30)
    assert nagare.wait_run(run_id)["status"] == "success"
    assert stream.end == {"status": "success"}
    assert [e.number for e in stream.lines] == [1, 2]
    first, second = (e.data for e in stream.lines)
    assert first.startswith("x" * 1000)
    assert "truncated" in first and len(first) < 100_000
    assert second == "after-the-line"

    status, text = text_log(nagare, run_id, "wide")
    assert status == 200
    lines = text.split("\n")
    assert lines[0] == first and lines[1:] == ["after-the-line", ""]


def test_100k_lines_are_all_kept_and_tail_is_quick(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "many.yaml": """\
            id: many
            tasks:
              - id: counter
                command: "seq 1 100000"
            """
        }
    )
    run_id = nagare.trigger("many")
    assert nagare.wait_run(run_id, timeout=60)["status"] == "success"
    status, text = text_log(nagare, run_id, "counter")
    assert status == 200
    assert text.split("\n") == [str(i) for i in range(1, 100_001)] + [""]

    started = time.monotonic()
    result = http("GET", nagare.url + logs_path(run_id, "counter", "tail=5"))
    assert time.monotonic() - started < 1.0
    assert result.text == "99996\n99997\n99998\n99999\n100000\n"

    started = time.monotonic()
    tail = stream_all(nagare, run_id, "counter", query="tail=5")
    assert time.monotonic() - started < 1.0
    assert_numbered(tail.lines, 99_996, ["99996", "99997", "99998", "99999", "100000"])
    resumed = stream_all(nagare, run_id, "counter", headers={"Last-Event-ID": "99998"})
    assert_numbered(resumed.lines, 99_999, ["99999", "100000"])


RETRIED = """\
id: retried
tasks:
  - id: gate
    command: 'sleep 0.5'
  - id: flaky
    depends_on: [gate]
    retries: 1
    retry_delay_seconds: 0.5
    command: >-
      echo "a$NAGARE_ATTEMPT-1"; sleep 1; echo "a$NAGARE_ATTEMPT-2";
      test "$NAGARE_ATTEMPT" = 2
"""


def follow_retried_task(nagare: Nagare, run_id: str) -> SseStream:
    """Without ?attempt the stream follows the task through its retry and ends only when the
    task is finished: every line of both attempts once, then `end` with the final status."""
    stream = stream_all(nagare, run_id, "flaky", read_timeout=15)
    texts = [e.data for e in stream.lines if not e.data.startswith("[nagare]")]
    assert texts == ["a1-1", "a1-2", "a2-1", "a2-2"], texts[:10]
    assert stream.end == {"status": "success"}
    assert nagare.task(run_id, "flaky")["attempt"] == 2
    return stream


def test_sse_opened_before_start_follows_a_retry(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"retried.yaml": RETRIED})
    run_id = nagare.trigger("retried")
    assert nagare.task(run_id, "flaky")["status"] == "pending"
    follow_retried_task(nagare, run_id)


def test_sse_opened_during_attempt_1_follows_a_retry(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"retried.yaml": RETRIED})
    run_id = nagare.trigger("retried")
    wait_log(nagare, run_id, "flaky", "a1-1")
    task = nagare.task(run_id, "flaky")
    assert (task["status"], task["attempt"]) == ("running", 1)
    follow_retried_task(nagare, run_id)


def test_sse_of_a_task_that_never_ran_ends_at_once(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "doomed.yaml": """\
            id: doomed
            tasks:
              - id: breaks
                command: 'exit 1'
              - id: never
                depends_on: [breaks]
                command: 'echo unreachable'
            """
        }
    )
    run_id = nagare.trigger("doomed")
    assert nagare.wait_run(run_id)["status"] == "failed"
    assert text_log(nagare, run_id, "never") == (200, "")
    started = time.monotonic()
    stream = stream_all(nagare, run_id, "never", read_timeout=5)
    assert time.monotonic() - started < 2
    assert stream.lines == [] and stream.end == {"status": "upstream_failed"}
    assert stream.retry == 1000


def test_sse_streams_100k_lines_without_gaps(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "many.yaml": """\
            id: many
            tasks:
              - id: counter
                command: "seq 1 100000"
            """
        }
    )
    run_id = nagare.trigger("many")
    stream = stream_all(nagare, run_id, "counter", read_timeout=60)
    assert stream.end == {"status": "success"}
    assert_numbered(stream.lines, 1, [str(i) for i in range(1, 100_001)])


def test_a_stream_opens_before_its_first_event(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={"quiet.yaml": "id: quiet\ntasks:\n  - id: q\n    command: sleep 3; echo late\n"},
        sse_ping_seconds=30,  # no keep-alive comment either: only the headers can arrive
    )
    run_id = nagare.trigger("quiet")
    wait_status(nagare, run_id, "q", "running")
    started = time.monotonic()
    stream = open_stream(nagare, run_id, "q", timeout=2)  # getresponse() waits for the headers
    try:
        assert stream.status == 200
        assert time.monotonic() - started < 2
    finally:
        stream.close()


APPROVAL = """
id: gate
tasks:
  - id: ask
    type: approval
    message: ship it?
"""


def test_sse_of_a_waiting_step_stays_open_until_it_is_answered(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags={"gate.yaml": APPROVAL})
    run_id = nagare.trigger("gate")
    wait_for(lambda: nagare.task(run_id, "ask")["status"] == "waiting", 10)
    stream = open_stream(nagare, run_id, "ask")
    try:
        time.sleep(0.6)  # a waiting step's log is not over: no end event (checked below)
        answer = nagare.call(
            "POST", f"/api/runs/{run_id}/tasks/ask/approve", {"by": "ann", "comment": "yes"}
        )
        assert answer.status == 200, answer.text
        stream.until_end(10)
    finally:
        stream.close()
    texts = [e.data for e in stream.lines]
    assert texts[0] == "[nagare] waiting for approval: ship it?"
    assert texts[1].startswith("[nagare] approved by ann at ") and texts[1].endswith(": yes")
    assert stream.end == {"status": "success"}
