"""Start-up rule (ARCHITECTURE.md, Start-up and footprint): heavy modules are imported where
they are used, not by every command. Each check runs a fresh interpreter and reads its
`sys.modules`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Never loaded by `import nagare.cli` (every command pays for what it loads).
NOT_FOR_THE_CLI = (
    "nagare.app",
    "nagare.cluster",
    "nagare.webhooks",
    "nagare.executors",
    "nagare.client",
    "nagare.metrics",
    "nagare.http",
    "nagare.store",
    "nagare.scheduler",
    "nagare.git_sync",
    "docker",
    "requests",
    "jq",
    "croniter",
    "dateutil",
    "psutil",
    "email",
    "ssl",
    "http.client",
    "http.server",
    "urllib.request",
    "sqlite3",
    "difflib",
)

# Never loaded by `nagare exec` of a DAG without schedule, jq or containers.
NOT_FOR_EXEC = (
    "nagare.http",
    "nagare.metrics",
    "nagare.dag_edits",
    "nagare.client",
    "nagare.cluster.remote",
    "nagare.executors.docker",
    "nagare.git_sync",
    "docker",
    "requests",
    "jq",
    "croniter",
    "dateutil",
    "email",
    "ssl",
    "http.client",
    "http.server",
    "urllib.request",
    "difflib",
)


def loaded_after(code: str, cwd: Path) -> set[str]:
    """The modules loaded once `code` has run in a fresh interpreter (source tree first)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def offenders(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_offenders_match_packages_and_their_modules() -> None:
    loaded = {"email", "email.utils", "emailx", "nagare.http.api", "nagare.httpx"}
    found = offenders(loaded, ("email", "nagare.http"))
    assert found == ["email", "email.utils", "nagare.http.api"]


def test_importing_the_cli_loads_no_service_and_no_heavy_library(tmp_path: Path) -> None:
    loaded = loaded_after("import nagare.cli", tmp_path)
    assert "nagare.cli" in loaded
    assert offenders(loaded, NOT_FOR_THE_CLI) == []


def test_the_cli_parser_loads_no_service_either(tmp_path: Path) -> None:
    """Building the whole parser (every verb, the client verbs included) and `--help`."""
    loaded = loaded_after(
        "import contextlib, io\nfrom nagare.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['version'])",
        tmp_path,
    )
    assert offenders(loaded, NOT_FOR_THE_CLI) == []


def test_exec_builds_no_http_side(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "one.yaml").write_text("id: one\ntasks:\n  - id: a\n    command: 'true'\n")
    code = (
        "import contextlib, io\n"
        "from nagare.cli import main\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        f"    assert main(['exec', '--quiet', {str(dags / 'one.yaml')!r}]) == 0\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert "nagare.app" in loaded and "nagare.executors.local" in loaded  # it did run
    assert offenders(loaded, NOT_FOR_EXEC) == []


# Never loaded by a server or worker start: the client commands, and what a server without a
# scheduled DAG does not need (time zones come with the first zone a schedule names).
NOT_FOR_A_SERVER = (
    "nagare.cli_client",
    "nagare.cli_format",
    "nagare.cli_audit",
    "nagare.cli_accounts",
    "nagare.cli_exec",
    "zoneinfo",
    "sysconfig",
)


def test_a_server_start_parses_without_the_client_commands(tmp_path: Path) -> None:
    """`nagare --port ...` and `nagare serve ...` build a parser of serve and worker alone;
    any other command (here `dags`, with the global flags before it) gets the whole one."""
    code = (
        "from nagare import cli\n"
        "parser, namespace = cli._parse(['--port', ':0', '--db', 'x.db'])\n"
        "assert namespace.command == 'serve' and namespace.port == ':0'\n"
        "parser, namespace = cli._parse(['worker', '--join', 'http://m:8080'])\n"
        "assert namespace.command == 'worker'\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert offenders(loaded, NOT_FOR_A_SERVER) == []
    code = "from nagare import cli\nparser, namespace = cli._parse(['--api', 'http://m', 'dags'])\n"
    loaded = loaded_after(code + "assert namespace.command == 'dags'\n", tmp_path)
    assert "nagare.cli_client" in loaded


def test_a_started_server_loads_no_client_command_and_no_time_zone(tmp_path: Path) -> None:
    code = (
        "from nagare.app import App\nfrom nagare.config import load_config\n"
        "from nagare.memory import trim\n"
        "app = App(load_config({'db': 'n.db', 'port': '127.0.0.1:0', 'dags': 'dags'}))\n"
        "app.start()\ntrim()\napp.stop()\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert "nagare.http.server" in loaded  # it did serve
    assert offenders(loaded, NOT_FOR_A_SERVER) == []


# Never loaded by the worker role: the server's parts.
NOT_FOR_A_WORKER = (
    "nagare.app",
    "nagare.store",
    "nagare.scheduler",
    "nagare.pools",
    "nagare.runs",
    "nagare.cluster.coordinator",
    "nagare.http",
    "nagare.dag_folder",
    "nagare.webhooks",
    "nagare.metrics",
    "sqlite3",
    "croniter",
    "jq",
)


def test_a_worker_loads_none_of_the_servers_parts(tmp_path: Path) -> None:
    """`nagare worker` built, started against a master that is not there, and stopped."""
    code = (
        "from nagare.config import load_config\nfrom nagare.worker_app import build_worker\n"
        "from nagare.wiring import protect_process\n"
        "protect_process()\n"
        "config = load_config({'join': 'http://127.0.0.1:9', 'shutdown_grace_seconds': 0.1})\n"
        "app = build_worker(config)\napp.start()\napp.stop()\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert {"nagare.cluster.remote", "nagare.executors.local"} <= loaded  # it did run
    assert offenders(loaded, NOT_FOR_A_WORKER) == []


# Never loaded by a server without TLS, accounts, webhook secrets or mail, however many requests
# it answers: `http.server` (its imports: `http.client`, `email`, `ssl`, `html.entities`) and
# whatever maps OpenSSL's libcrypto (`hashlib`, `hmac`, `secrets`, `ssl`).
NOT_FOR_A_PLAIN_SERVER = (
    "http.server",
    "http.client",
    "email",
    "html",
    "ssl",
    "_ssl",
    "hashlib",
    "_hashlib",
    "hmac",
    "secrets",
)


def test_a_serving_server_maps_no_openssl_and_no_http_server(tmp_path: Path) -> None:
    """A DAG loaded (its content hash taken), the dashboard, the API and a 404 answered."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "one.yaml").write_text("id: one\ntasks:\n  - id: a\n    command: 'true'\n")
    code = (
        "import socket\nfrom nagare.app import App\nfrom nagare.config import load_config\n"
        "app = App(load_config({'db': 'n.db', 'port': '127.0.0.1:0', 'dags': 'dags'}))\n"
        "app.start()\n"
        "for path in ('/api/health', '/api/dags', '/', '/nowhere'):\n"
        "    with socket.create_connection(('127.0.0.1', app.http.port)) as s:\n"
        "        s.sendall(f'GET {path} HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n'.encode())\n"
        "        answer = b''.join(iter(lambda: s.recv(65536), b''))\n"
        "        assert answer.startswith(b'HTTP/1.1 '), answer[:80]\n"
        "        print(path, answer.split()[1].decode())\n"
        "app.stop()\n"
    )
    loaded = loaded_after(code, tmp_path)
    assert {"nagare.http.server", "nagare.store.dags"} <= loaded  # it did serve and load
    assert offenders(loaded, NOT_FOR_A_PLAIN_SERVER) == []


def test_trim_gives_freed_memory_back_on_glibc() -> None:
    from nagare.memory import trim

    freed = trim()
    assert isinstance(freed, bool)
    if platform.libc_ver()[0] == "glibc":  # malloc_trim exists and runs
        garbage = [bytearray(4096) for _ in range(20_000)]
        del garbage
        assert trim() is True


def test_checking_an_expression_keeps_no_compiled_program() -> None:
    """A server checks every jq expression of every DAG at load; only the programs runs
    evaluate are kept (each holds ~13 KB of jq's heap)."""
    from nagare.engine import expressions

    kept = expressions._compiled.cache_info().currsize
    assert expressions.compile_error(".params.x | tostring") == ""
    assert expressions.compile_error(".params.x |") != ""  # still checked
    assert expressions._compiled.cache_info().currsize == kept
    assert expressions.first_result(".footprint_probe", {"footprint_probe": 3}) == 3
    assert expressions._compiled.cache_info().currsize == kept + 1
