"""The command line: `nagare [serve]`, `nagare exec`, `nagare validate`, and the API client
commands (`nagare dags`, `nagare trigger`, ...). The only place that prints or exits."""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from nagare import __version__
from nagare.config import OPTIONS, load_config
from nagare.dagfile import DagError, load_dag_file
from nagare.dagfile.calls import call_errors
from nagare.engine.assignment import run_as_errors
from nagare.engine.expressions import compile_errors as webhook_compile_errors
from nagare.errors import ConfigError, InvalidParams, NagareError
from nagare.memory import trim
from nagare.models import DagDef, TaskType
from nagare.patterns import has_template

# settings a remote worker reads (the others are the master's)
WORKER_OPTIONS = frozenset(
    {"config", "log_level", "log_format", "docker_host", "join", "pools", "max_tasks"}
    | {"prefetch", "worker_id", "run_as", "token"}
)
# one example line at the end of each command's --help
EXAMPLES = {
    "serve": "nagare serve --port :8080 --dags dags --db nagare.db",
    "worker": "nagare worker --join http://master:8080 --pools gpu --token SECRET",
    "exec": "nagare exec dags/hello.yaml -p WHO=world",
    "validate": "nagare validate dags/",
    "schema": "nagare schema > nagare-dag.schema.json",
    "dry": "nagare dry hello_world -p WHO=world",
    "cleanup": "nagare cleanup --older-than 30d --dry-run",
    "version": "nagare version",
}
SERVER_COMMANDS = ("serve", "worker")
SETTLE_SECONDS = 1.0  # after start, when a server gives its freed start-up memory back
# client flags that may come before the command (`nagare --api URL dags`)
GLOBAL_VALUE_FLAGS = ("--api", "--api-key")
GLOBAL_SWITCHES = ("--json",)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser, namespace = _parse(args)
    if not getattr(namespace, "command", None):
        parser.print_help()
        return 0
    del parser  # a server runs for days: its parser need not
    as_json = bool(getattr(namespace, "json", False))
    try:
        return int(namespace.func(namespace))
    except InvalidParams as err:
        if as_json or not err.details:
            return fail(err.code, err.message, as_json, err.details)
        print(f"error: {err.message.split(': ', 1)[0]}:", file=sys.stderr)
        for param, message in err.details:
            print(f"  {param}: {message}", file=sys.stderr)
        return 2
    except NagareError as err:  # (ConfigError among them)
        return fail(err.code, err.message, as_json)
    except KeyboardInterrupt:
        return 130


def _parse(args: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the command line's namespace. A server or worker start builds a parser
    of those two commands alone: the client commands' modules stay unloaded for the life of
    the process."""
    word = _command_word(args)
    if word is None and any(a in ("--api", "--json") or a.startswith("--api=") for a in args):
        fail(
            "usage",
            "--api and --json are client flags: name a command after them, "
            "e.g. `nagare --api http://host:8080 dags` (see `nagare --help`)",
            "--json" in args,
        )
        sys.exit(2)
    lean = word in SERVER_COMMANDS or (word is None and "-h" not in args and "--help" not in args)
    parser = build_parser(full=not lean)
    commands = _commands(parser).choices
    args = hoist_global_flags(args, set(commands))
    if "--json" in args:  # usage errors too come as JSON
        for command in commands.values():
            command.json_errors = True
    if _serves(args):
        args = ["serve", *args]
    return parser, parser.parse_args(args)


def _command_word(args: list[str]) -> str | None:
    """The command of `args` (after any global client flags), or None when only flags are
    given (a server start)."""
    i = _global_flags_end(args)
    if i < len(args) and not args[i].startswith("-"):
        return args[i]
    return None


def _global_flags_end(args: list[str]) -> int:
    """Where the leading global client flags (`--api URL`, `--api-key KEY`, `--json`) end."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in GLOBAL_VALUE_FLAGS and i + 1 < len(args):
            i += 2
        elif arg in GLOBAL_SWITCHES or arg.startswith(tuple(f + "=" for f in GLOBAL_VALUE_FLAGS)):
            i += 1
        else:
            break
    return i


def _serves(args: list[str]) -> bool:
    """No command, only flags: `nagare --port :9090` is `nagare serve --port :9090`."""
    return not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"))


def fail(
    code: str, message: str, as_json: bool, details: Sequence[tuple[str, str]] = (), status: int = 2
) -> int:
    """Print an error on stderr (`error: ...`, or with --json the API's error shape); returns
    the exit code."""
    if as_json:
        error: dict[str, Any] = {"code": code, "message": message}
        if details:
            error["details"] = [{"param": p, "message": m} for p, m in details]
        print(json.dumps({"error": error}, ensure_ascii=False), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return status


def hoist_global_flags(args: list[str], commands: set[str]) -> list[str]:
    """`--api URL`, `--api-key KEY` and `--json` given before the command move after it."""
    i = _global_flags_end(args)
    if i and i < len(args) and args[i] in commands:
        return [args[i], *args[:i], *args[i + 1 :]]
    return args


class _Parser(argparse.ArgumentParser):
    """argparse's parser; with `json_errors`, a usage error is the API's error shape on stderr."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            fail("usage", f"{self.prog}: {message}", True)
            sys.exit(2)
        super().error(message)


def _commands(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if a.dest == "command")


def build_parser(full: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nagare",
        description="Nagare: a lean DAG orchestrator. Without a command it "
        "serves the API and dashboard (same as `nagare serve`). Client commands take "
        "--api URL, --api-key KEY and --json before or after the command.",
    )
    parser.add_argument("--version", action="version", version=f"nagare {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the scheduler, workers, API and dashboard")
    _add_server_flags(serve)
    serve.set_defaults(func=cmd_serve)
    worker = commands.add_parser("worker", help="run as a remote worker of a master (cluster mode)")
    _add_server_flags(worker, WORKER_OPTIONS)
    worker.set_defaults(func=cmd_worker)
    if not full:
        _describe(commands, EXAMPLES)
        return parser
    run = commands.add_parser(
        "exec",
        help="run one DAG in this process to completion and exit "
        "0 on success, 1 on failure, 2 on bad input (no server needed)",
    )
    run.add_argument("target", metavar="FILE_OR_DAG", help="a DAG file, or a DAG id in --dags")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run parameter (env var of every task), converted to the type the DAG's "
        "params: declare (JSON text for object and array); repeatable",
    )
    run.add_argument("--db", help="record the run in this database (default: a temporary one)")
    run.add_argument("--dags", help="DAGs folder for a DAG id (default: dags)")
    run.add_argument("--config", help="settings file (default: nagare.yaml)")
    run.add_argument("--quiet", action="store_true", help="do not print task output")
    run.add_argument(
        "--progress",
        nargs="?",
        const="live",
        choices=("live", "lines", "off"),
        help="on stderr: a line when a task starts and ends, and (live) a status line "
        "redrawn in place (default: live on a terminal, else off)",
    )
    run.set_defaults(func=cmd_exec)
    validate = commands.add_parser(
        "validate", help="check DAG files and print every problem (exit 1 if any is invalid)"
    )
    validate.add_argument(
        "paths", nargs="*", metavar="PATH", help="DAG files or folders (default: the --dags folder)"
    )
    validate.add_argument("--dags", default="dags", help="DAGs folder (default: dags)")
    validate.add_argument(
        "--config", help="settings file whose DAG limits apply (default: nagare.yaml)"
    )
    validate.set_defaults(func=cmd_validate)
    _add_tooling(commands)
    _add_cleanup(commands)
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _: print(f"nagare {__version__}") or 0)
    from nagare.cli_client import CLIENT_EXAMPLES, add_client_commands

    add_client_commands(commands)
    from nagare.cli_accounts import ACCOUNT_EXAMPLES, add_account_commands

    add_account_commands(commands)
    from nagare.cli_db import DB_EXAMPLES, add_db_commands

    add_db_commands(commands)
    _describe(commands, {**EXAMPLES, **CLIENT_EXAMPLES, **ACCOUNT_EXAMPLES, **DB_EXAMPLES})
    return parser


def _describe(commands: Any, examples: dict[str, str]) -> None:
    """Each command's --help starts with its summary and ends with one example."""
    summaries = {action.dest: action.help for action in commands._choices_actions}
    for name, parser in commands.choices.items():
        parser.description = parser.description or summaries.get(name)
        if name in examples:
            parser.epilog = f"example: {examples[name]}"


def _add_server_flags(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    for option in OPTIONS:
        if not option.flag or (only is not None and option.name not in only):
            continue
        if option.kind == "bool":
            parser.add_argument(
                option.flag,
                dest=option.name,
                action="store_const",
                const=True,
                default=None,
                help=option.help,
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                default=None,
                metavar=option.name.upper(),
                help=f"{option.help} [env {option.env}]" if option.env else option.help,
            )


def _flags(namespace: argparse.Namespace) -> dict[str, Any]:
    return {o.name: getattr(namespace, o.name, None) for o in OPTIONS}


def setup_logging(level: str, fmt: str = "text") -> None:
    from nagare.server_log import configure

    configure(level, fmt)


# ---------------------------------------------------------------- server


def cmd_serve(namespace: argparse.Namespace) -> int:
    config = load_config(_flags(namespace))
    setup_logging(config.log_level, config.log_format)
    if config.worker:
        return cmd_worker(namespace)
    from nagare.app import App
    from nagare.wiring import protect_process, raise_open_file_limit

    protect_process()
    raise_open_file_limit()
    app = App(config)
    signals = _Signals()
    app.start()
    if config.log_format == "text":  # JSON logs: every stderr line is a JSON object
        print(
            f"Nagare {__version__} on http://localhost:{app.port} — DAGs in '{config.dags}', "
            f"database '{config.db_display}'",
            file=sys.stderr,
            flush=True,
        )
    if not signals.wait(SETTLE_SECONDS):  # the first DAG load and sweeps are done by then
        trim()  # the start-up's freed heap goes back to the system before the long wait
        signals.wait()
    app.stop()
    return 0


def cmd_worker(namespace: argparse.Namespace) -> int:
    config = load_config(_flags(namespace))
    setup_logging(config.log_level, config.log_format)
    from nagare.wiring import protect_process, raise_open_file_limit
    from nagare.worker_app import build_worker

    protect_process()
    raise_open_file_limit()
    worker = build_worker(config)
    signals = _Signals()
    worker.on_fatal = signals.interrupt  # a master that refuses the worker ends the wait
    worker.start()
    try:
        if not signals.wait(SETTLE_SECONDS):
            trim()
            signals.wait()
    finally:
        worker.stop()  # raises the master's refusal, if that is why the wait ended
    return 0


class _Signals:
    """SIGTERM/SIGINT set a flag; nothing else happens inside the handler (taking a lock there
    could deadlock with the interrupted main thread). The interpreter also writes the signal to a
    wake-up pipe, so `wait` cannot miss a signal that arrives just before it blocks."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        signal.set_wakeup_fd(self._write_fd)
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def interrupt(self) -> None:
        """End `wait` without a signal (any thread): the process stops on its own."""
        os.write(self._write_fd, b"\0")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until SIGTERM or SIGINT (callable from any thread: the wake-up pipe carries
        the signal number, so this does not depend on the handler having run yet), or for at
        most `timeout` seconds. Whether a signal came."""
        while self.received is None:
            readable, _, _ = select.select([self._read_fd], [], [], timeout)
            if not readable:
                return False
            data = os.read(self._read_fd, 512)
            if data:
                self.received = data[-1]
        return True


# ---------------------------------------------------------------- exec


def cmd_exec(namespace: argparse.Namespace) -> int:
    from nagare.cli_exec import run_exec

    params = _params(namespace.param)
    before = signal.signal(signal.SIGTERM, _interrupt)  # ends the wait as Ctrl-C does
    try:
        return run_exec(namespace, params)
    finally:
        signal.signal(signal.SIGTERM, before)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _params(values: list[str]) -> dict[str, str]:
    params = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"-p expects KEY=VALUE, found '{value}'")
        params[key] = text
    return params


# ---------------------------------------------------------------- schema and dry


def _add_tooling(commands: Any) -> None:
    schema = commands.add_parser(
        "schema", help="print the JSON Schema of DAG files (for editors and CI checks)"
    )
    schema.set_defaults(func=cmd_schema)
    dry = commands.add_parser(
        "dry",
        help="validate a DAG, resolve its parameters and print the plan; runs nothing "
        "(exit 0 valid, 1 invalid)",
    )
    dry.add_argument("target", metavar="FILE_OR_DAG", help="a DAG file, or a DAG id in --dags")
    dry.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a run parameter"
    )
    dry.add_argument("--dags", default="dags", help="DAGs folder for a DAG id (default: dags)")
    dry.add_argument("--config", help="settings file whose DAG checks apply")
    dry.set_defaults(func=cmd_dry)


def cmd_schema(namespace: argparse.Namespace) -> int:
    import json

    from nagare.dagfile.fields import dag_schema

    print(json.dumps(dag_schema(), indent=2))
    return 0


def cmd_dry(namespace: argparse.Namespace) -> int:
    from nagare.engine.plan import dry_plan, plan_text, run_params

    config = load_config({"config": namespace.config, "dags": namespace.dags})

    def check(dag: DagDef) -> list[tuple[int, str, str]]:  # as the server checks at load
        return webhook_compile_errors(dag) + run_as_errors(dag, config.pool_run_as)

    target = namespace.target
    paths = [target] if os.path.isfile(target) else _dag_files([namespace.dags])
    for path in paths:
        dag, errors = load_dag_file(path, check, config.max_dag_file_bytes)
        if path == target and errors:
            for error in errors:
                print(error)
            return 1
        if dag is None or (path != target and dag.dag_id != target):
            continue
        params, problems = run_params(dag, _params(namespace.param))
        if problems:
            for problem in problems:
                print(f"-p: {problem}")
            return 1
        print(plan_text(dag, params, dry_plan(dag, params)), end="")
        return 0
    print(
        f"DAG '{target}' not found (no such file, and no valid DAG with that id in "
        f"{namespace.dags})"
    )
    return 1


# ---------------------------------------------------------------- validate


def cmd_validate(namespace: argparse.Namespace) -> int:
    files = _dag_files(namespace.paths or [namespace.dags])
    if not files:
        print("no DAG files found", file=sys.stderr)
        return 1
    config = load_config({"config": namespace.config, "dags": namespace.dags})

    def check(dag: DagDef) -> list[tuple[int, str, str]]:  # as the server checks at load
        return webhook_compile_errors(dag) + run_as_errors(dag, config.pool_run_as)

    bad = 0
    seen: dict[str, str] = {}
    valid: dict[str, tuple[str, DagDef]] = {}  # dag_id -> (path, DAG) of the files without error
    hooks: dict[str, str] = {}  # webhook path -> file
    for path in files:
        dag, found = load_dag_file(path, check, config.max_dag_file_bytes)
        errors = [str(replace(e, file=path)) for e in sorted(found, key=lambda e: e.line)]
        if dag is not None and dag.dag_id in seen:
            errors = [f"{path}: id: DAG id '{dag.dag_id}' is already defined by {seen[dag.dag_id]}"]
        hook = dag.trigger.path if dag is not None and dag.trigger else ""
        if hook and hook in hooks and not errors:
            errors = [
                f"{path}: trigger.path: webhook path '{hook}' is already used by {hooks[hook]}"
            ]
        elif hook and not errors:
            hooks[hook] = path
        if errors:
            bad += 1
            for error in errors:
                print(error)
        elif dag is not None:
            seen[dag.dag_id] = path
            valid[dag.dag_id] = (path, dag)
    bad += _print_calls(valid)
    print(f"{len(files) - bad} valid, {bad} invalid", file=sys.stderr)
    return 1 if bad else 0


def _print_calls(valid: dict[str, tuple[str, DagDef]]) -> int:
    """The valid files, less those whose `dag` steps call in a cycle or too deep (as the
    server's DAG folder refuses them), and a warning for each call of a DAG not among them.
    Returns how many DAGs the calls made invalid."""
    dags = {dag_id: dag for dag_id, (_, dag) in valid.items()}
    problems = call_errors(dags)
    for dag_id, (path, dag) in valid.items():
        name = path
        for line, field, message in sorted(problems.get(dag_id, ()), key=lambda p: p[0]):
            print(DagError(name, line, field, message))
        if dag_id not in problems:
            print(f"ok   {path}: DAG '{dag_id}' ({plural(len(dag.tasks), 'task')})")
        for task in (*dag.tasks, *dag.handler_on.values()):
            callee = task.dag_id
            if task.type is TaskType.DAG and not has_template(callee) and callee not in dags:
                print(
                    f"warning: {name}:{task.line}: task '{task.task_id}' calls DAG '{callee}', "
                    "which is not among these files (the step fails unless it is loaded by then)"
                )
    return len(problems)


def plural(count: int, noun: str) -> str:
    """`1 task`, `2 tasks`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _dag_files(paths: list[str]) -> list[str]:
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(
                os.path.join(path, n)
                for n in os.listdir(path)
                if n.endswith((".yaml", ".yml")) and not n.startswith(".")
            )
        elif os.path.exists(path):
            files.append(path)
        else:
            print(f"{path}: no such file or folder", file=sys.stderr)
    return files


# ---------------------------------------------------------------- cleanup


def _add_cleanup(commands: Any) -> None:
    cleanup = commands.add_parser(
        "cleanup",
        help="delete finished runs and audit entries older than an age",
        description="Delete finished runs created (and finished) more than AGE ago, with their "
        "task instances, attempts (metrics) and log folders, and the audit log's entries "
        "older than AGE; running runs are never deleted. "
        "The first cleanup of a database created before incremental auto-vacuum converts it "
        "with one VACUUM.",
    )
    cleanup.add_argument(
        "--older-than",
        metavar="AGE",
        help="e.g. 30d, 12h or 90m (default: retention_days from the settings)",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    cleanup.add_argument("--db", help="database file (default: the settings' db)")
    cleanup.add_argument("--logs-dir", help="task logs folder (default: the settings')")
    cleanup.add_argument("--config", help="settings file (default: nagare.yaml)")
    cleanup.set_defaults(func=cmd_cleanup)


def cmd_cleanup(namespace: argparse.Namespace) -> int:
    from nagare.clock import now_ms, to_iso
    from nagare.logs import LogFiles
    from nagare.metrics import DAY_MS, parse_span
    from nagare.retention import cleanup
    from nagare.store import DatabaseError, Store

    config = load_config(
        {"config": namespace.config, "db": namespace.db, "logs_dir": namespace.logs_dir}
    )
    if namespace.older_than:
        age = parse_span(namespace.older_than, "--older-than")
    elif config.retention_days > 0:
        age = config.retention_days * DAY_MS
    else:
        raise ConfigError("retention_days is 0 (keep everything): give --older-than, e.g. 30d")
    on_file = config.db_is_file
    if on_file and not os.path.isfile(config.db):
        raise ConfigError(f"no database at '{config.db}' (give --db or --config)")
    verb = "would delete" if namespace.dry_run else "deleted"
    store = Store(config.db)
    try:
        before = os.path.getsize(config.db) if on_file else 0
        removed = cleanup(
            store,
            LogFiles(config.resolved_logs_dir),
            now_ms() - age,
            namespace.dry_run,
            on_run=lambda r: print(
                f"{verb} {r.run_id} ({r.dag_id}, {r.status}, created {to_iso(r.created_at)}, "
                f"{r.tasks} tasks, {r.attempts} attempts)"
            ),
        )
        print(
            f"{verb} {removed.runs} runs, {removed.tasks} task instances, {removed.attempts} "
            f"attempts{' and their log folders' if removed.runs else ''}; {removed.audit} "
            "audit log entries"
        )
        if not namespace.dry_run:
            try:
                if store.db.enable_incremental_vacuum():
                    print("converted the database to incremental auto-vacuum (one VACUUM)")
            except DatabaseError as err:
                print(f"warning: {err.message}; its free pages are reused", file=sys.stderr)
    finally:
        store.close()  # the last connection checkpoints the WAL into the file
    if on_file and not namespace.dry_run:
        after = os.path.getsize(config.db)
        print(f"database file: {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB")
    return 0
