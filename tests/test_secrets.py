"""Secrets (workflow-language.md §7): validation at load, resolution when a task starts, masking
in every log line and message, and no value ever in SQLite, the log folder or the API. Real
server, real SQLite, real `sh -c`; a remote worker for the cluster path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DOCKER_TEST_IMAGE, Nagare, pythonpath_env, require_docker
from test_cluster import GPU_ONLY, LEASE, Worker, gpu_dag, wait_online, workers

from nagare.cluster import protocol
from nagare.cluster.remote import RemoteWorker, _Task
from nagare.dagfile import dag_from_json, dag_to_json, parse_dag
from nagare.engine.secrets import MASK, mask, mask_values, resolve, task_secrets, with_secrets
from nagare.models import Assignment, SecretDef, TaskDef

__all__ = ["workers"]  # the fixture, used by the remote test

ROOT = Path(__file__).resolve().parent.parent
VALUE = "s3cr3t-Value-42"


def files_containing(root: Path, needle: str, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every file under `root` (the database, its WAL, every log) whose bytes hold `needle`."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path not in skip and needle.encode() in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


# ---------------------------------------------------------------- pure: masking, resolving


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("pw=hunter22", ["hunter22"], f"pw={MASK}"),
        ("hunter22 and hunter22", ["hunter22"], f"{MASK} and {MASK}"),
        ("nothing here", ["hunter22"], "nothing here"),
        ("abc is short", ["abc"], "abc is short"),  # shorter than 4: not masked (documented)
        ("abcd", ["abcd"], MASK),
        ("line two of it", ["first line\nline two"], f"{MASK} of it"),  # multi-line: per line
        ("a prefix-longer", ["prefix", "prefix-longer"], f"a {MASK}"),  # longest first
        ("", ["hunter22"], ""),
        ("x", [], "x"),
    ],
)
def test_mask_replaces_every_secret_value(text: str, values: list[str], expected: str) -> None:
    assert mask(text, values) == expected


def test_mask_values_splits_multiline_values_and_drops_short_lines() -> None:
    prepared = mask_values(["-----BEGIN KEY-----\r\nAAAA\nb\n-----END KEY-----\n"])
    assert "AAAA" in prepared and "b" not in prepared
    assert "-----BEGIN KEY-----" in prepared and "-----END KEY-----" in prepared
    assert list(prepared) == sorted(prepared, key=lambda v: (-len(v), v))


def test_resolve_reads_env_and_file_and_names_a_missing_secret_never_a_value() -> None:
    files = {"/s/token": "tok-123\n"}

    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    defs = [SecretDef("DB", env="PROD_DB"), SecretDef("TOKEN", file="/s/token")]
    assert resolve(defs, {"PROD_DB": "pw-1"}, read) == ({"DB": "pw-1", "TOKEN": "tok-123"}, "")
    values, problem = resolve(defs, {}, read)
    assert values == {}
    assert problem == "secret 'DB': the environment variable PROD_DB is not set on the server"
    values, problem = resolve([SecretDef("T", file="/nope")], {"X": "pw-1"}, read)
    assert problem == "secret 'T': cannot read the file /nope: No such file or directory"


def test_task_secrets_merge_dag_and_task_and_are_injected_last() -> None:
    dag, _ = parse_dag(
        "id: d\nsecrets: [{name: A, env: X}, {name: B, env: Y}]\n"
        "tasks:\n  - {id: t, command: x, secrets: [{name: B, env: Z}]}\n  - {id: u, command: y}\n"
    )
    assert dag is not None
    assert task_secrets(dag, dag.task("t")) == (SecretDef("A", env="X"), SecretDef("B", env="Z"))
    assert task_secrets(dag, dag.task("u")) == (SecretDef("A", env="X"), SecretDef("B", env="Y"))
    assert dag_from_json(dag_to_json(dag)) == dag  # the run's snapshot keeps names and sources
    base = Assignment("i", "r", "d", "t", 1, "x", {"A": "env-value", "K": "v"})
    injected = with_secrets(base, {"A": "pw-1", "B": "pw-1"})
    assert injected.env == {"A": "pw-1", "K": "v", "B": "pw-1"}
    assert injected.secrets == ("pw-1",)


def test_the_assignment_carries_its_secrets_to_the_worker() -> None:
    assignment = Assignment("i", "r", "d", "t", 1, "x", {"A": "pw-1"}, secrets=("pw-1",))
    wire = protocol.encode_assignment(assignment)
    assert wire["secrets"] == ["pw-1"]
    assert protocol.decode_assignment(wire) == assignment
    old = {k: v for k, v in wire.items() if k != "secrets"}  # a master of the previous release
    assert protocol.decode_assignment(old).secrets == ()


def test_the_worker_masks_a_line_before_it_is_buffered_for_the_master() -> None:
    worker = RemoteWorker.__new__(RemoteWorker)  # only the line buffer of a worker
    worker._lock = threading.Condition()
    worker._buffered = 0
    worker._lines = {}
    task = _Task(worker, Assignment("i", "r", "d", "t", 1, "x", {}, secrets=(VALUE,)))
    task.line("stdout", f"pw={VALUE}")
    assert worker._lines[task.key] == [("stdout", f"pw={MASK}")]


# ---------------------------------------------------------------- validation at load


@pytest.mark.parametrize(
    ("secrets", "field", "fragment"),
    [
        ("secrets: {name: A, env: X}", "secrets", "expected a list of {name, env | file}"),
        ("secrets: [A]", "secrets[0]", "expected a mapping {name, env | file}"),
        ("secrets: [{env: X}]", "secrets[0].name", "'name' is required"),
        ("secrets: [{name: 1A, env: X}]", "secrets[0].name", "'1A' is not a valid variable"),
        (
            "secrets: [{name: A}]",
            "secrets[0]",
            "exactly one source, 'env' or 'file' (found neither)",
        ),
        (
            "secrets: [{name: A, env: X, file: f}]",
            "secrets[0]",
            "exactly one source, 'env' or 'file' (found both)",
        ),
        ("secrets: [{name: A, env: 'X-Y'}]", "secrets[0].env", "'X-Y' is not a valid environment"),
        ("secrets: [{name: A, env: X}, {name: A, env: Y}]", "secrets[1].name", "given twice"),
        ("secrets: [{name: A, env: X, fiel: f}]", "secrets[0].fiel", "did you mean 'file'?"),
    ],
)
def test_invalid_secrets_are_reported_with_line_and_field(
    secrets: str, field: str, fragment: str
) -> None:
    for text, prefix in (
        (f"id: d\n{secrets}\ntasks: [{{id: t, command: x}}]\n", ""),
        (f"id: d\ntasks:\n  - id: t\n    command: x\n    {secrets}\n", "tasks[0] (t)."),
    ):
        dag, errors = parse_dag(text, "s.yaml")
        assert dag is None
        assert [(e.field, e.line) for e in errors] == [(prefix + field, 2 if not prefix else 5)]
        assert fragment in errors[0].message, errors[0].message


def test_a_relative_secret_file_is_relative_to_the_dag_files_folder() -> None:
    dag, errors = parse_dag(
        "id: d\nsecrets: [{name: T, file: keys/t}]\ntasks: [{id: t, command: x}]\n",
        base_dir="/srv/dags",
    )
    assert errors == [] and dag is not None
    assert dag.secrets == (SecretDef("T", file="/srv/dags/keys/t"),)
    assert TaskDef("t").secrets == ()


# ---------------------------------------------------------------- end to end


def test_the_secrets_example_runs_masked_and_no_value_reaches_sqlite_or_the_logs(
    nagare_factory: Callable[..., Nagare], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NAGARE_EXAMPLE_DB_PASSWORD", VALUE)
    (tmp_path / "dags").mkdir()
    shutil.copy(ROOT / "dags" / "secrets_example.yaml", tmp_path / "dags")
    nagare = nagare_factory()
    run_id = nagare.trigger("secrets_example")
    assert nagare.wait_run(run_id)["status"] == "success"
    log = nagare.log(run_id, "connect")
    assert f"connecting as app with password {MASK}" in log
    assert f"the password has {len(VALUE)} characters" in log  # the task did get it
    assert VALUE not in log
    task = nagare.task(run_id, "connect")
    assert MASK in task["output_tail"] and VALUE not in str(task)
    for path in (f"/api/runs/{run_id}", "/api/dags/secrets_example", f"/api/runs/{run_id}/tasks"):
        assert VALUE not in nagare.call("GET", path).text
    assert "NAGARE_EXAMPLE_DB_PASSWORD" not in nagare.get(f"/api/runs/{run_id}")["conf"]
    nagare.app.stop()  # everything written and checkpointed
    assert files_containing(tmp_path, VALUE) == []
    assert files_containing(tmp_path, "connecting as app"), "the grep finds what is there"


def test_secret_values_are_masked_in_multiline_output_messages_and_hidden_from_env(
    nagare_factory: Callable[..., Nagare], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN TEST KEY-----\nQUJDREVGR0hJSktM\n-----END TEST KEY-----\n")
    monkeypatch.setenv("SRC_PW", VALUE)
    nagare = nagare_factory(
        dags={
            "m.yaml": f"""
                id: masked
                schedule: workflow_dispatch
                secrets: [{{name: PW, env: SRC_PW}}]
                tasks:
                  - id: t
                    secrets: [{{name: KEY, file: {key}}}]
                    command: |
                      printf '%s\\n' "$KEY"
                      echo "pw:$PW" >&2
                      env | grep -c SRC_PW || true
                      echo "$PW" | tr 'a-z' 'A-Z'
                      exit 3
            """
        }
    )
    run_id = nagare.trigger("masked")
    assert nagare.wait_run(run_id)["status"] == "failed"
    log = nagare.log(run_id, "t")
    lines = log.splitlines()  # (stdout and stderr interleave in any order)
    assert lines.count(MASK) == 3 and f"pw:{MASK}" in lines, lines
    assert "\n0\n" in log  # the source variable is not inherited
    assert VALUE.upper() in log  # a transformed value is not the value (documented)
    nagare.app.stop()
    assert files_containing(tmp_path, VALUE, skip=()) == []
    assert files_containing(tmp_path, "QUJDREVGR0hJSktM", skip=(key,)) == []


def test_secret_values_are_masked_in_outputs_and_downstream(
    nagare_factory: Callable[..., Nagare], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SRC_PW", VALUE)
    nagare = nagare_factory(
        dags={
            "o.yaml": """
                id: published_secret
                schedule: workflow_dispatch
                secrets: [{name: PW, env: SRC_PW}]
                tasks:
                  - id: leak
                    command: echo "DSN=postgres://app:$PW@db/app" >> "$NAGARE_OUTPUT"
                  - id: whole
                    output: ECHOED
                    command: echo "pw $PW"
                  - id: after
                    depends_on: [leak, whole]
                    command: echo "$DSN / $ECHOED"
            """
        }
    )
    run_id = nagare.trigger("published_secret")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = {t["task_id"]: t for t in nagare.get(f"/api/runs/{run_id}/tasks")}
    assert tasks["leak"]["outputs"] == {"DSN": f"postgres://app:{MASK}@db/app"}
    assert tasks["whole"]["outputs"] == {"ECHOED": f"pw {MASK}"}
    assert VALUE not in nagare.log(run_id, "after")
    nagare.app.stop()
    assert files_containing(tmp_path, VALUE, skip=()) == []


def test_a_missing_secret_fails_the_task_naming_the_secret(
    nagare_factory: Callable[..., Nagare], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAGARE_TEST_SET_VARIABLE", VALUE)
    nagare = nagare_factory(
        dags={
            "m.yaml": f"""
                id: missing
                schedule: workflow_dispatch
                tasks:
                  - id: from_env
                    secrets: [{{name: PW, env: NAGARE_TEST_UNSET_VARIABLE}}]
                    command: echo never
                  - id: other
                    secrets: [{{name: PW, env: NAGARE_TEST_SET_VARIABLE}}]
                    command: echo never
                  - id: no_secrets
                    command: echo "inherited:${{NAGARE_TEST_SET_VARIABLE:-no}}"
                  - id: from_file
                    secrets: [{{name: TOKEN, file: {tmp_path / "absent"}}}]
                    command: echo never
            """
        }
    )
    run_id = nagare.trigger("missing")
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["from_env"]["status"] == "failed"
    assert "secret 'PW': the environment variable NAGARE_TEST_UNSET_VARIABLE is not set" in (
        nagare.log(run_id, "from_env")
    )
    assert "never" not in nagare.log(run_id, "from_env")
    assert "secret 'TOKEN': cannot read the file" in nagare.log(run_id, "from_file")
    # a task without secrets does not inherit another task's source variable either
    assert nagare.log(run_id, "no_secrets") == "inherited:no\n"


def test_a_remote_worker_gets_the_secret_only_with_its_task_and_masks_its_lines(
    nagare_factory: Callable[..., Nagare],
    workers: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SRC_PW", VALUE)
    nagare = nagare_factory(
        dags={
            "r.yaml": gpu_dag(
                "remote_secret",
                '- id: t\n  pool: gpu\n  command: echo "pw=$PW len=${#PW}"\n',
                extra="secrets: [{name: PW, env: SRC_PW}]\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1", drop_env=("SRC_PW",))  # the worker host lacks the source
    wait_online(nagare, w1)
    run_id = nagare.trigger("remote_secret")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.task(run_id, "t")["worker"] == "w1"
    assert f"pw={MASK} len={len(VALUE)}" in nagare.log(run_id, "t")
    w1.proc.kill()  # (stopping a master while a worker's long poll is in flight can crash it)
    w1.wait_exit(10)
    nagare.app.stop()
    assert files_containing(tmp_path, VALUE) == []


def test_nagare_exec_prints_the_example_masked(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nagare", "exec", str(ROOT / "dags" / "secrets_example.yaml")],
        cwd=tmp_path,
        env=pythonpath_env(NAGARE_EXAMPLE_DB_PASSWORD=VALUE),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"[connect] connecting as app with password {MASK}" in result.stdout
    assert VALUE not in result.stdout + result.stderr


def test_a_container_task_gets_the_secret_and_its_log_is_masked(
    nagare_factory: Callable[..., Nagare], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    require_docker()
    monkeypatch.setenv("SRC_PW", VALUE)
    nagare = nagare_factory(
        dags={
            "c.yaml": f"""
                id: boxed
                schedule: workflow_dispatch
                secrets: [{{name: PW, env: SRC_PW}}]
                tasks:
                  - id: t
                    image: {DOCKER_TEST_IMAGE}
                    command: echo "pw=$PW len=${{#PW}}"
            """
        }
    )
    run_id = nagare.trigger("boxed")
    assert nagare.wait_run(run_id, timeout=60)["status"] == "success"
    assert f"pw={MASK} len={len(VALUE)}" in nagare.log(run_id, "t")
    nagare.app.stop()
    assert files_containing(tmp_path, VALUE) == []
