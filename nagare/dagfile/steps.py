"""The fields of the step types (`type: http | mail | ssh | chat | dag | approval | wait`): which
keys each type takes, how each is read, and the checks of one type's fields.

A step's own fields land in `TaskDef.step` (a plain dict: what the executor of its type gets in
`Assignment.step`, templates rendered when the task starts). Fields every task has (`command`,
`dag_id`, `params`, `timeout_seconds`, `env`, `secrets`, retries, conditions) stay where they are.

Adding a key to a step type: a `Field` in fields.py (the JSON Schema), its reader in `_READERS`,
its name in `STEP_KEYS[type]`, and a check in that type's `_check_*` function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nagare.dagfile.nodes import (
    Collector,
    boolean,
    integer,
    is_null,
    node_kind,
    number,
    scalar_text,
    string_list,
)
from nagare.dagfile.params import yaml_value
from nagare.engine.expressions import compile_error, template_errors
from nagare.models import RAW_STEP_KEYS, TaskType
from nagare.patterns import EVENT_NAME, OUTPUT_NAME

# The keys each step type reads into `TaskDef.step` (fields shared by every task are not here).
STEP_KEYS: dict[TaskType, tuple[str, ...]] = {
    TaskType.HTTP: (
        "method",
        "url",
        "headers",
        "body",
        "json",
        "expect_status",
        "output_jq",
        "insecure",
    ),
    TaskType.MAIL: ("to", "cc", "subject", "body", "attach"),
    TaskType.SSH: ("host", "user", "port", "identity_file", "known_hosts"),
    TaskType.CHAT: (
        "provider",
        "model",
        "base_url",
        "messages",
        "temperature",
        "max_tokens",
        "api_key",
        "insecure",
    ),
    TaskType.DAG: (),
    TaskType.APPROVAL: ("message", "approvers"),
    TaskType.WAIT: ("event", "match", "output_jq"),
}
# Every key of some step type: a task of another type may not use it.
ALL_STEP_KEYS = frozenset(k for keys in STEP_KEYS.values() for k in keys)
# The step types that run a command (`command` is required); the others may not have one.
COMMAND_STEPS = frozenset({TaskType.COMMAND, TaskType.MAP, TaskType.SSH})

Reader = Callable[[Node, str, Collector], Any]


def keys_of_type(type_name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Of the `allowed` task keys, those a task of this type may use (for suggestions)."""
    try:
        own = STEP_KEYS.get(TaskType(type_name or "command"), ())
    except ValueError:
        return allowed
    return tuple(k for k in allowed if k not in ALL_STEP_KEYS or k in own)


def _text(node: Node, field: str, errors: Collector) -> Any:
    return scalar_text(node, field, errors)


def _texts(node: Node, field: str, errors: Collector) -> Any:
    return string_list(node, field, errors, True)


def _port(node: Node, field: str, errors: Collector) -> Any:
    """A port number, or a text with a template or a `${NAME}` that gives one when the task
    starts (checked then)."""
    is_text = isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:str"
    if is_text and ("{{" in node.value or "${" in node.value):
        return node.value
    value = integer(node, field, errors, 1)
    if value is not None and value > 65535:
        errors.add(node, field, f"expected a port number 1-65535, found {value}")
        return None
    return value


def _number(node: Node, field: str, errors: Collector) -> Any:
    return number(node, field, errors, False)


def _count(node: Node, field: str, errors: Collector) -> Any:
    return integer(node, field, errors, 1)


def _text_map(node: Node, field: str, errors: Collector) -> Any:
    """NAME: text (headers, output_jq)."""
    if is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        errors.add(node, field, f"expected a mapping of NAME: value, found {node_kind(node)}")
        return {}
    result: dict[str, str] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            errors.add(key_node, field, f"expected a name, found {node_kind(key_node)}")
            continue
        text = scalar_text(value_node, f"{field}.{key_node.value}", errors)
        if text is not None:
            result[str(key_node.value)] = text
    return result


def _json(node: Node, field: str, errors: Collector) -> Any:
    return yaml_value(node)


def _statuses(node: Node, field: str, errors: Collector) -> Any:
    """`expect_status`: 200, [200, 201], "2xx" or ["2xx", 304] -> a list of texts."""
    items = node.value if isinstance(node, SequenceNode) else [node]
    found: list[str] = []
    for item in items:
        text = scalar_text(item, field, errors)
        if text is None:
            continue
        text = text.strip().lower()
        if not _is_status(text):
            errors.add(
                item,
                field,
                f"expected an HTTP status such as 200 or a class such as 2xx, found '{text}'",
            )
            continue
        found.append(text)
    return found


def _is_status(text: str) -> bool:
    if len(text) != 3:
        return False
    if text[0] in "12345" and text[1:] == "xx":
        return True
    return text.isdigit() and 100 <= int(text) <= 599


def _messages(node: Node, field: str, errors: Collector) -> Any:
    if not isinstance(node, SequenceNode) or not node.value:
        errors.add(node, field, f"expected a non-empty list of messages, found {node_kind(node)}")
        return []
    found: list[dict[str, str]] = []
    for index, item in enumerate(node.value):
        at = f"{field}[{index}]"
        if not isinstance(item, MappingNode):
            errors.add(
                item, at, f"expected a mapping with role and content, found {node_kind(item)}"
            )
            continue
        entry: dict[str, str] = {}
        for key_node, value_node in item.value:
            key = str(key_node.value)
            if key not in ("role", "content"):
                errors.add(key_node, f"{at}.{key}", f"unknown key '{key}' (known: role, content)")
                continue
            text = scalar_text(value_node, f"{at}.{key}", errors)
            if text is not None:
                entry[key] = text
        role = entry.get("role", "user")
        if role not in ("system", "user", "assistant"):
            errors.add(item, f"{at}.role", f"expected system, user or assistant, found '{role}'")
            continue
        found.append({"role": role, "content": entry.get("content", "")})
    return found


def _boolean(node: Node, field: str, errors: Collector) -> Any:
    return boolean(node, field, errors)


_READERS: dict[str, Reader] = {
    "method": _text,
    "url": _text,
    "headers": _text_map,
    "body": _text,
    "json": _json,
    "expect_status": _statuses,
    "output_jq": _text_map,
    "insecure": _boolean,
    "to": _texts,
    "cc": _texts,
    "subject": _text,
    "attach": _texts,
    "host": _text,
    "user": _text,
    "port": _port,
    "identity_file": _text,
    "known_hosts": _text,
    "provider": _text,
    "model": _text,
    "base_url": _text,
    "messages": _messages,
    "temperature": _number,
    "max_tokens": _count,
    "api_key": _text,
    "message": _text,
    "approvers": _texts,
    "event": _text,
    "match": _text,
}


def build_step(
    kind: TaskType, fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> dict[str, Any]:
    """The step fields of a task of type `kind` (empty for command, map and trigger_dag); a
    key of another step type is an error naming the types it belongs to."""
    own = STEP_KEYS.get(kind, ())
    for key in ALL_STEP_KEYS.intersection(fields):
        if key not in own:
            owners = [t.value for t, keys in STEP_KEYS.items() if key in keys]
            errors.add(
                fields[key],
                f"{path}.{key}",
                f"'{key}' is only valid with type: {' / '.join(owners)} (this task is {kind})",
            )
    step: dict[str, Any] = {}
    for key in own:
        if key in fields:
            value = _READERS[key](fields[key], f"{path}.{key}", errors)
            if value is not None:
                step[key] = value
    check = _CHECKS.get(kind)
    if check is not None:
        check(step, fields, node, path, errors)
    _check_templates(step, fields, path, errors)
    return step


def _check_templates(
    step: dict[str, Any], fields: dict[str, Node], path: str, errors: Collector
) -> None:
    """Templates in step fields compile; the jq of `output_jq` and `match` compiles."""
    for key, value in step.items():
        if key in RAW_STEP_KEYS:
            continue
        for text in _strings(value):
            if "{{" in text:
                for problem in template_errors(text):
                    errors.add(fields[key], f"{path}.{key}", problem)
    for name, expression in step.get("output_jq", {}).items():
        if not OUTPUT_NAME.match(name):
            errors.add(
                fields["output_jq"],
                f"{path}.output_jq.{name}",
                f"'{name}' is not a valid output name (expected letters, digits and '_', "
                "not starting with a digit)",
            )
        problem = compile_error(expression)
        if problem:
            errors.add(
                fields["output_jq"],
                f"{path}.output_jq.{name}",
                f"jq expression '{expression}' does not compile: {problem}",
            )
    if step.get("match"):
        problem = compile_error(step["match"])
        if problem:
            errors.add(
                fields["match"],
                f"{path}.match",
                f"jq condition '{step['match']}' does not compile: {problem}",
            )


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _require(
    step: dict[str, Any],
    fields: dict[str, Node],
    node: Node,
    path: str,
    errors: Collector,
    key: str,
    kind: str,
    what: str,
) -> None:
    if not step.get(key):
        errors.add(
            fields.get(key, node),
            f"{path}.{key}",
            f"'{key}' is required for type '{kind}' ({what})",
        )


def _check_http(
    step: dict[str, Any], fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    _require(step, fields, node, path, errors, "url", "http", "the URL to call")
    url = step.get("url", "")
    templated = "{{" in url[:8] or url.startswith("${")  # checked when the task starts
    if url and not templated and not url.lower().startswith(("http://", "https://")):
        errors.add(
            fields["url"], f"{path}.url", f"expected an http:// or https:// URL, found '{url}'"
        )
    if "body" in step and "json" in step:
        errors.add(fields["json"], f"{path}.json", "give either 'body' or 'json', not both")
    method = step.get("method", "")
    if method and "{{" not in method and not method.isalpha():
        errors.add(fields["method"], f"{path}.method", f"'{method}' is not an HTTP method")
    for name in ("status", "body"):
        if name in step.get("output_jq", {}):
            errors.add(
                fields["output_jq"],
                f"{path}.output_jq.{name}",
                f"'{name}' is an output of every http step already (choose another name)",
            )


def _check_mail(
    step: dict[str, Any], fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    _require(step, fields, node, path, errors, "to", "mail", "the recipients")
    _require(step, fields, node, path, errors, "subject", "mail", "the subject")
    for attached in step.get("attach", []):
        if not attached.startswith(("/", "{{", "${")):
            errors.add(
                fields["attach"],
                f"{path}.attach",
                f"expected an absolute path (a file on the host that runs the step), found "
                f"'{attached}'",
            )


def _check_ssh(
    step: dict[str, Any], fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    _require(step, fields, node, path, errors, "host", "ssh", "the machine to run the command on")


def _check_chat(
    step: dict[str, Any], fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    _require(step, fields, node, path, errors, "provider", "chat", "openai or anthropic")
    _require(step, fields, node, path, errors, "model", "chat", "the model name")
    _require(step, fields, node, path, errors, "messages", "chat", "the conversation")
    provider = step.get("provider", "")
    if provider and provider not in ("openai", "anthropic"):
        errors.add(
            fields["provider"],
            f"{path}.provider",
            f"unknown provider '{provider}' (expected openai or anthropic)",
        )


def _check_wait(
    step: dict[str, Any], fields: dict[str, Node], node: Node, path: str, errors: Collector
) -> None:
    _require(step, fields, node, path, errors, "event", "wait", "the name of the event")
    event = step.get("event", "")
    if event and "{{" not in event and not EVENT_NAME.match(event):
        errors.add(
            fields["event"],
            f"{path}.event",
            f"'{event}' is not a valid event name (letters, digits, '_', '.', ':', '-')",
        )


_CHECKS: dict[TaskType, Callable[[dict[str, Any], dict[str, Node], Node, str, Collector], None]] = {
    TaskType.HTTP: _check_http,
    TaskType.MAIL: _check_mail,
    TaskType.SSH: _check_ssh,
    TaskType.CHAT: _check_chat,
    TaskType.WAIT: _check_wait,
}
