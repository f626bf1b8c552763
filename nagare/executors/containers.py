"""Container tasks as plain data: the translation of a task's container fields into the
engine's create call (`container_spec`), the condensing of image pull progress, and the
accounting of the engine's stats frames. Pure functions, no engine and no SDK, so they are
tested in milliseconds; `executors/docker.py` does the I/O.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nagare.engine.outputs import CONTAINER_OUTPUT_DIR, OUTPUT_FILE_NAME
from nagare.models import Assignment
from nagare.patterns import MEMORY

SHELL = ("/bin/sh", "-c")

MANAGED_LABEL = "nagare.managed"
OWNER_LABEL = "nagare.owner"
RUN_LABEL = "nagare.run"
DAG_LABEL = "nagare.dag"
TASK_LABEL = "nagare.task"
TASK_INSTANCE_LABEL = "nagare.task_instance"
ATTEMPT_LABEL = "nagare.attempt"

MEMORY_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ContainerConfigError(ValueError):
    """The task's container fields cannot be turned into a container (message for the log)."""


# ---------------------------------------------------------------- task fields -> container


@dataclass(frozen=True)
class ContainerSpec:
    """What the engine is asked to create, in Engine API terms (`host_config` is HostConfig)."""

    name: str
    image: str
    entrypoint: list[str]
    command: list[str]
    environment: dict[str, str]
    working_dir: str | None
    labels: dict[str, str]
    host_config: dict[str, Any] = field(default_factory=dict)
    memory_text: str = ""  # the limit as the task wrote it, for the OOM message
    user: str = ""  # run_as: the container's user (a name from the image, or uid[:gid])

    def create_kwargs(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "name": self.name,
            "entrypoint": self.entrypoint,
            "command": self.command,
            "environment": self.environment,
            "working_dir": self.working_dir,
            "labels": self.labels,
            "host_config": self.host_config,
            "use_config_proxy": False,  # no proxy variables from ~/.docker/config.json either
            "user": self.user or None,
        }


def container_spec(
    assignment: Assignment, owner: str = "", volume_roots: Iterable[str] = ()
) -> ContainerSpec:
    """The container for one attempt. Raises ContainerConfigError for a volume that may not be
    mounted or a resource value that makes no sense."""
    resources = assignment.resources
    host_config: dict[str, Any] = {}
    binds = volume_binds(assignment.volumes, volume_roots)
    environment = dict(assignment.env)
    if assignment.output_file:  # the attempt's own folder for $NAGARE_OUTPUT (see outputs_dir)
        binds.append(f"{outputs_dir(assignment.output_file)}:{CONTAINER_OUTPUT_DIR}:rw")
        environment["NAGARE_OUTPUT"] = f"{CONTAINER_OUTPUT_DIR}/{OUTPUT_FILE_NAME}"
    if binds:
        host_config["Binds"] = binds
    if resources is not None and resources.cpus:
        host_config["NanoCpus"] = nano_cpus(resources.cpus)
    if resources is not None and resources.memory:
        limit = memory_bytes(resources.memory)
        host_config["Memory"] = limit
        host_config["MemorySwap"] = limit  # the limit is the limit: no swap on top of it
    if resources is not None and resources.gpus:
        host_config["DeviceRequests"] = device_requests(resources.gpus)
    return ContainerSpec(
        name=container_name(assignment),
        image=assignment.image,
        entrypoint=list(SHELL),
        command=[assignment.command],
        environment=environment,
        working_dir=assignment.workdir or None,
        labels=container_labels(assignment, owner),
        host_config=host_config,
        memory_text=resources.memory if resources is not None else "",
        user=assignment.run_as,
    )


def outputs_dir(output_file: str) -> str:
    """The per-attempt folder mounted at CONTAINER_OUTPUT_DIR: the task writes its outputs to
    the file OUTPUT_FILE_NAME there, which the executor moves to `output_file` at the end."""
    return output_file + ".d"


def container_name(assignment: Assignment) -> str:
    """`nagare-<task>-<task instance>-<attempt>`: readable in `docker ps`, unique per attempt."""
    task = re.sub(r"[^A-Za-z0-9_.-]+", "-", assignment.task_id).strip("-.")[:40] or "task"
    instance = re.sub(r"[^A-Za-z0-9_.-]+", "-", assignment.task_instance_id)
    return f"nagare-{task}-{instance}-{assignment.attempt}"


def container_labels(assignment: Assignment, owner: str) -> dict[str, str]:
    labels = {
        MANAGED_LABEL: "true",
        RUN_LABEL: assignment.run_id,
        DAG_LABEL: assignment.dag_id,
        TASK_LABEL: assignment.task_id,
        TASK_INSTANCE_LABEL: assignment.task_instance_id,
        ATTEMPT_LABEL: str(assignment.attempt),
    }
    if owner:
        labels[OWNER_LABEL] = owner
    return labels


def nano_cpus(text: str) -> int:
    """`"1.5"` -> 1_500_000_000 (the engine's NanoCpus)."""
    try:
        value = float(text)
    except ValueError:
        raise ContainerConfigError(f"resources.cpus: expected a number, found '{text}'") from None
    nanos = round(value * 1e9) if math.isfinite(value) else 0
    if not 0 < nanos < 2**63:
        raise ContainerConfigError(f"resources.cpus: expected a positive number, found '{text}'")
    return nanos


def memory_bytes(text: str) -> int:
    """`"512m"` -> 536870912; suffixes b, k, m, g (powers of 1024, any case); none = bytes."""
    match = MEMORY.match(text.strip())
    if match is None:
        raise ContainerConfigError(
            f"resources.memory: expected a number with optional suffix b/k/m/g, found '{text}'"
        )
    return int(match.group(1)) * MEMORY_UNITS[match.group(2).lower() or "b"]


def device_requests(gpus: str) -> list[dict[str, Any]]:
    """`"all"` or N -> one NVIDIA device request (needs the NVIDIA Container Toolkit)."""
    if gpus == "all":
        count = -1
    elif gpus.isascii() and gpus.isdigit() and int(gpus) > 0:
        count = int(gpus)
    else:
        raise ContainerConfigError(
            f"resources.gpus: expected \"all\" or a positive integer, found '{gpus}'"
        )
    return [{"Driver": "nvidia", "Count": count, "Capabilities": [["gpu"]], "Options": {}}]


def volume_binds(volumes: Iterable[str], roots: Iterable[str] = ()) -> list[str]:
    """`host:container[:ro|rw]` -> engine binds `host:container:mode`, each host path resolved
    (symlinks too) and, when `roots` is not empty, required to lie inside one of them."""
    allowed = [os.path.realpath(root) for root in roots]
    binds = []
    for spec in volumes:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ContainerConfigError(
                f"invalid volume '{spec}' (expected host_path:container_path[:ro|rw])"
            )
        host, target = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise ContainerConfigError(f"invalid volume mode '{mode}' in '{spec}' (ro or rw)")
        if not os.path.isabs(host) or not target.startswith("/"):
            raise ContainerConfigError(
                f"volume '{spec}': host and container paths must be absolute (the DAG loader "
                "resolves a relative host path against the DAG file's folder)"
            )
        real = os.path.realpath(host)
        if allowed and not any(_inside(real, root) for root in allowed):
            raise ContainerConfigError(
                f"volume '{spec}': host path {real} is outside the folders containers may "
                f"mount (docker_volume_roots: {', '.join(allowed)})"
            )
        binds.append(f"{real}:{target}:{mode}")
    return binds


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# ---------------------------------------------------------------- pull progress and stats


class PullProgress:
    """Condenses the engine's pull events: one line per layer state change (not one per
    progress tick), plus the general lines; keeps the error the registry reported."""

    def __init__(self) -> None:
        self.error = ""
        self._states: dict[str, str] = {}
        self._last_general = ""

    def feed(self, event: Mapping[str, Any]) -> str | None:
        if event.get("error") or event.get("errorDetail"):
            detail = event.get("errorDetail") or {}
            self.error = str(detail.get("message") or event.get("error") or "unknown error")
            return None
        status = str(event.get("status", "")).strip()
        layer = str(event.get("id", ""))
        if not status:
            return None
        if not layer or status.startswith("Pulling from"):
            text = f"{status} {layer}".strip() if status.startswith("Pulling from") else status
            if text == self._last_general:
                return None
            self._last_general = text
            return text
        if self._states.get(layer) == status:
            return None
        self._states[layer] = status
        total = (event.get("progressDetail") or {}).get("total")
        if status == "Downloading" and isinstance(total, int) and total > 0:
            return f"layer {layer}: {status} ({_size(total)})"
        return f"layer {layer}: {status}"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = count / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class ContainerUsage:
    """Peak memory and CPU time of a container from the engine's stats frames (cgroup v1 and
    v2): memory is the highest `max_usage` or sampled `usage` (as the engine counts it, page
    cache included); CPU is the cumulative user/kernel time of the last frame that had one."""

    def __init__(self) -> None:
        self.peak_memory_bytes = 0
        self.cpu_user_ns = 0
        self.cpu_system_ns = 0

    def feed(self, frame: Mapping[str, Any]) -> None:
        memory = frame.get("memory_stats") or {}
        self.peak_memory_bytes = max(
            self.peak_memory_bytes, int(memory.get("max_usage") or 0), int(memory.get("usage") or 0)
        )
        cpu = (frame.get("cpu_stats") or {}).get("cpu_usage") or {}
        user, system = (
            int(cpu.get("usage_in_usermode") or 0),
            int(cpu.get("usage_in_kernelmode") or 0),
        )
        if user or system:
            self.cpu_user_ns = max(self.cpu_user_ns, user)
            self.cpu_system_ns = max(self.cpu_system_ns, system)
        elif int(cpu.get("total_usage") or 0) > self.cpu_user_ns + self.cpu_system_ns:
            self.cpu_user_ns = int(cpu["total_usage"]) - self.cpu_system_ns
