"""The database schema as an ordered list of migrations; `PRAGMA user_version` counts applied ones.

Times are UTC epoch milliseconds (INTEGER). Every list or filter the API offers has an index.
"""

MIGRATIONS: tuple[str, ...] = (
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
)
