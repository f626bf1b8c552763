"""Pure decision functions: which slots fire (`slots_to_fire`), how a run progresses
(`plan_run`, `after_failure`, `descendants`), what a task runs with (`parse_map_items`,
`render_command`, `item_text`, `task_env`) and how runs are named (`run_id_for`).

No store, no threads, no clock: every function gets `now` and plain data.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from nagare.cron import Schedule, parse_schedule
from nagare.dagfile import topological_order
from nagare.engine.assignment import item_text, parse_map_items, render_command, task_env
from nagare.engine.attempt_end import after_failure
from nagare.engine.new_run import run_id_for
from nagare.engine.next_steps import Plan, descendants, plan_run
from nagare.models import (
    DagDef,
    Run,
    RunStatus,
    TaskDef,
    TaskInstance,
    TaskStatus,
    TaskType,
    Trigger,
)
from nagare.scheduler import Firing, slots_to_fire
from nagare.store import DagState

MINUTE = 60_000
T0 = int(datetime(2024, 5, 10, 10, 0, tzinfo=UTC).timestamp() * 1000)
GRACE = 60_000

# ---------------------------------------------------------------- slots_to_fire


def every_5m() -> Schedule:
    return parse_schedule("*/5 * * * *", "UTC")


def state(watermark: int, last_slot: int | None = None) -> DagState:
    return DagState("d", paused=False, watermark=watermark, last_slot=last_slot)


def at(minutes: float) -> int:
    return T0 + int(minutes * MINUTE)


def fire(
    st: DagState, now: int, catchup: bool, max_catchup: int = 1000, grace: int = GRACE
) -> Firing:
    return slots_to_fire(every_5m(), st, now, catchup, max_catchup, grace)


@pytest.mark.parametrize("catchup", [False, True])
def test_a_dag_seen_for_the_first_time_runs_nothing_before_its_watermark(catchup: bool) -> None:
    firing = fire(state(watermark=at(7)), now=at(7), catchup=catchup)
    assert firing == Firing()
    assert firing.last_slot is None


@pytest.mark.parametrize("catchup", [False, True])
def test_a_new_dag_starts_from_its_next_slot(catchup: bool) -> None:
    firing = fire(state(watermark=at(7)), now=at(10) + 500, catchup=catchup)
    assert firing.slots == [(at(10), Trigger.SCHEDULED)]
    assert firing.last_slot == at(10)
    assert firing.dropped == 0


def test_a_slot_exactly_at_the_watermark_is_not_run() -> None:
    firing = fire(state(watermark=at(5)), now=at(5), catchup=True)
    assert firing.slots == []


def test_a_slot_missed_after_the_watermark_is_caught_up_before_the_first_run() -> None:
    """Seen at 10:07, server down until 10:22: slots 10:10, 10:15 and 10:20 were all missed."""
    firing = fire(state(watermark=at(7)), now=at(22), catchup=True)
    assert firing.slots == [
        (at(10), Trigger.CATCHUP),
        (at(15), Trigger.CATCHUP),
        (at(20), Trigger.CATCHUP),
    ]
    assert firing.last_slot == at(20)


def test_catchup_runs_every_missed_slot_oldest_first_last_on_time_one_scheduled() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(0)), now=at(20) + 10_000, catchup=True)
    assert firing.slots == [
        (at(5), Trigger.CATCHUP),
        (at(10), Trigger.CATCHUP),
        (at(15), Trigger.CATCHUP),
        (at(20), Trigger.SCHEDULED),
    ]
    assert firing.last_slot == at(20)
    assert firing.dropped == 0


def test_last_slot_wins_over_the_watermark() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(10)), now=at(15), catchup=True)
    assert firing.slots == [(at(15), Trigger.SCHEDULED)]


def test_a_slot_already_fired_never_fires_again() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(10)), now=at(10) + 30_000, catchup=True)
    assert firing == Firing()


def test_without_catchup_late_slots_are_skipped_but_last_slot_advances() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(0)), now=at(22), catchup=False)
    assert firing.slots == []
    assert firing.last_slot == at(20)


def test_without_catchup_only_the_newest_on_time_slot_runs() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(0)), now=at(20) + 30_000, catchup=False)
    assert firing.slots == [(at(20), Trigger.SCHEDULED)]
    assert firing.last_slot == at(20)


def test_without_catchup_skipped_slots_are_not_counted_as_dropped_by_the_cap() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(0)), now=at(20) + 30_000, catchup=False)
    assert firing.dropped == 0


@pytest.mark.parametrize(
    ("late_by", "catchup", "expected"),
    [
        (0, False, [(at(10), Trigger.SCHEDULED)]),
        (GRACE, False, [(at(10), Trigger.SCHEDULED)]),
        (GRACE + 1, False, []),
        (0, True, [(at(10), Trigger.SCHEDULED)]),
        (GRACE, True, [(at(10), Trigger.SCHEDULED)]),
        (GRACE + 1, True, [(at(10), Trigger.CATCHUP)]),
    ],
)
def test_grace_window(late_by: int, catchup: bool, expected: list[tuple[int, Trigger]]) -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(5)), now=at(10) + late_by, catchup=catchup)
    assert firing.slots == expected
    assert firing.last_slot == at(10)


def test_zero_grace_means_only_a_slot_found_exactly_on_time_is_scheduled() -> None:
    firing = fire(state(watermark=at(-60), last_slot=at(5)), now=at(10) + 1, catchup=False, grace=0)
    assert firing.slots == []
    firing = fire(state(watermark=at(-60), last_slot=at(5)), now=at(10), catchup=False, grace=0)
    assert firing.slots == [(at(10), Trigger.SCHEDULED)]


def test_catchup_is_capped_keeping_the_newest_slots_and_counting_the_dropped() -> None:
    firing = fire(
        state(watermark=at(-60), last_slot=at(0)), now=at(50) + 1000, catchup=True, max_catchup=3
    )
    assert firing.slots == [
        (at(40), Trigger.CATCHUP),
        (at(45), Trigger.CATCHUP),
        (at(50), Trigger.SCHEDULED),
    ]
    assert firing.dropped == 7
    assert firing.last_slot == at(50)


def test_nothing_due_before_the_next_slot() -> None:
    assert fire(state(watermark=at(-60), last_slot=at(5)), now=at(9), catchup=True) == Firing()


def test_every_schedule_catchup() -> None:
    schedule = parse_schedule("@every 1m", "UTC")
    firing = slots_to_fire(schedule, state(at(0), at(0)), at(3), True, 1000, GRACE)
    assert [trigger for _, trigger in firing.slots] == [
        Trigger.CATCHUP,
        Trigger.SCHEDULED,
        Trigger.SCHEDULED,
    ]


# ---------------------------------------------------------------- plan_run


def cmd(task_id: str, *deps: str, pool: str = "default") -> TaskDef:
    return TaskDef(task_id=task_id, command=f"run {task_id}", depends_on=deps, pool=pool)


def map_task(task_id: str, source: str, *deps: str) -> TaskDef:
    return TaskDef(
        task_id=task_id,
        type=TaskType.MAP,
        command="p {{item}}",
        map_over=source,
        depends_on=(*deps, source),
    )


def trigger_task(task_id: str, *deps: str) -> TaskDef:
    return TaskDef(task_id=task_id, type=TaskType.TRIGGER_DAG, dag_id="other", depends_on=deps)


def make_dag(*tasks: TaskDef) -> DagDef:
    return DagDef(dag_id="d", tasks=tasks)


def instances(**statuses: TaskStatus) -> list[TaskInstance]:
    return [
        TaskInstance(
            id=f"ti-{task_id}", run_id="r", task_id=task_id, base_task_id=task_id, status=s
        )
        for task_id, s in statuses.items()
    ]


def plan(
    dag: DagDef,
    statuses: dict[str, TaskStatus],
    child_counts: dict[str, dict[TaskStatus, int]] | None = None,
    killed: bool = False,
) -> Plan:
    order = topological_order(dag.tasks)
    return plan_run(dag, order, instances(**statuses), child_counts or {}, killed)


def upstream_failed_ids(result: Plan) -> list[str]:
    return [t.id for t in result.upstream_failed]


def ids(tasks: list[TaskInstance]) -> list[str]:
    return [t.task_id for t in tasks]


S = TaskStatus
CHAIN = make_dag(cmd("a"), cmd("b", "a"), cmd("c", "b"), cmd("d", "c"))


def test_a_task_is_queued_when_every_dependency_succeeded() -> None:
    dag = make_dag(cmd("a"), cmd("b"), cmd("c", "a", "b"))
    result = plan(dag, {"a": S.SUCCESS, "b": S.SUCCESS, "c": S.PENDING})
    assert ids(result.queue) == ["c"]
    assert (upstream_failed_ids(result), result.expand, result.trigger, result.run_status) == (
        [],
        [],
        [],
        None,
    )


def test_a_skipped_dependency_skips_an_all_success_task() -> None:
    """The spec's trigger-rule table (workflow language §4) changed this: under the default
    rule a skipped upstream task skips its dependants (Airflow's meaning); the run succeeds."""
    dag = make_dag(cmd("a"), cmd("b", "a"))
    result = plan(dag, {"a": S.SKIPPED, "b": S.PENDING})
    assert (ids(result.queue), ids(result.skipped), result.run_status) == (
        [],
        ["b"],
        RunStatus.SUCCESS,
    )


@pytest.mark.parametrize("dep_status", [S.PENDING, S.QUEUED, S.RUNNING, S.UP_FOR_RETRY])
def test_a_task_waits_while_a_dependency_is_active(dep_status: TaskStatus) -> None:
    dag = make_dag(cmd("a"), cmd("x"), cmd("b", "a", "x"))
    result = plan(dag, {"a": S.SUCCESS, "x": dep_status, "b": S.PENDING})
    assert "b" not in ids(result.queue)
    assert upstream_failed_ids(result) == []
    assert result.run_status is None


@pytest.mark.parametrize("dep_status", [S.FAILED, S.UPSTREAM_FAILED, S.CANCELLED])
def test_upstream_failed_propagates_down_a_whole_chain_in_one_pass(dep_status: TaskStatus) -> None:
    result = plan(CHAIN, {"a": dep_status, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING})
    assert upstream_failed_ids(result) == ["ti-b", "ti-c", "ti-d"]
    assert result.queue == []
    # a run whose only unsuccessful tasks were killed (and their dependants) is cancelled
    killed = dep_status is S.CANCELLED
    assert result.run_status is (RunStatus.CANCELLED if killed else RunStatus.FAILED)


def test_one_failed_dependency_of_several_is_enough() -> None:
    dag = make_dag(cmd("a"), cmd("b"), cmd("c", "a", "b"), cmd("side"))
    result = plan(dag, {"a": S.SUCCESS, "b": S.FAILED, "c": S.PENDING, "side": S.RUNNING})
    assert upstream_failed_ids(result) == ["ti-c"]
    assert result.run_status is None  # `side` is still running


def test_the_chain_is_settled_whatever_the_file_order() -> None:
    dag = make_dag(cmd("d", "c"), cmd("c", "b"), cmd("b", "a"), cmd("a"))
    result = plan(dag, {"d": S.PENDING, "c": S.PENDING, "b": S.PENDING, "a": S.FAILED})
    assert sorted(upstream_failed_ids(result)) == ["ti-b", "ti-c", "ti-d"]
    assert result.run_status is RunStatus.FAILED


def test_a_pending_map_task_expands_when_its_source_succeeded() -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"), cmd("after", "m"))
    result = plan(dag, {"src": S.SUCCESS, "m": S.PENDING, "after": S.PENDING})
    assert ids(result.expand) == ["m"]
    assert result.queue == []  # `after` waits for the map's children
    assert result.run_status is None


def test_a_map_task_whose_source_failed_is_upstream_failed() -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"), cmd("after", "m"))
    result = plan(dag, {"src": S.FAILED, "m": S.PENDING, "after": S.PENDING})
    assert upstream_failed_ids(result) == ["ti-m", "ti-after"]
    assert result.expand == []


@pytest.mark.parametrize(
    "counts",
    [
        {S.SUCCESS: 2, S.RUNNING: 1},
        {S.SUCCESS: 2, S.QUEUED: 1},
        {S.FAILED: 1, S.UP_FOR_RETRY: 1},
        {S.SUCCESS: 1, S.PENDING: 1},
    ],
)
def test_a_running_map_waits_while_a_child_is_active(counts: dict[TaskStatus, int]) -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"), cmd("after", "m"))
    result = plan(dag, {"src": S.SUCCESS, "m": S.RUNNING, "after": S.PENDING}, {"m": counts})
    assert result.map_done == []
    assert result.queue == []
    assert result.run_status is None


def test_a_map_succeeds_when_every_child_succeeded_and_its_dependants_queue_at_once() -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"), cmd("after", "m"))
    result = plan(
        dag, {"src": S.SUCCESS, "m": S.RUNNING, "after": S.PENDING}, {"m": {S.SUCCESS: 3}}
    )
    assert result.map_done == [("ti-m", S.SUCCESS, "3 map children succeeded")]
    assert ids(result.queue) == ["after"]


@pytest.mark.parametrize("bad", [S.FAILED, S.CANCELLED, S.UPSTREAM_FAILED])
def test_a_map_fails_when_a_child_did_not_succeed(bad: TaskStatus) -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"), cmd("after", "m"))
    result = plan(
        dag,
        {"src": S.SUCCESS, "m": S.RUNNING, "after": S.PENDING},
        {"m": {S.SUCCESS: 2, bad: 1}},
    )
    if bad is S.CANCELLED:  # killed children only: the map and its run are cancelled
        assert result.map_done == [("ti-m", S.CANCELLED, "1 of 3 map children were killed")]
    else:
        assert result.map_done == [("ti-m", S.FAILED, "1 of 3 map children did not succeed")]
    assert upstream_failed_ids(result) == ["ti-after"]
    killed = bad is S.CANCELLED
    assert result.run_status is (RunStatus.CANCELLED if killed else RunStatus.FAILED)


def test_a_map_with_no_children_left_succeeds() -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"))
    result = plan(dag, {"src": S.SUCCESS, "m": S.RUNNING}, {})
    assert result.map_done == [("ti-m", S.SUCCESS, "0 map children succeeded")]
    assert result.run_status is RunStatus.SUCCESS


def test_a_trigger_dag_task_is_started_when_its_dependencies_succeeded() -> None:
    dag = make_dag(cmd("a"), trigger_task("kick", "a"))
    result = plan(dag, {"a": S.SUCCESS, "kick": S.PENDING})
    assert ids(result.trigger) == ["kick"]
    assert result.queue == []
    assert result.run_status is None
    waiting = plan(dag, {"a": S.RUNNING, "kick": S.PENDING})
    assert waiting.trigger == []


def test_a_task_without_dependencies_that_is_still_pending_is_queued() -> None:
    dag = make_dag(cmd("a"), trigger_task("kick"))
    result = plan(dag, {"a": S.PENDING, "kick": S.PENDING})
    assert ids(result.queue) == ["a"]
    assert ids(result.trigger) == ["kick"]


@pytest.mark.parametrize(
    ("statuses", "killed", "expected"),
    [
        ({"a": S.SUCCESS, "b": S.SUCCESS}, False, RunStatus.SUCCESS),
        ({"a": S.SUCCESS, "b": S.SKIPPED}, False, RunStatus.SUCCESS),
        ({"a": S.SUCCESS, "b": S.FAILED}, False, RunStatus.FAILED),
        ({"a": S.FAILED, "b": S.UPSTREAM_FAILED}, False, RunStatus.FAILED),
        ({"a": S.SUCCESS, "b": S.CANCELLED}, False, RunStatus.CANCELLED),  # a task killed
        ({"a": S.CANCELLED, "b": S.CANCELLED}, True, RunStatus.CANCELLED),
        ({"a": S.SUCCESS, "b": S.CANCELLED}, True, RunStatus.CANCELLED),
        ({"a": S.FAILED, "b": S.CANCELLED}, True, RunStatus.CANCELLED),
    ],
)
def test_run_status_once_every_task_is_finished(
    statuses: dict[str, TaskStatus], killed: bool, expected: RunStatus
) -> None:
    dag = make_dag(cmd("a"), cmd("b"))
    assert plan(dag, statuses, killed=killed).run_status is expected


@pytest.mark.parametrize("active", [S.PENDING, S.QUEUED, S.RUNNING, S.UP_FOR_RETRY])
@pytest.mark.parametrize("killed", [False, True])
def test_no_run_status_while_a_task_is_active(active: TaskStatus, killed: bool) -> None:
    dag = make_dag(cmd("a"), cmd("b"), cmd("c", "a"))
    result = plan(dag, {"a": S.RUNNING, "b": S.FAILED, "c": active}, killed=killed)
    assert result.run_status is None


def test_a_failure_finishes_the_run_in_the_same_pass() -> None:
    result = plan(CHAIN, {"a": S.FAILED, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING})
    assert result.run_status is RunStatus.FAILED
    assert not result.empty


def test_a_settled_run_has_an_empty_plan_except_its_status() -> None:
    result = plan(CHAIN, {"a": S.RUNNING, "b": S.PENDING, "c": S.PENDING, "d": S.PENDING})
    assert result.empty
    done = plan(CHAIN, dict.fromkeys("abcd", S.SUCCESS))
    assert not done.empty
    assert done.run_status is RunStatus.SUCCESS


def test_tasks_not_in_the_definition_or_without_instance_are_ignored() -> None:
    dag = make_dag(cmd("a"), cmd("b", "a"))
    result = plan_run(dag, ["a", "b", "ghost"], instances(a=S.SUCCESS), {}, False)
    assert result.queue == []
    assert result.run_status is RunStatus.SUCCESS


# ---------------------------------------------------------------- after_failure / descendants


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "expected"),
    [
        (1, 1, S.FAILED),
        (1, 3, S.UP_FOR_RETRY),
        (2, 3, S.UP_FOR_RETRY),
        (3, 3, S.FAILED),
        (4, 3, S.FAILED),
    ],
)
def test_after_failure_retries_while_attempts_remain(
    attempt: int, max_attempts: int, expected: TaskStatus
) -> None:
    assert after_failure(attempt, max_attempts) is expected


def test_max_attempts_is_retries_plus_one() -> None:
    task = TaskDef(task_id="a", command="x", retries=2)
    assert [after_failure(n, task.max_attempts) for n in (1, 2, 3)] == [
        S.UP_FOR_RETRY,
        S.UP_FOR_RETRY,
        S.FAILED,
    ]


def test_descendants() -> None:
    dag = make_dag(
        cmd("a"),
        cmd("b", "a"),
        cmd("c", "a"),
        cmd("d", "b", "c"),
        cmd("e", "d"),
        cmd("other"),
    )
    assert sorted(descendants(dag, "a")) == ["b", "c", "d", "e"]
    assert len(descendants(dag, "a")) == 4  # the diamond's `d` only once
    assert sorted(descendants(dag, "c")) == ["d", "e"]
    assert descendants(dag, "e") == []
    assert descendants(dag, "other") == []
    assert descendants(dag, "missing") == []


def test_descendants_follow_the_implied_map_dependency() -> None:
    dag = make_dag(cmd("src"), map_task("m", "src"), cmd("after", "m"))
    assert sorted(descendants(dag, "src")) == ["after", "m"]


# ---------------------------------------------------------------- parse_map_items


@pytest.mark.parametrize(
    ("stdout", "items"),
    [
        ('["a", "b"]', ["a", "b"]),
        ('  ["a"]  \n', ["a"]),
        ('[\n  "a",\n  "b"\n]\n', ["a", "b"]),
        ('starting\nfound 3 files\n["x.csv", "y.csv"]\n\n  \n', ["x.csv", "y.csv"]),
        ('[1, 2.5, null, true, {"k": [1]}, ["n"]]', [1, 2.5, None, True, {"k": [1]}, ["n"]]),
        ("[1]\n[2]", [2]),
        ("[]", []),
        ("log line\n[]", []),
    ],
)
def test_parse_map_items(stdout: str, items: list[Any]) -> None:
    assert parse_map_items(stdout, "src", 100) == items


@pytest.mark.parametrize(
    ("stdout", "shown"),
    [
        ("", "(no output)"),
        ("   \n\n", "(no output)"),
        ("garbage", "garbage"),
        ('{"a": 1}', '{"a": 1}'),
        ('"[1]"', '"[1]"'),
        ("hello [1]", "hello [1]"),
        ("[1]\ntrailing text", "trailing text"),
        ("[1, 2", "[1, 2"),
    ],
)
def test_parse_map_items_not_an_array(stdout: str, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_map_items(stdout, "get_files", 100)
    message = str(info.value)
    assert message.startswith("the stdout of 'get_files' is not a JSON array")
    assert "the whole stdout or its last non-empty line" in message
    assert message.endswith(shown)


def test_parse_map_items_shows_only_the_end_of_long_output() -> None:
    with pytest.raises(ValueError) as info:
        parse_map_items("x" * 5000 + "END", "src", 100)
    assert len(str(info.value)) < 600
    assert str(info.value).endswith("END")


def test_parse_map_items_cap_names_the_limit() -> None:
    assert parse_map_items(json.dumps(list(range(3))), "src", 3) == [0, 1, 2]
    with pytest.raises(ValueError) as info:
        parse_map_items(json.dumps(list(range(4))), "src", 3)
    assert str(info.value) == (
        "'src' produced 4 map items; the limit is 3 (max_map_items in nagare.yaml)"
    )


@pytest.mark.parametrize(
    ("cut_at", "shown"),
    [(64 * 1024 * 1024, "64 MiB"), (3 * 1024, "3 KiB"), (100, "100 bytes"), (1536, "1536 bytes")],
)
def test_parse_map_items_refuses_stdout_cut_at_the_cap(cut_at: int, shown: str) -> None:
    """What was kept may still parse (`[1]` here): cut output is refused all the same."""
    with pytest.raises(ValueError) as info:
        parse_map_items("[1]", "source", 100, cut_at=cut_at)
    assert str(info.value) == (
        f"the stdout of 'source' is larger than {shown}, the most a map source may print "
        "(its items would be cut)"
    )


# ---------------------------------------------------------------- render_command / item_text


@pytest.mark.parametrize(
    ("item", "text"),
    [
        ("a.csv", "a.csv"),
        ("with space", "with space"),
        ("café", "café"),
        ("", ""),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (None, "null"),
        ({"k": [1, 2], "s": "x"}, '{"k":[1,2],"s":"x"}'),
        (["a", 1], '["a",1]'),
    ],
)
def test_item_text_strings_as_is_other_values_compact_json(item: Any, text: str) -> None:
    item_json = json.dumps(item)  # spaced JSON as stored by anyone
    assert item_text(item_json) == text
    assert render_command("proc {{item}} --again={{item}}", item_json) == (
        f"proc {text} --again={text}"
    )


def test_item_text_of_no_item() -> None:
    assert item_text(None) == ""


def test_render_command_without_an_item_keeps_the_command() -> None:
    assert render_command("echo {{item}}", None) == "echo {{item}}"
    assert render_command("echo hi", '"x"') == "echo hi"


# ---------------------------------------------------------------- task_env


def make_run(trigger: Trigger = Trigger.SCHEDULED, conf: dict[str, str] | None = None) -> Run:
    return Run(
        run_id="d__scheduled__20240510T100000Z",
        dag_id="d",
        status=RunStatus.RUNNING,
        trigger=trigger,
        execution_date=T0,
        conf=conf or {},
        created_at=T0 + 1000,
    )


def make_instance(map_index: int | None = None, item: str | None = None) -> TaskInstance:
    task_id = "t" if map_index is None else f"t[{map_index}]"
    return TaskInstance(
        id="ti-1",
        run_id="d__scheduled__20240510T100000Z",
        task_id=task_id,
        base_task_id="t",
        status=S.RUNNING,
        map_index=map_index,
        item=item,
    )


def test_task_env_layers_in_the_documented_order() -> None:
    base = {
        "PATH": "/usr/bin",
        "NAGARE_API_KEY": "secret-key",
        "NAGARE_TOKEN": "cluster-secret",
        "NAGARE_RUN_ID": "stale-from-the-server-env",
        "FROM_BASE": "base",
        "L1": "base",
        "L2": "base",
        "L3": "base",
    }
    dag = DagDef(dag_id="d", tasks=(), env={"L2": "dag", "L3": "dag", "DAG_ONLY": "dag"})
    definition = TaskDef(task_id="t", command="x", env={"L3": "task", "TASK_ONLY": "task"})
    run = make_run(conf={"L1": "conf", "L2": "conf", "L3": "conf", "CONF_ONLY": "conf"})
    env = task_env(base, dag, definition, run, make_instance(), attempt=2)
    assert "NAGARE_API_KEY" not in env
    assert "NAGARE_TOKEN" not in env
    assert env["PATH"] == "/usr/bin"
    assert env["FROM_BASE"] == "base"
    assert env["NAGARE_RUN_ID"] == "d__scheduled__20240510T100000Z"  # Nagare beats base
    assert env["L1"] == "conf"  # conf beats base
    assert env["L2"] == "conf"  # run parameters (conf) beat DAG env (workflow language §2)
    assert env["L3"] == "task"  # task env beats everything
    assert (env["CONF_ONLY"], env["DAG_ONLY"], env["TASK_ONLY"]) == ("conf", "dag", "task")


def test_task_env_nagare_variables() -> None:
    dag = DagDef(dag_id="d", tasks=())
    env = task_env({}, dag, TaskDef(task_id="t", command="x"), make_run(), make_instance(), 3)
    assert env == {
        "NAGARE_DAG_ID": "d",
        "NAGARE_RUN_ID": "d__scheduled__20240510T100000Z",
        "NAGARE_TASK_ID": "t",
        "NAGARE_ATTEMPT": "3",
        "NAGARE_TRIGGER": "scheduled",
        "NAGARE_EXECUTION_DATE": "2024-05-10T10:00:00.000Z",
        "NAGARE_SCHEDULED_TIME": "2024-05-10T10:00:00.000Z",
    }


@pytest.mark.parametrize(
    ("trigger", "scheduled"),
    [
        (Trigger.SCHEDULED, True),
        (Trigger.CATCHUP, True),
        (Trigger.BACKFILL, True),
        (Trigger.MANUAL, False),
        (Trigger.WEBHOOK, False),
        (Trigger.TRIGGERED, False),
    ],
)
def test_scheduled_time_is_set_only_for_slot_runs(trigger: Trigger, scheduled: bool) -> None:
    dag = DagDef(dag_id="d", tasks=())
    env = task_env({}, dag, TaskDef(task_id="t"), make_run(trigger), make_instance(), 1)
    assert env["NAGARE_EXECUTION_DATE"] == "2024-05-10T10:00:00.000Z"
    assert env["NAGARE_SCHEDULED_TIME"] == ("2024-05-10T10:00:00.000Z" if scheduled else "")
    assert env["NAGARE_TRIGGER"] == str(trigger)


@pytest.mark.parametrize(
    ("item", "text"),
    [('"a.csv"', "a.csv"), ("7", "7"), ('{"k": 1}', '{"k":1}'), ("null", "null")],
)
def test_map_children_get_their_item_and_index(item: str, text: str) -> None:
    dag = DagDef(dag_id="d", tasks=())
    child = make_instance(map_index=4, item=item)
    env = task_env({}, dag, TaskDef(task_id="t"), make_run(), child, 1)
    assert env["NAGARE_MAP_ITEM"] == text
    assert env["NAGARE_MAP_INDEX"] == "4"
    assert env["NAGARE_TASK_ID"] == "t[4]"


def test_tasks_that_are_not_map_children_get_no_map_variables() -> None:
    dag = DagDef(dag_id="d", tasks=())
    base = {"NAGARE_MAP_ITEM": "leaked", "NAGARE_MAP_INDEX": "9"}
    env = task_env(base, dag, TaskDef(task_id="t"), make_run(), make_instance(), 1)
    assert env.get("NAGARE_MAP_ITEM") == "leaked"  # only the base env: Nagare sets nothing
    env = task_env({}, dag, TaskDef(task_id="t"), make_run(), make_instance(), 1)
    assert "NAGARE_MAP_ITEM" not in env
    assert "NAGARE_MAP_INDEX" not in env


def test_task_env_does_not_change_its_inputs() -> None:
    base = {"A": "1", "NAGARE_API_KEY": "k"}
    dag = DagDef(dag_id="d", tasks=(), env={"B": "2"})
    definition = TaskDef(task_id="t", env={"C": "3"})
    run = make_run(conf={"D": "4"})
    task_env(base, dag, definition, run, make_instance(), 1)
    assert base == {"A": "1", "NAGARE_API_KEY": "k"}
    assert (dag.env, definition.env, run.conf) == ({"B": "2"}, {"C": "3"}, {"D": "4"})


# ---------------------------------------------------------------- run_id_for


@pytest.mark.parametrize("trigger", [Trigger.SCHEDULED, Trigger.CATCHUP, Trigger.BACKFILL])
def test_slot_run_ids_are_deterministic(trigger: Trigger) -> None:
    first = run_id_for("etl", trigger, T0, now=T0 + 5)
    assert first == "etl__scheduled__20240510T100000Z"
    assert run_id_for("etl", trigger, T0, now=T0 + 999_999) == first
    assert run_id_for("etl", trigger, T0 + MINUTE, now=T0 + 5) != first
    assert run_id_for("other", trigger, T0, now=T0 + 5) != first


def test_a_slot_has_one_id_whichever_way_it_is_run() -> None:
    """A catch-up or backfill of a slot that already ran collides with it: it cannot run twice."""
    assert (
        run_id_for("etl", Trigger.SCHEDULED, T0, 1)
        == run_id_for("etl", Trigger.CATCHUP, T0, 2)
        == run_id_for("etl", Trigger.BACKFILL, T0, 3)
    )


@pytest.mark.parametrize("trigger", [Trigger.MANUAL, Trigger.WEBHOOK, Trigger.TRIGGERED])
def test_other_run_ids_carry_the_trigger_and_the_creation_time(trigger: Trigger) -> None:
    run_id = run_id_for("etl", trigger, execution_date=T0, now=T0 + 1234)
    assert run_id == f"etl__{trigger}__20240510T100001.234Z"
    assert run_id_for("etl", trigger, T0, T0 + 1235) != run_id
