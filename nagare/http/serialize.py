"""Domain objects -> the API's JSON shapes (snake_case, lists never null, UTC `Z` times)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from nagare.clock import to_iso
from nagare.cluster.coordinator import WorkerStatus
from nagare.cron import NEVER, dag_schedules, describe
from nagare.dag_edits import DagSource, WriteResult
from nagare.dagfile import DagError
from nagare.dagfile.snapshot import param_dict
from nagare.errors import InvalidParams
from nagare.liveness import LoopHealth
from nagare.metrics import (
    Bucket,
    DagMetrics,
    Overview,
    PoolInfo,
    TaskMetrics,
    TimeSeries,
    mean,
    rate,
)
from nagare.models import (
    Attempt,
    AttemptMetrics,
    DagDef,
    Run,
    TaskDef,
    TaskInstance,
    TaskStatus,
    TriggerRule,
)
from nagare.runs import Backfill

if TYPE_CHECKING:  # (git sync is loaded only when nagare.yaml has git_sync:)
    from nagare.git_sync import GitStatus
from nagare.store import (
    AuditEntry,
    DayCount,
    Grid,
    GridCell,
    GridRun,
    MetricAgg,
    MetricPoint,
    RunOutcomes,
    VersionRow,
)

# statuses whose message says why the task did not run (the task JSON's `reason`)
REASONED = frozenset({TaskStatus.SKIPPED, TaskStatus.UPSTREAM_FAILED, TaskStatus.WAITING})


def run_json(run: Run) -> dict[str, Any]:
    body = _run_body(run)
    if run.reason:  # a run skipped, cancelled or failed by a rule (overlap, deadline)
        body["reason"] = run.reason
    if run.handling:  # its status is final; its handlers still run
        body["handlers_running"] = True
    if run.outputs is not None:  # what it returns to a calling `dag` step (its DAG's outputs)
        body["outputs"] = run.outputs
    return body


def _run_body(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "dag_id": run.dag_id,
        "status": str(run.status),
        "trigger": str(run.trigger),
        "execution_date": to_iso(run.execution_date),
        "conf": run.conf,
        "params": run.params,
        "created_at": to_iso(run.created_at),
        "started_at": to_iso(run.started_at),
        "completed_at": to_iso(run.completed_at),
        "task_counts": run.task_counts,
        "warnings": run.warnings,
        "reason": run.reason or None,
        "dag_version": run.dag_version,
        "parent": {"run_id": run.parent[0], "task_id": run.parent[1]} if run.parent else None,
    }


def metrics_json(metrics: AttemptMetrics | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {
        "duration_ms": metrics.duration_ms,
        "cpu_user_ms": metrics.cpu_user_ms,
        "cpu_system_ms": metrics.cpu_system_ms,
        "peak_memory_bytes": metrics.peak_memory_bytes,
        "exit_code": metrics.exit_code,
        "executor_type": str(metrics.executor_type),
    }


# what a waiting task's `waiting_for` shows of its rendered step (not the `match` context)
WAIT_FIELDS = ("type", "message", "approvers", "event", "match")


def waiting_json(wait: dict[str, Any], until: int | None) -> dict[str, Any]:
    """A waiting task's `waiting_for`: its step type and what it waits for (approval: message
    and approvers; wait: event and match), and until when (its timeout)."""
    body = {k: wait[k] for k in WAIT_FIELDS if wait.get(k)}
    body["until"] = to_iso(until) if until is not None else None
    return body


def tasks_json(tasks: list[TaskInstance]) -> list[dict[str, Any]]:
    """Task instances of a run (children included): a map parent's outputs are lists of its
    children's values."""
    children: dict[str, list[TaskInstance]] = {}
    for task in tasks:
        if task.map_index is not None:
            children.setdefault(task.base_task_id, []).append(task)
    return [task_json(t, children.get(t.task_id) if t.map_index is None else None) for t in tasks]


def outputs_json(task: TaskInstance, children: list[TaskInstance] | None) -> dict[str, Any]:
    """`{"NAME": "value"}`, or for a map parent each name's values over its children in index
    order (null for a child that published none)."""
    if not children:
        return dict(task.outputs or {})
    ordered = sorted(children, key=lambda c: c.map_index or 0)
    names = dict.fromkeys(name for c in ordered for name in (c.outputs or {}))
    return {name: [(c.outputs or {}).get(name) for c in ordered] for name in names}


def task_json(task: TaskInstance, children: list[TaskInstance] | None = None) -> dict[str, Any]:
    return {
        "id": task.id,
        "run_id": task.run_id,
        "task_id": task.task_id,
        "base_task_id": task.base_task_id,
        "map_index": task.map_index,
        "item": json.loads(task.item) if task.item is not None else None,
        "status": str(task.status),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "pool": task.pool,
        "worker": task.worker or None,
        "command": task.command,
        "exit_code": task.exit_code,
        "timed_out": task.timed_out,
        "queued_at": to_iso(task.queued_at),
        "started_at": to_iso(task.started_at),
        "completed_at": to_iso(task.completed_at),
        "retry_at": to_iso(task.ready_at) if task.status == "up_for_retry" else None,
        "message": task.message,
        "reason": task.message if task.status in REASONED else None,
        "allowed_failure": task.allowed_failure,
        "output_tail": task.output_tail,
        "outputs": outputs_json(task, children),
        "child_run_id": task.child_run_id or None,  # a `dag` step: the run it called
        "metrics": metrics_json(task.metrics),
    }


def attempt_json(attempt: Attempt, task: TaskInstance) -> dict[str, Any]:
    """One attempt in `GET .../tasks/{task_id}/attempts`, with its metrics."""
    return {
        "id": task.id,
        "run_id": task.run_id,
        "task_id": task.task_id,
        **_attempt_fields(attempt),
        "metrics": metrics_json(attempt.metrics),
    }


def run_attempt_json(attempt: Attempt, task_id: str) -> dict[str, Any]:
    """One attempt in `GET /api/runs/{run_id}/attempts` (the run page's timeline)."""
    return {"id": attempt.task_instance_id, "task_id": task_id, **_attempt_fields(attempt)}


def _attempt_fields(attempt: Attempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "status": str(attempt.status),
        "worker": attempt.worker,
        "exit_code": attempt.exit_code,
        "timed_out": attempt.timed_out,
        "started_at": to_iso(attempt.started_at),
        "completed_at": to_iso(attempt.completed_at),
        "message": attempt.error,
    }


def task_def_json(task: TaskDef) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "type": str(task.type),
        "command": task.command,
        "depends_on": list(task.depends_on),
        "pool": task.pool,
        "retries": task.retries,
        "retry_delay_seconds": task.retry_delay_seconds,
        "timeout_seconds": task.timeout_seconds or None,
        "env": sorted(task.env),
        "secrets": sorted(s.name for s in task.secrets),  # names only, never values
    }
    if task.map_over:
        data["map_over"] = task.map_over
    if task.dag_id:
        data["dag_id"] = task.dag_id
    if task.run_as:
        data["run_as"] = task.run_as
    if task.when:
        data["when"] = task.when
    if task.output:
        data["output"] = task.output
    data.update(_condition_json(task))
    if task.image:
        data["image"] = task.image
        data["workdir"] = task.workdir
        data["volumes"] = list(task.volumes)
        if task.resources:
            data["resources"] = asdict(task.resources)
    return data


def _condition_json(task: TaskDef) -> dict[str, Any]:
    """The conditions and failure handling fields a task sets (absent: the defaults)."""
    data: dict[str, Any] = {}
    if task.trigger_rule is not TriggerRule.ALL_SUCCESS:
        data["trigger_rule"] = str(task.trigger_rule)
    if task.preconditions:
        data["preconditions"] = list(task.preconditions)
    if task.allow_failure is not None:
        data["allow_failure"] = (
            {"exit_codes": list(task.allow_failure.exit_codes)}
            if task.allow_failure.exit_codes
            else True
        )
    if task.retry_backoff != 1:
        data["retry_backoff"] = task.retry_backoff
    if task.retry_max_delay_seconds:
        data["retry_max_delay_seconds"] = task.retry_max_delay_seconds
    if task.retry_on_exit_codes:
        data["retry_on_exit_codes"] = list(task.retry_on_exit_codes)
    if not task.retry_on_timeout:
        data["retry_on_timeout"] = False
    return data


def dag_json(
    dag: DagDef, paused: bool, last_run: Run | None, now: int, file: str
) -> dict[str, Any]:
    """A DAG; env values and webhook secrets are never returned (only env names)."""
    next_run = None
    if dag.is_scheduled and not paused:
        schedules = dag_schedules(dag.cron_expressions, dag.timezone, dag.start_date, dag.end_date)
        upcoming = schedules.next_after(now)
        next_run = to_iso(upcoming) if upcoming < NEVER else None
    trigger = None
    if dag.trigger is not None:
        trigger = {
            "type": dag.trigger.type,
            "path": dag.trigger.path,
            "method": dag.trigger.method,
            "signed": bool(dag.trigger.secret or dag.trigger.secret_env),
            "extract_payload": sorted(dag.trigger.extract_payload),
        }
    return {
        "dag_id": dag.dag_id,
        "description": dag.description,
        "schedule": dag.schedule,
        "schedule_description": describe(dag.schedule),
        "timezone": dag.timezone or None,
        "catchup": dag.catchup,
        "paused": paused,
        "file": file,
        "next_run_at": next_run,
        "last_run": run_json(last_run) if last_run else None,
        "env": sorted(dag.env),
        "secrets": sorted(s.name for s in dag.secrets),  # names only, never values
        "params": [param_dict(p) for p in dag.params],
        "tasks": [task_def_json(t) for t in dag.tasks],
        "trigger": trigger,
        **run_rules_json(dag),
        "when": dag.when or None,  # the run's own condition (conditions and failure handling)
        "preconditions": list(dag.preconditions),
    }


def run_rules_json(dag: DagDef) -> dict[str, Any]:
    """Schedules, dates, tags, overlap control, deadline and handlers (types only)."""
    return {
        "schedules": list(dag.cron_expressions),
        "start_date": to_iso(dag.start_date) if dag.start_date is not None else None,
        "end_date": to_iso(dag.end_date) if dag.end_date is not None else None,
        "tags": list(dag.tags),
        "max_active_runs": dag.max_active_runs or None,
        "overlap_policy": str(dag.overlap_policy) if dag.max_active_runs else None,
        "timeout_seconds": dag.timeout_seconds or None,
        "handler_on": {str(k): str(t.type) for k, t in dag.handler_on.items()},
    }


def params_details_json(err: InvalidParams) -> list[dict[str, str]]:
    """The `details` of a 422 `invalid_params` error: every bad parameter with its message."""
    return [{"param": param, "message": message} for param, message in err.details]


# ---------------------------------------------------------------- health


def loop_json(loop: LoopHealth) -> dict[str, Any]:
    """One background loop in `/api/health`: small, no traceback, no secret."""
    body: dict[str, Any] = {
        "status": str(loop.status),
        "last_progress_seconds": loop.last_progress_seconds,
    }
    if loop.error:
        body["error"] = loop.error
    return body


# ---------------------------------------------------------------- pools and workers


def pool_json(pool: PoolInfo) -> dict[str, Any]:
    return {
        "pool": pool.pool,
        "local_slots": pool.local_slots,
        "busy_slots": pool.busy_slots,
        "queued": pool.queued,
        "running": pool.running,
        "remote_only": pool.remote_only,
        "remote_workers": pool.remote_workers,
        "remote_workers_online": pool.remote_workers_online,
        "remote_capacity": pool.remote_capacity,
        "no_live_worker": pool.no_live_worker,
    }


def worker_json(status: WorkerStatus) -> dict[str, Any]:
    """A remote worker; `active_tasks` and `last_heartbeat` repeat `running_tasks` and
    `last_seen` under the upstream names."""
    worker = status.worker
    last_seen = to_iso(worker.last_seen)
    return {
        "worker_id": worker.worker_id,
        "hostname": worker.hostname,
        "pools": list(worker.pools),
        "max_tasks": worker.max_tasks,
        "running_tasks": worker.running,
        "active_tasks": worker.running,
        "status": status.status,
        "left": worker.state == "left",
        "version": worker.version,
        "registered_at": to_iso(worker.registered_at),
        "last_heartbeat": last_seen,
        "last_seen": last_seen,
    }


# ---------------------------------------------------------------- metrics

_POINT_KEYS = (
    "timestamp",
    "task_instance_id",
    "run_id",
    "dag_id",
    "task_id",
    "attempt",
    "status",
    "worker",
    "executor_type",
    "started_at",
    "completed_at",
    "duration_ms",
    "cpu_user_ms",
    "cpu_system_ms",
    "cpu_ms",
    "peak_memory_bytes",
    "memory_bytes",
    "exit_code",
    "timed_out",
)


def point_json(point: MetricPoint) -> dict[str, Any]:
    """One finished attempt: the upstream time-series keys (`timestamp`, `duration_ms`,
    `memory_bytes`, `cpu_ms`, `task_id`, `run_id`, `status`) and the full metrics."""
    cpu = point.cpu_user_ms + point.cpu_system_ms
    return {
        "timestamp": to_iso(point.completed_at),
        "task_instance_id": point.task_instance_id,
        "run_id": point.run_id,
        "dag_id": point.dag_id,
        "task_id": point.task_id,
        "attempt": point.attempt,
        "status": point.status,
        "worker": point.worker,
        "executor_type": point.executor_type,
        "started_at": to_iso(point.started_at),
        "completed_at": to_iso(point.completed_at),
        "duration_ms": point.duration_ms,
        "cpu_user_ms": point.cpu_user_ms,
        "cpu_system_ms": point.cpu_system_ms,
        "cpu_ms": cpu,
        "peak_memory_bytes": point.peak_memory_bytes,
        "memory_bytes": point.peak_memory_bytes,
        "exit_code": point.exit_code,
        "timed_out": point.timed_out,
    }


def bucket_json(bucket: Bucket) -> dict[str, Any]:
    """One time bucket: `timestamp` is its start; `duration_ms` and `cpu_ms` are means per
    attempt, `memory_bytes` the highest peak; p50/p95 of the durations (null over
    `PERCENTILE_LIMIT` attempts)."""
    agg = bucket.agg
    return {
        "timestamp": to_iso(agg.bucket),
        "count": agg.attempts,
        "duration_ms": mean(agg.duration_sum, agg.attempts),
        "p50_duration_ms": bucket.p50_duration_ms,
        "p95_duration_ms": bucket.p95_duration_ms,
        "max_duration_ms": agg.duration_max,
        "memory_bytes": agg.memory_max,
        "avg_memory_bytes": mean(agg.memory_sum, agg.attempts),
        "cpu_ms": mean(agg.cpu_sum, agg.attempts),
        "total_cpu_ms": agg.cpu_sum,
        "success": agg.success,
        "failed": agg.failed,
        "cancelled": agg.cancelled,
        "success_rate": rate(agg.success, agg.failed),
    }


def runs_json(runs: RunOutcomes) -> dict[str, Any]:
    """The runs that finished in a window, by final status, and their success rate (success /
    success + failed)."""
    return {
        "finished": runs.finished,
        "success": runs.success,
        "failed": runs.failed,
        "cancelled": runs.cancelled,
        "skipped": runs.skipped,
        "success_rate": rate(runs.success, runs.failed),
    }


def _dag_stats(agg: MetricAgg, runs: RunOutcomes) -> dict[str, Any]:
    return {
        "dag_id": agg.dag_id,
        "count": agg.attempts,
        "avg_duration_ms": mean(agg.duration_sum, agg.attempts),
        "max_duration_ms": agg.duration_max,
        "avg_memory_bytes": mean(agg.memory_sum, agg.attempts),
        "max_memory_bytes": agg.memory_max,
        "total_cpu_ms": agg.cpu_sum,
        "success_rate": rate(agg.success, agg.failed),
        "success": agg.success,
        "failed": agg.failed,
        "cancelled": agg.cancelled,
        "runs": runs_json(runs),
    }


def _slow_task(point: MetricPoint) -> dict[str, Any]:
    return {
        "task_instance_id": point.task_instance_id,
        "dag_id": point.dag_id,
        "task_id": point.task_id,
        "run_id": point.run_id,
        "attempt": point.attempt,
        "status": point.status,
        "duration_ms": point.duration_ms,
        "peak_memory_bytes": point.peak_memory_bytes,
        "exit_code": point.exit_code,
        "created_at": to_iso(point.completed_at),
    }


def series_json(series: TimeSeries) -> list[dict[str, Any]]:
    return [point_json(p) if isinstance(p, MetricPoint) else bucket_json(p) for p in series]


def overview_json(overview: Overview) -> dict[str, Any]:
    total = overview.total
    return {
        "since": to_iso(overview.since),
        "until": to_iso(overview.until),
        "total_tasks": total.attempts,
        "avg_duration_ms": mean(total.duration_sum, total.attempts),
        "max_duration_ms": total.duration_max,
        "max_memory_bytes": total.memory_max,
        "total_cpu_ms": total.cpu_sum,
        "success_rate": rate(total.success, total.failed),
        "success": total.success,
        "failed": total.failed,
        "cancelled": total.cancelled,
        "runs": runs_json(overview.runs),
        "dag_stats": [
            _dag_stats(a, overview.runs_per_dag.get(a.dag_id, RunOutcomes(a.dag_id)))
            for a in overview.per_dag
        ],
        "slowest_tasks": [_slow_task(p) for p in overview.slowest],
    }


def dag_metrics_json(metrics: DagMetrics) -> dict[str, Any]:
    agg = metrics.aggregate
    aggregate = {
        "dag_id": metrics.dag_id,
        "run_count": metrics.run_count,
        "task_count": agg.attempts,
        "avg_duration_ms": mean(agg.duration_sum, agg.attempts),
        "p50_duration_ms": metrics.p50_duration_ms,
        "p95_duration_ms": metrics.p95_duration_ms,
        "max_duration_ms": agg.duration_max,
        "avg_memory_bytes": mean(agg.memory_sum, agg.attempts),
        "max_memory_bytes": agg.memory_max,
        "avg_cpu_ms": mean(agg.cpu_sum, agg.attempts),
        "total_cpu_ms": agg.cpu_sum,
        "success_rate": rate(agg.success, agg.failed),
        "success": agg.success,
        "failed": agg.failed,
        "cancelled": agg.cancelled,
        "runs": runs_json(metrics.runs),
    }
    return {"aggregate": aggregate, "time_series": series_json(metrics.time_series)}


def task_metrics_json(metrics: TaskMetrics) -> dict[str, Any]:
    """The latest attempt's point (all null without one), then the task and every attempt."""
    attempts = metrics.attempts
    latest = point_json(attempts[-1]) if attempts else dict.fromkeys(_POINT_KEYS)
    return {
        **latest,
        "task_instance_id": metrics.task_instance_id,
        "run_id": metrics.run_id,
        "dag_id": metrics.dag_id,
        "task_id": metrics.task_id,
        "task_status": str(metrics.task_status),
        "attempts": [point_json(p) for p in attempts],
    }


def validation_json(errors: list[DagError]) -> dict[str, Any]:
    """`POST /api/dags/validate`: whether the text is a valid DAG file, and every problem."""
    return {
        "valid": not errors,
        "errors": [{"line": e.line, "field": e.field, "message": e.message} for e in errors],
    }


def git_status_json(status: GitStatus | None) -> dict[str, Any]:
    """`GET /api/git`: whether git sync is on, the commit the DAGs folder holds, the last try."""
    if status is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "url": status.url,
        "branch": status.branch,
        "subdirectory": status.subdirectory,
        "interval_seconds": status.interval_seconds,
        "commit": status.commit or None,
        "subject": status.subject or None,
        "committed_at": to_iso(status.committed_at),
        "synced_at": to_iso(status.synced_at),
        "last_attempt_at": to_iso(status.last_attempt_at),
        "last_success_at": to_iso(status.last_success_at),
        "last_error": status.last_error or None,
        "ok": status.last_attempt_at is not None and not status.last_error,
    }


def backfill_json(result: Backfill) -> dict[str, Any]:
    """`POST /api/dags/{dag_id}/backfill`: the slots of the range and what was (or would be)
    created."""
    return {
        "dag_id": result.dag_id,
        "dry_run": result.dry_run,
        "created": result.created,
        "skipped": result.skipped,
        "slots": [
            {"execution_date": to_iso(s.execution_date), "run_id": s.run_id, "exists": s.exists}
            for s in result.slots
        ],
        "max_active_runs": result.max_active_runs or None,
        "overlap_policy": result.overlap_policy,
        "note": result.note,
    }


def dag_source_json(source: DagSource, editable: bool) -> dict[str, Any]:
    """`GET /api/dag-files/{file}`: the text and the version to send back when saving."""
    return {
        "file": source.file,
        "text": source.text,
        "version": source.version,
        "editable": editable,
    }


def dag_write_json(result: WriteResult) -> dict[str, Any]:
    """A save or create: the new version, the DAG the file defines now, its load errors."""
    return {
        "file": result.file,
        "version": result.version,
        "dag_id": result.dag_id,
        "errors": result.errors,
    }


# ------------------------------------------------------ the DAG page: grid, calendar, versions

# one character per task state in the grid's matrix ("." no such task in that run); `a` is a
# failure allowed by allow_failure
GRID_CODES: dict[str, str] = {
    "success": "s",
    "failed": "f",
    "allowed": "a",
    "running": "r",
    "queued": "q",
    "pending": "p",
    "waiting": "w",
    "up_for_retry": "y",
    "upstream_failed": "u",
    "cancelled": "c",
    "skipped": "k",
}


def grid_json(dag_id: str, grid: Grid) -> dict[str, Any]:
    """The last runs x tasks: `matrix` holds one string per task, one character per run
    (newest first, codes in `codes`); map tasks also get their children's counts in `maps`."""
    matrix: list[str] = []
    maps: dict[str, list[dict[str, int] | None]] = {}
    for task_id in grid.tasks:
        row = [grid.cells.get((task_id, r.run_id)) for r in grid.runs]
        matrix.append("".join(_grid_code(c) for c in row))
        if any(c is not None and c.children for c in row):
            maps[task_id] = [dict(c.children) if c and c.children else None for c in row]
    return {
        "dag_id": dag_id,
        "runs": [_grid_run(r) for r in grid.runs],
        "tasks": [{"task_id": t, "map": t in maps} for t in grid.tasks],
        "codes": {code: status for status, code in GRID_CODES.items()},
        "matrix": matrix,
        "maps": maps,
    }


def _grid_code(cell: GridCell | None) -> str:
    if cell is None or not cell.status:
        return "."
    if cell.allowed_failure and cell.status == TaskStatus.FAILED:
        return GRID_CODES["allowed"]
    return GRID_CODES.get(cell.status, ".")


def _grid_run(run: GridRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "trigger": run.trigger,
        "execution_date": to_iso(run.execution_date),
        "created_at": to_iso(run.created_at),
        "started_at": to_iso(run.started_at),
        "completed_at": to_iso(run.completed_at),
        "dag_version": run.dag_version,
    }


def calendar_json(
    dag_id: str, days: list[DayCount], since: int, offset_minutes: int
) -> dict[str, Any]:
    """Runs per day (`date`: YYYY-MM-DD in the asked UTC offset) by status, oldest first."""
    by_day: dict[int, dict[str, int]] = {}
    for d in days:
        by_day.setdefault(d.day, {})[d.status] = d.count
    return {
        "dag_id": dag_id,
        "since": to_iso(since),
        "utc_offset_minutes": offset_minutes,
        "days": [
            {"date": str(to_iso(day * 86_400_000))[:10], "counts": counts}
            for day, counts in sorted(by_day.items())
        ],
    }


def version_json(row: VersionRow, current: str) -> dict[str, Any]:
    return {
        "digest": row.digest,
        "first_seen": to_iso(row.first_seen),
        "runs": row.runs,
        "last_run_id": row.last_run_id,
        "last_run_at": to_iso(row.last_run_at),
        "current": row.digest == current,
        "stored": True,
    }


def version_detail_json(
    dag: DagDef, digest: str, definition: str, first_seen: int | None, current: str
) -> dict[str, Any]:
    """One version: its tasks (as the DAG JSON has them, for the run page's graph) and its
    definition as indented JSON text without empty fields and source line numbers (for the
    side-by-side diff)."""
    return {
        "dag_id": dag.dag_id,
        "digest": digest,
        "first_seen": to_iso(first_seen),
        "current": digest == current,
        "tasks": [task_def_json(t) for t in dag.tasks],
        "text": json.dumps(
            _readable(json.loads(definition)), indent=2, sort_keys=True, ensure_ascii=False
        ),
    }


def _readable(value: Any) -> Any:
    """A definition for reading and diffing: without empty fields and source line numbers."""
    if isinstance(value, dict):
        return {
            k: _readable(v) for k, v in value.items() if k != "line" and v not in ("", None, [], {})
        }
    if isinstance(value, list):
        return [_readable(v) for v in value]
    return value


def audit_entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": to_iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "address": entry.address,
        "outcome": entry.outcome,
        "detail": entry.detail,
    }
