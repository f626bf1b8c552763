"""The command line: `nagare [serve]`, `nagare exec`, `nagare validate`, and the API client
commands (`nagare dags`, `nagare trigger`, ...). The only place that prints or exits."""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from nagare import __version__
from nagare.config import OPTIONS, Config, load_config
from nagare.dagfile import DagError, load_dag_file
from nagare.dagfile.calls import call_errors
from nagare.engine.assignment import run_as_errors
from nagare.errors import ConfigError, InvalidParams, NagareError
from nagare.models import DagDef, TaskType
from nagare.patterns import has_template
from nagare.webhooks import compile_errors as webhook_compile_errors


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version")):
        args = ["serve", *args]
    parser = build_parser()
    namespace = parser.parse_args(args)
    if not getattr(namespace, "command", None):
        parser.print_help()
        return 0
    try:
        return int(namespace.func(namespace))
    except InvalidParams as err:
        if not err.details:
            print(f"error: {err.message}", file=sys.stderr)
            return 2
        print(f"error: {err.message.split(': ', 1)[0]}:", file=sys.stderr)
        for param, message in err.details:
            print(f"  {param}: {message}", file=sys.stderr)
        return 2
    except (NagareError, ConfigError) as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nagare",
        description="Nagare: a lean DAG orchestrator. Without a command it "
        "serves the API and dashboard (same as `nagare serve`).",
    )
    parser.add_argument("--version", action="version", version=f"nagare {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the scheduler, workers, API and dashboard")
    _add_server_flags(serve)
    serve.set_defaults(func=cmd_serve)
    worker = commands.add_parser("worker", help="run as a remote worker (cluster mode)")
    _add_server_flags(worker)
    worker.set_defaults(func=cmd_worker)
    run = commands.add_parser(
        "exec",
        help="run one DAG in this process to completion and exit "
        "0 on success, 1 on failure (no server needed)",
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
    run.set_defaults(func=cmd_exec)
    validate = commands.add_parser("validate", help="check DAG files and print every problem")
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
    from nagare.cli_client import add_client_commands

    add_client_commands(commands)
    from nagare.cli_accounts import add_account_commands

    add_account_commands(commands)
    return parser


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        if not option.flag:
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
    from nagare.app import App, protect_process, raise_open_file_limit

    protect_process()
    raise_open_file_limit()
    app = App(config)
    signals = _Signals()
    app.start()
    if config.log_format == "text":  # JSON logs: every stderr line is a JSON object
        print(
            f"Nagare {__version__} on http://localhost:{app.port} — DAGs in '{config.dags}', "
            f"database '{config.db}'",
            file=sys.stderr,
            flush=True,
        )
    signals.wait()
    app.stop()
    return 0


def cmd_worker(namespace: argparse.Namespace) -> int:
    config = load_config(_flags(namespace))
    setup_logging(config.log_level, config.log_format)
    from nagare.app import build_worker, protect_process, raise_open_file_limit

    protect_process()
    raise_open_file_limit()
    worker = build_worker(config)
    signals = _Signals()
    worker.on_fatal = signals.interrupt  # a master that refuses the worker ends the wait
    worker.start()
    try:
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

    def wait(self) -> None:
        """Block until SIGTERM or SIGINT (callable from any thread: the wake-up pipe carries
        the signal number, so this does not depend on the handler having run yet)."""
        while self.received is None:
            select.select([self._read_fd], [], [])
            data = os.read(self._read_fd, 512)
            if data:
                self.received = data[-1]


# ---------------------------------------------------------------- exec


def cmd_exec(namespace: argparse.Namespace) -> int:
    params = _params(namespace.param)
    flags: dict[str, Any] = {"config": namespace.config, "dags": namespace.dags}
    target = namespace.target
    if os.path.isfile(target):
        dag, errors = load_dag_file(target)
        if dag is None:
            for error in errors:
                print(error, file=sys.stderr)
            return 2
        flags["dags"] = os.path.dirname(os.path.abspath(target))
        dag_id = dag.dag_id
    else:
        dag_id = target
    with _exec_db(namespace.db) as db:
        config = load_config({**flags, "db": db, "port": "0"})
        setup_logging("warning")
        return _exec_run(config, dag_id, params, namespace.quiet)


def _exec_run(config: Config, dag_id: str, params: dict[str, str], quiet: bool) -> int:
    from nagare.app import App

    lock = threading.Lock()

    def sink(task_id: str, stream: str, line: str) -> None:
        if not quiet:
            with lock:
                print(f"[{task_id}] {line}", flush=True)

    app = App(config, serve_http=False, schedule=False, line_sink=sink)
    signals = _Signals()
    app.start()
    try:
        if app.folder.get(dag_id) is None:
            errors = app.folder.snapshot.errors
            detail = "; ".join(e for errs in errors.values() for e in errs)
            print(
                f"error: DAG '{dag_id}' not found in {config.dags}"
                + (f" ({detail})" if detail else ""),
                file=sys.stderr,
            )
            return 2
        status = app.trigger_and_wait(dag_id, params, lambda: signals.received is not None)
        _print_summary(app, dag_id)
        print(f"run of '{dag_id}' finished: {status}", file=sys.stderr)
        return 0 if status == "success" else 1
    finally:
        app.stop()


def _print_summary(app: Any, dag_id: str) -> None:
    from nagare.store import RunFilter

    runs, _ = app.store.runs.find(RunFilter(dag_id=dag_id), 1, 1)
    if not runs:
        return
    for task in app.store.tasks.of_run(runs[0].run_id):
        note = f" ({task.message})" if task.message else ""
        print(f"  {task.task_id:<30} {task.status}{note}", file=sys.stderr)


class _exec_db:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._tmp: Any = None

    def __enter__(self) -> str:
        if self.path:
            return self.path
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="nagare-exec-")
        return os.path.join(self._tmp.name, "nagare.db")

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


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
        errors = [str(e) for e in found]
        if dag is not None and dag.dag_id in seen:
            errors = [
                f"{os.path.basename(path)}: id: DAG id '{dag.dag_id}' is already defined "
                f"by {seen[dag.dag_id]}"
            ]
        hook = dag.trigger.path if dag is not None and dag.trigger else ""
        if hook and hook in hooks and not errors:
            errors = [
                f"{os.path.basename(path)}: trigger.path: webhook path '{hook}' is already "
                f"used by {hooks[hook]}"
            ]
        elif hook and not errors:
            hooks[hook] = os.path.basename(path)
        if errors:
            bad += 1
            for error in errors:
                print(error)
        elif dag is not None:
            seen[dag.dag_id] = os.path.basename(path)
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
        name = os.path.basename(path)
        for line, field, message in problems.get(dag_id, ()):
            print(DagError(name, line, field, message))
        if dag_id not in problems:
            print(f"ok   {path}: DAG '{dag_id}' ({len(dag.tasks)} tasks)")
        for task in (*dag.tasks, *dag.handler_on.values()):
            callee = task.dag_id
            if task.type is TaskType.DAG and not has_template(callee) and callee not in dags:
                print(
                    f"warning: {name}:{task.line}: task '{task.task_id}' calls DAG '{callee}', "
                    "which is not among these files (the step fails unless it is loaded by then)"
                )
    return len(problems)


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
        help="delete finished runs older than an age, with their tasks, metrics and logs",
        description="Delete finished runs created (and finished) more than AGE ago, with their "
        "task instances, attempts (metrics) and log folders; running runs are never deleted. "
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
    if not os.path.isfile(config.db):
        raise ConfigError(f"no database at '{config.db}' (give --db or --config)")
    verb = "would delete" if namespace.dry_run else "deleted"
    store = Store(config.db)
    try:
        before = os.path.getsize(config.db)
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
            f"attempts{' and their log folders' if removed.runs else ''}"
        )
        if not namespace.dry_run:
            try:
                if store.db.enable_incremental_vacuum():
                    print("converted the database to incremental auto-vacuum (one VACUUM)")
            except DatabaseError as err:
                print(f"warning: {err.message}; its free pages are reused", file=sys.stderr)
    finally:
        store.close()  # the last connection checkpoints the WAL into the file
    if not namespace.dry_run:
        after = os.path.getsize(config.db)
        print(f"database file: {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB")
    return 0
