"""Task logs: one file per attempt, written line by line as output arrives, and read back whole,
as a tail, or followed live (for SSE). Memory stays bounded whatever the output size: lines are
written through, only a short tail is kept for the task row.

Layout: `<logs_dir>/<run_id>/<task_instance_id>.<attempt>.log`; for tasks whose stdout feeds a
map task, the stdout alone also goes to `...<attempt>.stdout`, capped at MAX_STDOUT_BYTES: past
the cap that file is removed and `...<attempt>.stdout-cut` (holding the cap) marks the attempt,
so that the map task fails rather than parse cut output, even after a restart (the same capture
serves `output: NAME`). `...<attempt>.outputs` is the attempt's $NAGARE_OUTPUT: the task
creates it if it publishes anything; it is read once when the attempt ends.
`...<attempt>.lines` is the log's compact index of when and from which stream lines came: a
record `<line number> <epoch ms> <o|e|n>` (stdout, stderr, nagare) is appended before a line
whenever the wall-clock second or the stream changes, so a line's time (to the second) and
stream are those of the last record at or before it (`LineMeta`). Logs written before the index
existed have none: their lines have no time and no stream. Lines of a remote worker are stamped
when they reach the master (batches: within a second or so of being written).
On a database several masters share (PostgreSQL), each master also ships its logs' new lines to
the database in chunks (`log_shipping.LogShipper`, a `LogWatcher` here) and every reader here
serves a log as its file, then the lines the database holds past the file's last line
(`SharedLog`): the whole log when another master wrote it, the rest when a remote worker moved
to another master part way. An attempt reopened here (`resume`) first copies into its file
the lines the database holds past it, so line numbers stay those of the whole log.
Each started attempt appends `<task instance> <attempt> <pid> <start time>` to `<run_id>/pids`,
so that a server restarted after a crash can find and kill an orphaned process group (an
append, not a database write or a new file, to keep the start of every task cheap).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import IO, Protocol

from nagare.engine.assignment import size_text
from nagare.engine.outputs import MAX_FILE_BYTES as MAX_OUTPUT_FILE_BYTES
from nagare.engine.outputs import MAX_OUTPUTS, MAX_VALUE_BYTES, OutputError
from nagare.engine.secrets import apply_mask, mask_values

TAIL_LINES = 20
TAIL_CHARS = 4000
MAX_STDOUT_BYTES = 64 * 1024 * 1024
PIDS_FILE = "pids"
STREAM_CODES = {"stdout": "o", "stderr": "e", "nagare": "n"}
STREAM_NAMES = {code: name for name, code in STREAM_CODES.items()}
SHARED_POLL_SECONDS = 0.25  # a follower of a log written on another master looks this often
DRAIN_SECONDS = 3.0  # at an attempt's end, how long a follower waits for its last shared lines
CLOSED_KEYS = 4096  # attempts the hub remembers as closed
CLOSED_RECHECK_SECONDS = 0.05

Stamp = tuple[int | None, str | None]  # a line's time (epoch ms, to the second) and stream
Line = tuple[int, str, Stamp | None]  # number, text, stamp (None: not asked for)


class SharedLog(Protocol):
    """The lines the masters of a shared database stored for an attempt
    (`log_shipping.SharedLogs`)."""

    def read(self, task_instance_id: str, attempt: int, after: int) -> tuple[list[Line], bool]:
        """A page of lines past `after` (stamped), and whether the log was closed after them."""
        ...

    def last_line(self, task_instance_id: str, attempt: int) -> int: ...


class LogWatcher(Protocol):
    """Told of every attempt log opened (`log_shipping.LogShipper`): `watch` returns what
    to call once it is closed. `shipped`: its lines already in the database."""

    def watch(
        self, run_id: str, task_instance_id: str, attempt: int, path: str, shipped: int
    ) -> Callable[[], None]: ...


class LogHub:
    """Tells live followers that an attempt's log grew or ended (no polling of files)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}
        # attempts closed lately: a follower that sees one closed but its task not ended yet
        # (the end is recorded just after) looks again soon rather than at the next ping
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._waiting: dict[str, int] = {}  # followers waiting per key (see `poke`)
        self._pokes: dict[str, int] = {}  # grown elsewhere, while someone waits for the key

    def version(self, key: str) -> int:
        with self._cond:
            return self._version(key)

    def notify(self, key: str) -> None:
        with self._cond:
            self._versions[key] = self._versions.get(key, 0) + 1
            self._cond.notify_all()

    def poke(self, key: str) -> None:
        """The log grew on another master: wake its followers here (remembered only while
        one waits, so keys of logs nobody follows here cost nothing)."""
        with self._cond:
            if key in self._waiting:
                self._pokes[key] = self._pokes.get(key, 0) + 1
                self._cond.notify_all()

    def closed(self, key: str) -> None:
        """The attempt ended: wake followers one last time and forget the key."""
        with self._cond:
            self._versions.pop(key, None)
            self._closed[key] = None
            if len(self._closed) > CLOSED_KEYS:
                self._closed.popitem(last=False)
            self._cond.notify_all()

    def wait(self, key: str, seen: int, timeout: float) -> int:
        """Block until `key` moves past version `seen`, ends, or `timeout` passes (at most
        CLOSED_RECHECK_SECONDS once it ended)."""
        with self._cond:
            ended = key in self._closed
            if ended:
                timeout = min(timeout, CLOSED_RECHECK_SECONDS)
            self._waiting[key] = self._waiting.get(key, 0) + 1
            try:
                self._cond.wait_for(
                    lambda: self._version(key) != seen or (not ended and key in self._closed),
                    timeout,
                )
                return self._version(key)
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]
                    self._pokes.pop(key, None)

    def _version(self, key: str) -> int:
        return self._versions.get(key, 0) + self._pokes.get(key, 0)


class AttemptLog:
    """The writer side of one attempt's log; `on_line` is the executor's callback."""

    def __init__(
        self,
        path: str,
        key: str,
        hub: LogHub,
        capture_stdout: bool,
        resume: bool = False,
        max_stdout_bytes: int = MAX_STDOUT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.key = key
        self._clock = clock
        self._index: IO[str] | None = None  # the `.lines` index, opened with the log
        self._written = 0  # lines in the log file (counted when appending to an existing one)
        self._second, self._code = -1, ""  # of the last index record
        self._stream = "stdout"  # of the line being written
        self._hub = hub
        # files are created on the first line: a task without output costs no file (creating
        # one is the dearest part of a short task's start on some file systems)
        self._file: IO[str] | None = None
        self._capture_stdout = capture_stdout
        self._stdout_mode = "a" if resume else "w"
        self._stdout: IO[str] | None = None
        self._stdout_bytes = 0
        self._max_stdout_bytes = max_stdout_bytes
        self.stdout_overflow = False
        if capture_stdout and resume:  # the cap counts the whole attempt
            self.stdout_overflow = os.path.exists(stdout_cut_path(path))
            with contextlib.suppress(OSError):
                self._stdout_bytes = os.path.getsize(stdout_path(path))
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._header = ""  # see note_before_output
        self.failed: OSError | None = None  # the write that failed (then nothing more is written)
        self._masked: tuple[str, ...] = ()  # secret values, masked before anything is written
        self.after_close: Callable[[], None] | None = None  # (the log shipper's, when shared)

    def set_secrets(self, values: tuple[str, ...]) -> None:
        """Mask these secret values as ***** in every line written from now on (and in the
        tail, the captured stdout and `masked` messages): nothing unmasked reaches the disk."""
        with self._lock:
            self._masked = mask_values(values)

    def masked(self, text: str) -> str:
        """`text` with this attempt's secret values masked (for messages stored elsewhere)."""
        return apply_mask(text, self._masked) if self._masked else text

    def on_line(self, stream: str, line: str) -> None:
        """Write a line through. A write that fails (a full disk: ENOSPC) never raises: the
        log stops being written, `failed` holds the error, and the tail is still kept."""
        with self._lock:
            if self._masked:
                line = apply_mask(line, self._masked)
            self._stream = stream
            written = self._try(self._write, line)
            self._tail.append(line)
            if written and stream == "stdout" and self._capture_stdout:
                self._try(self._capture, line)
        self._hub.notify(self.key)

    def _try(self, write: Callable[[str], None], line: str) -> bool:
        if self.failed is not None:
            return False
        try:
            write(line)
        except OSError as exc:
            self._fail(exc)
            return False
        return True

    def _write(self, line: str) -> None:
        if self._file is None:
            self._open_files()
            if self._header:
                self._write_line("nagare", self._header)
                self._tail.append(self._header)
        self._write_line(self._stream, line)

    def _open_files(self) -> None:
        # the index first: a reader that finds a line finds the index of a stamped log
        self._index = open(index_path(self.path), "a", encoding="ascii")  # noqa: SIM115
        self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        if self._file.tell():  # appending to an existing log (resumed, or a note after a restart)
            self._written = count_lines(self.path)

    def _write_line(self, stream: str, line: str) -> None:
        """The line, after its index record when the second or the stream changed (the
        record is flushed first, so a reader that sees the line can see its record)."""
        assert self._file is not None and self._index is not None
        self._written += 1
        now = self._clock()
        code = STREAM_CODES.get(stream, "o")
        if int(now) != self._second or code != self._code:
            self._second, self._code = int(now), code
            self._index.write(f"{self._written} {int(now * 1000)} {code}\n")
            self._index.flush()
        self._file.write(line + "\n")
        self._file.flush()

    def _fail(self, exc: OSError) -> None:
        """Stop writing (the files are closed; what they could not take is dropped)."""
        self.failed = exc
        for handle in (self._file, self._stdout, self._index):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        self._file = self._stdout = self._index = None

    def pid_record(self, pid: int, start_time: float) -> str:
        """The pids-file line of this attempt's process (see `append_pid_records`)."""
        return f"{self.key.replace('/', ' ')} {pid} {start_time}\n"

    def note(self, text: str) -> None:
        """A line written by Nagare itself (marked so readers can tell it from task output)."""
        self.on_line("nagare", f"[nagare] {text}")

    def note_before_output(self, text: str) -> None:
        """A note that heads the log once the attempt writes anything: an attempt that stays
        silent keeps costing no file."""
        with self._lock:
            if self._file is None:
                self._header = f"[nagare] {text}"
                return
        self.note(text)

    def _capture(self, line: str) -> None:
        if self.stdout_overflow:
            return
        self._stdout_bytes += len(line.encode()) + 1
        if self._stdout_bytes > self._max_stdout_bytes:
            self._cut_stdout()
            return
        if self._stdout is None:
            self._stdout = open(stdout_path(self.path), self._stdout_mode, encoding="utf-8")  # noqa: SIM115
        self._stdout.write(line + "\n")

    def _cut_stdout(self) -> None:
        """Past the cap: mark the attempt (the map task over it fails on the mark), drop what
        was captured, and say so in the log (under the lock, after the line that crossed)."""
        self.stdout_overflow = True
        cap = self._max_stdout_bytes
        with open(stdout_cut_path(self.path), "w", encoding="utf-8") as marker:
            marker.write(f"{cap}\n")
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        with contextlib.suppress(OSError):
            os.remove(stdout_path(self.path))
        note = (
            f"[nagare] the captured stdout was cut at {size_text(cap)}, the most a map source "
            "may print (the map task over it will fail)"
        )
        self._write_line("nagare", note)  # on_line opened the log for the line that crossed
        self._tail.append(note)

    def captured_stdout(self) -> tuple[str | None, bool]:
        """The stdout captured so far (None when nothing was) and whether it was cut."""
        with self._lock:
            if self.stdout_overflow:
                return None, True
            if self._stdout is not None:
                with contextlib.suppress(OSError):
                    self._stdout.flush()
        try:
            with open(stdout_path(self.path), encoding="utf-8", errors="replace") as handle:
                return handle.read(), False
        except OSError:
            return None, False

    def tail(self) -> str:
        text = "\n".join(self._tail)
        return text[-TAIL_CHARS:]

    def close(self) -> None:
        with self._lock:
            for handle in (self._file, self._stdout, self._index):
                if handle is not None:
                    try:
                        handle.close()
                    except OSError as exc:  # the last buffered bytes did not fit
                        self.failed = self.failed or exc
            self._file = self._stdout = self._index = None
        if self.after_close is not None:
            self.after_close()
        self._hub.closed(self.key)


class LogFiles:
    """Where logs live, and how they are read back."""

    def __init__(
        self, root: str, hub: LogHub | None = None, max_stdout_bytes: int = MAX_STDOUT_BYTES
    ) -> None:
        self.root = root
        self.hub = hub or LogHub()
        self.max_stdout_bytes = max_stdout_bytes  # what a map source's capture may hold
        self._run_dirs: set[str] = set()  # folders known to exist (saves a mkdir per task)
        self.shared: SharedLog | None = None  # what other masters wrote (a shared database)
        self.watcher: LogWatcher | None = None  # ships this master's lines to it
        os.makedirs(root, exist_ok=True)

    def path(self, run_id: str, task_instance_id: str, attempt: int) -> str:
        return os.path.join(self.root, run_id, f"{task_instance_id}.{attempt}.log")

    def read_pid(
        self, run_id: str, task_instance_id: str, attempt: int
    ) -> tuple[int, float] | None:
        """The (pid, start time) an attempt recorded, or None."""
        found = None
        try:
            with open(os.path.join(self.root, run_id, PIDS_FILE)) as handle:
                for line in handle:
                    parts = line.split()
                    if (
                        len(parts) == 4
                        and parts[0] == task_instance_id
                        and parts[1] == str(attempt)
                    ):
                        found = (int(parts[2]), float(parts[3]))
        except (OSError, ValueError):
            return None
        return found

    def key(self, task_instance_id: str, attempt: int) -> str:
        return f"{task_instance_id}/{attempt}"

    def open_attempt(
        self,
        run_id: str,
        task_instance_id: str,
        attempt: int,
        capture_stdout: bool = False,
        resume: bool = False,
    ) -> AttemptLog:
        """The writer of an attempt's log (`resume`: reopened, e.g. by a restarted master
        receiving a remote attempt's next lines, so captured stdout is kept)."""
        if run_id not in self._run_dirs:
            os.makedirs(os.path.join(self.root, run_id), exist_ok=True)
            if len(self._run_dirs) > 10_000:
                self._run_dirs.clear()  # a cache, bounded; a folder removed later is re-made
            self._run_dirs.add(run_id)
        path = self.path(run_id, task_instance_id, attempt)
        shipped = 0
        if self.shared is not None and (resume or os.path.exists(path)):
            shipped = self._catch_up(path, task_instance_id, attempt)
        log = AttemptLog(
            path,
            self.key(task_instance_id, attempt),
            self.hub,
            capture_stdout,
            resume,
            self.max_stdout_bytes,
        )
        if self.watcher is not None:
            log.after_close = self.watcher.watch(run_id, task_instance_id, attempt, path, shipped)
        return log

    def _catch_up(self, path: str, task_instance_id: str, attempt: int) -> int:
        """Append to the file the lines the database holds past its end (written by another
        master: a remote worker that moved here part way); returns the last line stored
        there (what need not be shipped again)."""
        assert self.shared is not None
        written = count_lines(path)
        stored = self.shared.last_line(task_instance_id, attempt)
        if stored <= written:
            return stored
        with (
            open(index_path(path), "a", encoding="ascii") as index,
            open(path, "a", encoding="utf-8") as log,
        ):
            for number, text, stamp in _shared_lines(
                self.shared, task_instance_id, attempt, written
            ):
                ms, stream = stamp or (None, None)
                if ms is not None:
                    index.write(f"{number} {ms} {STREAM_CODES.get(stream or '', 'o')}\n")
                log.write(text + "\n")
        return stored

    def read_stdout(self, run_id: str, task_instance_id: str, attempt: int) -> str | None:
        try:
            with open(
                stdout_path(self.path(run_id, task_instance_id, attempt)),
                encoding="utf-8",
                errors="replace",
            ) as handle:
                return handle.read()
        except OSError:
            return None

    def shared_stdout(self, task_instance_id: str, attempt: int) -> tuple[str, int | None, bool]:
        """An attempt's stdout as the shared database holds its log (a map source that ran on
        another master): its stdout lines, the cap they were cut at (None: whole), and whether
        the writer marked the log complete. ("", None, False) without a shared database."""
        if self.shared is None:
            return "", None, False
        out: list[str] = []
        size, after, closed = 0, 0, False
        while True:
            lines, closed = self.shared.read(task_instance_id, attempt, after)
            if not lines:
                break
            after = lines[-1][0]
            for _, text, stamp in lines:
                if stamp is not None and stamp[1] == "stdout":
                    size += len(text.encode()) + 1
                    out.append(text + "\n")
            if size > self.max_stdout_bytes:
                return "", self.max_stdout_bytes, closed
        return "".join(out), None, closed

    def stdout_cut_at(self, run_id: str, task_instance_id: str, attempt: int) -> int | None:
        """The cap an attempt's captured stdout was cut at, or None when it was kept whole."""
        try:
            with open(stdout_cut_path(self.path(run_id, task_instance_id, attempt))) as handle:
                text = handle.read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else MAX_STDOUT_BYTES

    def lines(
        self, run_id: str, task_instance_id: str, attempt: int, start: int = 0
    ) -> Iterator[tuple[int, str]]:
        """(line number from 1, text) for every complete line after `start`: the file's, then
        those the shared database holds past them."""
        for number, text, _ in self._lines(run_id, task_instance_id, attempt, start, False):
            yield number, text

    def stamped_lines(
        self, run_id: str, task_instance_id: str, attempt: int, start: int = 0
    ) -> Iterator[tuple[int, str]]:
        """`lines`, each prefixed with its time and stream (see `stamped`)."""
        for number, text, stamp in self._lines(run_id, task_instance_id, attempt, start, True):
            yield number, stamped(text, stamp or (None, None))

    def _lines(
        self, run_id: str, task_instance_id: str, attempt: int, start: int, stamps: bool
    ) -> Iterator[Line]:
        path = self.path(run_id, task_instance_id, attempt)
        last = 0
        meta = LineMeta(path) if stamps else None
        try:
            for last, text in _file_lines(path):
                if last > start:
                    yield last, text, meta.at(last) if meta is not None else None
        finally:
            if meta is not None:
                meta.close()
        if self.shared is not None:
            yield from _shared_lines(self.shared, task_instance_id, attempt, max(last, start))

    def line_count(self, run_id: str, task_instance_id: str, attempt: int) -> int:
        """How many lines the log has (its file's, or more in the shared database)."""
        written = count_lines(self.path(run_id, task_instance_id, attempt))
        if self.shared is None:
            return written
        return max(written, self.shared.last_line(task_instance_id, attempt))

    def tail(
        self, run_id: str, task_instance_id: str, attempt: int, count: int
    ) -> list[tuple[int, str]]:
        if self.shared is not None:  # (a long log held only by the database: its end alone)
            stored = self.shared.last_line(task_instance_id, attempt)
            if stored > count and not os.path.exists(self.path(run_id, task_instance_id, attempt)):
                lines = self.lines(run_id, task_instance_id, attempt, stored - count)
                return list(deque(lines, maxlen=count))
        return list(deque(self.lines(run_id, task_instance_id, attempt), maxlen=count))

    def follower(
        self, run_id: str, task_instance_id: str, attempt: int, start: int, stamps: bool
    ) -> LogFollower:
        """A live reader of the attempt's log from line `start` on."""
        path = self.path(run_id, task_instance_id, attempt)
        shared = None
        if self.shared is not None:
            shared = _SharedCursor(self.shared, task_instance_id, attempt)
        return LogFollower(path, start, LineMeta(path) if stamps else None, shared)

    def run_folders(self, older_than: float) -> list[str]:
        """The run ids of the log folders last changed before `older_than` (epoch seconds)."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        return [e.name for e in entries if _folder_before(e, older_than)]

    def remove_run(self, run_id: str) -> None:
        self._run_dirs.discard(run_id)
        shutil.rmtree(os.path.join(self.root, run_id), ignore_errors=True)


class LogFollower:
    """Reads an attempt's log from a line number on, remembering the file position; with a
    shared database, then the lines stored there past what the file had (`shared`)."""

    def __init__(
        self,
        path: str,
        start: int,
        meta: LineMeta | None = None,
        shared: _SharedCursor | None = None,
    ) -> None:
        self.path = path
        self.shared = shared is not None
        self.line = max(0, start)  # the last line given (or skipped)
        self._in_file = 0  # complete lines read from the file
        self._handle: IO[str] | None = None
        self._pending = ""
        self._meta = meta
        self._shared = shared

    @property
    def complete(self) -> bool:
        """Whether everything written is read: always with the file alone; with a shared
        database, once a read found the writer's mark that it closed the log."""
        return self._shared is None or self._shared.closed

    def read_new(self) -> list[Line]:
        out = self._read_file()
        if not out and self._shared is not None:
            out = self._shared.read(self.line)
            if out:
                self.line = out[-1][0]
            if self._meta is None:  # (stamps not asked for)
                out = [(number, text, None) for number, text, _ in out]
        return out

    def _read_file(self) -> list[Line]:
        handle = self._open()
        if handle is None:
            return []
        out: list[Line] = []
        while True:
            raw = handle.readline()
            if not raw:
                break
            if not raw.endswith("\n"):
                self._pending += raw
                break
            text = self._pending + raw[:-1]
            self._pending = ""
            self._in_file += 1
            if self._in_file > self.line:
                self.line = self._in_file
                stamp = self._meta.at(self.line) if self._meta is not None else None
                out.append((self.line, text, stamp))
        return out

    def _open(self) -> IO[str] | None:
        if self._handle is None:
            try:
                self._handle = open(self.path, encoding="utf-8", errors="replace")  # noqa: SIM115
            except OSError:
                return None
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._meta is not None:
            self._meta.close()


class _SharedCursor:
    """A follower's reads of the lines the shared database holds for one attempt, and whether
    the writer closed the log after the lines read. (How often: the follower's caller decides;
    the event stream looks every SHARED_POLL_SECONDS, or at once when woken.)"""

    def __init__(self, shared: SharedLog, task_instance_id: str, attempt: int) -> None:
        self._shared = shared
        self._task_instance_id = task_instance_id
        self._attempt = attempt
        self._closed = False

    def read(self, after: int) -> list[Line]:
        lines, self._closed = self._shared.read(self._task_instance_id, self._attempt, after)
        return lines

    @property
    def closed(self) -> bool:
        """Whether the last read found the log closed after its lines."""
        return self._closed


class LineMeta:
    """When (epoch ms, to the second) and from which stream each line of a log came, read from
    its `.lines` index; asked for growing line numbers, it reads the index incrementally (a live
    follower), and answers (None, None) for logs written before the index existed."""

    def __init__(self, log_path: str) -> None:
        self._path = index_path(log_path)
        self._handle: IO[str] | None = None
        self._missing = False
        self._pending = ""
        self._next: tuple[int, int, str] | None = None  # a record read but not reached yet
        self._current: tuple[int | None, str | None] = (None, None)

    def at(self, number: int) -> tuple[int | None, str | None]:
        """(epoch ms, stream name) of line `number` (numbers must not decrease)."""
        while True:
            if self._next is None:
                self._next = self._read_record()
                if self._next is None:
                    return self._current
            if self._next[0] > number:
                return self._current
            _, ms, code = self._next
            self._current = (ms, STREAM_NAMES.get(code))
            self._next = None

    def _read_record(self) -> tuple[int, int, str] | None:
        handle = self._open()
        while handle is not None:
            raw = handle.readline()
            if not raw:
                return None
            if not raw.endswith("\n"):
                self._pending += raw
                return None
            text, self._pending = self._pending + raw, ""
            parts = text.split()
            if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1]), parts[2]
        return None

    def _open(self) -> IO[str] | None:
        if self._handle is None and not self._missing:
            try:
                self._handle = open(self._path, encoding="ascii", errors="replace")  # noqa: SIM115
            except OSError:
                self._missing = True  # (asked once a line exists: the index is made first)
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _file_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) for every complete line of a file (none when missing)."""
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith("\n"):
                break
            yield number, raw[:-1]


def _shared_lines(
    shared: SharedLog, task_instance_id: str, attempt: int, after: int
) -> Iterator[Line]:
    """Every line the shared database holds past `after`, a page at a time."""
    while True:
        lines, _ = shared.read(task_instance_id, attempt, after)
        if not lines:
            return
        yield from lines
        after = lines[-1][0]


def stamped(text: str, meta: tuple[int | None, str | None]) -> str:
    """A log line prefixed with when it was written (ISO 8601 UTC, to the second) and its
    stream, `-` for what is not known: `2026-01-02T03:04:05Z stderr text`."""
    ms, stream = meta
    when = "-" if ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))
    return f"{when} {stream or '-'} {text}"


def count_lines(path: str) -> int:
    """Complete lines in a file (0 when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


def append_pid_records(run_folder: str, records: list[str]) -> None:
    """Append pid records to a run's pids file in one O_APPEND write (the dispatcher writes
    the records of all attempts it started in one turn at once)."""
    fd = os.open(os.path.join(run_folder, PIDS_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(records).encode())
    finally:
        os.close(fd)


def output_path(log_path: str) -> str:
    """Where an attempt's $NAGARE_OUTPUT points (created by the task if it writes one)."""
    return log_path[: -len(".log")] + ".outputs"


def read_output_file(path: str) -> str | None:
    """The text a task wrote to its $NAGARE_OUTPUT (None when it wrote none; one failed open
    is all a task that publishes nothing costs). OutputError when it is too large to be valid."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # (the cheapest failed open)
    except OSError:
        return None
    with open(fd, encoding="utf-8", errors="replace") as handle:
        text = handle.read(MAX_OUTPUT_FILE_BYTES + 1)
    if len(text) > MAX_OUTPUT_FILE_BYTES:
        raise OutputError(
            f"the file $NAGARE_OUTPUT is larger than {MAX_OUTPUT_FILE_BYTES} bytes "
            f"(at most {MAX_OUTPUTS} outputs of {size_text(MAX_VALUE_BYTES)} each)"
        )
    return text


def remove_output_file(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def index_path(log_path: str) -> str:
    """The `.lines` index of a log (see LineMeta)."""
    return log_path[: -len(".log")] + ".lines"


def stdout_path(log_path: str) -> str:
    return log_path[: -len(".log")] + ".stdout"


def stdout_cut_path(log_path: str) -> str:
    return log_path[: -len(".log")] + ".stdout-cut"


def _folder_before(entry: os.DirEntry[str], older_than: float) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < older_than
    except OSError:
        return False
