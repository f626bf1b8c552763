"""Conditions and failure handling (workflow language §4): the trigger-rule table as one pure
function (exhaustively, and as a property against an oracle), the retry policy and allowed
failures (`attempt_finish`), preconditions as a real shell prefix, planning with rules and
allowed failures, load-time validation, and the two dags/ examples run by a real server."""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare
from hypothesis import given, settings
from hypothesis import strategies as st
from planting import undo_migration_11

from nagare.dagfile import dag_from_json, dag_to_json, parse_dag
from nagare.engine.attempt_end import attempt_finish
from nagare.engine.conditions import (
    PRECONDITION_EXIT,
    Verdict,
    failure_allowed,
    precondition_reason,
    retry_delay_ms,
    retryable,
    trigger_verdict,
    with_preconditions,
)
from nagare.engine.expressions import condition
from nagare.engine.expressions import condition as condition_holds
from nagare.engine.next_steps import plan_run
from nagare.engine.run_gate import run_gate
from nagare.models import (
    AllowFailure,
    AttemptMetrics,
    Claim,
    DagDef,
    Outcome,
    Run,
    RunStatus,
    TaskDef,
    TaskInstance,
    TaskStatus,
    Trigger,
    TriggerRule,
)
from nagare.store import Store
from nagare.store.schema import MIGRATIONS

ROOT = Path(__file__).resolve().parents[1]
S = TaskStatus
R = TriggerRule
V = Verdict
ENDED = (S.SUCCESS, S.FAILED, S.UPSTREAM_FAILED, S.CANCELLED, S.SKIPPED)
ACTIVE = (S.PENDING, S.QUEUED, S.RUNNING, S.UP_FOR_RETRY)

# ---------------------------------------------------------------- the trigger-rule table


def table(rule: TriggerRule, ended: tuple[TaskStatus, ...]) -> Verdict:
    """The spec's table, read literally, for upstream tasks that have all ended."""
    ok = {S.SUCCESS}
    failed = {S.FAILED, S.UPSTREAM_FAILED}
    bad = failed | {S.CANCELLED}
    if rule is R.ALL_SUCCESS:
        if all(s in ok for s in ended):
            return V.RUN
        return V.UPSTREAM_FAILED if any(s in bad for s in ended) else V.SKIP
    if rule is R.ALL_DONE:
        return V.RUN
    if rule is R.ALL_FAILED:
        return V.RUN if all(s in failed for s in ended) else V.SKIP
    if rule is R.ONE_SUCCESS:
        return V.RUN if any(s in ok for s in ended) else V.UPSTREAM_FAILED
    if rule is R.ONE_FAILED:
        return V.RUN if any(s in failed for s in ended) else V.SKIP
    if rule is R.NONE_FAILED:
        return V.RUN if all(s in (S.SUCCESS, S.SKIPPED) for s in ended) else V.UPSTREAM_FAILED
    if any(s in bad for s in ended):  # none_failed_min_one_success
        return V.UPSTREAM_FAILED
    return V.RUN if any(s in ok for s in ended) else V.SKIP


def oracle(rule: TriggerRule, states: tuple[TaskStatus, ...]) -> Verdict:
    """With upstream tasks still active: a verdict is given as soon as every way they could
    end gives the same one (all_done alone waits for every end, by its name)."""
    waiting = [i for i, s in enumerate(states) if s not in ENDED]
    if not waiting:
        return table(rule, states)
    if rule is R.ALL_DONE:
        return V.WAIT
    outcomes = set()
    for ends in itertools.product(ENDED, repeat=len(waiting)):
        filled = list(states)
        for index, end in zip(waiting, ends, strict=True):
            filled[index] = end
        outcomes.add(table(rule, tuple(filled)))
    return outcomes.pop() if len(outcomes) == 1 else V.WAIT


SPEC_ROWS = [
    (R.ALL_SUCCESS, (S.SUCCESS, S.SUCCESS), V.RUN),
    (R.ALL_SUCCESS, (S.SUCCESS, S.FAILED), V.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, (S.SKIPPED, S.CANCELLED), V.UPSTREAM_FAILED),
    (R.ALL_SUCCESS, (S.SUCCESS, S.SKIPPED), V.SKIP),
    (R.ALL_SUCCESS, (S.RUNNING, S.FAILED), V.UPSTREAM_FAILED),
    (R.ALL_DONE, (S.FAILED, S.CANCELLED, S.SKIPPED), V.RUN),
    (R.ALL_DONE, (S.FAILED, S.RUNNING), V.WAIT),
    (R.ALL_FAILED, (S.FAILED, S.UPSTREAM_FAILED), V.RUN),
    (R.ALL_FAILED, (S.FAILED, S.SUCCESS), V.SKIP),
    (R.ALL_FAILED, (S.SUCCESS, S.RUNNING), V.SKIP),
    (R.ONE_SUCCESS, (S.SUCCESS, S.RUNNING), V.RUN),
    (R.ONE_SUCCESS, (S.FAILED, S.SKIPPED), V.UPSTREAM_FAILED),
    (R.ONE_FAILED, (S.FAILED, S.RUNNING), V.RUN),
    (R.ONE_FAILED, (S.SUCCESS, S.SKIPPED), V.SKIP),
    (R.NONE_FAILED, (S.SUCCESS, S.SKIPPED), V.RUN),
    (R.NONE_FAILED, (S.SUCCESS, S.UPSTREAM_FAILED), V.UPSTREAM_FAILED),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S.SKIPPED, S.SUCCESS), V.RUN),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S.SKIPPED, S.SKIPPED), V.SKIP),
    (R.NONE_FAILED_MIN_ONE_SUCCESS, (S.FAILED, S.SKIPPED), V.UPSTREAM_FAILED),
]


@pytest.mark.parametrize(("rule", "states", "expected"), SPEC_ROWS)
def test_the_rows_of_the_spec_table(
    rule: TriggerRule, states: tuple[TaskStatus, ...], expected: Verdict
) -> None:
    assert trigger_verdict(rule, states) is expected


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_every_combination_of_up_to_four_upstream_states(rule: TriggerRule) -> None:
    """Every ordered combination of 1-4 upstream states (every ended state and two active
    ones): 2,800 cases per rule."""
    states = (*ENDED, S.PENDING, S.RUNNING)
    for size in range(1, 5):
        for combo in itertools.product(states, repeat=size):
            assert trigger_verdict(rule, combo) is oracle(rule, combo), combo


@settings(max_examples=400, deadline=None, database=None)
@given(
    st.sampled_from(list(TriggerRule)),
    st.lists(st.sampled_from(list(TaskStatus)), min_size=1, max_size=12),
)
def test_a_verdict_is_final_and_matches_the_oracle(
    rule: TriggerRule, states: list[TaskStatus]
) -> None:
    """Any number of upstream tasks in any state (every active state included); a verdict other
    than WAIT never changes however the active tasks end, and the order does not matter."""
    combo = tuple(states)
    verdict = trigger_verdict(rule, combo)
    if sum(s not in ENDED for s in combo) <= 4:
        assert verdict is oracle(rule, combo)
    assert trigger_verdict(rule, tuple(reversed(combo))) is verdict
    if verdict is not V.WAIT:
        ended = tuple(S.FAILED if s not in ENDED else s for s in combo)
        assert trigger_verdict(rule, ended) is verdict
    if all(s in ENDED for s in combo):
        assert verdict is not V.WAIT


@pytest.mark.parametrize("rule", list(TriggerRule))
def test_a_task_without_upstream_tasks_runs(rule: TriggerRule) -> None:
    assert trigger_verdict(rule, ()) is V.RUN


# ---------------------------------------------------------------- planning with rules


def plan(dag: DagDef, statuses: dict[str, TaskStatus], allowed: tuple[str, ...] = ()) -> Any:
    tasks = [
        TaskInstance(
            id=f"ti-{task_id}",
            run_id="r",
            task_id=task_id,
            base_task_id=task_id,
            status=status,
            allowed_failure=task_id in allowed,
        )
        for task_id, status in statuses.items()
    ]
    return plan_run(dag, dag.order, tasks, {}, False)


def task(task_id: str, *deps: str, rule: TriggerRule = R.ALL_SUCCESS) -> TaskDef:
    return TaskDef(task_id=task_id, command="true", depends_on=deps, trigger_rule=rule)


def test_a_cleanup_with_all_done_runs_after_a_failure_and_the_run_still_fails() -> None:
    dag = DagDef("d", (task("a"), task("b", "a"), task("cleanup", "b", rule=R.ALL_DONE)))
    first = plan(dag, {"a": S.FAILED, "b": S.PENDING, "cleanup": S.PENDING})
    assert [t.task_id for t in first.upstream_failed] == ["b"]
    assert [t.task_id for t in first.queue] == ["cleanup"]
    assert first.run_status is None
    done = plan(dag, {"a": S.FAILED, "b": S.UPSTREAM_FAILED, "cleanup": S.SUCCESS})
    assert done.run_status is RunStatus.FAILED


def test_skips_propagate_with_their_reasons_and_the_run_succeeds() -> None:
    dag = DagDef(
        "d",
        (
            task("gate"),
            task("child", "gate"),
            task("grandchild", "child"),
            task("alert", "gate", rule=R.ONE_FAILED),
        ),
    )
    result = plan(
        dag, {"gate": S.SKIPPED, "child": S.PENDING, "grandchild": S.PENDING, "alert": S.PENDING}
    )
    assert sorted(t.task_id for t in result.skipped) == ["alert", "child", "grandchild"]
    assert result.reasons == {
        "ti-child": "an upstream task was skipped",
        "ti-grandchild": "an upstream task was skipped",
        "ti-alert": "trigger_rule one_failed: no upstream task failed",
    }
    assert result.run_status is RunStatus.SUCCESS


def test_an_allowed_failure_counts_as_a_success_downstream_and_for_the_run() -> None:
    dag = DagDef(
        "d", (task("lint"), task("publish", "lint"), task("alert", "lint", rule=R.ONE_FAILED))
    )
    result = plan(
        dag, {"lint": S.FAILED, "publish": S.PENDING, "alert": S.PENDING}, allowed=("lint",)
    )
    assert [t.task_id for t in result.queue] == ["publish"]
    assert [t.task_id for t in result.skipped] == ["alert"]
    ended = plan(
        dag, {"lint": S.FAILED, "publish": S.SUCCESS, "alert": S.SKIPPED}, allowed=("lint",)
    )
    assert ended.run_status is RunStatus.SUCCESS
    failing = plan(dag, {"lint": S.FAILED, "publish": S.UPSTREAM_FAILED, "alert": S.SUCCESS})
    assert failing.run_status is RunStatus.FAILED


# ---------------------------------------------------------------- retries and allowed failures


def test_the_retry_delay_grows_by_the_backoff_up_to_the_maximum_with_jitter() -> None:
    low, high, middle = (lambda: 0.0), (lambda: 0.999999), (lambda: 0.5)
    assert [retry_delay_ms(10, 2, 0, n, middle) for n in (1, 2, 3, 4)] == [
        10_000,
        20_000,
        40_000,
        80_000,
    ]
    assert [retry_delay_ms(10, 2, 30, n, middle) for n in (1, 2, 3, 4)] == [
        10_000,
        20_000,
        30_000,
        30_000,
    ]
    assert retry_delay_ms(10, 2, 0, 2, low) == 18_000
    assert retry_delay_ms(10, 2, 0, 2, high) == 21_999
    # a plain retry_delay_seconds keeps its exact meaning; no delay stays none
    assert retry_delay_ms(1.5, 1, 0, 3, high) == 1_500
    assert retry_delay_ms(0, 3, 60, 5, high) == 0


@given(
    st.floats(0.001, 3600),
    st.floats(1, 10),
    st.floats(0, 7200),
    st.integers(1, 40),
    st.floats(0, 0.999999),
)
@settings(max_examples=300, deadline=None, database=None)
def test_the_retry_delay_stays_within_ten_percent_of_its_formula(
    delay: float, backoff: float, maximum: float, attempt: int, draw: float
) -> None:
    expected = delay * backoff ** (attempt - 1)
    if maximum > 0:
        expected = min(expected, maximum)
    got = retry_delay_ms(delay, backoff, maximum, attempt, lambda: draw) / 1000
    assert expected * 0.9 - 0.001 <= got <= expected * 1.1


def test_which_failures_are_retried_and_which_are_allowed() -> None:
    assert retryable((), True, 1, False)
    assert retryable((75,), True, 75, False) and not retryable((75,), True, 1, False)
    assert retryable((75,), True, None, False)  # a start error or a lost worker
    assert retryable((75,), True, None, True) and not retryable((), False, None, True)
    assert not failure_allowed(None, 1, False)
    assert failure_allowed(AllowFailure(), 1, False) and failure_allowed(AllowFailure(), None, True)
    assert failure_allowed(AllowFailure((2, 3)), 3, False)
    assert not failure_allowed(AllowFailure((2, 3)), 1, False)
    assert not failure_allowed(AllowFailure((2, 3)), None, True)


def claim(definition: TaskDef, attempt: int) -> Claim:
    instance = TaskInstance(
        id="ti", run_id="r", task_id="t", base_task_id="t", status=S.RUNNING,
        attempt=attempt, max_attempts=definition.max_attempts,
    )  # fmt: skip
    run = Run("r", "d", RunStatus.RUNNING, Trigger.MANUAL, 0, {}, 0)
    return Claim(instance, run, attempt, DagDef("d", (definition,)))


def failed(code: int | None, timed_out: bool = False) -> Outcome:
    return Outcome(exit_code=code, timed_out=timed_out, metrics=AttemptMetrics(exit_code=code))


def test_attempt_finish_applies_the_retry_policy_and_allow_failure() -> None:
    policy = TaskDef(
        task_id="t",
        command="x",
        retries=3,
        retry_delay_seconds=2,
        retry_backoff=3,
        retry_max_delay_seconds=10,
        retry_on_exit_codes=(75,),
        retry_on_timeout=False,
        allow_failure=AllowFailure((75, 9)),
    )
    second = attempt_finish(claim(policy, 2), failed(75), 1_000, random=lambda: 0.5)
    assert (second.status, second.ready_at) == (S.UP_FOR_RETRY, 1_000 + 6_000)
    third = attempt_finish(claim(policy, 3), failed(75), 1_000, random=lambda: 0.5)
    assert third.ready_at == 1_000 + 10_000
    other = attempt_finish(claim(policy, 1), failed(9), 1_000)
    assert (other.status, other.allowed_failure) == (S.FAILED, True)
    assert other.message == (
        "exit code 9; not retried (retry_on_exit_codes does not list it); "
        "allowed to fail (allow_failure): counts as a success"
    )
    timeout = attempt_finish(claim(policy, 1), failed(None, timed_out=True), 1_000)
    assert (timeout.status, timeout.allowed_failure) == (S.FAILED, False)
    assert "not retried (retry_on_timeout is false)" in timeout.message
    last = attempt_finish(claim(policy, 4), failed(75), 1_000)
    assert (last.status, last.allowed_failure) == (S.FAILED, True)


# ---------------------------------------------------------------- preconditions


def run_script(script: str) -> tuple[int, str]:
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    return done.returncode, done.stdout + done.stderr


def test_preconditions_run_first_in_the_same_shell_and_report_the_failing_one() -> None:
    pres = ('test "$MODE" = full', "echo checking; exit 4", "never run")
    code, output = run_script("MODE=full; " + with_preconditions("echo task ran", pres))
    assert code == PRECONDITION_EXIT
    assert output.splitlines()[-1] == (
        "nagare: precondition not met: echo checking; exit 4 exited with code 4"
    )
    assert precondition_reason(code, output) == (
        "precondition failed: echo checking; exit 4 (exit code 4)"
    )
    code, output = run_script(with_preconditions("echo task ran; exit 3", ("true", "[ 1 -eq 1 ]")))
    assert (code, output) == (3, "task ran\n")
    assert with_preconditions("echo x", ()) == "echo x"


def test_a_task_exiting_with_the_reserved_code_is_not_read_as_skipped() -> None:
    code, output = run_script(with_preconditions(f"exit {PRECONDITION_EXIT}", ("true",)))
    assert code == PRECONDITION_EXIT and precondition_reason(code, output) == ""
    assert precondition_reason(1, "nagare: precondition not met: x exited with code 1") == ""


# ---------------------------------------------------------------- DAG files


def errors_of(text: str) -> list[str]:
    _, errors = parse_dag(text, "c.yaml")
    return [str(e) for e in errors]


def test_the_new_fields_load_and_survive_the_snapshot() -> None:
    dag, errors = parse_dag(
        """
id: c
tasks:
  - id: a
    command: "true"
    preconditions: test -f /etc/hostname
    allow_failure: {exit_codes: [2, 3]}
    retries: 2
    retry_backoff: 1.5
    retry_max_delay_seconds: 30
    retry_on_exit_codes: [75]
    retry_on_timeout: false
  - id: b
    depends_on: a
    trigger_rule: all_done
    allow_failure: true
    command: "true"
""",
        "c.yaml",
    )
    assert errors == [] and dag is not None
    a, b = dag.tasks
    assert a.preconditions == ("test -f /etc/hostname",)
    assert a.allow_failure == AllowFailure((2, 3)) and b.allow_failure == AllowFailure()
    assert (a.retry_backoff, a.retry_max_delay_seconds, a.retry_on_exit_codes) == (1.5, 30, (75,))
    assert a.retry_on_timeout is False and b.trigger_rule is R.ALL_DONE
    assert dag_from_json(dag_to_json(dag)).tasks == dag.tasks
    plain, _ = parse_dag("id: p\ntasks:\n  - id: a\n    command: x\n", "p.yaml")
    assert plain is not None and "trigger_rule" not in dag_to_json(plain)


def test_bad_values_are_reported_with_line_field_and_expectation() -> None:
    found = errors_of(
        """
id: c
tasks:
  - id: a
    command: x
    trigger_rule: all_sucess
    preconditions: [""]
    allow_failure: {codes: [2]}
    retry_backoff: 0.5
    retry_max_delay_seconds: 0
    retry_on_exit_codes: [0, 300]
    retry_on_timeout: "no"
  - id: b
    type: trigger_dag
    dag_id: other
    preconditions: ["true"]
    allow_failure: sometimes
"""
    )
    expected = [
        "c.yaml:6: tasks[0] (a).trigger_rule: unknown trigger_rule 'all_sucess'; did you mean "
        "'all_success'?",
        "c.yaml:7: tasks[0] (a).preconditions[0]: expected a shell command, found an empty string",
        "c.yaml:8: tasks[0] (a).allow_failure.codes: unknown key 'codes'",
        "c.yaml:8: tasks[0] (a).allow_failure.exit_codes: 'exit_codes' is required",
        "c.yaml:9: tasks[0] (a).retry_backoff: expected a multiplier >= 1, found 0.5",
        "c.yaml:10: tasks[0] (a).retry_max_delay_seconds: expected a number > 0",
        "c.yaml:11: tasks[0] (a).retry_on_exit_codes[0]: expected a whole number >= 1, found 0",
        "c.yaml:11: tasks[0] (a).retry_on_exit_codes[1]: expected an exit code 1-255, found 300",
        "c.yaml:12: tasks[0] (a).retry_on_timeout: expected true or false",
        "c.yaml:16: tasks[1] (b).preconditions: 'preconditions' cannot be used with type "
        "'trigger_dag'",
        "c.yaml:17: tasks[1] (b).allow_failure: expected true, false or {exit_codes: [..]}, "
        "found the string 'sometimes'",
    ]
    for line in expected:
        assert any(f.startswith(line) for f in found), (line, found)
    assert len(found) == len(expected), found


def test_an_unknown_key_next_to_the_new_ones_gets_a_suggestion() -> None:
    found = errors_of("id: c\ntasks:\n  - id: a\n    command: x\n    trigger_rules: all_done\n")
    assert found == ["c.yaml:5: tasks[0] (a).trigger_rules: unknown key 'trigger_rules'; did you "
                     "mean 'trigger_rule'?"]  # fmt: skip


# ---------------------------------------------------------------- the dags/ examples, run


def example(nagare_factory: Any, name: str) -> Nagare:
    n: Nagare = nagare_factory(dags={name: (ROOT / "dags" / name).read_text()})
    return n


def test_conditions_example_skips_with_reasons_and_succeeds(nagare_factory: Any) -> None:
    n = example(nagare_factory, "conditions_example.yaml")
    run_id = n.trigger("conditions_demo")
    run = n.wait_run(run_id)
    assert (run["status"], run["warnings"], run["reason"]) == ("success", 0, None)
    tasks = n.tasks(run_id)
    statuses = {tid: t["status"] for tid, t in tasks.items()}
    assert statuses == {
        "fetch": "success",
        "full_reload": "skipped",
        "rebuild_index": "skipped",
        "report": "success",
        "alert": "skipped",
        "cleanup": "success",
    }
    assert tasks["full_reload"]["reason"] == (
        'precondition failed: test "${MODE:-incremental}" = full (exit code 1)'
    )
    assert tasks["rebuild_index"]["reason"] == "an upstream task was skipped"
    assert tasks["alert"]["reason"] == "trigger_rule one_failed: no upstream task failed"
    assert tasks["report"]["reason"] is None
    assert "reloading everything" not in n.log(run_id, "full_reload")
    off = n.wait_run(n.trigger("conditions_demo", {"MODE": "off"}))  # the DAG's own `when`
    assert (off["status"], off["reason"]) == ("skipped", 'when: .params.MODE != "off" was false')
    full = n.wait_run(n.trigger("conditions_demo", {"MODE": "full"}))
    statuses = {tid: t["status"] for tid, t in n.tasks(full["run_id"]).items()}
    assert (statuses["full_reload"], statuses["rebuild_index"], statuses["alert"]) == (
        "success",
        "success",
        "skipped",
    )


def test_map_children_allowed_to_fail_count_as_successes(nagare_factory: Any) -> None:
    n: Nagare = nagare_factory(
        dags={
            "m.yaml": """
                id: lenient_map
                tasks:
                  - id: items
                    command: echo '[1, 2, 3]'
                  - id: each
                    type: map
                    map_over: items
                    allow_failure: true
                    command: test "$NAGARE_MAP_ITEM" != 2
                  - id: reduce
                    depends_on: [each]
                    command: echo reduced
            """
        }
    )
    run = n.wait_run(n.trigger("lenient_map"))
    assert (run["status"], run["warnings"]) == ("success", 1)
    tasks = n.tasks(run["run_id"])
    assert (tasks["each"]["status"], tasks["reduce"]["status"]) == ("success", "success")


def test_allow_failure_example_succeeds_with_warnings_after_a_retry(
    nagare_factory: Any,
) -> None:
    n = example(nagare_factory, "allow_failure_example.yaml")
    run_id = n.trigger("allow_failure_demo")
    run = n.wait_run(run_id)
    assert (run["status"], run["warnings"]) == ("success", 2)
    tasks = n.tasks(run_id)
    assert {tid: (t["status"], t["allowed_failure"]) for tid, t in tasks.items()} == {
        "lint": ("failed", True),
        "optional_check": ("failed", True),
        "upload": ("success", False),
        "publish": ("success", False),
    }
    assert tasks["upload"]["attempt"] == 2
    assert tasks["lint"]["exit_code"] == 2
    assert tasks["lint"]["message"].endswith("allowed to fail (allow_failure): counts as a success")


def test_a_failure_outside_the_allowed_codes_fails_the_run(nagare: Nagare) -> None:
    nagare.write_dag(
        "strict.yaml",
        """
    id: strict
    tasks:
      - id: lint
        allow_failure: {exit_codes: [2]}
        command: exit 1
      - id: after
        depends_on: lint
        command: "true"
    """,
    )
    nagare.app.folder.scan()
    run = nagare.wait_run(nagare.trigger("strict"))
    assert (run["status"], run["warnings"]) == ("failed", 0)
    tasks = nagare.tasks(run["run_id"])
    assert (tasks["lint"]["allowed_failure"], tasks["after"]["status"]) == (
        False,
        "upstream_failed",
    )
    assert tasks["after"]["reason"] == "an upstream task did not succeed"


# ---------------------------------------------------------------- DAG-level `when`


def test_the_run_gate_context_and_verdicts() -> None:
    dag = DagDef("d", (task("a"),), when='.params.MODE == "full"')
    run = Run("d__manual__x", "d", RunStatus.QUEUED, Trigger.SCHEDULED, 0, {"MODE": "x"}, 0)
    seen: list[Any] = []

    def holds(expression: str, context: Any) -> bool:
        seen.append((expression, context))
        return False

    assert run_gate(dag, run, holds) == (
        RunStatus.SKIPPED,
        'when: .params.MODE == "full" was false',
    )
    assert seen == [
        (
            '.params.MODE == "full"',
            {
                "dag": {"id": "d"},
                "run": {
                    "id": "d__manual__x",
                    "trigger": "scheduled",
                    "logical_date": "1970-01-01T00:00:00.000Z",
                    "scheduled_time": "1970-01-01T00:00:00.000Z",
                    "conf": {"MODE": "x"},
                },
                "params": {"MODE": "x"},
            },
        )
    ]
    assert run_gate(dag, run, lambda e, c: True) is None
    assert run_gate(DagDef("d", (task("a"),)), run, holds) is None
    typed = replace(run, conf={"n": "10"}, params={"n": 10})  # a DAG with typed params
    numeric = DagDef("d", (task("a"),), when=".params.n > 5")
    assert run_gate(numeric, typed, condition) is None  # 10 > 5: the number, not its text
    assert run_gate(numeric, replace(typed, params={"n": 3}), condition) == (
        RunStatus.SKIPPED,
        "when: .params.n > 5 was false",
    )

    def broken(expression: str, context: Any) -> bool:
        raise ValueError("jq: error: null (null) has no keys\nmore")

    assert run_gate(dag, run, broken) == (
        RunStatus.FAILED,
        'when: .params.MODE == "full" failed: jq: error: null (null) has no keys',
    )
    assert condition_holds(".a", {"a": 0}) and not condition_holds(".a", {"a": None})
    assert not condition_holds(".a", {"a": False}) and not condition_holds("empty", {})


GATED = """
id: gated
when: .params.MODE == "full"
tasks:
  - id: first
    command: echo first
  - id: second
    depends_on: first
    command: echo second
"""


def test_a_dag_level_when_skips_the_whole_run_or_lets_it_start(nagare: Nagare) -> None:
    nagare.write_dag("gated.yaml", GATED)
    nagare.app.folder.scan()
    skipped = nagare.wait_run(nagare.trigger("gated"))
    assert (skipped["status"], skipped["reason"]) == (
        "skipped",
        'when: .params.MODE == "full" was false',
    )
    tasks = nagare.tasks(skipped["run_id"])
    assert {t["status"] for t in tasks.values()} == {"skipped"}
    assert (
        tasks["first"]["reason"] == 'the run did not start: when: .params.MODE == "full" was false'
    )
    assert tasks["first"]["attempt"] == 0
    started = nagare.wait_run(nagare.trigger("gated", {"MODE": "full"}))
    assert (started["status"], started["reason"]) == ("success", None)
    assert nagare.log(started["run_id"], "second") == "second\n"
    assert nagare.get("/api/runs?status=skipped")["total"] == 1
    dag = nagare.get("/api/dags/gated")
    assert (dag["when"], dag["preconditions"]) == ('.params.MODE == "full"', [])


def test_a_dag_level_when_that_does_not_compile_is_a_load_error(nagare: Nagare) -> None:
    nagare.write_dag(
        "bad_when.yaml",
        "id: bad_when\nwhen: '.params.MODE =='\ntasks:\n  - id: a\n    command: x\n",
    )
    nagare.app.folder.scan()
    errors = nagare.get("/api/dags/errors")["bad_when.yaml"]
    assert len(errors) == 1 and errors[0].startswith(
        "bad_when.yaml:2: when: jq condition '.params.MODE ==' does not compile"
    ), errors


def test_a_database_of_the_previous_schema_upgrades_with_its_history(tmp_path: Path) -> None:
    """The previous release's schema (every migration but this feature's): its runs and tasks
    are read back unchanged, with no warnings, no reason and no allowed failure."""
    path = str(tmp_path / "old.db")
    store = Store(path)
    dag = DagDef("d", (task("a"), task("b", "a")))
    run = store.runs.start(dag, Trigger.MANUAL, 1_000, {"K": "v"}, 1_000)
    assert run is not None
    store.runs.finish(run.run_id, RunStatus.SUCCESS, 2_000)
    with store.db.write() as conn:
        undo_migration_11(conn)
        conn.execute("ALTER TABLE task_instances DROP COLUMN allowed_failure")
        conn.execute("ALTER TABLE runs DROP COLUMN warnings")
        conn.execute("PRAGMA user_version=9")  # (a run's reason: 9)
    store.close()
    upgraded = Store(path)
    assert upgraded.db.schema_version == len(MIGRATIONS)
    again = upgraded.runs.get(run.run_id)
    assert again is not None
    assert (again.status, again.conf, again.warnings, again.reason) == (
        RunStatus.SUCCESS,
        {"K": "v"},
        0,
        "",
    )
    tasks = upgraded.tasks.of_run(run.run_id)
    assert [(t.task_id, t.allowed_failure) for t in tasks] == [("a", False), ("b", False)]
    upgraded.close()


CHECKED = """
id: checked
env: {READY_FILE: "%s"}
preconditions:
  - test -n "$NAGARE_RUN_ID"
  - test -e "$READY_FILE"
tasks:
  - id: first
    command: echo first
  - id: second
    depends_on: first
    command: echo second
"""


def test_dag_level_preconditions_decide_whether_a_run_starts(
    nagare: Nagare, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    nagare.write_dag("checked.yaml", CHECKED % ready)
    nagare.app.folder.scan()
    skipped = nagare.wait_run(nagare.trigger("checked"))
    reason = 'precondition failed: test -e "$READY_FILE" (exit code 1)'
    assert (skipped["status"], skipped["reason"]) == ("skipped", reason)
    tasks = nagare.tasks(skipped["run_id"])
    assert {t["status"] for t in tasks.values()} == {"skipped"}
    assert tasks["second"]["reason"] == f"the run did not start: {reason}"
    ready.write_text("")
    started = nagare.wait_run(nagare.trigger("checked"))
    assert (started["status"], started["reason"]) == ("success", None)
    assert nagare.log(started["run_id"], "second") == "second\n"


def test_retrying_a_skipped_task_reopens_its_skipped_dependants(
    nagare: Nagare, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    nagare.write_dag(
        "again.yaml",
        f"""
    id: again
    tasks:
      - id: gate
        preconditions: ['test -e "{flag}"']
        command: echo gate
      - id: after
        depends_on: gate
        command: echo after
    """,
    )
    nagare.app.folder.scan()
    run = nagare.wait_run(nagare.trigger("again"))
    assert {t["status"] for t in nagare.tasks(run["run_id"]).values()} == {"skipped"}
    flag.write_text("")
    retried = nagare.call("POST", f"/api/runs/{run['run_id']}/tasks/gate/retry")
    assert retried.status == 200, retried.body
    assert nagare.wait_run(run["run_id"])["status"] == "success"
    tasks = nagare.tasks(run["run_id"])
    assert (tasks["gate"]["status"], tasks["after"]["status"]) == ("success", "success")
    assert tasks["after"]["reason"] is None
