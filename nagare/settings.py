# Generated from nagare.config.OPTIONS by nagare.config.settings_module_source(): do not
# edit. After changing OPTIONS, regenerate with: python3 tests/generate_settings.py
"""Typed settings: one field per option of `nagare.config.OPTIONS` (`Config` adds the
loading and what is derived from them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nagare.access import RoleDef
from nagare.models import GitSyncSettings, OidcSettings, SmtpSettings


@dataclass(frozen=True, eq=False)  # compared by identity: one per process
class Settings:
    """Every setting, typed; each comment is the help text of its option."""

    # Listen address: PORT, :PORT or HOST:PORT.
    port: str = ":8080"

    # SQLite database file, or a PostgreSQL URL postgresql://user@host:5432/dbname (created and
    # migrated on start; see the README, PostgreSQL).
    db: str = "nagare.db"

    # Folder of DAG files (*.yaml, *.yml); created if missing.
    dags: str = "dags"

    # Largest DAG file read; a larger one is reported as that file's error, not read.
    max_dag_file_bytes: int = 1048576

    # Whether the dashboard and the API may create, save and delete DAG files (false for GitOps
    # setups: the folder is then read-only to Nagare).
    allow_dag_edits: bool = True

    # Settings file; a missing file means defaults.
    config: str = "nagare.yaml"

    # API key required on /api/* as 'Authorization: Bearer KEY'.
    api_key: str = ""

    # Who may use the API and dashboard: key (the one api_key; open without one), builtin (users and
    # API keys with roles, stored in the database; api_key is an admin key) or oidc (single sign-on
    # through an OpenID Connect provider, plus builtin's users and keys).
    auth_mode: str = "key"

    # Roles limited to DAGs with some tags, or new roles on a built-in base, e.g. {operator: {tags:
    # [finance]}, finance_dev: {base: developer, tags: [finance]}}.
    roles: dict[str, RoleDef] = field(default_factory=lambda: {})

    # How long a dashboard sign-in lasts without use (auth_mode builtin or oidc).
    session_hours: int = 12

    # Single sign-on (auth_mode oidc): {issuer, client_id, client_secret_env, client_auth,
    # redirect_url, scopes, name_claim, role_claim, role_map, default_role, provider_name, ca_file,
    # insecure, timeout_seconds} (see the README, Single sign-on).
    oidc: OidcSettings | None = None

    # Folder of task log files (default: 'logs' next to a SQLite db; with PostgreSQL, 'logs' in the
    # working directory).
    logs_dir: str = ""

    # Local task slots per pool, e.g. {default: 4, gpu: 0}; 0 = remote workers only.
    worker_pools: dict[str, int] = field(default_factory=lambda: {"default": 4})

    # Handlers of every DAG without its own handler_on, e.g. {failure: {command: ...}} (the DAG
    # file's handler_on syntax).
    default_handler_on: str = ""

    # The mail server of `type: mail` steps on this host: {host, port, from, username, password_env,
    # starttls, ssl, timeout_seconds, ca_file, insecure} (see the README, type: mail).
    smtp: SmtpSettings | None = None

    # Keep the DAGs folder equal to a git branch: {url, branch, interval_seconds, subdirectory,
    # ssh_key_file | token_env, timeout_seconds} (see the README, Git sync).
    git_sync: GitSyncSettings | None = None

    # User the tasks of a pool run as, e.g. {default: nobody} (needs the server to run as root); a
    # task's run_as must then name that user or none.
    pool_run_as: dict[str, str] = field(default_factory=lambda: {})

    # Most children a map task may fan out to.
    max_map_items: int = 10000

    # Most missed slots one DAG catches up at once.
    max_catchup_runs: int = 1000

    # Without catchup, a slot found late by at most this much still runs.
    misfire_grace_seconds: float = 60.0

    # On SIGTERM, how long running tasks may finish before they are killed.
    shutdown_grace_seconds: float = 10.0

    # Largest accepted HTTP request body (413 above).
    max_body_bytes: int = 1048576

    # Longest time a client may take to send a whole request (request line, headers and body,
    # however slowly it trickles); a kept-alive connection may idle at most this long, and 15 s,
    # between requests.
    request_timeout_seconds: float = 30.0

    # Most HTTP connections served at once (log streams and workers' long polls count); more get a
    # 503 and are closed. Lowered at start to what the open-file limit allows.
    max_connections: int = 512

    # Connections beyond max_connections kept for /api/health, /metrics, the dashboard's pages and
    # the cluster protocol (/api/workers/...), so they answer while the others are full.
    reserved_connections: int = 32

    # Longer output lines are cut and marked as truncated in the task log.
    max_log_line_bytes: int = 65536

    # Docker engine of container tasks, e.g. unix:///var/run/docker.sock or tcp://host:2375
    # (default: DOCKER_HOST, else the local socket).
    docker_host: str = ""

    # Host folders container volumes may mount (a YAML list, or comma-separated); empty = any host
    # path (warned at start).
    docker_volume_roots: tuple[str, ...] = ()

    # Longest image pull; a pull does not count against a task's timeout_seconds.
    docker_pull_timeout_seconds: float = 900.0

    # Keep-alive interval of live log streams.
    sse_ping_seconds: float = 15.0

    # Browser origins allowed to call the API cross-origin (nagare.yaml: cors: {allowed_origins:
    # [...]}, or comma-separated); empty = '*' without an API key, none with one ('*' is never sent
    # when a key is set).
    cors_allowed_origins: tuple[str, ...] = ()

    # Header carrying a webhook delivery id; a repeat within 24 h returns the first run id (empty =
    # no de-duplication).
    webhook_delivery_header: str = "X-GitHub-Delivery"

    # PEM certificate file: serve HTTPS (with --tls-key).
    tls_cert: str = ""

    # PEM private key file of --tls-cert.
    tls_key: str = ""

    # Server log level.
    log_level: str = "info"

    # Server log lines: text, or json (one object per line; run_id/task_id where relevant).
    log_format: str = "text"

    # Finished runs older than this are deleted with their tasks, metrics and logs by a background
    # sweep (and `nagare cleanup`); 0 keeps everything.
    retention_days: int = 30

    # Run as a remote worker of the master given by --join (also `nagare worker`).
    worker: bool = False

    # Master URL a worker joins, e.g. http://master:8080; masters sharing a PostgreSQL database:
    # their URLs, comma-separated (the worker moves on when one cannot be reached).
    join: str = ""

    # Comma-separated pools a worker serves, e.g. gpu,cpu.
    pools: str = "default"

    # How many tasks a worker runs at once.
    max_tasks: int = 4

    # How many more tasks a worker may take, waiting for a free slot, while its tasks are short
    # (under half a second); 0: none.
    prefetch: int = 4

    # A worker's name in the cluster (default: HOSTNAME-PID).
    worker_id: str = ""

    # User a worker's tasks run as (needs the worker to run as root); a task's run_as must then name
    # that user or none.
    run_as: str = ""

    # Cluster token: the master requires it on the worker protocol routes (without one, the API
    # key), a worker sends it.
    token: str = ""

    # A remote worker that has not been heard from for this long loses its tasks (they are retried
    # per their retries, or fail as lost).
    lease_timeout_seconds: float = 30.0
