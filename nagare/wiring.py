"""What the server's and the worker's compositions share: the supervisor that keeps each
long-lived loop running and the thread it runs in, the executors of the step types that run in
a slot (built on first use), the Docker executor, the process's protection and its open-file
limit. `app` composes the server, `worker_app` the worker; neither imports the other."""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nagare.config import Config
from nagare.engine.assignment import SECRET_VARIABLES
from nagare.executors import Executor, Unavailable
from nagare.executors.local import LocalExecutor
from nagare.executors.reactor import Reactor
from nagare.executors.spawn import set_not_dumpable
from nagare.liveness import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    DistinctErrors,
    Heartbeat,
    backoff_seconds,
    short_error,
)
from nagare.models import TaskType

if TYPE_CHECKING:
    from nagare.executors.docker import DockerExecutor

log = logging.getLogger("nagare")


def protect_process() -> None:
    """The server and worker roles, at start (after reading their settings): other processes of
    the same user — tasks included — can no longer read this one's /proc files (the environment
    its secrets came from, its memory), and Nagare's own secret variables are dropped from the
    environment, so nothing started later inherits them."""
    set_not_dumpable()
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)


def start_loop(name: str, run: Callable[[], None]) -> threading.Thread:
    """A long-lived loop (a `Supervisor`'s `run`) in a daemon thread of its own: the one place
    both roles start their loops."""
    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread


def raise_open_file_limit() -> int:
    """Raise the soft limit of open files to the hard limit (a server holds a descriptor per
    connection, and tasks their pipes and log files); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target


class Supervisor:
    """Runs a loop's `run(stop)` and keeps it running: an exception is logged (each distinct
    one once, with its traceback), the loop's heartbeat says `failing` with it, and `run(stop)`
    is entered again after a back-off (0.5 s, doubling to 30 s; from 0.5 s again once the loop
    ran 30 s without one). After `stop` the loop gets a few more tries (loops that drain past it).
    A loop that returns before `ending` is set is logged and reported `stopped`."""

    STOPPING_TRIES = 3

    def __init__(
        self,
        name: str,
        loop: Callable[[threading.Event], None],
        stop: threading.Event,
        heartbeat: Heartbeat | None,
        ending: threading.Event,
    ) -> None:
        self.name = name
        self.loop = loop
        self.stop = stop
        self.heartbeat = heartbeat or Heartbeat(name, 0.0)  # not reported: log only
        self.ending = ending
        self.errors = DistinctErrors()

    def run(self) -> None:
        failures = stopping_failures = 0
        self.heartbeat.started()
        while True:
            entered = time.monotonic()
            try:
                self.loop(self.stop)
            except Exception as exc:
                if time.monotonic() - entered >= BACKOFF_MAX_SECONDS:
                    failures = 0  # it ran well for a while: a new incident
                failures += 1
                self._report(exc, failures)
                if not self.stop.is_set():
                    self.stop.wait(backoff_seconds(failures))
                    continue
                stopping_failures += 1
                if stopping_failures >= self.STOPPING_TRIES:
                    return
                threading.Event().wait(BACKOFF_FIRST_SECONDS)
                continue
            if not self.ending.is_set():
                log.error("the %s loop ended while the process runs", self.name)
                self.heartbeat.stopped()
            return

    def _report(self, exc: Exception, failures: int) -> None:
        error = short_error(exc)
        self.heartbeat.failed(error)
        delay = backoff_seconds(failures)
        if self.errors.first(error):
            log.error(
                "the %s loop failed: %s; it runs again in %.1fs (this error is logged once)",
                self.name,
                error,
                delay,
                exc_info=exc,
            )


class StepExecutors:
    """The executors of the step types that run in a pool slot (http, mail, ssh, chat), each
    built on its first use, for the server and for a worker alike."""

    def __init__(self, config: Config, reactor: Reactor, local: LocalExecutor) -> None:
        self.config = config
        self.reactor = reactor
        self.local = local
        self._built: dict[str, Executor] = {}
        self._lock = threading.Lock()

    def __call__(self, step_type: str) -> Executor:
        with self._lock:
            executor = self._built.get(step_type)
            if executor is None:
                executor = self._build(step_type)
                self._built[step_type] = executor
            return executor

    def _build(self, step_type: str) -> Executor:
        if step_type in (TaskType.HTTP, TaskType.CHAT):
            return _web_executor(step_type, self.config, self.reactor)
        if step_type == TaskType.MAIL:
            return _mail_executor(self.config, self.reactor)
        if step_type == TaskType.SSH:
            return _ssh_executor(self.reactor, self.local)
        return Unavailable(self.reactor, step_type)


def _web_executor(step_type: str, config: Config, reactor: Reactor) -> Executor:
    """The executor of `http` or `chat` steps, imported on first use."""
    from nagare.executors.web import ChatExecutor, HttpExecutor

    if step_type == TaskType.CHAT:
        return ChatExecutor(reactor)
    return HttpExecutor(reactor, max_line_bytes=config.max_log_line_bytes)


def _mail_executor(config: Config, reactor: Reactor) -> Executor:
    """The mail executor, with this host's `smtp:` (the password is read from this host's
    environment when a mail is sent)."""
    from nagare.executors.mail import MailExecutor

    return MailExecutor(reactor, config.smtp, os.environ)


def _ssh_executor(reactor: Reactor, local: LocalExecutor) -> Executor:
    """The ssh step's executor: the system's OpenSSH client run by `local`; the variables of
    this process's own environment (what local tasks inherit) are never sent to the host."""
    from nagare.executors.ssh import SshExecutor

    return SshExecutor(reactor, local, os.environ)


def docker_executor(config: Config, owner: str, reactor: Reactor) -> DockerExecutor:
    """The Docker executor, imported on first use: a process that never runs a container never
    loads the SDK. `owner` labels its containers (leftovers of a crash are found by it)."""
    from nagare.executors.docker import DockerExecutor

    return DockerExecutor(
        reactor,
        max_line_bytes=config.max_log_line_bytes,
        docker_host=config.docker_host,
        volume_roots=config.docker_volume_roots,
        owner=owner,
        pull_timeout_seconds=config.docker_pull_timeout_seconds,
    )
