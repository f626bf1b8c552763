"""Editing DAG files from the dashboard: read a file with a version token, save it atomically
(a temporary file in the DAG folder, fsync, rename) unless it changed since it was read, create
a file named after the DAG id without overwriting one, delete a file.

The folder watcher loads the result as it loads any file change; each write rescans at once so
that the answer can say whether the file loaded. `allow_dag_edits: false` refuses every write.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

from nagare.dag_folder import DagFolder
from nagare.dagfile import DagError, parse_dag, read_dag_text
from nagare.digest import sha256_hex
from nagare.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, Unprocessable

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,150}\.ya?ml$")
FILE_EXPECTED = (
    "a file name of the DAG folder: letters, digits, '_', '.', '-', ending in .yaml or .yml"
)
EDITS_OFF = (
    "DAG edits are turned off on this server (allow_dag_edits: false in nagare.yaml); change "
    "the files of the DAG folder instead"
)


@dataclass(frozen=True)
class DagSource:
    """A DAG file's text and the token of that version (a digest of its bytes)."""

    file: str
    text: str
    version: str


@dataclass(frozen=True)
class WriteResult:
    """What a write left: the file's new version and what the folder made of it."""

    file: str
    version: str
    dag_id: str  # the DAG the file defines now ('' when it does not load)
    errors: list[str]  # the file's load errors


def version_of(text: str) -> str:
    return sha256_hex(text.encode("utf-8"))[:32]


def check_file_name(name: str) -> str:
    if not FILE_NAME.match(name):
        raise BadRequest(f"'{name[:60]}' is not {FILE_EXPECTED}")
    return name


class DagEdits:
    def __init__(self, folder: DagFolder, allowed: bool, max_bytes: int) -> None:
        self.folder = folder
        self.allowed = allowed
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # a check of the version and its write happen together

    def read(self, name: str) -> DagSource:
        path = self._path(name)
        if not os.path.lexists(path):
            raise NotFound(f"there is no DAG file '{name}' in the DAG folder")
        text = read_dag_text(path, self.max_bytes)
        if isinstance(text, DagError):
            raise Unprocessable(f"{name}: {text.message}")
        return DagSource(name, text, version_of(text))

    def save(self, name: str, text: str, version: str) -> WriteResult:
        """Replace the file's text; 409 when it is not the version the editor loaded."""
        self._check_allowed()
        self._check_size(text)
        with self._lock:
            current = self.read(name)
            if current.version != version:
                raise Conflict(
                    f"{name} changed since it was opened (someone else saved it, or the file "
                    "was edited on disk); reload it and apply your change again"
                )
            self._write(name, text, replace=True)
        return self._result(name, text)

    def create(self, text: str) -> WriteResult:
        """A new file `<id>.yaml` for a valid DAG; 409 when the id or the file exists."""
        self._check_allowed()
        self._check_size(text)
        dag, errors = parse_dag(text, "<new>", self.folder.path)
        if dag is None:
            first = errors[0] if errors else None
            where = f"line {first.line}: " if first and first.line else ""
            detail = f" ({where}{first.message})" if first else ""
            raise Unprocessable(f"the DAG is not valid, it was not created{detail}")
        name = f"{dag.dag_id}.yaml"
        check_file_name(name)
        with self._lock:
            owner = self.folder.snapshot.files.get(dag.dag_id)
            if owner is not None:
                raise Conflict(f"DAG '{dag.dag_id}' already exists (file {owner})")
            for other in (name, f"{dag.dag_id}.yml"):
                if os.path.lexists(os.path.join(self.folder.path, other)):
                    raise Conflict(f"the file {other} already exists; it is not overwritten")
            self._write(name, text, replace=False)
        return self._result(name, text)

    def delete(self, name: str, version: str) -> None:
        """Remove the file (when `version` is given, only if the file is that version)."""
        self._check_allowed()
        with self._lock:
            current = self.read(name)
            if version and current.version != version:
                raise Conflict(f"{name} changed since it was opened; reload it before deleting")
            os.unlink(self._path(name))
            _sync_folder(self.folder.path)
        self.folder.scan()

    # ------------------------------------------------------------ helpers

    def _path(self, name: str) -> str:
        return os.path.join(self.folder.path, check_file_name(name))

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise Forbidden(EDITS_OFF)

    def _check_size(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            raise PayloadTooLarge(
                f"the text has {size} bytes; the limit of a DAG file is {self.max_bytes} "
                "(max_dag_file_bytes in nagare.yaml)"
            )

    def _write(self, name: str, text: str, replace: bool) -> None:
        """Write a hidden temporary file next to the target (the watcher ignores dot files),
        fsync it, then rename it over the target (or link it, which refuses an existing one)."""
        final = self._path(name)
        temp = os.path.join(self.folder.path, f".{name}.{os.urandom(6).hex()}.tmp")
        mode = _mode_of(final) if replace else 0o644
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(temp, final)
            else:
                try:
                    os.link(temp, final)
                except FileExistsError:
                    raise Conflict(
                        f"the file {name} already exists; it is not overwritten"
                    ) from None
        finally:
            if os.path.lexists(temp):
                os.unlink(temp)
        _sync_folder(self.folder.path)

    def _result(self, name: str, text: str) -> WriteResult:
        self.folder.scan()  # load it now: the answer says what became of it
        snapshot = self.folder.snapshot
        dag_id = next((i for i, f in snapshot.files.items() if f == name), "")
        return WriteResult(name, version_of(text), dag_id, list(snapshot.errors.get(name, [])))


def _mode_of(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o644


def _sync_folder(path: str) -> None:
    """Make the rename durable (the folder's entry), where the system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
