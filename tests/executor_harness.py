"""Driving an executor through its seam alone (no server, no store): a harness owns a `Reactor`
in the test's thread, starts assignments with a `Recorder` as the listener, and runs the reactor
until an attempt ends or a deadline passes (the test fails with what arrived so far).

`LocalHarness` and `DockerHarness` differ only in what an executor needs (an image and a mounted
folder for containers) and in how they look for what an attempt may leave behind (open
descriptors and unreaped children of this process; containers carrying the harness's owner
label). `close()` cancels what still runs, waits for its end and returns the leftovers.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from nagare.executors import AttemptHandle, Executor
from nagare.executors.local import LocalExecutor
from nagare.executors.procfs import process_alive
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, Outcome

TURN_SECONDS = 0.05  # longest wait of one reactor turn (container output does not wake it)


class Recorder:
    """The listener of one attempt: every call, and the thread `ended` came in. Lines of the
    streams in `discard` are only counted and hashed (huge outputs)."""

    def __init__(self, discard: tuple[str, ...] = ()) -> None:
        self.discard = discard
        self.lines: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.digests: dict[str, Any] = {}
        self.starts: list[tuple[int, float]] = []
        self.outcomes: list[Outcome] = []
        self.ended_threads: list[int] = []
        self.lines_after_end = 0
        self.lines_before_start = 0

    def line(self, stream: str, text: str) -> None:
        if self.outcomes:
            self.lines_after_end += 1
        if not self.starts:
            self.lines_before_start += 1
        self.counts[stream] += 1
        self.digests.setdefault(stream, hashlib.sha256()).update(text.encode() + b"\n")
        if stream not in self.discard:
            self.lines.append((stream, text))

    def started(self, pid: int, start_time: float) -> None:
        self.starts.append((pid, start_time))

    def ended(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.ended_threads.append(threading.get_ident())

    def stream(self, name: str) -> list[str]:
        return [text for stream, text in self.lines if stream == name]


@dataclass
class Attempt:
    assignment: Assignment
    recorder: Recorder
    handle: AttemptHandle
    started_at: float  # time.monotonic() just before `start`

    @property
    def ended(self) -> bool:
        return bool(self.recorder.outcomes)

    @property
    def stdout(self) -> list[str]:
        return self.recorder.stream("stdout")

    @property
    def stderr(self) -> list[str]:
        return self.recorder.stream("stderr")


class ExecutorHarness:
    """One executor on a reactor owned by the thread that creates the harness."""

    kind = ""

    def __init__(self, shared: Path, max_line_bytes: int) -> None:
        self.shared = shared
        shared.mkdir(parents=True, exist_ok=True)
        self.max_line_bytes = max_line_bytes
        self.owner_thread = threading.get_ident()
        self.reactor = Reactor()
        self.executor: Executor = self._make_executor()
        self.attempts: list[Attempt] = []
        self._numbers = itertools.count(1)

    # ------------------------------------------------------------ per executor

    def _make_executor(self) -> Executor:
        raise NotImplementedError

    def _assignment_fields(self) -> dict[str, Any]:
        return {}

    def task_path(self, name: str) -> str:
        """Where the task sees the file `self.shared / name`."""
        raise NotImplementedError

    def remains(self, pid_file: Path) -> list[str]:
        """What still runs of an attempt whose task wrote a background child's pid there."""
        raise NotImplementedError

    def _leftovers(self) -> list[str]:
        raise NotImplementedError

    # ------------------------------------------------------------ starting

    def assignment(
        self, command: str, env: dict[str, str] | None = None, timeout: float = 0, **fields: Any
    ) -> Assignment:
        number = next(self._numbers)
        base = Assignment(
            task_instance_id=uuid.uuid4().hex[:16],  # container names are unique per engine
            run_id="contract-run",
            dag_id="contract",
            task_id=f"task{number}",
            attempt=1,
            command=command,
            env=dict(env or {}),
            timeout_seconds=timeout,
            **self._assignment_fields(),
        )
        return replace(base, **fields)

    def start(
        self,
        command: str,
        env: dict[str, str] | None = None,
        timeout: float = 0,
        discard: tuple[str, ...] = (),
        executor: Executor | None = None,
        **fields: Any,
    ) -> Attempt:
        assignment = self.assignment(command, env, timeout, **fields)
        recorder = Recorder(discard)
        started_at = time.monotonic()
        handle = (executor or self.executor).start(assignment, recorder)
        attempt = Attempt(assignment, recorder, handle, started_at)
        self.attempts.append(attempt)
        return attempt

    # ------------------------------------------------------------ driving the reactor

    def run_until(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        """Run the reactor until `predicate()` holds; fail after `timeout` seconds."""
        assert threading.get_ident() == self.owner_thread, "only the owning thread runs it"
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.kind}: no {what} after {timeout}s; {self._progress()}")
            self.reactor.run_once(min(remaining, TURN_SECONDS))

    def drive(self, seconds: float) -> None:
        """Keep the reactor turning for `seconds` (to see that nothing more arrives)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.reactor.run_once(min(remaining, TURN_SECONDS))

    def wait_line(self, attempt: Attempt, text: str, timeout: float = 30) -> None:
        self.run_until(lambda: text in attempt.stdout, timeout, f"stdout line {text!r}")

    def finish(self, attempt: Attempt, timeout: float = 30) -> Outcome:
        """Run until the attempt ends; check it ended exactly once, in the owning thread, with
        no line after it, and that its metrics name the executor and the exit code."""
        self.run_until(lambda: attempt.ended, timeout, f"end of {attempt.assignment.command!r}")
        recorder = attempt.recorder
        assert len(recorder.outcomes) == 1, recorder.outcomes
        assert recorder.ended_threads == [self.owner_thread], "ended outside the owning thread"
        assert recorder.lines_after_end == 0, "lines arrived after ended"
        outcome = recorder.outcomes[0]
        assert outcome.metrics.executor_type == self.kind, outcome
        assert outcome.metrics.exit_code == outcome.exit_code, outcome
        return outcome

    def _progress(self) -> str:
        parts = []
        for attempt in self.attempts:
            tail = attempt.recorder.lines[-5:]
            parts.append(
                f"{attempt.assignment.task_id}: ended={attempt.ended} "
                f"lines={dict(attempt.recorder.counts)} last={tail}"
            )
        return "; ".join(parts) or "no attempt started"

    # ------------------------------------------------------------ the end

    def close(self) -> list[str]:
        """Cancel every attempt still running, wait for its end, close the executor and the
        reactor; returns what was left behind (empty when nothing)."""
        problems = []
        for attempt in self.attempts:
            if not attempt.ended:
                attempt.handle.cancel("test over")
        try:
            self.run_until(lambda: all(a.ended for a in self.attempts), 30, "end after cancel")
        except AssertionError as exc:
            problems.append(str(exc))
        self.reactor.run_once(0)
        if not self.reactor.idle:
            problems.append("the reactor still holds descriptors, timers or calls")
        problems += self._leftovers()
        self.reactor.close()
        return problems


class LocalHarness(ExecutorHarness):
    kind = "local"

    def __init__(self, shared: Path, max_line_bytes: int) -> None:
        self._fds_before = _open_fds()
        self._children_before = {child.pid for child in psutil.Process().children()}
        super().__init__(shared, max_line_bytes)

    def _make_executor(self) -> Executor:
        return LocalExecutor(self.reactor, max_line_bytes=self.max_line_bytes)

    def task_path(self, name: str) -> str:
        return str(self.shared / name)

    def remains(self, pid_file: Path) -> list[str]:
        pid = int(pid_file.read_text())
        return [f"process {pid}"] if process_alive(pid, None) else []

    def _leftovers(self) -> list[str]:
        assert isinstance(self.executor, LocalExecutor)
        self.executor.close()
        children = [
            f"child process {child.pid} ({child.status()})"
            for child in psutil.Process().children()
            if child.pid not in self._children_before
        ]
        self.reactor.close()  # its eventfd is no leak
        fds = _open_fds()
        leaked = [f"descriptor {fd} -> {fds[fd]}" for fd in fds if fd not in self._fds_before]
        return children + leaked


class DockerHarness(ExecutorHarness):
    """Containers carry `owner` as their owner label; the harness's folder is mounted at
    /shared in each."""

    kind = "docker"

    def __init__(self, shared: Path, max_line_bytes: int, owner: str, image: str) -> None:
        import docker

        self.owner = owner
        self.image = image
        self.engine = docker.from_env()
        super().__init__(shared, max_line_bytes)

    def _make_executor(self) -> Executor:
        from nagare.executors.docker import DockerExecutor

        return DockerExecutor(self.reactor, max_line_bytes=self.max_line_bytes, owner=self.owner)

    def _assignment_fields(self) -> dict[str, Any]:
        return {"image": self.image, "volumes": (f"{self.shared}:/shared",)}

    def task_path(self, name: str) -> str:
        return f"/shared/{name}"

    def containers(self) -> list[str]:
        listed = self.engine.api.containers(
            all=True, filters={"label": [f"nagare.owner={self.owner}"]}
        )
        return [f"container {c['Names'][0].lstrip('/')} ({c['State']})" for c in listed]

    def remains(self, pid_file: Path) -> list[str]:
        return self.containers()

    def _leftovers(self) -> list[str]:
        """The containers left behind (reported, then removed so that none outlives the test)."""
        filters = {"label": [f"nagare.owner={self.owner}"]}
        try:
            found = self.containers()
            for container in self.engine.api.containers(all=True, filters=filters):
                self.engine.api.remove_container(container["Id"], force=True, v=True)
            return found
        finally:
            self.engine.close()


def _open_fds() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor listdir itself used
            continue
    return found
