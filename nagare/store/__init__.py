"""The store: the only code that speaks SQL. Every state change is one short transaction of the
form `UPDATE ... WHERE id=? AND status IN (...)` with the row count checked (compare-and-set).
"""

from __future__ import annotations

from nagare.models import DagDef
from nagare.store.db import Database, DatabaseError
from nagare.store.deliveries import DeliveryStore
from nagare.store.metrics import CounterRow, DurationRow, MetricAgg, MetricPoint, MetricsStore
from nagare.store.records import (
    AttemptFinish,
    Claim,
    DagState,
    HeldAttempt,
    RunFilter,
    Stats,
    WorkerRecord,
)
from nagare.store.retention import OldRun, RetentionStore
from nagare.store.runs import RunStore
from nagare.store.tasks import TaskStore
from nagare.store.workers import WorkerStore

__all__ = [
    "AttemptFinish",
    "Claim",
    "CounterRow",
    "DagState",
    "Database",
    "DatabaseError",
    "DurationRow",
    "HeldAttempt",
    "MetricAgg",
    "MetricPoint",
    "OldRun",
    "RunFilter",
    "Stats",
    "Store",
    "WorkerRecord",
]


class Store(RunStore, TaskStore, MetricsStore, RetentionStore, DeliveryStore, WorkerStore):
    """One SQLite database: runs and DAG state (RunStore), tasks and attempts (TaskStore),
    metrics (MetricsStore), deletion of old runs (RetentionStore), webhook deliveries
    (DeliveryStore), remote workers and their leases (WorkerStore)."""

    def __init__(self, path: str) -> None:
        self.db = Database(path)
        self._dag_cache: dict[str, DagDef] = {}
        self._digests: dict[int, tuple[DagDef, str]] = {}

    def close(self) -> None:
        self.db.close()
