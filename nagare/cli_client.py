"""API client commands of the command line: `nagare dags`, `nagare trigger`, `nagare logs -f`, ...

Each command talks to a running server through `nagare.client.ApiClient`, prints a table or a
message (or, with `--json`, the server's JSON answer) and returns the exit code: 0 on success,
1 when the API call failed (`error: <message>` on stderr); argparse exits 2 on usage errors.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from nagare.cli_audit import AUDIT_COMMAND
from nagare.clock import now_ms, parse_iso
from nagare.errors import ConfigError

if TYPE_CHECKING:
    from nagare.client import ApiClient, ApiError

DEFAULT_API_URL = "http://localhost:8080"
DEFAULT_RUNS_LIMIT = 20
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

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_client_commands(commands: Subparsers) -> None:
    """Register the client subcommands on the root parser's subcommand table."""
    common = _common_flags()
    for name, help_text, configure, handler in _COMMANDS:
        parser = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        configure(parser)
        parser.set_defaults(func=_guarded(handler))


# ---------------------------------------------------------------- flags


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("API connection")
    group.add_argument(
        "--api",
        metavar="URL",
        default=None,
        help=f"server URL (default: $NAGARE_API_URL or {DEFAULT_API_URL})",
    )
    group.add_argument(
        "--api-key", metavar="KEY", default=None, help="API key (default: $NAGARE_API_KEY)"
    )
    group.add_argument(
        "--json", action="store_true", help="print the server's JSON answer (for scripts)"
    )
    return common


def _no_args(parser: argparse.ArgumentParser) -> None:
    return None


def _dags_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only DAGs with this tag (repeatable: DAGs with any of the tags)",
    )


def _dag_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dag_id", metavar="DAG_ID", help="the DAG id")


def _backfill_args(parser: argparse.ArgumentParser) -> None:
    _dag_arg(parser)
    parser.add_argument(
        "--start", required=True, metavar="TIME", help="first slot, ISO-8601 (2026-11-01 or ...Z)"
    )
    parser.add_argument("--end", required=True, metavar="TIME", help="last slot, ISO-8601")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the slots it would create, create nothing"
    )


def _run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="the run id")


def _task_args(parser: argparse.ArgumentParser) -> None:
    _run_arg(parser)
    parser.add_argument("task_id", metavar="TASK_ID", help="the task id, e.g. t1 or process[0]")


def _trigger_args(parser: argparse.ArgumentParser) -> None:
    _dag_arg(parser)
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="a run parameter (env var of every task; a DAG with params: converts it to the "
        "declared type); repeatable; wins over --conf",
    )
    parser.add_argument(
        "--conf",
        type=_json_object,
        default=None,
        metavar="JSON",
        help='run parameters as a JSON object, e.g. \'{"REGION": "eu"}\'',
    )


def _runs_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dag", metavar="DAG_ID", default="", help="only runs of this DAG")
    parser.add_argument("--status", default="", help="only runs in this status, e.g. failed")
    parser.add_argument("--trigger", default="", help="only runs started this way, e.g. manual")
    parser.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_RUNS_LIMIT,
        metavar="N",
        help=f"runs per page (default {DEFAULT_RUNS_LIMIT})",
    )
    parser.add_argument("--page", type=_positive_int, default=1, metavar="N", help="page, from 1")


def _logs_args(parser: argparse.ArgumentParser) -> None:
    _task_args(parser)
    parser.add_argument(
        "--attempt", type=_positive_int, metavar="N", help="attempt number (default: latest)"
    )
    parser.add_argument("--tail", type=_positive_int, metavar="N", help="only the last N lines")
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="stream new lines live until the task finishes (with --json: one JSON event a line)",
    )


def _kill_args(parser: argparse.ArgumentParser) -> None:
    _run_arg(parser)
    parser.add_argument(
        "task_id", metavar="TASK_ID", nargs="?", help="kill only this task (default: the run)"
    )


def _retry_args(parser: argparse.ArgumentParser) -> None:
    _run_arg(parser)
    parser.add_argument(
        "task_id",
        metavar="TASK_ID",
        nargs="?",
        help="retry only this task (default: every failed, upstream_failed and cancelled task "
        "of the finished run)",
    )
    parser.add_argument(
        "--downstream",
        action="store_true",
        help="with TASK_ID: re-run its successful dependants too (clear downstream)",
    )


def _answer_args(parser: argparse.ArgumentParser) -> None:
    _task_args(parser)
    parser.add_argument(
        "-m", "--message", default="", metavar="COMMENT", help="a comment, recorded with the answer"
    )
    parser.add_argument(
        "--by",
        default=None,
        metavar="NAME",
        help="who answers (default: $USER); with `approvers:` set it must be one of them",
    )


def _emit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the event name, e.g. deploy-done")
    parser.add_argument(
        "--data",
        default=None,
        metavar="JSON",
        help="the payload: JSON text, @FILE to read it from a file, or - for stdin "
        "(default: none, null)",
    )


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, found '{text}'")
    return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object like {{"KEY": "v"}}: {text}')
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, found {value}")
    return value


# ---------------------------------------------------------------- plumbing


def _guarded(handler: Handler) -> Handler:
    """Run a command; an API failure becomes `error: <message>` on stderr and exit code 1."""

    @functools.wraps(handler)
    def run(namespace: argparse.Namespace) -> int:
        from nagare.client import ApiError  # a client command only: a server never loads it

        try:
            return handler(namespace)
        except ApiError as err:
            print(f"error: {_explain(err)}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # e.g. `nagare logs -f RUN TASK | head -1`
            _silence_stdout()
            return 1

    return run


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _explain(err: ApiError) -> str:
    if err.status == 401:
        return f"{err.message} (pass --api-key KEY or set NAGARE_API_KEY)"
    return err.message


def _client(namespace: argparse.Namespace) -> ApiClient:
    from nagare.client import ApiClient

    url = namespace.api or os.environ.get("NAGARE_API_URL") or DEFAULT_API_URL
    key = namespace.api_key if namespace.api_key is not None else os.environ.get("NAGARE_API_KEY")
    return ApiClient(url, key or "")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _emit(namespace: argparse.Namespace, data: Any, human: Callable[[], str]) -> int:
    """Print `data` as JSON with --json, else the human text; returns exit code 0."""
    if namespace.json:
        _print_json(data)
    else:
        print(human())
    return 0


# ---------------------------------------------------------------- commands


def cmd_dags(namespace: argparse.Namespace) -> int:
    dags = _client(namespace).dags(namespace.tag)
    return _emit(namespace, dags, lambda: dags_table(dags))


def cmd_trigger(namespace: argparse.Namespace) -> int:
    conf = {**(namespace.conf or {}), **dict(namespace.param)}
    run = _client(namespace).trigger(namespace.dag_id, conf or None)
    return _emit(namespace, run, lambda: f"Triggered DAG {run['dag_id']} → run {run['run_id']}")


def cmd_backfill(namespace: argparse.Namespace) -> int:
    answer = _client(namespace).backfill(
        namespace.dag_id, namespace.start, namespace.end, namespace.dry_run
    )
    return _emit(namespace, answer, lambda: backfill_text(answer))


def cmd_pause(namespace: argparse.Namespace) -> int:
    answer = _client(namespace).pause(namespace.dag_id)
    return _emit(namespace, answer, lambda: f"Paused DAG {namespace.dag_id}")


def cmd_activate(namespace: argparse.Namespace) -> int:
    answer = _client(namespace).activate(namespace.dag_id)
    return _emit(namespace, answer, lambda: f"Activated DAG {namespace.dag_id}")


def cmd_runs(namespace: argparse.Namespace) -> int:
    page = _client(namespace).runs(
        dag_id=namespace.dag,
        status=namespace.status,
        trigger=namespace.trigger,
        page=namespace.page,
        limit=namespace.limit,
    )
    return _emit(namespace, page, lambda: runs_table(page))


def cmd_run(namespace: argparse.Namespace) -> int:
    run = _client(namespace).run(namespace.run_id)
    return _emit(namespace, run, lambda: run_details(run))


def cmd_tasks(namespace: argparse.Namespace) -> int:
    tasks = _client(namespace).tasks(namespace.run_id)
    return _emit(namespace, tasks, lambda: tasks_table(tasks, now_ms()))


def cmd_logs(namespace: argparse.Namespace) -> int:
    if namespace.follow:
        return _follow_logs(namespace)
    client = _client(namespace)
    text = client.logs_text(
        namespace.run_id, namespace.task_id, attempt=namespace.attempt, tail=namespace.tail
    )
    if namespace.json:
        _print_json(text.splitlines())
    else:
        sys.stdout.write(text)
    return 0


def _follow_logs(namespace: argparse.Namespace) -> int:
    client = _client(namespace)
    events = client.follow_logs(namespace.run_id, namespace.task_id, attempt=namespace.attempt)
    for event, data in events:
        if namespace.json:
            print(json.dumps({"event": event, "data": data}, ensure_ascii=False), flush=True)
        elif event == "end":
            print(_end_message(namespace.task_id, data), file=sys.stderr, flush=True)
        elif event == "message":
            print(data, flush=True)
    return 0


def _end_message(task_id: str, data: str) -> str:
    try:
        status = json.loads(data).get("status", data)
    except (ValueError, AttributeError):
        status = data
    return f"task {task_id} finished: {status}"


def cmd_retry(namespace: argparse.Namespace) -> int:
    client = _client(namespace)
    if namespace.task_id is None:
        if namespace.downstream:
            raise ConfigError("--downstream needs a TASK_ID (the task whose dependants re-run)")
        run = client.retry_run(namespace.run_id)
        return _emit(
            namespace,
            run,
            lambda: (
                f"Queued retry of the failed, upstream_failed and cancelled tasks of run "
                f"{namespace.run_id}"
            ),
        )
    task = client.retry_task(namespace.run_id, namespace.task_id, namespace.downstream)
    also = " and its successful dependants" if namespace.downstream else ""
    return _emit(
        namespace,
        task,
        lambda: f"Queued retry for task {namespace.task_id}{also} in run {namespace.run_id}",
    )


def cmd_kill(namespace: argparse.Namespace) -> int:
    client = _client(namespace)
    if namespace.task_id is None:
        run = client.kill_run(namespace.run_id)
        return _emit(namespace, run, lambda: f"Killed run {namespace.run_id}")
    task = client.kill_task(namespace.run_id, namespace.task_id)
    return _emit(
        namespace, task, lambda: f"Killed task {namespace.task_id} in run {namespace.run_id}"
    )


def cmd_approve(namespace: argparse.Namespace) -> int:
    return _answer(namespace, True)


def cmd_reject(namespace: argparse.Namespace) -> int:
    return _answer(namespace, False)


def _answer(namespace: argparse.Namespace, approved: bool) -> int:
    client = _client(namespace)
    by = namespace.by if namespace.by is not None else os.environ.get("USER", "")
    answer = client.approve if approved else client.reject
    task = answer(namespace.run_id, namespace.task_id, by, namespace.message)
    verb = "Approved" if approved else "Rejected"
    return _emit(
        namespace,
        task,
        lambda: f"{verb} task {namespace.task_id} in run {namespace.run_id} → {task['status']}",
    )


def cmd_emit(namespace: argparse.Namespace) -> int:
    payload = event_payload(namespace.data, sys.stdin.read)
    answer = _client(namespace).emit(namespace.name, payload)
    return _emit(namespace, answer, lambda: matched_lines(namespace.name, answer))


def event_payload(data: str | None, read_stdin: Callable[[], str]) -> Any:
    """`--data`: JSON text, `@FILE`, or `-` (stdin); None without it."""
    if data is None:
        return None
    where = "the payload"
    if data == "-":
        text, where = read_stdin(), "the payload on stdin"
    elif data.startswith("@"):
        try:
            with open(data[1:], encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the payload file {data[1:]}: {exc}") from None
        where = f"the payload in {data[1:]}"
    else:
        text = data
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON ({exc})") from None


def matched_lines(name: str, answer: dict[str, Any]) -> str:
    matched = answer.get("matched") or []
    if not matched:
        return f"Event {name}: no waiting task matched"
    lines = [f"Event {name} resolved {len(matched)} waiting task{'s' if len(matched) > 1 else ''}:"]
    lines += [f"  {m.get('run_id', '')} {m.get('task_id', '')}" for m in matched]
    return "\n".join(lines)


def cmd_stats(namespace: argparse.Namespace) -> int:
    stats = _client(namespace).stats()
    return _emit(namespace, stats, lambda: stats_lines(stats))


def cmd_workers(namespace: argparse.Namespace) -> int:
    workers = _client(namespace).workers()
    return _emit(namespace, workers, lambda: workers_table(workers))


_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler], ...] = (
    ("dags", "list the loaded DAGs", _dags_args, cmd_dags),
    ("trigger", "start a manual run of a DAG", _trigger_args, cmd_trigger),
    (
        "backfill",
        "create a run per schedule slot in a time range (--dry-run: only list them)",
        _backfill_args,
        cmd_backfill,
    ),
    ("pause", "stop scheduling a DAG", _dag_arg, cmd_pause),
    ("activate", "resume scheduling a DAG", _dag_arg, cmd_activate),
    ("runs", "list runs, newest first", _runs_args, cmd_runs),
    ("run", "show one run", _run_arg, cmd_run),
    ("tasks", "list the tasks of a run", _run_arg, cmd_tasks),
    ("logs", "print (or follow with -f) the log of a task", _logs_args, cmd_logs),
    ("retry", "run a finished run's failed tasks, or one task, again", _retry_args, cmd_retry),
    ("kill", "kill a run, or one task of it", _kill_args, cmd_kill),
    ("approve", "approve a task waiting for approval", _answer_args, cmd_approve),
    ("reject", "reject a task waiting for approval (it fails)", _answer_args, cmd_reject),
    ("emit", "emit an event for the `wait` steps waiting for it", _emit_args, cmd_emit),
    ("stats", "show run and DAG counters", _no_args, cmd_stats),
    ("workers", "list the connected remote workers", _no_args, cmd_workers),
    AUDIT_COMMAND,
)


# ---------------------------------------------------------------- formatting


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
    summary = f"Showing {len(runs)} of {page.get('total', len(runs))} total runs"
    if page.get("page", 1) > 1:
        summary += f" (page {page['page']})"
    return table(("RUN ID", "DAG", "STATUS", "TRIGGER", "CREATED"), rows) + "\n\n" + summary


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
