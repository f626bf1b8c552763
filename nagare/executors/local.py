"""Local executor: each attempt is `sh -c COMMAND` in its own session and process group.

The only module that starts processes, sends signals and uses psutil. One select loop per
attempt drains stdout and stderr as raw chunks (never blocking on a long line), watches the
process through a pidfd and the timeout (a kill signals the process group at once, from the
killing thread), and samples the memory of the
whole process tree.

Metrics: CPU user/system time is the kernel's accounting of the waited shell and every descendant
it waited for (wait4 rusage). Peak memory is the highest sum, over the samples (at start, after
20 ms, then every 250 ms), of each tree member's own peak (VmHWM), so a child's peak between two
samples is still seen; a process that starts and ends between two samples is only seen through
wait4's ru_maxrss, which the kernel also charges with the server's own size at fork time, so that
figure counts only when it exceeds the server's peak at spawn time (then it must come from the
task).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

import psutil

from nagare.executors import Cancellation, LineSplitter, OnLine, OnStart
from nagare.models import Assignment, AttemptMetrics, ExecutorType, Outcome

KILL_GRACE_SECONDS = 0.5  # SIGTERM, then SIGKILL to the whole group after this long
DRAIN_SECONDS = 1.0  # after the shell exits, how long its output pipes may stay open
SAMPLE_SECONDS = 0.25  # memory sampling interval of the process tree
CHUNK = 65536


@dataclass
class _Watch:
    """Mutable state of one running attempt."""

    proc: subprocess.Popen[bytes]
    started: float
    deadline: float | None
    splitters: dict[int, LineSplitter]
    exited_at: float | None = None
    kill_sent_at: float | None = None
    killed_hard: bool = False
    finished: bool = False
    timed_out: bool = False
    cancelled: bool = False
    peak_rss: int = 0
    server_hwm: int = 0
    next_sample: float = 0.0
    open_fds: set[int] = field(default_factory=set)


class LocalExecutor:
    @property
    def executor_type(self) -> str:
        return ExecutorType.LOCAL

    def __init__(self, max_line_bytes: int = 65536, cwd: str | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.cwd = cwd
        self._hwm_cache = 0
        self._hwm_read_at = -10.0

    def run(
        self,
        assignment: Assignment,
        on_line: OnLine,
        cancel: Cancellation,
        on_start: OnStart | None = None,
    ) -> Outcome:
        if cancel.is_set:
            return Outcome(exit_code=None, cancelled=True, error=f"{cancel.reason} before start")
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", assignment.command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=assignment.env,
                start_new_session=True,
                cwd=self.cwd,
            )
        except OSError as exc:
            return Outcome(exit_code=None, error=f"cannot start /bin/sh: {exc}")
        if on_start is not None:
            on_start(proc.pid, _create_time(proc.pid))
        watch = self._watch(proc, assignment, on_line)
        cancel.on_cancel(lambda: self._cancel(watch))
        try:
            self._loop(watch)
        finally:
            self._finish_group(watch)
        return self._outcome(watch)

    def _cancel(self, watch: _Watch) -> None:
        """Runs in the killing thread: SIGTERM the group now; the loop escalates to SIGKILL."""
        if not watch.finished:
            watch.cancelled = True
            self._terminate(watch)

    def _server_hwm(self) -> int:
        """The server's own peak RSS, re-read at most once a second (cheap on every start)."""
        now = time.monotonic()
        if now - self._hwm_read_at > 1.0:
            self._hwm_cache = _hwm("self")
            self._hwm_read_at = now
        return self._hwm_cache

    def _watch(
        self, proc: subprocess.Popen[bytes], assignment: Assignment, on_line: OnLine
    ) -> _Watch:
        now = time.monotonic()
        assert proc.stdout is not None and proc.stderr is not None
        splitters = {
            proc.stdout.fileno(): LineSplitter("stdout", on_line, self.max_line_bytes),
            proc.stderr.fileno(): LineSplitter("stderr", on_line, self.max_line_bytes),
        }
        deadline = now + assignment.timeout_seconds if assignment.timeout_seconds > 0 else None
        return _Watch(
            proc=proc,
            started=now,
            deadline=deadline,
            splitters=splitters,
            next_sample=now + 0.02,
            open_fds=set(splitters),
            server_hwm=self._server_hwm(),
            peak_rss=_hwm(str(proc.pid)),  # the shell itself, already exec'd: short tasks too
        )

    def _loop(self, watch: _Watch) -> None:
        selector = selectors.PollSelector()  # no epoll fd to create per attempt
        pidfd = os.pidfd_open(watch.proc.pid)
        try:
            for fd in watch.open_fds:
                os.set_blocking(fd, False)
                selector.register(fd, selectors.EVENT_READ, "out")
            selector.register(pidfd, selectors.EVENT_READ, "exit")
            while not self._done(watch):
                for key, _ in selector.select(self._wait_time(watch)):
                    self._handle(key, watch, selector)
                self._check_deadlines(watch)
                self._sample(watch)
        finally:
            selector.close()
            os.close(pidfd)

    def _handle(
        self, key: selectors.SelectorKey, watch: _Watch, selector: selectors.BaseSelector
    ) -> None:
        if key.data == "out":
            self._read(int(key.fd), watch, selector)
        else:
            watch.exited_at = time.monotonic()
            selector.unregister(key.fd)

    def _read(self, fd: int, watch: _Watch, selector: selectors.BaseSelector) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            watch.splitters[fd].feed(chunk)
            return
        selector.unregister(fd)
        watch.open_fds.discard(fd)
        watch.splitters[fd].close()

    def _done(self, watch: _Watch) -> bool:
        if watch.exited_at is None:
            return False
        return not watch.open_fds or time.monotonic() - watch.exited_at > DRAIN_SECONDS

    def _wait_time(self, watch: _Watch) -> float:
        now = time.monotonic()
        waits = [watch.next_sample - now] if watch.exited_at is None else []
        if watch.deadline is not None and not watch.timed_out:
            waits.append(watch.deadline - now)
        if watch.kill_sent_at is not None and not watch.killed_hard:
            waits.append(watch.kill_sent_at + KILL_GRACE_SECONDS - now)
        if watch.exited_at is not None:
            waits.append(watch.exited_at + DRAIN_SECONDS - now)
        return max(0.0, min(waits))

    def _check_deadlines(self, watch: _Watch) -> None:
        now = time.monotonic()
        if (
            watch.deadline is not None
            and not watch.timed_out
            and now >= watch.deadline
            and watch.exited_at is None
        ):
            watch.timed_out = True
            self._terminate(watch)
        if (
            watch.kill_sent_at is not None
            and not watch.killed_hard
            and now >= watch.kill_sent_at + KILL_GRACE_SECONDS
        ):
            self._signal_group(watch, signal.SIGKILL)
            watch.killed_hard = True

    def _terminate(self, watch: _Watch) -> None:
        if watch.kill_sent_at is None:
            watch.kill_sent_at = time.monotonic()
            self._signal_group(watch, signal.SIGTERM)

    def _signal_group(self, watch: _Watch, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(watch.proc.pid, sig)

    def _sample(self, watch: _Watch) -> None:
        now = time.monotonic()
        if now < watch.next_sample or watch.exited_at is not None:
            return
        watch.next_sample = now + SAMPLE_SECONDS
        watch.peak_rss = max(watch.peak_rss, tree_rss(watch.proc.pid))

    def _finish_group(self, watch: _Watch) -> None:
        """Kill whatever is left of the task's process group, close pipes, reap the shell."""
        self._signal_group(watch, signal.SIGKILL)
        watch.finished = True
        for fd in list(watch.open_fds):
            watch.splitters[fd].close()
        for pipe in (watch.proc.stdout, watch.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _outcome(self, watch: _Watch) -> Outcome:
        _, status, usage = os.wait4(watch.proc.pid, 0)
        ended = watch.exited_at or time.monotonic()
        code = os.waitstatus_to_exitcode(status)
        watch.proc.returncode = code
        exit_code = 128 - code if code < 0 else code
        metrics = AttemptMetrics(
            duration_ms=int((ended - watch.started) * 1000),
            cpu_user_ms=int(usage.ru_utime * 1000),
            cpu_system_ms=int(usage.ru_stime * 1000),
            peak_memory_bytes=_peak(watch, usage.ru_maxrss * 1024),
            exit_code=exit_code,
            executor_type=ExecutorType.LOCAL,
        )
        error = ""
        if watch.timed_out:
            error = "timed out"
        return Outcome(
            exit_code=exit_code,
            timed_out=watch.timed_out,
            cancelled=watch.cancelled and not watch.timed_out,
            error=error,
            metrics=metrics,
        )


def _peak(watch: _Watch, maxrss: int) -> int:
    if maxrss > watch.server_hwm * 1.05:
        return max(maxrss, watch.peak_rss)
    return watch.peak_rss


def tree_rss(pid: int) -> int:
    """The sum of each member's peak resident memory (VmHWM) over a process tree, in bytes."""
    try:
        root = psutil.Process(pid)
        pids = [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return 0
    return sum(_hwm(str(p)) for p in pids)


def _hwm(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _create_time(pid: int) -> float:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    pid, it identifies the process even after the pid is reused."""
    fields = _stat_fields(pid)
    return float(fields[19]) if len(fields) > 19 else 0.0


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.rpartition(")")[2].split()  # fields after the command name, from field 3


def process_alive(pid: int, create_time: float | None) -> bool:
    """Whether `pid` still is the process we started (guards against pid reuse)."""
    fields = _stat_fields(pid)
    if len(fields) < 20 or fields[0] == "Z":
        return False
    return not create_time or float(fields[19]) == create_time


def kill_orphan_group(pid: int, create_time: float | None) -> bool:
    """After a server crash: SIGKILL the process group a task left behind. True if one existed."""
    alive = process_alive(pid, create_time)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return alive
