"""Plain records the store hands out or takes in."""

from __future__ import annotations

from dataclasses import dataclass, field

from nagare.models import Claim


@dataclass
class DagState:
    dag_id: str
    paused: bool
    watermark: int
    last_slot: int | None


@dataclass
class RunFilter:
    dag_id: str = ""
    status: str = ""
    trigger: str = ""
    waiting: str = ""  # a step type: only runs with a task waiting on such a step (approval)
    search: str = ""  # only runs whose id contains this text (case-insensitive)
    dag_ids: tuple[str, ...] | None = None  # only runs of these DAGs (the API's tag filter)


@dataclass
class Stats:
    active_runs: int
    failed_runs_24h: int
    total_runs: int
    queued_tasks: int
    running_tasks: int


@dataclass
class WorkerRecord:
    """A remote worker as the registry stores it; `running` counts the attempts it holds."""

    worker_id: str
    hostname: str
    pools: tuple[str, ...]
    max_tasks: int
    version: str
    state: str  # online | left (a worker that said goodbye); offline is derived from last_seen
    registered_at: int
    last_seen: int
    running: int = 0


@dataclass
class HeldAttempt:
    """An attempt a remote worker reports holding, as the master sees it now."""

    task_instance_id: str
    attempt: int
    cancel: bool  # the task was killed: the worker must stop it
    lost: bool  # not (or no longer) held by this worker: the worker must drop it


@dataclass
class Exchange:
    """What one message of a worker changed, in one transaction: per result sent, whether the
    task moved (None: refused, the worker does not hold that attempt under a live lease); the
    attempts it holds, renewed; the tasks claimed for it."""

    recorded: list[bool | None] = field(default_factory=list)
    held: list[HeldAttempt] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action: who (`actor`), when (epoch ms), from which address, what
    (`action`, on `target`) and how it ended (`outcome`: ok, or the error's code)."""

    at: int
    actor: str
    action: str
    target: str = ""
    address: str = ""
    outcome: str = "ok"
    detail: str = ""
    id: int = 0  # given by the store


@dataclass
class AuditFilter:
    actor: str = ""
    action: str = ""  # an action, or its family with a trailing '.' ("run.")
    target: str = ""
    outcome: str = ""
    since: int | None = None  # epoch ms, inclusive
    until: int | None = None  # epoch ms, exclusive
