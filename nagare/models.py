"""Plain data of the domain: DAG definitions, runs, task instances, attempts and their states.

The StrEnum values are what SQLite stores and what the JSON API returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, NamedTuple, Protocol

from nagare.patterns import has_template


class TaskType(StrEnum):
    COMMAND = "command"
    MAP = "map"
    TRIGGER_DAG = "trigger_dag"
    DAG = "dag"  # call another DAG as a child run and wait for it
    HTTP = "http"
    MAIL = "mail"
    SSH = "ssh"
    CHAT = "chat"
    APPROVAL = "approval"
    WAIT = "wait"  # wait for an event


# Step types an executor runs in a pool slot, on this host or on a remote worker (a map's
# children run its command).
SLOT_STEPS = frozenset(
    {TaskType.COMMAND, TaskType.MAP, TaskType.HTTP, TaskType.MAIL, TaskType.SSH, TaskType.CHAT}
)
# Step types with an executor of their own (the others run a command: locally or in Docker).
EXECUTOR_STEPS = frozenset({TaskType.HTTP, TaskType.MAIL, TaskType.SSH, TaskType.CHAT})
# Step types the engine coordinates while the task is `waiting`: no slot, no thread.
WAITING_STEPS = frozenset({TaskType.DAG, TaskType.APPROVAL, TaskType.WAIT})
# The pool of their task instances: no pool of any host serves it (not a valid pool name), so
# a queued one (a handler, a retry) is begun by the engine, never claimed by a slot.
WAIT_POOL = "~engine"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # the DAG's own condition (when / preconditions) was not met

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN


TERMINAL_RUN = frozenset(
    {RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED}
)


class TaskStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"
    UPSTREAM_FAILED = "upstream_failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    WAITING = "waiting"  # a dag / approval / wait step: waits for a child run, a person, an event

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_TASK


TERMINAL_TASK = frozenset(
    {
        TaskStatus.SUCCESS,
        TaskStatus.FAILED,
        TaskStatus.UPSTREAM_FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.SKIPPED,
    }
)
# A dependency in one of these states can never succeed: its dependants become upstream_failed.
BLOCKING_TASK = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})
# A task in one of these states may still run: its run is not finished, a kill cancels it.
ACTIVE_TASK = frozenset(
    {
        TaskStatus.PENDING,
        TaskStatus.QUEUED,
        TaskStatus.RUNNING,
        TaskStatus.UP_FOR_RETRY,
        TaskStatus.WAITING,
    }
)

# Every transition a task instance may take; the store refuses any other.
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset(
        {
            TaskStatus.QUEUED,
            TaskStatus.RUNNING,
            TaskStatus.UPSTREAM_FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.FAILED,
            TaskStatus.SUCCESS,
            TaskStatus.SKIPPED,
            TaskStatus.WAITING,
        }
    ),
    TaskStatus.WAITING: frozenset(
        {
            TaskStatus.SUCCESS,
            TaskStatus.FAILED,
            TaskStatus.UP_FOR_RETRY,
            TaskStatus.CANCELLED,
            TaskStatus.SKIPPED,
        }
    ),
    TaskStatus.QUEUED: frozenset(
        {
            TaskStatus.RUNNING,
            TaskStatus.CANCELLED,
            TaskStatus.SUCCESS,
            TaskStatus.FAILED,
            TaskStatus.WAITING,  # a queued step that waits (a handler, a retry) begins
        }
    ),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.SUCCESS,
            TaskStatus.FAILED,
            TaskStatus.UP_FOR_RETRY,
            TaskStatus.CANCELLED,
            TaskStatus.QUEUED,
            TaskStatus.SKIPPED,  # a `when:` found false as the attempt was about to start
        }
    ),
    TaskStatus.UP_FOR_RETRY: frozenset(
        {TaskStatus.QUEUED, TaskStatus.CANCELLED, TaskStatus.WAITING}
    ),
    # A finished task re-opens only through a manual retry (running: a map parent whose
    # children are retried).
    **{
        s: frozenset({TaskStatus.QUEUED, TaskStatus.PENDING, TaskStatus.RUNNING})
        for s in (
            TaskStatus.SUCCESS,
            TaskStatus.FAILED,
            TaskStatus.UPSTREAM_FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.SKIPPED,
        )
    },
}


class Trigger(StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    WEBHOOK = "webhook"
    TRIGGERED = "triggered"
    CATCHUP = "catchup"
    BACKFILL = "backfill"


# Runs of a schedule slot: their id is deterministic (a slot runs once), their tasks get the slot
# as NAGARE_SCHEDULED_TIME.
SLOT_TRIGGERS = frozenset({Trigger.SCHEDULED, Trigger.CATCHUP, Trigger.BACKFILL})

# The worker name of a server's own (local pool) attempts; on a database several masters share,
# each master's is "local@<master id>" (remote worker ids cannot contain '@').
LOCAL_WORKER = "local"


def is_local_worker(worker: str) -> bool:
    """Whether an attempt's worker is a server's own pools (not a remote worker)."""
    return worker in ("", LOCAL_WORKER) or worker.startswith(LOCAL_WORKER + "@")


class ParamType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    OBJECT = "object"
    ARRAY = "array"


class TriggerRule(StrEnum):
    """What a pending task does once its upstream tasks have ended (Airflow's names)."""

    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    ALL_FAILED = "all_failed"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"


class ExecutorType(StrEnum):
    LOCAL = "local"
    DOCKER = "docker"


# ---------------------------------------------------------------- DAG definitions


@dataclass(frozen=True)
class Resources:
    cpus: str = ""
    memory: str = ""
    gpus: str = ""


@dataclass(frozen=True)
class ParamDef:
    """One declared run parameter (`params:` of a DAG file). `default` is a JSON value; a
    parameter is required when it has no default, unless the file says `required: false`."""

    name: str
    type: ParamType = ParamType.STRING
    default: Any = None
    has_default: bool = False
    required: bool = True
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str = ""
    description: str = ""


@dataclass(frozen=True)
class TriggerDef:
    type: str
    path: str = ""
    method: str = "POST"
    secret: str = ""
    secret_env: str = ""
    signature_header: str = "X-Hub-Signature-256"
    extract_payload: dict[str, str] = field(default_factory=dict)
    emit_event: str = ""  # a delivery emits this event (for `wait` steps) instead of a run


@dataclass(frozen=True)
class SecretDef:
    """A secret a task gets as an environment variable: its name, and where the value is read
    when the task starts (`env`: a server environment variable, or `file`: a path)."""

    name: str
    env: str = ""
    file: str = ""


@dataclass(frozen=True)
class SmtpSettings:
    """`smtp:` of nagare.yaml: the mail server `mail` steps send with (on the host that runs
    the step). The password is never held here: it is read from the environment variable
    `password_env` names when a mail is sent."""

    host: str
    sender: str  # `from`: the envelope sender and the From header
    port: int = 25
    username: str = ""
    password_env: str = ""
    starttls: bool = False  # upgrade a plain connection with STARTTLS (port 587)
    ssl: bool = False  # implicit TLS from the first byte (port 465)
    timeout_seconds: float = 30.0  # each network operation of the conversation
    ca_file: str = ""  # PEM certificates to verify the server with (default: the system's)
    insecure: bool = False  # do not verify the server's TLS certificate


@dataclass(frozen=True)
class GitSyncSettings:
    """`git_sync:` of nagare.yaml: the DAG folder is kept equal to `branch` of `url` (its
    `subdirectory`, when given), fetched every `interval_seconds`. Credentials are never held
    here: `token_env` names the environment variable that holds an HTTPS token, `ssh_key_file`
    the private key of an SSH URL."""

    url: str
    branch: str = "main"
    interval_seconds: float = 60.0
    subdirectory: str = ""
    ssh_key_file: str = ""
    token_env: str = ""
    timeout_seconds: float = 120.0  # one git command (a fetch) at most


@dataclass(frozen=True)
class OidcSettings:
    """`oidc:` of nagare.yaml: single sign-on with an OpenID Connect provider (`auth_mode:
    oidc`). The client secret is never held here: `client_secret_env` names the environment
    variable that holds it (none for a public client, which PKCE alone protects)."""

    issuer: str  # the provider's issuer URL (discovery: ISSUER/.well-known/openid-configuration)
    client_id: str
    client_secret_env: str = ""
    client_auth: str = "post"  # how the secret is sent: post (in the form) or basic (HTTP Basic)
    redirect_url: str = ""  # "": http(s)://<the request's Host>/api/auth/oidc/callback
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    name_claim: str = "preferred_username"  # the user name (then email, then sub)
    role_claim: str = ""  # a claim holding a role name or a list of them (groups, roles)
    role_map: tuple[tuple[str, str], ...] = ()  # claim value -> role, in the order written
    default_role: str = ""  # the role of a user no mapping matched ("": refused)
    provider_name: str = ""  # the provider as the sign-in page names it ("through Example ID")
    ca_file: str = ""  # PEM certificates to verify the provider with (default: the system's)
    insecure: bool = False  # do not verify the provider's TLS certificate
    timeout_seconds: float = 10.0  # each request to the provider


@dataclass(frozen=True)
class AllowFailure:
    """`allow_failure`: a last attempt that fails (with one of `exit_codes`, when given) ends the
    task failed-but-allowed, which counts as a success downstream and for the run."""

    exit_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class TaskDef:
    task_id: str
    type: TaskType = TaskType.COMMAND
    command: str = ""
    depends_on: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float = 0
    retries: int = 0
    retry_delay_seconds: float = 0
    pool: str = "default"
    map_over: str = ""
    dag_id: str = ""
    image: str = ""
    workdir: str = ""
    volumes: tuple[str, ...] = ()
    resources: Resources | None = None
    run_as: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # trigger_dag: the target's parameters
    line: int = 0
    when: str = ""  # a jq condition over the task's context; false/null -> skipped
    output: str = ""  # `output: NAME`: the whole stdout becomes the output NAME
    with_item: str | None = None  # a with_items clone's item (JSON text), `.item` of its context
    secrets: tuple[SecretDef, ...] = ()
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    preconditions: tuple[str, ...] = ()
    allow_failure: AllowFailure | None = None
    retry_backoff: float = 1
    retry_max_delay_seconds: float = 0  # 0: no maximum
    retry_on_exit_codes: tuple[int, ...] = ()  # empty: every failure is retried
    retry_on_timeout: bool = True
    # The fields of its step type (http, mail, ssh, chat, dag, approval, wait), as parsed by
    # nagare/dagfile/steps.py; string values may hold templates (except the jq of RAW_STEP_KEYS).
    step: dict[str, Any] = field(default_factory=dict)

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def instance_pool(self) -> str:
        """The pool its task instances are in (WAIT_POOL for the steps that wait)."""
        return WAIT_POOL if self.type in WAITING_STEPS else self.pool

    @cached_property
    def templated(self) -> frozenset[str]:
        """The templated fields that hold a `{{ … }}` template (computed once per definition;
        the plain `{{item}}` of map tasks is substituted without the context)."""
        found = set()
        if has_template(self.command.replace("{{item}}", "")):
            found.add("command")
        for name in ("image", "workdir"):
            if has_template(getattr(self, name)):
                found.add(name)
        if any(has_template(v) for v in self.env.values()):
            found.add("env")
        if any(has_template(v) for v in self.volumes):
            found.add("volumes")
        if self.step and _holds_template(
            {k: v for k, v in self.step.items() if k not in RAW_STEP_KEYS}
        ):
            found.add("step")
        return frozenset(found)

    @cached_property
    def uses_context(self) -> bool:
        """Whether starting this task needs its context (templates or a condition)."""
        return bool(self.when or self.templated)


# Step fields that are jq themselves (a condition, extractions): never rendered as templates.
RAW_STEP_KEYS = frozenset({"output_jq", "match"})


def _holds_template(value: Any) -> bool:
    if isinstance(value, str):
        return has_template(value)
    if isinstance(value, dict):
        return any(_holds_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_template(v) for v in value)
    return False


class OverlapPolicy(StrEnum):
    """What a new run does when its DAG has `max_active_runs` active runs already."""

    QUEUE = "queue"  # wait (run status queued) until a slot frees, oldest first
    SKIP = "skip"  # recorded as skipped (a manual trigger is refused)
    LATEST = "latest"  # wait; older waiting runs are cancelled as superseded


class HandlerKind(StrEnum):
    """The events a DAG's `handler_on` reacts to, in the order their handlers run."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCEL = "cancel"
    EXIT = "exit"

    @property
    def task_id(self) -> str:
        """The reserved task id of this handler in a run."""
        return f"on_{self.value}"


HANDLER_TASK_IDS = frozenset(kind.task_id for kind in HandlerKind)


@dataclass(frozen=True)
class DagDef:
    dag_id: str
    tasks: tuple[TaskDef, ...]
    description: str = ""
    schedule: str = ""  # the first of `schedules` (kept for the API and old snapshots)
    timezone: str = ""
    catchup: bool = False
    env: dict[str, str] = field(default_factory=dict)
    trigger: TriggerDef | None = None
    file: str = ""
    params: tuple[ParamDef, ...] = ()
    secrets: tuple[SecretDef, ...] = ()
    schedules: tuple[str, ...] = ()  # every cron expression (empty: `schedule` alone)
    start_date: int | None = None  # epoch ms: no slot before it
    end_date: int | None = None  # epoch ms: no slot after it
    tags: tuple[str, ...] = ()
    max_active_runs: int = 0  # 0: unlimited
    overlap_policy: OverlapPolicy = OverlapPolicy.QUEUE
    timeout_seconds: float = 0  # the run's deadline (0: none)
    handler_on: dict[HandlerKind, TaskDef] = field(default_factory=dict)
    when: str = ""  # a jq condition over {dag, run, params}: false -> the run is skipped
    when_line: int = 0
    preconditions: tuple[str, ...] = ()  # commands: one failing -> the run is skipped
    # what a run returns to a calling `dag` step: NAME -> template, rendered when it succeeds
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def is_scheduled(self) -> bool:
        return self.schedule not in ("", "workflow_dispatch")

    @property
    def cron_expressions(self) -> tuple[str, ...]:
        """Every schedule of the DAG (a single `schedule` is a list of one)."""
        return self.schedules or ((self.schedule,) if self.is_scheduled else ())

    def task(self, task_id: str) -> TaskDef | None:
        return self._by_id.get(task_id)

    @cached_property
    def secret_sources(self) -> frozenset[str]:
        """The server environment variables its secrets (DAG's and tasks') are read from: no
        task inherits them (a task sees a value only under its secret's name)."""
        names = {secret.env for secret in self.secrets if secret.env}
        for task in self.tasks:
            names.update(secret.env for secret in task.secrets if secret.env)
        return frozenset(names)

    @cached_property
    def _by_id(self) -> dict[str, TaskDef]:
        """Tasks and handlers (on_success...) by id."""
        by_id = {task.task_id: task for task in self.handler_on.values()}
        by_id.update((task.task_id, task) for task in self.tasks)
        return by_id

    @cached_property
    def dependants(self) -> dict[str, tuple[str, ...]]:
        """Task id -> the tasks that depend on it directly."""
        result: dict[str, list[str]] = {}
        for task in self.tasks:
            for dep in task.depends_on:
                result.setdefault(dep, []).append(task.task_id)
        return {k: tuple(v) for k, v in result.items()}

    @cached_property
    def dependency_sets(self) -> dict[str, frozenset[str]]:
        """Task id -> its dependencies as a set (membership tests on wide fan-ins)."""
        return {task.task_id: frozenset(task.depends_on) for task in self.tasks}

    @cached_property
    def rank(self) -> dict[str, int]:
        """Task id -> its position in a topological order (dependencies first)."""
        return {tid: i for i, tid in enumerate(topological_order(self.tasks))}

    @cached_property
    def order(self) -> list[str]:
        return topological_order(self.tasks)

    @cached_property
    def map_task_ids(self) -> frozenset[str]:
        return frozenset(t.task_id for t in self.tasks if t.type is TaskType.MAP)

    @cached_property
    def map_allows_failure(self) -> bool:
        """Whether a map task of this DAG has `allow_failure` (its children's may count as
        successes)."""
        return any(t.allow_failure is not None for t in self.tasks if t.type is TaskType.MAP)

    @cached_property
    def map_sources(self) -> frozenset[str]:
        """Ids of tasks whose stdout feeds a `type: map` task."""
        return frozenset(t.map_over for t in self.tasks if t.type is TaskType.MAP)


def topological_order(tasks: tuple[TaskDef, ...] | list[TaskDef]) -> list[str]:
    """Task ids ordered so that every task comes after its dependencies (file order kept
    within a level; the members of a cycle come last)."""
    remaining = {t.task_id: set(t.depends_on) for t in tasks}
    order: list[str] = []
    done: set[str] = set()
    while remaining:
        ready = [tid for tid, deps in remaining.items() if deps <= done] or list(remaining)
        for tid in ready:
            order.append(tid)
            done.add(tid)
            del remaining[tid]
    return order


# ---------------------------------------------------------------- runs and tasks


@dataclass
class Run:
    run_id: str
    dag_id: str
    status: RunStatus
    trigger: Trigger
    execution_date: int
    conf: dict[str, str]
    created_at: int
    started_at: int | None = None
    completed_at: int | None = None
    dag_version: str = ""
    killed: bool = False
    warnings: int = 0  # tasks that failed with allow_failure
    task_counts: dict[str, int] = field(default_factory=dict)
    # the resolved run parameters of a DAG with `params:` (defaults filled in, typed; `conf`
    # holds their environment form); empty for a DAG without, whose values are only in `conf`
    params: dict[str, Any] = field(default_factory=dict)
    has_outputs: bool = False  # some task of the run published outputs
    reason: str = ""  # why a rule skipped, cancelled or failed it (condition, overlap, deadline)
    held: bool = False  # queued by its DAG's overlap policy: its tasks wait for a free slot
    deadline_at: int | None = None  # epoch ms: the run fails "timed out" at this moment
    handling: bool = False  # its status is final; its handler tasks are still running
    failed_tasks: tuple[str, ...] = ()  # set when it ends: what its handlers are told
    parent: tuple[str, str] | None = None  # (run id, task id) of the `dag` step that called it
    outputs: dict[str, Any] | None = None  # its DAG's `outputs:`, rendered when it succeeded


@dataclass
class AttemptMetrics:
    duration_ms: int = 0
    cpu_user_ms: int = 0
    cpu_system_ms: int = 0
    peak_memory_bytes: int = 0
    exit_code: int | None = None
    executor_type: str = ExecutorType.LOCAL


@dataclass
class Attempt:
    task_instance_id: str
    attempt: int
    status: TaskStatus
    worker: str = "local"
    started_at: int | None = None
    completed_at: int | None = None
    exit_code: int | None = None
    timed_out: bool = False
    error: str = ""
    pid: int | None = None
    metrics: AttemptMetrics | None = None


@dataclass
class TaskInstance:
    id: str
    run_id: str
    task_id: str
    base_task_id: str
    status: TaskStatus
    attempt: int = 0
    max_attempts: int = 1
    pool: str = "default"
    map_index: int | None = None
    item: str | None = None  # the map item as JSON text
    worker: str = ""
    command: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    queued_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    ready_at: int | None = None
    output_tail: str = ""
    message: str = ""
    position: int = 0
    metrics: AttemptMetrics | None = None
    outputs: dict[str, Any] | None = None  # published by its successful attempt
    allowed_failure: bool = False
    child_run_id: str = ""  # a `dag` step: the run its current attempt started


class TaskState(NamedTuple):
    """The few fields of a task instance that run planning reads (cheap to load in bulk)."""

    id: str
    run_id: str
    task_id: str
    status: TaskStatus
    pool: str
    position: int
    allowed_failure: bool = False


class InstanceLike(Protocol):
    """What planning needs of a task instance: a TaskState or a full TaskInstance."""

    @property
    def id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def status(self) -> TaskStatus: ...
    @property
    def pool(self) -> str: ...
    @property
    def position(self) -> int: ...
    @property
    def allowed_failure(self) -> bool: ...


STATUS_BY_VALUE = {s.value: s for s in TaskStatus}


# ---------------------------------------------------------------- executor seam


@dataclass(frozen=True)
class Assignment:
    """Everything an executor needs to run one attempt; no store, no HTTP."""

    task_instance_id: str
    run_id: str
    dag_id: str
    task_id: str
    attempt: int
    command: str
    env: dict[str, str]
    timeout_seconds: float = 0
    image: str = ""
    workdir: str = ""
    volumes: tuple[str, ...] = ()
    resources: Resources | None = None
    capture_stdout: bool = False
    run_as: str = ""  # the user the task runs as ("" = the server's own)
    output_file: str = ""  # where $NAGARE_OUTPUT points on this host ("" = the executor picks)
    secrets: tuple[str, ...] = ()  # secret values in `env`: masked in every log line
    step_type: str = TaskType.COMMAND  # which executor runs it (command: local or Docker)
    step: dict[str, Any] = field(default_factory=dict)  # its step fields, templates rendered


@dataclass
class Outcome:
    """What an executor returns when an attempt ends."""

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    error: str = ""
    metrics: AttemptMetrics = field(default_factory=AttemptMetrics)
    stdout: str | None = None
    outputs: dict[str, str] | None = None  # what the attempt wrote to $NAGARE_OUTPUT
    skipped: str = ""  # the reason it was skipped before it ran (a `when:` that was false)

    @property
    def succeeded(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.cancelled
            and not self.error
            and not self.skipped
        )


@dataclass
class Claim:
    """A task instance a worker slot now owns, with the attempt number it must report and the
    DAG version its run follows."""

    task: TaskInstance
    run: Run
    attempt: int
    dag: DagDef

    @property
    def definition(self) -> TaskDef | None:
        """The task's definition in its run's DAG version (None if it is not there)."""
        return self.dag.task(self.task.base_task_id)


@dataclass
class AttemptFinish:
    """How one attempt ended, as the store records it."""

    task_instance_id: str
    attempt: int
    status: TaskStatus  # the task's next status: success | failed | up_for_retry | queued
    attempt_status: TaskStatus  # the attempt row's own status
    metrics: AttemptMetrics
    now: int
    timed_out: bool = False
    message: str = ""
    output_tail: str = ""
    ready_at: int | None = None
    extra_attempts: int = 0
    outputs: dict[str, str] | None = None  # published (a success only)
    allowed_failure: bool = False

    @property
    def retry_at(self) -> int | None:
        """When the task may run again, if this attempt put it up for retry."""
        return self.ready_at if self.status is TaskStatus.UP_FOR_RETRY else None


@dataclass(frozen=True)
class LogChunk:
    """A run of consecutive lines of one attempt's log as stored in the database (PostgreSQL:
    every master reads them). `text` holds lines `first_line`..`last_line`, each ending in a
    newline; `meta` their `.lines` records (`<line> <epoch ms> <o|e|n>` per line, the first at
    `first_line`). A chunk with no line (`last_line == first_line - 1`) marks the log closed
    by the master that wrote it: what precedes it is the whole log so far."""

    run_id: str
    task_instance_id: str
    attempt: int
    first_line: int
    last_line: int
    text: str = ""
    meta: str = ""

    @property
    def closes(self) -> bool:
        return self.last_line < self.first_line
