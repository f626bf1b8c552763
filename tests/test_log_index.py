"""When and from which stream each log line came: the `.lines` index an attempt writes next to
its log (a record when the second or the stream changes), read back by `LineMeta`, and served
by the logs route with `?timestamps=true` (text, tail and SSE). Logs written before the index
have `-` for both."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Nagare
from test_sse import NagareFactory, stream_all

from nagare.logs import LineMeta, LogFiles, LogHub, index_path, stamped

MIXED = """
id: mixed
schedule: "workflow_dispatch"
tasks:
  - id: talk
    command: |
      echo out one; sleep 0.2
      echo err one >&2; sleep 0.2
      echo out two
"""


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_records_only_when_the_second_or_the_stream_changes(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), LogHub())
    log = logs.open_attempt("r1", "t1", 1)
    clock = Clock(1_700_000_000.25)
    log._clock = clock
    log.note_before_output("started")
    log.on_line("stdout", "a")  # (the header is written with it, as nagare)
    log.on_line("stdout", "b")
    clock.now += 0.5  # same second: no record
    log.on_line("stdout", "c")
    clock.now += 1  # next second
    log.on_line("stdout", "d")
    log.on_line("stderr", "e")  # same second, other stream
    log.on_line("stdout", "f")
    log.close()
    with open(index_path(log.path)) as handle:
        records = handle.read().splitlines()
    assert records == [
        "1 1700000000250 n",
        "2 1700000000250 o",
        "5 1700000001750 o",
        "6 1700000001750 e",
        "7 1700000001750 o",
    ]
    meta = LineMeta(log.path)
    got = [meta.at(n)[1] for n in range(1, 8)]
    meta.close()
    assert got == ["nagare", "stdout", "stdout", "stdout", "stdout", "stderr", "stdout"]
    stamped_lines = [text for _, text in logs.stamped_lines("r1", "t1", 1)]
    assert stamped_lines[0] == "2023-11-14T22:13:20Z nagare [nagare] started"
    assert stamped_lines[5] == "2023-11-14T22:13:21Z stderr e"


def test_appending_to_a_log_counts_the_lines_already_written(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), LogHub())
    first = logs.open_attempt("r1", "t1", 1)
    first.on_line("stdout", "a")
    first.on_line("stdout", "b")
    first.close()
    again = logs.open_attempt("r1", "t1", 1, resume=True)
    again.on_line("stderr", "c")
    again.close()
    noted = logs.open_attempt("r1", "t1", 1)  # a note after a restart appends too
    noted.note("recovered")
    noted.close()
    meta = LineMeta(again.path)
    streams = [meta.at(n)[1] for n in (1, 2, 3, 4)]
    meta.close()
    assert streams == ["stdout", "stdout", "stderr", "nagare"]


def test_a_log_without_index_has_no_times(tmp_path: Path) -> None:
    logs = LogFiles(str(tmp_path), LogHub())
    path = logs.path("r1", "t1", 1)
    os.makedirs(os.path.dirname(path))
    Path(path).write_text("old\nlog\n")
    assert [t for _, t in logs.stamped_lines("r1", "t1", 1)] == ["- - old", "- - log"]
    assert stamped("x", (None, None)) == "- - x"


def test_the_logs_route_serves_times_and_streams(nagare_factory: NagareFactory) -> None:
    server: Nagare = nagare_factory(dags={"mixed.yaml": MIXED})
    run_id = server.trigger("mixed")
    assert server.wait_run(run_id)["status"] == "success"
    base = f"/api/runs/{run_id}/tasks/talk/logs"
    plain = server.call("GET", base).text.splitlines()
    assert plain == ["out one", "err one", "out two"]  # unchanged without the flag
    stamped_text = server.call("GET", base + "?timestamps=true").text.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped_text] == [
        "stdout out one",
        "stderr err one",
        "stdout out two",
    ]
    assert all(line[:20].endswith("Z") and line[4] == "-" for line in stamped_text)
    tail = server.call("GET", base + "?timestamps=true&tail=1").text.splitlines()
    assert tail == stamped_text[-1:]
    bad = server.call("GET", base + "?timestamps=yes")
    assert bad.status == 400 and b"timestamps" in bad.body
    stream = stream_all(server, run_id, "talk", query="timestamps=true")
    assert [e.data for e in stream.lines] == stamped_text
    assert [e.number for e in stream.lines] == [1, 2, 3]
    resumed = stream_all(
        server, run_id, "talk", query="timestamps=true", headers={"Last-Event-ID": "2"}
    )
    assert [e.data for e in resumed.lines] == stamped_text[2:]
