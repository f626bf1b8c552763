"""The DAGs folder: loads every `*.yaml`/`*.yml` file, notices new, changed and deleted files
within about a second, keeps the last good version of a file that breaks, and reports every
file's errors. Only changed files are parsed again (what `stat` says decides).

Whatever one file is or holds, it only gets errors of its own: anything that is not a regular
file (a FIFO, a socket, a directory, a symlink loop or a dangling link) is reported from its
`stat` without being opened, a file over `max_file_bytes` without being read, and any exception
while reading one file becomes that file's error. A fault that stays the same is logged once.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from nagare.dagfile import (
    MAX_FILE_BYTES,
    DagError,
    clip,
    load_dag_file,
    not_regular_message,
    parse_dag,
    read_dag_text,
    too_large_message,
)
from nagare.dagfile.calls import call_errors
from nagare.engine.secrets import MAX_SECRET_BYTES
from nagare.liveness import Heartbeat
from nagare.models import DagDef, HandlerKind, TaskDef

log = logging.getLogger("nagare.dags")
SCAN_SECONDS = 0.5
MAX_ERROR_CHARS = 500  # one error line in the snapshot (the parser's errors are shorter)

Signature = tuple[int, ...]  # what stat says; a file is read again when it changes


@dataclass(frozen=True)
class _Seen:
    """One folder entry as the scan found it: its signature, and why it cannot be read
    (found without opening it), or ''."""

    signature: Signature
    problem: str = ""


@dataclass
class _FileState:
    signature: Signature
    dag: DagDef | None
    errors: list[DagError]
    last_good: DagDef | None
    order: int  # when the file first loaded well: the earliest keeps a contested id


@dataclass
class Snapshot:
    dags: dict[str, DagDef] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # dag_id -> file name


class DagFolder:
    def __init__(
        self,
        path: str,
        on_change: Callable[[], None] | None = None,
        extra_check: Callable[[DagDef], list[tuple[int, str, str]]] | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        default_handlers: dict[HandlerKind, TaskDef] | None = None,
        include: Callable[[str], bool] | None = None,
    ) -> None:
        self.path = path
        self._include = include  # which file names load (`nagare exec FILE`); None: all
        self._default_handlers = default_handlers or {}  # of DAGs without handler_on
        self._on_change = on_change
        self._extra_check = extra_check  # checks of later layers (jq expressions compile)
        self._max_file_bytes = max_file_bytes
        self._folder_problem = ""  # the last "cannot read the folder" logged
        self._files: dict[str, _FileState] = {}
        self._snapshot = Snapshot()
        self._lock = threading.Lock()
        self._counter = 0
        self.liveness = Heartbeat("dag_folder", SCAN_SECONDS)
        os.makedirs(path, exist_ok=True)

    # ------------------------------------------------------------ reading

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def get(self, dag_id: str) -> DagDef | None:
        return self._snapshot.dags.get(dag_id)

    def source(self, dag_id: str) -> str | None:
        name = self._snapshot.files.get(dag_id)
        if name is None:
            return None
        # the same reader as a scan: a FIFO or a huge file put there since is refused at once
        text = read_dag_text(os.path.join(self.path, name), self._max_file_bytes)
        return None if isinstance(text, DagError) else text

    def check_text(self, text: str, file: str = "<request>") -> list[DagError]:
        """Every problem of a DAG file's text, with this folder's checks; nothing is loaded
        (`POST /api/dags/validate`)."""
        return parse_dag(text, file, self.path, self._extra_check)[1]

    # ------------------------------------------------------------ scanning

    def run(self, stop: threading.Event) -> None:
        """Rescan every SCAN_SECONDS (an exception ends it: app logs it, backs off and runs
        it again)."""
        while not stop.wait(SCAN_SECONDS):
            self.scan()
            self.liveness.beat()

    def scan(self) -> bool:
        """Re-read what changed; returns whether the loaded set or the errors changed."""
        with self._lock:
            current = self._list_files()
            changed = self._forget_deleted(current)
            for name, seen in current.items():
                state = self._files.get(name)
                if state is None or state.signature != seen.signature:
                    self._load(name, seen, state)
                    changed = True
            if changed:
                self._snapshot = self._assemble()
        if changed and self._on_change is not None:
            self._on_change()
        return changed

    def _list_files(self) -> dict[str, _Seen]:
        """Every `*.yaml`/`*.yml` entry with its signature: one `stat` each (following links)."""
        found: dict[str, _Seen] = {}
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            problem = f"cannot read the DAGs folder {self.path}: {exc.strerror or exc}"
            if problem != self._folder_problem:  # logged once, not on every scan
                self._folder_problem = problem
                log.error("%s (the DAGs loaded before are kept)", problem)
            return {name: _Seen(state.signature) for name, state in self._files.items()}
        if self._folder_problem:
            self._folder_problem = ""
            log.info("the DAGs folder %s can be read again", self.path)
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith((".yaml", ".yml")):
                continue
            if self._include is not None and not self._include(entry.name):
                continue
            seen = self._look_at(entry)
            if seen is not None:
                found[entry.name] = seen
        return found

    def _look_at(self, entry: os.DirEntry[str]) -> _Seen | None:
        try:
            st = entry.stat()
        except FileNotFoundError:
            if not entry.is_symlink():
                return None  # removed since the listing
            return self._broken_link(entry, "a symbolic link to a file that does not exist")
        except OSError as exc:  # a symlink loop, a name too long, ...
            return self._broken_link(entry, f"cannot read the file: {exc.strerror or exc}")
        signature = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            return _Seen(signature, not_regular_message(st.st_mode))
        if st.st_size > self._max_file_bytes:
            return _Seen(signature, too_large_message(st.st_size, self._max_file_bytes))
        return _Seen(signature)

    @staticmethod
    def _broken_link(entry: os.DirEntry[str], problem: str) -> _Seen | None:
        """The entry itself (a link that cannot be followed): its own stat is the signature,
        so the problem is reported once, and again only if it changes or the link is fixed."""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None  # removed since the listing
        return _Seen((-1, st.st_mtime_ns, st.st_ctime_ns, st.st_ino), problem)

    def _forget_deleted(self, current: dict[str, _Seen]) -> bool:
        gone = [name for name in self._files if name not in current]
        for name in gone:
            log.info("DAG file %s was removed", name)
            del self._files[name]
        return bool(gone)

    def _load(self, name: str, seen: _Seen, old: _FileState | None) -> None:
        dag, errors = self._read(name, seen)
        last_good = dag or (old.last_good if old else None)
        order = old.order if old and old.last_good else self._next_order()
        self._files[name] = _FileState(seen.signature, dag, errors, last_good, order)
        if errors and old is not None and old.errors == errors:
            log.debug("DAG file %s changed but has the same error(s)", name)
        elif errors:
            kept = " (its last good version keeps running)" if last_good else ""
            log.warning(
                "DAG file %s has %d error(s)%s: %s",
                name,
                len(errors),
                kept,
                clip("; ".join(str(e) for e in errors), 10 * MAX_ERROR_CHARS),
            )
        else:
            log.info("loaded DAG '%s' from %s", dag.dag_id if dag else "?", name)

    def _read(self, name: str, seen: _Seen) -> tuple[DagDef | None, list[DagError]]:
        """The file's DAG or its errors; whatever goes wrong stays this file's error."""
        if seen.problem:
            return None, [DagError(name, 0, "", seen.problem)]
        try:
            dag, errors = load_dag_file(
                os.path.join(self.path, name), self._extra_check, self._max_file_bytes
            )
            if dag is not None and not dag.handler_on and self._default_handlers:
                dag = replace(dag, handler_on=dict(self._default_handlers))
            return dag, errors
        except Exception as exc:  # a bug must not stop the other files (or the server start)
            log.error("reading DAG file %s failed unexpectedly", name, exc_info=True)
            problem = clip(f"{type(exc).__name__}: {exc}", 200)
            return None, [DagError(name, 0, "", f"the file could not be read ({problem})")]

    def _next_order(self) -> int:
        self._counter += 1
        return self._counter

    def _assemble(self) -> Snapshot:
        snapshot = Snapshot()
        for name, state in sorted(self._files.items(), key=lambda kv: (kv[1].order, kv[0])):
            if state.errors:
                snapshot.errors[name] = [clip(str(e), MAX_ERROR_CHARS) for e in state.errors]
            dag = state.dag or state.last_good
            if dag is None:
                continue
            owner = snapshot.files.get(dag.dag_id)
            if owner is not None:
                snapshot.errors.setdefault(name, []).append(
                    f"{name}: id: DAG id '{dag.dag_id}' is already defined by {owner}; "
                    "this file is not loaded (expected a unique id)"
                )
                continue
            clash = _webhook_clash(snapshot, dag)
            if clash is not None:
                hook = dag.trigger.path if dag.trigger else ""
                snapshot.errors.setdefault(name, []).append(
                    f"{name}: trigger.path: webhook path '{hook}'"
                    f" is already used by DAG '{clash}' ({snapshot.files[clash]}); this file is "
                    "not loaded (expected a unique path)"
                )
                continue
            snapshot.dags[dag.dag_id] = dag
            snapshot.files[dag.dag_id] = name
        self._check_calls(snapshot)
        return snapshot

    def _check_calls(self, snapshot: Snapshot) -> None:
        """The DAGs whose `dag` steps call in a cycle or too deep are not loaded: each one's
        file reports it (logged when it is new)."""
        for dag_id, problems in call_errors(snapshot.dags).items():
            name = snapshot.files.pop(dag_id)
            del snapshot.dags[dag_id]
            lines = [
                clip(str(DagError(name, line, field, message)), MAX_ERROR_CHARS)
                for line, field, message in problems
            ]
            known = self._snapshot.errors.get(name, [])
            fresh = [line for line in lines if line not in known]
            if fresh:
                log.warning("DAG file %s is not loaded: %s", name, "; ".join(fresh))
            snapshot.errors.setdefault(name, []).extend(lines)


def _webhook_clash(snapshot: Snapshot, dag: DagDef) -> str | None:
    """The id of a loaded DAG whose webhook path `dag` repeats (the first loaded keeps it)."""
    if dag.trigger is None or not dag.trigger.path:
        return None
    for other in snapshot.dags.values():
        if other.trigger is not None and other.trigger.path == dag.trigger.path:
            return other.dag_id
    return None


def read_secret_file(path: str) -> str:
    """The text of a secret's file (`secrets: [{file: ...}]`), read when a task starts.
    Raises OSError (unreadable, not a regular file, too large) or ValueError (not UTF-8)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        data = handle.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise OSError(0, f"larger than {MAX_SECRET_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
