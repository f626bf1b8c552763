"""Shared fixtures: a real Nagare (real SQLite file, real processes, real HTTP server on port 0)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from postgres_server import PgServer, find_bindir, start_server  # noqa: E402

from nagare.app import App  # noqa: E402
from nagare.config import load_config  # noqa: E402
from nagare.store import Store  # noqa: E402


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass
class HttpResult:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 10,
) -> HttpResult:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as err:
        return HttpResult(err.code, err.read(), dict(err.headers))


@dataclass
class Nagare:
    """A running server and helpers to talk to it."""

    app: App
    root: Path
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.port}"

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> HttpResult:
        headers = {**self.headers, **kw.pop("headers", {})}
        return http(method, self.url + path, body, headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        result = self.call("GET", path, **kw)
        assert result.status == 200, (path, result.status, result.body)
        return result.json

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        result = self.call(
            "POST", f"/api/dags/{dag_id}/runs", {"conf": conf} if conf is not None else None
        )
        assert result.status == 201, result.body
        return str(result.json["run_id"])

    def wait_run(self, run_id: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until the run is finished; returns the run object."""

        def done() -> dict[str, Any] | None:
            run = self.get(f"/api/runs/{run_id}")
            return run if run["status"] in ("success", "failed", "cancelled", "skipped") else None

        return wait_for(done, timeout, message=f"run {run_id} to finish")  # type: ignore[no-any-return]

    def tasks(self, run_id: str) -> dict[str, dict[str, Any]]:
        return {t["task_id"]: t for t in self.get(f"/api/runs/{run_id}/tasks")}

    def task(self, run_id: str, task_id: str) -> dict[str, Any]:
        from urllib.parse import quote

        return self.get(f"/api/runs/{run_id}/tasks/{quote(task_id, safe='')}")  # type: ignore[no-any-return]

    def log(self, run_id: str, task_id: str, attempt: int | None = None) -> str:
        from urllib.parse import quote

        suffix = f"?attempt={attempt}" if attempt else ""
        result = self.call(
            "GET", f"/api/runs/{run_id}/tasks/{quote(task_id, safe='')}/logs" + suffix
        )
        assert result.status == 200, result.body
        return result.text

    def write_dag(self, name: str, text: str) -> Path:
        path = self.root / "dags" / name
        path.write_text(textwrap.dedent(text))
        return path


def make_config(root: Path, **settings: Any) -> Any:
    (root / "dags").mkdir(exist_ok=True)
    flags = {
        "db": str(root / "nagare.db"),
        "dags": str(root / "dags"),
        "port": "127.0.0.1:0",
        "config": str(root / "nagare.yaml"),
        "logs_dir": str(root / "logs"),
    }
    extra = {k: v for k, v in settings.items() if k not in flags}
    flags.update({k: v for k, v in settings.items() if k in flags})
    config = load_config(flags, environ={})
    if extra:
        if "worker_pools" in extra:
            extra["worker_pools"] = {"default": 4, **extra["worker_pools"]}
        config = config.with_values(**extra)
    return config


@pytest.fixture
def nagare_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Nagare]]:
    """`nagare_factory(dags={"a.yaml": "..."}, **settings)` starts a server on port 0. With
    NAGARE_TEST_STORE=postgresql, a server given no `db` keeps its state in a fresh database of
    the session's PostgreSQL server (every server test on PostgreSQL: slow, not run by CI)."""
    started: list[App] = []
    on_postgres = os.environ.get("NAGARE_TEST_STORE") == "postgresql"
    databases: dict[Path, str] = {}

    def start(
        dags: dict[str, str] | None = None, root: Path | None = None, **settings: Any
    ) -> Nagare:
        base = root or tmp_path
        (base / "dags").mkdir(parents=True, exist_ok=True)
        for name, text in (dags or {}).items():
            (base / "dags" / name).write_text(textwrap.dedent(text))
        settings.setdefault("sse_ping_seconds", 0.2)
        settings.setdefault("shutdown_grace_seconds", 1.0)
        if on_postgres and "db" not in settings:
            server: PgServer = request.getfixturevalue("postgres_server")
            if base not in databases:  # a restart on the same root finds its database again
                databases[base] = server.url(server.new_database())
            settings["db"] = databases[base]
        app = App(make_config(base, **settings))
        app.start(poll_interval=0.05)
        started.append(app)
        headers = (
            {"Authorization": f"Bearer {settings['api_key']}"} if settings.get("api_key") else {}
        )
        return Nagare(app, base, headers)

    yield start
    for app in started:
        app.stop()
    for url in databases.values():
        _pg_drop(url)


@pytest.fixture
def nagare(nagare_factory: Callable[..., Nagare]) -> Nagare:
    return nagare_factory()


def pythonpath_env(**extra: str) -> dict[str, str]:
    """Environment for running `python -m nagare` from the source tree in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NAGARE_API_KEY", None)
    env.update(extra)
    return env


# ---------------------------------------------------------------- stores, one per backend


@dataclass(frozen=True)
class StoreBackend:
    """How the tests get an empty database of one backend and open a Store on it."""

    name: str
    new_database: Callable[[Path, int], str]  # (tmp_path, number) -> where a fresh store lives
    open: Callable[[str], Store]
    drop: Callable[[str], None] = lambda where: None  # after the test (files go with tmp_path)


SQLITE = StoreBackend("sqlite", lambda root, number: str(root / f"store-{number}.db"), Store)


def _pg() -> PgServer:
    assert _PG_SERVER, "the postgres_server fixture starts the server first"
    return _PG_SERVER[0]


def _pg_new_database(root: Path, number: int) -> str:
    return _pg().url(_pg().new_database())


def _pg_drop(where: str) -> None:
    _pg().drop_database(where.rsplit("/", 1)[1].split("?", 1)[0])


POSTGRESQL = StoreBackend("postgresql", _pg_new_database, Store, _pg_drop)
# Every test that takes `store_factory` or `store` runs once per backend listed here: SQLite, and
# a real PostgreSQL server started once per session (skipped, with the reason, where it is not
# installed; mandatory when NAGARE_REQUIRE_POSTGRES=1).
STORE_BACKENDS: tuple[StoreBackend, ...] = (SQLITE, POSTGRESQL)
_PG_SERVER: list[PgServer] = []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (see tests/postgres_server.py)."""
    bindir = find_bindir()
    if bindir is None:
        _missing(
            "PostgreSQL",
            "NAGARE_REQUIRE_POSTGRES",
            "initdb/pg_ctl not found (apt-get install postgresql)",
        )
    assert bindir is not None
    try:
        import pg8000  # noqa: F401
    except ImportError:
        _missing("the pg8000 driver", "NAGARE_REQUIRE_POSTGRES", "pip install -e '.[test]'")
    server = start_server(bindir)
    _PG_SERVER.append(server)
    yield server
    _PG_SERVER.clear()
    server.stop()


class StoreFactory:
    """`make_store()` -> a new Store on a database of its own, empty but for the schema;
    `reopen(store)` -> another Store on the same database (what a restarted server sees, with
    nothing cached). The fixture closes every store made and drops their databases."""

    def __init__(self, backend: StoreBackend, root: Path) -> None:
        self.backend = backend
        self._root = root
        self._databases: list[str] = []
        self._opened: list[tuple[Store, str]] = []

    def __call__(self) -> Store:
        where = self.backend.new_database(self._root, len(self._databases))
        self._databases.append(where)
        return self._open(where)

    def reopen(self, store: Store) -> Store:
        where = next(w for s, w in self._opened if s is store)
        return self._open(where)

    def _open(self, where: str) -> Store:
        store = self.backend.open(where)
        self._opened.append((store, where))
        return store

    def close_all(self) -> None:
        for store, _ in reversed(self._opened):
            store.close()
        self._opened.clear()
        for where in self._databases:
            self.backend.drop(where)


@pytest.fixture(params=STORE_BACKENDS, ids=lambda backend: backend.name)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param is POSTGRESQL:
        request.getfixturevalue("postgres_server")
    factory = StoreFactory(request.param, tmp_path)
    yield factory
    factory.close_all()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """A fresh store of each backend (closed at teardown)."""
    return store_factory()


# ---------------------------------------------------------------- real Docker and Chromium

DOCKER_TEST_IMAGE = "nagare-test-busybox"
CHROMIUM = "/usr/bin/chromium"


def _missing(what: str, variable: str, why: str) -> None:
    """Skip with the reason, or fail when CI made this part mandatory."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{variable}=1 but {what} is not available: {why}")
    pytest.skip(f"{what} is not available: {why} (CI sets {variable}=1 and installs it)")


def require_docker() -> None:
    """A running Docker engine with the local test image (see .ci/docker-up)."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        _missing("a Docker engine", "NAGARE_REQUIRE_DOCKER", "no docker client on PATH")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        _missing(
            "a Docker engine",
            "NAGARE_REQUIRE_DOCKER",
            "`docker info` failed; run bash .ci/docker-up",
        )
    image = subprocess.run(
        ["docker", "image", "inspect", DOCKER_TEST_IMAGE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if image.returncode != 0:
        _missing(
            f"the test image {DOCKER_TEST_IMAGE}",
            "NAGARE_REQUIRE_DOCKER",
            "build it with bash .ci/docker-up",
        )


def require_chromium() -> str:
    if not os.path.exists(CHROMIUM):
        _missing(
            "Chromium",
            "NAGARE_REQUIRE_BROWSER",
            f"{CHROMIUM} does not exist (apt-get install chromium)",
        )
    return CHROMIUM


# ---------------------------------------------------------------- nagare.pyz as a user runs it


@pytest.fixture(scope="session")
def built_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nagare.pyz built once per test session by build_pyz.py."""
    import subprocess

    output = tmp_path_factory.mktemp("pyz") / "nagare.pyz"
    result = subprocess.run(
        [sys.executable, str(ROOT / "build_pyz.py"), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return output


def pyz_env(root: Path) -> dict[str, str]:
    """A bare environment, as on a fresh server: no PYTHONPATH, a private cache folder."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(root), "NAGARE_CACHE_DIR": str(root / "c")}


@contextmanager
def serve_pyz(pyz: Path, root: Path) -> Iterator[str]:
    """`python3 nagare.pyz` in `root` on a free port; yields its URL; SIGTERM and a clean exit
    at the end."""
    import signal
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(pyz), "--port", f"127.0.0.1:{port}"],
            cwd=root,
            env=pyz_env(root),
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), 20, message="nagare.pyz to answer /api/health")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def _answers(url: str) -> bool:
    try:
        return http("GET", url + "/api/health", timeout=1).status == 200
    except OSError:
        return False
