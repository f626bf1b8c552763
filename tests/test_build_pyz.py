"""Tests of build_pyz.py and of the nagare.pyz bootstrap it generates.

The fast tests run the bootstrap on small synthetic archives written with build_pyz's own
functions (no pip). The slow ones build a real archive once per session, with a probe module as
the entry point, so they do not depend on nagare.cli.
"""

from __future__ import annotations

import dis
import importlib.util
import json
import marshal
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import CodeType, ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look the module up there
    spec.loader.exec_module(module)
    return module


build_pyz = _load_by_path("build_pyz", ROOT / "build_pyz.py")

PROBE_ENTRY = "nagare_probe:main"
PROBE_SOURCE = """\
import json
import sys


def main():
    names = sys.argv[1:] or ["fakenative", "fakepure"]
    modules = {name: __import__(name) for name in names}
    print(json.dumps({name: module.__file__ for name, module in modules.items()}))
    return 0
"""

REAL_PROBE_SOURCE = """\
import json
import sys


def main():
    import os

    import certifi
    import croniter
    import docker
    import jq
    import pg8000.native
    import psutil
    import requests
    import yaml

    checks = {
        "yaml": yaml.safe_load("a: [1, 2]") == {"a": [1, 2]},
        "jq": jq.compile(".a + 1").input_value({"a": 41}).first() == 42,
        "psutil": psutil.Process().pid > 0,
        "croniter": croniter.croniter("*/5 * * * *", 0).get_next(float) == 300.0,
        "docker": bool(docker.__version__),
        "requests": bool(requests.__version__),
        "certifi": os.path.isfile(certifi.where()),
        "pg8000": callable(pg8000.native.Connection),  # reads its own version from the zip
    }
    files = {name: sys.modules[name].__file__ for name in checks}
    print(json.dumps({"checks": checks, "files": files}))
    return 0 if all(checks.values()) else 1
"""


# --- helpers -------------------------------------------------------------------------------------


def run_archive(
    archive: Path, cache: Path, *args: str, extra_env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NAGARE_CACHE_DIR": str(cache), **(extra_env or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run(
        [sys.executable, str(archive), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def build_id_of(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read("_vendor/BUILD_INFO.json"))["build_id"]


def fake_native(count: int = 1) -> dict[str, bytes]:
    """A 'native' package (any file works: the bootstrap only extracts) with filler files."""
    files = {"_vendor/native/fakenative/__init__.py": b"VALUE = 'native'\n"}
    for index in range(count):
        files[f"_vendor/native/fakenative/data/blob{index:04d}.bin"] = os.urandom(64)
    return files


def make_archive(
    path: Path,
    extra: Mapping[str, bytes] | None = None,
    *,
    python: tuple[int, int] | None = None,
    native: bool = True,
    filler: int = 1,
) -> Path:
    """A synthetic nagare.pyz: probe entry, one pure and (optionally) one native package."""
    content = {
        "nagare_probe.py": PROBE_SOURCE.encode(),
        "_vendor/pure/fakepure.py": b"VALUE = 'pure'\n",
        **(fake_native(filler) if native else {}),
        **(extra or {}),
    }
    dists = [
        build_pyz.Distribution(
            "fakenative", "1.0", "fakenative-1.0.dist-info", frozenset({"fakenative"}), native
        )
    ]
    entries = build_pyz.assemble(content, dists, entry=PROBE_ENTRY, python=python)
    build_pyz.write_archive(path, entries)
    return path


def native_dir(cache: Path, archive: Path) -> Path:
    return cache / "nagare" / build_id_of(archive)


# --- fast tests: build_pyz's pieces --------------------------------------------------------------


def test_reads_pinned_dependencies_from_pyproject() -> None:
    deps = build_pyz.read_dependencies()
    names = {dep.split("==")[0].lower() for dep in deps}
    assert {"pyyaml", "croniter", "jq", "docker", "psutil"} <= names
    assert all("==" in dep for dep in deps)


def test_bootstrap_template_compiles_and_names_the_entry_point() -> None:
    source = build_pyz.render_bootstrap()
    compile(source, "__main__.py", "exec")
    assert "'nagare.cli'" in source and "'main'" in source
    with pytest.raises(SystemExit):
        build_pyz.render_bootstrap("no_function_given")


def test_archive_writing_is_deterministic(tmp_path: Path) -> None:
    content = {"b/x.py": b"x = 1\n", "a.py": b"a = 2\n"}
    first = build_pyz.assemble(content, [], entry=PROBE_ENTRY)
    build_pyz.write_archive(tmp_path / "one.pyz", first)
    build_pyz.write_archive(tmp_path / "two.pyz", build_pyz.assemble(content, [], PROBE_ENTRY))
    assert (tmp_path / "one.pyz").read_bytes() == (tmp_path / "two.pyz").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.pyz") as zf:
        infos = zf.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert "b/" in names  # folder entries are written too
    assert (tmp_path / "one.pyz").read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(tmp_path / "one.pyz", os.X_OK)


def test_build_id_follows_the_content() -> None:
    one = build_pyz.compute_build_id({"a": b"1"}, (3, 11))
    assert len(one) == 16 and int(one, 16) >= 0
    assert one == build_pyz.compute_build_id({"a": b"1"}, (3, 11))
    assert one != build_pyz.compute_build_id({"a": b"2"}, (3, 11))
    assert one != build_pyz.compute_build_id({"a": b"1"}, (3, 12))


def test_split_puts_distributions_with_compiled_code_under_native() -> None:
    files = {
        "pkg/__init__.py": b"",
        "pkg/_speed.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
        "_pkg_shim/__init__.py": b"",
        "pkg-1.0.dist-info/METADATA": b"Name: pkg\nVersion: 1.0\n\n",
        "pkg-1.0.dist-info/RECORD": (
            b"pkg/__init__.py,,\npkg/_speed.cpython-311-x86_64-linux-gnu.so,,\n"
            b"_pkg_shim/__init__.py,,\npkg-1.0.dist-info/RECORD,,\n../../bin/pkg,,\n"
        ),
        "pure/__init__.py": b"",
        "pure-2.0.dist-info/METADATA": b"Name: pure\nVersion: 2.0\n\n",
        "pure-2.0.dist-info/RECORD": b"pure/__init__.py,,\n",
        "loose.abi3.so": b"\x7fELF",
    }
    dists = build_pyz.find_distributions(files)
    assert [(d.name, d.version, d.native) for d in dists] == [
        ("pkg", "1.0", True),
        ("pure", "2.0", False),
    ]
    entries = build_pyz.split_vendored(build_pyz.Vendored(files, dists))
    native = {name for name in entries if name.startswith("_vendor/native/")}
    assert native == {
        "_vendor/native/pkg/__init__.py",
        "_vendor/native/pkg/_speed.cpython-311-x86_64-linux-gnu.so",
        "_vendor/native/_pkg_shim/__init__.py",
        "_vendor/native/pkg-1.0.dist-info/METADATA",
        "_vendor/native/pkg-1.0.dist-info/RECORD",
        "_vendor/native/loose.abi3.so",
    }
    assert "_vendor/pure/pure/__init__.py" in entries
    record = build_pyz.sanitize_record(files["pkg-1.0.dist-info/RECORD"].decode(), files)
    assert "bin/pkg" not in record and "pkg/__init__.py" in record


def test_dropped_files() -> None:
    dropped = build_pyz.is_dropped
    path = build_pyz.PurePosixPath
    assert dropped(path("pkg/__pycache__/x.cpython-311.pyc"), vendored=False)
    assert dropped(path("pkg/x.pyc"), vendored=True)
    assert dropped(path("bin/normalizer"), vendored=True)
    assert dropped(path("certifi/tests/test_x.py"), vendored=True)
    assert not dropped(path("pkg/tests.py"), vendored=True)
    assert not dropped(path("bin/app.js"), vendored=False)


# --- fast tests: the bootstrap on synthetic archives ---------------------------------------------


def test_native_code_is_extracted_once_and_pure_code_imported_from_the_zip(
    tmp_path: Path,
) -> None:
    archive = make_archive(tmp_path / "app.pyz")
    cache = tmp_path / "cache"
    first = run_archive(archive, cache)
    assert first.returncode == 0, first.stderr
    files = json.loads(first.stdout)
    final = native_dir(cache, archive)
    assert Path(files["fakenative"]).parent == final / "fakenative"
    assert files["fakepure"].startswith(str(archive / "_vendor" / "pure"))

    marker = final / "fakenative" / "data" / "blob0000.bin"
    before = (final.stat().st_ino, final.stat().st_mtime_ns, marker.stat().st_mtime_ns)
    second = run_archive(archive, cache)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == files
    after = (final.stat().st_ino, final.stat().st_mtime_ns, marker.stat().st_mtime_ns)
    assert after == before
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name, final.name + ".lock"]


def test_concurrent_first_runs_all_succeed(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "app.pyz", filler=400)
    cache = tmp_path / "cache"
    env = {**os.environ, "NAGARE_CACHE_DIR": str(cache)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(archive)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(6)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, [err for _, err in outputs]
    final = native_dir(cache, archive)
    assert {json.loads(out)["fakenative"] for out, _ in outputs} == {
        str(final / "fakenative" / "__init__.py")
    }
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name, final.name + ".lock"]
    assert len(list((final / "fakenative" / "data").iterdir())) == 400


def test_stale_temporary_folders_are_cleaned(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "app.pyz")
    cache = tmp_path / "cache"
    stale = cache / "nagare" / f"{build_id_of(archive)}.tmp-999999"
    (stale / "half").mkdir(parents=True)
    result = run_archive(archive, cache)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert native_dir(cache, archive).is_dir()


def test_unwritable_cache_falls_back_to_the_temp_folder(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "app.pyz")
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = run_archive(archive, not_a_dir, extra_env={"TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    used = Path(json.loads(result.stdout)["fakenative"])
    assert used.is_relative_to(temp / f"nagare-cache-{os.getuid()}" / "nagare")


def test_pure_only_archive_needs_no_cache(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "app.pyz", native=False)
    result = run_archive(archive, tmp_path / "cache", "fakepure")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()


def test_python_version_guard(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "app.pyz", python=(3, 99))
    result = run_archive(archive, tmp_path / "cache")
    assert result.returncode == 2
    running = "{}.{}".format(*sys.version_info[:2])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "3.99" in lines[0] and running in lines[0]
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "evil", ["_vendor/native/../../escaped.txt", "_vendor/native/fakenative/../../../escaped.txt"]
)
def test_zip_slip_is_refused(tmp_path: Path, evil: str) -> None:
    archive = make_archive(tmp_path / "app.pyz", {evil: b"gotcha"})
    cache = tmp_path / "cache"
    result = run_archive(archive, cache)
    assert result.returncode == 2
    assert "unsafe path" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not native_dir(cache, archive).exists()


def test_resources_from_checkout_and_from_archive(tmp_path: Path) -> None:
    # The checkout's copy, loaded alone (the rest of the nagare package is not needed).
    resources = _load_by_path("_nagare_resources_under_test", ROOT / "nagare" / "resources.py")
    root = resources.asset_root("web_static")
    assert isinstance(root, Path) and root == ROOT / "web_static"
    assert resources.archive_path() is None
    with pytest.raises(ValueError):
        resources.asset_root("../etc")

    extra = {
        "nagare/__init__.py": b"",
        "nagare/resources.py": (ROOT / "nagare" / "resources.py").read_bytes(),
        "web_static/": b"",
        "web_static/index.html": b"<h1>nagare</h1>",
        "web_static/js/app.js": b"console.log(1)",
    }
    archive = make_archive(tmp_path / "app.pyz", extra, native=False)
    code = (
        "import sys, zipfile; sys.path.insert(0, sys.argv[1])\n"
        "from nagare.resources import archive_path, asset_root\n"
        "root = asset_root('web_static')\n"
        "assert isinstance(root, zipfile.Path), type(root)\n"
        "assert asset_root('web_static') is not None and str(archive_path()) == sys.argv[1]\n"
        "print(sorted(p.name for p in root.iterdir()), root.joinpath('index.html').read_text(),"
        " root.joinpath('js', 'app.js').read_bytes())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(archive)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['index.html', 'js'] <h1>nagare</h1> b'console.log(1)'"


# --- slow tests: a real build --------------------------------------------------------------------


@pytest.fixture(scope="session")
def probe_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "nagare_probe.py"
    path.write_text(REAL_PROBE_SOURCE)
    return path


def build_args(output: Path, probe: Path, *extra: str) -> list[str]:
    return ["--output", str(output), "--entry", PROBE_ENTRY, "--add-module", str(probe), *extra]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, probe_module: Path) -> Iterator[Path]:
    """A real archive (online build, filling build/wheels) with the probe as entry point."""
    output = tmp_path_factory.mktemp("build") / "nagare.pyz"
    assert build_pyz.main(build_args(output, probe_module)) == 0
    yield output


@pytest.mark.slow
def test_archive_layout(built: Path) -> None:
    assert built.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(built, os.X_OK)
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        info = json.loads(zf.read("_vendor/BUILD_INFO.json"))
        build_id = zf.read("_vendor/BUILD_ID").decode().strip()
    assert names == sorted(names)
    assert "__main__.py" in names and "nagare/__init__.py" in names
    assert "web_static/" in names
    static = ROOT / "web_static"
    for path in static.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert f"web_static/{path.relative_to(static).as_posix()}" in names
    # __pycache__ only under the native packages (extracted, read by the file loader)
    assert not [n for n in names if "__pycache__" in n and not n.startswith("_vendor/native/")]
    assert not [
        n for n in names if n.startswith("nagare/") and not n.endswith((".py", ".pyc", "/"))
    ]
    sources = {n for n in names if n.startswith("nagare/") and n.endswith(".py")}
    assert {n + "c" for n in sources} <= set(names)  # the package's bytecode beside its sources
    assert not [
        n
        for n in names
        if n.endswith(".pyc") and not n.startswith(("_vendor/pure/", "nagare/", "_vendor/native/"))
    ]
    assert not [n for n in names if n.startswith(("_vendor/pure/bin/", "_vendor/native/bin/"))]
    assert not [n for n in names if "/tests/" in n.removeprefix("_vendor/")]

    assert build_id == info["build_id"] and len(build_id) == 16
    assert info["python"] == list(sys.version_info[:2])
    assert {"jq", "psutil", "PyYAML"} <= set(info["native"])
    assert {"docker", "croniter", "requests", "pg8000", "scramp", "asn1crypto"} <= set(
        info["dists"]
    ) - set(info["native"])

    pure = [n for n in names if n.startswith("_vendor/pure/")]
    native = [n for n in names if n.startswith("_vendor/native/")]
    assert not [n for n in pure if n.endswith((".so", ".pyd"))]
    assert any(n.startswith("_vendor/native/jq") and n.endswith(".so") for n in native)
    assert any(n.startswith("_vendor/native/psutil/") and n.endswith(".so") for n in native)
    assert any(n.startswith("_vendor/native/jq-") and ".dist-info/" in n for n in native)
    for package in ("docker", "requests", "croniter", "dateutil", "urllib3", "pg8000", "scramp"):
        assert f"_vendor/pure/{package}/__init__.py" in pure
        assert f"_vendor/pure/{package}/__init__.pyc" in pure


@pytest.mark.slow
def test_build_is_deterministic_and_works_offline(
    built: Path, probe_module: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.pyz"
    assert build_pyz.main(build_args(again, probe_module, "--offline")) == 0
    assert again.read_bytes() == built.read_bytes()


@pytest.mark.slow
def test_vendored_dependencies_import_from_the_archive(built: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_archive(built, cache)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert all(report["checks"].values()), report
    final = native_dir(cache, built)
    for name in ("jq", "psutil", "yaml"):
        assert Path(report["files"][name]).is_relative_to(final), report["files"]
    for name in ("docker", "croniter", "requests", "pg8000"):
        assert report["files"][name].startswith(f"{built}/_vendor/pure/{name}/")

    inode = final.stat().st_ino
    second = subprocess.run(  # ./nagare.pyz through the shebang, from another folder
        [str(built)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "NAGARE_CACHE_DIR": str(cache)},
        timeout=120,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == report
    assert final.stat().st_ino == inode


# --- bytecode in the archive ---------------------------------------------------------------------

VALUE_PROBE_ENTRY = "value_probe:main"
VALUE_PROBE_SOURCE = """\
import json
import sys


def main():
    print(json.dumps({name: __import__(name).VALUE for name in sys.argv[1:]}))
    return 0
"""
WRONG_MAGIC = b"\x00\x00\r\n"  # the form of a magic number, of no Python


def pyc_bytes(source: str, tmp_path: Path, *, magic: bytes | None = None) -> bytes:
    """An unchecked-hash .pyc of `source` (as build_pyz writes them), with `magic` if given."""
    import py_compile

    src, out = tmp_path / "m.py", tmp_path / "m.pyc"
    src.write_text(source)
    py_compile.compile(
        str(src),
        cfile=str(out),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    data = out.read_bytes()
    return (magic + data[4:]) if magic is not None else data


def bytecode_archive(
    path: Path, tmp_path: Path, *, magic: bytes | None = None, python: tuple[int, int] | None = None
) -> Path:
    """A pure and a native package whose sources say VALUE = 'source' and whose shipped
    bytecode (beside the source for zipimport, in __pycache__ for the native one) says
    'bytecode'."""
    pyc = pyc_bytes("VALUE = 'bytecode'\n", tmp_path, magic=magic)
    tag = sys.implementation.cache_tag
    content = {
        "value_probe.py": VALUE_PROBE_SOURCE.encode(),
        "_vendor/pure/fakepure.py": b"VALUE = 'source'\n",
        "_vendor/pure/fakepure.pyc": pyc,
        "_vendor/native/fakenative/__init__.py": b"VALUE = 'source'\n",
        f"_vendor/native/fakenative/__pycache__/__init__.{tag}.pyc": pyc,
    }
    dists = [
        build_pyz.Distribution(
            "fakenative", "1.0", "fakenative-1.0.dist-info", frozenset({"fakenative"}), True
        )
    ]
    entries = build_pyz.assemble(content, dists, entry=VALUE_PROBE_ENTRY, python=python)
    build_pyz.write_archive(path, entries)
    return path


@pytest.mark.parametrize("dont_write", [False, True], ids=["default", "PYTHONDONTWRITEBYTECODE"])
def test_shipped_bytecode_is_what_runs(tmp_path: Path, dont_write: bool) -> None:
    archive = bytecode_archive(tmp_path / "app.pyz", tmp_path)
    env = {"PYTHONDONTWRITEBYTECODE": "1"} if dont_write else {}
    result = run_archive(archive, tmp_path / "cache", "fakepure", "fakenative", extra_env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"fakepure": "bytecode", "fakenative": "bytecode"}


@pytest.mark.parametrize("dont_write", [False, True], ids=["default", "PYTHONDONTWRITEBYTECODE"])
def test_bytecode_of_another_python_falls_back_to_the_source(
    tmp_path: Path, dont_write: bool
) -> None:
    """A magic number this Python does not know (another minor version wrote it): zipimport
    and the file loader both ignore the .pyc and compile the source, never run it."""
    archive = bytecode_archive(tmp_path / "app.pyz", tmp_path, magic=WRONG_MAGIC)
    env = {"PYTHONDONTWRITEBYTECODE": "1"} if dont_write else {}
    cache = tmp_path / "cache"
    result = run_archive(archive, cache, "fakepure", "fakenative", extra_env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"fakepure": "source", "fakenative": "source"}
    again = run_archive(archive, cache, "fakepure", "fakenative", extra_env=env)
    assert json.loads(again.stdout) == {"fakepure": "source", "fakenative": "source"}


def _other_python() -> str | None:
    """An interpreter of another minor version (pyenv's, or python3.N on PATH), if any."""
    import shutil

    here = sys.version_info[:2]
    candidates = [f"python3.{minor}" for minor in (13, 12, 10) if (3, minor) != here]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for folder in sorted(pyenv.glob("3.*"), reverse=True) if pyenv.is_dir() else []:
        candidates.append(str(folder / "bin" / "python3"))
    for candidate in candidates:
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if not found:
            continue
        version = subprocess.run(
            [found, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if len(version) == 2 and tuple(map(int, version)) != here and int(version[1]) >= 8:
            return found
    return None


def test_another_python_minor_runs_the_sources(tmp_path: Path) -> None:
    """The same archive (its guard set to the other Python) under a real other interpreter:
    this Python's bytecode is skipped, the sources run."""
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version here")
    version = subprocess.run(
        [other, "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    python = (int(version[0]), int(version[1]))
    archive = bytecode_archive(tmp_path / "app.pyz", tmp_path, python=python)
    env = {**os.environ, "NAGARE_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [other, str(archive), "fakepure", "fakenative"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"fakepure": "source", "fakenative": "source"}


def test_native_bytecode_goes_to_pycache_under_the_builders_tag(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "nat").mkdir(parents=True)
    (site / "nat" / "__init__.py").write_text("VALUE = 1\n")
    (site / "nat" / "fast.so").write_bytes(b"\0")
    (site / "pur.py").write_text("VALUE = 2\n")
    vendored = build_pyz.Vendored(
        {"nat/__init__.py": b"VALUE = 1\n", "nat/fast.so": b"\0", "pur.py": b"VALUE = 2\n"}, []
    )
    native = build_pyz.compile_native(vendored, site, tmp_path / "out")
    tag = sys.implementation.cache_tag
    assert list(native) == [f"nat/__pycache__/__init__.{tag}.pyc"]
    pure = build_pyz.compile_pure(vendored, site, tmp_path / "out-pure")
    assert list(pure) == ["pur.pyc"]
    for data in (*native.values(), *pure.values()):
        assert data[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(data[4:8], "little") == 0b01  # hash-based, unchecked


def _code(pyc: bytes) -> tuple[CodeType, CodeType]:
    """The module's code and its first function's."""
    module = marshal.loads(pyc[16:])
    return module, next(c for c in module.co_consts if isinstance(c, CodeType))


def _asserts(code: CodeType) -> bool:
    return "LOAD_ASSERTION_ERROR" in {i.opname for i in dis.get_instructions(code)}


def test_bytecode_is_lean_no_column_positions_and_no_docstrings_in_nagare(tmp_path: Path) -> None:
    """An idle server holds the code of every module it imported: no column table anywhere;
    nagare's modules without docstrings and asserts, vendored ones with theirs (a library may
    catch AssertionError)."""
    package = build_pyz.compile_package({"nagare/digest.py": b""}, tmp_path / "pkg")
    module, function = _code(package["nagare/digest.pyc"])
    texts = [c for c in (*module.co_consts, *function.co_consts) if isinstance(c, str)]
    assert not [t for t in texts if "SHA-256" in t]  # both docstrings say SHA-256
    assert {column for *_, column, _ in function.co_positions()} == {None}
    site = tmp_path / "site"
    site.mkdir()
    source = '"""Module doc."""\n\ndef f(x):\n    """Function doc."""\n    assert x\n    return x\n'
    (site / "lib.py").write_text(source)
    vendored = build_pyz.Vendored({"lib.py": source.encode()}, [])
    module, function = _code(build_pyz.compile_pure(vendored, site, tmp_path / "out")["lib.pyc"])
    assert "Module doc." in module.co_consts and "Function doc." in function.co_consts
    assert _asserts(function)
    assert {column for *_, column, _ in function.co_positions()} == {None}


@pytest.mark.slow
def test_archive_carries_bytecode_for_the_building_python(built: Path) -> None:
    tag = sys.implementation.cache_tag
    with zipfile.ZipFile(built) as zf:
        names = zf.namelist()
        pycs = {n: zf.read(n) for n in names if n.endswith(".pyc")}
    assert "nagare/cli.pyc" in pycs and "_vendor/pure/croniter/croniter.pyc" in pycs
    assert f"_vendor/native/yaml/__pycache__/loader.{tag}.pyc" in pycs
    native_sources = [n for n in names if n.startswith("_vendor/native/") and n.endswith(".py")]
    for source in native_sources:
        folder, _, module = source.rpartition("/")
        assert f"{folder}/__pycache__/{module[:-3]}.{tag}.pyc" in pycs or source.endswith(
            "__main__.py"
        ), source
    assert not [n for n in pycs if "__pycache__" in n and f".{tag}.pyc" not in n]
    for name, data in pycs.items():
        assert data[:4] == importlib.util.MAGIC_NUMBER, name
        assert int.from_bytes(data[4:8], "little") == 0b01, name  # unchecked hash: no mtime


@pytest.mark.slow
def test_archive_runs_from_a_fresh_cache_without_writing_bytecode(
    built: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "NAGARE_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-v", str(built)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(json.loads(result.stdout)["checks"].values())
    final = native_dir(cache, built)
    # the file loader used the shipped bytecode of the extracted packages
    assert f"{final}/yaml/__pycache__/loader.{sys.implementation.cache_tag}.pyc matches" in (
        result.stderr
    )
    assert "has bad magic" not in result.stderr
    with zipfile.ZipFile(built) as zf:
        shipped = {n.removeprefix("_vendor/native/") for n in zf.namelist()}
    written = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert written <= shipped  # nothing compiled and written at run time


@pytest.mark.slow
def test_another_python_minor_is_refused_with_a_clear_message(built: Path, tmp_path: Path) -> None:
    """The native packages are built for one Python: another minor version gets the guard's
    one-line message, not an import error."""
    other = _other_python()
    if other is None:
        pytest.skip("no Python of another minor version here")
    env = {**os.environ, "NAGARE_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [other, str(built)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 2
    assert "was built for Python {}.{}".format(*sys.version_info[:2]) in result.stderr
    assert "Traceback" not in result.stderr
