#!/usr/bin/env python3
"""Logs from any master, measured with real processes: one master on SQLite (the log is a
file, read on the master that wrote it) against two masters on one PostgreSQL database (the
task runs on master A; master B reads and follows its log from the database's chunks).

    python3 benchmarks/shared_logs.py [--seconds 10] [--rate 10000] [--megabytes 20]

Two tasks, each run on both set-ups:

- big: a task printing 20 MB at once (200,000 lines of 100 bytes): its duration (the write
  overhead on the task), then on the reading master the time to serve the whole log, its tail
  (`?tail=100`) and the first line of an event stream replaying it;
- rate: a task printing 10,000 lines/s for 10 s, each line stamped with when it was printed,
  followed live from its start by an event stream on the reading master: lines/s sustained,
  the lag each line is seen with (p50/p95/max), the CPU seconds of each master per second
  of the task, and the database's chunk rows and bytes per second.

A temporary PostgreSQL server comes from tests/postgres_server.py (as `run.py --postgres`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import ROOT, BenchError, Launcher, Server, percentile

RATE_SCRIPT = """
import sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
start, n, out = time.time(), 0, sys.stdout
while True:
    now = time.time()
    if now - start >= seconds:
        break
    due = int((now - start) * rate)
    while n < due:
        out.write(f"{time.time():.6f} line {n:07d} " + "x" * 40 + "\\n")
        n += 1
    out.flush()
    time.sleep(0.005)
"""


def dag(command: str) -> str:
    return f"id: talk\ntasks:\n  - id: t\n    command: {json.dumps(command)}\n"


def big_command(megabytes: int) -> str:
    lines = megabytes * 10_000  # 100 bytes each
    return f'python3 -c \'import sys; sys.stdout.write(("y" * 99 + "\\n") * {lines})\''


@dataclass
class Follower:
    """An event stream of the task's log, read in a thread: (line number, data, arrival)."""

    port: int
    path: str
    lines: list[tuple[int, str, float]] = field(default_factory=list)
    first_at: float = 0.0
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Follower:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request("GET", self.path, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        number, data, event = 0, "", "message"
        while True:
            raw = response.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                number = int(line[4:])
            elif line.startswith("data: "):
                data = line[6:]
            elif line.startswith("event: "):
                event = line[7:]
            elif line == "":
                if event == "end":
                    break
                if data:
                    self.lines.append((number, data, time.time()))
                    if not self.first_at:
                        self.first_at = time.perf_counter()
                number, data, event = 0, "", "message"
        conn.close()
        self.ended.set()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise BenchError(f"timed out waiting for {what}")


def timed_get(port: int, path: str) -> tuple[float, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("GET", path)
    body = conn.getresponse().read()
    took = time.perf_counter() - started
    conn.close()
    return took, body


def chunk_figures(url: str | None, run_id: str) -> tuple[int, int]:
    """Rows and bytes (text + records) of the run's chunks (0, 0 on SQLite)."""
    if url is None:
        return 0, 0
    from nagare.store import Store

    store = Store(url)
    try:
        with store.db.read() as conn:
            row = conn.execute(
                "SELECT count(*), sum(length(text) + length(meta)) FROM log_chunks "
                "WHERE run_id = ?",
                (run_id,),
            ).fetchone()
    finally:
        store.close()
    return int(row[0] or 0), int(row[1] or 0)


class Setup:
    """The writing master and the reading one (the same on SQLite)."""

    def __init__(self, url: str | None, dags: dict[str, str]) -> None:
        launcher = Launcher()
        writer_settings = {"worker_pools": {"default": 1}}
        if url is None:
            self.writer = Server(launcher, dags, writer_settings)
            self.reader = self.writer
            self.servers = [self.writer]
        else:
            self.writer = Server(launcher, dags, writer_settings, db_url=url)
            self.reader = Server(launcher, dags, {"worker_pools": {"default": 0}}, db_url=url)
            self.servers = [self.writer, self.reader]
        self.url = url

    def __enter__(self) -> Setup:
        for server in self.servers:
            server.start()
        if self.url is not None:  # both know each other (wake-ups go out)
            client = self.reader.client()
            wait_for(lambda: len(client.get_json("/api/masters")["masters"]) == 2, 15, "2 masters")
            time.sleep(1.1)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()

    def run(self) -> str:
        return self.writer.client().trigger("talk")

    def task(self, run_id: str) -> dict[str, Any]:
        return self.reader.client().get_json(f"/api/runs/{run_id}/tasks/t")  # type: ignore[no-any-return]

    def done(self, run_id: str) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (t := self.task(run_id))["status"] in ("success", "failed") and t,
            300,
            "the task to end",
        )


def logs_path(run_id: str, query: str = "") -> str:
    return f"/api/runs/{run_id}/tasks/t/logs" + (f"?{query}" if query else "")


def measure_big(url: str | None, megabytes: int) -> dict[str, Any]:
    with Setup(url, {"talk.yaml": dag(big_command(megabytes))}) as setup:
        run_id = setup.run()
        task = setup.done(run_id)
        lines = megabytes * 10_000
        port = setup.reader.port
        # the log complete on the reading master (on PostgreSQL: its last chunks shipped)
        wait_for(
            lambda: (
                timed_get(port, logs_path(run_id, "tail=1"))[1].strip() == b"y" * 99
                and len(timed_get(port, logs_path(run_id))[1]) >= lines * 100
            ),
            60,
            "the whole log on the reading master",
        )
        whole, body = timed_get(port, logs_path(run_id))
        tail, _ = timed_get(port, logs_path(run_id, "tail=100"))
        follow = Follower(port, logs_path(run_id))
        started = time.perf_counter()
        follow.start()
        follow.ended.wait(120)
        first = follow.first_at - started
        replay = time.perf_counter() - started
        rows, size = chunk_figures(url, run_id)
        return {
            "task_seconds": task["metrics"]["duration_ms"] / 1000,
            "whole_seconds": whole,
            "bytes": len(body),
            "tail_seconds": tail,
            "stream_first_seconds": first,
            "stream_all_seconds": replay,
            "streamed_lines": len(follow.lines),
            "rows": rows,
            "db_bytes": size,
        }


def measure_rate(url: str | None, rate: int, seconds: float, work: Path) -> dict[str, Any]:
    script = work / "rate.py"
    script.write_text(RATE_SCRIPT)
    command = f"python3 {script} {rate} {seconds}"
    with Setup(url, {"talk.yaml": dag(command)}) as setup:
        cpu_before = [cpu_seconds(s.pid) for s in setup.servers]
        run_id = setup.run()
        wait_for(lambda: setup.task(run_id)["status"] != "queued", 10, "the task to start")
        follow = Follower(setup.reader.port, logs_path(run_id)).start()
        task = setup.done(run_id)
        follow.ended.wait(60)
        cpu = [
            cpu_seconds(s.pid) - before for s, before in zip(setup.servers, cpu_before, strict=True)
        ]
        rows, size = chunk_figures(url, run_id)
    stamped = [
        (float(data.split(" ", 1)[0]), at) for _, data, at in follow.lines if data[0].isdigit()
    ]
    lags = [at - printed for printed, at in stamped]
    printed = [p for p, _ in stamped]
    span = max(printed) - min(printed) if printed else 0.0
    task_seconds = task["metrics"]["duration_ms"] / 1000
    return {
        "lines": len(stamped),
        "lines_per_second": len(stamped) / span if span else 0.0,
        "lag_p50": percentile(lags, 50),
        "lag_p95": percentile(lags, 95),
        "lag_max": max(lags) if lags else 0.0,
        "cpu_writer_per_s": cpu[0] / task_seconds,
        "cpu_reader_per_s": cpu[-1] / task_seconds if len(cpu) > 1 else 0.0,
        "rows_per_s": rows / task_seconds,
        "db_bytes_per_s": size / task_seconds,
    }


def report(name: str, big: dict[str, Any], rate: dict[str, Any]) -> None:
    print(f"\n{name}")
    print(
        f"  big: task {big['task_seconds']:.2f} s; whole log {big['bytes'] / 1e6:.1f} MB in "
        f"{big['whole_seconds']:.2f} s; tail=100 {big['tail_seconds'] * 1000:.0f} ms; stream "
        f"first line {big['stream_first_seconds'] * 1000:.0f} ms, all {big['streamed_lines']} "
        f"lines {big['stream_all_seconds']:.2f} s; chunks {big['rows']} rows "
        f"{big['db_bytes'] / 1e6:.1f} MB"
    )
    print(
        f"  rate: {rate['lines']} lines, {rate['lines_per_second']:.0f} lines/s; follower lag "
        f"p50 {rate['lag_p50'] * 1000:.0f} ms p95 {rate['lag_p95'] * 1000:.0f} ms max "
        f"{rate['lag_max'] * 1000:.0f} ms; CPU writer {rate['cpu_writer_per_s']:.2f} s/s, "
        f"reader {rate['cpu_reader_per_s']:.2f} s/s; {rate['rows_per_s']:.1f} rows/s, "
        f"{rate['db_bytes_per_s'] / 1e3:.0f} kB/s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=20)
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres_server import find_bindir, start_server

    with tempfile.TemporaryDirectory(prefix="nagare-shared-logs-") as work:
        if args.only != "postgresql":
            big = measure_big(None, args.megabytes)
            rate = measure_rate(None, args.rate, args.seconds, Path(work))
            report("SQLite, one master (the log file, read where it was written)", big, rate)
        if args.only == "sqlite":
            return 0
        bindir = find_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
        server = start_server(bindir)
        try:
            url = server.url(server.new_database())
            big = measure_big(url, args.megabytes)
            url = server.url(server.new_database())
            rate = measure_rate(url, args.rate, args.seconds, Path(work))
            report("PostgreSQL, two masters (written on A, read and followed on B)", big, rate)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
