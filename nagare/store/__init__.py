"""The store: the only code that speaks SQL. Every state change is one short transaction of the
form `UPDATE ... WHERE id=? AND status IN (...)` with the row count checked (compare-and-set).

`Store` is composed of parts, one per kind of record, sharing one `Database`; SQL steps that
several parts run inside their own transactions (claiming queued tasks, closing attempts) are
functions over a connection (`store/tasks.py`). Services never see this module's insides: each
declares a Protocol of the parts and methods it calls.
"""

from __future__ import annotations

from nagare.store.accounts import KeyRecord, KeyStore, SessionStore, UserRecord, UserStore
from nagare.store.audit import AuditStore
from nagare.store.dags import DagStore, text_digest
from nagare.store.db import (
    Database,
    DatabaseError,
    LeaderLock,
    StorageFull,
    WakeChannel,
    open_database,
)
from nagare.store.deliveries import DeliveryStore
from nagare.store.history import DAY_MS, DayCount, Grid, GridCell, GridRun, HistoryStore, VersionRow
from nagare.store.log_chunks import LogChunkStore
from nagare.store.masters import MasterRecord, MasterStore
from nagare.store.metrics import (
    CounterRow,
    DurationRow,
    MetricAgg,
    MetricPoint,
    MetricsStore,
    RunOutcomes,
)
from nagare.store.records import (
    AuditEntry,
    AuditFilter,
    DagState,
    Exchange,
    HeldAttempt,
    RunFilter,
    Stats,
    WorkerRecord,
)
from nagare.store.retention import OldRun, RetentionStore
from nagare.store.runs import RunStore
from nagare.store.schema import DURATION_BUCKETS_MS, INF_MS
from nagare.store.tasks import Clock, TaskStore
from nagare.store.transfer import (
    TABLES,
    CopyMismatch,
    TableCheck,
    Tally,
    active_runs,
    copy_history,
    occupied,
    tallies,
)
from nagare.store.workers import WorkerStore

__all__ = [
    "DAY_MS",
    "DURATION_BUCKETS_MS",
    "INF_MS",
    "TABLES",
    "AuditEntry",
    "AuditFilter",
    "AuditStore",
    "Clock",
    "CopyMismatch",
    "CounterRow",
    "DagState",
    "Database",
    "DatabaseError",
    "DayCount",
    "DurationRow",
    "Exchange",
    "Grid",
    "GridCell",
    "GridRun",
    "HeldAttempt",
    "KeyRecord",
    "KeyStore",
    "LeaderLock",
    "LogChunkStore",
    "MasterRecord",
    "MasterStore",
    "MetricAgg",
    "MetricPoint",
    "OldRun",
    "RunFilter",
    "RunOutcomes",
    "SessionStore",
    "Stats",
    "StorageFull",
    "Store",
    "TableCheck",
    "Tally",
    "UserRecord",
    "UserStore",
    "VersionRow",
    "WakeChannel",
    "WorkerRecord",
    "active_runs",
    "copy_history",
    "occupied",
    "open_database",
    "tallies",
    "text_digest",
]


class Store:
    """One database: DAG versions and scheduling state (`dags`), runs (`runs`), task instances,
    claims and attempts (`tasks`), remote workers and their leases (`workers`), metrics
    (`metrics`), deletion of old runs (`retention`), webhook deliveries (`deliveries`), the DAG
    page's grid, calendar and versions (`history`), the audit log (`audit`), users, API keys and
    dashboard sessions (`users`, `keys`, `sessions`), the masters serving the database
    (`masters`), attempts' log lines shared between masters (`log_chunks`)."""

    def __init__(self, path: str, password_env: str = "") -> None:
        self.db = open_database(path, password_env)
        self.dags = DagStore(self.db)
        self.runs = RunStore(self.db, self.dags)
        self.tasks = TaskStore(self.db, self.dags)
        self.workers = WorkerStore(self.db, self.dags)
        self.metrics = MetricsStore(self.db)
        self.retention = RetentionStore(self.db)
        self.deliveries = DeliveryStore(self.db)
        self.history = HistoryStore(self.db)
        self.audit = AuditStore(self.db)
        self.users = UserStore(self.db)
        self.keys = KeyStore(self.db)
        self.sessions = SessionStore(self.db)
        self.masters = MasterStore(self.db)
        self.log_chunks = LogChunkStore(self.db)

    def close(self) -> None:
        self.db.close()
