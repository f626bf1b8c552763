"""Names the dead-code check (tests/test_lint.py, vulture) must not report: hooks that a
framework calls by name, and the few parts of the product's interface that only tests and
tools use. Each entry says why. Parsed by vulture, never imported."""

# ruff: noqa: B018, F821

# socketserver and the protocol layer (http/wire.py) call these by name, or read them as settings
_Handler.raw_requestline, _Handler.requestline, _Handler.handle_one_request  # http/server.py
_Deadline.readable, _Deadline.readinto  # io.BufferedReader reads through them
NagareHTTPServer.process_request  # socketserver hands it each accepted connection
_Handler.log_message, RequestHandler.handle, RequestHandler.log_message
_Handler.disable_nagle_algorithm, _Handler.wbufsize
NagareHTTPServer.allow_reuse_address, NagareHTTPServer.request_queue_size
NagareHTTPServer.server_name, NagareHTTPServer.server_port  # http.server's, set as it would
# sqlite3 reads a connection's and a cursor's row_factory
_.row_factory

# read by tests and tools, not by the server
Config.with_values  # tests build settings with overrides (conftest.make_config)
options_markdown  # the README's configuration table, checked by tests/test_docs.py
settings_module_source, SETTINGS_PATH  # tests/generate_settings.py writes nagare/settings.py
plan_run  # engine/next_steps: the whole-run planner the incremental one is checked against
Plan.empty  # tests/test_scheduling_rules.py
Database.schema_version  # tests/test_metrics.py (migrations)
Reactor.idle  # tests/executor_harness.py: nothing left registered after an attempt
Spawner.uses_vfork, Spawner.hands_off_cpu  # tests/test_dispatch.py (start methods)
Coordinator.waiting_polls  # tests/test_cluster.py waits for a worker's long poll
mask  # engine/secrets: the one masker, for task outputs (and tests/test_secrets.py)
Connection.round_trips  # store/postgres: tests/test_postgres.py counts a turn's round trips

# teams (auth_mode builtin/oidc): the users, keys and audit code being built reads these;
# each line goes once its reader lands
