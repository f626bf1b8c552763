"""The worker role's composition (`nagare worker --join URL`): a `RemoteWorker` on this host's
executors and its four loops. It loads none of the server's parts: no store, scheduler,
dispatcher or HTTP server."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from nagare import __version__
from nagare.config import Config
from nagare.errors import BadRequest, ConfigError
from nagare.executors import Executor
from nagare.executors.local import LocalExecutor
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, TaskType
from nagare.wiring import StepExecutors, Supervisor, docker_executor, start_loop

if TYPE_CHECKING:
    from nagare.cluster.remote import RemoteWorker
    from nagare.executors.docker import DockerExecutor

log = logging.getLogger("nagare")


def build_worker(config: Config) -> WorkerApp:
    """`nagare worker --join URL`: a remote worker running tasks with this host's executors."""
    from nagare.cluster.protocol import WorkerHello, encode_hello, read_hello

    if not config.join:
        raise ConfigError("--join is required in worker mode (e.g. --join http://master:8080)")
    hostname = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "worker"
    hello = WorkerHello(
        worker_id=config.worker_id or f"{hostname}-{os.getpid()}",
        hostname=hostname,
        pools=tuple(p.strip() for p in str(config.pools).split(",") if p.strip()),
        max_tasks=config.max_tasks,
        version=__version__,
    )
    try:
        read_hello(encode_hello(hello))
    except BadRequest as err:
        raise ConfigError(f"worker settings: {err.message}") from None
    from nagare.client import Masters  # the worker role only, as below

    urls = [url.strip() for url in config.join.split(",") if url.strip()]
    try:
        master = Masters(urls, api_key=config.token)
    except Exception as err:
        raise ConfigError(f"--join: {err}") from None
    master.on_switch = lambda old, new: log.warning(
        "cannot reach the master at %s; going on with the master at %s", old, new
    )
    from nagare.cluster.remote import RemoteWorker  # the worker role only: a server never loads it

    reactor = Reactor()  # owned by the worker's task loop
    executors = _WorkerExecutors(config, hello.worker_id, reactor)
    worker = RemoteWorker(
        master,
        hello,
        reactor,
        executors,
        grace_seconds=config.shutdown_grace_seconds,
        base_env=_without_smtp_password(config, dict(os.environ)),
        run_as=config.run_as,
        prefetch=config.prefetch,
    )
    return WorkerApp(worker, executors.local)


def _without_smtp_password(config: Config, env: dict[str, str]) -> dict[str, str]:
    """A worker's environment for its tasks: without the SMTP password of its `mail` steps."""
    if config.smtp is not None and config.smtp.password_env:
        env.pop(config.smtp.password_env, None)
    return env


class WorkerApp:
    """The worker role's composition: its loops, each `run(stop)` in a thread of its own, started
    and stopped here as the server's are in `App`."""

    def __init__(self, worker: RemoteWorker, local: LocalExecutor | None = None) -> None:
        self.worker = worker
        self.local = local
        self.stopping = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        worker.on_fatal = self._refused
        self.on_fatal: Callable[[], None] = lambda: None  # cli wires: wake the main thread

    def start(self) -> None:
        """The poll loop joins the master first (retrying until it answers)."""
        for name, loop in (
            ("poll", self.worker.poll_loop),
            ("heartbeat", self.worker.heartbeat_loop),
            ("shipper", self.worker.ship_loop),
            ("tasks", self.worker.task_loop),
        ):
            supervisor = Supervisor(name, loop, self.stopping, None, self.stopping)
            self._threads[name] = start_loop(name, supervisor.run)

    def _refused(self) -> None:
        self.stopping.set()
        self.on_fatal()

    def stop(self) -> None:
        """Take no new work, let running tasks finish within the grace period (hand the rest
        back), deliver every result, say goodbye. Raises WorkerRejected if the master refused
        this worker."""
        self.stopping.set()
        self.worker.leave()  # the master answers the outstanding poll at once, with no work
        poll = self._threads.pop("poll", None)
        if poll is not None:
            poll.join(timeout=self.worker.settings.poll_wait_seconds + 5)
        self.worker.finish()
        for thread in self._threads.values():
            thread.join(timeout=5)
        if self.local is not None:
            self.local.close()  # its guardian (if a task ever ran) exits and is reaped
        self.worker.say_goodbye()
        self.worker.master.close()
        if self.worker.fatal is not None:
            raise self.worker.fatal


class _WorkerExecutors:
    """A worker's executors: local processes, and Docker created on the first container task."""

    def __init__(self, config: Config, worker_id: str, reactor: Reactor) -> None:
        self.config = config
        self.worker_id = worker_id
        self.reactor = reactor
        self.local = LocalExecutor(reactor, max_line_bytes=config.max_log_line_bytes)
        self.steps = StepExecutors(config, reactor, self.local)
        self._docker: DockerExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self, assignment: Assignment) -> Executor:
        if assignment.step_type != TaskType.COMMAND:
            return self.steps(assignment.step_type)
        if not assignment.image:
            return self.local
        with self._lock:
            if self._docker is None:
                owner = f"{socket.gethostname()}:worker:{self.worker_id}"
                self._docker = docker_executor(self.config, owner, self.reactor)
                self._docker.cleanup_orphans()
            return self._docker
