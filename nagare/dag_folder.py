"""The DAGs folder: loads every `*.yaml`/`*.yml` file, notices new, changed and deleted files
within about a second, keeps the last good version of a file that breaks, and reports every
file's errors. Only changed files are parsed again (mtime, size and inode decide).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from nagare.dagfile import DagError, load_dag_file
from nagare.liveness import Heartbeat
from nagare.models import DagDef

log = logging.getLogger("nagare.dags")
SCAN_SECONDS = 0.5


@dataclass
class _FileState:
    signature: tuple[int, int, int]
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
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._extra_check = extra_check  # checks of later layers (jq expressions compile)
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
        try:
            with open(os.path.join(self.path, name), encoding="utf-8") as handle:
                return handle.read()
        except OSError:
            return None

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
            for name, signature in current.items():
                state = self._files.get(name)
                if state is None or state.signature != signature:
                    self._load(name, signature, state)
                    changed = True
            if changed:
                self._snapshot = self._assemble()
        if changed and self._on_change is not None:
            self._on_change()
        return changed

    def _list_files(self) -> dict[str, tuple[int, int, int]]:
        found: dict[str, tuple[int, int, int]] = {}
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            log.error("cannot read the DAGs folder %s: %s", self.path, exc)
            return {name: state.signature for name, state in self._files.items()}
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith((".yaml", ".yml")):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue
            found[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return found

    def _forget_deleted(self, current: dict[str, tuple[int, int, int]]) -> bool:
        gone = [name for name in self._files if name not in current]
        for name in gone:
            log.info("DAG file %s was removed", name)
            del self._files[name]
        return bool(gone)

    def _load(self, name: str, signature: tuple[int, int, int], old: _FileState | None) -> None:
        dag, errors = load_dag_file(os.path.join(self.path, name), self._extra_check)
        last_good = dag or (old.last_good if old else None)
        order = old.order if old and old.last_good else self._next_order()
        self._files[name] = _FileState(signature, dag, errors, last_good, order)
        if errors:
            kept = " (its last good version keeps running)" if last_good else ""
            log.warning(
                "DAG file %s has %d error(s)%s: %s",
                name,
                len(errors),
                kept,
                "; ".join(str(e) for e in errors),
            )
        else:
            log.info("loaded DAG '%s' from %s", dag.dag_id if dag else "?", name)

    def _next_order(self) -> int:
        self._counter += 1
        return self._counter

    def _assemble(self) -> Snapshot:
        snapshot = Snapshot()
        for name, state in sorted(self._files.items(), key=lambda kv: (kv[1].order, kv[0])):
            if state.errors:
                snapshot.errors[name] = [str(e) for e in state.errors]
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
        return snapshot


def _webhook_clash(snapshot: Snapshot, dag: DagDef) -> str | None:
    """The id of a loaded DAG whose webhook path `dag` repeats (the first loaded keeps it)."""
    if dag.trigger is None or not dag.trigger.path:
        return None
    for other in snapshot.dags.values():
        if other.trigger is not None and other.trigger.path == dag.trigger.path:
            return other.dag_id
    return None
