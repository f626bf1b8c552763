"""DAG files: YAML text -> a validated `DagDef`, or every problem of the file at once.

The YAML is composed into nodes (not loaded into Python objects) so that every error can name
the line, and so that string fields keep the literal text of their scalar: `PORT: 5432` is the
string "5432" and `MODE: 0755` stays "0755", as DAG authors wrote them.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from nagare.cron import MANUAL_SCHEDULES, parse_schedule
from nagare.dagfile import fields as fields_table
from nagare.dagfile.calls import read_outputs
from nagare.dagfile.conditions import (
    check_conditions,
    condition_fields,
    max_exit_code,
)
from nagare.dagfile.conditions import preconditions as dag_preconditions
from nagare.dagfile.graph import check_graph
from nagare.dagfile.graph import find_cycle as find_cycle  # re-exported
from nagare.dagfile.nodes import (
    ID_EXPECTED,
    ID_PATTERN,
    Collector,
    boolean,
    check_id,
    env_map,
    integer,
    mapping,
    node_kind,
    number,
    scalar_text,
    string_list,
    task_path,
)
from nagare.dagfile.nodes import (
    DagError as DagError,  # re-exported
)
from nagare.dagfile.nodes import (
    clip as clip,  # re-exported
)
from nagare.dagfile.params import build_params, check_dag_params, trigger_dag_params
from nagare.dagfile.run_rules import (
    check_reserved_ids,
    check_schedules,
    read_rules,
    read_schedules,
)
from nagare.dagfile.snapshot import dag_from_json as dag_from_json  # re-exported
from nagare.dagfile.snapshot import dag_to_json as dag_to_json  # re-exported
from nagare.dagfile.steps import COMMAND_STEPS, build_step, keys_of_type
from nagare.dagfile.yaml_nodes import MAX_DEPTH as MAX_DEPTH  # re-exported
from nagare.dagfile.yaml_nodes import compose as compose_yaml
from nagare.engine.expressions import compile_error, template_errors
from nagare.errors import close_matches
from nagare.models import (
    DagDef,
    HandlerKind,
    Resources,
    SecretDef,
    TaskDef,
    TaskType,
    TriggerDef,
)
from nagare.models import topological_order as topological_order  # re-exported
from nagare.patterns import ENV_NAME, EVENT_NAME, MEMORY, OUTPUT_NAME, USER_NAME

MAX_FILE_BYTES = 1048576  # the default of max_dag_file_bytes
MAX_NODES = 1_000_000  # values with every alias expanded (a 1 MiB file without aliases has fewer)
MAX_TASKS = 10_000  # tasks of one DAG once with_items is expanded
MAX_DEPENDENCIES = 200_000  # depends_on entries of one DAG once with_items is expanded
MAX_COMMAND_CHARS = 16_000_000  # command text of one DAG once with_items is expanded

HTTP_METHOD = re.compile(r"^[A-Za-z]+$")
WEBHOOK_PREFIX = "/api/webhooks/"

# Allowed keys come from the field table (which also generates the JSON Schema).
DAG_KEYS = fields_table.keys(fields_table.DAG)
TASK_KEYS = fields_table.keys(fields_table.TASK)
TRIGGER_KEYS = fields_table.keys(fields_table.TRIGGER)
RESOURCE_KEYS = fields_table.keys(fields_table.RESOURCES)
SECRET_KEYS = fields_table.keys(fields_table.SECRET)
# A handler is a task body: what a task has but its id, its place in the graph and fan-outs.
HANDLER_EXCLUDED = ("id", "depends_on", "map_over", "with_items")
HANDLER_KEYS = tuple(k for k in TASK_KEYS if k not in HANDLER_EXCLUDED)

# ---------------------------------------------------------------- public entry points


def load_dag_file(
    path: str,
    extra_check: Callable[[DagDef], list[tuple[int, str, str]]] | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> tuple[DagDef | None, list[DagError]]:
    """Read and validate one DAG file (`extra_check`: see `parse_dag`). A file that cannot be
    read (not a regular file, larger than `max_bytes`, not UTF-8, an OS error) is one error."""
    name = os.path.basename(path)
    text = read_dag_text(path, max_bytes)
    if isinstance(text, DagError):
        return None, [text]
    return parse_dag(text, name, os.path.dirname(os.path.abspath(path)), extra_check)


def read_dag_text(path: str, max_bytes: int) -> str | DagError:
    """The file's text, or why it cannot be a DAG file. Opened without blocking (a FIFO swapped
    in after the folder looked at it is refused, not waited on); at most `max_bytes` are read."""
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return DagError(name, 0, "", f"cannot read the file: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as handle:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return DagError(name, 0, "", not_regular_message(st.st_mode))
            if st.st_size > max_bytes:
                return DagError(name, 0, "", too_large_message(st.st_size, max_bytes))
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            return DagError(name, 0, "", f"cannot read the file: {exc.strerror or exc}")
    if len(data) > max_bytes:  # it grew since the stat
        return DagError(name, 0, "", too_large_message(len(data), max_bytes, "at least "))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return DagError(
            name,
            line,
            "",
            f"cannot read the file: it is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
            f"offset {exc.start}); expected a YAML text file",
        )


def not_regular_message(mode: int) -> str:
    kinds = {
        stat.S_IFDIR: "a directory",
        stat.S_IFIFO: "a FIFO (named pipe)",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }
    kind = kinds.get(stat.S_IFMT(mode), "not a file")
    return f"not a regular file ({kind}); it is not read (expected a YAML text file)"


def too_large_message(size: int, limit: int, prefix: str = "") -> str:
    return (
        f"the file has {prefix}{size} bytes; the limit is {limit} "
        "(max_dag_file_bytes in nagare.yaml); it is not read"
    )


def parse_dag(
    text: str,
    file: str = "<dag>",
    base_dir: str = ".",
    extra_check: Callable[[DagDef], list[tuple[int, str, str]]] | None = None,
) -> tuple[DagDef | None, list[DagError]]:
    """Parse YAML text into a DagDef. Returns (dag, []) or (None, errors)."""
    errors = Collector(file)
    root = _compose(text, errors)
    if root is None:
        return None, errors.summary()
    dag = _build_dag(root, errors, base_dir)
    if dag is not None:
        check_graph(dag, errors)
    if dag is not None and not errors.errors and extra_check is not None:
        for line, field, message in extra_check(dag):
            errors.add_at(line, field, message)
    if errors.errors:
        return None, errors.summary()
    return replace(dag, file=file) if dag else None, []


def _compose(text: str, errors: Collector) -> MappingNode | None:
    try:
        node = compose_yaml(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        errors.add_at(
            line, "", f"invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})"
        )
        return None
    except yaml.MarkedYAMLError as exc:
        line, problem = _yaml_problem(exc)
        lines = text.splitlines()
        bad_line = lines[line - 1] if 0 < line <= len(lines) else ""
        hint = (
            " (quote values that start with '*', e.g. schedule: \"*/5 * * * *\")"
            if (": *" in bad_line)
            else ""
        )
        errors.add_at(line, "", f"invalid YAML: {problem}{hint}")
        return None
    except yaml.YAMLError as exc:
        errors.add_at(0, "", f"invalid YAML: {exc}")
        return None
    if node is None:
        errors.add(None, "", "the file is empty (expected a mapping with 'id' and 'tasks')")
        return None
    if not isinstance(node, MappingNode):
        errors.add(node, "", f"expected a mapping with 'id' and 'tasks', found {node_kind(node)}")
        return None
    bomb = _expansion_problem(node)
    if bomb is not None:
        errors.add(*bomb)
        return None
    return node


def _yaml_problem(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """The line and text of a YAML error. A quoted value or a flow collection that is never
    closed is reported where it opens (the parser's context mark), not at the end of the text
    where the parser noticed it."""
    problem = exc.problem or str(exc)
    mark, context = exc.problem_mark, exc.context_mark
    opened = exc.context or ""
    unclosed = context is not None and opened.startswith(
        ("while scanning a quoted", "while parsing a flow sequence", "while parsing a flow mapping")
    )
    if not unclosed or context is None:
        return (mark.line + 1 if mark else 0), problem
    where = f"line {context.line + 1}, column {context.column + 1}"
    found = f"; {problem} at line {mark.line + 1}" if mark else ""
    if "quoted" in opened:
        return (
            context.line + 1,
            f"unclosed quote: the value quoted at {where} is never closed{found}",
        )
    what = "the '[' list" if "sequence" in opened else "the '{' mapping"
    return context.line + 1, f"{what} that starts at {where} is not closed{found}"


def _expansion_problem(root: Node) -> tuple[Node, str, str] | None:
    """An alias makes a node appear again wherever it is used: composing keeps one shared node,
    but reading the document visits every use. A file whose nodes, counted with every alias
    expanded, exceed `MAX_NODES` (a "billion laughs" file), or a node that contains itself, is
    refused before it is read. Iterative (no recursion), linear in the distinct nodes."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()  # on the current path
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            entered.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_NODES:
                message = (
                    f"with its aliases expanded the file has more than {MAX_NODES} values; "
                    "expected a DAG file, not an alias bomb"
                )
                return node, "", message
            continue
        if key in sizes:
            continue
        if key in entered:
            return node, "", "an alias refers to a list or mapping that contains it (a loop)"
        entered.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return None


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


# ---------------------------------------------------------------- DAG level


def _build_dag(root: MappingNode, errors: Collector, base_dir: str) -> DagDef | None:
    fields = mapping(root, DAG_KEYS, "", errors)
    dag_id = _required_id(root, fields, "id", errors)
    schedules = read_schedules(fields.get("schedule"), errors)
    schedule = schedules[0] if schedules else ""
    timezone = _optional_text(fields, "timezone", errors).strip()
    listed = isinstance(fields.get("schedule"), SequenceNode)
    _check_schedule(fields, "" if listed else schedule, timezone, errors)
    check_schedules(fields.get("schedule"), schedules, timezone, errors)
    rules = read_rules(fields, timezone, errors)
    handlers = (
        _build_handlers(fields["handler_on"], errors, base_dir) if "handler_on" in fields else {}
    )
    catchup = boolean(fields["catchup"], "catchup", errors) if "catchup" in fields else False
    env = env_map(fields["env"], "env", errors) if "env" in fields else {}
    trigger = _build_trigger(fields["trigger"], errors) if "trigger" in fields else None
    params = build_params(fields["params"], errors) if "params" in fields else ()
    secrets = _secrets(fields, "", errors, base_dir)
    when = _optional_text(fields, "when", errors).strip()
    if "when" in fields and not when:
        errors.add(fields["when"], "when", "expected a jq condition, found an empty string")
    tasks = _build_tasks(root, fields.get("tasks"), errors, base_dir)
    if tasks is None:
        return None
    check_reserved_ids(tasks, errors)
    dag = DagDef(
        dag_id=dag_id or "",
        tasks=tuple(tasks),
        description=_optional_text(fields, "description", errors),
        schedule=schedule,
        timezone=timezone,
        catchup=bool(catchup),
        env=env,
        trigger=trigger,
        params=params,
        secrets=secrets,
        schedules=schedules if len(schedules) > 1 else (),
        start_date=rules.start_date,
        end_date=rules.end_date,
        tags=rules.tags,
        max_active_runs=rules.max_active_runs,
        overlap_policy=rules.overlap_policy,
        timeout_seconds=rules.timeout_seconds,
        handler_on=handlers,
        when=when,
        preconditions=dag_preconditions(fields["preconditions"], "preconditions", errors)
        if "preconditions" in fields
        else (),
        when_line=fields["when"].start_mark.line + 1 if "when" in fields else 0,
        outputs=read_outputs(fields["outputs"], errors) if "outputs" in fields else {},
    )
    check_dag_params(dag, fields.get("params"), fields.get("trigger"), errors)
    return dag


def parse_handlers(
    text: str, file: str = "nagare.yaml", base_dir: str = "."
) -> tuple[dict[HandlerKind, TaskDef], list[DagError]]:
    """`default_handler_on` of the settings (YAML or JSON text of a `handler_on` mapping)."""
    errors = Collector(file)
    if not text.strip():
        return {}, []
    try:
        node = compose_yaml(text)
    except yaml.YAMLError as exc:
        errors.add_at(0, "handler_on", f"invalid YAML: {exc}")
        return {}, errors.summary()
    handlers = _build_handlers(node, errors, base_dir) if node is not None else {}
    if errors.errors:
        return {}, errors.summary()
    return handlers, []


def _build_handlers(node: Node, errors: Collector, base_dir: str) -> dict[HandlerKind, TaskDef]:
    """`handler_on: {success|failure|cancel|exit: <task body>}` -> handler tasks (reserved
    ids on_success...), in the order they run."""
    if not isinstance(node, MappingNode):
        errors.add(
            node,
            "handler_on",
            f"expected a mapping of success/failure/cancel/exit: task, found {node_kind(node)}",
        )
        return {}
    fields = mapping(node, tuple(k.value for k in HandlerKind), "handler_on", errors)
    result: dict[HandlerKind, TaskDef] = {}
    for kind in HandlerKind:
        if kind.value not in fields:
            continue
        path = f"handler_on.{kind.value}"
        built = _build_task(fields[kind.value], path, errors, base_dir, kind.task_id)
        if built is not None:
            result[kind] = built.task
    return result


def _required_id(
    parent: Node, fields: dict[str, Node], key: str, errors: Collector, path: str = ""
) -> str | None:
    field = f"{path}.{key}" if path else key
    if key not in fields:
        errors.add(parent, field, f"'{key}' is required (expected {ID_EXPECTED})")
        return None
    value = scalar_text(fields[key], field, errors)
    if value is None:
        return None
    check_id(fields[key], value, field, errors)
    return value


def _optional_text(fields: dict[str, Node], key: str, errors: Collector, path: str = "") -> str:
    if key not in fields:
        return ""
    return scalar_text(fields[key], f"{path}.{key}" if path else key, errors) or ""


def _check_schedule(
    fields: dict[str, Node], schedule: str, timezone: str, errors: Collector
) -> None:
    if timezone:
        try:
            parse_schedule("@daily", timezone)
        except ValueError as exc:
            errors.add(fields["timezone"], "timezone", str(exc))
            timezone = "UTC"  # still check the expression itself
    if schedule in MANUAL_SCHEDULES:
        return
    try:
        parse_schedule(schedule, timezone)
    except ValueError as exc:
        errors.add(fields["schedule"], "schedule", str(exc))


def _build_trigger(node: Node, errors: Collector) -> TriggerDef | None:
    if not isinstance(node, MappingNode):
        errors.add(
            node, "trigger", f"expected a mapping with 'type: webhook', found {node_kind(node)}"
        )
        return None
    fields = mapping(node, TRIGGER_KEYS, "trigger", errors)
    kind = _optional_text(fields, "type", errors, "trigger")
    if kind != "webhook":
        errors.add(
            fields.get("type", node),
            "trigger.type",
            f"expected 'webhook', found '{kind}'"
            if kind
            else "'type' is required (expected 'webhook')",
        )
    path = _optional_text(fields, "path", errors, "trigger")
    if not path.startswith(WEBHOOK_PREFIX) or len(path) == len(WEBHOOK_PREFIX):
        errors.add(
            fields.get("path", node),
            "trigger.path",
            f"expected a path starting with {WEBHOOK_PREFIX}, found '{path}'",
        )
    method = _optional_text(fields, "method", errors, "trigger") or "POST"
    if not HTTP_METHOD.match(method):
        errors.add(fields["method"], "trigger.method", f"expected an HTTP method, found '{method}'")
    secret = _optional_text(fields, "secret", errors, "trigger")
    secret_env = _optional_text(fields, "secret_env", errors, "trigger")
    if secret and secret_env:
        errors.add(
            fields["secret_env"],
            "trigger.secret_env",
            "give either 'secret' or 'secret_env', not both",
        )
    if secret_env and not ENV_NAME.match(secret_env):
        errors.add(
            fields["secret_env"],
            "trigger.secret_env",
            f"'{secret_env}' is not a valid environment variable name",
        )
    extract = (
        env_map(fields["extract_payload"], "trigger.extract_payload", errors)
        if "extract_payload" in fields
        else {}
    )
    emit_event = _optional_text(fields, "emit_event", errors, "trigger")
    if emit_event and not EVENT_NAME.match(emit_event):
        errors.add(
            fields["emit_event"],
            "trigger.emit_event",
            f"'{emit_event}' is not a valid event name (letters, digits, '_', '.', ':', '-')",
        )
    if emit_event and extract:
        errors.add(
            fields["extract_payload"],
            "trigger.extract_payload",
            "'extract_payload' gives run parameters, but a trigger with 'emit_event' starts no "
            "run (a `wait` step's output_jq reads the payload instead)",
        )
    return TriggerDef(
        type=kind,
        path=path,
        method=method.upper(),
        secret=secret,
        secret_env=secret_env,
        signature_header=_optional_text(fields, "signature_header", errors, "trigger")
        or "X-Hub-Signature-256",
        extract_payload=extract,
        emit_event=emit_event,
    )


def _secrets(
    fields: dict[str, Node], path: str, errors: Collector, base_dir: str
) -> tuple[SecretDef, ...]:
    """`secrets:` (DAG or task level): a list of {name, env | file}, names unique. A relative
    file path is relative to the DAG file's folder."""
    if "secrets" not in fields:
        return ()
    node = fields["secrets"]
    field = f"{path}.secrets" if path else "secrets"
    if not isinstance(node, SequenceNode):
        errors.add(
            node,
            field,
            f"expected a list of {{name, env | file}} mappings, found {node_kind(node)}",
        )
        return ()
    result: list[SecretDef] = []
    seen: set[str] = set()
    for index, item in enumerate(node.value):
        at = f"{field}[{index}]"
        if not isinstance(item, MappingNode):
            errors.add(
                item, at, f"expected a mapping {{name, env | file}}, found {node_kind(item)}"
            )
            continue
        values = mapping(item, SECRET_KEYS, at, errors)
        name = _optional_text(values, "name", errors, at)
        env = _optional_text(values, "env", errors, at)
        file = _optional_text(values, "file", errors, at)
        if not name:
            errors.add(item, f"{at}.name", "'name' is required (the variable the task gets)")
        elif not ENV_NAME.match(name):
            errors.add(
                values["name"],
                f"{at}.name",
                f"'{clip(name, 100)}' is not a valid variable name "
                "(expected [A-Za-z_][A-Za-z0-9_]*)",
            )
        elif name in seen:
            errors.add(values["name"], f"{at}.name", f"the secret '{name}' is given twice")
        if bool(env) == bool(file):
            found = "both" if env else "neither"
            errors.add(item, at, f"give exactly one source, 'env' or 'file' (found {found})")
        if env and not ENV_NAME.match(env):
            errors.add(
                values["env"],
                f"{at}.env",
                f"'{clip(env, 100)}' is not a valid environment variable name",
            )
        seen.add(name)
        if name and file:
            file = os.path.normpath(os.path.join(base_dir, file))
        result.append(SecretDef(name=name, env=env, file=file))
    return tuple(result)


# ---------------------------------------------------------------- task level


@dataclass
class _RawTask:
    task: TaskDef
    node: MappingNode
    fields: dict[str, Node]
    items: list[str] | None
    path: str = ""


def _build_tasks(
    root: Node, node: Node | None, errors: Collector, base_dir: str
) -> list[TaskDef] | None:
    if node is None:
        errors.add(root, "tasks", "'tasks' is required (expected a non-empty list of tasks)")
        return None
    if not isinstance(node, SequenceNode) or not node.value:
        errors.add(node, "tasks", f"expected a non-empty list of tasks, found {node_kind(node)}")
        return None
    raw: list[_RawTask] = []
    for index, task_node in enumerate(node.value):
        built = _build_task(task_node, task_path(index, task_node), errors, base_dir)
        if built is not None:
            raw.append(built)
    problem = _expansion_limit(raw)
    if problem:
        errors.add(node, "tasks", problem)
        return None
    expanded = _expand_with_items(raw, errors)
    _check_map_sources(raw, {t.task_id for t in expanded}, errors)
    return expanded


def _expansion_limit(raw: list[_RawTask]) -> str:
    """What `with_items` would make too large (tasks, dependencies, command text), computed
    before any clone is made: a few lines of YAML must not make millions of them."""
    own = [1 if entry.items is None else len(entry.items) for entry in raw]
    copies = {entry.task.task_id: count for entry, count in zip(raw, own, strict=True)}
    tasks = sum(own)
    if tasks > MAX_TASKS:
        return f"the DAG has {tasks} tasks (with_items expanded); the limit is {MAX_TASKS}"
    edges = sum(
        count * sum(copies.get(dep, 1) for dep in entry.task.depends_on)
        for entry, count in zip(raw, own, strict=True)
    )
    if edges > MAX_DEPENDENCIES:
        return (
            f"the DAG has {edges} dependencies (with_items expanded); "
            f"the limit is {MAX_DEPENDENCIES}"
        )
    chars = sum(count * len(entry.task.command) for entry, count in zip(raw, own, strict=True))
    if chars > MAX_COMMAND_CHARS:
        return (
            f"the DAG's commands have {chars} characters (with_items expanded); "
            f"the limit is {MAX_COMMAND_CHARS}"
        )
    return ""


def _check_map_sources(raw: list[_RawTask], ids: set[str], errors: Collector) -> None:
    """`map_over` must name a task of this DAG (reported where the author wrote it)."""
    for entry in raw:
        source = entry.task.map_over
        if entry.task.type is TaskType.MAP and source and source not in ids:
            close = close_matches(source, sorted(ids), n=1)
            hint = (
                f"; did you mean '{close[0]}'?"
                if close
                else (f" (expected one of: {', '.join(sorted(ids))})")
            )
            errors.add(
                entry.fields["map_over"], f"{entry.path}.map_over", f"unknown task '{source}'{hint}"
            )


def _build_task(
    node: Node, path: str, errors: Collector, base_dir: str, handler_id: str = ""
) -> _RawTask | None:
    """A task (or, with `handler_id`, a handler's task body: no id, no dependencies)."""
    if not isinstance(node, MappingNode):
        wanted = "with 'command'" if handler_id else "with 'id'"
        errors.add(node, path, f"expected a task mapping {wanted}, found {node_kind(node)}")
        return None
    keys = HANDLER_KEYS if handler_id else TASK_KEYS
    fields = mapping(node, keys, path, errors, keys_of_type(_peek_type(node), keys))
    task_id = handler_id or _required_id(node, fields, "id", errors, path)
    kind = _task_type(fields, path, errors)
    if handler_id and kind in (TaskType.MAP, TaskType.TRIGGER_DAG):
        errors.add(
            fields["type"],
            f"{path}.type",
            f"a handler runs a command or a step (type: command, dag, http, mail, ssh, chat, "
            f"approval, wait), not {kind}",
        )
        kind = TaskType.COMMAND
    text = {
        key: _optional_text(fields, key, errors, path)
        for key in (
            "command",
            "pool",
            "map_over",
            "dag_id",
            "image",
            "workdir",
            "run_as",
            "when",
            "output",
        )
    }
    task = TaskDef(
        task_id=task_id or "",
        type=kind,
        command=text["command"],
        depends_on=tuple(string_list(fields["depends_on"], f"{path}.depends_on", errors, True))
        if "depends_on" in fields
        else (),
        env=env_map(fields["env"], f"{path}.env", errors) if "env" in fields else {},
        timeout_seconds=_opt_number(fields, "timeout_seconds", path, errors, positive=True),
        retries=_opt_int(fields, "retries", path, errors),
        retry_delay_seconds=_opt_number(
            fields, "retry_delay_seconds", path, errors, positive=False
        ),
        pool=text["pool"] or "default",
        map_over=text["map_over"],
        dag_id=text["dag_id"],
        image=text["image"],
        workdir=text["workdir"],
        volumes=tuple(_volumes(fields, path, errors, base_dir)),
        resources=_resources(fields, path, errors),
        run_as=text["run_as"],
        params=trigger_dag_params(fields["params"], f"{path}.params", errors)
        if "params" in fields
        else {},
        line=node.start_mark.line + 1,
        when=text["when"].strip(),
        output=text["output"],
        secrets=_secrets(fields, path, errors, base_dir),
        step=build_step(kind, fields, node, path, errors),
        **condition_fields(fields, path, errors, max_exit_code(kind)),
    )
    _check_task(task, fields, node, path, errors)
    _check_expressions(task, fields, node, path, errors)
    check_conditions(kind, fields, node, path, errors)
    items = _with_items(fields, path, errors) if "with_items" in fields else None
    if items is not None and kind is TaskType.MAP:
        errors.add(
            fields["with_items"],
            f"{path}.with_items",
            "with_items cannot be combined with type: map",
        )
    return _RawTask(task, node, fields, items, path) if task_id else None


def _peek_type(node: MappingNode) -> str:
    """The `type:` a task mapping names, read before its keys are checked ("" if none)."""
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == "type" and isinstance(value_node.value, str):
            return value_node.value
    return ""


def _task_type(fields: dict[str, Node], path: str, errors: Collector) -> TaskType:
    if "type" not in fields:
        return TaskType.COMMAND
    value = scalar_text(fields["type"], f"{path}.type", errors) or "command"
    try:
        return TaskType(value)
    except ValueError:
        known = ", ".join(t.value for t in TaskType)
        errors.add(fields["type"], f"{path}.type", f"unknown type '{value}' (expected {known})")
        return TaskType.COMMAND


def _opt_int(fields: dict[str, Node], key: str, path: str, errors: Collector) -> int:
    if key not in fields:
        return 0
    return integer(fields[key], f"{path}.{key}", errors) or 0


def _opt_number(
    fields: dict[str, Node], key: str, path: str, errors: Collector, positive: bool
) -> float:
    if key not in fields:
        return 0
    return number(fields[key], f"{path}.{key}", errors, positive) or 0


def _with_items(fields: dict[str, Node], path: str, errors: Collector) -> list[str]:
    node = fields["with_items"]
    items = string_list(node, f"{path}.with_items", errors, False)
    if not items and isinstance(node, SequenceNode):
        errors.add(node, f"{path}.with_items", "expected a non-empty list of values")
    return items


def _volumes(fields: dict[str, Node], path: str, errors: Collector, base_dir: str) -> list[str]:
    if "volumes" not in fields:
        return []
    result = []
    for index, spec in enumerate(string_list(fields["volumes"], f"{path}.volumes", errors, False)):
        field = f"{path}.volumes[{index}]"
        node = fields["volumes"].value[index]
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            errors.add(
                node, field, f"invalid volume '{spec}' (expected host_path:container_path[:ro|rw])"
            )
            continue
        if not parts[0] or not parts[1]:
            errors.add(
                node, field, f"invalid volume '{spec}': host and container paths must be non-empty"
            )
            continue
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            errors.add(node, field, f"invalid volume mode '{parts[2]}' (expected 'ro' or 'rw')")
            continue
        if not parts[1].startswith("/"):
            errors.add(node, field, f"container path '{parts[1]}' must be absolute")
            continue
        parts[0] = os.path.normpath(os.path.join(base_dir, parts[0]))
        result.append(":".join(parts))
    return result


def _resources(fields: dict[str, Node], path: str, errors: Collector) -> Resources | None:
    if "resources" not in fields:
        return None
    node = fields["resources"]
    field = f"{path}.resources"
    if not isinstance(node, MappingNode):
        errors.add(
            node, field, f"expected a mapping with cpus/memory/gpus, found {node_kind(node)}"
        )
        return None
    values = mapping(node, RESOURCE_KEYS, field, errors)
    cpus = _optional_text(values, "cpus", errors, field)
    memory = _optional_text(values, "memory", errors, field)
    gpus = _optional_text(values, "gpus", errors, field)
    if cpus and not _positive_finite(cpus):
        errors.add(
            values["cpus"],
            f"{field}.cpus",
            f'expected a positive number such as "0.5" or "2", found \'{cpus}\'',
        )
    if memory and not MEMORY.match(memory):
        errors.add(
            values["memory"],
            f"{field}.memory",
            f"expected a number with optional suffix b/k/m/g such as \"512m\", found '{memory}'",
        )
    if gpus and gpus != "all" and not (gpus.isascii() and gpus.isdigit() and int(gpus) > 0):
        errors.add(
            values["gpus"],
            f"{field}.gpus",
            f"expected \"all\" or a positive integer, found '{gpus}'",
        )
    return Resources(cpus=cpus, memory=memory, gpus=gpus)


def _positive_finite(text: str) -> bool:
    if not text.isascii():
        return False
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


def _check_task(
    task: TaskDef, fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    def at(key: str) -> Node:
        return fields.get(key, node)

    if task.type in COMMAND_STEPS and not task.command.strip():
        errors.add(
            at("command"), f"{path}.command", f"'command' is required for type '{task.type}' tasks"
        )
    if task.type not in COMMAND_STEPS and task.type is not TaskType.TRIGGER_DAG:
        for key in ("command", "output", "run_as", "preconditions"):
            if key in fields:
                errors.add(
                    fields[key],
                    f"{path}.{key}",
                    f"'{key}' cannot be used with type '{task.type}' (it runs no command here)",
                )
    if task.type in (TaskType.TRIGGER_DAG, TaskType.DAG) and not task.dag_id:
        errors.add(
            at("dag_id"),
            f"{path}.dag_id",
            f"'dag_id' is required for type '{task.type}' (the DAG to "
            f"{'trigger' if task.type is TaskType.TRIGGER_DAG else 'call'})",
        )
    if task.type not in (TaskType.COMMAND, TaskType.MAP):
        for key in ("image", "workdir", "volumes", "resources"):
            if key in fields:
                errors.add(
                    fields[key], f"{path}.{key}", f"'{key}' cannot be used with type '{task.type}'"
                )
    if task.type is TaskType.MAP and not task.map_over:
        errors.add(
            at("map_over"),
            f"{path}.map_over",
            "type 'map' requires 'map_over' naming the task whose stdout is the JSON array",
        )
    if task.map_over and task.type is not TaskType.MAP:
        errors.add(at("map_over"), f"{path}.map_over", "'map_over' is only valid with type: map")
    for key in ("workdir", "volumes", "resources"):
        if key in fields and not task.image and task.type in (TaskType.COMMAND, TaskType.MAP):
            errors.add(fields[key], f"{path}.{key}", f"'{key}' requires 'image' to be set")
    if task.run_as and not USER_NAME.match(task.run_as):
        errors.add(
            at("run_as"),
            f"{path}.run_as",
            f"'{task.run_as}' is not a valid user name (expected letters, digits, '_', '.', '-')",
        )
    if "params" in fields and task.type not in (TaskType.TRIGGER_DAG, TaskType.DAG):
        errors.add(
            fields["params"],
            f"{path}.params",
            "'params' is only valid with type: trigger_dag or dag (the parameters of the run it "
            "starts)",
        )
    if "dag_id" in fields and task.type not in (TaskType.TRIGGER_DAG, TaskType.DAG):
        errors.add(
            fields["dag_id"],
            f"{path}.dag_id",
            "'dag_id' is only valid with type: trigger_dag or dag (the DAG it starts)",
        )
    if task.run_as and task.type is TaskType.TRIGGER_DAG:
        errors.add(
            at("run_as"), f"{path}.run_as", "'run_as' cannot be used with type 'trigger_dag'"
        )
    if task.pool and not ID_PATTERN.match(task.pool):
        errors.add(
            at("pool"),
            f"{path}.pool",
            f"'{task.pool}' is not a valid pool name (expected {ID_EXPECTED})",
        )


def _check_expressions(
    task: TaskDef, fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    """`when:` and the templates of templated fields compile; `output:` names an output."""
    if "when" in fields and not task.when:
        errors.add(fields["when"], f"{path}.when", "expected a jq condition, found nothing")
    if task.when:
        if task.type is TaskType.TRIGGER_DAG:
            errors.add(
                fields["when"], f"{path}.when", "'when' cannot be used with type 'trigger_dag'"
            )
        problem = compile_error(task.when)
        if problem:
            errors.add(
                fields["when"],
                f"{path}.when",
                f"jq condition '{task.when}' does not compile: {problem}",
            )
    if "output" in fields:
        if not OUTPUT_NAME.match(task.output):
            errors.add(
                fields["output"],
                f"{path}.output",
                f"'{task.output}' is not a valid output name (expected letters, digits and '_', "
                "not starting with a digit)",
            )
        if task.type is TaskType.TRIGGER_DAG:
            errors.add(
                fields["output"],
                f"{path}.output",
                "'output' cannot be used with type 'trigger_dag'",
            )
    templated: list[tuple[str, str, Node]] = [
        (key, getattr(task, key), fields[key])
        for key in ("command", "image", "workdir")
        if key in fields
    ]
    if task.type is TaskType.DAG and "dag_id" in fields:  # (rendered when the step starts)
        templated.append(("dag_id", task.dag_id, fields["dag_id"]))
    if "env" in fields and isinstance(fields["env"], MappingNode):
        for key_node, value_node in fields["env"].value:
            name = str(key_node.value)
            if name in task.env:
                templated.append((f"env.{name}", task.env[name], value_node))
    if "volumes" in fields and isinstance(fields["volumes"], SequenceNode):
        for index, value_node in enumerate(fields["volumes"].value):
            if isinstance(value_node.value, str):
                templated.append((f"volumes[{index}]", value_node.value, value_node))
    for key, text, at in templated:
        if "{{" in text:
            for problem in template_errors(text):
                errors.add(at, f"{path}.{key}", problem)


def _expand_with_items(raw: list[_RawTask], errors: Collector) -> list[TaskDef]:
    """`with_items` clones a task per item (`<id>_<item>`); dependants depend on every clone."""
    clones: dict[str, list[str]] = {}
    expanded: list[TaskDef] = []
    for entry in raw:
        if entry.items is None:
            expanded.append(entry.task)
            continue
        ids = []
        for item in entry.items:
            clone_id = f"{entry.task.task_id}_{item}"
            if not ID_PATTERN.match(clone_id):
                errors.add(
                    entry.fields["with_items"],
                    f"{entry.task.task_id}.with_items",
                    f"item '{item}' makes the task id '{clone_id}', which is not valid "
                    f"(expected {ID_EXPECTED})",
                )
                continue
            ids.append(clone_id)
            expanded.append(
                replace(
                    entry.task,
                    task_id=clone_id,
                    command=entry.task.command.replace("{{item}}", item),
                    with_item=json.dumps(item),
                )
            )
        clones[entry.task.task_id] = ids
    return [_rewrite_deps(task, clones) for task in expanded]


def _rewrite_deps(task: TaskDef, clones: dict[str, list[str]]) -> TaskDef:
    deps: list[str] = []
    for dep in task.depends_on:
        deps.extend(clones.get(dep, [dep]))
    if task.type is TaskType.MAP and task.map_over and task.map_over not in deps:
        deps.append(task.map_over)
    return replace(task, depends_on=tuple(dict.fromkeys(deps)))
