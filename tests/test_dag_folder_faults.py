"""One bad file in the DAGs folder gets errors of its own and nothing else: whatever it is (a
FIFO, a socket, a symlink loop, 50 MB, binary, 100,000 `[`, an alias bomb), the other files
load, the scan never blocks, the server starts, and a fault that stays the same is logged once.
Real files, FIFOs, sockets and a real server process; no mocks."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import http, pythonpath_env, wait_for

from nagare.dag_folder import MAX_ERROR_CHARS, DagFolder
from nagare.dagfile import MAX_DEPTH, MAX_NODES, DagError, load_dag_file, parse_dag
from nagare.models import DagDef
from nagare.wiring import Supervisor

GOOD = "id: good\ntasks:\n  - id: a\n    command: echo hi\n"
DEEP = "[" * 100_000
LAUGHS = "id: bomb\n" + "".join(
    f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}" if i else "lol"] * 9) + "]\n" for i in range(10)
)


def folder_with(tmp_path: Path, **files: str) -> DagFolder:
    dags = tmp_path / "dags"
    dags.mkdir(exist_ok=True)
    (dags / "good.yaml").write_text(GOOD)
    for name, text in files.items():
        (dags / f"{name}.yaml").write_text(text)
    return DagFolder(str(dags))


def only_error(folder: DagFolder, name: str) -> str:
    errors = folder.snapshot.errors[name]
    assert len(errors) == 1, errors
    return errors[0]


def assert_good_loaded(folder: DagFolder) -> None:
    assert "good" in folder.snapshot.dags, folder.snapshot.errors
    assert folder.snapshot.files["good"] == "good.yaml"


# ---------------------------------------------------------------- what the YAML holds


def test_deep_nesting_is_that_files_error_and_the_rest_loads(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, deep=DEEP)
    folder.scan()
    assert_good_loaded(folder)
    error = only_error(folder, "deep.yaml")
    assert f"nesting deeper than {MAX_DEPTH} levels" in error
    assert error.startswith("deep.yaml:1: invalid YAML")


def test_deep_nesting_in_a_thread_with_a_small_stack(tmp_path: Path) -> None:
    """A real depth limit, not Python's recursion limit: also fine on a 256 KiB thread stack."""
    results: list[tuple[DagDef | None, list[DagError]]] = []
    previous = threading.stack_size(256 * 1024)
    try:
        thread = threading.Thread(target=lambda: results.append(parse_dag(DEEP + "]" * 100_000)))
        thread.start()
        thread.join(30)
    finally:
        threading.stack_size(previous)
    assert len(results) == 1
    dag, errors = results[0]
    assert dag is None and "nesting deeper than" in errors[0].message


def test_nesting_just_under_the_limit_is_read(tmp_path: Path) -> None:
    text = GOOD + "env:\n  X: " + "[" * 10 + "]" * 10 + "\n"
    dag, errors = parse_dag(text)
    assert dag is None and "expected a string, found a list" in errors[0].message


def test_billion_laughs_is_refused_fast() -> None:
    started = time.monotonic()
    for text in (
        LAUGHS,
        LAUGHS + "tasks: [{id: a, command: x}]\n? *a9\n: 1\n",  # as a key: never repr'd
        "id: d\ntasks: [{id: a, command: x}]\nenv:\n  ? [1, 2]\n  : x\n",
    ):
        dag, errors = parse_dag(text, "b.yaml")
        assert dag is None and errors
        assert all(len(str(e)) <= MAX_ERROR_CHARS for e in errors)
    dag, errors = parse_dag(LAUGHS, "b.yaml")
    assert f"more than {MAX_NODES} values" in errors[0].message
    assert time.monotonic() - started < 2


def test_an_alias_inside_itself_is_reported() -> None:
    dag, errors = parse_dag("id: d\nx: &loop [1, *loop]\ntasks: [{id: a, command: x}]\n")
    assert dag is None
    assert [e.message for e in errors] == [
        "an alias refers to a list or mapping that contains it (a loop)"
    ]


def test_with_items_cannot_multiply_into_millions() -> None:
    items = ", ".join(str(i) for i in range(2000))
    text = (
        "id: d\ntasks:\n"
        f"  - {{id: a, command: x, with_items: [{items}]}}\n"
        f"  - {{id: b, command: x, with_items: [{items}], depends_on: [a]}}\n"
    )
    started = time.monotonic()
    dag, errors = parse_dag(text)
    assert dag is None
    assert "the DAG has 4000000 dependencies (with_items expanded); the limit is" in str(errors)
    many_items = ", ".join(str(i) for i in range(10_001))
    many = f"id: d\ntasks: [{{id: t, command: x, with_items: [{many_items}]}}]\n"
    dag, errors = parse_dag(many)
    assert dag is None and "the DAG has 10001 tasks" in errors[0].message
    long = "x" * 100_000
    text = f"id: d\ntasks: [{{id: a, command: {long}, with_items: [{items}]}}]\n"
    dag, errors = parse_dag(text)
    assert dag is None and "commands have 200000000 characters" in errors[0].message
    assert time.monotonic() - started < 3


def test_errors_are_bounded_in_number_and_length(tmp_path: Path) -> None:
    keys = "".join(f"unknown_key_{i}: 1\n" for i in range(1000))
    huge_id = "x" * 200_000
    folder = folder_with(
        tmp_path,
        many="id: d\ntasks: [{id: a, command: x}]\n" + keys,
        longid=f"id: '{huge_id}'\ntasks: [{{id: a, command: x}}]\n",
        deps="id: d\ntasks:\n"
        + "".join(f"  - {{id: t{i}, command: x, depends_on: [z{i}]}}\n" for i in range(3000)),
    )
    started = time.monotonic()
    folder.scan()
    assert time.monotonic() - started < 10  # "did you mean" over 3,000 ids each: minutes
    assert_good_loaded(folder)
    errors = folder.snapshot.errors
    assert len(errors["many.yaml"]) == 51
    assert errors["many.yaml"][-1] == (
        "many.yaml: ... and 950 more error(s) not listed (fix the ones above first)"
    )
    assert len(errors["deps.yaml"]) == 51
    assert "not a valid id" in only_error(folder, "longid.yaml")
    for listed in errors.values():
        assert all(len(error) <= MAX_ERROR_CHARS for error in listed)


# ---------------------------------------------------------------- what the file is


def test_a_fifo_is_reported_and_never_opened(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    fifo = tmp_path / "dags" / "pipe.yaml"
    os.mkfifo(fifo)
    folder.scan()  # would block forever if it opened the FIFO for reading
    assert_good_loaded(folder)
    assert only_error(folder, "pipe.yaml") == (
        "pipe.yaml: not a regular file (a FIFO (named pipe)); it is not read "
        "(expected a YAML text file)"
    )
    with pytest.raises(OSError):  # ENXIO: no reader has it open
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)


def test_the_source_of_a_dag_whose_file_became_a_fifo_is_refused(tmp_path: Path) -> None:
    """The last good version keeps running, and showing its file never waits on the FIFO."""
    folder = folder_with(tmp_path)
    folder.scan()
    assert folder.source("good") == GOOD
    path = tmp_path / "dags" / "good.yaml"
    path.unlink()
    os.mkfifo(path)
    folder.scan()
    assert_good_loaded(folder)
    assert "not a regular file" in only_error(folder, "good.yaml")
    assert folder.source("good") is None


def test_a_socket_and_a_directory_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = folder_with(tmp_path)
    dags = tmp_path / "dags"
    monkeypatch.chdir(dags)  # a socket path must be short: bind by relative name
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock.yaml")
        (dags / "dir.yaml").mkdir()
        folder.scan()
    assert_good_loaded(folder)
    assert "not a regular file (a socket)" in only_error(folder, "sock.yaml")
    assert "not a regular file (a directory)" in only_error(folder, "dir.yaml")


def test_a_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    with open(tmp_path / "dags" / "huge.yaml", "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: instant to make
    started = time.monotonic()
    folder.scan()
    assert time.monotonic() - started < 1
    assert_good_loaded(folder)
    assert only_error(folder, "huge.yaml") == (
        "huge.yaml: the file has 52428800 bytes; the limit is 1048576 "
        "(max_dag_file_bytes in nagare.yaml); it is not read"
    )


def test_the_size_limit_is_a_setting(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "good.yaml").write_text(GOOD)
    folder = DagFolder(str(dags), max_file_bytes=10)
    folder.scan()
    assert "the file has 47 bytes; the limit is 10" in only_error(folder, "good.yaml")
    dag, errors = load_dag_file(str(dags / "good.yaml"), max_bytes=10)
    assert dag is None and "the limit is 10" in errors[0].message


def test_symlink_loop_and_dangling_link_are_reported_and_recover(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    dags = tmp_path / "dags"
    os.symlink("b.yaml", dags / "a.yaml")
    os.symlink("a.yaml", dags / "b.yaml")
    os.symlink("missing.txt", dags / "dangling.yaml")
    folder.scan()
    assert_good_loaded(folder)
    assert "Too many levels of symbolic links" in only_error(folder, "a.yaml")
    assert "Too many levels of symbolic links" in only_error(folder, "b.yaml")
    assert only_error(folder, "dangling.yaml") == (
        "dangling.yaml: a symbolic link to a file that does not exist"
    )
    assert not folder.scan()  # nothing changed: nothing to report again
    (dags / "missing.txt").write_text("id: linked\ntasks: [{id: a, command: x}]\n")
    assert folder.scan()
    assert folder.snapshot.files["linked"] == "dangling.yaml"
    assert "dangling.yaml" not in folder.snapshot.errors


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_a_file_that_fails_to_read_is_reported(tmp_path: Path) -> None:
    """Root reads a chmod-000 file, so a read error comes from /proc/self/mem instead: a
    regular file that every read of offset 0 fails with EIO."""
    folder = folder_with(tmp_path)
    os.symlink("/proc/self/mem", tmp_path / "dags" / "mem.yaml")
    folder.scan()
    assert_good_loaded(folder)
    assert only_error(folder, "mem.yaml") == "mem.yaml: cannot read the file: Input/output error"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_an_unreadable_file_is_reported_and_recovers_on_chmod(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    path = tmp_path / "dags" / "secret.yaml"
    path.write_text("id: secret\ntasks: [{id: a, command: x}]\n")
    path.chmod(0)
    folder.scan()
    assert_good_loaded(folder)
    assert "cannot read the file: Permission denied" in only_error(folder, "secret.yaml")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)  # the ctime changes: read again
    assert folder.scan()
    assert "secret" in folder.snapshot.dags


def test_binary_garbage_and_invalid_utf8_are_reported(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    folder = folder_with(tmp_path)
    (dags / "bin.yaml").write_bytes(bytes(range(256)) * 64)
    (dags / "nul.yaml").write_bytes(b"id: x\x00\x01\ntasks: []\n")
    (dags / "latin.yaml").write_bytes(b"id: d\n\ndescription: caf\xe9\n")
    folder.scan()
    assert_good_loaded(folder)
    assert "not UTF-8 text (byte 0x80 at offset 128)" in only_error(folder, "bin.yaml")
    assert only_error(folder, "latin.yaml").startswith("latin.yaml:3: cannot read the file")
    assert only_error(folder, "nul.yaml") == (
        "nul.yaml:1: invalid YAML: unacceptable character #x0000 "
        "(special characters are not allowed)"
    )


def test_any_exception_while_reading_a_file_is_that_files_error(tmp_path: Path) -> None:
    """A bug in a check (here a later layer's `extra_check`) must not stop the other files."""

    def failing_check(dag: DagDef) -> list[tuple[int, str, str]]:
        if dag.dag_id == "recursion":
            raise RecursionError("maximum recursion depth exceeded")
        if dag.dag_id == "boom":
            raise ValueError("x" * 10_000)
        return []

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "good.yaml").write_text(GOOD)
    for dag_id in ("recursion", "boom"):
        (dags / f"{dag_id}.yaml").write_text(f"id: {dag_id}\ntasks: [{{id: a, command: x}}]\n")
    folder = DagFolder(str(dags), extra_check=failing_check)
    folder.scan()
    assert_good_loaded(folder)
    assert only_error(folder, "recursion.yaml") == (
        "recursion.yaml: the file could not be read "
        "(RecursionError: maximum recursion depth exceeded)"
    )
    assert len(only_error(folder, "boom.yaml")) < 300


# ---------------------------------------------------------------- logging and the fast path


def test_a_fault_that_stays_the_same_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nagare.dags")
    folder = folder_with(tmp_path, deep=DEEP)
    dags = tmp_path / "dags"
    os.mkfifo(dags / "pipe.yaml")
    os.symlink("loop.yaml", dags / "loop.yaml")
    for _ in range(5):
        folder.scan()
    os.utime(dags / "deep.yaml")  # touched, same content, same errors
    folder.scan()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 3, warnings
    assert all(len(message) < 6000 for message in warnings)
    assert sum("deep.yaml" in message for message in warnings) == 1


def test_an_unreadable_folder_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = folder_with(tmp_path)
    folder.scan()
    dags = tmp_path / "dags"
    dags.rename(tmp_path / "elsewhere")
    dags.write_text("a file where the folder was")
    for _ in range(5):
        assert not folder.scan()
    assert_good_loaded(folder)  # what was loaded stays
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot read the DAGs folder" in errors[0].getMessage()


def test_the_same_scan_failure_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher (under the app's supervisor, as a server runs it) survives a failing
    callback and logs the same failure once, not per scan."""

    def failing_callback() -> None:
        raise RuntimeError("the callback failed")

    dags = tmp_path / "dags"
    dags.mkdir()
    folder = DagFolder(str(dags), on_change=failing_callback)
    stop = threading.Event()
    supervisor = Supervisor("dag-folder", folder.run, stop, None, ending=stop)
    watcher = threading.Thread(target=supervisor.run)
    watcher.start()
    try:
        for i in range(3):  # each new file is a change, and the callback fails again
            (dags / f"d{i}.yaml").write_text(f"id: d{i}\ntasks: [{{id: a, command: x}}]\n")
            wait_for(lambda i=i: f"d{i}" in folder.snapshot.dags, 5)  # type: ignore[misc]
    finally:
        stop.set()
        watcher.join(5)
    failures = [r for r in caplog.records if "the dag-folder loop failed" in r.getMessage()]
    assert len(failures) == 1 and "the callback failed" in failures[0].getMessage()


def test_an_unchanged_folder_is_not_read_again(tmp_path: Path) -> None:
    reads: list[str] = []

    def counting_check(dag: DagDef) -> list[tuple[int, str, str]]:
        reads.append(dag.dag_id)
        return []

    dags = tmp_path / "dags"
    dags.mkdir()
    for i in range(20):
        (dags / f"d{i}.yaml").write_text(f"id: d{i}\ntasks: [{{id: a, command: x}}]\n")
    os.mkfifo(dags / "pipe.yaml")
    (dags / "deep.yaml").write_text(DEEP)
    folder = DagFolder(str(dags), extra_check=counting_check)
    assert folder.scan()
    assert len(reads) == 20
    started = time.monotonic()
    for _ in range(10):
        assert not folder.scan()
    assert len(reads) == 20
    assert time.monotonic() - started < 0.5


# ---------------------------------------------------------------- the real server


def test_the_server_starts_and_serves_with_bad_files_present(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "good.yaml").write_text(GOOD)
    (dags / "deep.yaml").write_text(DEEP)
    (dags / "bomb.yaml").write_text(LAUGHS)
    os.mkfifo(dags / "pipe.yaml")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nagare", "--port", f"127.0.0.1:{port}", "--db", "n.db"],
        cwd=tmp_path,
        env=pythonpath_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _answers(url), 15, message="the server to start")
        assert http("GET", url + "/api/dags/good").status == 200
        errors = http("GET", url + "/api/dags/errors").json
        assert set(errors) == {"deep.yaml", "bomb.yaml", "pipe.yaml"}
        assert "nesting deeper than" in errors["deep.yaml"][0]
        time.sleep(1.2)  # a few rescans
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert sum("deep.yaml" in line for line in stderr.splitlines()) == 1, stderr
    assert len(stderr) < 10_000


def _answers(url: str) -> bool:
    try:
        return http("GET", url + "/api/health", timeout=1).status == 200
    except OSError:
        return False
