"""Logs shared between the masters of one PostgreSQL database: each master ships the lines its
attempts' logs gain to the database in chunks (`LogShipper`), and every master reads them back
(`SharedLogs`, the `logs.SharedLog` its `LogFiles` asks for lines past its files).

The shipper never touches the task's writer: `LogFiles.open_attempt` registers each attempt's
log (`watch`), and one loop, every SHIP_SECONDS, reads what the files gained since its last
pass (a `stat` per open attempt; the lines and their `.lines` records, from where it stopped),
and stores every attempt's new lines in one transaction, a chunk per attempt (at most
CHUNK_BYTES of text each, PASS_BYTES per pass: a pass that hits it is followed at once). A
closed log gets, after its last lines, a chunk without lines marking it closed, then is
forgotten. A transaction that fails (the database is down) moves no cursor: the next pass
reads the same lines again from the files, so an outage costs no memory and loses nothing
the files hold; the loop's heartbeat says since when and how many logs wait, which
`/api/health` shows. At most MAX_WATCHED logs are followed; past that a log stays on its
master only (said in the health too).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nagare.liveness import Heartbeat, short_error
from nagare.logs import STREAM_NAMES, Line, Stamp, index_path
from nagare.models import LogChunk

log = logging.getLogger("nagare.logs")

SHIP_SECONDS = 0.2
CHUNK_BYTES = 256 * 1024
PASS_BYTES = 4 * 1024 * 1024
MAX_WATCHED = 10_000
READ_CHUNKS = 16  # chunks per page a reader asks for (at most 4 MiB of text)


class ChunkStore(Protocol):
    """The store's part (`store.log_chunks`)."""

    def append(self, chunks: Sequence[LogChunk]) -> None: ...

    def after(
        self, task_instance_id: str, attempt: int, line: int, limit: int
    ) -> list[LogChunk]: ...

    def last_line(self, task_instance_id: str, attempt: int) -> int: ...


class SharedLogs:
    """Lines of attempts' logs as the database holds them (a `logs.SharedLog`)."""

    def __init__(self, store: ChunkStore) -> None:
        self.store = store

    def read(self, task_instance_id: str, attempt: int, after: int) -> tuple[list[Line], bool]:
        """A page of lines past `after`, each with its time and stream, and whether the log was
        marked closed after the last of them."""
        chunks = self.store.after(task_instance_id, attempt, after, READ_CHUNKS)
        lines: list[Line] = []
        closed = False
        for chunk in chunks:
            if chunk.closes:
                closed = chunk.last_line >= (lines[-1][0] if lines else after)
                continue
            fresh = [line for line in chunk_lines(chunk) if line[0] > after]
            if fresh:
                lines.extend(fresh)
                after = fresh[-1][0]
                closed = False
        return lines, closed

    def last_line(self, task_instance_id: str, attempt: int) -> int:
        return self.store.last_line(task_instance_id, attempt)


def chunk_lines(chunk: LogChunk) -> list[Line]:
    """A chunk's lines, numbered and stamped from its records."""
    records = _records(chunk.meta)
    stamp: Stamp = (None, None)
    lines: list[Line] = []
    texts = chunk.text.split("\n")[:-1] if chunk.text else []
    for offset, text in enumerate(texts):
        number = chunk.first_line + offset
        stamp = records.get(number, stamp)
        lines.append((number, text, stamp))
    return lines


def _records(meta: str) -> dict[int, Stamp]:
    records: dict[int, Stamp] = {}
    for record in meta.splitlines():
        parts = record.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            records[int(parts[0])] = (int(parts[1]), STREAM_NAMES.get(parts[2]))
    return records


@dataclass
class _Watched:
    """A log being shipped: where its file and index were read up to."""

    run_id: str
    task_instance_id: str
    attempt: int
    path: str
    skip: int  # lines already in the database (not shipped again)
    line: int = 0  # complete lines read from the file
    offset: int = 0  # bytes of the file read
    index_offset: int = 0
    record: str = ""  # the last index record read, as "<ms> <code>" (heads the next chunk)
    closed: bool = False

    @property
    def key(self) -> str:
        return f"{self.task_instance_id}/{self.attempt}"


@dataclass
class _Read:
    """What one pass read of a log, applied to it once the chunks are stored."""

    watched: _Watched
    chunks: list[LogChunk]
    line: int
    offset: int
    index_offset: int
    record: str
    done: bool  # closed and read to its end: forget it


@dataclass
class LogShipper:
    """The loop that ships every watched log's new lines (see the module's doc)."""

    store: ChunkStore
    on_shipped: Callable[[list[str]], None] = lambda keys: None  # keys "<ti>/<attempt>"
    liveness: Heartbeat = field(default_factory=lambda: Heartbeat("log-shipper", 5.0))
    _watched: dict[str, _Watched] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failing_since: float | None = None
    _refused: int = 0  # logs not watched (past MAX_WATCHED)

    def watch(
        self, run_id: str, task_instance_id: str, attempt: int, path: str, shipped: int
    ) -> Callable[[], None]:
        watched = _Watched(run_id, task_instance_id, attempt, path, shipped)
        with self._lock:
            if len(self._watched) >= MAX_WATCHED and watched.key not in self._watched:
                self._refused += 1
                return lambda: None
            self._watched[watched.key] = watched

        def closed() -> None:
            watched.closed = True

        return closed

    def run(self, stop: threading.Event) -> None:
        self.liveness.started()
        while not stop.is_set():
            full = self.ship()
            if not full:
                stop.wait(SHIP_SECONDS)
        self.ship()  # what the last attempts wrote as the engine stopped

    def ship(self, now: float | None = None) -> bool:
        """One pass; True when it stopped at PASS_BYTES (more is waiting)."""
        with self._lock:
            watched = list(self._watched.values())
        reads, budget = [], PASS_BYTES
        for entry in watched:
            if budget <= 0:
                break
            read = _read_new(entry, budget)
            if read is not None:
                reads.append(read)
                budget -= sum(len(c.text) for c in read.chunks)
        if reads and not self._store(reads, time.monotonic() if now is None else now):
            return False
        self._beat()
        return budget <= 0

    def _store(self, reads: list[_Read], now: float) -> bool:
        try:
            self.store.append([chunk for read in reads for chunk in read.chunks])
        except Exception as exc:  # the database is away: the files keep the lines
            if self._failing_since is None:
                self._failing_since = now
                log.warning("log lines are not reaching the database: %s", short_error(exc))
            waiting = self.watching()
            since = now - self._failing_since
            self.liveness.beat(
                f"log lines not shared with the other masters for {since:.0f}s "
                f"({waiting} logs waiting): {short_error(exc)}"
            )
            return False
        if self._failing_since is not None:
            log.info("log lines reach the database again")
            self._failing_since = None
        self._apply(reads)
        self.on_shipped(sorted({read.watched.key for read in reads if read.chunks}))
        return True

    def _apply(self, reads: list[_Read]) -> None:
        with self._lock:
            for read in reads:
                entry = read.watched
                entry.line, entry.offset = read.line, read.offset
                entry.index_offset, entry.record = read.index_offset, read.record
                if read.done and self._watched.get(entry.key) is entry:
                    del self._watched[entry.key]

    def _beat(self) -> None:
        if self._refused:
            self.liveness.beat(
                f"{self._refused} logs are readable on their own master only "
                f"(more than {MAX_WATCHED} open at once)"
            )
        else:
            self.liveness.beat()

    def watching(self) -> int:
        with self._lock:
            return len(self._watched)


def _read_new(entry: _Watched, budget: int) -> _Read | None:
    """The lines a log gained since its cursor (None: nothing new and still open)."""
    closed = entry.closed  # (read first: lines written before the close are all in the file)
    try:
        size = os.stat(entry.path).st_size
    except OSError:
        size = 0
    if size <= entry.offset and not closed:
        return None
    lines, offset = _file_lines(entry.path, entry.offset, min(budget, size - entry.offset))
    first = entry.line + 1
    records, index_offset = _index_records(entry, first + len(lines) - 1)
    record = entry.record
    chunks: list[LogChunk] = []
    batch: list[str] = []
    meta: list[str] = []
    held = 0  # bytes of text in `batch`
    number = entry.line
    for text in lines:
        number += 1
        record = records.get(number, record)
        if number <= entry.skip:
            continue
        if record and (not batch or number in records):
            meta.append(f"{number} {record}\n")
        batch.append(text)
        held += len(text) + 1
        if held >= CHUNK_BYTES:
            chunks.append(_chunk(entry, number - len(batch) + 1, batch, meta))
            batch, meta, held = [], [], 0
    if batch:
        chunks.append(_chunk(entry, number - len(batch) + 1, batch, meta))
    done = closed and offset >= size
    if done:
        after = max(number, entry.skip)
        chunks.append(
            LogChunk(entry.run_id, entry.task_instance_id, entry.attempt, after + 1, after)
        )
    return _Read(entry, chunks, number, offset, index_offset, record, done)


def _chunk(entry: _Watched, first: int, texts: list[str], meta: list[str]) -> LogChunk:
    return LogChunk(
        entry.run_id,
        entry.task_instance_id,
        entry.attempt,
        first,
        first + len(texts) - 1,
        "".join(t + "\n" for t in texts),
        "".join(meta),
    )


def _file_lines(path: str, offset: int, most: int) -> tuple[list[str], int]:
    """Complete lines from byte `offset` (reading at most about `most` bytes, a line more when
    one is longer), and the offset after the last of them."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(max(most, 0))
            end = data.rfind(b"\n")
            while end < 0 and data and len(data) >= most:  # a line longer than the budget
                more = handle.read(CHUNK_BYTES)
                if not more:
                    break
                data += more
                end = data.rfind(b"\n")
    except OSError:
        return [], offset
    if end < 0:
        return [], offset
    text = data[: end + 1].decode("utf-8", errors="replace")
    return text.split("\n")[:-1], offset + end + 1


def _index_records(entry: _Watched, last: int) -> tuple[dict[int, str], int]:
    """The log's `.lines` records for lines up to `last` ("<ms> <code>" by line number), and
    the offset after them (records of later lines are read on a later pass)."""
    records: dict[int, str] = {}
    try:
        with open(index_path(entry.path), "rb") as handle:
            handle.seek(entry.index_offset)
            data = handle.read()
    except OSError:
        return records, entry.index_offset
    offset = entry.index_offset
    for raw in data.split(b"\n")[:-1]:
        parts = raw.decode("ascii", errors="replace").split()
        if len(parts) == 3 and parts[0].isdigit():
            if int(parts[0]) > last:
                break
            records[int(parts[0])] = f"{parts[1]} {parts[2]}"
        offset += len(raw) + 1
    return records, offset
