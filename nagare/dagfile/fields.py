"""The field table of the DAG file format: every key, where it is allowed, its type and what it
means. The validator reads its allowed keys from here (`keys`), `nagare schema` and
`GET /api/schema/dag.json` generate the JSON Schema from here (`dag_schema`): one table, so
the two never disagree on what a key is called or where it may appear.

Adding a key: append a `Field` (its places, a JSON Schema fragment for its value, one line of
description), then read it in the validator (`nagare/dagfile/__init__.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Places a key can appear: the DAG mapping, a task, `trigger`, a task's `resources`, one entry
# of `secrets`.
DAG, TASK, TRIGGER, RESOURCES, SECRET = "dag", "task", "trigger", "resources", "secret"

# Value shapes. String fields keep the literal text of their YAML scalar (`PORT: 5432` is the
# string "5432"), so a scalar of any type is accepted where text is expected.
TEXT: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
ID: dict[str, Any] = {
    "type": ["string", "number"],
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
}
ENV_NAME: dict[str, Any] = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
SECONDS: dict[str, Any] = {"type": "number", "minimum": 0}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
TEXT_LIST: dict[str, Any] = {"type": "array", "items": TEXT}
SECRETS: dict[str, Any] = {"type": "array", "items": {"$ref": "#/$defs/secret"}}
ENV_MAP_ANY: dict[str, Any] = {"type": ["object", "null"], "additionalProperties": TEXT}
ENV_MAP: dict[str, Any] = {
    "type": ["object", "null"],
    "propertyNames": ENV_NAME,
    "additionalProperties": TEXT,
}


# One declared run parameter: the shorthand (a scalar: a string parameter with that default)
# or the full form (nagare/dagfile/params.py reads and checks it).
PARAM: dict[str, Any] = {
    "anyOf": [
        TEXT,
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["string", "integer", "number", "boolean", "object", "array"]},
                "default": {},
                "required": BOOLEAN,
                "enum": {"type": "array"},
                "minimum": {"type": "number"},
                "maximum": {"type": "number"},
                "pattern": {"type": "string"},
                "description": TEXT,
            },
        },
    ]
}


@dataclass(frozen=True)
class Field:
    key: str
    places: tuple[str, ...]
    schema: dict[str, Any]
    description: str
    required: tuple[str, ...] = ()  # the places where the key is required


FIELDS: tuple[Field, ...] = (
    # ---- DAG level
    Field("id", (DAG,), ID, "DAG id (letters, digits, '_', '.', '-').", (DAG,)),
    Field("description", (DAG,), TEXT, "What the DAG does (shown in the UI)."),
    Field(
        "schedule",
        (DAG,),
        {"anyOf": [TEXT, {"type": "array", "items": TEXT, "maxItems": 20}]},
        "Cron expression (5 fields), @hourly/@daily/..., or empty/workflow_dispatch: manual only; "
        "or a list of them (a slot produced twice runs once).",
    ),
    Field("start_date", (DAG,), TEXT, "No slot (and no catch-up) before this date or time."),
    Field("end_date", (DAG,), TEXT, "No slot after this date (the whole day) or time."),
    Field(
        "tags",
        (DAG,),
        {"type": "array", "items": TEXT, "maxItems": 20},
        "Labels to filter DAGs by (API ?tag=, CLI, UI).",
    ),
    Field(
        "timeout_seconds",
        (DAG,),
        SECONDS,
        "The run's deadline: running tasks are killed, the rest cancelled, the run failed.",
    ),
    Field(
        "max_active_runs",
        (DAG,),
        {"type": "integer", "minimum": 1},
        "At most this many active runs of the DAG (default unlimited).",
    ),
    Field(
        "overlap_policy",
        (DAG,),
        {"enum": ["queue", "skip", "latest"]},
        "When max_active_runs is reached: queue (wait), skip, or latest (older waiting runs "
        "are superseded).",
    ),
    Field(
        "handler_on",
        (DAG,),
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                kind: {"$ref": "#/$defs/handler"}
                for kind in ("success", "failure", "cancel", "exit")
            },
        },
        "Commands run after the run's tasks ended: success, failure, cancel, exit (last).",
    ),
    Field(
        "when",
        (DAG,),
        TEXT,
        "A jq condition over {dag, run, params}: false or null records the run as skipped.",
    ),
    Field(
        "preconditions",
        (DAG,),
        TEXT_LIST,
        "Commands run on the server before a run starts: one failing records it as skipped.",
    ),
    Field("timezone", (DAG,), TEXT, "IANA time zone of the schedule (default UTC)."),
    Field("catchup", (DAG,), BOOLEAN, "Run the slots missed while the server was down."),
    Field("env", (DAG,), ENV_MAP, "Environment variables NAME: value of every task."),
    Field("trigger", (DAG,), {"$ref": "#/$defs/trigger"}, "A webhook that starts runs."),
    Field(
        "tasks",
        (DAG,),
        {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/task"}},
        "The tasks of the DAG (a non-empty list).",
        (DAG,),
    ),
    Field("autoscaler", (DAG,), {}, "Reserved (ignored)."),
    Field(
        "secrets",
        (DAG,),
        SECRETS,
        "Secrets of every task, read when a task starts (from a server environment variable or "
        "a file), given as environment variables and masked as ***** in logs and messages.",
    ),
    Field(
        "params",
        (DAG,),
        {"type": "object", "additionalProperties": {"$ref": "#/$defs/param"}},
        "Run parameters: NAME: default (a string parameter), or NAME: {type, default, required, "
        "enum, minimum, maximum, pattern, description}.",
    ),
    Field(
        "outputs",
        (DAG,),
        {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
            "additionalProperties": TEXT,
            "maxProperties": 100,
        },
        'What a run returns to a calling `type: dag` step: NAME: "{{ template }}", rendered '
        "over {dag, run, params, tasks} when the run succeeds.",
    ),
    # ---- task level
    Field("id", (TASK,), ID, "Task id, unique in the DAG.", (TASK,)),
    Field(
        "type",
        (TASK,),
        {
            "enum": [
                "command",
                "map",
                "trigger_dag",
                "dag",
                "http",
                "mail",
                "ssh",
                "chat",
                "approval",
                "wait",
            ]
        },
        "command (default), map, trigger_dag, or a step type: dag, http, mail, ssh, chat, "
        "approval, wait.",
    ),
    Field("command", (TASK,), TEXT, "Shell command (sh -c); {{item}} is the map/with_items item."),
    Field(
        "depends_on",
        (TASK,),
        {"anyOf": [TEXT, TEXT_LIST]},
        "Task ids that must succeed first (one id or a list).",
    ),
    Field("env", (TASK,), ENV_MAP, "Environment variables of this task (win over DAG env)."),
    Field("timeout_seconds", (TASK,), SECONDS, "Kill the attempt after this many seconds."),
    Field("retries", (TASK,), COUNT, "Attempts after the first one."),
    Field("retry_delay_seconds", (TASK,), SECONDS, "Wait before each retry."),
    Field("pool", (TASK,), ID, "Pool the task runs in (default: default)."),
    Field("map_over", (TASK,), ID, "type map: the task whose stdout is the JSON array of items."),
    Field("dag_id", (TASK,), ID, "type trigger_dag / dag: the DAG to start (or call)."),
    Field(
        "with_items",
        (TASK,),
        {"type": "array", "minItems": 1, "items": TEXT},
        "Clone the task per item (<id>_<item>).",
    ),
    Field("image", (TASK,), TEXT, "Run the command in this Docker image."),
    Field("workdir", (TASK,), TEXT, "Working directory inside the container (needs image)."),
    Field(
        "volumes",
        (TASK,),
        {"type": "array", "items": {"type": "string", "pattern": "^[^:]+:/[^:]*(:(ro|rw))?$"}},
        "host_path:container_path[:ro|rw] (needs image).",
    ),
    Field(
        "resources",
        (TASK,),
        {"$ref": "#/$defs/resources"},
        "Container limits: cpus, memory, gpus (needs image).",
    ),
    Field("run_as", (TASK,), TEXT, "Run the command as this user."),
    Field(
        "params",
        (TASK,),
        {"type": "object", "propertyNames": ENV_NAME},
        "type trigger_dag / dag: the parameters of the run it starts (checked against the "
        "target's; templated for dag).",
    ),
    Field(
        "when",
        (TASK,),
        TEXT,
        "A jq condition over the task's context: false or null skips the task.",
    ),
    Field(
        "output",
        (TASK,),
        ENV_NAME,
        "Publish the task's whole stdout (trailing newline trimmed) as the output NAME.",
    ),
    Field(
        "trigger_rule",
        (TASK,),
        {
            "enum": [
                "all_success",
                "all_done",
                "all_failed",
                "one_success",
                "one_failed",
                "none_failed",
                "none_failed_min_one_success",
            ]
        },
        "When the task runs once its upstream tasks ended (Airflow's rules; all_success).",
    ),
    Field(
        "preconditions",
        (TASK,),
        TEXT_LIST,
        "Commands run first, where the task runs: one failing skips the task.",
    ),
    Field(
        "allow_failure",
        (TASK,),
        {
            "anyOf": [
                BOOLEAN,
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"exit_codes": {"type": "array", "items": {"type": "integer"}}},
                },
            ]
        },
        "A failure (with one of exit_codes, if given) counts as a success, with a warning.",
    ),
    Field("retry_backoff", (TASK,), {"type": "number", "minimum": 1}, "Retry delay multiplier."),
    Field("retry_max_delay_seconds", (TASK,), SECONDS, "The longest retry delay."),
    Field(
        "retry_on_exit_codes",
        (TASK,),
        {"type": "array", "items": {"type": "integer"}},
        "Only these exit codes are retried.",
    ),
    Field("retry_on_timeout", (TASK,), BOOLEAN, "Whether a timeout is retried (default true)."),
    Field(
        "secrets",
        (TASK,),
        SECRETS,
        "Secrets of this task only (added to the DAG's; a task secret of the same name wins).",
    ),
    # ---- step type http (nagare/dagfile/steps.py reads these)
    Field("method", (TASK,), TEXT, "type http: the HTTP method (default GET)."),
    Field("url", (TASK,), TEXT, "type http: the URL (http or https)."),
    Field("headers", (TASK,), ENV_MAP_ANY, "type http: request headers NAME: value."),
    Field("body", (TASK,), TEXT, "type http / mail: the request or mail body."),
    Field("json", (TASK,), {}, "type http: a JSON request body (rather than body)."),
    Field(
        "expect_status",
        (TASK,),
        {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "array"}]},
        'type http: the statuses that succeed (default 2xx): 200, [200, 201], "2xx".',
    ),
    Field("insecure", (TASK,), BOOLEAN, "type http / chat: do not verify the TLS certificate."),
    Field(
        "output_jq",
        (TASK,),
        {"type": "object", "additionalProperties": TEXT},
        "type http / wait: outputs NAME: jq over the response body or the event payload.",
    ),
    # ---- step type mail
    Field("to", (TASK,), {"anyOf": [TEXT, TEXT_LIST]}, "type mail: recipients."),
    Field("cc", (TASK,), {"anyOf": [TEXT, TEXT_LIST]}, "type mail: copy recipients."),
    Field("subject", (TASK,), TEXT, "type mail: the subject."),
    Field("attach", (TASK,), {"anyOf": [TEXT, TEXT_LIST]}, "type mail: files to attach."),
    # ---- step type ssh
    Field("host", (TASK,), TEXT, "type ssh: the host to run the command on."),
    Field("user", (TASK,), TEXT, "type ssh: the remote user."),
    Field(
        "port",
        (TASK,),
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]},
        "type ssh: the port (default 22); a number, or a template or ${NAME} giving one.",
    ),
    Field("identity_file", (TASK,), TEXT, "type ssh: the private key file."),
    Field("known_hosts", (TASK,), TEXT, "type ssh: the known_hosts file (strict checking)."),
    # ---- step type chat
    Field("provider", (TASK,), {"enum": ["openai", "anthropic"]}, "type chat: the wire protocol."),
    Field("model", (TASK,), TEXT, "type chat: the model name."),
    Field("base_url", (TASK,), TEXT, "type chat: the API's base URL."),
    Field(
        "messages",
        (TASK,),
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "role": {"enum": ["system", "user", "assistant"]},
                    "content": TEXT,
                },
            },
        },
        "type chat: the conversation (role system / user / assistant, content).",
    ),
    Field("temperature", (TASK,), {"type": "number", "minimum": 0}, "type chat: sampling."),
    Field("max_tokens", (TASK,), {"type": "integer", "minimum": 1}, "type chat: answer limit."),
    Field("api_key", (TASK,), TEXT, "type chat: the API key (use a secret: ${NAME})."),
    # ---- step types approval and wait
    Field("message", (TASK,), TEXT, "type approval: what the approver is asked."),
    Field("approvers", (TASK,), {"anyOf": [TEXT, TEXT_LIST]}, "type approval: who may answer."),
    Field("event", (TASK,), TEXT, "type wait: the name of the event to wait for."),
    Field("match", (TASK,), TEXT, "type wait: a jq condition over the event (see README)."),
    # ---- trigger
    Field("type", (TRIGGER,), {"const": "webhook"}, "webhook.", (TRIGGER,)),
    Field("path", (TRIGGER,), {"type": "string", "pattern": "^/api/webhooks/."}, "Webhook path."),
    Field("method", (TRIGGER,), {"type": "string", "pattern": "^[A-Za-z]+$"}, "HTTP method."),
    Field("secret", (TRIGGER,), TEXT, "HMAC secret of the webhook signature."),
    Field(
        "secret_env",
        (TRIGGER,),
        ENV_NAME,
        "Environment variable holding the HMAC secret (rather than `secret`).",
    ),
    Field("signature_header", (TRIGGER,), TEXT, "Header of the signature."),
    Field("extract_payload", (TRIGGER,), ENV_MAP, "conf key: jq expression over the payload."),
    Field(
        "emit_event",
        (TRIGGER,),
        TEXT,
        "Emit the payload as this event (for `wait` steps) rather than start a run.",
    ),
    # ---- resources
    Field("cpus", (RESOURCES,), TEXT, 'CPUs, e.g. "0.5".'),
    Field("memory", (RESOURCES,), TEXT, 'Memory with optional b/k/m/g suffix, e.g. "512m".'),
    Field("gpus", (RESOURCES,), TEXT, '"all" or a number of GPUs.'),
    # ---- one secret
    Field(
        "name",
        (SECRET,),
        ENV_NAME,
        "The environment variable the task gets the value in.",
        (SECRET,),
    ),
    Field(
        "env",
        (SECRET,),
        ENV_NAME,
        "Read the value from this environment variable of the server (or worker's master).",
    ),
    Field(
        "file",
        (SECRET,),
        {"type": "string", "minLength": 1},
        "Read the value from this file (trailing newline trimmed).",
    ),
)


def keys(place: str) -> tuple[str, ...]:
    """The keys allowed at `place`, in table order."""
    return tuple(f.key for f in FIELDS if place in f.places)


def _object(place: str, description: str) -> dict[str, Any]:
    fields = [f for f in FIELDS if place in f.places]
    result: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": {f.key: {**f.schema, "description": f.description} for f in fields},
        "additionalProperties": False,
    }
    required = [f.key for f in fields if place in f.required]
    if required:
        result["required"] = required
    return result


def _handler() -> dict[str, Any]:
    """A handler: a task body without an id, a place in the graph or a fan-out."""
    handler = _object(TASK, "A handler: a task body (command and the usual task fields)")
    excluded = ("id", "depends_on", "map_over", "with_items", "dag_id")
    handler["properties"] = {k: v for k, v in handler["properties"].items() if k not in excluded}
    handler["required"] = ["command"]
    return handler


def dag_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a DAG file, from FIELDS."""
    schema = _object(DAG, "A Nagare DAG file")
    secret = _object(SECRET, "A secret: its name and exactly one source (env or file)")
    secret["oneOf"] = [{"required": ["env"]}, {"required": ["file"]}]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Nagare DAG file",
        **schema,
        "$defs": {
            "task": _object(TASK, "A task"),
            "trigger": _object(TRIGGER, "A webhook trigger"),
            "resources": _object(RESOURCES, "Container resource limits"),
            "secret": secret,
            "param": PARAM,
            "handler": _handler(),
        },
    }
