"""API client commands of the command line: `nagare dags`, `nagare trigger`, `nagare logs -f`, ...

Each command talks to a running server through `nagare.client.ApiClient`, prints a table or a
message (or, with `--json`, the server's JSON answer) and returns the exit code: 0 on success,
1 when the API call failed (`error: <message>` on stderr, or with `--json` the API's error
shape), 3 when `logs` finds no log (the task has not run); argparse exits 2 on usage errors.
A RUN_ID argument may be a DAG id: its latest run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from nagare.cli_audit import AUDIT_COMMAND
from nagare.cli_format import (
    backfill_text,
    dags_table,
    history_table,
    no_log_reason,
    positive_int,
    run_details,
    runs_table,
    stats_lines,
    tag_counts,
    tags_table,
    tasks_table,
    workers_table,
)
from nagare.clock import now_ms
from nagare.errors import ConfigError

if TYPE_CHECKING:
    from nagare.client import ApiClient, ApiError

DEFAULT_API_URL = "http://localhost:8080"
EXIT_NO_LOG = 3  # `logs` of a task that has not run (pending, skipped, ...): no log to print
ALIASES = {"run": ("status",)}  # Dagu's `status <dag>`
WAITS_TO_START = ("pending", "queued", "up_for_retry")  # `logs -f` waits for these to start
DEFAULT_RUNS_LIMIT = 20

Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"


def add_client_commands(commands: Subparsers) -> None:
    """Register the client subcommands on the root parser's subcommand table."""
    common = _common_flags()
    for name, help_text, configure, handler in _COMMANDS:
        parser = commands.add_parser(
            name,
            aliases=ALIASES.get(name, ()),
            help=help_text,
            description=help_text,
            parents=[common],
        )
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
    parser.add_argument(
        "run_id", metavar="RUN_ID", help="the run id, or a DAG id for the DAG's latest run"
    )


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
    parser.add_argument("--trigger", default="", help="only runs started this way, e.g. manual")
    _page_args(parser)


def _history_args(parser: argparse.ArgumentParser) -> None:
    _dag_arg(parser)
    _page_args(parser)


def _page_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", default="", help="only runs in this status, e.g. failed")
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_RUNS_LIMIT,
        metavar="N",
        help=f"runs per page (default {DEFAULT_RUNS_LIMIT})",
    )
    parser.add_argument("--page", type=positive_int, default=1, metavar="N", help="page, from 1")


def _logs_args(parser: argparse.ArgumentParser) -> None:
    _task_args(parser)
    parser.add_argument(
        "--attempt", type=positive_int, metavar="N", help="attempt number (default: latest)"
    )
    parser.add_argument("--tail", type=positive_int, metavar="N", help="only the last N lines")
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


# ---------------------------------------------------------------- plumbing


def _guarded(handler: Handler) -> Handler:
    """Run a command; an API failure becomes `error: <message>` on stderr and exit code 1."""

    @functools.wraps(handler)
    def run(namespace: argparse.Namespace) -> int:
        from nagare.client import ApiError  # a client command only: a server never loads it

        try:
            if getattr(namespace, "run_id", None):
                namespace.run_id = latest_run(_client(namespace), namespace.run_id, namespace.json)
            return handler(namespace)
        except ApiError as err:
            from nagare.cli import fail

            return fail(err.code, _explain(err), namespace.json, status=1)
        except BrokenPipeError:  # e.g. `nagare logs -f RUN TASK | head -1`
            _silence_stdout()
            return 1

    return run


def latest_run(client: ApiClient, ref: str, quiet: bool) -> str:
    """`ref` if it is a run id; for a DAG id, the id of the DAG's latest run (said on stderr
    unless `quiet`). Raises ApiError if it is neither, or if the DAG has no run yet."""
    from nagare.client import ApiError

    try:
        return str(client.run(ref)["run_id"])
    except ApiError as err:
        if err.status != 404:
            raise
        missing = err
    try:
        client.dag(ref)
    except ApiError as err:
        if err.status != 404:
            raise
        raise ApiError(404, missing.code, f"{missing.message}, and no DAG has that id") from None
    runs = client.runs(dag_id=ref, limit=1).get("data") or []
    if not runs:
        raise ApiError(
            404, "not_found", f"DAG '{ref}' has no run yet (start one: nagare trigger {ref})"
        )
    run_id = str(runs[0]["run_id"])
    if not quiet:
        print(f"latest run of DAG {ref}: {run_id}", file=sys.stderr)
    return run_id


def _known_dag(client: ApiClient, dag_id: str) -> None:
    """Raises ApiError 404 `DAG 'x' not found` unless the DAG is loaded."""
    client.dag(dag_id)


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
    client = _client(namespace)
    page = client.runs(
        dag_id=namespace.dag,
        status=namespace.status,
        trigger=namespace.trigger,
        page=namespace.page,
        limit=namespace.limit,
    )
    if namespace.dag and not page.get("total"):
        _known_dag(client, namespace.dag)  # an unknown DAG is an error, not an empty table
    return _emit(namespace, page, lambda: runs_table(page))


def cmd_history(namespace: argparse.Namespace) -> int:
    client = _client(namespace)
    _known_dag(client, namespace.dag_id)
    page = client.runs(
        dag_id=namespace.dag_id,
        status=namespace.status,
        page=namespace.page,
        limit=namespace.limit,
    )
    return _emit(namespace, page, lambda: history_table(page, now_ms()))


def cmd_tags(namespace: argparse.Namespace) -> int:
    counts = tag_counts(_client(namespace).dags())
    return _emit(namespace, counts, lambda: tags_table(counts))


def cmd_run(namespace: argparse.Namespace) -> int:
    run = _client(namespace).run(namespace.run_id)
    return _emit(namespace, run, lambda: run_details(run))


def cmd_tasks(namespace: argparse.Namespace) -> int:
    tasks = _client(namespace).tasks(namespace.run_id)
    return _emit(namespace, tasks, lambda: tasks_table(tasks, now_ms()))


def cmd_logs(namespace: argparse.Namespace) -> int:
    client = _client(namespace)
    task = client.task(namespace.run_id, namespace.task_id)
    reason = no_log_reason(task)
    waits = task.get("status") in WAITS_TO_START
    if reason and not (namespace.follow and waits):
        return _no_log(namespace, reason)
    if namespace.follow:
        if reason and not namespace.json:
            print(f"task {namespace.task_id}: {reason}; waiting for it to start", file=sys.stderr)
        return _follow_logs(namespace)
    text = client.logs_text(
        namespace.run_id, namespace.task_id, attempt=namespace.attempt, tail=namespace.tail
    )
    if namespace.json:
        _print_json(text.splitlines())
    elif text:
        sys.stdout.write(text)
    else:
        print(f"task {namespace.task_id}: {empty_log_note(task)}", file=sys.stderr)
    return 0


def empty_log_note(task: dict[str, Any]) -> str:
    if task.get("status") in ("running", "waiting"):
        return f"its log is empty so far (it is {task['status']}: -f follows it)"
    return "its log is empty (it printed nothing)"


def _no_log(namespace: argparse.Namespace, reason: str) -> int:
    from nagare.cli import fail

    message = f"task {namespace.task_id} has no log: {reason}"
    return fail("no_log", message, namespace.json, status=EXIT_NO_LOG)


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
    (
        "history",
        "list the runs of one DAG, newest first, with their duration and end",
        _history_args,
        cmd_history,
    ),
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
    ("tags", "list the tags of the loaded DAGs, with how many DAGs have each", _no_args, cmd_tags),
    AUDIT_COMMAND,
)
CLIENT_EXAMPLES = {
    "dags": "nagare dags --tag nightly",
    "trigger": "nagare trigger hello_world -p WHO=world",
    "backfill": "nagare backfill nightly --start 2026-11-01 --end 2026-11-07 --dry-run",
    "pause": "nagare pause nightly",
    "activate": "nagare activate nightly",
    "runs": "nagare runs --dag hello_world --status failed",
    "history": "nagare history hello_world --limit 10",
    "run": "nagare run hello_world",
    "tasks": "nagare tasks hello_world",
    "logs": "nagare logs hello_world t2 -f",
    "retry": "nagare retry hello_world t2 --downstream",
    "kill": "nagare kill hello_world",
    "approve": "nagare approve hello_world sign_off -m 'looks good'",
    "reject": "nagare reject hello_world sign_off -m 'not now'",
    "emit": "nagare emit deploy-done --data '{\"version\": 3}'",
    "stats": "nagare stats --json",
    "workers": "nagare workers --api http://master:8080",
    "tags": "nagare tags",
    "audit": "nagare audit --action run. --since 24h",
}
