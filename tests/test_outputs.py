"""Outputs, templates, the context and `when:` (workflow-language §1 and §3).

Pure parts first (jq templates and conditions, the output file format, the context and the
assignment of a task that uses them, in milliseconds), then DAG-file validation, then real
runs: a real server with real `sh -c` (local), a real `nagare worker` process (remote), a real
engine (Docker, skipped without one), a restart, and the dags/ example.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DOCKER_TEST_IMAGE,
    ROOT,
    Nagare,
    pythonpath_env,
    require_docker,
    wait_for,
)

from nagare.cluster.protocol import decode_outcome, encode_outcome
from nagare.dagfile import parse_dag
from nagare.engine.attempt_end import attempt_finish
from nagare.engine.context import (
    UpstreamRow,
    build_context,
    output_env,
    start_assignment,
    upstream_tasks,
)
from nagare.engine.expressions import ExpressionError, condition, render, template_errors
from nagare.engine.outputs import (
    MAX_VALUE_BYTES,
    OutputError,
    parse_output_file,
    with_outputs,
)
from nagare.executors.containers import container_spec
from nagare.models import (
    Assignment,
    Claim,
    DagDef,
    Outcome,
    Run,
    RunStatus,
    TaskInstance,
    TaskStatus,
    Trigger,
)
from nagare.patterns import has_template

# ---------------------------------------------------------------- templates and conditions

CONTEXT: dict[str, Any] = {
    "dag": {"id": "d"},
    "run": {"id": "r1", "trigger": "manual", "conf": {"K": "v"}},
    "params": {"mode": "full", "n": 3},
    "tasks": {"a": {"status": "success", "exit_code": 0, "outputs": {"X": "1", "L": ["a", None]}}},
    "item": {"name": "eu"},
    "index": 2,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("echo {{ .params.mode }}", "echo full"),
        ("n={{.params.n}}", "n=3"),
        ("{{ .tasks.a.outputs.X }}-{{ .index }}", "1-2"),
        ("{{ .tasks.a.outputs.L }}", '["a",null]'),
        ("{{ .item }}", '{"name":"eu"}'),
        ("{{ .item.name }}", "eu"),
        ("{{item}}", '{"name":"eu"}'),
        ("[{{ .params.missing }}]", "[]"),
        ("{{ .dag.id }}/{{ .run.id }}/{{ .run.conf.K }}", "d/r1/v"),
        ("{{ .params | keys }}", '["mode","n"]'),
        # not templates: left exactly as written
        ("docker ps --format '{{.Names}}'", "docker ps --format '{{.Names}}'"),
        ('helm {{ .Values.x }} {{ printf "%s" .a }}', 'helm {{ .Values.x }} {{ printf "%s" .a }}'),
        ("{{ .paramsx }} {{ .run_id }}", "{{ .paramsx }} {{ .run_id }}"),
        ("{{}} {{ }}", "{{}} {{ }}"),
        # the literal
        ('{{ "{{" }} .params.mode }}', "{{ .params.mode }}"),
    ],
)
def test_templates_render_only_context_expressions(text: str, expected: str) -> None:
    assert render(text, CONTEXT) == expected
    assert has_template(text) == (text != expected or "{{item}}" in text)


def test_a_template_that_fails_names_itself_and_jq_says_why() -> None:
    with pytest.raises(ExpressionError, match=r"template '\{\{ \.params\.n \| error \}\}' failed"):
        render("{{ .params.n | error }}", CONTEXT)
    with pytest.raises(ExpressionError, match="cannot be added"):
        render("{{ .params.mode + 1 }}", CONTEXT)
    assert template_errors("{{ .params.mode | }}")[0].startswith(
        "template '{{ .params.mode | }}' does not compile: syntax error"
    )
    assert template_errors("{{ .params.mode }} {{.Names}}") == []


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('.params.mode == "full"', True),
        ('.params.mode == "incremental"', False),
        (".params.nothing", False),  # null is false
        ("false", False),
        ("0", True),  # only false and null are false
        ('""', True),
        ('.tasks.a.status == "success" and (.tasks.a.outputs.X | tonumber) > 0', True),
        ("empty", False),
    ],
)
def test_conditions_are_false_only_for_false_and_null(expression: str, expected: bool) -> None:
    assert condition(expression, CONTEXT) is expected


# ---------------------------------------------------------------- the output file


def test_the_output_file_takes_lines_and_delimited_blocks() -> None:
    text = "A=1\nEMPTY=\nEQ=x=y\n\nMULTI<<EOF\nline 1\n\nline=3\nEOF\nA=2\r\nB<<END\nEND\n"
    assert parse_output_file(text) == {
        "A": "2",
        "EMPTY": "",
        "EQ": "x=y",
        "MULTI": "line 1\n\nline=3",
        "B": "",
    }
    assert parse_output_file("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1BAD=x\n", "line 1: '1BAD' is not a valid output name"),
        ("A-B=x\n", "'A-B' is not a valid output name"),
        ("just text\n", "line 1: expected NAME=value or NAME<<DELIMITER, found 'just text'"),
        ("X<<EOF\nnever closed\n", "'X<<EOF' is never closed"),
        ("X<<\n", "needs a delimiter"),
        ("".join(f"N{i}=v\n" for i in range(101)), "101 outputs; a task may publish at most 100"),
        ("BIG=" + "x" * (MAX_VALUE_BYTES + 1) + "\n", "output 'BIG' is 1048577 bytes"),
    ],
    ids=["digit", "dash", "text", "unclosed", "no-delimiter", "101-outputs", "too-large"],
)
def test_bad_output_files_are_refused_with_the_rule(text: str, message: str) -> None:
    with pytest.raises(OutputError) as caught:
        parse_output_file(text)
    assert message in str(caught.value)


def test_only_a_successful_attempt_publishes_and_a_bad_file_fails_it() -> None:
    ok = Outcome(exit_code=0)
    assert with_outputs(ok, "A=1\n", "OUT", "hello\n", False).outputs == {"A": "1", "OUT": "hello"}
    assert with_outputs(ok, None, "", None, False).outputs is None
    assert with_outputs(Outcome(exit_code=1), "A=1\n", "", None, False).outputs is None
    failed = with_outputs(ok, "bad line\n", "", None, False)
    assert not failed.succeeded
    assert failed.error.startswith("outputs: line 1: expected NAME=value")
    cut = with_outputs(ok, None, "OUT", None, True)
    assert cut.error == "outputs: output 'OUT' (the task's stdout) is larger than 1 MiB"
    too_big = with_outputs(ok, None, "OUT", "x" * (MAX_VALUE_BYTES + 1), False)
    assert "output 'OUT' is 1048577 bytes" in too_big.error


def test_outputs_cross_the_cluster_protocol_and_bad_ones_fail_the_task() -> None:
    sent = Outcome(exit_code=0, outputs={"A": "1", "B": "two\nlines"})
    assert decode_outcome(json.loads(json.dumps(encode_outcome(sent)))).outputs == sent.outputs
    assert "outputs" not in encode_outcome(Outcome(exit_code=0))
    for bad, message in [
        ({"1X": "v"}, "'1X' is not a valid output name"),
        ({"A": 1}, "expected an object of names to strings"),
        ("A=1", "expected an object of names to strings"),
    ]:
        outcome = decode_outcome({"exit_code": 0, "outputs": bad})
        assert not outcome.succeeded and message in outcome.error, outcome


# ---------------------------------------------------------------- context and assignment

DAG_TEXT = """
id: ctx
env: {SHARED: dag}
tasks:
  - {id: a, command: "true"}
  - {id: b, command: "true", depends_on: [a]}
  - {id: side, command: "true"}
  - {id: m, type: map, map_over: b, command: "echo {{item}}"}
  - id: c
    depends_on: [m]
    command: "echo {{ .tasks.b.outputs.V }} {{ .params.p }}"
    env: {OWN: "{{ .run.trigger }}", SHARED: task}
  - {id: w, depends_on: [a], when: .tasks.a.outputs.GO == "yes", command: "true"}
  - {id: bad, depends_on: [a], when: .tasks.a.outputs.GO | error, command: "true"}
  - {id: plain, depends_on: [a], command: "echo $V"}
"""


def _dag() -> DagDef:
    dag, errors = parse_dag(DAG_TEXT, "ctx.yaml")
    assert dag is not None, errors
    return dag


def _claim(dag: DagDef, task_id: str, has_outputs: bool = True, **kw: Any) -> Claim:
    run = Run(
        "r1", "ctx", RunStatus.RUNNING, Trigger.MANUAL, 0, {"p": "P"}, 0, has_outputs=has_outputs
    )
    task = TaskInstance(
        id="i-" + task_id,
        run_id="r1",
        task_id=task_id,
        base_task_id=task_id,
        status=TaskStatus.RUNNING,
        command=dag.task(task_id).command,
        **kw,
    )  # type: ignore[union-attr]
    return Claim(task, run, 1, dag)


ROWS = [
    UpstreamRow("a", "a", None, "success", 0, {"GO": "yes", "V": "from-a", "A_ONLY": "1"}),
    UpstreamRow("b", "b", None, "success", 0, {"V": "from-b"}),
    UpstreamRow("side", "side", None, "success", 0, {"SIDE": "not upstream"}),
    UpstreamRow("m", "m", None, "success", None, None),
    UpstreamRow("m[1]", "m", 1, "success", 0, {"R": "1"}),
    UpstreamRow("m[0]", "m", 0, "success", 0, {"R": "0", "ONLY0": "x"}),
    UpstreamRow("m[2]", "m", 2, "success", 0, None),
]


def test_the_context_holds_upstream_tasks_only_and_map_outputs_as_lists() -> None:
    dag = _dag()
    tasks = upstream_tasks(dag, "c", ROWS)
    assert sorted(tasks) == ["a", "b", "m"]  # transitively; `side` is no upstream of c
    assert tasks["m"]["outputs"] == {"R": ["0", "1", None], "ONLY0": ["x", None, None]}
    context = build_context(dag, _claim(dag, "c"), dag.task("c"), tasks)  # type: ignore[arg-type]
    assert context["dag"] == {"id": "ctx"}
    assert context["run"]["id"] == "r1" and context["run"]["trigger"] == "manual"
    assert context["run"]["scheduled_time"] is None
    assert context["params"] == {"p": "P"}
    assert context["item"] is None and context["index"] is None


def test_params_of_the_context_are_the_typed_run_parameters_else_the_conf() -> None:
    dag = _dag()
    claim = _claim(dag, "c")
    typed = replace(claim, run=replace(claim.run, params={"n": 10, "on": True}))
    context = build_context(dag, typed, dag.task("c"), {})  # type: ignore[arg-type]
    assert context["params"] == {"n": 10, "on": True}  # typed, not their environment text
    assert render("{{ .params.n + 1 }}", context) == "11"


def test_nearest_upstream_wins_a_clash_of_output_names() -> None:
    dag = _dag()
    env = output_env(dag, "c", upstream_tasks(dag, "c", ROWS))
    assert env["V"] == "from-b"  # b is nearer to c than a
    assert env["A_ONLY"] == "1"
    assert env["R"] == '["0","1",null]'
    assert "SIDE" not in env


def test_a_started_task_gets_outputs_before_its_own_env_and_rendered_templates() -> None:
    dag = _dag()
    assignment = start_assignment(_claim(dag, "c"), dag.task("c"), {}, ROWS)  # type: ignore[arg-type]
    assert isinstance(assignment, Assignment)
    assert assignment.command == "echo from-b P"
    assert assignment.env["OWN"] == "manual"
    assert assignment.env["SHARED"] == "task"  # task env after outputs after DAG env
    assert assignment.env["V"] == "from-b"


def test_when_false_skips_with_the_reason_and_an_error_fails_with_jqs_message() -> None:
    dag = _dag()
    rows = [UpstreamRow("a", "a", None, "success", 0, {"GO": "no"})]
    skipped = start_assignment(_claim(dag, "w"), dag.task("w"), {}, rows)  # type: ignore[arg-type]
    assert isinstance(skipped, Outcome)
    assert skipped.skipped == 'when: .tasks.a.outputs.GO == "yes" was false'
    finish = attempt_finish(_claim(dag, "w"), skipped, 5)
    assert finish.status is TaskStatus.SKIPPED and finish.message == skipped.skipped
    runs = start_assignment(_claim(dag, "w"), dag.task("w"), {}, ROWS)  # type: ignore[arg-type]
    assert isinstance(runs, Assignment)
    failed = start_assignment(_claim(dag, "bad"), dag.task("bad"), {}, ROWS)  # type: ignore[arg-type]
    assert isinstance(failed, Outcome) and failed.error == "when: .tasks.a.outputs.GO | error: yes"
    assert attempt_finish(_claim(dag, "bad"), failed, 5).status is TaskStatus.FAILED


def test_a_task_without_templates_or_upstream_outputs_needs_no_context() -> None:
    dag = _dag()
    assert not dag.task("plain").uses_context  # type: ignore[union-attr]
    assert not dag.task("m").uses_context  # type: ignore[union-attr]  # only {{item}}
    bare = start_assignment(_claim(dag, "plain", has_outputs=False), dag.task("plain"), {}, None)  # type: ignore[arg-type]
    assert isinstance(bare, Assignment) and "V" not in bare.env


def test_a_map_child_sees_its_item_and_index() -> None:
    text = """
    id: mi
    tasks:
      - {id: src, command: "echo '[]'"}
      - {id: m, type: map, map_over: src, command: "echo {{ .item.n }}-{{ .index }}-{{item}}"}
      - {id: w, with_items: [x, y], command: "echo {{ .item }}"}
    """
    dag, errors = parse_dag(text, "mi.yaml")
    assert dag is not None, errors
    claim = _claim(dag, "m", map_index=3, item='{"n": 7}')
    claim.task.base_task_id = "m"
    claim.task.command = 'echo {{ .item.n }}-{{ .index }}-{"n":7}'
    out = start_assignment(claim, dag.task("m"), {}, [])  # type: ignore[arg-type]
    assert isinstance(out, Assignment) and out.command == 'echo 7-3-{"n":7}'
    clone = _claim(dag, "w_y")
    out = start_assignment(clone, dag.task("w_y"), {}, [])  # type: ignore[arg-type]
    assert isinstance(out, Assignment) and out.command == "echo y"


def test_a_container_task_writes_its_outputs_to_a_mounted_per_attempt_folder() -> None:
    assignment = Assignment(
        "i",
        "r",
        "d",
        "t",
        1,
        "true",
        {"NAGARE_OUTPUT": "/host/logs/i.1.outputs"},
        image="busybox",
        output_file="/host/logs/i.1.outputs",
    )
    spec = container_spec(assignment)
    assert spec.environment["NAGARE_OUTPUT"] == "/nagare/output/outputs"
    assert "/host/logs/i.1.outputs.d:/nagare/output:rw" in spec.host_config["Binds"]


# ---------------------------------------------------------------- validation at load


@pytest.mark.parametrize(
    ("task", "field", "message"),
    [
        (
            "{id: a, command: x, when: '.params.a ==' }",
            "a.when",
            "jq condition '.params.a ==' does not compile: syntax error",
        ),
        ("{id: a, command: x, when: ''}", "a.when", "expected a jq condition, found nothing"),
        (
            "{id: a, command: 'echo {{ .params | }}'}",
            "a.command",
            "template '{{ .params | }}' does not compile",
        ),
        ("{id: a, command: x, env: {V: '{{ .run.id | nope }}'}}", "a.env.V", "does not compile"),
        ("{id: a, command: x, output: 9lives}", "a.output", "'9lives' is not a valid output name"),
        (
            "{id: a, type: trigger_dag, dag_id: b, output: X}",
            "a.output",
            "'output' cannot be used with type 'trigger_dag'",
        ),
        ("{id: a, command: x, wehn: .x}", "a.wehn", "unknown key 'wehn'; did you mean 'when'?"),
    ],
)
def test_new_fields_are_validated_at_load_with_line_and_field(
    task: str, field: str, message: str
) -> None:
    dag, errors = parse_dag(f"id: v\ntasks:\n  - {task}\n", "v.yaml")
    assert dag is None
    found = [e for e in errors if message in e.message]
    assert found, errors
    assert found[0].field.replace("tasks[0] (a)", "a") == field, found[0]
    assert found[0].line == 3 and str(found[0]).startswith("v.yaml:3: ")


def test_other_tools_braces_load_and_stay_as_written() -> None:
    dag, errors = parse_dag(
        "id: v\ntasks:\n"
        "  - {id: a, command: \"docker ps --format '{{.Names}}' {{ .Values | x }}\"}\n",
        "v.yaml",
    )
    assert dag is not None, errors
    assert not dag.task("a").uses_context  # type: ignore[union-attr]


# ---------------------------------------------------------------- real runs

PIPELINE = """
id: pipe
tasks:
  - id: a
    command: |
      echo "COUNT=3" >> "$NAGARE_OUTPUT"
      printf 'NOTE<<EOF\\nl1\\nl2\\nEOF\\n' >> "$NAGARE_OUTPUT"
  - id: b
    depends_on: [a]
    output: GREETING
    command: echo "hello $COUNT"
  - id: c
    depends_on: [b]
    command: echo "got $GREETING/{{ .tasks.a.outputs.NOTE }}/{{ .tasks.b.status }}"
  - id: unrelated
    command: echo "V=$COUNT" >> "$NAGARE_OUTPUT"
  - id: skip_me
    depends_on: [a]
    when: .tasks.a.outputs.COUNT == "4"
    command: echo never
"""


def test_outputs_travel_downstream_as_env_and_context(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(dags={"pipe.yaml": PIPELINE})
    run_id = nagare.trigger("pipe")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = nagare.tasks(run_id)
    assert tasks["a"]["outputs"] == {"COUNT": "3", "NOTE": "l1\nl2"}
    assert tasks["b"]["outputs"] == {"GREETING": "hello 3"}
    assert "got hello 3/l1\nl2/success" in nagare.log(run_id, "c")
    assert tasks["unrelated"]["outputs"] == {"V": ""}  # a is not its upstream
    assert tasks["skip_me"]["status"] == "skipped"
    assert tasks["skip_me"]["message"] == 'when: .tasks.a.outputs.COUNT == "4" was false'
    assert tasks["c"]["outputs"] == {}


def test_bad_outputs_and_failing_templates_fail_only_their_task(
    nagare_factory: Callable[..., Nagare],
) -> None:
    dag = """
    id: bad
    tasks:
      - {id: junk, command: "echo 'not an output' >> $NAGARE_OUTPUT"}
      - id: big
        command: "head -c 1100000 /dev/zero | tr '\\\\0' x | sed 's/^/X=/' >> $NAGARE_OUTPUT"
      - {id: failed_attempt, command: "echo A=1 >> $NAGARE_OUTPUT; exit 3"}
      - {id: tmpl, command: "echo {{ .params.x | error }}"}
      - {id: fine, command: "echo ok"}
    """
    nagare = nagare_factory(dags={"bad.yaml": dag})
    run_id = nagare.trigger("bad", {"x": "boom"})
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["junk"]["status"] == "failed"
    assert tasks["junk"]["message"].startswith("outputs: line 1: expected NAME=value")
    assert tasks["big"]["status"] == "failed"
    assert "output 'X' is 1100000 bytes; a value may hold at most 1 MiB" in tasks["big"]["message"]
    assert tasks["failed_attempt"]["outputs"] == {}  # only a successful attempt publishes
    assert tasks["tmpl"]["status"] == "failed"
    assert tasks["tmpl"]["message"] == "template '{{ .params.x | error }}' failed: boom"
    assert "[nagare] template '{{ .params.x | error }}' failed: boom" in nagare.log(run_id, "tmpl")
    assert tasks["fine"]["status"] == "success"


def test_the_example_dag_runs_with_list_outputs_for_the_reduce_step(
    nagare_factory: Callable[..., Nagare],
) -> None:
    text = (ROOT / "dags" / "outputs_example.yaml").read_text()
    nagare = nagare_factory(dags={"outputs_example.yaml": text})
    run_id = nagare.trigger("outputs_example")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = nagare.tasks(run_id)
    assert tasks["extract"]["outputs"]["SOURCE"] == f"orders-{run_id}"
    assert tasks["list_regions"]["outputs"] == {"REGIONS": '["eu", "us", "apac"]'}
    assert tasks["per_region"]["outputs"] == {"TOTAL": ["20", "20", "40"]}
    assert nagare.task(run_id, "per_region")["outputs"] == {"TOTAL": ["20", "20", "40"]}
    assert f"region us of 3 rows from orders-{run_id}" in nagare.log(run_id, "per_region[1]")
    reduce_log = nagare.log(run_id, "reduce")
    assert 'totals: ["20","20","40"]' in reduce_log and "sum: 80" in reduce_log
    assert tasks["reduce"]["outputs"] == {"GRAND_TOTAL": "80"}
    assert tasks["big_day"]["status"] == "skipped"
    assert "grand total 80; first line\nsecond line" in nagare.log(run_id, "report")


def test_outputs_survive_a_restart(nagare_factory: Callable[..., Nagare], tmp_path: Path) -> None:
    dags = {"r.yaml": "id: r\ntasks:\n  - {id: a, command: 'echo K=v >> $NAGARE_OUTPUT'}\n"}
    first = nagare_factory(dags=dags, root=tmp_path / "srv")
    run_id = first.trigger("r")
    first.wait_run(run_id)
    first.app.stop()
    again = nagare_factory(root=tmp_path / "srv")
    assert again.task(run_id, "a")["outputs"] == {"K": "v"}


def test_a_remote_worker_ships_its_tasks_outputs(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    dag = """
    id: remote_out
    tasks:
      - {id: a, pool: far, command: "echo A=from-worker >> $NAGARE_OUTPUT"}
      - {id: b, pool: far, depends_on: [a], output: B, command: "echo b-$A"}
      - {id: c, depends_on: [b], command: "echo {{ .tasks.b.outputs.B }}/$A"}
      - {id: w, pool: far, depends_on: [a], when: .tasks.a.outputs.A == "x", command: "true"}
    """
    nagare = nagare_factory(dags={"r.yaml": dag}, worker_pools={"far": 0})
    home = tmp_path / "worker"
    home.mkdir()
    with open(home / "out.log", "wb") as sink:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nagare",
                "worker",
                "--join",
                nagare.url,
                "--pools",
                "far",
                "--worker-id",
                "w1",
            ],
            cwd=home,
            env=pythonpath_env(),
            stdout=sink,
            stderr=sink,
        )
    try:
        run_id = nagare.trigger("remote_out")
        run = nagare.wait_run(run_id, timeout=30)
        tasks = nagare.tasks(run_id)
        assert run["status"] == "success", (tasks, (home / "out.log").read_text())
        assert tasks["a"]["worker"] == "w1"
        assert tasks["a"]["outputs"] == {"A": "from-worker"}
        assert tasks["b"]["outputs"] == {"B": "b-from-worker"}
        assert "b-from-worker/from-worker" in nagare.log(run_id, "c")
        assert tasks["w"]["status"] == "skipped"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


def test_a_docker_task_publishes_outputs_through_its_mounted_folder(
    nagare_factory: Callable[..., Nagare],
) -> None:
    require_docker()
    dag = f"""
    id: boxed
    tasks:
      - {{id: a, image: {DOCKER_TEST_IMAGE}, command: "echo IN=$NAGARE_OUTPUT >> $NAGARE_OUTPUT"}}
      - {{id: b, image: {DOCKER_TEST_IMAGE}, depends_on: [a], output: SEEN, command: "echo $IN"}}
    """
    nagare = nagare_factory(dags={"boxed.yaml": dag})
    run_id = nagare.trigger("boxed")
    assert nagare.wait_run(run_id, timeout=60)["status"] == "success", nagare.tasks(run_id)
    tasks = nagare.tasks(run_id)
    assert tasks["a"]["outputs"] == {"IN": "/nagare/output/outputs"}
    assert tasks["b"]["outputs"] == {"SEEN": "/nagare/output/outputs"}
    leftovers = [p for p in (nagare.root / "logs").rglob("*.outputs.d")]
    assert leftovers == []


def test_tasks_without_outputs_leave_no_output_file(nagare_factory: Callable[..., Nagare]) -> None:
    nagare = nagare_factory(dags={"q.yaml": "id: q\ntasks:\n  - {id: a, command: 'true'}\n"})
    run_id = nagare.trigger("q")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert not list((nagare.root / "logs").rglob("*.outputs"))
    wait_for(lambda: True)
    assert os.path.isdir(nagare.root / "logs" / run_id)


def test_when_on_a_map_task_filters_its_items(nagare_factory: Callable[..., Nagare]) -> None:
    dag = """
    id: filter
    tasks:
      - {id: src, command: "echo '[1, 2, 3, 4]'"}
      - id: even
        type: map
        map_over: src
        when: .item % 2 == 0
        command: echo "N={{ .item }}" >> "$NAGARE_OUTPUT"
      - {id: total, depends_on: [even], command: "echo N=$N"}
    """
    nagare = nagare_factory(dags={"filter.yaml": dag})
    run_id = nagare.trigger("filter")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = nagare.tasks(run_id)
    assert [tasks[f"even[{i}]"]["status"] for i in range(4)] == [
        "skipped",
        "success",
        "skipped",
        "success",
    ]
    assert tasks["even"]["outputs"] == {"N": [None, "2", None, "4"]}
    assert 'N=[null,"2",null,"4"]' in nagare.log(run_id, "total")
