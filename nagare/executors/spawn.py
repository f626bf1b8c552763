"""Starting and signalling task processes: the only module that starts processes (through the
vfork + exec helper that `subprocess` uses, else `posix_spawn`) and sends them signals.

Each task is `sh -c COMMAND` in a session and process group of its own, stdin from /dev/null,
stdout and stderr on pipes, only fds 0-2 open, default signal dispositions, no blocked signals.
A new process is moved off the CPU of the thread that started it (see `Spawner._hand_off`).

Task processes die with the process that supervises them: a `Guardian` (a small Python process in
a session of its own, started at the first task start) holds the list of running task groups and
SIGKILLs them all when its pipe from this process reaches end-of-file — which the kernel makes
happen however this process ends, `kill -9` included.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

try:
    import _posixsubprocess
except ImportError:  # not CPython: posix_spawn
    _posixsubprocess = None  # type: ignore[assignment]

from nagare.executors.procfs import process_alive

SHELL = "/bin/sh"
# the posix_spawn fallback sets these back to their defaults in a task: Python ignores SIGPIPE,
# the server handles SIGINT and SIGTERM (the C library's own signals 32 and 33 stay as
# posix_spawn sets them; programs set those themselves)
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM)
ForkExec = Callable[..., int]
PR_SET_DUMPABLE = 4
log = logging.getLogger(__name__)

# The guardian: reads `+PGID` / `-PGID` lines from stdin; at end-of-file (the process that
# started it ended, however) it SIGKILLs every group still registered and exits. It imports
# only os, signal and sys (it runs with -I -S: no site, no environment), so it works whether
# Nagare runs from a checkout or from nagare.pyz, and costs a few MB.
GUARDIAN_CODE = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
rest = b""
while True:
    try:
        data = os.read(0, 65536)
    except InterruptedError:
        continue
    except OSError:
        data = b""
    if not data:
        break
    *lines, rest = (rest + data).split(b"\\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


@dataclass(frozen=True)
class RunAs:
    """The user a task runs as: ids, supplementary groups and the variables that name it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup_user(name: str) -> RunAs:
    """`name`'s passwd entry and groups. Raises ValueError with a message for the task log."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"run_as: there is no user '{name}' on this host") from None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def run_as_problem(user: RunAs, server_uid: int) -> str:
    """Why this server cannot start a task as `user` ("" when it can): changing user needs
    root; naming the server's own user needs nothing."""
    if server_uid == 0 or user.uid == server_uid:
        return ""
    return f"run_as needs the server to run as root (it runs as uid {server_uid})"


def user_env(env: dict[str, str], user: RunAs) -> dict[str, str]:
    """The task's environment with HOME, USER and LOGNAME of the user it runs as."""
    return {**env, "HOME": user.home, "USER": user.name, "LOGNAME": user.name}


def set_not_dumpable() -> bool:
    """prctl(PR_SET_DUMPABLE, 0): other processes of the same user (tasks included) can no
    longer read this process's /proc files (its environment, its memory) nor ptrace it; it
    still reads its own. Tasks are dumpable again (exec resets it). Linux only: False where it
    does not apply."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class Guardian:
    """The process that kills the task groups of this process when it ends (see the module
    docstring). Started lazily; one small write per task start and per attempt end. Used only
    by the thread that owns the Spawner."""

    def __init__(self) -> None:
        self.pid = 0
        self._write = -1
        self._groups: set[int] = set()
        self._failed = False

    def start(self) -> None:
        """Started before the first task (so no task runs while no guardian exists)."""
        if self._write < 0:
            self._send(b"")

    def add(self, group: int) -> None:
        self._groups.add(group)
        self._send(f"+{group}\n".encode())

    def remove(self, group: int) -> None:
        if group in self._groups:
            self._groups.discard(group)
            self._send(f"-{group}\n".encode())

    def _send(self, message: bytes) -> None:
        """Write; a guardian that died (EPIPE) is replaced and told every live group again."""
        for _ in range(2):
            if self._write < 0:
                if not self._start():
                    return
                message = b"".join(f"+{g}\n".encode() for g in sorted(self._groups))
                if not message:
                    return
            try:
                os.write(self._write, message)
                return
            except OSError:  # BrokenPipeError: it died; start another one
                self._discard()

    def _start(self) -> bool:
        """Start a guardian; a failure is logged once and tasks run unguarded (never fatal)."""
        if self._failed:
            return False
        read_end, write_end = _pipe()
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-c", GUARDIAN_CODE],
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                ],
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
                setsigmask=(),
            )
        except OSError as exc:
            os.close(write_end)
            self._failed = True
            log.warning(
                "cannot start the guardian process (%s): task processes will outlive a crash "
                "of this process",
                exc,
            )
            return False
        finally:
            os.close(read_end)
        self._write = write_end
        return True

    def _discard(self) -> None:
        os.close(self._write)
        self._write = -1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)  # it has closed its stdin: it is ending

    def close(self) -> None:
        """End-of-file for the guardian: it kills what is still registered and exits; reaped."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self._groups.clear()


class Spawner:
    """Starts task processes. Its state is its own: which start method works here (decided at
    the first start and kept), whether the CPU hand-off works, and /dev/null opened once."""

    def __init__(
        self,
        shell: str = SHELL,
        fork_exec: ForkExec | None = None,
        current_cpu: Callable[[], int] | None = None,
    ) -> None:
        self.shell = shell
        self._shell_bytes = os.fsencode(shell)
        default_fork_exec = getattr(_posixsubprocess, "fork_exec", None)
        self._fork_exec: ForkExec | None = fork_exec or default_fork_exec
        self._current_cpu = current_cpu or _current_cpu_reader()
        self._devnull = -1
        self.guardian = Guardian()

    @property
    def uses_vfork(self) -> bool:
        return self._fork_exec is not None

    @property
    def hands_off_cpu(self) -> bool:
        return self._current_cpu is not None

    def spawn(
        self, command: str, env: dict[str, str], user: RunAs | None = None
    ) -> tuple[int, int, int]:
        """Start `sh -c COMMAND` (as `user`, when given: the caller checked `run_as_problem`):
        (pid, stdout read end, stderr read end). With vfork + exec, the calling thread waits
        until the child has exec'd (on a busy machine most of a start's time) but other threads
        run meanwhile; `posix_spawn` holds the interpreter for the whole wait (and cannot change
        user: a `user` there is a ValueError). Raises OSError (or ValueError) when the shell
        cannot be started. The new group is registered with the guardian; `release` it once its
        attempt ended."""
        self.guardian.start()
        out_read, out_write = _pipe()
        err_read, err_write = _pipe()
        try:
            pid = self._start(command, env, out_write, err_write, user)
        except BaseException:
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            os.close(out_write)
            os.close(err_write)
        self.guardian.add(pid)
        self._hand_off(pid)
        return pid, out_read, err_read

    def release(self, pid: int) -> None:
        """The attempt of the group `pid` leads ended (its group was killed): unregister it."""
        self.guardian.remove(pid)

    def _start(
        self, command: str, env: dict[str, str], stdout: int, stderr: int, user: RunAs | None
    ) -> int:
        if self._fork_exec is not None:
            try:
                return self._vfork_exec(command, env, stdout, stderr, user)
            except TypeError:  # another Python's private signature: posix_spawn from now on
                self._fork_exec = None
        if user is not None:
            raise ValueError("run_as is not available with this Python (no fork_exec helper)")
        return self._posix_spawn(command, env, stdout, stderr)

    def _hand_off(self, pid: int) -> None:
        """A new process starts on the CPU of the thread that started it, and the kernel is slow
        to move it elsewhere: the next start's vfork child then waits behind it (on 2 busy cores
        about as long as a whole `sh -c true`, while the other core may idle). So the new
        process is moved to the other CPUs at once, then given back the whole CPU set it
        inherited (it is still in its dynamic loader: the task never sees the narrower set).
        Skipped on one CPU; given up for good where the kernel refuses (a sandbox)."""
        if self._current_cpu is None:
            return
        cpu = self._current_cpu()
        allowed = os.sched_getaffinity(0)
        if cpu < 0 or len(allowed) < 2 or cpu not in allowed:
            return
        try:
            os.sched_setaffinity(pid, allowed - {cpu})
            os.sched_setaffinity(pid, allowed)
        except ProcessLookupError:  # it has already ended
            pass
        except OSError:
            self._current_cpu = None
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, allowed)

    def _vfork_exec(
        self, command: str, env: dict[str, str], stdout: int, stderr: int, user: RunAs | None
    ) -> int:
        """`_posixsubprocess.fork_exec` (vfork where it can; its argument list is private and
        changed in Python 3.14, one flag less). The child gets the server's signal handlers and
        its ignored SIGPIPE and SIGXFSZ back at their defaults and the calling thread's signal
        mask (Nagare blocks none). With a `user`, the child sets its groups, gid and uid before
        the exec (CPython then forks instead of vforking, for those tasks only). Raises OSError
        when the shell cannot be executed."""
        assert self._fork_exec is not None
        env_list = [os.fsencode(f"{key}={value}") for key, value in env.items()]
        argv = [self._shell_bytes, b"-c", os.fsencode(command)]
        errors_read, errors_write = _pipe()
        try:
            keep = (errors_write,)  # open in the child until its exec (close-on-exec) or report
            args: tuple[Any, ...] = (argv, [self._shell_bytes], True, keep, None, env_list)
            args += (self._stdin(), -1, -1, stdout)
            args += (-1, stderr, errors_read, errors_write, True, True, -1)
            if user is None:
                args += (None, None, None)
            else:
                args += (user.gid, list(user.groups), user.uid)
            args += (-1, None)
            fork_exec = self._fork_exec
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
            raise self._exec_error(failure)
        return pid

    def _exec_error(self, report: bytes) -> OSError:
        """The child's report (`<exception name>:<hex errno>:<detail>`) as an OSError."""
        try:
            name, code, detail = report.split(b":", 2)
            number = int(code, 16)
        except ValueError:
            return OSError(f"bad report from the new process: {report[:200]!r}")
        if number:
            return OSError(number, os.strerror(number), self.shell)
        return OSError(f"{name.decode(errors='replace')}: {detail.decode(errors='replace')}")

    def _posix_spawn(self, command: str, env: dict[str, str], stdout: int, stderr: int) -> int:
        return os.posix_spawn(
            self.shell,
            [self.shell, "-c", command],
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

    def _stdin(self) -> int:
        """/dev/null, opened once (close-on-exec, above the standard streams): every stdin."""
        if self._devnull < 0:
            self._devnull = _above_std_streams(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        return self._devnull

    def close(self) -> None:
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        self.guardian.close()


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group a task leads (gone or not ours: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_orphan_group(pid: int, create_time: float | None) -> bool:
    """After a server crash: SIGKILL the process group a task left behind (only if `pid` still
    is the process that was started, see `process_alive`). True if one existed."""
    alive = process_alive(pid, create_time)
    if alive:
        signal_group(pid, signal.SIGKILL)
    return alive


def _current_cpu_reader() -> Callable[[], int] | None:
    """The C library's `sched_getcpu` (the CPU the calling thread runs on), None without it."""
    try:
        return cast(Callable[[], int], ctypes.CDLL(None).sched_getcpu)
    except (OSError, AttributeError):
        return None


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


@dataclass(frozen=True)
class CommandResult:
    """What `run_command` saw: the exit code (-1 when it could not start or timed out) and
    stdout and stderr together, decoded."""

    exit_code: int
    output: str
    timed_out: bool = False


def run_command(
    argv: list[str], env: dict[str, str], cwd: str | None = None, timeout: float = 60.0
) -> CommandResult:
    """Run a short helper command (the `git` client of git sync) to its end and capture its
    output: in a session of its own, stdin from /dev/null, killed with its group after
    `timeout` seconds. Blocking: call it from a background loop, never the reactor."""
    import subprocess

    try:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(-1, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        text = out.decode("utf-8", "replace")
        return CommandResult(-1, text + f"\n{argv[0]} timed out after {timeout:g} s", True)
    return CommandResult(process.returncode, out.decode("utf-8", "replace"))
