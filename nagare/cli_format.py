"""The text the client commands print: tables, times and durations (pure functions over the
API's JSON), and the whole-number type of their flags."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from nagare.clock import parse_iso

COMMAND_WIDTH = 50
MANUAL_SCHEDULES = ("", "workflow_dispatch")
STATS_ORDER = (
    "active_runs",
    "failed_runs_24h",
    "total_runs",
    "loaded_dags",
    "dag_errors",
    "queued_tasks",
    "running_tasks",
)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart (like Go's tabwriter)."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def local_time(iso: str | None) -> str:
    """`2026-11-21T10:15:00.123Z` -> `2026-11-21 11:15:00` in the local zone (`-` when unset)."""
    if not iso:
        return "-"
    try:
        ms = parse_iso(iso)
    except ValueError:
        return iso
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def duration(ms: int | None) -> str:
    """`350ms`, `4.2s`, `3m05s`, `2h07m` (`-` when unknown)."""
    if ms is None or ms < 0:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    seconds = ms // 1000
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def backfill_text(answer: dict[str, Any]) -> str:
    """The slots of a backfill (a table) and what happened, or would happen, to them."""
    slots = answer.get("slots") or []
    if not slots:
        return "No schedule slot in that range"
    dry = bool(answer.get("dry_run"))
    new = "would create" if dry else "created"
    rows = [
        (local_time(s["execution_date"]), s["run_id"], "exists, skipped" if s["exists"] else new)
        for s in slots
    ]
    fresh = sum(1 for s in slots if not s["exists"])
    head = f"{'Would create' if dry else 'Created'} {fresh} of {len(slots)} slot run(s)"
    return "\n".join([table(("SLOT", "RUN", ""), rows), f"{head}: {answer.get('note', '')}"])


def dags_table(dags: list[dict[str, Any]]) -> str:
    if not dags:
        return "No DAGs loaded"
    rows = [
        (
            dag["dag_id"],
            "manual" if dag.get("schedule") in MANUAL_SCHEDULES else dag["schedule"],
            str(len(dag.get("tasks") or [])),
            "paused" if dag.get("paused") else "active",
        )
        for dag in dags
    ]
    if any(dag.get("tags") for dag in dags):  # a TAGS column once some DAG has tags
        tags = [",".join(dag.get("tags") or []) for dag in dags]
        tagged = [(*row, tag) for row, tag in zip(rows, tags, strict=True)]
        return table(("DAG ID", "SCHEDULE", "TASKS", "STATUS", "TAGS"), tagged)
    return table(("DAG ID", "SCHEDULE", "TASKS", "STATUS"), rows)


def runs_table(page: dict[str, Any]) -> str:
    runs = page.get("data") or []
    rows = [
        (r["run_id"], r["dag_id"], r["status"], r["trigger"], local_time(r.get("created_at")))
        for r in runs
    ]
    headers = ("RUN ID", "DAG", "STATUS", "TRIGGER", "CREATED")
    return table(headers, rows) + "\n\n" + _page_summary(page, len(runs))


def run_details(run: dict[str, Any]) -> str:
    fields = [
        ("Run", run["run_id"]),
        ("DAG", run["dag_id"]),
        ("Status", run["status"]),
        ("Trigger", run["trigger"]),
        ("Created", local_time(run.get("created_at"))),
    ]
    if run.get("started_at"):
        fields.append(("Started", local_time(run["started_at"])))
    if run.get("completed_at"):
        fields.append(("Completed", local_time(run["completed_at"])))
    if run.get("task_counts"):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(run["task_counts"].items()))
        fields.append(("Tasks", counts))
    if run.get("params"):
        fields.append(("Params", json.dumps(run["params"], ensure_ascii=False)))
    elif run.get("conf"):
        fields.append(("Conf", json.dumps(run["conf"], ensure_ascii=False)))
    return "\n".join(f"{name + ':':<11}{value}" for name, value in fields)


def tasks_table(tasks: list[dict[str, Any]], now: int) -> str:
    if not tasks:
        return "No tasks"
    rows = [
        (
            t["task_id"],
            t["status"],
            f"{t.get('attempt', 0)}/{t.get('max_attempts', 0)}",
            duration(_task_ms(t, now)),
            "-" if t.get("exit_code") is None else str(t["exit_code"]),
            _cut(t.get("command") or "", COMMAND_WIDTH),
        )
        for t in tasks
    ]
    return table(("TASK", "STATUS", "ATTEMPT", "DURATION", "EXIT", "COMMAND"), rows)


def _task_ms(task: dict[str, Any], now: int) -> int | None:
    """Measured duration if known, else from the timestamps (running tasks: until `now`)."""
    metrics = task.get("metrics") or {}
    if metrics.get("duration_ms") is not None:
        return int(metrics["duration_ms"])
    if not task.get("started_at"):
        return None
    end = parse_iso(task["completed_at"]) if task.get("completed_at") else now
    return end - parse_iso(task["started_at"])


def _cut(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def stats_lines(stats: dict[str, Any]) -> str:
    keys = [k for k in STATS_ORDER if k in stats]
    keys += sorted(k for k in stats if k not in STATS_ORDER)
    return "\n".join(f"{key}: {stats[key]}" for key in keys)


def workers_table(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return "No workers connected"
    rows = [
        (
            str(w.get("worker_id", "")),
            str(w.get("hostname", "")),
            ",".join(w.get("pools") or []),
            str(w.get("status", "")),
            f"{w.get('active_tasks', 0)}/{w.get('max_tasks', 0)}",
        )
        for w in workers
    ]
    return table(("WORKER ID", "HOSTNAME", "POOLS", "STATUS", "TASKS"), rows)


def history_table(page: dict[str, Any], now: int) -> str:
    """The runs of one DAG: when each started, how long it took (running: so far), when it
    ended."""
    runs = page.get("data") or []
    if not runs:
        return "No runs"
    rows = [
        (
            r["run_id"],
            r["status"],
            r["trigger"],
            local_time(r.get("started_at")),
            duration(_span_ms(r, now)),
            local_time(r.get("completed_at")),
        )
        for r in runs
    ]
    headers = ("RUN ID", "STATUS", "TRIGGER", "STARTED", "DURATION", "ENDED")
    return table(headers, rows) + "\n\n" + _page_summary(page, len(runs))


def _page_summary(page: dict[str, Any], shown: int) -> str:
    summary = f"Showing {shown} of {page.get('total', shown)} total runs"
    if page.get("page", 1) > 1:
        summary += f" (page {page['page']})"
    return summary


def _span_ms(item: dict[str, Any], now: int) -> int | None:
    if not item.get("started_at"):
        return None
    end = parse_iso(item["completed_at"]) if item.get("completed_at") else now
    return end - parse_iso(item["started_at"])


def tag_counts(dags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`[{"tag", "dags", "dag_ids"}]` by tag name, from the API's DAG list."""
    by_tag: dict[str, list[str]] = {}
    for dag in dags:
        for tag in dag.get("tags") or []:
            by_tag.setdefault(tag, []).append(dag["dag_id"])
    return [
        {"tag": tag, "dags": len(ids), "dag_ids": sorted(ids)}
        for tag, ids in sorted(by_tag.items())
    ]


def tags_table(counts: list[dict[str, Any]]) -> str:
    if not counts:
        return "No tags (a DAG file's `tags:` lists its tags)"
    rows = [
        (c["tag"], str(c["dags"]), _cut(", ".join(c["dag_ids"]), COMMAND_WIDTH)) for c in counts
    ]
    return table(("TAG", "DAGS", "DAG IDS"), rows)


def no_log_reason(task: dict[str, Any]) -> str:
    """Why a task has no log yet ('' when it has run): its status says."""
    if task.get("attempt", 0) > 0:
        return ""
    status = str(task.get("status", ""))
    message = f" ({task['message']})" if task.get("message") else ""
    reasons = {
        "pending": "it has not started (pending: its upstream tasks have not finished)",
        "queued": f"it has not started (queued: waiting for a slot of pool '{task.get('pool')}')",
        "skipped": f"it was skipped{message}",
        "upstream_failed": "it never ran: an upstream task failed",
        "cancelled": f"it was cancelled before it started{message}",
    }
    return reasons.get(status, f"it never ran (status {status}{message})")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a page, a limit, an attempt)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, found {value}")
    return value
