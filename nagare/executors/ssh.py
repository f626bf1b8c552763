"""The `ssh` step: the task's command runs on another machine through the system's OpenSSH
client, which the local executor runs like any local task.

`SshExecutor.start` turns the assignment into one shell line, `exec /usr/bin/ssh -tt ... --
HOST 'REMOTE'` (every part quoted), and hands it to the executor it wraps (the local one).
So output streams live, `timeout_seconds` and kill signal the local `ssh` process group, the
metrics are those of the ssh client, and a crashed server's leftover is found by its pid like
any local task. Nothing here starts a process itself.

What the remote side gets and guarantees:

- `-tt` forces a pseudo-terminal: when the local client ends (it is killed, times out, or loses
  the connection) sshd closes the terminal and the kernel sends SIGHUP to the remote command's
  process group, which ends every process of it that does not ignore SIGHUP. A side effect: the
  remote stderr is merged into the remote stdout (both arrive as stdout), and lines end in CRLF
  (the CR is trimmed). The terminal type is `dumb` unless the task sets TERM.
- REMOTE is `export NAME='value' ...; exec /bin/sh -c 'COMMAND' </dev/null` run by the remote
  user's login shell (which must understand that POSIX line): the task's own variables
  (Nagare's NAGARE_*, the DAG's and task's `env`, run parameters, upstream outputs and the
  task's secrets) are exported; the server's own environment never is. `$NAGARE_OUTPUT` is a
  local file, so it is not sent: an ssh task publishes its stdout through `output: NAME`.
- Host keys are checked strictly (`StrictHostKeyChecking=yes`, `BatchMode=yes`: never a
  prompt); the client exits 255 on its own failures, and the last lines it wrote to stderr
  become a clear `Outcome.error` (host key mismatch, unknown host key, connection refused,
  authentication refused, ...). Otherwise the exit code is the remote command's.

The decisions (fields, exported variables, the command line, messages) are pure functions.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nagare.engine.secrets import mask
from nagare.engine.steps_env import expand_env
from nagare.executors import AttemptHandle, AttemptListener, Executor, not_started
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, Outcome, TaskType
from nagare.patterns import ENV_NAME

SSH_FAILED = 255  # the OpenSSH client's exit code when it fails itself
CONNECT_TIMEOUT_SECONDS = 15  # TCP connect plus the SSH handshake
ALIVE_INTERVAL_SECONDS = 15  # keepalives: a dead connection ends the attempt after 3 missed
ALIVE_COUNT_MAX = 3
# The local shell line travels as one argument (of `sh -c`, then of `ssh`): Linux caps one
# argument at 128 KiB, so the line stays below that; variables that do not fit are not sent.
MAX_LINE_BYTES = 120 * 1024
STDERR_TAIL_LINES = 20  # of the client's stderr, kept to explain an exit code 255
MAX_TAIL_CHARS = 500
REMOTE_SHELL = "/bin/sh"
LOCAL_ONLY = frozenset({"NAGARE_OUTPUT"})  # never sent: a path on this host
# What the client always gets: no prompt, strict host keys, no multiplexing or forwarding
# from the user's ssh_config that would change when the remote command ends.
FIXED_OPTIONS = (
    "BatchMode=yes",
    "StrictHostKeyChecking=yes",
    "UpdateHostKeys=no",
    "ControlMaster=no",
    "ControlPath=none",
    "ClearAllForwardings=yes",
    "ForwardAgent=no",
    "ForwardX11=no",
    "PermitLocalCommand=no",
    "RemoteCommand=none",
    "LogLevel=ERROR",
    f"ConnectTimeout={CONNECT_TIMEOUT_SECONDS}",
    f"ServerAliveInterval={ALIVE_INTERVAL_SECONDS}",
    f"ServerAliveCountMax={ALIVE_COUNT_MAX}",
)
_HOST = re.compile(r"[A-Za-z0-9_.:%\[\]-]+")
_USER = re.compile(r"[A-Za-z0-9_.@\\$-]+")


class SshFieldError(ValueError):
    """A step field that cannot be used (after templates and `${NAME}` references)."""


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom the command runs, as the step's fields say."""

    host: str
    user: str = ""
    port: int | None = None
    identity_file: str = ""
    known_hosts: str = ""

    @property
    def where(self) -> str:
        """`user@host port N`, as messages name it."""
        at = f"{self.user}@{self.host}" if self.user else self.host
        return f"{at} port {self.port or 22}"


# ---------------------------------------------------------------- pure decisions


def ssh_target(step: Mapping[str, Any], env: Mapping[str, str]) -> SshTarget:
    """The target of a step (`${NAME}` references expanded); raises SshFieldError."""
    host = _field(step, "host", env)
    user = _field(step, "user", env)
    if not host:
        raise SshFieldError("'host' is empty (the machine to run the command on)")
    if "@" in host:
        raise SshFieldError(f"host: '{host}' holds a user: give it in 'user' instead")
    if host.startswith("-") or not _HOST.fullmatch(host):
        raise SshFieldError(f"host: '{host}' is not a host name or address")
    if user and (user.startswith("-") or not _USER.fullmatch(user)):
        raise SshFieldError(f"user: '{user}' is not a user name")
    known_hosts = _field(step, "known_hosts", env)
    if '"' in known_hosts:
        raise SshFieldError(f"known_hosts: ssh cannot take a path with '\"' ({known_hosts})")
    return SshTarget(
        host=host,
        user=user,
        port=_port(step.get("port"), env),
        identity_file=_field(step, "identity_file", env),
        known_hosts=known_hosts,
    )


def _field(step: Mapping[str, Any], key: str, env: Mapping[str, str]) -> str:
    return expand_env(str(step.get(key) or ""), env).strip()


def _port(value: Any, env: Mapping[str, str]) -> int | None:
    """A port from the step: a number, or a text (a template or `${NAME}`) that holds one."""
    if value is None or value == "":
        return None
    text = expand_env(str(value), env).strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise SshFieldError(f"port: expected a port number 1-65535, found '{text}'")
    return int(text)


def remote_env(
    env: Mapping[str, str], host_env: Mapping[str, str], secrets: Sequence[str]
) -> dict[str, str]:
    """The variables sent to the remote host: the task's own, i.e. those the executing host's
    environment (`host_env`) does not hold with the same value, Nagare's NAGARE_* and the
    secrets; never a local path ($NAGARE_OUTPUT) or a name a shell cannot export."""
    secret_values = set(secrets)
    return {
        name: value
        for name, value in env.items()
        if name not in LOCAL_ONLY
        and ENV_NAME.fullmatch(name)
        and (name.startswith("NAGARE_") or host_env.get(name) != value or value in secret_values)
    }


def remote_line(command: str, exports: Mapping[str, str]) -> str:
    """What the remote login shell runs: the exports, then the command under `/bin/sh -c` with
    its stdin from /dev/null, as a local task's (the terminal would never give it an EOF)."""
    run = f"exec {REMOTE_SHELL} -c {shlex.quote(command)} </dev/null"
    if not exports:
        return run
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in exports.items())
    return f"export {assignments}; {run}"


def ssh_argv(client: str, target: SshTarget, remote: str) -> list[str]:
    """The client's arguments: a forced terminal, the fixed options, the target's own."""
    argv = [client, "-tt", "-e", "none"]
    for option in FIXED_OPTIONS:
        argv += ["-o", option]
    if target.known_hosts:  # (the option takes a list of files: quoted, a path is one)
        argv += ["-o", f'UserKnownHostsFile="{target.known_hosts}"']
    if target.identity_file:
        argv += ["-i", target.identity_file, "-o", "IdentitiesOnly=yes"]
    if target.port:
        argv += ["-p", str(target.port)]
    if target.user:
        argv += ["-l", target.user]
    return [*argv, "--", target.host, remote]


def ssh_line(
    client: str, target: SshTarget, command: str, exports: Mapping[str, str]
) -> tuple[str, list[str]]:
    """The local shell line, and the names of the variables left out (largest first) because
    the line would be longer than MAX_LINE_BYTES: the smallest are kept first. Raises
    SshFieldError when the command alone is too long."""
    bare = _shell_line(client, target, command, {})
    size = len(bare.encode())
    if size > MAX_LINE_BYTES:
        raise SshFieldError(
            f"the command is {size} bytes once quoted for ssh; at most {MAX_LINE_BYTES} fit on "
            "the ssh command line (copy a script to the host and run that)"
        )
    budget = MAX_LINE_BYTES - size - len("export ; ")
    fitting: set[str] = set()
    for name in sorted(exports, key=lambda n: (len(exports[n]), n)):
        cost = _export_bytes(name, exports[name])
        if cost <= budget:
            fitting.add(name)
            budget -= cost
    kept = {name: value for name, value in exports.items() if name in fitting}
    dropped = sorted(set(exports) - fitting, key=lambda n: (-len(exports[n]), n))
    return _shell_line(client, target, command, kept), dropped


def _shell_line(client: str, target: SshTarget, command: str, exports: Mapping[str, str]) -> str:
    return "exec " + shlex.join(ssh_argv(client, target, remote_line(command, exports)))


def _export_bytes(name: str, value: str) -> int:
    """What ` NAME='value'` adds to the local line: quoted once for the remote shell, then
    again inside the quoted remote line (where each `'` becomes five characters)."""
    fragment = f"{name}={shlex.quote(value)}"
    return len(fragment.encode()) + 4 * fragment.count("'") + 1


def failure_message(tail: Sequence[str], target: SshTarget) -> str:
    """Why the client exited with 255, from the last lines it wrote to stderr."""
    text = "\n".join(tail).lower()
    known = target.known_hosts or "~/.ssh/known_hosts"
    for needles, message in _failures(target, known):
        if any(needle in text for needle in needles):
            return f"ssh: {message}"
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    if last:
        return f"ssh to {target.where} failed (exit code 255): {last}"
    return (
        f"exit code 255 from ssh to {target.where}: the ssh client failed without a message, "
        "or the remote command itself exited with 255"
    )


def _failures(target: SshTarget, known: str) -> list[tuple[tuple[str, ...], str]]:
    """(lowercase needles, message): the first whose needle is in the stderr tail wins."""
    key = f" with the key {target.identity_file}" if target.identity_file else ""
    user = f"user '{target.user}'" if target.user else "the local user's name"
    return [
        (
            ("remote host identification has changed", "host key for"),
            f"the host key of {target.where} does not match the one in {known}; the host was "
            "reinstalled, or the connection is intercepted (update the known_hosts line only "
            "if the change is expected)",
        ),
        (
            ("host key is known", "host key verification failed"),
            f"the host key of {target.where} is not in {known} (strict host key checking: add "
            f"the host's key line, '[{target.host}]:{target.port or 22} ssh-ed25519 AAAA...')",
        ),
        (("connection refused",), f"connection refused by {target.where} (no SSH server there)"),
        (
            ("could not resolve hostname", "name or service not known"),
            f"cannot resolve the host name '{target.host}'",
        ),
        (
            ("connection timed out", "operation timed out"),
            f"no answer from {target.where} within {CONNECT_TIMEOUT_SECONDS}s (connect timeout)",
        ),
        (
            ("no route to host", "network is unreachable"),
            f"{target.where} is unreachable (no route to it)",
        ),
        (
            ("unprotected private key file", "bad permissions"),
            f"the key {target.identity_file or '(default)'} can be read by other users, so "
            "ssh ignores it (chmod 600 it)",
        ),
        (
            ("load key",),
            f"cannot load the key {target.identity_file or '(default)'} (not a private key "
            "ssh can read, or one with a passphrase)",
        ),
        (
            ("permission denied", "too many authentication failures"),
            f"authentication refused: {target.where} did not accept {user}{key}",
        ),
        (
            ("not responding", "broken pipe", "connection reset", "connection closed"),
            f"the connection to {target.where} was lost",
        ),
    ]


def explained(outcome: Outcome, tail: Sequence[str], target: SshTarget) -> Outcome:
    """The outcome with the client's own failure explained (exit code 255, not a kill)."""
    if outcome.exit_code != SSH_FAILED or outcome.timed_out or outcome.cancelled or outcome.error:
        return outcome
    return replace(outcome, error=failure_message(tail, target))


def missing_file(target: SshTarget, home: str) -> str:
    """A message when the identity or known_hosts file does not exist on this host ("" when
    they do); `home` expands a leading `~/` (without it, such a path, like one with ssh's `%`
    tokens, is left to the client)."""
    for field, path in (
        ("identity_file", target.identity_file),
        ("known_hosts", target.known_hosts),
    ):
        if not path or "%" in path or (path.startswith("~") and not (home and path[:2] == "~/")):
            continue
        local = home + path[1:] if path.startswith("~/") else path
        if not os.path.isfile(local):
            return f"{field}: no file {path} on this host"
    return ""


# ---------------------------------------------------------------- the executor


class SshExecutor:
    """Runs `type: ssh` attempts through `local` (an executor of local processes); `host_env`
    is the environment the executing host gives its local tasks (never sent)."""

    def __init__(self, reactor: Reactor, local: Executor, host_env: Mapping[str, str]) -> None:
        self.reactor = reactor
        self.local = local
        self.host_env = dict(host_env)

    @property
    def executor_type(self) -> str:
        return TaskType.SSH

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        env = assignment.env
        try:
            target = ssh_target(assignment.step, env)
            client = shutil.which("ssh", path=env.get("PATH") or os.defpath)
            if client is None:
                raise SshFieldError("the OpenSSH client (ssh) is not installed on this host")
            home = "" if assignment.run_as else env.get("HOME", "")  # run_as: another home
            problem = missing_file(target, home)
            if problem:
                raise SshFieldError(problem)
            exports = remote_env(env, self.host_env, assignment.secrets)
            line, dropped = ssh_line(client, target, assignment.command, exports)
        except SshFieldError as exc:
            outcome = Outcome(exit_code=None, error=mask(str(exc), assignment.secrets))
            return not_started(self.reactor, listener, outcome)
        local_env = dict(env) if "TERM" in exports else {**env, "TERM": "dumb"}
        runnable = replace(
            assignment, command=line, env=local_env, step_type=TaskType.COMMAND, step={}
        )
        attempt = _SshAttempt(listener, target, assignment.secrets)
        handle = self.local.start(runnable, attempt)
        for name in dropped:
            listener.line(
                "nagare",
                f"ssh: ${name} ({len(exports[name].encode())} bytes) is not sent to the remote "
                f"host: the ssh command line holds at most {MAX_LINE_BYTES} bytes",
            )
        return handle


class _SshAttempt:
    """The listener the local executor reports to: lines pass through (the client's stderr
    tail is kept), and an exit code 255 of the client itself gets its explanation."""

    def __init__(
        self, listener: AttemptListener, target: SshTarget, secrets: tuple[str, ...]
    ) -> None:
        self.listener = listener
        self.target = target
        self.secrets = secrets
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def line(self, stream: str, text: str) -> None:
        if stream == "stderr":
            self.tail.append(text[:MAX_TAIL_CHARS])
        self.listener.line(stream, text)

    def started(self, pid: int, start_time: float) -> None:
        self.listener.started(pid, start_time)

    def ended(self, outcome: Outcome) -> None:
        outcome = explained(outcome, list(self.tail), self.target)
        if outcome.error and self.secrets:
            outcome = replace(outcome, error=mask(outcome.error, self.secrets))
        self.listener.ended(outcome)
