"""The composition root: builds every part once, wires their callbacks, starts and stops them."""

from __future__ import annotations

import logging
import os
import resource
import shlex
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from nagare import __version__
from nagare.access import ACCOUNT_MODES, all_roles
from nagare.accounts import Accounts
from nagare.clock import now_ms
from nagare.cluster.coordinator import Coordinator, PoolWorkers
from nagare.config import Config
from nagare.dag_folder import DagFolder
from nagare.dagfile import parse_handlers
from nagare.engine.assignment import run_as_errors
from nagare.engine.expressions import compile_errors as webhook_compile_errors
from nagare.engine.expressions import condition
from nagare.errors import ConfigError
from nagare.executors import Executor
from nagare.executors.local import LocalExecutor
from nagare.executors.reactor import Reactor
from nagare.executors.spawn import kill_orphan_group, run_command
from nagare.leadership import (
    LIVE_SECONDS,
    Leadership,
    digest_mismatches,
    master_id,
    previous_incarnations,
    stable_key,
)
from nagare.liveness import (
    Health,
    Heartbeat,
    Heartbeats,
    assess,
    short_error,
)
from nagare.logs import LogFiles
from nagare.models import (
    LOCAL_WORKER,
    Assignment,
    DagDef,
    HandlerKind,
    TaskDef,
    TaskState,
    TaskType,
    Trigger,
)
from nagare.pools import WorkerPools
from nagare.retention import RetentionSweep
from nagare.run_checks import RunPreconditions
from nagare.runs import RunService
from nagare.scheduler import Scheduler
from nagare.store import MasterRecord, Store, WakeChannel, text_digest
from nagare.waits import Waits
from nagare.webhooks import WebhookService
from nagare.wiring import StepExecutors, Supervisor, docker_executor, start_loop

if TYPE_CHECKING:
    from nagare.executors.docker import DockerExecutor
    from nagare.git_sync import GitSync
    from nagare.http.accounts_api import BuiltinAuthenticator
    from nagare.http.api import Api
    from nagare.http.gate import Limits
    from nagare.http.server import NagareHTTPServer
    from nagare.http.static import StaticFiles
    from nagare.log_shipping import LogShipper
    from nagare.metrics import LiveState, MetricsService, PoolInfo
    from nagare.sso import SingleSignOn

log = logging.getLogger("nagare")
STOP_REQUESTS_SECONDS = 5.0  # a stop waits this long for the requests being answered
EXEC_SAFETY_SECONDS = 1.0  # `wait_for_run` looks at its run at least this often


class App:
    api: Api  # the HTTP side, built only by a server (`serve_http`)
    metrics: MetricsService

    def __init__(
        self,
        config: Config,
        *,
        serve_http: bool = True,
        schedule: bool = True,
        line_sink: Callable[[str, str, str], None] | None = None,
        dag_files: Callable[[str], bool] | None = None,
    ) -> None:
        self.config = config
        # two phases of a stop: `stopping` ends the loops that face users and the folder; the
        # engine (dispatcher, scheduler, checkpoints) stops once running tasks are recorded
        self.stopping = threading.Event()
        self._engine_stop = threading.Event()
        self.heartbeats = Heartbeats()  # the loops' progress, for /api/health
        self.store = Store(config.db)
        self.logs = LogFiles(config.resolved_logs_dir)
        self.reactor = Reactor()  # owned by the pools' dispatcher thread
        self.local = LocalExecutor(self.reactor, max_line_bytes=config.max_log_line_bytes)
        self.steps = StepExecutors(config, self.reactor, self.local)
        self._docker: DockerExecutor | None = None  # created by the first container task
        self._docker_lock = threading.Lock()
        self._leftover_containers: dict[tuple[str, int], str] = {}
        self.folder = DagFolder(
            config.dags,
            on_change=self._dags_changed,
            extra_check=self._check_dag,
            max_file_bytes=config.max_dag_file_bytes,
            default_handlers=_default_handlers(config),
            include=dag_files,
        )
        self.pools = WorkerPools(
            self.store,
            self.logs,
            config.worker_pools,
            self.reactor,
            self._executor_for,
            on_finished=self._tasks_finished,
            kill_leftover=kill_orphan_group,
            line_sink=line_sink,
            run_as=config.pool_run_as,
        )
        self.coordinator = Coordinator(
            self.store,
            self.logs,
            config.lease_timeout_seconds,
            on_finished=self._tasks_finished_elsewhere,
            on_queued=self._tasks_queued,
            run_as=config.pool_run_as,
        )
        self.scheduler = Scheduler(
            self.store,
            self.folder,
            self.logs,
            config,
            on_queued=self._tasks_queued,
            fire_schedules=schedule,
            condition=condition,
        )
        self.run_checks = RunPreconditions(
            self.reactor, self.local, os.environ, self.scheduler.preconditions_done
        )
        self.scheduler.check_preconditions = self.run_checks.check
        self.runs = RunService(
            self.store,
            self.folder,
            config.max_catchup_runs,
            wake=self.scheduler.wake,
            kill_local=self._kill,
        )
        self.scheduler.expire = self.runs.expire  # a run's deadline passed
        self.waits = Waits(self.store, self.logs, now_ms, self._tasks_finished_elsewhere)
        self.waits.children = self.runs
        self.scheduler.waits = self.waits
        self.runs.on_waits_cancelled = self.waits.cancelled
        self.accounts = Accounts(self.store, all_roles(config.roles), config.session_hours)
        self.webhooks = WebhookService(
            self.store,
            self.folder,
            lambda dag_id, conf: self.runs.trigger(dag_id, conf, Trigger.WEBHOOK),
            delivery_header=config.webhook_delivery_header,
            emit=self.waits.emit,  # a trigger with `emit_event`
        )
        self.git_sync = _git_sync(config)
        self.pools.hidden_env = self._hidden_env
        self.retention = RetentionSweep(self.store, self.logs, config.retention_days)
        self.leadership = self._leadership()
        self.http: NagareHTTPServer | None = None
        self.wakeups: WakeChannel | None = None  # to and from the other masters (PostgreSQL)
        self.log_shipper: LogShipper | None = None  # logs to the other masters (PostgreSQL)
        if serve_http:  # `nagare exec` imports none of the HTTP side
            self.api = self._build_api(config)
            self.http = _http_server(config, self.api)
            self.scheduler.leads = self.retention.leads = lambda: self.leadership.leads
            self.wakeups = self.store.db.wake_channel(self.leadership.me.master_id)
            if self.leadership.lock.shared:
                self._lease_local_attempts()
            if self.wakeups is not None:
                self.wakeups.on_event = self._woken_elsewhere
            if self.leadership.lock.shared:
                self._share_logs()
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()  # wakes `wait_for_run`

    def _share_logs(self) -> None:
        """On a database several masters share, this master ships its logs' lines there and
        reads the lines of the others' (ARCHITECTURE.md, Logs from any master)."""
        from nagare.log_shipping import LogShipper, SharedLogs

        self.log_shipper = LogShipper(self.store.log_chunks, on_shipped=self._logs_grew)
        self.logs.shared = SharedLogs(self.store.log_chunks)
        self.logs.watcher = self.log_shipper

    def _logs_grew(self, keys: list[str]) -> None:
        """(the log shipper's thread) Followers of these logs on other masters look now."""
        wakeups = self._listened()
        if wakeups is not None and keys:
            wakeups.publish("log", *keys)

    def _build_api(self, config: Config) -> Api:
        """The API, its routes and the services only they use (imported here: see
        ARCHITECTURE.md, Start-up and footprint)."""
        from nagare.dag_edits import DagEdits
        from nagare.http.accounts_api import AccountsApi
        from nagare.http.api import Api, Services
        from nagare.http.audit_api import AuditApi
        from nagare.http.cluster_api import ClusterApi
        from nagare.http.dagpage_api import DagPageApi
        from nagare.http.editor_api import EditorApi
        from nagare.http.git_api import GitApi
        from nagare.http.masters_api import MastersApi
        from nagare.http.metrics_api import MetricsApi
        from nagare.http.sso_api import SsoApi
        from nagare.http.waits_api import WaitsApi
        from nagare.http.webhooks_api import WebhooksApi
        from nagare.metrics import MetricsService

        api = Api(
            Services(
                self.store,
                self.runs,
                self.folder,
                self.logs,
                config,
                self.pool_info,
                self.stopping,
                self.health,
                authenticator=self._authenticator(),
                audit=self.store.audit.record,
                master=lambda: {
                    "id": self.leadership.me.master_id,
                    "leader": self.leadership.leads,
                },
                digest_mismatch=lambda: digest_mismatches(self.leadership.masters()),
            ),
            _static_files(),
        )
        api.add_routes(
            AccountsApi(
                self.accounts,
                config.auth_mode,
                bool(config.tls_cert),
                sso_name=config.oidc.provider_name if config.oidc is not None else "",
            ).routes()
        )
        self.metrics = MetricsService(self.store, self.folder, live=self._live_state)
        api.add_routes(MetricsApi(self.metrics).routes())
        api.add_routes(WebhooksApi(self.webhooks).routes())
        api.add_routes(WaitsApi(self.waits).routes())
        edits = DagEdits(self.folder, config.allow_dag_edits, config.max_dag_file_bytes)
        api.add_routes(EditorApi(edits).routes())
        api.add_routes(DagPageApi(self.store.history, self.folder).routes())
        api.add_routes(ClusterApi(self.coordinator, config.max_log_line_bytes).routes())
        api.add_routes(GitApi(self.git_sync).routes())
        api.add_routes(
            SsoApi(
                _single_sign_on(config),
                self.accounts,
                self.accounts.session_cap_ms // 1000,  # the cookie's life (as a sign-in's)
                bool(config.tls_cert),
            ).routes()
        )
        api.add_routes(AuditApi(self.store.audit).routes())
        leadership = self.leadership
        api.add_routes(
            MastersApi(
                leadership.me.master_id,
                lambda: leadership.leads,
                leadership.masters,
                digest_mismatches,
            ).routes()
        )
        return api

    # ------------------------------------------------------------ wiring

    def _leadership(self) -> Leadership:
        """This master's row and its part in leading (ARCHITECTURE.md, Several masters)."""
        hostname = socket.gethostname()
        # the same on every start of this master (host, port, folder): its earlier starts'
        # attempts are recognised as its own and closed at once (`start`)
        self._stable_key = stable_key(hostname, self.config.listen, self.config.data_dir)
        me = MasterRecord(
            master_id=master_id(self._stable_key, hostname, os.getpid(), os.urandom(2).hex()),
            hostname=hostname,
            url="",  # known once the HTTP server is bound (`start`)
            started_at=now_ms(),
        )
        leadership = Leadership(
            self.store.masters,
            self.store.db.leader_lock(),
            me,
            lambda: self.folder.snapshot.dags,
            text_digest,
        )
        leadership.on_gained = lambda: self.scheduler.wake(None)  # look at the cron slots now
        leadership.on_joined = self._welcome
        return leadership

    def _authenticator(self) -> BuiltinAuthenticator | None:
        """Users and keys (auth_mode builtin, oidc); None: the one API key, or none."""
        from nagare.http.accounts_api import BuiltinAuthenticator

        if self.config.auth_mode not in ACCOUNT_MODES:
            return None
        return BuiltinAuthenticator(self.accounts, self.config.api_key)

    def _check_dag(self, dag: DagDef) -> list[tuple[int, str, str]]:
        """Load-time checks of later layers: jq expressions compile; `pool_run_as` users."""
        return webhook_compile_errors(dag) + run_as_errors(dag, self.config.pool_run_as)

    def _hidden_env(self) -> set[str]:
        """Server variables kept out of the tasks' environment: webhook secrets, the SMTP
        password of `mail` steps and single sign-on's client secret."""
        hidden = set(self.webhooks.secret_variables())
        smtp, oidc = self.config.smtp, self.config.oidc
        if smtp is not None and smtp.password_env:
            hidden.add(smtp.password_env)
        if oidc is not None and oidc.client_secret_env:
            hidden.add(oidc.client_secret_env)
        return hidden

    def _executor_for(self, assignment: Assignment) -> Executor:
        if assignment.step_type != TaskType.COMMAND:
            return self.steps(assignment.step_type)
        return self._docker_executor() if assignment.image else self.local

    def _docker_executor(self) -> DockerExecutor:
        """Built on first use: a server that never runs a container never loads the SDK. On
        that first use nothing of this server can be running in a container yet, so every
        container with its owner label is a leftover of an earlier (crashed) server."""
        with self._docker_lock:
            if self._docker is None:
                self._docker = docker_executor(self.config, self._container_owner(), self.reactor)
                self._leftover_containers = self._docker.cleanup_orphans()
            return self._docker

    def _container_owner(self) -> str:
        shared = self.leadership.lock.shared
        me = (self._stable_key or self.leadership.me.master_id) if shared else ""
        return container_owner(socket.gethostname(), self.config.db_label, me)

    def _remove_leftover_containers(self, earlier: list[str]) -> dict[tuple[str, int], str]:
        """Before the pools start, when a container task's attempt was left running: remove
        the leftovers now so that recovery can say so (otherwise the SDK waits until needed)."""
        workers = (self.pools.worker, *earlier)
        for attempt in (a for w in workers for a in self.store.tasks.running_attempts(w)):
            task = self.store.tasks.by_id(attempt.task_instance_id)
            run = self.store.runs.get(task.run_id, counts=False) if task else None
            if task is None or run is None:
                continue
            definition = self.store.dags.version(run.dag_version).task(task.base_task_id)
            if definition is not None and definition.image:
                self._docker_executor()
                return self._leftover_containers
        return {}

    def _tasks_queued(self, queued: dict[str, int]) -> None:
        self.pools.notify(queued)
        self.coordinator.notify(queued)
        wakeups = self._listened()
        if wakeups is not None:  # the other masters' pools and workers may take them
            wakeups.publish("queued", *(f"{pool}={n}" for pool, n in queued.items()))

    def _kill(self, task_instance_id: str) -> bool:
        """Stop a running task wherever it runs: on a remote worker, here, or (told through
        the wake-ups) on another master."""
        here = self._kill_here(task_instance_id)
        if self.wakeups is not None:  # a remote worker may be polling another master
            self.wakeups.publish("kill", task_instance_id)
        return here

    def _kill_here(self, task_instance_id: str) -> bool:
        return self.coordinator.cancel(task_instance_id) or self.pools.cancel(task_instance_id)

    def _tasks_finished(
        self, finished: list[tuple[str, str, int | None]], states: Mapping[str, TaskState]
    ) -> None:
        """(dispatcher thread) It settles the runs of its ended attempts itself, with the
        states their close returned."""
        self.scheduler.settle_finished(finished, states)
        self._announce_finished(finished)

    def _tasks_finished_elsewhere(self, finished: list[tuple[str, str, int | None]]) -> None:
        """(an HTTP or the lease reaper's thread) The scheduler thread settles their runs: a
        scheduler pass runs only in the scheduler and the dispatcher threads."""
        self.scheduler.hand_over(finished)
        self._announce_finished(finished)

    def _announce_finished(self, finished: list[tuple[str, str, int | None]]) -> None:
        """Other masters holding a view of these runs refresh it (a join whose other branch
        ended there is promoted at once, by whichever master sees both ends first)."""
        wakeups = self._listened()
        if wakeups is not None and finished:
            wakeups.publish("done", *(f"{run_id} {task}" for run_id, task, _ in finished))

    def _listened(self) -> WakeChannel | None:
        """The wake-up channel when another master listens (one started less than a second
        ago may be missed: its safety sweep catches up)."""
        return self.wakeups if self.leadership.others > 0 else None

    def _woken_elsewhere(self, kind: str, args: list[str]) -> None:
        """(the wake-ups thread) Another master queued tasks, ended some, or killed one."""
        if kind == "queued":
            queued = dict(_pool_count(arg) for arg in args)
            self.pools.notify(queued)
            self.coordinator.notify(queued)
        elif kind == "done":
            ended = [a.partition(" ") for a in args]
            self.scheduler.hand_over((run_id, task, None) for run_id, _, task in ended)
            self.coordinator.ended_elsewhere([task for _, _, task in ended])
        elif kind == "kill":
            for task_instance_id in args:
                self._kill_here(task_instance_id)
        elif kind == "joined" and self.leadership.me.master_id in args:
            self._catch_up()
        elif kind == "log":
            for key in args:
                self.logs.hub.poke(key)

    def _welcome(self, joined: list[str]) -> None:
        """(the leadership loop) Masters this one sees for the first time: until now it sent
        them no wake-up (`_listened`), so they look again at what those would have told."""
        if self.wakeups is not None:
            self.wakeups.publish("joined", *joined)

    def _catch_up(self) -> None:
        """(the wake-ups thread) Another master saw this one for the first time: what it did
        before was not announced here; look at the queues and every active run now."""
        everything = dict.fromkeys(self.config.worker_pools, 1)
        self.pools.notify(everything)
        self.coordinator.notify({"*": 1})  # (any pool: the waiting polls look again)
        self.scheduler.sweep_now()

    def _dags_changed(self) -> None:
        self.scheduler.wake(None)

    def _live_state(self) -> LiveState:
        from nagare.metrics import LiveState

        workers = Counter(w.status for w in self.coordinator.workers())
        return LiveState(self.pool_info(), self.scheduler.last_lag_ms, dict(workers))

    def pool_info(self) -> list[PoolInfo]:
        from nagare.metrics import PoolInfo

        counts = self.store.tasks.pool_counts()
        busy = self.pools.busy()
        remote = self.coordinator.pool_workers()
        names = sorted(set(self.config.worker_pools) | set(counts) | set(remote))
        pools = []
        for name in names:
            workers = remote.get(name, PoolWorkers())
            pools.append(
                PoolInfo(
                    pool=name,
                    local_slots=self.config.worker_pools.get(name, 0),
                    busy_slots=busy.get(name, 0),
                    queued=counts.get(name, {}).get("queued", 0),
                    running=counts.get(name, {}).get("running", 0),
                    remote_workers=workers.total,
                    remote_workers_online=workers.online,
                    remote_capacity=workers.capacity,
                )
            )
        return pools

    # ------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self.http.port if self.http else 0

    def start(self, poll_interval: float = 0.5) -> None:
        """Recover what a crash left running, then start every long-lived loop, each an object's
        `run(stop)` in a thread of its own (ARCHITECTURE.md, Threading model)."""
        self.folder.scan()
        self._listen()
        earlier = self._earlier_starts()
        for run_id in self.pools.recover(self._remove_leftover_containers(earlier), earlier):
            self.scheduler.wake(run_id)
        self.waits.recover()  # `dag` steps whose child run ended (or never started) meanwhile
        checkpointer = self.store.db.checkpointer
        if checkpointer is not None:  # its loop starts at the 32nd commit
            checkpointer.start_with(
                lambda: self._spawn(
                    "checkpoint", checkpointer.run, self._engine_stop, checkpointer.liveness
                )
            )
        if self.pools.has_slots:
            self._spawn("pools", self.pools.run, self._engine_stop, self.pools.liveness)
        if self.http is not None:
            self.coordinator.start(others_live=self._other_masters_live())
            self._spawn("leases", self.coordinator.run, heartbeat=self.coordinator.liveness)
        if self.http is not None:  # a server takes its part in leading before cron can fire
            self._first_turn()
            if self.leadership.lock.shared:  # several masters may share the database
                # until the engine stops: its attempts' leases are renewed while they drain
                self._spawn(
                    "leadership",
                    self.leadership.run,
                    self._engine_stop,
                    heartbeat=self.leadership.liveness,
                )
        if self.wakeups is not None:
            self._spawn("wake-ups", self.wakeups.run, self._engine_stop)
        if self.log_shipper is not None:  # until the engine stops: the last lines go too
            shipper = self.log_shipper
            self._spawn("log-shipper", shipper.run, self._engine_stop, shipper.liveness)
        self._spawn("scheduler", self.scheduler.run, self._engine_stop, self.scheduler.liveness)
        self._spawn("dag-folder", self.folder.run, heartbeat=self.folder.liveness)
        if self.git_sync is not None and self.http is not None:
            self._spawn("git-sync", self.git_sync.run, heartbeat=self.git_sync.liveness)
        if self.http is not None:  # a server keeps history bounded; `nagare exec` does not
            self._spawn("retention", self.retention.run, heartbeat=self.retention.liveness)
        if self.http is not None:
            self.http.poll_interval = poll_interval
            self._spawn("http", self.http.run)
            log.info(
                "Nagare %s serving on %s://%s:%d (DAGs: %s, database: %s)",
                __version__,
                "https" if self.config.tls_cert else "http",
                self.config.listen[0],
                self.http.port,
                self.config.dags,
                self.config.db_display,
            )
        self._warn_open_api()
        self._warn_no_users()
        self._warn_open_cluster()
        self._warn_open_volumes()

    def _lease_local_attempts(self) -> None:
        """On a database several masters share, this master's attempts are its own
        ("local@<id>") and leased like a remote worker's: the leadership loop renews them every
        second, and once this master dies any other closes them (the retry policy decides)."""
        worker = f"{LOCAL_WORKER}@{self.leadership.me.master_id}"
        lease_ms = int(self.config.lease_timeout_seconds * 1000)
        self.pools.worker, self.pools.lease_ms = worker, lease_ms

        def renew(now: int) -> None:
            self.store.workers.renew_all(worker, now + lease_ms)

        self.leadership.on_beat = renew

    def _listen(self) -> None:
        """Wake-ups from the other masters are heard before this master claims a task or
        registers (a kill of a task it claims, a run another master ends)."""
        if self.wakeups is None:
            return
        try:
            self.wakeups.listen()
        except Exception as exc:  # its loop tries again (and the safety sweeps catch up)
            log.warning("could not listen for the other masters' wake-ups: %s", short_error(exc))

    def _earlier_starts(self) -> list[str]:
        """On a shared database: the worker names ("local@<id>") of this master's earlier
        starts (same host, port and folder) that left attempts open or a row behind. They are
        dead (this start holds their port), so their attempts are closed now rather than when
        their leases run out, and their rows go; another master's are never touched (nor
        anything by `nagare exec`, which holds no port)."""
        if self.http is None or not self.leadership.lock.shared:
            return []
        me = self.leadership.me.master_id
        ids = self.store.tasks.running_masters()
        ids |= {m.master_id for m in self.store.masters.seen_since(0)}
        earlier = previous_incarnations(ids, self._stable_key, me)
        for old in earlier:
            log.info("closing what this master's earlier start %s left open", old)
            self.store.masters.forget(old)
        return [f"{LOCAL_WORKER}@{old}" for old in earlier]

    def _other_masters_live(self) -> bool:
        """Whether another master shares the database now (on SQLite: never; this master's
        earlier starts are forgotten by then)."""
        if not self.leadership.lock.shared:
            return False
        me = self.leadership.me.master_id
        since = now_ms() - int(LIVE_SECONDS * 1000)
        return any(m.master_id != me for m in self.store.masters.seen_since(since))

    def _first_turn(self) -> None:
        """Register this master (its URL now that the port is bound) and try the leader lock."""
        assert self.http is not None
        host = self.config.listen[0]
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        scheme = "https" if self.config.tls_cert else "http"
        me = self.leadership.me
        self.leadership.me = replace(me, url=f"{scheme}://{host}:{self.http.port}")
        try:
            self.leadership.turn()
        except Exception as exc:  # the loop tries again every second
            log.warning("could not register this master: %s", short_error(exc))

    def _spawn(
        self,
        name: str,
        loop: Callable[[threading.Event], None],
        stop: threading.Event | None = None,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        """Start a loop; its heartbeat (if it beats) is what `/api/health` reports."""
        if heartbeat is not None:
            self.heartbeats.add(heartbeat)
        supervisor = Supervisor(name, loop, stop or self.stopping, heartbeat, self.stopping)
        self._threads.append(start_loop(name, supervisor.run))

    def health(self, now: float | None = None) -> Health:
        """How the background loops are (pure `assess` over their heartbeats)."""
        return assess(self.heartbeats.beats(), time.monotonic() if now is None else now)

    def _warn_open_api(self) -> None:
        if self.http is not None and not self.config.api_key and self.config.auth_mode == "key":
            log.warning(
                "api_key is not configured: the API is open to anyone who can reach "
                "this port (set --api-key, NAGARE_API_KEY or api_key in nagare.yaml)"
            )

    def _warn_no_users(self) -> None:
        """The first start with users and no user yet: how to add the first admin (there is
        never a default password)."""
        if self.config.auth_mode not in ACCOUNT_MODES or not self.accounts.needs_first_admin():
            return
        log.warning(
            "auth_mode is %s and there is no user yet: add the first admin on this machine "
            "with: python3 nagare.pyz users add admin --role admin --db %s",
            self.config.auth_mode,
            shlex.quote(self.config.db_display),  # a URL's password never shows
        )

    def _warn_open_cluster(self) -> None:
        if self.config.auth_mode in ACCOUNT_MODES:  # then workers need a token to join
            return
        if self.http is not None and not self.config.token and not self.config.api_key:
            log.warning(
                "neither token nor api_key is configured: anyone who can reach this port can "
                "join as a worker and receive tasks (set --token, NAGARE_TOKEN or token in "
                "nagare.yaml, and give workers the same --token)"
            )

    def _warn_open_volumes(self) -> None:
        dags = self.folder.snapshot.dags.values()
        if not self.config.docker_volume_roots and any(t.volumes for d in dags for t in d.tasks):
            log.warning(
                "docker_volume_roots is not configured: container tasks may mount any host "
                "path (set docker_volume_roots in nagare.yaml to the folders they may use)"
            )

    def stop(self) -> None:
        """Graceful stop: no new requests or claims, running tasks get the grace period, then
        are killed and put back to `queued` for the next start."""
        if self.stopping.is_set():
            return
        log.info(
            "shutting down (grace period %.0fs for running tasks)",
            self.config.shutdown_grace_seconds,
        )
        self.stopping.set()
        self.coordinator.stop()
        if self.http is not None:
            self.http.shutdown()
        interrupted = self.pools.shutdown(self.config.shutdown_grace_seconds)
        if interrupted:
            log.warning(
                "%d running task(s) were interrupted and will run again on the next start",
                len(interrupted),
            )
        self._engine_stop.set()
        if self.wakeups is not None:
            self.wakeups.wake()
        self.pools.stop_accepting()
        self.scheduler.stop()
        if self.store.db.checkpointer is not None:
            self.store.db.checkpointer.wake()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.http is not None:
            self.http.server_close()
            if not self.http.requests.wait_idle(STOP_REQUESTS_SECONDS):
                log.warning("requests still being answered after %.0fs", STOP_REQUESTS_SECONDS)
        if self.wakeups is not None:
            self.wakeups.close()
        self.local.close()  # its guardian (if a task ever ran) exits and is reaped
        if self._docker is not None:
            self._docker.close()
        self.store.close()

    def wait_for_run(
        self, run_id: str, tick: Callable[[], None] | None = None, every: float | None = None
    ) -> str:
        """Block until the run finished, its handlers included; returns its status (for
        `nagare exec`). The scheduler's `on_run_ended` wakes the wait; the run row is the
        truth, looked at on each wake-up, and at least every `every` seconds (default
        EXEC_SAFETY_SECONDS, a safety net) when `tick` (a progress display) is called too."""
        self.scheduler.on_run_ended = lambda _run_id: self._wake.set()
        while not self.stopping.is_set():
            self._wake.clear()
            current = self.store.runs.get(run_id, counts=False)
            if tick is not None:
                tick()
            if current is not None and current.status.terminal and not current.handling:
                return str(current.status)
            self._wake.wait(every or EXEC_SAFETY_SECONDS)
        return "interrupted"


def _pool_count(arg: str) -> tuple[str, int]:
    """`pool=n` of a "queued" wake-up."""
    pool, _, count = arg.rpartition("=")
    return pool, int(count) if count.isdigit() else 1


def _git_sync(config: Config) -> GitSync | None:
    """The loop that keeps the DAGs folder equal to a git branch; its cache (a bare repository
    and the checkouts) lives in the server's data folder (`Config.data_dir`). Imported only when
    `git_sync:` is set: a
    server without it never loads the module."""
    if config.git_sync is None:
        return None
    from nagare.git_sync import GitSync

    cache = os.path.join(config.data_dir, "git-sync")
    return GitSync(config.git_sync, config.dags, cache, run_command)


def _single_sign_on(config: Config) -> SingleSignOn | None:
    """The OpenID Connect relying party of `auth_mode: oidc`. Imported only then."""
    if config.auth_mode != "oidc" or config.oidc is None:
        return None
    from nagare.sso import SingleSignOn

    return SingleSignOn(config.oidc, os.environ)


def _default_handlers(config: Config) -> dict[HandlerKind, TaskDef]:
    """`default_handler_on` of the settings, checked like a DAG file's `handler_on`."""
    handlers, errors = parse_handlers(config.default_handler_on)
    if errors:
        problems = [f"default_{e.field}: {e.message}" for e in errors]
        raise ConfigError(f"{config.config}: " + "; ".join(problems))
    return handlers


def _http_server(config: Config, api: Api) -> NagareHTTPServer:
    from nagare.http.server import NagareHTTPServer, tls_context

    return NagareHTTPServer(
        config.listen,
        api,
        config.max_body_bytes,
        tls_context(config.tls_cert, config.tls_key),
        _http_limits(config),
    )


def _http_limits(config: Config) -> Limits:
    from nagare.http.gate import Limits, affordable_connections

    """The connection limits, `max_connections` lowered to what the open-file limit holds."""
    wanted = Limits(
        config.max_connections, config.reserved_connections, config.request_timeout_seconds
    )
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return wanted
    affordable = affordable_connections(wanted, soft)
    if affordable < wanted.max_connections:
        log.warning(
            "max_connections lowered from %d to %d: the open-file limit is %d (raise it with "
            "ulimit -n)",
            wanted.max_connections,
            affordable,
            soft,
        )
    return Limits(affordable, wanted.reserved_connections, wanted.request_seconds)


def _static_files() -> StaticFiles:
    """The dashboard's files, found on the first request for one."""
    from nagare.http.static import StaticFiles
    from nagare.resources import asset_root

    return StaticFiles(lambda: asset_root("web_static"))


def container_owner(hostname: str, db_label: str, master: str) -> str:
    """The owner label of a server's containers: its host and database, and on a database
    several masters share also the master (`master`: its stable key, else this start's id),
    so that one master's clean-up of leftovers never removes another's on the same host."""
    owner = f"{hostname}:{db_label}"
    return f"{owner}:{master}" if master else owner
