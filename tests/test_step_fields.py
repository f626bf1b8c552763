"""The step types' seam: their fields are read and checked at load (file:line:field, what was
found and what was expected), kept in the stored DAG version, rendered when the task starts, and
choose the executor; `nagare dry` says what each step does. Pure and fast: no server."""

from __future__ import annotations

from typing import Any

import pytest

from nagare.dagfile import dag_from_json, dag_to_json, parse_dag
from nagare.engine.context import render_step
from nagare.engine.plan import dry_plan, plan_text
from nagare.executors import Unavailable
from nagare.executors.reactor import Reactor
from nagare.models import (
    EXECUTOR_STEPS,
    WAIT_POOL,
    WAITING_STEPS,
    Assignment,
    Outcome,
    TaskType,
)


def _load(task: str) -> tuple[Any, list[str]]:
    dag, errors = parse_dag(f"id: d\ntasks:\n{task}", "d.yaml")
    return dag, [str(e) for e in errors]


def _errors(task: str) -> list[str]:
    return _load(task)[1]


HTTP = """  - id: call
    type: http
    method: POST
    url: "https://example.invalid/{{ .params.path }}"
    headers: {Authorization: "Bearer ${TOKEN}"}
    json: {a: 1, b: [true, "x"]}
    expect_status: [200, "2xx"]
    output_jq: {id: .id}
    timeout_seconds: 5
"""


def test_a_step_s_fields_land_in_its_step_and_survive_the_stored_version() -> None:
    dag, errors = _load(HTTP)
    assert errors == []
    task = dag.task("call")
    assert task.type is TaskType.HTTP
    assert task.step == {
        "method": "POST",
        "url": "https://example.invalid/{{ .params.path }}",
        "headers": {"Authorization": "Bearer ${TOKEN}"},
        "json": {"a": 1, "b": [True, "x"]},
        "expect_status": ["200", "2xx"],
        "output_jq": {"id": ".id"},
    }
    assert "step" in task.templated
    again = dag_from_json(dag_to_json(dag)).task("call")
    assert again is not None
    assert again.step == task.step and again.type is TaskType.HTTP


def test_a_command_task_stores_no_step_so_old_versions_keep_their_digest() -> None:
    dag, _ = _load("  - id: a\n    command: echo hi\n")
    assert '"step"' not in dag_to_json(dag)


def test_templates_of_a_step_render_but_its_jq_fields_stay_as_written() -> None:
    dag, _ = _load(HTTP)
    step = render_step(dag.task("call").step, {"params": {"path": "v1/items"}})
    assert step["url"] == "https://example.invalid/v1/items"
    assert step["output_jq"] == {"id": ".id"}
    assert step["headers"] == {"Authorization": "Bearer ${TOKEN}"}  # ${NAME}: the executor's


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            "  - id: a\n    command: echo\n    url: http://x\n",
            "d.yaml:5: tasks[0] (a).url: 'url' is only valid with type: http "
            "(this task is command)",
        ),
        (
            "  - id: a\n    type: http\n",
            "'url' is required for type 'http' (the URL to call)",
        ),
        (
            "  - id: a\n    type: http\n    url: ftp://x\n",
            "expected an http:// or https:// URL, found 'ftp://x'",
        ),
        (
            "  - id: a\n    type: http\n    url: http://x\n    body: b\n    json: {}\n",
            "give either 'body' or 'json', not both",
        ),
        (
            "  - id: a\n    type: http\n    url: http://x\n    expect_status: 700\n",
            "expected an HTTP status such as 200 or a class such as 2xx, found '700'",
        ),
        (
            "  - id: a\n    type: http\n    url: http://x\n    output_jq: {x: '.[['}\n",
            "jq expression '.[[' does not compile",
        ),
        (
            "  - id: a\n    type: http\n    url: http://x\n    output_jq: {1x: .a}\n",
            "'1x' is not a valid output name",
        ),
        ("  - id: a\n    type: mail\n    subject: s\n", "'to' is required for type 'mail'"),
        ("  - id: a\n    type: ssh\n    command: ls\n", "'host' is required for type 'ssh'"),
        ("  - id: a\n    type: ssh\n    host: h\n", "'command' is required for type 'ssh'"),
        (
            "  - id: a\n    type: ssh\n    host: h\n    command: ls\n    port: 70000\n",
            "expected a port number 1-65535, found 70000",
        ),
        (
            "  - id: a\n    type: chat\n    provider: google\n    model: m\n"
            "    messages: [{role: user, content: hi}]\n",
            "unknown provider 'google' (expected openai or anthropic)",
        ),
        (
            "  - id: a\n    type: chat\n    provider: openai\n    model: m\n"
            "    messages: [{role: robot, content: hi}]\n",
            "expected system, user or assistant, found 'robot'",
        ),
        ("  - id: a\n    type: wait\n", "'event' is required for type 'wait'"),
        (
            "  - id: a\n    type: wait\n    event: e\n    match: '.a =='\n",
            "jq condition '.a ==' does not compile",
        ),
        ("  - id: a\n    type: dag\n", "'dag_id' is required for type 'dag' (the DAG to call)"),
        (
            "  - id: a\n    type: approval\n    command: echo\n",
            "'command' cannot be used with type 'approval' (it runs no command here)",
        ),
        (
            "  - id: a\n    type: http\n    url: http://x\n    image: alpine\n",
            "'image' cannot be used with type 'http'",
        ),
        (
            "  - id: a\n    command: echo\n    dag_id: other\n",
            "'dag_id' is only valid with type: trigger_dag or dag",
        ),
        ("  - id: a\n    type: sftp\n", "unknown type 'sftp'"),
    ],
)
def test_bad_step_fields_say_where_what_and_what_was_expected(task: str, expected: str) -> None:
    errors = _errors(task)
    assert any(expected in e for e in errors), errors


def test_an_unknown_key_is_suggested_from_the_keys_of_the_task_s_own_type() -> None:
    errors = _errors("  - id: a\n    command: echo\n    catchup: 1\n")
    assert "did you mean" not in errors[0] and "(known:" in errors[0]  # not "match" (wait)
    errors = _errors("  - id: a\n    type: http\n    url: http://x\n    header: {}\n")
    assert "did you mean 'headers'?" in errors[0]


def test_every_step_type_can_be_a_handler_but_a_map_or_trigger_dag_cannot() -> None:
    text = (
        "id: d\ntasks: [{id: a, command: 'true'}]\nhandler_on:\n"
        "  failure: {type: approval, message: 'failed: ok?'}\n"
        "  exit: {type: http, url: 'http://127.0.0.1:1/'}\n"
    )
    dag, errors = parse_dag(text, "d.yaml")
    assert errors == [] and dag is not None
    assert [t.type for t in dag.handler_on.values()] == [TaskType.APPROVAL, TaskType.HTTP]
    _, errors = parse_dag(text.replace("type: http", "type: map"), "d.yaml")
    assert "not map" in str(errors[0])


def test_steps_that_wait_are_in_no_pool_a_slot_serves() -> None:
    dag, _ = _load("  - id: a\n    type: approval\n  - id: b\n    type: http\n    url: http://x\n")
    assert dag.task("a").instance_pool == WAIT_POOL
    assert dag.task("b").instance_pool == "default"
    assert not WAITING_STEPS & EXECUTOR_STEPS


def test_dry_says_what_each_step_does() -> None:
    dag, errors = _load(
        HTTP
        + "  - id: ask\n    type: approval\n    message: go?\n"
        + "  - id: sub\n    type: dag\n    dag_id: other\n"
        + "  - id: ev\n    type: wait\n    event: done\n"
        + "  - id: tell\n    type: mail\n    to: a@example.invalid\n    subject: hi\n"
        + "  - id: far\n    type: ssh\n    host: h\n    user: u\n    port: 22\n    command: ls\n"
        + "  - id: ai\n    type: chat\n    provider: openai\n    model: m\n"
        + "    messages: [{role: user, content: hi}]\n"
    )
    assert errors == []
    text = plan_text(dag, {}, dry_plan(dag, {}))
    for expected in (
        "note: POST https://example.invalid/{{ .params.path }}",
        "ask  [approval, pool -, in the engine, no slot]",
        "note: waits for an approval: go?",
        "note: calls DAG 'other' and waits for its run",
        "note: waits for the event 'done'",
        "note: mail to a@example.invalid: hi",
        "note: runs the command on u@h:22 over ssh",
        "note: asks openai model m",
    ):
        assert expected in text, text


def test_a_step_type_this_process_cannot_run_fails_its_attempt_saying_so() -> None:
    reactor = Reactor()
    ended: list[Outcome] = []

    class Listener:
        def line(self, stream: str, text: str) -> None: ...

        def started(self, pid: int, start_time: float) -> None: ...

        def ended(self, outcome: Outcome) -> None:
            ended.append(outcome)

    assignment = Assignment("i", "r", "d", "t", 1, "", {}, step_type="teleport")
    Unavailable(reactor, "teleport").start(assignment, Listener())
    assert ended == []  # never from inside start
    reactor.run_once(0)
    assert ended[0].error == "step type 'teleport' is not supported by this Nagare"


def test_a_step_that_waits_is_planned_to_wait_not_to_queue() -> None:
    from nagare.engine.next_steps import plan_run
    from nagare.models import TaskState, TaskStatus

    dag, _ = _load("  - id: a\n    type: approval\n  - id: b\n    command: x\n    depends_on: a\n")
    states = [
        TaskState("1", "r", "a", TaskStatus.PENDING, WAIT_POOL, 0),
        TaskState("2", "r", "b", TaskStatus.PENDING, "default", 1),
    ]
    plan = plan_run(dag, dag.order, states, {}, False)
    assert [t.task_id for t in plan.wait] == ["a"] and plan.queue == []
    waiting = [states[0]._replace(status=TaskStatus.WAITING), states[1]]
    plan = plan_run(dag, dag.order, waiting, {}, False)
    assert plan.empty  # b waits; the run is not over


@pytest.mark.parametrize(
    ("wait", "payload", "expected"),
    [
        ({"match": ".payload.id == 1"}, {"id": 2}, None),
        ({"match": ".payload.id == .params.id"}, {"id": 1}, Outcome(exit_code=0)),
        ({"output_jq": {"n": ".n", "gone": ".x.y"}}, {"n": 5}, {"n": "5", "gone": ""}),
        ({"match": ".payload | .[0]"}, {"a": 1}, "match: .payload | .[0]: "),
        ({"output_jq": {"n": ".[0]"}}, {"a": 1}, "output_jq.n: .[0]: "),
        ({}, "not an object", Outcome(exit_code=0)),
    ],
)
def test_an_event_ends_a_wait_step_when_its_match_holds(
    wait: dict[str, Any], payload: Any, expected: Any
) -> None:
    from nagare.waits import _event_outcome

    wait = {"context": {"params": {"id": 1}}, **wait}
    outcome = _event_outcome(wait, "e", payload)
    if expected is None or isinstance(expected, Outcome):
        assert outcome == expected
    elif isinstance(expected, dict):
        assert outcome is not None and outcome.outputs == expected
    else:
        assert outcome is not None and outcome.error.startswith(expected), outcome
