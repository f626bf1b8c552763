"""Local executor: each attempt is `sh -c COMMAND` in its own session and process group, watched
by the `Reactor` of the thread that owns the executor (the server's dispatcher, a worker's task
loop): one thread runs any number of local attempts.

Each running attempt is a `_Process`, touched only in that thread: its stdout and stderr are
read as raw chunks (a 10 MB line never blocks it) and split into lines, its exit comes through a
pidfd, and its timers (timeout, kill escalation, memory samples, output drain) are reactor
timers. `cancel` may come from any thread: it is posted to the owning thread, which signals the
process group (SIGTERM, then SIGKILL after a grace period). Processes are started by
`executors/spawn.py`; /proc is read by `executors/procfs.py`.

Metrics: CPU user/system time is the kernel's accounting of the waited shell and every descendant
it waited for (wait4 rusage). Peak memory is the highest sum, over the samples (after 20 ms, then
every 250 ms), of each tree member's own peak (VmHWM), so a child's peak between two samples is
still seen; a process that starts and ends between two samples (or a task shorter than 20 ms) is
only seen through wait4's ru_maxrss, which the kernel also charges with the server's own size at
spawn time, so that figure counts only when it exceeds the server's peak at spawn time (then it
must come from the task); otherwise such a task reports 0. Nothing reads /proc at a task's start:
a new process's /proc files are slow to read while it is still loading.
"""

from __future__ import annotations

import os
import signal
import time

from nagare.executors import AttemptHandle, AttemptListener, LineSplitter, not_started
from nagare.executors.procfs import boot_ticks, peak_rss, tree_rss
from nagare.executors.reactor import Reactor, Timer
from nagare.executors.spawn import (
    Spawner,
    lookup_user,
    run_as_problem,
    signal_group,
    user_env,
)
from nagare.models import Assignment, AttemptMetrics, ExecutorType, Outcome

KILL_GRACE_SECONDS = 0.5  # SIGTERM, then SIGKILL to the whole group after this long
DRAIN_SECONDS = 1.0  # after the shell exits, how long its output pipes may stay open
FIRST_SAMPLE_SECONDS = 0.02
SAMPLE_SECONDS = 0.25  # memory sampling interval of the process tree
CHUNK = 65536


class LocalExecutor:
    """Runs attempts as local processes in the thread that owns `reactor` (`start` must be
    called there; `ended` is reported there)."""

    def __init__(
        self, reactor: Reactor, max_line_bytes: int = 65536, spawner: Spawner | None = None
    ) -> None:
        self.reactor = reactor
        self.max_line_bytes = max_line_bytes
        self.spawner = spawner or Spawner()
        self._hwm_cache = 0
        self._hwm_read_at = -10.0
        self._running: set[_Process] = set()

    @property
    def executor_type(self) -> str:
        return ExecutorType.LOCAL

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        env, user = assignment.env, None
        if assignment.run_as:
            try:
                user = lookup_user(assignment.run_as)
            except ValueError as exc:
                return not_started(self.reactor, listener, Outcome(exit_code=None, error=str(exc)))
            problem = run_as_problem(user, os.geteuid())
            if problem:
                return not_started(self.reactor, listener, Outcome(exit_code=None, error=problem))
            env = user_env(env, user)
        spawned_at = boot_ticks()
        try:
            pid, stdout, stderr = self.spawner.spawn(assignment.command, env, user)
        except (OSError, ValueError) as exc:
            outcome = Outcome(exit_code=None, error=f"cannot start {self.spawner.shell}: {exc}")
            return not_started(self.reactor, listener, outcome)
        listener.started(pid, spawned_at)
        process = _Process(self, pid, stdout, stderr, assignment.timeout_seconds, listener)
        self._running.add(process)
        return process

    def _server_hwm(self) -> int:
        """The server's own peak RSS, re-read at most once a second (cheap on every start)."""
        now = time.monotonic()
        if now - self._hwm_read_at > 1.0:
            self._hwm_cache = peak_rss("self")
            self._hwm_read_at = now
        return self._hwm_cache

    def _forget(self, process: _Process) -> None:
        self._running.discard(process)

    def close(self) -> None:
        """Kill and reap whatever still runs (the owning thread is stopping)."""
        for process in list(self._running):
            process.abandon()
        self.spawner.close()


class _Process:
    """One running local attempt. Only the reactor's thread touches its state; `cancel` posts."""

    def __init__(
        self,
        executor: LocalExecutor,
        pid: int,
        stdout: int,
        stderr: int,
        timeout: float,
        listener: AttemptListener,
    ) -> None:
        self.executor = executor
        self.reactor = executor.reactor
        self.pid = pid
        self.listener = listener
        self.pidfd = os.pidfd_open(pid)
        self.started = time.monotonic()
        max_bytes = executor.max_line_bytes
        self.splitters = {
            stdout: LineSplitter("stdout", listener.line, max_bytes),
            stderr: LineSplitter("stderr", listener.line, max_bytes),
        }
        self.open_fds = {stdout, stderr}
        self.server_hwm = executor._server_hwm()
        self.exited_at: float | None = None
        self.killing = False
        self.timed_out = False
        self.cancelled = False
        self.finished = False
        self.peak_rss = 0
        self.timers: list[Timer] = []
        for fd in self.open_fds:  # blocking pipes: a read after poll said so never waits
            self.reactor.add_reader(fd, self._read)
        self.reactor.add_reader(self.pidfd, self._exited)
        self._sample_timer = self.reactor.call_at(self.started + FIRST_SAMPLE_SECONDS, self._sample)
        if timeout > 0:
            self.timers.append(self.reactor.call_at(self.started + timeout, self._time_out))

    # ------------------------------------------------------------ the handle (any thread)

    def cancel(self, reason: str = "killed") -> None:
        """Kill the whole process group: posted to the thread that owns the process."""
        self.reactor.post(self._kill)

    # ------------------------------------------------------------ the owning thread

    def _kill(self) -> None:
        if not self.finished:
            self.cancelled = True
            self._terminate()

    def _time_out(self) -> None:
        if self.exited_at is None and not self.cancelled:  # a kill that came first stays one
            self.timed_out = True
            self._terminate()

    def _terminate(self) -> None:
        """SIGTERM the group now, SIGKILL after the grace period."""
        if not self.killing:
            self.killing = True
            signal_group(self.pid, signal.SIGTERM)
            self.timers.append(self.reactor.call_later(KILL_GRACE_SECONDS, self._escalate))

    def _escalate(self) -> None:
        if not self.finished:
            signal_group(self.pid, signal.SIGKILL)

    def _sample(self) -> None:
        if self.exited_at is None and not self.finished:
            self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
            self._sample_timer = self.reactor.call_later(SAMPLE_SECONDS, self._sample)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.splitters[fd].feed(chunk)
            return
        self.reactor.remove_reader(fd)
        self.open_fds.discard(fd)
        self.splitters[fd].close()
        if self.exited_at is not None and not self.open_fds:
            self._end()

    def _exited(self, fd: int) -> None:
        """The shell exited: the attempt ends when its pipes close, or a drain period later
        (a background child may hold them open)."""
        self.exited_at = time.monotonic()
        self.reactor.remove_reader(self.pidfd)
        self._sample_timer.cancel()
        if self.open_fds:
            self.timers.append(self.reactor.call_later(DRAIN_SECONDS, self._end))
        else:
            self._end()

    def _end(self) -> None:
        """Kill whatever is left of the group, close everything, reap the shell, report."""
        if self.finished:
            return
        self._release()
        self.listener.ended(self._outcome())

    def _release(self) -> None:
        self.finished = True
        self.executor._forget(self)
        self._sample_timer.cancel()
        for timer in self.timers:
            timer.cancel()
        for fd in [*self.open_fds, self.pidfd]:
            self.reactor.remove_reader(fd)
        signal_group(self.pid, signal.SIGKILL)
        self.executor.spawner.release(self.pid)
        for fd in list(self.open_fds):
            self.splitters[fd].close()
        self.open_fds.clear()
        for fd in self.splitters:
            os.close(fd)
        os.close(self.pidfd)

    def abandon(self) -> None:
        """The owning thread stops: kill and reap without reporting."""
        if not self.finished:
            self._release()
            os.waitpid(self.pid, 0)

    def _outcome(self) -> Outcome:
        """Reap the shell: its exit code and metrics."""
        _, status, usage = os.wait4(self.pid, 0)
        ended = self.exited_at or time.monotonic()
        code = os.waitstatus_to_exitcode(status)
        exit_code = 128 - code if code < 0 else code
        metrics = AttemptMetrics(
            duration_ms=int((ended - self.started) * 1000),
            cpu_user_ms=int(usage.ru_utime * 1000),
            cpu_system_ms=int(usage.ru_stime * 1000),
            peak_memory_bytes=self._peak(usage.ru_maxrss * 1024),
            exit_code=exit_code,
            executor_type=ExecutorType.LOCAL,
        )
        return Outcome(
            exit_code=exit_code,
            timed_out=self.timed_out,
            cancelled=self.cancelled and not self.timed_out,
            error="timed out" if self.timed_out else "",
            metrics=metrics,
        )

    def _peak(self, maxrss: int) -> int:
        if maxrss > self.server_hwm * 1.05:
            return max(maxrss, self.peak_rss)
        return self.peak_rss
