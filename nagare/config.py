"""Settings: one option table gives defaults, nagare.yaml keys, environment variables, CLI flags,
`--help` and the README's configuration table. Precedence: flag > environment > nagare.yaml >
default.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlencode, urlsplit

import yaml

from nagare.access import RoleDef, all_roles, parse_roles
from nagare.db_url import describe as describe_database
from nagare.db_url import is_postgres_url, parse_postgres_url
from nagare.errors import ConfigError
from nagare.models import GitSyncSettings, OidcSettings, SmtpSettings
from nagare.patterns import ENV_NAME
from nagare.settings import Settings


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # str | int | float | bool | pools | list
    default: Any
    help: str
    flag: str = ""
    env: str = ""
    yaml_key: str = ""
    minimum: float | None = None
    choices: tuple[str, ...] = ()


def _opt(
    name: str,
    kind: str,
    default: Any,
    help: str,
    *,
    flag: bool = True,
    env: bool = True,
    yaml_key: bool = True,
    **extra: Any,
) -> Option:
    return Option(
        name=name,
        kind=kind,
        default=default,
        help=help,
        flag="--" + name.replace("_", "-") if flag else "",
        env="NAGARE_" + name.upper() if env else "",
        yaml_key=name if yaml_key else "",
        **extra,
    )


OPTIONS: tuple[Option, ...] = (
    _opt("port", "str", ":8080", "Listen address: PORT, :PORT or HOST:PORT."),
    _opt(
        "db",
        "str",
        "nagare.db",
        "SQLite database file, or a PostgreSQL URL postgresql://user@host:5432/dbname (created "
        "and migrated on start; see the README, PostgreSQL).",
    ),
    _opt("dags", "str", "dags", "Folder of DAG files (*.yaml, *.yml); created if missing."),
    _opt(
        "max_dag_file_bytes",
        "int",
        1048576,
        "Largest DAG file read; a larger one is reported as that file's error, not read.",
        flag=False,
        minimum=1,
    ),
    _opt(
        "allow_dag_edits",
        "bool",
        True,
        "Whether the dashboard and the API may create, save and delete DAG files (false for "
        "GitOps setups: the folder is then read-only to Nagare).",
        flag=False,
    ),
    _opt(
        "config",
        "str",
        "nagare.yaml",
        "Settings file; a missing file means defaults.",
        yaml_key=False,
    ),
    _opt("api_key", "str", "", "API key required on /api/* as 'Authorization: Bearer KEY'."),
    _opt(
        "auth_mode",
        "str",
        "key",
        "Who may use the API and dashboard: key (the one api_key; open without one), builtin "
        "(users and API keys with roles, stored in the database; api_key is an admin key) or "
        "oidc (single sign-on through an OpenID Connect provider, plus builtin's users and keys).",
        choices=("key", "builtin", "oidc"),
    ),
    _opt(
        "roles",
        "roles",
        {},
        "Roles limited to DAGs with some tags, or new roles on a built-in base, e.g. "
        "{operator: {tags: [finance]}, finance_dev: {base: developer, tags: [finance]}}.",
        flag=False,
        env=False,
    ),
    _opt(
        "session_hours",
        "int",
        12,
        "How long a dashboard sign-in lasts without use (auth_mode builtin or oidc).",
        minimum=1,
    ),
    _opt(
        "oidc",
        "oidc",
        None,
        "Single sign-on (auth_mode oidc): {issuer, client_id, client_secret_env, client_auth, "
        "redirect_url, scopes, name_claim, role_claim, role_map, default_role, provider_name, "
        "ca_file, insecure, timeout_seconds} (see the README, Single sign-on).",
        flag=False,
        env=False,
    ),
    _opt(
        "logs_dir",
        "str",
        "",
        "Folder of task log files (default: 'logs' next to a SQLite db; with PostgreSQL, 'logs' "
        "in the working directory).",
    ),
    _opt(
        "worker_pools",
        "pools",
        {"default": 4},
        "Local task slots per pool, e.g. {default: 4, gpu: 0}; 0 = remote workers only.",
        flag=False,
        env=False,
    ),
    _opt(
        "default_handler_on",
        "handlers",
        "",
        "Handlers of every DAG without its own handler_on, e.g. {failure: {command: ...}} "
        "(the DAG file's handler_on syntax).",
        flag=False,
        env=False,
    ),
    _opt(
        "smtp",
        "smtp",
        None,
        "The mail server of `type: mail` steps on this host: {host, port, from, username, "
        "password_env, starttls, ssl, timeout_seconds, ca_file, insecure} (see the README, "
        "type: mail).",
        flag=False,
        env=False,
    ),
    _opt(
        "git_sync",
        "git_sync",
        None,
        "Keep the DAGs folder equal to a git branch: {url, branch, interval_seconds, "
        "subdirectory, ssh_key_file | token_env, timeout_seconds} (see the README, Git sync).",
        flag=False,
        env=False,
    ),
    _opt(
        "pool_run_as",
        "users",
        {},
        "User the tasks of a pool run as, e.g. {default: nobody} (needs the server to run as "
        "root); a task's run_as must then name that user or none.",
        flag=False,
        env=False,
    ),
    _opt(
        "max_map_items",
        "int",
        10000,
        "Most children a map task may fan out to.",
        flag=False,
        minimum=1,
    ),
    _opt(
        "max_catchup_runs",
        "int",
        1000,
        "Most missed slots one DAG catches up at once.",
        flag=False,
        minimum=1,
    ),
    _opt(
        "misfire_grace_seconds",
        "float",
        60.0,
        "Without catchup, a slot found late by at most this much still runs.",
        flag=False,
        minimum=0,
    ),
    _opt(
        "shutdown_grace_seconds",
        "float",
        10.0,
        "On SIGTERM, how long running tasks may finish before they are killed.",
        flag=False,
        minimum=0,
    ),
    _opt(
        "max_body_bytes",
        "int",
        1048576,
        "Largest accepted HTTP request body (413 above).",
        flag=False,
        minimum=1,
    ),
    _opt(
        "request_timeout_seconds",
        "float",
        30.0,
        "Longest time a client may take to send a whole request (request line, headers and "
        "body, however slowly it trickles); a kept-alive connection may idle at most this "
        "long, and 15 s, between requests.",
        flag=False,
        minimum=0.1,
    ),
    _opt(
        "max_connections",
        "int",
        512,
        "Most HTTP connections served at once (log streams and workers' long polls count); "
        "more get a 503 and are closed. Lowered at start to what the open-file limit allows.",
        flag=False,
        minimum=1,
    ),
    _opt(
        "reserved_connections",
        "int",
        32,
        "Connections beyond max_connections kept for /api/health, /metrics, the dashboard's "
        "pages and the cluster protocol (/api/workers/...), so they answer while the others "
        "are full.",
        flag=False,
        minimum=0,
    ),
    _opt(
        "max_log_line_bytes",
        "int",
        65536,
        "Longer output lines are cut and marked as truncated in the task log.",
        flag=False,
        minimum=256,
    ),
    _opt(
        "docker_host",
        "str",
        "",
        "Docker engine of container tasks, e.g. unix:///var/run/docker.sock or tcp://host:2375 "
        "(default: DOCKER_HOST, else the local socket).",
    ),
    _opt(
        "docker_volume_roots",
        "list",
        (),
        "Host folders container volumes may mount (a YAML list, or comma-separated); "
        "empty = any host path (warned at start).",
        flag=False,
    ),
    _opt(
        "docker_pull_timeout_seconds",
        "float",
        900.0,
        "Longest image pull; a pull does not count against a task's timeout_seconds.",
        flag=False,
        minimum=1,
    ),
    _opt(
        "sse_ping_seconds",
        "float",
        15.0,
        "Keep-alive interval of live log streams.",
        flag=False,
        minimum=0.05,
    ),
    _opt(
        "cors_allowed_origins",
        "origins",
        (),
        "Browser origins allowed to call the API cross-origin (nagare.yaml: cors: "
        "{allowed_origins: [...]}, or comma-separated); empty = '*' without an API key, none "
        "with one ('*' is never sent when a key is set).",
        flag=False,
        yaml_key=False,
    ),
    _opt(
        "webhook_delivery_header",
        "str",
        "X-GitHub-Delivery",
        "Header carrying a webhook delivery id; a repeat within 24 h returns the first run id "
        "(empty = no de-duplication).",
        flag=False,
    ),
    _opt("tls_cert", "str", "", "PEM certificate file: serve HTTPS (with --tls-key)."),
    _opt("tls_key", "str", "", "PEM private key file of --tls-cert."),
    _opt(
        "log_level",
        "str",
        "info",
        "Server log level.",
        choices=("debug", "info", "warning", "error"),
    ),
    _opt(
        "log_format",
        "str",
        "text",
        "Server log lines: text, or json (one object per line; run_id/task_id where relevant).",
        choices=("text", "json"),
    ),
    _opt(
        "retention_days",
        "int",
        30,
        "Finished runs older than this are deleted with their tasks, metrics and logs by a "
        "background sweep (and `nagare cleanup`); 0 keeps everything.",
        minimum=0,
    ),
    _opt(
        "worker",
        "bool",
        False,
        "Run as a remote worker of the master given by --join (also `nagare worker`).",
        yaml_key=False,
    ),
    _opt(
        "join",
        "str",
        "",
        "Master URL a worker joins, e.g. http://master:8080; masters sharing a PostgreSQL "
        "database: their URLs, comma-separated (the worker moves on when one cannot be reached).",
        yaml_key=False,
    ),
    _opt(
        "pools",
        "str",
        "default",
        "Comma-separated pools a worker serves, e.g. gpu,cpu.",
        yaml_key=False,
    ),
    _opt(
        "max_tasks",
        "int",
        4,
        "How many tasks a worker runs at once.",
        yaml_key=False,
        minimum=1,
    ),
    _opt(
        "prefetch",
        "int",
        4,
        "How many more tasks a worker may take, waiting for a free slot, while its tasks are "
        "short (under half a second); 0: none.",
        yaml_key=False,
        minimum=0,
    ),
    _opt(
        "worker_id",
        "str",
        "",
        "A worker's name in the cluster (default: HOSTNAME-PID).",
        yaml_key=False,
    ),
    _opt(
        "run_as",
        "str",
        "",
        "User a worker's tasks run as (needs the worker to run as root); a task's run_as must "
        "then name that user or none.",
        yaml_key=False,
    ),
    _opt(
        "token",
        "str",
        "",
        "Cluster token: the master requires it on the worker protocol routes (without one, the "
        "API key), a worker sends it.",
    ),
    _opt(
        "lease_timeout_seconds",
        "float",
        30.0,
        "A remote worker that has not been heard from for this long loses its tasks (they are "
        "retried per their retries, or fail as lost).",
        minimum=0.5,
    ),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}


class Config(Settings):
    """Resolved settings: the typed fields of `Settings` (generated from OPTIONS, a frozen
    dataclass whose methods it inherits), and what is derived from them."""

    def with_values(self, **changes: Any) -> Config:
        unknown = sorted(set(changes) - set(OPTION_BY_NAME))
        if unknown:
            raise TypeError(
                f"with_values: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(OPTION_BY_NAME)})"
            )
        return dataclasses.replace(self, **changes)

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.port)

    @property
    def resolved_logs_dir(self) -> str:
        if self.logs_dir:
            return self.logs_dir
        return os.path.join(self.data_dir, "logs")

    @property
    def data_dir(self) -> str:
        """The folder of this server's files (logs, git-sync cache): next to a SQLite
        database, the working directory with a PostgreSQL one."""
        if is_postgres_url(self.db):
            return os.path.abspath(".")
        return os.path.dirname(os.path.abspath(self.db))

    @property
    def db_is_file(self) -> bool:
        """A SQLite file (else a PostgreSQL URL)."""
        return not is_postgres_url(self.db)

    @property
    def db_label(self) -> str:
        """What names this database for good (its containers' owner label): a SQLite file's
        absolute path, a PostgreSQL URL without its password."""
        return self.db_display if is_postgres_url(self.db) else os.path.abspath(self.db)

    @property
    def db_display(self) -> str:
        """The database location fit for a log line (a URL's password never shows)."""
        return describe_database(self.db)


def parse_listen(text: str) -> tuple[str, int]:
    """`8080`, `:8080` or `127.0.0.1:8080` -> (host, port)."""
    host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"port: expected PORT, :PORT or HOST:PORT, found '{text}'")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"port: expected PORT, :PORT or HOST:PORT, found '{text}'") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"port: expected a port between 0 and 65535, found {number}")
    return host.strip("[]") or "0.0.0.0", number


def load_config(flags: dict[str, Any], environ: dict[str, str] | None = None) -> Config:
    """Merge defaults, nagare.yaml, environment and flags (only flags that were given)."""
    environ = dict(os.environ) if environ is None else environ
    values = {o.name: o.default for o in OPTIONS}
    config_path = flags.get("config") or environ.get("NAGARE_CONFIG") or values["config"]
    values["config"] = config_path
    for name, raw in _read_yaml(config_path).items():
        values[name] = _coerce(OPTION_BY_NAME[name], raw, f"{config_path}: {name}")
    for option in OPTIONS:
        if option.env and option.env in environ and option.name != "config":
            values[option.name] = _coerce(option, environ[option.env], option.env)
    for name, raw in flags.items():
        if raw is not None and name in OPTION_BY_NAME:
            values[name] = _coerce(OPTION_BY_NAME[name], raw, OPTION_BY_NAME[name].flag)
    values["worker_pools"] = {"default": 4, **values["worker_pools"]}
    config = Config(**values)
    config.listen  # noqa: B018 - validates the address early
    check_oidc_roles(config.auth_mode, config.oidc, config.roles)
    if is_postgres_url(config.db):
        parse_postgres_url(config.db)  # validates the URL early (never quoting a password)
    return config


def _load_yaml(text: str, path: str) -> Any:
    """The settings file's data, parsed by libyaml where PyYAML has it; an error is raised by
    the pure-Python loader, whose message names the file, the line and the column."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.load(text, Loader=fast)  # a safe loader
        except yaml.YAMLError:
            pass
    loader = yaml.SafeLoader(io.StringIO(text))  # a stream: messages show no snippet
    loader.name = path
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _NoInstance:
    """`database:` is read from its mapping only (no settings object stands for it)."""


DATABASE_KEYS = ("url", "password_env", "sslmode", "sslrootcert", "connect_timeout")


def database_url(raw: Any, where: str) -> str:
    """`database: {url, password_env, sslmode, sslrootcert, connect_timeout}` -> the `db` URL
    with those options as its query parameters (the password itself is never in nagare.yaml:
    `password_env` names the variable holding it, or ~/.pgpass has it)."""
    found: dict[str, Any] | None = _section(
        raw, where, _NoInstance, DATABASE_KEYS, "{url: postgresql://nagare@db:5432/nagare}"
    )
    if found is None:
        raise ConfigError(f"{where}: expected {{url: postgresql://user@host:5432/dbname}}")
    url = _smtp_text(found, "url", where, required=True)
    if not is_postgres_url(url):
        raise ConfigError(f"{where}.url: expected postgresql://user@host:5432/dbname")
    if urlsplit(url).password is not None:
        raise ConfigError(
            f"{where}.url: the password does not belong in nagare.yaml; give password_env "
            "(the environment variable that holds it) or use ~/.pgpass"
        )
    env = _smtp_text(found, "password_env", where)
    if env and not ENV_NAME.match(env):
        raise ConfigError(
            f"{where}.password_env: expected the name of an environment variable, found '{env}'"
        )
    extra = {k: _smtp_text(found, k, where) for k in DATABASE_KEYS[1:]}
    query = urlencode({k: v for k, v in extra.items() if v})
    if not query:
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = _load_yaml(text, path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, found {type(data).__name__}")
    known = {o.yaml_key: o.name for o in OPTIONS if o.yaml_key}
    result: dict[str, Any] = {}
    for key, value in data.items():
        if key == "cors":
            result["cors_allowed_origins"] = _cors_origins(value, path)
            continue
        if key == "autoscaler":
            continue  # read by the feature that owns it
        if key == "database":
            if "db" in data:
                raise ConfigError(f"{path}: give either db or database, not both")
            result["db"] = database_url(value, f"{path}: database")
            continue
        if key not in known:
            raise ConfigError(f"{path}: unknown setting '{key}' (known: {', '.join(known)})")
        result[known[key]] = value
    return result


def _coerce(option: Option, raw: Any, where: str) -> Any:
    if option.kind == "pools":
        return _coerce_pools(raw, where)
    if option.kind == "users":
        return _coerce_users(raw, where)
    if option.kind == "handlers":
        return _coerce_handlers(raw, where)
    if option.kind == "smtp":
        return _coerce_smtp(raw, where)
    if option.kind == "roles":
        return parse_roles(raw)
    if option.kind == "git_sync":
        return _coerce_git_sync(raw, where)
    if option.kind == "oidc":
        return coerce_oidc(raw, where)
    if option.kind == "bool":
        return _coerce_bool(raw, where)
    if option.kind in ("int", "float"):
        return _coerce_number(option, raw, where)
    if option.kind == "list":
        return _coerce_paths(raw, where)
    if option.kind == "origins":
        return _coerce_origins(raw, where)
    value = "" if raw is None else str(raw)
    if option.choices and value not in option.choices:
        raise ConfigError(f"{where}: expected one of {', '.join(option.choices)}, found '{value}'")
    return value


def _coerce_bool(raw: Any, where: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: expected true or false, found '{raw}'")


def _coerce_number(option: Option, raw: Any, where: str) -> int | float:
    kind = int if option.kind == "int" else float
    noun = "a whole number" if kind is int else "a number"
    try:
        if isinstance(raw, bool) or (
            kind is int and isinstance(raw, float) and not raw.is_integer()
        ):
            raise ValueError
        value = kind(raw)
        if not math.isfinite(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}: expected {noun}, found '{raw}'") from None
    if option.minimum is not None and value < option.minimum:
        raise ConfigError(f"{where}: expected at least {option.minimum:g}, found {value}")
    return value


def _coerce_paths(raw: Any, where: str) -> tuple[str, ...]:
    """A list of absolute paths: a YAML list, or comma-separated text (environment, flag)."""
    items = raw if isinstance(raw, list | tuple) else str(raw or "").split(",")
    paths = tuple(str(item).strip() for item in items if str(item).strip())
    for path in paths:
        if not os.path.isabs(path):
            raise ConfigError(f"{where}: expected absolute paths, found '{path}'")
    return paths


def _cors_origins(value: Any, path: str) -> Any:
    if not isinstance(value, dict) or set(value) - {"allowed_origins"}:
        raise ConfigError(f"{path}: cors: expected a mapping {{allowed_origins: [...]}}")
    return value.get("allowed_origins") or ()


def _coerce_origins(raw: Any, where: str) -> tuple[str, ...]:
    """Origins such as https://ui.example.com (scheme://host[:port]) or '*'."""
    items = raw if isinstance(raw, list | tuple) else str(raw or "").split(",")
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(
                f"{where}: expected origins like https://host[:port] or '*', found '{origin}'"
            )
    return origins


def _coerce_pools(raw: Any, where: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping of pool name to size, e.g. "
            f"{{default: 4, gpu: 0}}, found '{raw}'"
        )
    pools: dict[str, int] = {}
    for name, size in raw.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigError(f"{where}.{name}: expected a whole number >= 0, found '{size}'")
        pools[str(name)] = size
    return pools


def _coerce_handlers(raw: Any, where: str) -> str:
    """`default_handler_on`: kept as JSON text; its handlers are checked (with the DAG file's
    validator) when the server starts."""
    if raw in (None, ""):
        return ""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping of success/failure/cancel/exit: task, found '{raw}'"
        )
    return json.dumps(raw, sort_keys=True, default=str)


SMTP_KEYS = (
    "host",
    "port",
    "from",
    "username",
    "password_env",
    "starttls",
    "ssl",
    "timeout_seconds",
    "ca_file",
    "insecure",
)


_S = TypeVar("_S")


def _section(raw: Any, where: str, kind: type[Any], keys: tuple[str, ...], example: str) -> Any:
    """A settings section (`smtp:`, `git_sync:`): None when absent, an instance given as is,
    else its mapping once every key is known (ConfigError otherwise)."""
    if raw in (None, ""):
        return None
    if isinstance(raw, kind):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping such as {example}, found '{raw}'")
    raw = cast(dict[str, Any], raw)
    unknown = sorted(str(k) for k in raw if k not in keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(keys)})")
    return raw


def _coerce_smtp(raw: Any, where: str) -> SmtpSettings | None:
    """`smtp: {host, port, from, username, password_env, starttls, ssl, ...}`: the mail server
    of `mail` steps. The port defaults to 465 with ssl, 587 with starttls, else 25."""
    found: SmtpSettings | dict[str, Any] | None = _section(
        raw,
        where,
        SmtpSettings,
        SMTP_KEYS,
        "{host: mail.example.com, port: 587, starttls: true, from: nagare@example.com}",
    )
    if not isinstance(found, dict):
        return found
    raw = found
    host = _smtp_text(raw, "host", where, required=True)
    sender = _smtp_text(raw, "from", where, required=True)
    if "@" not in sender or not sender.rpartition("<")[2].isascii():
        raise ConfigError(f"{where}.from: expected a mail address (ASCII), found '{sender}'")
    flags = {k: _coerce_bool(raw.get(k, False), f"{where}.{k}") for k in _SMTP_FLAGS}
    if flags["ssl"] and flags["starttls"]:
        raise ConfigError(
            f"{where}: give either ssl (implicit TLS, port 465) or starttls (port 587), not both"
        )
    settings = SmtpSettings(
        host=host,
        sender=sender,
        port=_smtp_port(raw.get("port"), flags, where),
        username=_smtp_text(raw, "username", where),
        password_env=_smtp_text(raw, "password_env", where),
        timeout_seconds=float(
            _coerce_number(
                _SMTP_TIMEOUT, raw.get("timeout_seconds", 30), f"{where}.timeout_seconds"
            )
        ),
        ca_file=_smtp_text(raw, "ca_file", where),
        **flags,
    )
    _check_smtp_login(settings, where)
    return settings


_SMTP_FLAGS = ("starttls", "ssl", "insecure")
_SMTP_TIMEOUT = Option("timeout_seconds", "float", 30.0, "", minimum=0.1)
_SMTP_PORT = Option("port", "int", 25, "", minimum=1)


def _smtp_text(raw: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = raw.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ConfigError(f"{where}.{key}: required (the mail server's {key})")
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected text, found '{value}'")
    return str(value).strip()


def _smtp_port(raw: Any, flags: dict[str, bool], where: str) -> int:
    if raw is None:
        return 465 if flags["ssl"] else 587 if flags["starttls"] else 25
    port = int(_coerce_number(_SMTP_PORT, raw, f"{where}.port"))
    if port > 65535:
        raise ConfigError(f"{where}.port: expected a port number 1-65535, found {port}")
    return port


def _check_smtp_login(settings: SmtpSettings, where: str) -> None:
    if settings.password_env and not ENV_NAME.match(settings.password_env):
        raise ConfigError(
            f"{where}.password_env: expected the name of an environment variable, found "
            f"'{settings.password_env}'"
        )
    if settings.username and not settings.password_env:
        raise ConfigError(
            f"{where}.password_env: required with username (the environment variable that "
            "holds the password; the password itself is never written in nagare.yaml)"
        )
    if settings.password_env and not settings.username:
        raise ConfigError(f"{where}.username: required with password_env (the login)")


GIT_SYNC_KEYS = (
    "url",
    "branch",
    "interval_seconds",
    "subdirectory",
    "ssh_key_file",
    "token_env",
    "timeout_seconds",
)
_GIT_INTERVAL = Option("interval_seconds", "float", 60.0, "", minimum=1)
_GIT_TIMEOUT = Option("timeout_seconds", "float", 120.0, "", minimum=1)
_GIT_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/+-]+$")


def _coerce_git_sync(raw: Any, where: str) -> GitSyncSettings | None:
    """`git_sync: {url, branch, interval_seconds, subdirectory, ssh_key_file | token_env}`."""
    found: GitSyncSettings | dict[str, Any] | None = _section(
        raw,
        where,
        GitSyncSettings,
        GIT_SYNC_KEYS,
        "{url: https://git.example.com/team/dags.git, branch: main}",
    )
    if not isinstance(found, dict):
        return found
    raw = found
    url = _smtp_text(raw, "url", where, required=True)
    if url.startswith("-"):
        raise ConfigError(f"{where}.url: expected a repository URL, found '{url}'")
    branch = _smtp_text(raw, "branch", where) or "main"
    if not _GIT_BRANCH.match(branch) or branch.endswith((".lock", "/", ".")):
        raise ConfigError(f"{where}.branch: expected a branch name, found '{branch}'")
    subdirectory = _smtp_text(raw, "subdirectory", where).strip("/")
    if subdirectory and ".." in subdirectory.split("/"):
        raise ConfigError(
            f"{where}.subdirectory: expected a folder inside the repository, found '{subdirectory}'"
        )
    settings = GitSyncSettings(
        url=url,
        branch=branch,
        interval_seconds=float(
            _coerce_number(
                _GIT_INTERVAL, raw.get("interval_seconds", 60), f"{where}.interval_seconds"
            )
        ),
        subdirectory=subdirectory,
        ssh_key_file=_smtp_text(raw, "ssh_key_file", where),
        token_env=_smtp_text(raw, "token_env", where),
        timeout_seconds=float(
            _coerce_number(
                _GIT_TIMEOUT, raw.get("timeout_seconds", 120), f"{where}.timeout_seconds"
            )
        ),
    )
    _check_git_credentials(settings, where)
    return settings


def _check_git_credentials(settings: GitSyncSettings, where: str) -> None:
    if settings.ssh_key_file and settings.token_env:
        raise ConfigError(
            f"{where}: give either ssh_key_file (an ssh:// or git@ URL) or token_env (an "
            "https:// URL), not both"
        )
    if settings.token_env and not ENV_NAME.match(settings.token_env):
        raise ConfigError(
            f"{where}.token_env: expected the name of an environment variable, found "
            f"'{settings.token_env}' (the token itself is never written in nagare.yaml)"
        )


OIDC_KEYS = (
    "issuer",
    "client_id",
    "client_secret_env",
    "client_auth",
    "redirect_url",
    "scopes",
    "name_claim",
    "role_claim",
    "role_map",
    "default_role",
    "provider_name",
    "ca_file",
    "insecure",
    "timeout_seconds",
)
_OIDC_TIMEOUT = Option("timeout_seconds", "float", 10.0, "", minimum=0.1)
_CLAIM = re.compile(r"^[A-Za-z0-9_:./-]+$")


def coerce_oidc(raw: Any, where: str) -> OidcSettings | None:
    """`oidc: {issuer, client_id, client_secret_env, role_claim, role_map, ...}`: the OpenID
    Connect provider of single sign-on. ConfigError names the bad key."""
    found: OidcSettings | dict[str, Any] | None = _section(
        raw,
        where,
        OidcSettings,
        OIDC_KEYS,
        "{issuer: https://id.example.com/realms/main, client_id: nagare}",
    )
    if not isinstance(found, dict):
        return found
    raw = found
    defaults = OidcSettings("", "")
    settings = OidcSettings(
        issuer=_oidc_url(raw, "issuer", where, required=True).rstrip("/"),
        client_id=_smtp_text(raw, "client_id", where, required=True),
        client_secret_env=_env_name(raw, "client_secret_env", where),
        client_auth=_client_auth(raw, where),
        redirect_url=_oidc_url(raw, "redirect_url", where),
        scopes=_oidc_scopes(raw.get("scopes"), f"{where}.scopes"),
        name_claim=_claim(raw, "name_claim", where) or defaults.name_claim,
        role_claim=_claim(raw, "role_claim", where),
        role_map=_role_map(raw.get("role_map"), f"{where}.role_map"),
        default_role=_smtp_text(raw, "default_role", where),
        provider_name=_smtp_text(raw, "provider_name", where),
        ca_file=_smtp_text(raw, "ca_file", where),
        insecure=_coerce_bool(raw.get("insecure", False), f"{where}.insecure"),
        timeout_seconds=float(
            _coerce_number(
                _OIDC_TIMEOUT, raw.get("timeout_seconds", 10), f"{where}.timeout_seconds"
            )
        ),
    )
    if settings.role_map and not settings.role_claim:
        raise ConfigError(
            f"{where}.role_claim: required with role_map (the claim whose values it maps, "
            "e.g. groups)"
        )
    return settings


def _client_auth(raw: dict[str, Any], where: str) -> str:
    method = _smtp_text(raw, "client_auth", where) or "post"
    if method not in ("post", "basic"):
        raise ConfigError(
            f"{where}.client_auth: expected post (client_secret_post) or basic "
            f"(client_secret_basic), found '{method}'"
        )
    return method


def _oidc_url(raw: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    url = _smtp_text(raw, key, where, required=required)
    if url and not re.match(r"^https?://[^/?#\s]+[^?#\s]*$", url):
        raise ConfigError(f"{where}.{key}: expected an http(s):// URL, found '{url}'")
    return url


def _env_name(raw: dict[str, Any], key: str, where: str) -> str:
    name = _smtp_text(raw, key, where)
    if name and not ENV_NAME.match(name):
        raise ConfigError(
            f"{where}.{key}: expected the name of an environment variable, found '{name}' "
            "(the secret itself is never written in nagare.yaml)"
        )
    return name


def _claim(raw: dict[str, Any], key: str, where: str) -> str:
    claim = _smtp_text(raw, key, where)
    if claim and not _CLAIM.match(claim):
        raise ConfigError(f"{where}.{key}: expected a claim name such as groups, found '{claim}'")
    return claim


def _oidc_scopes(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return OidcSettings("", "").scopes
    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
        raise ConfigError(f"{where}: expected a list of scopes such as [openid, profile, email]")
    scopes = tuple(dict.fromkeys(s.strip() for s in items))
    if "openid" not in scopes:
        raise ConfigError(f"{where}: must include openid (found {', '.join(scopes)})")
    return scopes


def _role_map(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if raw in (None, ""):
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping of claim value to role, e.g. "
            "{nagare-admins: admin, data-team: developer}"
        )
    pairs = []
    for value, role in raw.items():
        if not isinstance(role, str) or not role.strip():
            raise ConfigError(f"{where}.{value}: expected a role name, found '{role}'")
        pairs.append((str(value), role.strip()))
    return tuple(pairs)


def check_oidc_roles(auth_mode: str, oidc: OidcSettings | None, roles: dict[str, RoleDef]) -> None:
    """Across settings: `auth_mode: oidc` needs an `oidc:` section, whose roles must exist."""
    if auth_mode == "oidc" and oidc is None:
        raise ConfigError(
            "auth_mode: oidc needs an oidc: section in nagare.yaml (at least issuer and "
            "client_id; see the README, Single sign-on)"
        )
    if oidc is None:
        return
    known = all_roles(roles)
    named = [(f"oidc.role_map.{value}", role) for value, role in oidc.role_map]
    if oidc.default_role:
        named.append(("oidc.default_role", oidc.default_role))
    for where, role in named:
        if role not in known:
            raise ConfigError(f"{where}: unknown role '{role}' (known: {', '.join(known)})")


def _coerce_users(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping of pool name to user name, e.g. "
            f"{{default: nobody}}, found '{raw}'"
        )
    users: dict[str, str] = {}
    for name, user in raw.items():
        if not isinstance(user, str) or not user.strip():
            raise ConfigError(f"{where}.{name}: expected a user name, found '{user}'")
        users[str(name)] = user.strip()
    return users


def options_markdown() -> str:
    """The README's configuration table, derived from OPTIONS."""
    rows = [
        "| Setting | Flag | Environment | nagare.yaml | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        default = _show_default(o)
        rows.append(
            f"| {o.name} | {_code(o.flag)} | {_code(o.env)} | {_code(o.yaml_key)} | "
            f"{default} | {o.help} |"
        )
    return "\n".join(rows)


def _code(text: str) -> str:
    return f"`{text}`" if text else "—"


def _show_default(option: Option) -> str:
    if option.kind == "pools":
        return "`{default: 4}`"
    if option.default in ("", None, ()):
        return "—"
    return f"`{option.default}`"


# ---------------------------------------------------------------- the typed Settings class

SETTINGS_PATH = "nagare/settings.py"
_FIELD_TYPES = {
    "str": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "pools": "dict[str, int]",
    "users": "dict[str, str]",
    "handlers": "str",
    "smtp": "SmtpSettings | None",
    "roles": "dict[str, RoleDef]",
    "git_sync": "GitSyncSettings | None",
    "oidc": "OidcSettings | None",
    "list": "tuple[str, ...]",
    "origins": "tuple[str, ...]",
}


# Types of settings defined in nagare.models (imported by the generated module).
_MODEL_TYPES = ("GitSyncSettings", "OidcSettings", "SmtpSettings")


def settings_module_source() -> str:
    """The text of `nagare/settings.py`: a frozen dataclass with one typed field per option."""
    fields = "\n".join(_settings_field(o) for o in OPTIONS)
    imports = "dataclass, field" if "field(" in fields else "dataclass"
    models = [name for name in _MODEL_TYPES if name in fields]
    if "RoleDef" in fields:
        imports += "\n\nfrom nagare.access import RoleDef"
    if models:
        imports += "\n" if "RoleDef" in fields else "\n\n"
        imports += f"from nagare.models import {', '.join(models)}"
    return (
        "# Generated from nagare.config.OPTIONS by nagare.config.settings_module_source(): do not\n"
        "# edit. After changing OPTIONS, regenerate with: python3 tests/generate_settings.py\n"
        '"""Typed settings: one field per option of `nagare.config.OPTIONS` (`Config` adds the\n'
        'loading and what is derived from them)."""\n'
        "\n"
        "from __future__ import annotations\n"
        "\n"
        f"from dataclasses import {imports}\n"
        "\n"
        "\n"
        "@dataclass(frozen=True, eq=False)  # compared by identity: one per process\n"
        "class Settings:\n"
        '    """Every setting, typed; each comment is the help text of its option."""\n'
        "\n"
        f"{fields}"
    )


def _settings_field(option: Option) -> str:
    if option.kind not in _FIELD_TYPES:
        raise ValueError(f"option '{option.name}': no field type for kind '{option.kind}'")
    comment = textwrap.wrap(
        option.help, width=100, initial_indent="    # ", subsequent_indent="    # "
    )
    default = _python_literal(option.default)
    if isinstance(option.default, dict | list):
        default = f"field(default_factory=lambda: {default})"
    return "\n".join([*comment, f"    {option.name}: {_FIELD_TYPES[option.kind]} = {default}", ""])


def _python_literal(value: Any) -> str:
    """Source text of a default, quoted as ruff format writes it."""
    if isinstance(value, str):
        return repr(value) if '"' in value else '"' + repr(value)[1:-1] + '"'
    if isinstance(value, dict):
        items = ", ".join(f"{_python_literal(k)}: {_python_literal(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        items = ", ".join(_python_literal(v) for v in value)
        if isinstance(value, list):
            return f"[{items}]"
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)
