"""Tooling of the workflow language (workflow-language.md §8): the JSON Schema of DAG files
(`nagare schema`, `GET /api/schema/dag.json`) generated from the validator's own field table,
`nagare dry`, `POST /api/dags/validate`, run-level retry and task retry with `downstream=true`
(API and CLI). Real server on port 0, real SQLite, real `sh -c`, the CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import Nagare, pythonpath_env, wait_for

from nagare.cli import main
from nagare.dagfile import DAG_KEYS, RESOURCE_KEYS, SECRET_KEYS, TASK_KEYS, TRIGGER_KEYS, parse_dag
from nagare.dagfile import fields as field_table
from nagare.engine.rerun import downstream_reruns, run_retry
from nagare.models import TaskStatus as S

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "dags").glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(field_table.dag_schema())


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", *args],
        cwd=cwd,
        env=pythonpath_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---------------------------------------------------------------- the schema


def test_the_schema_is_a_valid_json_schema_and_every_field_is_described() -> None:
    jsonschema.Draft202012Validator.check_schema(field_table.dag_schema())
    for entry in field_table.FIELDS:
        assert entry.description.strip(), entry.key


def test_the_validator_reads_its_keys_from_the_same_table() -> None:
    schema = field_table.dag_schema()
    defs = schema["$defs"]
    assert tuple(schema["properties"]) == DAG_KEYS
    assert tuple(defs["task"]["properties"]) == TASK_KEYS
    assert tuple(defs["trigger"]["properties"]) == TRIGGER_KEYS
    assert tuple(defs["resources"]["properties"]) == RESOURCE_KEYS
    assert tuple(defs["secret"]["properties"]) == SECRET_KEYS


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as editors validate it against the schema (YAML 1.2: `2026-01-01` is a string)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_12(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_schema_accepts_every_example_in_dags(path: Path) -> None:
    text = path.read_text()
    assert parse_dag(text, path.name, str(path.parent))[1] == []
    errors = [e.message for e in VALIDATOR.iter_errors(_yaml_12(text))]
    assert errors == []


# Invalid files of the test suite (test_dagfile, test_secrets) that a schema can see (shape,
# types, unknown keys): the validator and the schema both reject each one.
INVALID = {
    "no id": "tasks: [{id: a, command: x}]",
    "no tasks": "id: d",
    "empty tasks": "id: d\ntasks: []",
    "tasks not a list": "id: d\ntasks: {a: 1}",
    "unknown DAG key": "id: d\nschedul: '@daily'\ntasks: [{id: a, command: x}]",
    "unknown task key": "id: d\ntasks: [{id: a, command: x, dependson: [b]}]",
    "unknown trigger key": (
        "id: d\ntrigger: {type: webhook, path: /api/webhooks/x, secrt: s}\n"
        "tasks: [{id: a, command: x}]"
    ),
    "unknown resources key": (
        "id: d\ntasks: [{id: a, command: x, image: alpine, resources: {cpu: '1'}}]"
    ),
    "task id missing": "id: d\ntasks: [{command: x}]",
    "invalid id": "id: 'a b'\ntasks: [{id: a, command: x}]",
    "catchup not a boolean": "id: d\ncatchup: 3\ntasks: [{id: a, command: x}]",
    "negative retries": "id: d\ntasks: [{id: a, command: x, retries: -1}]",
    "retries not a number": "id: d\ntasks: [{id: a, command: x, retries: many}]",
    "timeout not a number": "id: d\ntasks: [{id: a, command: x, timeout_seconds: soon}]",
    "unknown type": "id: d\ntasks: [{id: a, type: shell, command: x}]",
    "bad env name": "id: d\nenv: {1X: v}\ntasks: [{id: a, command: x}]",
    "env not a mapping": "id: d\ntasks: [{id: a, command: x, env: [a]}]",
    "empty with_items": "id: d\ntasks: [{id: a, command: x, with_items: []}]",
    "bad volume": "id: d\ntasks: [{id: a, command: x, image: i, volumes: ['nocolon']}]",
    "webhook path": "id: d\ntrigger: {type: webhook, path: /x}\ntasks: [{id: a, command: x}]",
    "secrets not a list": "id: d\nsecrets: {name: A, env: X}\ntasks: [{id: a, command: x}]",
    "secret without name": "id: d\nsecrets: [{env: X}]\ntasks: [{id: a, command: x}]",
    "secret with both sources": (
        "id: d\nsecrets: [{name: A, env: X, file: f}]\ntasks: [{id: a, command: x}]"
    ),
    "secret without source": "id: d\nsecrets: [{name: A}]\ntasks: [{id: a, command: x}]",
    "task secret key": "id: d\ntasks: [{id: a, command: x, secrets: [{name: A, envv: X}]}]",
}


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_the_schema_and_the_validator_both_reject_invalid_files(text: str) -> None:
    assert parse_dag(text + "\n")[1] != []
    assert list(VALIDATOR.iter_errors(_yaml_12(text))) != []


def test_nagare_schema_prints_what_the_server_serves_without_a_key(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    printed = cli("schema", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    nagare = nagare_factory(api_key="k-1")
    served = nagare.call("GET", "/api/schema/dag.json", headers={"Authorization": ""})
    assert served.status == 200
    assert served.json == json.loads(printed.stdout) == field_table.dag_schema()
    paths = nagare.get("/api/openapi.json")["paths"]
    assert "security" not in paths["/api/schema/dag.json"]["get"]
    assert "text/yaml" in paths["/api/dags/validate"]["post"]["requestBody"]["content"]


# ---------------------------------------------------------------- POST /api/dags/validate


def test_validate_answers_every_problem_with_line_and_field_and_loads_nothing(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(api_key="k-1")
    good = (ROOT / "dags" / "secrets_example.yaml").read_bytes()
    result = nagare.call("POST", "/api/dags/validate", raw=good)
    assert (result.status, result.json) == (200, {"valid": True, "errors": []})
    bad = b"id: d\ntasks:\n  - id: a\n    command: x\n    retries: -1\n    dependson: [b]\n"
    result = nagare.call("POST", "/api/dags/validate", raw=bad)
    assert result.status == 200
    assert result.json["valid"] is False
    assert sorted((e["line"], e["field"]) for e in result.json["errors"]) == [
        (5, "tasks[0] (a).retries"),
        (6, "tasks[0] (a).dependson"),
    ]
    assert "did you mean 'depends_on'?" in json.dumps(result.json)
    broken = nagare.call("POST", "/api/dags/validate", raw=b"id: [\n")
    assert broken.json["valid"] is False and "invalid YAML" in broken.json["errors"][0]["message"]
    not_text = nagare.call("POST", "/api/dags/validate", raw=b"\xff\xfe")
    assert not_text.status == 400 and not_text.json["error"]["code"] == "bad_request"
    assert (
        nagare.call("POST", "/api/dags/validate", raw=good, headers={"Authorization": ""}).status
        == 401
    )
    assert nagare.get("/api/dags") == []  # nothing was loaded


# ---------------------------------------------------------------- nagare dry


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_dry_prints_the_plan_of_every_example_and_runs_nothing(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    dag, _ = parse_dag(path.read_text(), path.name, str(path.parent))
    assert dag is not None
    names = [p.name for p in dag.params]  # a DAG with params: typed (their first is a string)
    given = "since=2026-01-01" if "since" in names else f"{names[0]}=eu" if names else "GREETING=hi"
    assert main(["dry", str(path), "-p", given]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"DAG '{dag.dag_id}': {len(dag.tasks)} task(s)")
    assert given in out.splitlines()[1]
    assert list(tmp_path.iterdir()) == []  # no database, no log folder: nothing ran


def test_dry_by_dag_id_shows_order_commands_env_and_secrets_by_name_only(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "p.yaml").write_text(
        "id: plan\nenv: {REGION: eu}\nsecrets: [{name: PW, env: SRC_PW}]\ntasks:\n"
        "  - {id: last, command: echo last, depends_on: [first]}\n"
        "  - {id: first, command: echo $REGION, env: {REGION: us}, retries: 2}\n"
    )
    result = cli(
        "dry",
        "plan",
        "--dags",
        str(dags),
        "-p",
        "MODE=full",
        cwd=tmp_path,
        env={"SRC_PW": "hunter2-value"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("1. first") < out.index("2. last")
    assert "command: echo $REGION" in out and "env REGION=us" in out and "env MODE=full" in out
    assert "env PW=***** (secret, from env SRC_PW)" in out
    assert "note: up to 2 retries" in out
    assert "hunter2-value" not in out


def test_dry_checks_typed_params_as_a_run_would(tmp_path: Path) -> None:
    example = str(ROOT / "dags" / "params_example.yaml")
    bad = cli("dry", example, "-p", "batch_size=abc", cwd=tmp_path)
    assert bad.returncode == 1
    assert "-p: batch_size: expected an integer from 1 to 10000, found 'abc'" in bad.stdout
    assert "-p: since: required, not given" in bad.stdout
    good = cli("dry", example, "-p", "since=2026-01-01", "-p", "batch_size=20", cwd=tmp_path)
    assert good.returncode == 0 and "env batch_size=20" in good.stdout
    assert "env mode=incremental" in good.stdout  # a default filled in


def test_dry_exits_1_with_every_problem_of_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: d\ntasks:\n  - id: a\n    command: x\n    retries: -1\n")
    result = cli("dry", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert "bad.yaml:5: tasks[0] (a).retries: expected a whole number >= 0" in result.stdout
    missing = cli("dry", "nope", "--dags", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 1 and "DAG 'nope' not found" in missing.stdout


# ---------------------------------------------------------------- retry: the decisions


def chain_dag() -> Any:
    dag, _ = parse_dag(
        "id: r\ntasks:\n  - {id: a, command: x}\n  - {id: b, command: x, depends_on: [a]}\n"
        "  - {id: c, command: x, depends_on: [b]}\n  - {id: side, command: x}\n"
        "  - {id: d, command: x, depends_on: [side]}\n"
    )
    return dag


@pytest.mark.parametrize(
    ("statuses", "now", "later"),
    [
        ({"a": S.SUCCESS, "b": S.FAILED, "c": S.UPSTREAM_FAILED}, ["b"], ["c"]),
        ({"a": S.FAILED, "b": S.UPSTREAM_FAILED, "c": S.UPSTREAM_FAILED}, ["a"], ["b", "c"]),
        (
            {"a": S.CANCELLED, "b": S.CANCELLED, "side": S.FAILED, "d": S.UPSTREAM_FAILED},
            ["a", "side"],
            ["b", "d"],
        ),
        ({"a": S.SUCCESS, "b": S.SUCCESS, "c": S.SKIPPED, "side": S.SUCCESS}, [], []),
        (
            {"a": S.SUCCESS, "b": S.SUCCESS, "c": S.FAILED, "side": S.SUCCESS, "d": S.FAILED},
            ["d", "c"],  # run order: level by level
            [],
        ),
    ],
)
def test_run_retry_reopens_failed_upstream_failed_and_cancelled_in_dependency_order(
    statuses: dict[str, S], now: list[str], later: list[str]
) -> None:
    assert run_retry(chain_dag(), statuses) == (now, later)


def test_downstream_reruns_are_the_finished_successful_dependants() -> None:
    statuses = {"a": S.SUCCESS, "b": S.SUCCESS, "c": S.FAILED, "side": S.SUCCESS, "d": S.SUCCESS}
    assert downstream_reruns(chain_dag(), "a", statuses) == ["b"]
    assert downstream_reruns(chain_dag(), "side", statuses) == ["d"]
    assert downstream_reruns(chain_dag(), "c", statuses) == []


# ---------------------------------------------------------------- retry: end to end

FLAKY = """
id: flaky_chain
schedule: workflow_dispatch
tasks:
  - id: first
    command: echo first
  - id: flaky
    depends_on: [first]
    command: test -e {marker} && echo fine || {{ echo bad; exit 3; }}
  - id: after
    depends_on: [flaky]
    command: echo after
  - id: alone
    command: echo alone
"""


def attempts(nagare: Nagare, run_id: str, task_id: str) -> int:
    return len(nagare.get(f"/api/runs/{run_id}/tasks/{task_id}/attempts"))


def test_run_retry_requeues_the_failed_tasks_of_a_finished_run_in_place(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    nagare = nagare_factory(dags={"f.yaml": FLAKY.format(marker=marker)})
    run_id = nagare.trigger("flaky_chain")
    assert nagare.wait_run(run_id)["status"] == "failed"
    assert nagare.tasks(run_id)["after"]["status"] == "upstream_failed"
    nothing_to_do = nagare.call("POST", f"/api/runs/{run_id}/tasks/first/retry?downstream=maybe")
    assert nothing_to_do.status == 400
    marker.touch()
    result = nagare.call("POST", f"/api/runs/{run_id}/retry")
    assert result.status == 200 and result.json["run_id"] == run_id
    assert nagare.wait_run(run_id)["status"] == "success"
    assert {t: attempts(nagare, run_id, t) for t in ("first", "flaky", "after", "alone")} == {
        "first": 1,
        "flaky": 2,
        "after": 1,
        "alone": 1,
    }
    again = nagare.call("POST", f"/api/runs/{run_id}/retry")
    assert again.status == 409 and "no failed" in again.json["error"]["message"]
    assert nagare.call("POST", "/api/runs/ghost/retry").status == 404


def test_run_retry_is_refused_while_the_run_is_active(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    nagare = nagare_factory(
        dags={
            "s.yaml": f"id: slow\nschedule: workflow_dispatch\ntasks:\n"
            f"  - {{id: wait, command: 'while [ ! -e {gate} ]; do sleep 0.05; done'}}\n"
        }
    )
    run_id = nagare.trigger("slow")
    wait_for(lambda: nagare.tasks(run_id)["wait"]["status"] == "running", 10, message="running")
    refused = nagare.call("POST", f"/api/runs/{run_id}/retry")
    assert refused.status == 409 and "only a finished run" in refused.json["error"]["message"]
    gate.touch()
    assert nagare.wait_run(run_id)["status"] == "success"


def test_task_retry_downstream_reruns_its_successful_dependants_with_the_cli(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    marker.touch()
    nagare = nagare_factory(dags={"f.yaml": FLAKY.format(marker=marker)})
    run_id = nagare.trigger("flaky_chain")
    assert nagare.wait_run(run_id)["status"] == "success"
    plain = cli("retry", run_id, "first", "--api", nagare.url, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert nagare.wait_run(run_id)["status"] == "success"
    assert [attempts(nagare, run_id, t) for t in ("first", "flaky", "after")] == [2, 1, 1]
    down = cli("retry", run_id, "first", "--downstream", "--api", nagare.url, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == (
        f"Queued retry for task first and its successful dependants in run {run_id}"
    )
    assert nagare.wait_run(run_id)["status"] == "success"
    assert [attempts(nagare, run_id, t) for t in ("first", "flaky", "after", "alone")] == [
        3,
        2,
        2,
        1,
    ]
    whole = cli("retry", run_id, "--api", nagare.url, cwd=tmp_path)
    assert whole.returncode == 1 and "no failed" in whole.stderr
    bad = cli("retry", run_id, "--downstream", "--api", nagare.url, cwd=tmp_path)
    assert bad.returncode == 2 and "--downstream needs a TASK_ID" in bad.stderr
