"""Docker executor: each attempt runs `/bin/sh -c COMMAND` in a fresh container.

The only module that uses the docker SDK (low-level `APIClient`). `nagare.app` imports it the
first time a container task runs, so a server that never runs one never loads the SDK.

One attempt: the image is pulled if missing (progress condensed to one log line per layer
state change; the pull has its own time limit and does not count against `timeout_seconds`),
the container is created (entrypoint overridden to `/bin/sh -c`, env = the assignment's env
only, labels naming the attempt and the owning server), attached to before it starts (so no
output is missed, whatever the engine's logging driver), started, and its output is split into
lines as it arrives. A stats stream samples memory and CPU; a timer kills the container at the
timeout; the handle's `cancel` asks the engine to kill it at once. The attempt runs in a thread
of its own (engine calls block) and posts its end to the reactor of the thread that owns the
executor. Whatever happens, the container is removed afterwards. Containers a crashed server
left behind are found by their labels and removed by `cleanup_orphans()` when the server starts
again.

The translation from task fields to container settings, the pull progress condensing and the
stats accounting are pure, in `executors/containers.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import docker
import docker.auth
import docker.errors
import docker.utils
import requests
from docker.types import CancellableStream

from nagare.engine.outputs import OUTPUT_FILE_NAME
from nagare.executors import AttemptHandle, AttemptListener, LineSplitter, OnLine, not_started
from nagare.executors.containers import (
    ATTEMPT_LABEL,
    MANAGED_LABEL,
    OWNER_LABEL,
    RUN_LABEL,
    TASK_INSTANCE_LABEL,
    TASK_LABEL,
    ContainerConfigError,
    ContainerSpec,
    ContainerUsage,
    PullProgress,
    container_spec,
    outputs_dir,
)
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, AttemptMetrics, ExecutorType, Outcome

log = logging.getLogger("nagare.docker")

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
API_TIMEOUT_SECONDS = 60  # each engine call except the output, stats and pull streams
MAX_POOL_SIZE = 64  # idle engine connections kept (several per running container)


# ---------------------------------------------------------------- one attempt


class _Stop(Exception):
    """Ends an attempt early with this outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _failed(error: str, cancelled: bool = False) -> Outcome:
    return Outcome(
        exit_code=None,
        cancelled=cancelled,
        error=error,
        metrics=AttemptMetrics(executor_type=ExecutorType.DOCKER),
    )


class _Attempt:
    """Mutable state of one attempt, shared by its thread, the killing thread and the timers;
    it is also the attempt's handle."""

    def __init__(self, spec: ContainerSpec, on_line: OnLine) -> None:
        self.on_line = on_line
        self.spec = spec
        self.api: Any = None
        self.cancelled = False
        self.cancel_reason = ""
        self.timed_out = False
        self.pull_timed_out = False
        self._lock = threading.Lock()
        self._container: str | None = None
        self._running = False
        self._pull: CancellableStream | None = None

    def note(self, text: str) -> None:
        self.on_line("nagare", f"[nagare] {text}")

    def cancel(self, reason: str = "killed") -> None:
        """From any thread: stop the pull or kill the container, now (an engine request under
        the attempt's lock; a container not created yet is never started)."""
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            self.cancel_reason = reason
            container = self._container if self._running else None
            pull = self._pull
        if pull is not None:
            _close(pull)
        if container is not None:
            self._kill(container)

    def expire(self) -> None:
        """From the timeout timer."""
        with self._lock:
            self.timed_out = not self.cancelled
            container = self._container if self._running else None
        if container is not None:
            self._kill(container)

    def expire_pull(self) -> None:
        with self._lock:
            self.pull_timed_out = True
            pull = self._pull
        if pull is not None:
            _close(pull)

    def pulling(self, stream: CancellableStream | None) -> None:
        with self._lock:
            self._pull = stream
            stop = stream is not None and (self.cancelled or self.pull_timed_out)
        if stop and stream is not None:
            _close(stream)

    def created(self, container: str) -> None:
        with self._lock:
            self._container = container

    def started(self) -> None:
        """The container runs: a kill from now on reaches it (and one that came before it
        could reach it is applied now)."""
        with self._lock:
            self._running = True
            stop = self.cancelled or self.timed_out
        if stop and self._container is not None:
            self._kill(self._container)

    def _kill(self, container: str) -> None:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            self.api.kill(container, "SIGKILL")


def _close(stream: CancellableStream) -> None:
    with contextlib.suppress(Exception):
        stream.close()


class _StatsReader:
    """A thread following the container's stats stream into a ContainerUsage."""

    def __init__(self, api: Any, container: str) -> None:
        self.usage = ContainerUsage()
        self._api = api
        self._container = container
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name="docker-stats")

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        try:
            for frame in self._api.stats(self._container, decode=True, stream=True):
                if self._done.is_set():
                    return
                self.usage.feed(frame)
        except (docker.errors.DockerException, requests.RequestException, ValueError) as exc:
            log.debug("stats of container %s ended: %s", self._container[:12], exc)

    def stop(self) -> None:
        self._done.set()


# ---------------------------------------------------------------- the executor


class DockerExecutor:
    """Runs attempts in containers; `ended` is reported in the thread that owns `reactor`."""

    def __init__(
        self,
        reactor: Reactor,
        max_line_bytes: int = 65536,
        docker_host: str = "",
        volume_roots: Iterable[str] = (),
        owner: str = "",
        pull_timeout_seconds: float = 900.0,
    ) -> None:
        self.reactor = reactor
        self.max_line_bytes = max_line_bytes
        self.docker_host = docker_host
        self.volume_roots = tuple(volume_roots)
        self.owner = owner
        self.pull_timeout_seconds = pull_timeout_seconds
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def executor_type(self) -> str:
        return ExecutorType.DOCKER

    @property
    def address(self) -> str:
        """The engine address, as a user would write it."""
        return self.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS

    def _api(self) -> Any:
        """The engine client, created on first use (and retried after a failure)."""
        with self._lock:
            if self._client is None:
                kwargs = docker.utils.kwargs_from_env()
                if self.docker_host:
                    kwargs["base_url"] = self.docker_host
                self._client = docker.APIClient(
                    version="auto",
                    timeout=API_TIMEOUT_SECONDS,
                    max_pool_size=MAX_POOL_SIZE,
                    **kwargs,
                )
            return self._client

    def close(self) -> None:
        """Close the engine client's connections (the server is stopping)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def unreachable(self, exc: BaseException) -> str:
        return f"Docker engine not reachable at {self.address}: {_reason(exc)}"

    # ------------------------------------------------------------ running an attempt

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        """The attempt runs in a thread of its own (engine calls block); its end is reported
        in the thread that owns the reactor."""
        try:
            spec = container_spec(assignment, self.owner, self.volume_roots)
        except ContainerConfigError as exc:
            return not_started(self.reactor, listener, _failed(str(exc)))
        attempt = _Attempt(spec, listener.line)
        threading.Thread(
            target=self._attempt_thread,
            args=(attempt, assignment, listener),
            daemon=True,
            name=f"container-{assignment.task_id}"[:40],
        ).start()
        return attempt

    def _attempt_thread(
        self, attempt: _Attempt, assignment: Assignment, listener: AttemptListener
    ) -> None:
        try:
            outcome = self._run(attempt, assignment)
        except Exception as exc:  # a bug here fails the task, never the thread that owns it
            log.exception("container task %s failed in its executor", assignment.task_id)
            outcome = _failed(f"internal error: {exc}")
        self.reactor.post(lambda: listener.ended(outcome))

    def _run(self, attempt: _Attempt, assignment: Assignment) -> Outcome:
        if attempt.cancelled:
            return _failed(f"{attempt.cancel_reason} before start", cancelled=True)
        try:
            attempt.api = self._api()
            self._ensure_image(attempt)
            self._stop_if_cancelled(attempt, "before start")
            if not assignment.output_file:
                return self._run_container(attempt, assignment.timeout_seconds)
            folder = _make_outputs_dir(assignment.output_file)
            try:
                return self._run_container(attempt, assignment.timeout_seconds)
            finally:
                _take_outputs(folder, assignment.output_file)
        except _Stop as stop:
            return stop.outcome
        except docker.errors.APIError as exc:
            return _failed(f"Docker engine error: {_explanation(exc)}")
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            return _failed(self.unreachable(exc))

    def _stop_if_cancelled(self, attempt: _Attempt, when: str) -> None:
        if attempt.cancelled:
            raise _Stop(_failed(f"{attempt.cancel_reason} {when}", cancelled=True))

    def _ensure_image(self, attempt: _Attempt) -> None:
        try:
            attempt.api.inspect_image(attempt.spec.image)
        except docker.errors.ImageNotFound:
            self._pull(attempt)

    def _pull(self, attempt: _Attempt) -> None:
        image = attempt.spec.image
        attempt.note(
            f"pulling image {image} (at most {self.pull_timeout_seconds:g}s; "
            "not counted in timeout_seconds)"
        )
        started = time.monotonic()
        progress = PullProgress()
        timer = threading.Timer(self.pull_timeout_seconds, attempt.expire_pull)
        timer.daemon = True
        timer.start()
        try:
            stream = self._pull_stream(attempt.api, image)
            attempt.pulling(stream)
            for event in stream:
                line = progress.feed(event)
                if line:
                    attempt.note(line)
        except docker.errors.APIError as exc:
            progress.error = _explanation(exc)
        finally:
            timer.cancel()
            attempt.pulling(None)
        self._stop_if_cancelled(attempt, "while the image was pulled")
        if attempt.pull_timed_out:
            progress.error = (
                f"no complete image after {self.pull_timeout_seconds:g}s "
                "(docker_pull_timeout_seconds)"
            )
        if not progress.error and not _has_image(attempt.api, image):
            progress.error = "the engine ended the pull without the image"
        if progress.error:
            raise _Stop(_failed(f"cannot pull image {image}: {progress.error}"))
        attempt.note(f"pulled image {image} in {time.monotonic() - started:.1f}s")

    @staticmethod
    def _pull_stream(api: Any, image: str) -> CancellableStream:
        """`POST /images/create` as the SDK's `pull()` sends it (with the registry credentials
        of ~/.docker/config.json), but keeping the response, so that a kill or the pull time
        limit can close it from another thread."""
        repository, tag = docker.utils.parse_repository_tag(image)
        registry, _ = docker.auth.resolve_repository_name(repository)
        headers = {}
        header = docker.auth.get_config_header(api, registry)
        if header:
            headers["X-Registry-Auth"] = header
        response = api._post(
            api._url("/images/create"),
            params={"fromImage": repository, "tag": tag or "latest"},
            headers=headers,
            stream=True,
            timeout=None,
        )
        api._raise_for_status(response)
        return CancellableStream(_json_lines(response), response)

    def _run_container(self, attempt: _Attempt, timeout: float) -> Outcome:
        api = attempt.api
        try:
            created = api.create_container(**attempt.spec.create_kwargs())
        except docker.errors.APIError as exc:
            raise _Stop(_failed(f"cannot create the container: {_explanation(exc)}")) from None
        container = str(created["Id"])
        attempt.created(container)
        try:
            return self._follow(attempt, container, timeout)
        finally:
            self._remove(api, container)

    def _follow(self, attempt: _Attempt, container: str, timeout: float) -> Outcome:
        api = attempt.api
        output = api.attach(container, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        stats = _StatsReader(api, container)
        timer: threading.Timer | None = None
        try:
            self._stop_if_cancelled(attempt, "before start")
            try:
                api.start(container)
            except docker.errors.APIError as exc:
                raise _Stop(
                    _failed(
                        f"cannot start the container: {_explanation(exc)} "
                        "(the image must provide /bin/sh)"
                    )
                ) from None
            started = time.monotonic()
            attempt.started()
            stats.start()
            if timeout > 0:
                timer = threading.Timer(timeout, attempt.expire)
                timer.daemon = True
                timer.start()
            self._pump(output, attempt)
            if timer is not None:
                timer.cancel()  # the output ended: the container has exited (or is exiting)
            exit_code = int(api.wait(container).get("StatusCode", -1))
            ended = time.monotonic()
            state = api.inspect_container(container).get("State") or {}
        finally:
            if timer is not None:
                timer.cancel()
            stats.stop()  # its thread ends at the next frame, or when the container is removed
            _close(output)
        return self._outcome(
            attempt, exit_code, bool(state.get("OOMKilled")), ended - started, stats
        )

    def _pump(self, output: Iterator[tuple[bytes | None, bytes | None]], attempt: _Attempt) -> None:
        """Container output into lines as it arrives (bounded memory: see LineSplitter)."""
        stdout = LineSplitter("stdout", attempt.on_line, self.max_line_bytes)
        stderr = LineSplitter("stderr", attempt.on_line, self.max_line_bytes)
        for out, err in output:
            if out:
                stdout.feed(out)
            if err:
                stderr.feed(err)
        stdout.close()
        stderr.close()

    def _outcome(
        self,
        attempt: _Attempt,
        exit_code: int,
        oom_killed: bool,
        seconds: float,
        stats: _StatsReader,
    ) -> Outcome:
        usage = stats.usage
        metrics = AttemptMetrics(
            duration_ms=int(seconds * 1000),
            cpu_user_ms=usage.cpu_user_ns // 1_000_000,
            cpu_system_ms=usage.cpu_system_ns // 1_000_000,
            peak_memory_bytes=usage.peak_memory_bytes,
            exit_code=exit_code,
            executor_type=ExecutorType.DOCKER,
        )
        error = ""
        if attempt.timed_out:
            error = "timed out"
        elif oom_killed and exit_code != 0 and not attempt.cancelled:
            limit = attempt.spec.memory_text
            error = (
                f"out of memory (OOM-killed at the {limit} limit)"
                if limit
                else ("out of memory (OOM-killed)")
            )
        elif oom_killed:
            attempt.note("a process in the container was OOM-killed (the task still succeeded)")
        return Outcome(
            exit_code=exit_code,
            timed_out=attempt.timed_out,
            cancelled=attempt.cancelled and not attempt.timed_out,
            error=error,
            metrics=metrics,
        )

    def _remove(self, api: Any, container: str) -> None:
        try:
            api.remove_container(container, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.DockerException, requests.RequestException) as exc:
            log.warning(
                "could not remove container %s: %s (it is removed at the next start)",
                container[:12],
                _reason(exc),
            )

    # ------------------------------------------------------------ crash recovery

    def cleanup_orphans(self) -> dict[tuple[str, int], str]:
        """Remove every container this server (its owner label) left behind, e.g. after a
        crash. Call it before any container task starts. Returns {(task instance, attempt):
        container name} of the removed ones."""
        filters = [f"{MANAGED_LABEL}=true"] + (
            [f"{OWNER_LABEL}={self.owner}"] if self.owner else []
        )
        try:
            found = self._api().containers(all=True, filters={"label": filters})
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            log.warning("could not look for leftover containers: %s", self.unreachable(exc))
            return {}
        removed: dict[tuple[str, int], str] = {}
        for entry in found:
            name = str((entry.get("Names") or [entry["Id"][:12]])[0]).lstrip("/")
            labels = entry.get("Labels") or {}
            try:
                self._api().remove_container(entry["Id"], force=True, v=True)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                log.warning("could not remove leftover container %s: %s", name, _reason(exc))
                continue
            attempt = labels.get(ATTEMPT_LABEL, "")
            key = (labels.get(TASK_INSTANCE_LABEL, ""), int(attempt) if attempt.isdigit() else 0)
            removed[key] = name
            log.warning(
                "removed container %s left running by a stopped server (task %s, run %s)",
                name,
                labels.get(TASK_LABEL, "?"),
                labels.get(RUN_LABEL, "?"),
            )
        return removed


# ---------------------------------------------------------------- helpers


def _make_outputs_dir(output_file: str) -> str:
    """The attempt's folder for $NAGARE_OUTPUT, writable by whatever user the container runs as
    (it holds nothing but this attempt's outputs)."""
    folder = outputs_dir(output_file)
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o777)
    return folder


def _take_outputs(folder: str, output_file: str) -> None:
    """Move what the container published to `output_file` (read like a local task's) and drop
    the folder."""
    with contextlib.suppress(OSError):
        os.replace(os.path.join(folder, OUTPUT_FILE_NAME), output_file)
    shutil.rmtree(folder, ignore_errors=True)


def _json_lines(response: requests.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            yield event


def _has_image(api: Any, image: str) -> bool:
    try:
        api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def _explanation(exc: docker.errors.APIError) -> str:
    """The engine's (or registry's) own message, without the SDK's HTTP framing."""
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc).strip()


def _reason(exc: BaseException) -> str:
    """The operating system's reason buried in a connection error ("No such file or
    directory", "Connection refused"), else the error's own text."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and isinstance(current.strerror, str):
            return current.strerror
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return str(exc)
