"""The database schema as an ordered list of migrations; `PRAGMA user_version` (SQLite) or the
`nagare_schema` table (PostgreSQL) counts applied ones. Forward-only: a migration is never
edited once released, a change is a new one at the end.

A migration is written in SQLite's dialect, which `pg_sql.translate` turns into PostgreSQL's;
one that cannot be translated is a mapping {"sqlite": ..., "postgresql": ...} instead.

Times are UTC epoch milliseconds (INTEGER). Every list or filter the API offers has an index.
"""

from collections.abc import Mapping

HOUR_MS = 3_600_000
INF_MS = 9_223_372_036_854_775_807  # the +Inf bucket of the duration histogram
# Upper bounds (ms) of the task duration histogram buckets, as the roll-up stores them. Migration 3
# is derived from them: change them only together with a new migration that re-buckets.
DURATION_BUCKETS_MS: tuple[int, ...] = (
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    1_800_000,
    3_600_000,
    7_200_000,
    21_600_000,
    INF_MS,
)


def _le_case(value: str) -> str:
    """SQL: the upper bound of the histogram bucket `value` (ms) falls into."""
    whens = " ".join(f"WHEN {value} <= {le} THEN {le}" for le in DURATION_BUCKETS_MS[:-1])
    return f"CASE {whens} ELSE {INF_MS} END"


# The roll-up of finished attempts per DAG and time unit (hours, and 5 minutes for short buckets
# and window edges): `unit` and `start` are epoch ms, `start` a multiple of `unit`. Coarsest
# first, each unit a multiple of the next. Like the histogram buckets, migration 3 uses them.
ROLLUP_UNITS_MS: tuple[int, ...] = (HOUR_MS, 300_000)
ROLLUP_AGGREGATES = (
    "count(*), sum(status = 'success'), sum(status = 'cancelled'), "
    "sum(coalesce(duration_ms, 0)), max(coalesce(duration_ms, 0)), "
    "sum(coalesce(peak_memory_bytes, 0)), max(coalesce(peak_memory_bytes, 0)), "
    "sum(coalesce(cpu_user_ms, 0) + coalesce(cpu_system_ms, 0))"
)
ROLLUP_COLUMNS = (
    "unit, start, dag_id, attempts, success, cancelled, duration_sum, duration_max, memory_sum, "
    "memory_max, cpu_sum"
)
ROLLUP_SQL: tuple[str, ...] = tuple(
    f"INSERT OR REPLACE INTO metric_rollup({ROLLUP_COLUMNS}) "
    f"SELECT {unit}, (completed_at / {unit}) * {unit} AS s, dag_id, {ROLLUP_AGGREGATES} "
    "FROM task_attempts WHERE completed_at IS NOT NULL GROUP BY s, dag_id"
    for unit in ROLLUP_UNITS_MS
)
# The metric tables computed from the rows already recorded (migration 3; bulk loads).
METRICS_BACKFILL: tuple[str, ...] = (
    *ROLLUP_SQL,
    """INSERT INTO metric_counters(name, dag_id, task_id, status, value)
        SELECT 'dag_runs', dag_id, '', status, count(*) FROM runs
        WHERE status IN ('success', 'failed', 'cancelled') GROUP BY dag_id, status""",
    """INSERT INTO metric_counters(name, dag_id, task_id, status, value)
        SELECT 'task_runs', a.dag_id, ti.base_task_id, a.status, count(*)
        FROM task_attempts a JOIN task_instances ti ON ti.id = a.task_instance_id
        WHERE a.completed_at IS NOT NULL GROUP BY a.dag_id, ti.base_task_id, a.status""",
    f"""INSERT INTO metric_durations(dag_id, pool, le_ms, count, sum_ms)
        SELECT a.dag_id, ti.pool, {_le_case("coalesce(a.duration_ms, 0)")} AS le, count(*),
        sum(coalesce(a.duration_ms, 0))
        FROM task_attempts a JOIN task_instances ti ON ti.id = a.task_instance_id
        WHERE a.completed_at IS NOT NULL GROUP BY a.dag_id, ti.pool, le""",
)

MIGRATIONS: tuple[str | Mapping[str, str], ...] = (
    # 1: the initial schema
    """
    CREATE TABLE dag_versions (
        hash TEXT PRIMARY KEY,
        dag_id TEXT NOT NULL,
        definition TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE dag_state (
        dag_id TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        watermark INTEGER NOT NULL,
        last_slot INTEGER,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        dag_id TEXT NOT NULL,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        execution_date INTEGER NOT NULL,
        conf TEXT NOT NULL DEFAULT '{}',
        dag_version TEXT NOT NULL REFERENCES dag_versions(hash),
        killed INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        completed_at INTEGER
    );
    CREATE INDEX runs_created ON runs(created_at);
    CREATE INDEX runs_dag_created ON runs(dag_id, created_at);
    CREATE INDEX runs_status_created ON runs(status, created_at);
    CREATE INDEX runs_trigger_created ON runs(trigger, created_at);
    CREATE TABLE task_instances (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        task_id TEXT NOT NULL,
        base_task_id TEXT NOT NULL,
        map_index INTEGER,
        item TEXT,
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 1,
        pool TEXT NOT NULL,
        worker TEXT NOT NULL DEFAULT '',
        command TEXT NOT NULL DEFAULT '',
        exit_code INTEGER,
        timed_out INTEGER NOT NULL DEFAULT 0,
        queued_at INTEGER,
        started_at INTEGER,
        completed_at INTEGER,
        ready_at INTEGER,
        output_tail TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL DEFAULT '',
        UNIQUE (run_id, task_id)
    );
    CREATE INDEX ti_queued ON task_instances(pool, queued_at) WHERE status = 'queued';
    CREATE INDEX ti_retry ON task_instances(ready_at) WHERE status = 'up_for_retry';
    CREATE INDEX ti_run_base ON task_instances(run_id, base_task_id, status);
    CREATE TABLE task_attempts (
        task_instance_id TEXT NOT NULL REFERENCES task_instances(id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        dag_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        status TEXT NOT NULL,
        worker TEXT NOT NULL DEFAULT 'local',
        executor_type TEXT NOT NULL DEFAULT 'local',
        pid INTEGER,
        pid_started_at REAL,
        started_at INTEGER NOT NULL,
        completed_at INTEGER,
        exit_code INTEGER,
        timed_out INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        duration_ms INTEGER,
        cpu_user_ms INTEGER,
        cpu_system_ms INTEGER,
        peak_memory_bytes INTEGER,
        PRIMARY KEY (task_instance_id, attempt)
    );
    CREATE INDEX attempts_completed ON task_attempts(completed_at);
    CREATE INDEX attempts_dag_completed ON task_attempts(dag_id, completed_at);
    CREATE INDEX attempts_running ON task_attempts(worker) WHERE status = 'running';
    """,
    # 2: indexes for counters and the filtered run list
    """
    CREATE INDEX ti_running ON task_instances(pool) WHERE status = 'running';
    CREATE INDEX runs_dag_status_created ON runs(dag_id, status, created_at);
    """,
    # 3: metrics (roll-up per DAG and hour / 5 minutes, monotonic counters, duration histogram)
    # and the indexes behind slowest tasks and percentiles; filled from the recorded attempts
    f"""
    CREATE TABLE metric_rollup (
        unit INTEGER NOT NULL,
        start INTEGER NOT NULL,
        dag_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        success INTEGER NOT NULL,
        cancelled INTEGER NOT NULL,
        duration_sum INTEGER NOT NULL,
        duration_max INTEGER NOT NULL,
        memory_sum INTEGER NOT NULL,
        memory_max INTEGER NOT NULL,
        cpu_sum INTEGER NOT NULL,
        PRIMARY KEY (unit, start, dag_id)
    ) WITHOUT ROWID;
    CREATE INDEX metric_rollup_dag ON metric_rollup(unit, dag_id, start);
    CREATE TABLE metric_counters (
        name TEXT NOT NULL,
        dag_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        status TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name, dag_id, task_id, status)
    ) WITHOUT ROWID;
    CREATE TABLE metric_durations (
        dag_id TEXT NOT NULL,
        pool TEXT NOT NULL,
        le_ms INTEGER NOT NULL,
        count INTEGER NOT NULL,
        sum_ms INTEGER NOT NULL,
        PRIMARY KEY (dag_id, pool, le_ms)
    ) WITHOUT ROWID;
    CREATE INDEX attempts_duration ON task_attempts(duration_ms, completed_at);
    CREATE INDEX attempts_dag_duration ON task_attempts(dag_id, duration_ms, completed_at);
    {";".join(METRICS_BACKFILL)}
    """,
    # 4: webhook delivery ids seen in the last 24 hours (de-duplication of repeated deliveries)
    """
    CREATE TABLE webhook_deliveries (
        delivery_key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        received_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX webhook_deliveries_received ON webhook_deliveries(received_at);
    """,
    # 5: cluster mode: the registry of remote workers and the lease of a remotely held task
    """
    CREATE TABLE workers (
        worker_id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        pools TEXT NOT NULL,
        max_tasks INTEGER NOT NULL,
        version TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'online',
        registered_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE task_instances ADD COLUMN lease_expires_at INTEGER;
    ALTER TABLE task_instances ADD COLUMN lease_confirmed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX ti_leases ON task_instances(lease_expires_at)
        WHERE status = 'running' AND lease_expires_at IS NOT NULL;
    """,
    # 6: the completion and duration indexes hold finished attempts only (every query on them
    # filters on completed_at), so starting an attempt adds nothing to them
    """
    DROP INDEX attempts_completed;
    DROP INDEX attempts_dag_completed;
    DROP INDEX attempts_duration;
    DROP INDEX attempts_dag_duration;
    CREATE INDEX attempts_completed ON task_attempts(completed_at)
        WHERE completed_at IS NOT NULL;
    CREATE INDEX attempts_dag_completed ON task_attempts(dag_id, completed_at)
        WHERE completed_at IS NOT NULL;
    CREATE INDEX attempts_duration ON task_attempts(duration_ms, completed_at)
        WHERE completed_at IS NOT NULL;
    CREATE INDEX attempts_dag_duration ON task_attempts(dag_id, duration_ms, completed_at)
        WHERE completed_at IS NOT NULL;
    """,
    # 7: run parameters: the resolved, typed values of a run (NULL for runs made before: their
    # parameters are their conf)
    """
    ALTER TABLE runs ADD COLUMN params TEXT;
    """,
    # 8: task outputs (the successful attempt's `$NAGARE_OUTPUT` and `output: NAME`, JSON); a
    # run remembers whether any task published some, so tasks of other runs never look for them
    """
    ALTER TABLE task_instances ADD COLUMN outputs TEXT;
    ALTER TABLE runs ADD COLUMN has_outputs INTEGER NOT NULL DEFAULT 0;
    """,
    # 9: run rules: why a rule skipped or cancelled a run, a run held by its DAG's overlap
    # policy (held=1: queued, its tasks not yet queued), the run's deadline, and its handlers
    # (handling=1: its status is final, its handler tasks still run)
    """
    ALTER TABLE runs ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN deadline_at INTEGER;
    ALTER TABLE runs ADD COLUMN handling INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN failed_tasks TEXT NOT NULL DEFAULT '';
    CREATE INDEX runs_deadline ON runs(deadline_at)
        WHERE deadline_at IS NOT NULL AND status IN ('queued', 'running');
    CREATE INDEX runs_handling ON runs(run_id) WHERE handling = 1;
    """,
    # 10: conditions and failure handling: a task failed-but-allowed (allow_failure), a run's count
    # of them (a run's reason, why it was skipped, came with 9; a task's reason is its message)
    """
    ALTER TABLE task_instances ADD COLUMN allowed_failure INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN warnings INTEGER NOT NULL DEFAULT 0;
    """,
    # 11: steps that wait (dag, approval, wait): what a waiting task waits for (JSON: its
    # rendered step), until when, the child run of a `dag` step; a child run's parent task and
    # the outputs a run returns (its DAG's `outputs:`)
    """
    ALTER TABLE task_instances ADD COLUMN wait TEXT;
    ALTER TABLE task_instances ADD COLUMN wait_until INTEGER;
    ALTER TABLE task_instances ADD COLUMN child_run_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    ALTER TABLE runs ADD COLUMN parent_task_id TEXT;
    ALTER TABLE runs ADD COLUMN outputs TEXT;
    CREATE INDEX ti_waiting ON task_instances(wait_until) WHERE status = 'waiting';
    CREATE INDEX runs_parent ON runs(parent_run_id) WHERE parent_run_id IS NOT NULL;
    """,
    # 12: runs by completion time, covering their DAG and status: the run-level outcomes of a
    # metrics window (`/api/metrics/*` `runs`) read a range of this index only
    """
    CREATE INDEX IF NOT EXISTS runs_completed ON runs(completed_at, dag_id, status)
        WHERE completed_at IS NOT NULL;
    """,
    # 13: teams: users (scrypt password hashes; single sign-on users have none), API keys with a
    # role (SHA-256 of the key: keys are long random strings), dashboard sessions (SHA-256 of
    # the cookie) and the audit log of every state-changing action
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT,
        source TEXT NOT NULL DEFAULT 'builtin',
        subject TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_login_at INTEGER,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX users_subject ON users(subject) WHERE subject IS NOT NULL;
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        last_used_at INTEGER,
        revoked_at INTEGER
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        address TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_user ON sessions(user_name);
    CREATE INDEX sessions_expiry ON sessions(expires_at);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit_log(at);
    CREATE INDEX audit_actor ON audit_log(actor, at);
    CREATE INDEX audit_action ON audit_log(action, at);
    """,
    # 14: the masters serving one database (several on PostgreSQL): who they are, when each
    # was last seen, which leads, and the digest of each DAG they loaded
    """
    CREATE TABLE masters (
        master_id TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        url TEXT NOT NULL DEFAULT '',
        started_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        leader INTEGER NOT NULL DEFAULT 0,
        dag_digests TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 15: attempts' log lines in chunks, written by each master on PostgreSQL so that every
    # master serves every log (SQLite has the table and never writes it); a chunk without
    # lines (last_line = first_line - 1) marks the log closed
    """
    CREATE TABLE log_chunks (
        run_id TEXT NOT NULL,
        task_instance_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        first_line INTEGER NOT NULL,
        last_line INTEGER NOT NULL,
        text TEXT NOT NULL,
        meta TEXT NOT NULL,
        PRIMARY KEY (task_instance_id, attempt, first_line, last_line)
    ) WITHOUT ROWID;
    CREATE INDEX log_chunks_run ON log_chunks(run_id);
    """,
    # 16: a claim's queue order (queued_at, then rowid) read from the index on PostgreSQL too:
    # a SQLite index ends with the rowid by itself, a PostgreSQL one must name it (without it a
    # claim of 5 tasks read and sorted every queued task of the pool)
    {
        "sqlite": "",
        "postgresql": """
    DROP INDEX ti_queued;
    CREATE INDEX ti_queued ON task_instances(pool, queued_at, rowid) WHERE status = 'queued';
    """,
    },
)


def migration_script(number: int, dialect: str) -> str:
    """The SQL of migration `number` (1-based) for `dialect` ("sqlite" or "postgresql")."""
    script = MIGRATIONS[number - 1]
    return script if isinstance(script, str) else script[dialect]
