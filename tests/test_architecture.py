"""Architecture rules of DESIGN.md §3 / ARCHITECTURE.md, checked on the source with `ast`.

Every `nagare/**/*.py` is parsed (never imported). The rules:

- every module has a layer (a new module fails until it is given one in LAYERS below);
- a module imports only `nagare` modules of its own layer or lower;
- L3 services do not import each other;
- executors never touch the store or HTTP;
- outside the store, only the `nagare.store` package is imported, never its modules; outside
  the executors, only the seam (`nagare.executors`) and its reactor, never a concrete executor
  (but in `app`, the composition root, which builds them);
- each technology has one owner module (sqlite3, pg8000, subprocess, signal, psutil, ctypes,
  docker, jq, croniter, http.server, urllib.request, yaml, print), and only
  `executors/spawn.py` starts or signals processes (`_posixsubprocess`, `os.posix_spawn`,
  `os.fork`, `os.exec*`, `os.kill`, `os.killpg`, ...);
- threads are created only where ARCHITECTURE.md's threading model says;
- no service object is built at import time (no module-level `Store(...)`, `App(...)`);
- no `time.sleep` in nagare/: background loops wait on events or conditions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "nagare"

# ---------------------------------------------------------------- the layer map

L0, L1, L2, L3, L4, L5, L6 = range(7)

LAYERS: dict[str, int] = {
    # L0: plain data and helpers every layer may use (`nagare/__init__.py` counts as L0)
    "nagare": L0,
    "nagare.errors": L0,
    "nagare.clock": L0,
    "nagare.models": L0,
    "nagare.resources": L0,
    "nagare.patterns": L0,
    "nagare.digest": L0,  # SHA-256 of DAG texts without OpenSSL (hashlib maps libcrypto)
    # L1: pure decisions (parsing, validation, cron, "what runs next") and formats
    "nagare.dagfile": L1,  # the package and every module in it
    "nagare.engine": L1,  # the package and every module in it
    "nagare.cron": L1,
    "nagare.config": L1,
    "nagare.db_url": L1,  # where the store lives: a SQLite path or a PostgreSQL URL, ~/.pgpass
    "nagare.settings": L1,  # generated from config.OPTIONS (tests/generate_settings.py)
    "nagare.prometheus": L1,
    "nagare.server_log": L1,
    "nagare.liveness": L1,  # heartbeats of the loops and the health decision
    "nagare.access": L1,  # roles, permissions, principals and the pure decisions over them
    "nagare.jose": L1,  # JSON Web Tokens: parsing, RS256/ES256 signature and claim checks
    "nagare.passwords": L1,  # password hashes (scrypt) and random tokens: hashlib and secrets
    "nagare.cluster": L1,  # the package's __init__ only: its modules have layers of their own
    "nagare.cluster.protocol": L1,
    # L2: I/O seams
    "nagare.store": L2,  # the package and every module in it
    "nagare.dag_folder": L2,
    "nagare.dag_edits": L2,  # writes of the DAG folder (the editor), next to its reader
    "nagare.logs": L2,
    "nagare.log_shipping": L2,  # logs to and from the database several masters share
    "nagare.memory": L2,  # freed heap back to the system (malloc_trim)
    "nagare.executors": L2,  # the package and every module in it
    "nagare.client": L2,
    # L3: services; they meet in the store and in callbacks that `app` wires
    "nagare.scheduler": L3,
    "nagare.pools": L3,
    "nagare.runs": L3,
    "nagare.run_checks": L3,  # DAG-level preconditions, through the executor seam
    "nagare.retention": L3,
    "nagare.leadership": L3,  # which master leads (the leader lock), the masters' rows
    "nagare.webhooks": L3,
    "nagare.waits": L3,  # the steps that wait: approvals, events, child runs
    "nagare.git_sync": L3,  # the DAGs folder follows a git branch (git through the spawner)
    "nagare.sso": L3,  # single sign-on: the OpenID Connect flow (the provider through client)
    "nagare.metrics": L3,
    "nagare.accounts": L3,  # users, API keys, sessions and the sign-in limit
    "nagare.cluster.coordinator": L3,
    "nagare.cluster.remote": L3,
    # L4: the HTTP layer
    "nagare.http": L4,  # the package and every module in it
    # L5: the composition roots: the server's, the worker's and what both share
    "nagare.app": L5,
    "nagare.worker_app": L5,
    "nagare.wiring": L5,
    # L6: the only code that prints or exits
    "nagare.cli": L6,
    "nagare.cli_client": L6,
    "nagare.cli_exec": L6,
    "nagare.cli_format": L6,
    "nagare.cli_audit": L6,
    "nagare.cli_accounts": L6,
    "nagare.cli_db": L6,
    "nagare.__main__": L6,
}
# Packages whose every module shares the package's layer.
LAYERED_PACKAGES = (
    "nagare.store",
    "nagare.executors",
    "nagare.http",
    "nagare.dagfile",
    "nagare.engine",
)

# What other modules may import of the store and of the executors: the public package and the
# seam. The composition root builds the concrete executors and so may import them.
STORE_PUBLIC = "nagare.store"
EXECUTOR_SEAM = frozenset({"nagare.executors", "nagare.executors.reactor"})
# the server's (`app`), the worker's (`worker_app`) and what both share (`wiring`)
COMPOSITION_ROOTS = frozenset({"nagare.app", "nagare.wiring", "nagare.worker_app"})

# Each technology has one owner (paths relative to the repository; a trailing "/" is a folder).
TECH_OWNERS: dict[str, tuple[str, ...]] = {
    "sqlite3": ("nagare/store/",),
    # the PostgreSQL driver (and its SCRAM library): the store's PostgreSQL module alone
    "pg8000": ("nagare/store/postgres.py",),
    "scramp": (),
    "subprocess": ("nagare/executors/spawn.py",),
    "_posixsubprocess": ("nagare/executors/spawn.py",),
    "multiprocessing": (),
    "pty": (),
    "psutil": ("nagare/executors/procfs.py",),
    # the C library's sched_getcpu: where a new task process starts (see Spawner._hand_off);
    # its malloc_trim: a started server gives its freed start-up heap back (nagare/memory.py)
    "ctypes": ("nagare/executors/spawn.py", "nagare/memory.py"),
    # cli.py handles SIGTERM/SIGINT to stop the server; local.py names the signals of a kill.
    "signal": ("nagare/executors/spawn.py", "nagare/executors/local.py", "nagare/cli.py"),
    "docker": ("nagare/executors/docker.py",),
    # the one expression language: templates, `when:` conditions, webhook extraction
    "jq": ("nagare/engine/expressions.py",),
    "croniter": ("nagare/cron.py",),
    "http.server": ("nagare/http/server.py",),
    # the API client, and the `http` / `chat` step types' calls (executors/web.py)
    "http.client": ("nagare/client.py", "nagare/executors/web.py"),
    # nagare/cluster/remote.py: the remote worker's side of the cluster protocol (planned).
    "urllib.request": ("nagare/client.py", "nagare/cluster/remote.py"),
    "yaml": ("nagare/dagfile/", "nagare/config.py"),
    # the SMTP client of `type: mail` steps
    "smtplib": ("nagare/executors/mail.py",),
}
PRINT_OWNERS = (
    "nagare/cli.py",
    "nagare/cli_client.py",
    "nagare/cli_exec.py",
    "nagare/cli_accounts.py",
    "nagare/cli_db.py",
)
# Calls that start, replace or signal a process: only the spawner makes them.
PROCESS_CALLS = frozenset(
    {
        "os.kill",
        "os.killpg",
        "os.posix_spawn",
        "os.posix_spawnp",
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.popen",
        "os.execv",
        "os.execve",
        "os.execl",
        "os.execle",
        "os.execlp",
        "os.execlpe",
        "os.execvp",
        "os.execvpe",
        "os.spawnv",
        "os.spawnve",
        "os.spawnl",
        "os.spawnle",
        "os.spawnlp",
        "os.spawnlpe",
        "os.spawnvp",
        "os.spawnvpe",
        "os.pidfd_send_signal",
        "signal.pthread_kill",
    }
)
PROCESS_OWNER = "nagare/executors/spawn.py"
# Where threads are created (see ARCHITECTURE.md, "Threading model"): `app` and `worker_app`
# start every long-lived loop through `wiring.start_loop`; the HTTP server makes a thread per
# connection (socketserver); the Docker executor runs each blocking container attempt (and its
# stats stream and timers) in threads of its own; the mail executor runs each (blocking) SMTP
# conversation in a thread of its own.
# executors/web.py: an `http` / `chat` attempt's own thread (the standard client blocks)
THREAD_OWNERS = (
    "nagare/wiring.py",  # `start_loop`: the one place both roles start their loops
    "nagare/http/server.py",
    "nagare/executors/docker.py",
    "nagare/executors/web.py",
    "nagare/executors/mail.py",
)
THREAD_CALLS = frozenset(
    {
        "threading.Thread",
        "threading.Timer",
        "concurrent.futures.ThreadPoolExecutor",
        "_thread.start_new_thread",
    }
)

# Import-time construction of these is a module-level singleton or a side effect.
STDLIB_SERVICE_CALLS = frozenset(
    {
        "threading.Thread",
        "threading.Timer",
        "sqlite3.connect",
        "ThreadingHTTPServer",
        "http.server.ThreadingHTTPServer",
        "ThreadPoolExecutor",
        "concurrent.futures.ThreadPoolExecutor",
    }
)

# Known violations of the current code: (rule, module) -> reason. Each becomes a strict xfail,
# so fixing the code forces removing the entry.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------- reading the source


@dataclass(frozen=True)
class Module:
    name: str  # dotted: nagare.store.db
    path: str  # relative to the repository: nagare/store/db.py
    is_package: bool
    tree: ast.Module


@dataclass(frozen=True)
class Import:
    line: int
    names: tuple[str, ...]  # every dotted name the statement may bind: "a.b", "a.b.c"


def module_name(relative: Path) -> tuple[str, bool]:
    parts = list(relative.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def parse_module(name: str, path: str, is_package: bool, source: str) -> Module:
    return Module(name, path, is_package, ast.parse(source, filename=path))


@cache
def all_modules() -> tuple[Module, ...]:
    modules = []
    for file in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" in file.parts:
            continue
        relative = file.relative_to(ROOT)
        name, is_package = module_name(relative)
        modules.append(parse_module(name, relative.as_posix(), is_package, file.read_text()))
    return tuple(modules)


def known_names() -> set[str]:
    names = {m.name for m in all_modules()} | set(LAYERS)
    for name in list(names):  # namespace packages (a folder without __init__.py)
        parts = name.split(".")
        names |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return names


def layer_of(name: str) -> int | None:
    if name in LAYERS:
        return LAYERS[name]
    for package in LAYERED_PACKAGES:
        if name.startswith(package + "."):
            return LAYERS[package]
    return None


def _package_of(module: Module) -> str:
    return module.name if module.is_package else module.name.rpartition(".")[0]


def _resolve_from(module: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = _package_of(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _dynamic_import(node: ast.Call) -> str | None:
    """`importlib.import_module("x")` / `__import__("x")` with a literal name."""
    func = node.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    if named and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def imports_of(module: Module) -> Iterator[Import]:
    """Every import anywhere in the module (also inside functions: lazy imports count)."""
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            yield Import(node.lineno, tuple(alias.name for alias in node.names))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, node)
            names = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
            yield Import(node.lineno, (base, *names))
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)):
            yield Import(node.lineno, (name,))


def nagare_imports(module: Module) -> Iterator[tuple[int, str]]:
    """(line, target module) for every import of a nagare module.

    `from nagare.store import Store` targets `nagare.store`; `from nagare import cli` targets
    `nagare.cli`; `from nagare import __version__` targets `nagare`.
    """
    known = known_names()
    for imp in imports_of(module):
        base, *members = imp.names
        if not (base == "nagare" or base.startswith("nagare.")):
            continue
        targets = [m for m in members if m in known]
        if len(targets) < len(members) or not members:
            targets.append(base)
        for target in dict.fromkeys(targets):
            yield imp.line, target


def uses_technology(module: Module, technology: str) -> list[int]:
    lines = []
    for imp in imports_of(module):
        if any(n == technology or n.startswith(technology + ".") for n in imp.names):
            lines.append(imp.line)
    return lines


def owns(path: str, owners: tuple[str, ...]) -> bool:
    return any(path.startswith(o) if o.endswith("/") else path == o for o in owners)


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        prefix = dotted(node.value)
        return f"{prefix}.{node.attr}" if prefix else ""
    return ""


def print_calls(module: Module) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Call) and dotted(node.func) in ("print", "builtins.print")
    ]


def sleep_calls(module: Module) -> list[int]:
    lines = [
        node.lineno
        for node in ast.walk(module.tree)
        if isinstance(node, ast.Call) and dotted(node.func) == "time.sleep"
    ]
    for node in ast.walk(module.tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "time"
            and node.level == 0
            and any(alias.name == "sleep" for alias in node.names)
        ):
            lines.append(node.lineno)
    return sorted(lines)


VALUE_BASES = frozenset(
    {
        "Exception",
        "BaseException",
        "ValueError",
        "RuntimeError",
        "Enum",
        "StrEnum",
        "IntEnum",
        "Flag",
        "Protocol",
        "NamedTuple",
        "TypedDict",
    }
)


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if dotted(target) in ("dataclass", "dataclasses.dataclass"):
            return True
    return False


@cache
def service_classes() -> frozenset[str]:
    """Classes of L2+ modules that are not plain values (dataclasses, enums, errors, protocols).

    Building one of these at import time makes a module-level singleton.
    """
    classes: dict[str, tuple[ast.ClassDef, int]] = {}
    for module in all_modules():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = (node, layer_of(module.name) or 0)
    values = {name for name, (node, _) in classes.items() if _is_dataclass(node)}
    changed = True
    while changed:  # subclasses of value types are values too
        changed = False
        for name, (node, _) in classes.items():
            bases = {dotted(b).rpartition(".")[2] for b in node.bases}
            if name not in values and bases & (VALUE_BASES | values):
                values.add(name)
                changed = True
    return frozenset(n for n, (_, layer) in classes.items() if layer >= L2 and n not in values)


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def import_time_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Nodes evaluated when the module is imported: not function bodies, not the main guard."""
    stack: list[ast.AST] = [s for s in tree.body if not _is_main_guard(s)]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            stack.extend(node.decorator_list)
            stack.extend(node.args.defaults)
            stack.extend(d for d in node.args.kw_defaults if d is not None)
        elif isinstance(node, ast.Lambda):
            stack.extend(node.args.defaults)
        else:
            stack.extend(ast.iter_child_nodes(node))


def singleton_calls(module: Module, services: frozenset[str]) -> list[tuple[int, str]]:
    found = []
    for node in import_time_nodes(module.tree):
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if name.rpartition(".")[2] in services or name in STDLIB_SERVICE_CALLS:
                found.append((node.lineno, name))
    return sorted(found)


# ---------------------------------------------------------------- parametrization


def module_cases(rule: str, modules: list[Module] | None = None) -> list[object]:
    cases: list[object] = []
    for module in modules if modules is not None else all_modules():
        reason = KNOWN_VIOLATIONS.get((rule, module.name))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        cases.append(pytest.param(module, id=module.name, marks=marks))
    return cases


def in_layer(layer: int) -> list[Module]:
    return [m for m in all_modules() if layer_of(m.name) == layer]


# ---------------------------------------------------------------- the rules


def test_the_package_is_found() -> None:
    names = {m.name for m in all_modules()}
    assert {"nagare", "nagare.dagfile", "nagare.store", "nagare.app", "nagare.cli"} <= names


@pytest.mark.parametrize("module", module_cases("layer"))
def test_every_module_has_a_layer(module: Module) -> None:
    assert layer_of(module.name) is not None, (
        f"{module.path} ({module.name}) has no architecture layer. Add it to LAYERS in "
        "tests/test_architecture.py (L0 errors/clock/models ... L6 cli; see DESIGN.md §3 and "
        "ARCHITECTURE.md), and to the layer diagram in ARCHITECTURE.md. A module may import "
        "only modules of its own layer or lower."
    )


def test_the_layer_map_names_only_existing_modules() -> None:
    names = {m.name for m in all_modules()}
    stale = sorted(
        n for n in LAYERS if n not in names and not any(m.startswith(n + ".") for m in names)
    )
    assert stale == [], f"LAYERS names modules that no longer exist: {stale}; update the map"


@pytest.mark.parametrize("module", module_cases("imports-down"))
def test_imports_point_down(module: Module) -> None:
    own = layer_of(module.name)
    if own is None:
        pytest.skip("no layer yet (see test_every_module_has_a_layer)")
    upward = []
    for line, target in nagare_imports(module):
        target_layer = layer_of(target)
        if target_layer is None or target_layer > own:
            where = "no layer" if target_layer is None else f"L{target_layer}"
            upward.append(f"{module.path}:{line} imports {target} ({where})")
    assert upward == [], f"{module.name} is L{own}; it may import only L0..L{own}: {upward}"


@pytest.mark.parametrize("module", module_cases("l3-peers", in_layer(L3)))
def test_l3_services_do_not_import_each_other(module: Module) -> None:
    peers = [
        f"{module.path}:{line} imports {target}"
        for line, target in nagare_imports(module)
        if layer_of(target) == L3 and target != module.name
    ]
    assert peers == [], (
        f"L3 services meet in the store and in callbacks wired by app, not by imports: {peers}"
    )


@pytest.mark.parametrize(
    "module",
    module_cases(
        "executors-seam", [m for m in all_modules() if m.name.startswith("nagare.executors")]
    ),
)
def test_executors_never_touch_the_store_or_http(module: Module) -> None:
    touching = [
        f"{module.path}:{line} imports {target}"
        for line, target in nagare_imports(module)
        if target.startswith(("nagare.store", "nagare.http"))
    ]
    assert touching == [], (
        "executors get an Assignment and callbacks and return an Outcome (DESIGN.md §3): "
        f"{touching}"
    )


def _outside(module: Module, package: str) -> bool:
    return module.name != package and not module.name.startswith(package + ".")


@pytest.mark.parametrize(
    "module",
    module_cases("store-public", [m for m in all_modules() if _outside(m, STORE_PUBLIC)]),
)
def test_only_the_store_package_is_imported_never_its_modules(module: Module) -> None:
    internals = [
        f"{module.path}:{line} imports {target}"
        for line, target in nagare_imports(module)
        if target.startswith(STORE_PUBLIC + ".")
    ]
    assert internals == [], (
        "services see the store through `nagare.store` (and a Protocol of what they call); its "
        f"modules are its own: {internals}"
    )


def _not_executor_or_root(module: Module) -> bool:
    return _outside(module, "nagare.executors") and module.name not in COMPOSITION_ROOTS


@pytest.mark.parametrize(
    "module",
    module_cases("executor-seam", [m for m in all_modules() if _not_executor_or_root(m)]),
)
def test_only_the_executor_seam_is_imported_never_a_concrete_executor(module: Module) -> None:
    concrete = [
        f"{module.path}:{line} imports {target}"
        for line, target in nagare_imports(module)
        if target.startswith("nagare.executors.") and target not in EXECUTOR_SEAM
    ]
    assert concrete == [], (
        "the dispatcher and the worker know executors only through the seam (start -> handle, "
        f"listener callbacks); {sorted(COMPOSITION_ROOTS)} build the concrete ones: {concrete}"
    )


def calls_to(module: Module, names: frozenset[str]) -> list[tuple[int, str]]:
    """(line, full name) of every call of one of `names`, however it was imported."""
    aliases: dict[str, str] = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            head, _, rest = name.partition(".")
            full = aliases.get(head, head) + ("." + rest if rest else "")
            if full in names:
                found.append((node.lineno, full))
    return found


@pytest.mark.parametrize("module", module_cases("process-calls"))
def test_only_the_spawner_starts_or_signals_processes(module: Module) -> None:
    if module.path == PROCESS_OWNER:
        return
    calls = calls_to(module, PROCESS_CALLS)
    assert calls == [], (
        f"{module.path} starts or signals processes {calls}; only {PROCESS_OWNER} does (an "
        "executor asks it, and a kill is posted to the thread that owns the process)"
    )


@pytest.mark.parametrize("module", module_cases("threads"))
def test_threads_are_created_only_where_the_threading_model_says(module: Module) -> None:
    if owns(module.path, THREAD_OWNERS):
        return
    calls = calls_to(module, THREAD_CALLS)
    assert calls == [], (
        f"{module.path} creates threads {calls}: a long-lived loop is an object with "
        "run(stop_event) that nagare/app.py or nagare/worker_app.py starts (ARCHITECTURE.md, "
        "Threading model)"
    )


def tech_cases() -> list[object]:
    cases: list[object] = []
    for technology in TECH_OWNERS:
        reason = KNOWN_VIOLATIONS.get(("tech", technology))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        cases.append(pytest.param(technology, id=technology, marks=marks))
    return cases


@pytest.mark.parametrize("technology", tech_cases())
def test_each_technology_has_one_owner(technology: str) -> None:
    owners = TECH_OWNERS[technology]
    offenders = [
        f"{module.path}:{line}"
        for module in all_modules()
        if not owns(module.path, owners)
        for line in uses_technology(module, technology)
    ]
    assert offenders == [], f"only {', '.join(owners)} may import {technology}: {offenders}"


@pytest.mark.parametrize("module", module_cases("print"))
def test_only_the_command_line_prints(module: Module) -> None:
    if owns(module.path, PRINT_OWNERS):
        return
    lines = print_calls(module)
    assert lines == [], (
        f"{module.path} calls print() on lines {lines}; only {', '.join(PRINT_OWNERS)} print "
        "(use logging elsewhere)"
    )


@pytest.mark.parametrize("module", module_cases("sleep"))
def test_no_time_sleep(module: Module) -> None:
    lines = sleep_calls(module)
    assert lines == [], (
        f"{module.path} uses time.sleep on lines {lines}; wait on an Event or Condition with a "
        "timeout so that stop and wake-ups are immediate"
    )


@pytest.mark.parametrize("module", module_cases("singleton"))
def test_no_service_is_built_at_import_time(module: Module) -> None:
    calls = singleton_calls(module, service_classes())
    assert calls == [], (
        f"{module.path} builds services at import time {calls}; build the object graph in "
        "nagare/app.py and pass objects in"
    )


def test_service_classes_are_found() -> None:
    services = service_classes()
    assert {"Store", "Scheduler", "WorkerPools", "RunService", "App", "DagFolder"} <= services
    assert not {"DagDef", "TaskStatus", "NagareError", "Assignment", "DagState"} & services


# ---------------------------------------------------------------- the checkers themselves


def fake(name: str, source: str, is_package: bool = False) -> Module:
    path = name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
    return parse_module(name, path, is_package, source)


def test_checker_resolves_absolute_relative_and_lazy_imports() -> None:
    module = fake(
        "nagare.store.db",
        "from nagare import __version__, cli\n"
        "from . import schema\n"
        "from .rows import task_from_row\n"
        "from .. import models\n"
        "import nagare.http.server\n"
        "def later():\n"
        "    from nagare.app import App\n"
        "    importlib.import_module('nagare.runs')\n",
    )
    assert list(nagare_imports(module)) == [
        (1, "nagare.cli"),
        (1, "nagare"),
        (2, "nagare.store.schema"),
        (3, "nagare.store.rows"),
        (4, "nagare.models"),
        (5, "nagare.http.server"),
        (7, "nagare.app"),
        (8, "nagare.runs"),
    ]
    package = fake("nagare.store", "from .db import Database\n", is_package=True)
    assert list(nagare_imports(package)) == [(1, "nagare.store.db")]


def test_checker_layers() -> None:
    assert layer_of("nagare") == L0
    assert layer_of("nagare.store.schema") == L2
    assert layer_of("nagare.executors.docker") == L2
    assert layer_of("nagare.engine.next_steps") == L1
    assert layer_of("nagare.http.api") == L4
    assert layer_of("nagare.webhooks") == L3
    assert layer_of("nagare.brand_new") is None
    assert layer_of("nagare.errors_extra") is None  # prefixes of plain modules do not count


@pytest.mark.parametrize(
    ("source", "technology", "found"),
    [
        ("import sqlite3\n", "sqlite3", True),
        ("from sqlite3 import connect\n", "sqlite3", True),
        ("import yaml.nodes\n", "yaml", True),
        ("from http.server import BaseHTTPRequestHandler\n", "http.server", True),
        ("from http import server\n", "http.server", True),
        ("from http import HTTPStatus\n", "http.server", False),
        ("import urllib.request\n", "urllib.request", True),
        ("from urllib import request\n", "urllib.request", True),
        ("from urllib.parse import quote\n", "urllib.request", False),
        ("def f():\n    import subprocess\n", "subprocess", True),
        ("__import__('psutil')\n", "psutil", True),
        ("import signals_helper\n", "signal", False),
    ],
)
def test_checker_finds_technologies(source: str, technology: str, found: bool) -> None:
    assert bool(uses_technology(fake("nagare.x", source), technology)) is found


def test_checker_finds_print_and_sleep() -> None:
    module = fake(
        "nagare.x",
        "import time\nfrom time import sleep\nprint('a')\ndef f():\n    time.sleep(1)\n",
    )
    assert print_calls(module) == [3]
    assert sleep_calls(module) == [2, 5]
    assert sleep_calls(fake("nagare.y", "import time\ntime.monotonic()\n")) == []


def test_checker_finds_module_level_services() -> None:
    services = frozenset({"Store", "App"})
    source = (
        "import threading\n"
        "STORE = Store('x.db')\n"
        "class Holder:\n"
        "    app = App(config)\n"
        "def make(store=Store('y.db')):\n"
        "    return Store('z.db')\n"
        "WORKER = threading.Thread(target=print)\n"
        "PATTERN = re.compile('x')\n"
        "if __name__ == '__main__':\n"
        "    App(config).run()\n"
    )
    assert singleton_calls(fake("nagare.x", source), services) == [
        (2, "Store"),
        (4, "App"),
        (5, "Store"),
        (7, "threading.Thread"),
    ]


def test_checker_finds_process_and_thread_calls() -> None:
    module = fake(
        "nagare.x",
        "import os, threading\nfrom os import killpg as kp\nos.kill(1, 9)\nkp(2, 9)\n"
        "os.waitpid(3, 0)\nthreading.Thread(target=f).start()\n",
    )
    assert calls_to(module, PROCESS_CALLS) == [(3, "os.kill"), (4, "os.killpg")]
    assert calls_to(module, THREAD_CALLS) == [(6, "threading.Thread")]
