"""Local executor: each attempt is `sh -c COMMAND` in its own session and process group.

The only module that starts processes, sends signals and uses psutil (and ctypes, for the CPU
a new task process starts on: see `_move_off_this_cpu`). A `ProcessMux` (one selector for any
number of attempts; the server runs all its local attempts through one, in one thread) drains
stdout and stderr as raw chunks (never blocking on a long line), watches each process through a
pidfd and its timeout (a kill signals the process group at once, from the killing thread), and
samples the memory of the whole process tree.

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

import contextlib
import ctypes
import fcntl
import math
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import psutil

try:
    import _posixsubprocess
except ImportError:  # not CPython: posix_spawn
    _posixsubprocess = None  # type: ignore[assignment]

from nagare.executors import Cancellation, LineSplitter, OnLine, OnStart
from nagare.models import Assignment, AttemptMetrics, ExecutorType, Outcome

KILL_GRACE_SECONDS = 0.5  # SIGTERM, then SIGKILL to the whole group after this long
DRAIN_SECONDS = 1.0  # after the shell exits, how long its output pipes may stay open
SAMPLE_SECONDS = 0.25  # memory sampling interval of the process tree
CHUNK = 65536
SHELL = "/bin/sh"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# the posix_spawn fallback sets these back to their defaults in a task: Python ignores SIGPIPE,
# the server handles SIGINT and SIGTERM (the C library's own signals 32 and 33 stay as
# posix_spawn sets them; programs set those themselves)
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)


@dataclass(eq=False)
class _Watch:
    """Mutable state of one running attempt."""

    pid: int
    started: float
    deadline: float | None
    splitters: dict[int, LineSplitter]
    pidfd: int = -1
    tag: object = None
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


class ProcessMux:
    """Watches any number of running attempts with one selector, in the thread that calls
    `poll`: their output, their exit (pidfd), their timeouts, kill escalation and memory
    samples. A server runs all its local attempts through one mux in one thread; `wake` (any
    thread) interrupts a `poll`."""

    def __init__(self, wakeable: bool = True) -> None:
        # poll(2): registering and dropping an attempt's three fds costs no system call (a
        # few dozen fds per poll are cheap; epoll would cost six epoll_ctl calls per attempt)
        self._poll = select.poll()
        self._fds: dict[int, tuple[_Watch, bool] | None] = {}  # fd -> (watch, is its pidfd)
        self._watches: set[_Watch] = set()
        self._exited: set[_Watch] = set()  # their shell ended; done once their pipes are
        # the earliest timer (memory sample, timeout, kill escalation, drain) of any watch: the
        # watches are scanned only when it is due or a kill asked for it, not on every poll
        self._timer_at = math.inf
        self._rescan = False
        self._wake_fd = -1
        if wakeable:
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._register(self._wake_fd, None)

    def __len__(self) -> int:
        return len(self._watches)

    def wake(self) -> None:
        if self._wake_fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake_fd, 1)

    def add(self, watch: _Watch) -> None:
        for fd in watch.open_fds:  # blocking pipes: a read after poll said so never waits
            self._register(fd, (watch, False))
        self._register(watch.pidfd, (watch, True))
        self._watches.add(watch)
        self._timer_at = min(self._timer_at, time.monotonic() + _wait_time(watch))

    def _register(self, fd: int, data: tuple[_Watch, bool] | None) -> None:
        self._poll.register(fd, select.POLLIN)
        self._fds[fd] = data

    def _unregister(self, fd: int) -> None:
        if fd in self._fds:
            del self._fds[fd]
            self._poll.unregister(fd)

    def rescan(self) -> None:
        """Any thread: a watch's timers changed (a kill); the next poll looks at every watch."""
        self._rescan = True
        self.wake()

    def poll(self, timeout: float | None) -> list[_Watch]:
        """Wait up to `timeout` (None: until something happens) and handle what happened;
        returns the attempts that ended (their groups are gone, pipes closed, not yet reaped)."""
        wait = self._timer_at - time.monotonic()
        if timeout is not None:
            wait = min(wait, timeout)
        milliseconds = math.ceil(max(0.0, wait) * 1000) if wait < math.inf else None
        for fd, _ in self._poll.poll(milliseconds):  # any event (data, hang-up) means: read
            if fd not in self._fds:
                continue
            data = self._fds[fd]
            if data is None:
                with contextlib.suppress(OSError):
                    os.eventfd_read(self._wake_fd)
                continue
            watch, exited = data
            if exited:
                watch.exited_at = time.monotonic()
                self._unregister(fd)
                self._exited.add(watch)
                self._timer_at = min(self._timer_at, watch.exited_at + DRAIN_SECONDS)
            else:
                self._read(fd, watch)
        if self._rescan or time.monotonic() >= self._timer_at:
            self._scan()
        ended = [watch for watch in self._exited if _done(watch)]
        for watch in ended:
            self._end(watch)
        return ended

    def _scan(self) -> None:
        """Fire the due timers of every watch (timeouts, kill escalation, memory samples)."""
        self._rescan = False
        now = time.monotonic()
        for watch in self._watches:
            _check_deadlines(watch)
            _sample(watch)
        self._timer_at = min((now + _wait_time(w) for w in self._watches), default=math.inf)

    def close(self) -> None:
        for watch in list(self._watches):
            self._end(watch)
        self._fds.clear()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def _read(self, fd: int, watch: _Watch) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            watch.splitters[fd].feed(chunk)
            return
        self._unregister(fd)
        watch.open_fds.discard(fd)
        watch.splitters[fd].close()

    def _end(self, watch: _Watch) -> None:
        """Kill whatever is left of the task's process group, close pipes and the pidfd."""
        self._watches.discard(watch)
        self._exited.discard(watch)
        for fd in [*watch.open_fds, watch.pidfd]:
            self._unregister(fd)
        _signal_group(watch, signal.SIGKILL)
        watch.finished = True
        for fd in list(watch.open_fds):
            watch.splitters[fd].close()
        watch.open_fds.clear()
        for fd in watch.splitters:
            os.close(fd)
        os.close(watch.pidfd)


class LocalExecutor:
    @property
    def executor_type(self) -> str:
        return ExecutorType.LOCAL

    def __init__(self, max_line_bytes: int = 65536) -> None:
        self.max_line_bytes = max_line_bytes
        self._hwm_cache = 0
        self._hwm_read_at = -10.0

    def run(
        self,
        assignment: Assignment,
        on_line: OnLine,
        cancel: Cancellation,
        on_start: OnStart | None = None,
    ) -> Outcome:
        """Run one attempt to its end in the calling thread."""
        mux = ProcessMux(wakeable=False)
        try:
            started = self.start(assignment, on_line, cancel, mux, on_start)
            if isinstance(started, Outcome):
                return started
            while not mux.poll(None):
                pass
            return self.outcome(started)
        finally:
            mux.close()

    def start(
        self,
        assignment: Assignment,
        on_line: OnLine,
        cancel: Cancellation,
        mux: ProcessMux,
        on_start: OnStart | None = None,
        tag: object = None,
    ) -> _Watch | Outcome:
        """Start an attempt watched by `mux` (its `poll` returns the watch when it ends; then
        call `outcome`); an Outcome at once when it cannot start."""
        if cancel.is_set:
            return Outcome(exit_code=None, cancelled=True, error=f"{cancel.reason} before start")
        spawned_at = boot_ticks()
        try:
            pid, stdout, stderr = _spawn(assignment.command, assignment.env)
        except (OSError, ValueError) as exc:
            return Outcome(exit_code=None, error=f"cannot start {SHELL}: {exc}")
        if on_start is not None:
            on_start(pid, spawned_at)
        watch = self._watch(pid, stdout, stderr, assignment, on_line)
        watch.tag = tag
        mux.add(watch)
        cancel.on_cancel(lambda: _cancel(watch, mux))
        return watch

    def _server_hwm(self) -> int:
        """The server's own peak RSS, re-read at most once a second (cheap on every start)."""
        now = time.monotonic()
        if now - self._hwm_read_at > 1.0:
            self._hwm_cache = _hwm("self")
            self._hwm_read_at = now
        return self._hwm_cache

    def _watch(
        self, pid: int, stdout: int, stderr: int, assignment: Assignment, on_line: OnLine
    ) -> _Watch:
        now = time.monotonic()
        splitters = {
            stdout: LineSplitter("stdout", on_line, self.max_line_bytes),
            stderr: LineSplitter("stderr", on_line, self.max_line_bytes),
        }
        deadline = now + assignment.timeout_seconds if assignment.timeout_seconds > 0 else None
        return _Watch(
            pid=pid,
            started=now,
            deadline=deadline,
            splitters=splitters,
            pidfd=os.pidfd_open(pid),
            next_sample=now + 0.02,
            open_fds=set(splitters),
            server_hwm=self._server_hwm(),
        )

    def outcome(self, watch: _Watch) -> Outcome:
        """Reap an ended attempt's shell; its exit code and metrics."""
        _, status, usage = os.wait4(watch.pid, 0)
        ended = watch.exited_at or time.monotonic()
        code = os.waitstatus_to_exitcode(status)
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


def _cancel(watch: _Watch, mux: ProcessMux) -> None:
    """Runs in the killing thread: SIGTERM the group now; the mux escalates to SIGKILL."""
    if not watch.finished:
        watch.cancelled = True
        _terminate(watch)
        mux.rescan()  # the kill escalates to SIGKILL after the grace period


def _done(watch: _Watch) -> bool:
    if watch.exited_at is None:
        return False
    return not watch.open_fds or time.monotonic() - watch.exited_at > DRAIN_SECONDS


def _wait_time(watch: _Watch) -> float:
    now = time.monotonic()
    waits = [watch.next_sample - now] if watch.exited_at is None else []
    if watch.deadline is not None and not watch.timed_out:
        waits.append(watch.deadline - now)
    if watch.kill_sent_at is not None and not watch.killed_hard:
        waits.append(watch.kill_sent_at + KILL_GRACE_SECONDS - now)
    if watch.exited_at is not None:
        waits.append(watch.exited_at + DRAIN_SECONDS - now)
    return max(0.0, min(waits))


def _check_deadlines(watch: _Watch) -> None:
    now = time.monotonic()
    if (
        watch.deadline is not None
        and not watch.timed_out
        and now >= watch.deadline
        and watch.exited_at is None
    ):
        watch.timed_out = True
        _terminate(watch)
    if (
        watch.kill_sent_at is not None
        and not watch.killed_hard
        and now >= watch.kill_sent_at + KILL_GRACE_SECONDS
    ):
        _signal_group(watch, signal.SIGKILL)
        watch.killed_hard = True


def _terminate(watch: _Watch) -> None:
    if watch.kill_sent_at is None:
        watch.kill_sent_at = time.monotonic()
        _signal_group(watch, signal.SIGTERM)


def _signal_group(watch: _Watch, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(watch.pid, sig)


def _sample(watch: _Watch) -> None:
    now = time.monotonic()
    if now < watch.next_sample or watch.exited_at is not None:
        return
    watch.next_sample = now + SAMPLE_SECONDS
    watch.peak_rss = max(watch.peak_rss, tree_rss(watch.pid))


def _spawn(command: str, env: dict[str, str]) -> tuple[int, int, int]:
    """Start `sh -c COMMAND` in a session and process group of its own, stdin from /dev/null:
    (pid, stdout read end, stderr read end). With vfork + exec, as `subprocess` does: the
    calling thread waits until the child has exec'd (on a busy machine most of a start's time),
    but other threads run meanwhile. Where that helper is missing, `posix_spawn`, which holds
    the interpreter for the whole wait."""
    out_read, out_write = _pipe()
    err_read, err_write = _pipe()
    try:
        if _VFORK_EXEC[0]:
            try:
                pid = _vfork_exec(command, env, out_write, err_write)
            except TypeError:  # another Python's signature: use posix_spawn from now on
                _VFORK_EXEC[0] = False
        if not _VFORK_EXEC[0]:
            pid = _posix_spawn(command, env, out_write, err_write)
    except BaseException:
        os.close(out_read)
        os.close(err_read)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    _move_off_this_cpu(pid)
    return pid, out_read, err_read


def _move_off_this_cpu(pid: int) -> None:
    """A new process starts on the CPU of the thread that started it, and the kernel is slow to
    move it elsewhere: the next start's vfork child then waits behind it (on 2 busy cores about
    as long as a whole `sh -c true`, while the other core may idle). So the new process is moved
    to the other CPUs at once, then given back the whole CPU set it inherited (it is still in its
    dynamic loader: the task never sees the narrower set). Skipped on one CPU; given up for good
    where the kernel refuses (a sandbox)."""
    if _CURRENT_CPU[0] is None:
        return
    cpu = _CURRENT_CPU[0]()
    allowed = os.sched_getaffinity(0)
    if cpu < 0 or len(allowed) < 2 or cpu not in allowed:
        return
    try:
        os.sched_setaffinity(pid, allowed - {cpu})
        os.sched_setaffinity(pid, allowed)
    except ProcessLookupError:  # it has already ended
        pass
    except OSError:
        _CURRENT_CPU[0] = None
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, allowed)


def _current_cpu_reader() -> Callable[[], int] | None:
    """The C library's `sched_getcpu` (the CPU the calling thread runs on), None without it."""
    try:
        return cast(Callable[[], int], ctypes.CDLL(None).sched_getcpu)
    except (OSError, AttributeError):
        return None


# `_posixsubprocess.fork_exec` is the helper `subprocess` starts processes with; its
# argument list is private and changed in Python 3.14 (one flag less)
_VFORK_EXEC = [_posixsubprocess is not None]
_SHELL_BYTES = os.fsencode(SHELL)
_DEVNULL = [-1]
_CURRENT_CPU = [_current_cpu_reader()]


def _vfork_exec(command: str, env: dict[str, str], stdout: int, stderr: int) -> int:
    """fork_exec (vfork where it can). The child gets the server's signal handlers and its
    ignored SIGPIPE and SIGXFSZ back at their defaults and the calling thread's signal mask
    (Nagare blocks none). Raises OSError when the shell cannot be executed."""
    assert _posixsubprocess is not None
    env_list = [os.fsencode(f"{key}={value}") for key, value in env.items()]
    argv = [_SHELL_BYTES, b"-c", os.fsencode(command)]
    errors_read, errors_write = _pipe()
    try:
        keep = (errors_write,)  # open in the child until its exec (close-on-exec) or its report
        args: tuple[object, ...] = (argv, [_SHELL_BYTES], True, keep, None, env_list)
        args += (_devnull(), -1, -1, stdout)
        args += (-1, stderr, errors_read, errors_write, True, True, -1, None, None, None, -1, None)
        fork_exec = cast(Callable[..., int], _posixsubprocess.fork_exec)
        pid = fork_exec(*args) if sys.version_info >= (3, 14) else fork_exec(*args, True)
    except BaseException:
        os.close(errors_read)
        raise
    finally:
        os.close(errors_write)
    try:
        failure = os.read(errors_read, 50_000)  # end of file once the exec succeeded
    finally:
        os.close(errors_read)
    if failure:
        os.waitpid(pid, 0)  # the child exited after reporting
        raise _exec_error(failure)
    return pid


def _exec_error(report: bytes) -> OSError:
    """The child's report (`<exception name>:<hex errno>:<detail>`) as an OSError."""
    try:
        name, code, detail = report.split(b":", 2)
        number = int(code, 16)
    except ValueError:
        return OSError(f"bad report from the new process: {report[:200]!r}")
    if number:
        return OSError(number, os.strerror(number), SHELL)
    return OSError(f"{name.decode(errors='replace')}: {detail.decode(errors='replace')}")


def _posix_spawn(command: str, env: dict[str, str], stdout: int, stderr: int) -> int:
    return os.posix_spawn(
        SHELL,
        [SHELL, "-c", command],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ],
        setsid=True,
        setsigdef=DEFAULT_SIGNALS,
        setsigmask=(),
    )


def _devnull() -> int:
    """/dev/null, opened once (close-on-exec, above the standard streams): every task's stdin."""
    if _DEVNULL[0] < 0:
        _DEVNULL[0] = _above_std_streams(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


def _pipe() -> tuple[int, int]:
    """A close-on-exec pipe whose ends are above the standard streams (a server started with
    a closed stdin/stdout must not hand a task a pipe end as fd 0, 1 or 2)."""
    read_end, write_end = os.pipe()
    return _above_std_streams(read_end), _above_std_streams(write_end)


def _above_std_streams(fd: int) -> int:
    """`fd`, or a close-on-exec copy of it numbered 3 or more (the original is closed)."""
    if fd >= 3:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


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


def boot_ticks() -> float:
    """Now, in clock ticks since boot: the unit of a process's start time (/proc/PID/stat field
    22). Read just before a start, it bounds the new process's start time from below without
    reading /proc (which is slow while the new process is still loading)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.rpartition(")")[2].split()  # fields after the command name, from field 3


def process_alive(pid: int, create_time: float | None) -> bool:
    """Whether `pid` still is the process we started (guards against pid reuse): its start
    time lies within a second after `create_time` (`boot_ticks()` read just before the start;
    a pid is not reused that fast)."""
    fields = _stat_fields(pid)
    if len(fields) < 20 or fields[0] == "Z":
        return False
    started = float(fields[19])
    return not create_time or create_time - 1 <= started <= create_time + CLOCK_TICKS


def kill_orphan_group(pid: int, create_time: float | None) -> bool:
    """After a server crash: SIGKILL the process group a task left behind. True if one existed."""
    alive = process_alive(pid, create_time)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    return alive
