"""Run parameters (workflow language §2): the declaration in a DAG file, the one check every
path that creates a run goes through (`engine.params.resolve_params`), and each path for real:
API, CLI, webhook, trigger_dag, backfill, the dags/ example."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nagare, pythonpath_env, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from nagare.dagfile import parse_dag
from nagare.engine.params import check_value, from_text, resolve_params, run_values
from nagare.errors import InvalidParams
from nagare.models import DagDef, ParamDef, ParamType, Trigger

NagareFactory = Callable[..., Nagare]

DECLARED = (
    ParamDef("region", default="eu", has_default=True, required=False),
    ParamDef(
        "batch_size",
        ParamType.INTEGER,
        default=500,
        has_default=True,
        required=False,
        minimum=1,
        maximum=10000,
    ),
    ParamDef(
        "mode",
        enum=("full", "incremental"),
        default="incremental",
        has_default=True,
        required=False,
    ),
    ParamDef("dry_run", ParamType.BOOLEAN, default=False, has_default=True, required=False),
    ParamDef("since", pattern=r"^\d{4}-\d{2}-\d{2}$"),
    ParamDef("filters", ParamType.OBJECT, default={}, has_default=True, required=False),
    ParamDef("ratio", ParamType.NUMBER, required=False, minimum=0, maximum=1),
    ParamDef("tables", ParamType.ARRAY, required=False),
)


def problems(given: dict[str, Any], source: str = "json") -> dict[str, str]:
    _, found = resolve_params(DECLARED, given, source)  # type: ignore[arg-type]
    return {p.param: p.message for p in found}


# ---------------------------------------------------------------- the pure check


def test_defaults_fill_in_and_optional_params_without_default_stay_absent() -> None:
    resolved, found = resolve_params(DECLARED, {"since": "2026-01-02"}, "json")
    assert found == []
    assert resolved == {
        "region": "eu",
        "batch_size": 500,
        "mode": "incremental",
        "dry_run": False,
        "since": "2026-01-02",
        "filters": {},
    }


def test_every_bad_parameter_is_named_at_once() -> None:
    found = problems(
        {
            "nope": 1,
            "batch_size": 0,
            "mode": "fulll",
            "dry_run": "yes",
            "filters": [],
            "ratio": 2,
            "tables": {},
        }
    )
    assert found == {
        "nope": "unknown parameter (expected one of: region, batch_size, mode, dry_run, since, "
        "filters, ratio, tables)",
        "batch_size": "expected an integer from 1 to 10000, found the number 0",
        "mode": 'expected one of "full", "incremental", found the string "fulll"',
        "dry_run": 'expected true or false, found the string "yes"',
        "since": "required, not given (expected a string matching ^\\d{4}-\\d{2}-\\d{2}$)",
        "filters": "expected a JSON object, found the array []",
        "ratio": "expected a number from 0 to 1, found the number 2",
        "tables": "expected a JSON array, found the object {}",
    }
    assert problems({"batch_sise": 3, "since": "x"}) == {
        "batch_sise": "unknown parameter; did you mean 'batch_size'?",
        "since": 'expected a string matching ^\\d{4}-\\d{2}-\\d{2}$, found the string "x"',
    }


def test_json_values_are_strict_and_text_values_are_converted() -> None:
    base = {"since": "2026-01-02"}
    assert problems({**base, "batch_size": "10"}) == {
        "batch_size": 'expected an integer from 1 to 10000, found the string "10"'
    }
    assert problems({**base, "batch_size": True}) != {}  # a boolean is not a number
    assert problems({**base, "batch_size": 10.5}) != {}
    resolved, found = resolve_params(DECLARED, {**base, "batch_size": 10.0}, "json")
    assert (found, resolved["batch_size"]) == ([], 10)
    text = {
        **base,
        "batch_size": "10",
        "dry_run": "true",
        "filters": '{"a": [1]}',
        "ratio": "0.25",
        "tables": '["x", "y"]',
        "region": "007",
    }
    resolved, found = resolve_params(DECLARED, text, "text")
    assert found == []
    assert resolved | {} == {
        "region": "007",
        "batch_size": 10,
        "mode": "incremental",
        "dry_run": True,
        "since": "2026-01-02",
        "filters": {"a": [1]},
        "ratio": 0.25,
        "tables": ["x", "y"],
    }
    assert problems({**base, "batch_size": "ten", "filters": "{"}, "text") == {
        "batch_size": "expected an integer from 1 to 10000, found 'ten'",
        "filters": "expected a JSON object, found '{'",
    }


def test_null_means_not_given() -> None:
    resolved, found = resolve_params(DECLARED, {"since": "2026-01-01", "mode": None}, "json")
    assert (found, resolved["mode"]) == ([], "incremental")
    assert "since" in problems({"since": None})


def test_enum_compares_json_values_so_true_is_not_1() -> None:
    param = ParamDef("n", ParamType.INTEGER, enum=(1, 2))
    assert check_value(param, 1, "json") == (1, "")
    assert check_value(param, True, "json")[1] != ""
    assert check_value(param, "2", "text") == (2, "")


@given(st.integers(min_value=-(10**12), max_value=10**12))
@settings(max_examples=200, deadline=None)
def test_integers_round_trip_through_their_text(value: int) -> None:
    assert from_text(ParamType.INTEGER, str(value)) == (value,)
    assert from_text(ParamType.NUMBER, str(value)) == (value,)
    param = ParamDef("n", ParamType.INTEGER, minimum=0)
    _, message = check_value(param, value, "json")
    assert (message == "") == (value >= 0)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=5,
    )
)
@settings(max_examples=60, deadline=None)
def test_any_json_value_is_accepted_by_exactly_its_type(value: Any) -> None:
    if value is None:
        return
    accepted = {
        kind for kind in ParamType if check_value(ParamDef("p", kind), value, "json")[1] == ""
    }
    if isinstance(value, bool):
        assert accepted == {ParamType.BOOLEAN}
    elif isinstance(value, int):
        assert accepted == {ParamType.INTEGER, ParamType.NUMBER}
    elif isinstance(value, str):
        assert accepted == {ParamType.STRING}
    elif isinstance(value, list):
        assert accepted == {ParamType.ARRAY}
        text = json.dumps(value)
        assert check_value(ParamDef("p", ParamType.ARRAY), text, "text") == (value, "")
    else:
        assert accepted == {ParamType.OBJECT}


def test_run_values_give_conf_as_environment_text_and_params_typed() -> None:
    dag = DagDef("d", (), params=DECLARED)
    conf, params = run_values(dag, {"since": "2026-01-02", "tables": ["a"]}, "json")
    assert params["batch_size"] == 500 and params["tables"] == ["a"]
    assert conf == {
        "region": "eu",
        "batch_size": "500",
        "mode": "incremental",
        "dry_run": "false",
        "since": "2026-01-02",
        "filters": "{}",
        "tables": '["a"]',
    }
    with pytest.raises(InvalidParams) as caught:
        run_values(dag, {"x": 1}, "json")
    assert [p for p, _ in caught.value.details] == ["x", "since"]
    assert str(caught.value).startswith("invalid parameters for DAG 'd': x: unknown parameter")
    # A DAG without params: keeps today's conf, every value a string, no params.
    assert run_values(DagDef("d", ()), {"A": 1, "B": "x"}, "json") == ({"A": "1", "B": "x"}, {})


# ---------------------------------------------------------------- the declaration


def parse(text: str) -> tuple[DagDef | None, list[str]]:
    dag, errors = parse_dag(textwrap.dedent(text), "p.yaml")
    return dag, [str(e) for e in errors]


def test_shorthand_and_full_form_are_read_with_their_types() -> None:
    dag, errors = parse(
        """\
        id: p
        params:
          region: eu
          code: 0755
          who:
          batch_size: {type: integer, default: 500, minimum: 1, maximum: 10000, description: rows}
          mode: {type: string, enum: [full, incremental], default: incremental}
          dry_run: {type: boolean, default: false}
          since: {type: string, pattern: '^\\d{4}-\\d{2}-\\d{2}$', required: true}
          filters: {type: object, default: {a: [1, x]}}
          maybe: {type: number, required: false}
        tasks: [{id: t, command: env}]
        """
    )
    assert errors == [] and dag is not None
    by_name = {p.name: p for p in dag.params}
    assert list(by_name) == [
        "region",
        "code",
        "who",
        "batch_size",
        "mode",
        "dry_run",
        "since",
        "filters",
        "maybe",
    ]
    assert by_name["region"] == ParamDef("region", default="eu", has_default=True, required=False)
    assert by_name["code"].default == "0755"  # string defaults keep their literal text
    assert by_name["who"] == ParamDef("who")  # no default: required
    batch = by_name["batch_size"]
    assert (batch.type, batch.default, batch.minimum, batch.maximum) == ("integer", 500, 1, 10000)
    assert batch.description == "rows" and not batch.required
    assert by_name["mode"].enum == ("full", "incremental")
    assert by_name["dry_run"].default is False
    assert by_name["since"].required and by_name["since"].pattern == r"^\d{4}-\d{2}-\d{2}$"
    assert by_name["filters"].default == {"a": [1, "x"]}
    assert not by_name["maybe"].required and not by_name["maybe"].has_default


def test_every_declaration_error_is_reported_with_line_field_found_and_expected() -> None:
    _, errors = parse(
        """\
        id: p
        params:
          a: {type: integr}
          b: {type: integer, default: 0, minimum: 1, maximum: 10}
          c: {type: integer, minimum: 10, maximum: 1}
          d: {type: string, enum: [x, y], default: z, minimun: 3}
          e: {type: boolean, default: "no", pattern: x}
          f: {type: string, pattern: '(', default: x, required: true}
          g: {type: object, default: []}
          h: [1, 2]
          9bad: x
          i: {type: string, minimum: 1}
          j: {type: integer, enum: [1, two]}
        tasks: [{id: t, command: env, params: {A: 1}}]
        """
    )
    assert errors == [
        "p.yaml:3: params.a.type: unknown type 'integr'; did you mean 'integer'? (expected one "
        "of: string, integer, number, boolean, object, array)",
        "p.yaml:4: params.b.default: expected an integer from 1 to 10, found the number 0",
        "p.yaml:5: params.c.maximum: maximum 1 is below minimum 10",
        "p.yaml:6: params.d.minimun: unknown key 'minimun'; did you mean 'minimum'?",
        'p.yaml:6: params.d.default: expected one of "x", "y", found the string "z"',
        "p.yaml:7: params.e.pattern: 'pattern' applies to string parameters",
        'p.yaml:7: params.e.default: expected true or false, found the string "no"',
        "p.yaml:8: params.f.pattern: '(' is not a valid regular expression: missing ), "
        "unterminated subpattern at position 0",
        "p.yaml:8: params.f.required: a parameter with a default is never required (remove "
        "'required: true' or the default)",
        "p.yaml:9: params.g.default: expected a JSON object, found the array []",
        "p.yaml:10: params.h: expected a default value or a mapping with 'type', 'default', ..., "
        "found a list (write {type: array, default: [...]} for a list parameter)",
        "p.yaml:11: params.9bad: '9bad' is not valid (expected a variable name "
        "[A-Za-z_][A-Za-z0-9_]* (it becomes the task's env var))",
        "p.yaml:12: params.i.minimum: 'minimum' applies to integer and number parameters",
        "p.yaml:13: params.j.enum[1]: expected a value of type integer, found the string 'two'",
        "p.yaml:14: tasks[0] (t).params: 'params' is only valid with type: trigger_dag or dag "
        "(the parameters of the run it starts)",
    ]


def test_a_schedule_needs_defaults_and_a_webhook_extracts_declared_names() -> None:
    _, errors = parse(
        """\
        id: p
        schedule: "0 6 * * *"
        params:
          region: eu
          since: {type: string}
        trigger:
          type: webhook
          path: /api/webhooks/p
          extract_payload: {regoin: .region}
        tasks: [{id: t, command: env}]
        """
    )
    assert errors == [
        "p.yaml:5: params.since: has no default, but the DAG has a schedule (scheduled runs get "
        "the defaults; give a default or remove the schedule); required, not given (expected a "
        "string)",
        "p.yaml:9: trigger.extract_payload.regoin: 'regoin' is not a declared parameter; did "
        "you mean 'region'?; with params: declared, the extracted values are the run's "
        "parameters",
    ]
    _, errors = parse("id: p\nparams: [a]\ntasks: [{id: t, command: x}]\n")
    assert errors == [
        "p.yaml:2: params: expected a mapping of NAME: default or NAME: {type: ..., default: "
        "...}, found a list"
    ]


def test_the_declaration_survives_the_stored_snapshot_and_others_keep_their_hash() -> None:
    from nagare.dagfile import dag_from_json, dag_to_json

    text = (ROOT / "dags" / "params_example.yaml").read_text()
    dag, errors = parse_dag(text, "params_example.yaml")
    assert errors == [] and dag is not None
    assert dag_from_json(dag_to_json(dag)) == dag
    plain, _ = parse_dag("id: x\ntasks: [{id: t, command: x}]\n")
    assert plain is not None and "params" not in dag_to_json(plain)


# ---------------------------------------------------------------- every path, for real

PARAMS_DAG = """\
id: typed
env: {region: dag-default, KEEP: dag}
params:
  region: eu
  batch_size: {type: integer, default: 500, minimum: 1, maximum: 10000, description: rows}
  mode: {type: string, enum: [full, incremental], default: incremental}
  since: {type: string, pattern: '^\\d{4}-\\d{2}-\\d{2}$'}
  tables: {type: array, default: [a]}
tasks:
  - id: show
    env: {TASK: task}
    command: >-
      echo "region=$region batch=$batch_size mode=$mode since=$since
      tables=$tables keep=$KEEP"
"""


def test_api_runs_with_typed_params_and_answers_422_naming_every_bad_one(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags={"typed.yaml": PARAMS_DAG})
    dag = nagare.get("/api/dags/typed")
    assert dag["params"][1] == {
        "name": "batch_size",
        "type": "integer",
        "default": 500,
        "required": False,
        "minimum": 1,
        "maximum": 10000,
        "description": "rows",
    }
    assert dag["params"][3] == {
        "name": "since",
        "type": "string",
        "required": True,
        "pattern": "^\\d{4}-\\d{2}-\\d{2}$",
    }
    bad = nagare.call(
        "POST", "/api/dags/typed/runs", {"params": {"batch_size": "x", "mode": "all", "zz": 1}}
    )
    assert bad.status == 422
    error = bad.json["error"]
    assert error["code"] == "invalid_params"
    assert [d["param"] for d in error["details"]] == ["zz", "batch_size", "mode", "since"]
    assert error["details"][0]["message"].startswith("unknown parameter")
    assert nagare.get("/api/runs")["total"] == 0  # no run was created

    good = nagare.call(
        "POST", "/api/dags/typed/runs", {"params": {"batch_size": 20, "since": "2026-01-02"}}
    )
    assert good.status == 201, good.body
    run = good.json
    assert run["params"] == {
        "region": "eu",
        "batch_size": 20,
        "mode": "incremental",
        "since": "2026-01-02",
        "tables": ["a"],
    }
    assert nagare.wait_run(run["run_id"])["status"] == "success"
    assert nagare.get(f"/api/runs/{run['run_id']}")["params"]["batch_size"] == 20
    # The run parameter `region` wins over the DAG env's `region`.
    assert nagare.log(run["run_id"], "show") == (
        'region=eu batch=20 mode=incremental since=2026-01-02 tables=["a"] keep=dag\n'
    )


def test_api_conf_of_a_dag_with_params_is_text_converted_and_not_both(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags={"typed.yaml": PARAMS_DAG})
    result = nagare.call(
        "POST", "/api/dags/typed/runs", {"conf": {"batch_size": "7", "since": "2026-02-03"}}
    )
    assert result.status == 201, result.body
    assert result.json["params"]["batch_size"] == 7
    assert result.json["conf"]["batch_size"] == "7"
    both = nagare.call("POST", "/api/dags/typed/runs", {"conf": {}, "params": {}})
    assert both.status == 400 and "not both" in both.json["error"]["message"]
    shape = nagare.call("POST", "/api/dags/typed/runs", {"params": [1]})
    assert shape.status == 422 and "params must be an object" in shape.json["error"]["message"]


def test_a_dag_without_params_keeps_conf_as_strings_and_params_as_conf(nagare: Nagare) -> None:
    nagare.write_dag("plain.yaml", "id: plain\ntasks: [{id: t, command: 'echo $N'}]\n")
    wait_for(lambda: nagare.call("GET", "/api/dags/plain").status == 200, 10)
    result = nagare.call("POST", "/api/dags/plain/runs", {"params": {"N": 5}})
    assert result.status == 201, result.body
    assert (result.json["conf"], result.json["params"]) == ({"N": "5"}, {})
    assert nagare.get("/api/dags/plain")["params"] == []


def test_backfill_runs_get_the_defaults(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "daily.yaml": """\
            id: daily
            schedule: "0 6 * * *"
            params: {region: eu, n: {type: integer, default: 3}}
            tasks: [{id: t, command: 'echo $region $n'}]
            """
        }
    )
    nagare.call("POST", "/api/dags/daily/pause")
    result = nagare.call(
        "POST",
        "/api/dags/daily/backfill",
        {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T12:00:00Z"},
    )
    assert result.status in (200, 201), result.body
    (run_id,) = result.json["created"]
    assert nagare.get(f"/api/runs/{run_id}")["params"] == {"region": "eu", "n": 3}
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.log(run_id, "t") == "eu 3\n"


def test_trigger_dag_checks_the_targets_params(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(
        dags={
            "typed.yaml": PARAMS_DAG,
            "caller.yaml": """\
            id: caller
            params: {since: {type: string, default: "2026-03-04"}, other: x}
            tasks:
              - id: explicit
                type: trigger_dag
                dag_id: typed
                params: {batch_size: 9, since: "2026-05-06"}
              - {id: inherited, type: trigger_dag, dag_id: typed}
              - {id: bad, type: trigger_dag, dag_id: typed, params: {batch_size: 0}}
            """,
        }
    )
    run_id = nagare.trigger("caller")
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert (tasks["explicit"]["status"], tasks["inherited"]["status"]) == ("success", "success")
    assert tasks["bad"]["status"] == "failed"
    assert tasks["bad"]["message"] == (
        "cannot trigger 'typed': invalid parameters for DAG 'typed': batch_size: expected an "
        "integer from 1 to 10000, found the number 0; since: required, not given (expected a "
        "string matching ^\\d{4}-\\d{2}-\\d{2}$)"
    )
    children = nagare.get("/api/runs?dag_id=typed")["data"]
    params = sorted((c["params"]["batch_size"], c["params"]["since"]) for c in children)
    assert params == [(9, "2026-05-06"), (500, "2026-03-04")]  # inherited: declared names only


def signed(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_webhook_values_become_params_and_a_bad_payload_gets_422(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(
        dags={
            "hook.yaml": """\
            id: hook
            params:
              ref: {type: string, pattern: '^refs/'}
              size: {type: integer, minimum: 1}
              draft: {type: boolean, default: false}
            trigger:
              type: webhook
              path: /api/webhooks/hook
              extract_payload: {ref: .ref, size: .size, draft: .draft}
            tasks: [{id: t, command: 'echo $ref $size $draft'}]
            """
        }
    )
    bad = nagare.call("POST", "/api/webhooks/hook", {"ref": "main", "size": "x"})
    assert bad.status == 422, bad.body
    assert bad.json["error"]["code"] == "invalid_params"
    assert [d["param"] for d in bad.json["error"]["details"]] == ["ref", "size"]
    assert nagare.get("/api/runs")["total"] == 0
    good = nagare.call("POST", "/api/webhooks/hook", {"ref": "refs/heads/main", "size": "12"})
    assert good.status == 202, good.body
    run_id = good.json["run_id"]
    assert nagare.get(f"/api/runs/{run_id}")["params"] == {
        "ref": "refs/heads/main",
        "size": 12,
        "draft": False,
    }
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.log(run_id, "t") == "refs/heads/main 12 false\n"


def exec_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nagare", "exec", str(ROOT / "dags" / "params_example.yaml"), *args],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_dags_example_runs_with_typed_cli_values(tmp_path: Path) -> None:
    result = exec_example(
        "-p", "since=2026-01-02", "-p", "batch_size=10", "-p", "dry_run=true",
        "-p", 'tables=["orders"]', "-p", 'filters={"country": "jp"}',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[load] region=eu since=2026-01-02 mode=incremental batch_size=10 dry_run=true" in (
        result.stdout
    )
    assert '[load] ratio=0.5 tables=["orders"] filters={"country":"jp"}' in result.stdout
    assert "[load] dry run: nothing loaded" in result.stdout
    result = exec_example("-p", "batch_size=0", "-p", "mode=all")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-3:] == [
        "  batch_size: expected an integer from 1 to 10000, found the number 0",
        '  mode: expected one of "full", "incremental", found the string "all"',
        "  since: required, not given (expected a string matching ^\\d{4}-\\d{2}-\\d{2}$)",
    ]


def test_the_trigger_command_converts_p_values_through_the_server(
    nagare_factory: NagareFactory,
) -> None:
    nagare = nagare_factory(dags={"typed.yaml": PARAMS_DAG})

    def trigger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nagare", "trigger", "typed", *args, "--api", nagare.url],
            env=pythonpath_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    result = trigger("-p", "batch_size=10", "-p", "since=2026-01-02", "-p", 'tables=["x"]')
    assert result.returncode == 0, result.stderr
    (run,) = nagare.get("/api/runs")["data"]
    assert (run["params"]["batch_size"], run["params"]["tables"]) == (10, ["x"])
    shown = subprocess.run(
        [sys.executable, "-m", "nagare", "run", run["run_id"], "--api", nagare.url],
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert 'Params:    {"region": "eu", "batch_size": 10' in shown.stdout, shown
    result = trigger("-p", "batch_size=ten")
    assert result.returncode == 1
    assert "batch_size: expected an integer from 1 to 10000, found 'ten'" in result.stderr
    assert "since: required, not given" in result.stderr


def test_a_database_of_the_previous_release_upgrades_and_its_runs_have_empty_params(
    tmp_path: Path,
) -> None:
    import sqlite3

    from nagare.store import Store
    from nagare.store.schema import MIGRATIONS

    mine = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN params" in m)
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:mine]:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version={mine}")
    conn.execute(
        "INSERT INTO runs(run_id, dag_id, status, trigger, execution_date, conf, dag_version, "
        "killed, created_at) VALUES ('old', 'd', 'success', 'manual', 1, ?, '', 0, 1)",
        ('{"K": "v"}',),
    )
    conn.commit()
    conn.close()
    store = Store(str(path))
    try:
        assert store.db.schema_version == len(MIGRATIONS)
        run = store.runs.get("old")
        assert run is not None and (run.conf, run.params) == ({"K": "v"}, {})
        dag = DagDef("d", (), params=DECLARED)
        new = store.runs.start(dag, Trigger.MANUAL, 5, {"since": "x"}, 5, {"since": "x", "n": 1})
        assert new is not None
        assert store.runs.get(new.run_id).params == {"since": "x", "n": 1}  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_trigger_params_example_starts_the_params_example_with_typed_values(
    nagare_factory: NagareFactory,
) -> None:
    names = ("params_example.yaml", "trigger_params_example.yaml")
    nagare = nagare_factory(dags={n: (ROOT / "dags" / n).read_text() for n in names})
    assert nagare.wait_run(nagare.trigger("nightly_loader"))["status"] == "success"
    child = wait_for(lambda: nagare.get("/api/runs?dag_id=params_example")["data"], 10)[0]
    assert nagare.wait_run(child["run_id"])["status"] == "success"
    assert child["params"] == {
        "REGION": "eu",
        "since": "2026-01-01",
        "batch_size": 250,
        "mode": "incremental",
        "dry_run": False,
        "ratio": 0.5,
        "tables": ["orders"],
        "filters": {},
    }
