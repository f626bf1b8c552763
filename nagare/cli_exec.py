"""`nagare exec FILE_OR_DAG`: run one DAG in this process to completion, printing its tasks'
output, their starts and ends (on a terminal, or with --progress) and a summary.

A FILE is loaded alone: the other files of its folder are read only when the DAG calls other
DAGs (`type: dag`), and silently (their errors matter only if the DAG calls them). The wait for
the run's end is woken by the scheduler (`App.wait_for_run`); a progress display looks at the
tasks on every wake-up, at least every PROGRESS_SECONDS.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from nagare.config import Config, load_config
from nagare.errors import ConfigError, close_matches
from nagare.models import DagDef, TaskInstance, TaskStatus, TaskType

if TYPE_CHECKING:
    from nagare.app import App

PROGRESS_SECONDS = 0.2  # a live status line is redrawn this often
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
CLEAR_LINE = "\r\x1b[K"
SPINNER = "|/-\\"


def run_exec(namespace: argparse.Namespace, params: dict[str, str]) -> int:
    target = namespace.target
    file = dag_file_of(target)
    flags: dict[str, Any] = {"config": namespace.config, "dags": namespace.dags}
    if file:
        flags["dags"] = os.path.dirname(os.path.abspath(file))
    with _ExecDb(namespace.db) as db:
        config = load_config({**flags, "db": db, "port": "0"})
        from nagare.cli import setup_logging

        setup_logging("warning")
        # the DAG files' errors are printed below when they matter to this run
        logging.getLogger("nagare.dags").setLevel(logging.ERROR)
        progress = Progress(sys.stderr, _progress_mode(namespace.progress, sys.stderr))
        return _exec_run(config, target, file, params, progress, namespace.quiet)


def dag_file_of(target: str) -> str:
    """The DAG file `target` names ('' for a DAG id); a path that is no file is an error."""
    if os.path.isfile(target):
        return target
    if os.path.isdir(target):
        raise ConfigError(f"{target} is a folder: give one DAG file, or a DAG id with --dags")
    if os.sep in target or target.endswith((".yaml", ".yml")):
        raise ConfigError(f"file not found: {target}")
    return ""


def _progress_mode(flag: str | None, stream: TextIO) -> str:
    """'live' (start/end lines and a status line), 'lines' or 'off'."""
    if flag:
        return flag
    return "live" if stream.isatty() else "off"


class _OneFile:
    """Which files of the folder load: the given one, or every one once the DAG calls others."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.everything = False

    def includes(self, name: str) -> bool:
        return self.everything or name == self.name


def _exec_run(
    config: Config,
    target: str,
    file: str,
    params: dict[str, str],
    progress: Progress,
    quiet: bool,
) -> int:
    from nagare.app import App

    selection = _OneFile(os.path.basename(file)) if file else None
    app = App(
        config,
        serve_http=False,
        schedule=False,
        line_sink=progress.sink(quiet),
        dag_files=selection.includes if selection else None,
    )
    app.start()
    try:
        dag_id = _dag_of_file(app, selection) if selection else _dag_by_id(app, target)
        if dag_id is None:
            return EXIT_BAD_INPUT
        started = time.monotonic()
        run_id = app.runs.trigger(dag_id, params).run_id
        status = _wait(app, run_id, progress)
        print(summary(app.store.tasks.of_run(run_id)), file=sys.stderr)
        took = duration_text(time.monotonic() - started)
        print(f"run of '{dag_id}' finished: {status} in {took}", file=sys.stderr)
        return 0 if status == "success" else EXIT_INTERRUPTED if status == "interrupted" else 1
    finally:
        app.stop()


def _wait(app: App, run_id: str, progress: Progress) -> str:
    """The run's status once it ended (its progress shown meanwhile), or "interrupted"."""

    def watch() -> None:
        progress.tick(app.store.tasks.of_run(run_id))

    try:
        if progress.mode == "off":
            return app.wait_for_run(run_id)
        return app.wait_for_run(run_id, watch, PROGRESS_SECONDS)
    except KeyboardInterrupt:
        return _kill(app, run_id, progress)
    finally:
        progress.done()


def _kill(app: App, run_id: str, progress: Progress) -> str:
    """Ctrl-C or SIGTERM: kill the run's tasks and wait for its end (a second one stops
    waiting); returns "interrupted"."""
    from nagare.errors import NagareError

    progress.done()
    print("interrupted: killing the run's tasks (Ctrl-C again to stop waiting)", file=sys.stderr)
    try:
        app.runs.kill_run(run_id)
        app.wait_for_run(run_id)
    except (NagareError, KeyboardInterrupt):
        pass
    return "interrupted"


def _dag_of_file(app: App, selection: _OneFile) -> str | None:
    """The id of the file's DAG, after loading the DAGs it calls; None (printed) if it is
    invalid."""
    name = selection.name
    dag = _loaded(app, name)
    if dag is not None and calls_dags(dag):
        selection.everything = True
        app.folder.scan()
        dag = _loaded(app, name)
    errors = app.folder.snapshot.errors.get(name, [])
    if dag is None or errors:
        for error in errors or [f"{name}: not loaded"]:
            print(error, file=sys.stderr)
        return None
    return str(dag.dag_id)


def _loaded(app: App, name: str) -> DagDef | None:
    snapshot = app.folder.snapshot
    for dag_id, owner in snapshot.files.items():
        if owner == name:
            return snapshot.dags.get(dag_id)
    return None


def calls_dags(dag: DagDef) -> bool:
    """Whether a task or handler of `dag` is a `type: dag` step (a call of another DAG)."""
    return any(t.type is TaskType.DAG for t in (*dag.tasks, *dag.handler_on.values()))


def _dag_by_id(app: App, dag_id: str) -> str | None:
    if app.folder.get(dag_id) is not None:
        return dag_id
    snapshot = app.folder.snapshot
    print(
        not_found_message(dag_id, app.config.dags, list(snapshot.dags), len(snapshot.errors)),
        file=sys.stderr,
    )
    for name in (f"{dag_id}.yaml", f"{dag_id}.yml"):  # the file of that name is likely it
        for error in snapshot.errors.get(name, []):
            print(error, file=sys.stderr)
    return None


def not_found_message(dag_id: str, folder: str, known: list[str], broken: int) -> str:
    """`DAG 'x' not found in dags`, with the closest id and how many files have errors."""
    message = f"error: DAG '{dag_id}' not found in {folder}"
    close = close_matches(dag_id, known, n=1)
    if close:
        message += f"; did you mean '{close[0]}'?"
    if broken:
        files = "file has" if broken == 1 else "files have"
        message += f" ({broken} {files} errors: `nagare validate {folder}` lists them)"
    return message


# ---------------------------------------------------------------- output


class Progress:
    """Task output on stdout; on stderr, with mode 'lines' or 'live', a line when a task starts
    and when it ends (with its duration), and with 'live' a status line redrawn in place. The
    sink runs in the dispatcher thread, `tick` in the main thread: one lock orders their
    writes."""

    def __init__(self, err: TextIO, mode: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.err = err
        self.mode = mode
        self.clock = clock
        self.began = clock()
        self._lock = threading.Lock()
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self._status = ""  # the status line on screen ('' none)
        self._turn = 0

    def sink(self, quiet: bool) -> Callable[[str, str, str], None]:
        def line(task_id: str, stream: str, text: str) -> None:
            with self._lock:
                self._start(task_id)
                if not quiet:
                    self._clear()
                    print(f"[{task_id}] {text}", flush=True)

        return line

    def tick(self, tasks: list[TaskInstance]) -> None:
        if self.mode == "off":
            return
        with self._lock:
            for task in tasks:
                if task.started_at is not None or task.status is TaskStatus.RUNNING:
                    self._start(task.task_id)
                if task.status.terminal and task.task_id not in self._ended:
                    self._ended.add(task.task_id)
                    self._write(end_line(task))
            if self.mode == "live" and not all(t.status.terminal for t in tasks):
                self._show(status_line(tasks, self.clock() - self.began, SPINNER[self._turn % 4]))
                self._turn += 1

    def done(self) -> None:
        with self._lock:
            self._clear()

    def _start(self, task_id: str) -> None:
        if self.mode == "off" or task_id in self._started:
            return
        self._started.add(task_id)
        self._write(f"task {task_id} started (+{duration_text(self.clock() - self.began)})")

    def _write(self, text: str) -> None:
        self._clear()
        print(text, file=self.err, flush=True)

    def _clear(self) -> None:
        if self._status:
            self.err.write(CLEAR_LINE)
            self.err.flush()
            self._status = ""

    def _show(self, text: str) -> None:
        self._clear()
        text = text[: shutil.get_terminal_size().columns - 1]  # one screen line: \r clears it
        self.err.write(text)
        self.err.flush()
        self._status = text


def end_line(task: TaskInstance) -> str:
    took = ""
    if task.started_at is not None and task.completed_at is not None:
        took = f" in {duration_text((task.completed_at - task.started_at) / 1000)}"
    note = f": {task.message}" if task.message else ""
    return f"task {task.task_id} {task.status}{took}{note}"


def status_line(tasks: list[TaskInstance], elapsed: float, spin: str) -> str:
    running = [t.task_id for t in tasks if t.status in (TaskStatus.RUNNING, TaskStatus.WAITING)]
    done = sum(1 for t in tasks if t.status.terminal)
    names = ", ".join(running[:3]) + (f" +{len(running) - 3}" if len(running) > 3 else "")
    now = f"running {names}" if running else "waiting"
    return f"{spin} {done}/{len(tasks)} tasks done, {now} ({duration_text(elapsed)})"


def summary(tasks: list[TaskInstance]) -> str:
    lines = []
    for task in tasks:
        note = f" ({task.message})" if task.message else ""
        lines.append(f"  {task.task_id:<30} {task.status}{note}")
    return "\n".join(lines)


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds >= 0.1 else f"{seconds * 1000:.0f}ms"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class _ExecDb:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._tmp: Any = None

    def __enter__(self) -> str:
        if self.path:
            return self.path
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="nagare-exec-")
        return os.path.join(self._tmp.name, "nagare.db")

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
