"""Section 5 of the workflow language: handlers, the run deadline, overlap control, several
schedules with start and end dates, and tags.

The decisions are pure functions tested exhaustively first; then the real server runs them
(real SQLite, real `sh -c`, the HTTP API on port 0), restarts included."""

from __future__ import annotations

import itertools
import json
import shutil
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nagare, make_config, wait_for
from planting import undo_migration_11

from nagare.app import App
from nagare.cli_client import dags_table
from nagare.client import ApiClient
from nagare.cron import NEVER, dag_schedules
from nagare.dagfile import dag_from_json, dag_to_json, parse_dag, parse_handlers
from nagare.engine.run_rules import (
    Admission,
    admit,
    handler_step,
    handlers_for,
    to_release,
)
from nagare.errors import ConfigError, Conflict
from nagare.models import HandlerKind, OverlapPolicy, RunStatus, TaskStatus, Trigger
from nagare.scheduler import slots_to_fire
from nagare.store import DagState, Store
from nagare.store.schema import MIGRATIONS

NagareFactory = Callable[..., Nagare]
FINISHED = ("success", "failed", "cancelled", "skipped")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# ---------------------------------------------------------------- overlap decisions (pure)


@pytest.mark.parametrize("policy", list(OverlapPolicy))
def test_admit_every_combination(policy: OverlapPolicy) -> None:
    ids = ["w1", "w2", "w3"]
    for limit, active, waiting_count in itertools.product(range(4), range(5), range(4)):
        waiting = ids[:waiting_count]
        decision = admit(limit, policy, active, waiting)
        free = limit == 0 or (active < limit and not waiting)
        if free:
            assert decision.admission is Admission.START, (limit, active, waiting)
            assert decision.superseded == ()
        elif policy is OverlapPolicy.SKIP:
            assert decision.admission is Admission.SKIP
            assert f"max_active_runs ({limit}) reached" in decision.reason
            assert decision.superseded == ()
        elif policy is OverlapPolicy.QUEUE:
            assert decision.admission is Admission.WAIT and decision.superseded == ()
        else:  # latest: the new run waits, every older waiting run is superseded
            assert decision.admission is Admission.WAIT
            assert decision.superseded == tuple(waiting)


def test_release_oldest_first_as_far_as_the_limit_allows() -> None:
    waiting = ["a", "b", "c"]
    assert to_release(1, 1, waiting) == []
    assert to_release(1, 0, waiting) == ["a"]
    assert to_release(2, 0, waiting) == ["a", "b"]
    assert to_release(5, 1, waiting) == ["a", "b", "c"]
    assert to_release(2, 3, waiting) == []  # more active than allowed (the limit was lowered)
    assert to_release(0, 9, waiting) == ["a", "b", "c"]  # the limit was removed


# ---------------------------------------------------------------- handlers (pure)

HANDLED = """\
id: handled
handler_on:
  success: {command: "echo ok"}
  failure: {command: "echo failed"}
  cancel: {command: "echo cancelled"}
  exit: {command: "echo bye"}
tasks:
  - {id: a, command: "true"}
"""


def _dag(text: str) -> Any:
    dag, errors = parse_dag(textwrap.dedent(text), "test.yaml")
    assert dag is not None, errors
    return dag


def test_handlers_for_each_status_with_every_subset() -> None:
    full = _dag(HANDLED)
    own = {
        RunStatus.SUCCESS: HandlerKind.SUCCESS,
        RunStatus.FAILED: HandlerKind.FAILURE,
        RunStatus.CANCELLED: HandlerKind.CANCEL,
    }
    for size in range(len(HandlerKind) + 1):
        for kinds in itertools.combinations(list(HandlerKind), size):
            dag = full.__class__(
                **{
                    **{f: getattr(full, f) for f in full.__dataclass_fields__},
                    "handler_on": {k: full.handler_on[k] for k in kinds},
                }
            )
            for status in RunStatus:
                expected = []
                if own.get(status) in kinds:
                    expected.append(own[status])
                if HandlerKind.EXIT in kinds and status in own:
                    expected.append(HandlerKind.EXIT)
                assert handlers_for(dag, status) == expected, (kinds, status)


def test_handler_step_runs_exit_last_and_ends_when_all_ended() -> None:
    ended = [s for s in TaskStatus if s.terminal]
    active = [s for s in TaskStatus if not s.terminal]
    for first in TaskStatus:
        step = handler_step({"on_failure": first, "on_exit": TaskStatus.PENDING})
        assert step.queue == (("on_exit",) if first in ended else ())
        assert not step.done
    for first, last in itertools.product(ended, ended):
        assert handler_step({"on_success": first, "on_exit": last}).done
    for first, last in itertools.product(ended, active):
        if last is not TaskStatus.PENDING:
            assert not handler_step({"on_success": first, "on_exit": last}).done
    assert handler_step({"on_exit": TaskStatus.PENDING}).queue == ("on_exit",)
    assert handler_step({"on_cancel": TaskStatus.SUCCESS}).done
    assert not handler_step({"on_cancel": TaskStatus.RUNNING}).done


# ---------------------------------------------------------------- schedules (pure)


def test_a_slot_produced_by_two_schedules_runs_once() -> None:
    both = dag_schedules(("0 6 * * *", "0 */6 * * *"), "UTC", None, None)
    slots, dropped = both.slots_between(ms("2026-03-02T00:00:00Z"), ms("2026-03-02T12:00:00Z"), 10)
    assert [datetime.fromtimestamp(s / 1000, UTC).hour for s in slots] == [6, 12]
    assert dropped == 0
    assert both.next_after(ms("2026-03-02T06:00:00Z")) == ms("2026-03-02T12:00:00Z")


def test_start_and_end_dates_bound_the_slots() -> None:
    start, end = ms("2026-03-10T00:00:00Z"), ms("2026-03-12T23:59:59Z")
    daily = dag_schedules(("0 6 * * *",), "UTC", start, end)
    slots, _ = daily.slots_between(ms("2026-03-01T00:00:00Z"), ms("2026-04-01T00:00:00Z"), 100)
    assert slots == [ms(f"2026-03-{d}T06:00:00Z") for d in (10, 11, 12)]
    assert daily.next_after(ms("2026-03-01T00:00:00Z")) == ms("2026-03-10T06:00:00Z")
    assert daily.next_after(ms("2026-03-12T06:00:00Z")) == NEVER
    assert daily.slots_between(ms("2026-03-13T00:00:00Z"), ms("2026-04-01T00:00:00Z"), 9) == (
        [],
        0,
    )
    slots, dropped = daily.slots_between(0, ms("2026-04-01T00:00:00Z"), 2)
    assert slots == [ms("2026-03-11T06:00:00Z"), ms("2026-03-12T06:00:00Z")] and dropped == 1


def test_the_scheduler_fires_each_slot_of_several_schedules_once() -> None:
    schedules = dag_schedules(("0 6 * * *", "0 */6 * * *", "0 9 * * 6"), "UTC", None, None)
    state = DagState(
        dag_id="d", paused=False, last_slot=None, watermark=ms("2026-03-07T00:00:00Z")
    )  # a Saturday
    firing = slots_to_fire(schedules, state, ms("2026-03-07T23:59:00Z"), True, 100, 60_000)
    assert [datetime.fromtimestamp(s / 1000, UTC).hour for s, _ in firing.slots] == [6, 9, 12, 18]
    assert {t for _, t in firing.slots} == {Trigger.CATCHUP}


# ---------------------------------------------------------------- DAG files

FULL = """\
id: full
schedule: ["0 6 * * 1-5", "0 9 * * 6", "0 6 * * 1-5"]
timezone: Europe/Paris
start_date: 2026-01-01
end_date: 2026-12-31T23:59:59Z
tags: [finance, nightly]
timeout_seconds: 3600
max_active_runs: 2
overlap_policy: latest
handler_on:
  failure: {command: "echo failed", env: {TO: ops}, retries: 2, timeout_seconds: 30}
  exit: {command: "./cleanup.sh", pool: serial}
tasks:
  - {id: a, command: "true"}
"""


def test_every_new_field_loads() -> None:
    dag = _dag(FULL)
    assert dag.schedule == "0 6 * * 1-5"
    assert dag.schedules == ("0 6 * * 1-5", "0 9 * * 6")  # the duplicate runs once
    assert dag.start_date == ms("2025-12-31T23:00:00Z")  # midnight in the DAG's timezone
    assert dag.end_date == ms("2026-12-31T23:59:59Z")
    assert dag.tags == ("finance", "nightly")
    assert dag.timeout_seconds == 3600
    assert (dag.max_active_runs, dag.overlap_policy) == (2, OverlapPolicy.LATEST)
    failure = dag.handler_on[HandlerKind.FAILURE]
    assert (failure.task_id, failure.env, failure.retries, failure.timeout_seconds) == (
        "on_failure",
        {"TO": "ops"},
        2,
        30,
    )
    assert dag.handler_on[HandlerKind.EXIT].pool == "serial"
    assert dag.task("on_exit") is dag.handler_on[HandlerKind.EXIT]
    assert dag_from_json(dag_to_json(dag)) == dag


def test_a_dag_without_the_new_fields_keeps_its_snapshot() -> None:
    dag = _dag("id: plain\nschedule: '@daily'\ntasks:\n  - {id: a, command: 'true'}\n")
    text = dag_to_json(dag)
    for key in ("schedules", "tags", "handler_on", "max_active_runs", "start_date"):
        assert f'"{key}"' not in text
    assert dag.cron_expressions == ("@daily",)
    assert dag.max_active_runs == 0  # unlimited


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("schedule: ['0 6 * * *', 'nope']", "test.yaml:1: schedule[1]: 'nope' is not a valid cron"),
        ("schedule: []", "test.yaml:1: schedule: expected a cron expression or a non-empty list"),
        ("schedule: ['0 6 * * *', '']", "schedule[1]: expected a cron expression in a list"),
        ("start_date: 2026-02-30", "test.yaml:1: start_date: expected a date (2026-01-01)"),
        ("end_date: soon", "end_date: expected a date (2026-01-01) or a date and time"),
        (
            "start_date: 2026-02-01\nend_date: 2026-01-01",
            "test.yaml:2: end_date: end_date is before",
        ),
        ("tags: finance", "test.yaml:1: tags: expected a list of tags, found the string"),
        ("tags: ['a b']", "test.yaml:1: tags[0]: 'a b' is not a valid tag"),
        ("timeout_seconds: 0", "test.yaml:1: timeout_seconds: expected a number > 0"),
        ("max_active_runs: 0", "test.yaml:1: max_active_runs: expected a whole number >= 1"),
        (
            "max_active_runs: 1\noverlap_policy: wait",
            "overlap_policy: expected queue | skip | latest",
        ),
        ("overlap_policy: skip", "overlap_policy: overlap_policy needs max_active_runs"),
        ("handler_on: echo", "handler_on: expected a mapping of success/failure/cancel/exit"),
        ("handler_on: {failed: {command: x}}", "handler_on.failed: unknown key 'failed'; did you"),
        (
            "handler_on: {exit: {command: x, depends_on: [a]}}",
            "handler_on.exit.depends_on: unknown",
        ),
        ("handler_on: {exit: {retries: 1}}", "handler_on.exit.command: 'command' is required"),
        ("handler_on: {exit: {type: map, command: x}}", "handler_on.exit.type: a handler runs a"),
        ("handler_on: {exit: {type: trigger_dag}}", "approval, wait), not trigger_dag"),
        ("handler_on: {exit: echo}", "handler_on.exit: expected a task mapping with 'command'"),
        ("max_active_run: 1", "max_active_run: unknown key 'max_active_run'; did you mean"),
    ],
)
def test_bad_values_say_where_what_and_what_was_expected(fragment: str, expected: str) -> None:
    text = f"{fragment}\nid: bad\ntasks:\n  - {{id: a, command: 'true'}}\n"
    dag, errors = parse_dag(text, "test.yaml")
    assert dag is None
    assert any(expected in str(e) for e in errors), [str(e) for e in errors]


def test_handler_ids_are_reserved() -> None:
    text = "id: bad\ntasks:\n  - {id: a, command: 'true'}\n  - {id: on_failure, command: x}\n"
    dag, errors = parse_dag(text, "test.yaml")
    assert dag is None
    assert [str(e) for e in errors] == [
        "test.yaml:4: tasks.on_failure.id: 'on_failure' is reserved for handler_on (on_success, "
        "on_failure, on_cancel, on_exit); expected another id"
    ]


def test_default_handler_on_is_checked_like_a_dag_file() -> None:
    handlers, errors = parse_handlers('{"failure": {"command": "mail ops"}}')
    assert errors == [] and handlers[HandlerKind.FAILURE].command == "mail ops"
    assert parse_handlers("") == ({}, [])
    _, errors = parse_handlers('{"failure": {"comand": "mail ops"}}')
    assert "handler_on.failure.comand: unknown key 'comand'; did you mean 'command'?" in str(
        errors[0]
    )


# ---------------------------------------------------------------- the real server


def wait_handlers(nagare: Nagare, run_id: str, timeout: float = 20) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = nagare.get(f"/api/runs/{run_id}")
        return run if run["status"] in FINISHED and not run.get("handlers_running") else None

    return wait_for(done, timeout, message=f"the handlers of {run_id}")  # type: ignore[no-any-return]


HANDLERS = """\
id: handlers
handler_on:
  success: {command: "echo success-handler"}
  failure:
    command: |
      echo "status=$NAGARE_RUN_STATUS failed=$NAGARE_FAILED_TASKS"
      sleep 0.3; date +%s%N > {stamp}.failure
  exit: {command: 'date +%s%N > {stamp}.exit; echo "exit-handler $NAGARE_RUN_STATUS"; exit 3'}
tasks:
  - {id: ok, command: "true"}
  - {id: bad, command: "exit 1"}
  - {id: bad2, command: "exit 2"}
  - {id: after, depends_on: [bad], command: "true"}
"""


def test_handlers_run_after_the_run_ended_and_never_change_its_status(
    nagare_factory: NagareFactory, tmp_path: Path
) -> None:
    nagare = nagare_factory(dags={"h.yaml": HANDLERS.replace("{stamp}", str(tmp_path / "t"))})
    run_id = nagare.trigger("handlers")
    run = wait_handlers(nagare, run_id)
    assert run["status"] == "failed"  # decided before the handlers, kept after on_exit failed
    tasks = nagare.tasks(run_id)
    assert list(tasks) == ["ok", "bad", "bad2", "after", "on_failure", "on_exit"]
    assert tasks["on_failure"]["status"] == "success"
    assert tasks["on_exit"]["status"] == "failed" and tasks["on_exit"]["exit_code"] == 3
    assert "on_success" not in tasks
    assert nagare.log(run_id, "on_failure").strip() == "status=failed failed=bad,bad2"
    assert "exit-handler failed" in nagare.log(run_id, "on_exit")
    assert tasks["on_exit"]["metrics"]["exit_code"] == 3
    # exit runs last: after the failure handler ended
    assert int((tmp_path / "t.exit").read_text()) > int((tmp_path / "t.failure").read_text())
    assert run["completed_at"] <= tasks["on_failure"]["started_at"]


def test_success_and_cancel_handlers(nagare_factory: NagareFactory) -> None:
    dags = {
        "s.yaml": """\
            id: s
            handler_on:
              success: {command: 'echo "success $NAGARE_RUN_STATUS [$NAGARE_FAILED_TASKS]"'}
            tasks: [{id: a, command: "true"}]
            """,
        "c.yaml": """\
            id: c
            handler_on:
              cancel: {command: 'echo "cancelled $NAGARE_RUN_STATUS"'}
              exit: {command: "echo exit"}
            tasks: [{id: long, command: "sleep 30"}]
            """,
    }
    nagare = nagare_factory(dags=dags)
    run_s = nagare.trigger("s")
    assert wait_handlers(nagare, run_s)["status"] == "success"
    assert nagare.log(run_s, "on_success").strip() == "success success []"

    run_c = nagare.trigger("c")
    wait_for(lambda: nagare.tasks(run_c)["long"]["status"] == "running", 10)
    assert nagare.call("POST", f"/api/runs/{run_c}/kill").status == 200
    run = wait_handlers(nagare, run_c)
    assert run["status"] == "cancelled"
    tasks = nagare.tasks(run_c)
    assert (tasks["on_cancel"]["status"], tasks["on_exit"]["status"]) == ("success", "success")
    assert nagare.log(run_c, "on_cancel").strip() == "cancelled cancelled"


def test_a_retried_run_runs_its_handlers_again(
    nagare_factory: NagareFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "fixed"
    dag = f"""\
        id: again
        handler_on:
          success: {{command: 'echo "now $NAGARE_RUN_STATUS"'}}
          failure: {{command: "echo failure"}}
          exit: {{command: 'echo "exit $NAGARE_ATTEMPT"; exit 1'}}
        tasks: [{{id: a, command: "test -e {flag}"}}]
        """
    nagare = nagare_factory(dags={"again.yaml": dag})
    run_id = nagare.trigger("again")
    assert wait_handlers(nagare, run_id)["status"] == "failed"
    refused = nagare.call("POST", f"/api/runs/{run_id}/tasks/on_exit/retry")
    assert refused.status == 409 and "is a handler" in refused.json["error"]["message"]
    flag.touch()
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/a/retry").status == 200
    wait_for(lambda: nagare.tasks(run_id).get("on_success", {}).get("status") == "success", 15)
    run = wait_handlers(nagare, run_id)
    assert run["status"] == "success"  # the failed on_exit of both ends never counts
    tasks = nagare.tasks(run_id)
    assert (tasks["on_exit"]["attempt"], tasks["on_exit"]["status"]) == (2, "failed")
    assert nagare.log(run_id, "on_exit").startswith("exit 2\n")
    assert nagare.log(run_id, "on_success").strip() == "now success"


def test_default_handler_on_serves_dags_without_their_own(nagare_factory: NagareFactory) -> None:
    dags = {
        "plain.yaml": "id: plain\ntasks: [{id: a, command: 'exit 1'}]\n",
        "own.yaml": "id: own\nhandler_on: {exit: {command: 'echo own'}}\n"
        "tasks: [{id: a, command: 'exit 1'}]\n",
    }
    defaults = json.dumps({"failure": {"command": "echo on-call $NAGARE_DAG_ID"}})
    nagare = nagare_factory(dags=dags, default_handler_on=defaults)
    assert nagare.get("/api/dags/plain")["handler_on"] == {"failure": "command"}
    assert nagare.get("/api/dags/own")["handler_on"] == {"exit": "command"}
    plain, own = nagare.trigger("plain"), nagare.trigger("own")
    wait_handlers(nagare, plain)
    wait_handlers(nagare, own)
    assert nagare.log(plain, "on_failure").strip() == "on-call plain"
    assert set(nagare.tasks(own)) == {"a", "on_exit"}


def test_a_bad_default_handler_on_stops_the_start_with_its_message(tmp_path: Path) -> None:
    config = make_config(tmp_path, default_handler_on='{"exit": {"comand": "x"}}')
    with pytest.raises(ConfigError) as caught:
        App(config)
    assert "default_handler_on.exit.comand: unknown key 'comand'; did you mean 'command'?" in str(
        caught.value
    )


def test_handlers_still_run_after_a_restart(nagare_factory: NagareFactory, tmp_path: Path) -> None:
    dag = """\
        id: restarted
        handler_on:
          failure: {command: "sleep 1; echo first"}
          exit: {command: "echo last"}
        tasks: [{id: a, command: "exit 1"}]
        """
    first = nagare_factory(dags={"r.yaml": dag})
    run_id = first.trigger("restarted")
    wait_for(lambda: first.tasks(run_id).get("on_failure", {}).get("status") == "running", 10)
    assert first.get(f"/api/runs/{run_id}")["handlers_running"] is True
    first.app.stop()
    second = nagare_factory(root=tmp_path)
    run = wait_handlers(second, run_id, 30)
    assert run["status"] == "failed"
    tasks = second.tasks(run_id)
    assert tasks["on_exit"]["status"] == "success"
    assert tasks["on_failure"]["status"] in ("success", "failed", "cancelled")


# ---------------------------------------------------------------- the run deadline


def test_the_run_deadline_kills_running_tasks_and_fails_the_run(
    nagare_factory: NagareFactory,
) -> None:
    dag = """\
        id: late
        timeout_seconds: 1
        handler_on: {failure: {command: 'echo "$NAGARE_RUN_STATUS"'}}
        tasks:
          - {id: quick, command: "true"}
          - {id: long, depends_on: [quick], command: "sleep 30"}
          - {id: next, depends_on: [long], command: "true"}
        """
    nagare = nagare_factory(dags={"late.yaml": dag})
    started = time.monotonic()
    run_id = nagare.trigger("late")
    run = wait_handlers(nagare, run_id, 10)
    assert time.monotonic() - started < 5
    assert run["status"] == "failed" and run["reason"] == "timed out after 1 s"
    tasks = nagare.tasks(run_id)
    assert [tasks[t]["status"] for t in ("quick", "long", "next")] == [
        "success",
        "cancelled",
        "cancelled",
    ]
    assert nagare.log(run_id, "on_failure").strip() == "failed"


def test_the_deadline_survives_a_restart(nagare_factory: NagareFactory, tmp_path: Path) -> None:
    dag = "id: slow\ntimeout_seconds: 2\ntasks: [{id: long, command: 'sleep 30'}]\n"
    first = nagare_factory(dags={"slow.yaml": dag})
    run_id = first.trigger("slow")
    wait_for(lambda: first.tasks(run_id)["long"]["status"] == "running", 10)
    first.app.stop()
    second = nagare_factory(root=tmp_path)
    run = wait_handlers(second, run_id, 15)
    assert run["status"] == "failed"
    assert run["reason"] == "timed out after 2 s"


# ---------------------------------------------------------------- overlap


def _overlap_dag(policy: str, seconds: float = 0.6, limit: int = 1) -> str:
    return (
        f"id: o\nmax_active_runs: {limit}\noverlap_policy: {policy}\n"
        f"tasks: [{{id: work, command: 'sleep {seconds}'}}]\n"
    )


def test_queue_runs_one_at_a_time_oldest_first(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"o.yaml": _overlap_dag("queue")})
    ids = [nagare.trigger("o") for _ in range(3)]
    runs = [nagare.get(f"/api/runs/{r}") for r in ids]
    assert [r["status"] for r in runs[1:]] == ["queued", "queued"]
    assert nagare.tasks(ids[2])["work"]["status"] == "pending"
    finished = [nagare.wait_run(r, 20) for r in ids]
    assert [r["status"] for r in finished] == ["success"] * 3
    for before, after in itertools.pairwise(finished):  # never overlapping, in order
        assert after["started_at"] >= before["completed_at"]


def test_skip_refuses_a_manual_run_and_records_a_scheduled_one(
    nagare_factory: NagareFactory,
) -> None:
    dag = _overlap_dag("skip", 2).replace("id: o\n", "id: o\nschedule: '@hourly'\n")
    nagare = nagare_factory(dags={"o.yaml": dag})
    first = nagare.trigger("o")
    refused = nagare.call("POST", "/api/dags/o/runs")
    assert refused.status == 409, refused.body
    assert refused.json["error"]["code"] == "conflict"
    assert "max_active_runs (1) reached" in refused.json["error"]["message"]
    backfill = nagare.call(
        "POST",
        "/api/dags/o/backfill",
        {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
    )
    assert backfill.status == 201, backfill.body
    (skipped_id,) = backfill.json["created"]
    skipped = nagare.get(f"/api/runs/{skipped_id}")
    assert skipped["status"] == "skipped" and "overlap_policy: skip" in skipped["reason"]
    assert nagare.tasks(skipped_id)["work"]["status"] == "skipped"
    refused = nagare.call("POST", f"/api/runs/{skipped_id}/tasks/work/retry")
    assert refused.status == 409 and "never started" in refused.text
    runs = nagare.get("/api/runs?dag_id=o")["data"]
    assert sorted(r["run_id"] for r in runs) == sorted([first, skipped_id])
    assert nagare.get("/api/runs?status=skipped")["total"] == 1


def test_latest_keeps_the_newest_waiting_run(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"o.yaml": _overlap_dag("latest")})
    ids = [nagare.trigger("o") for _ in range(4)]
    finished = [nagare.wait_run(r, 20) for r in ids]
    assert [r["status"] for r in finished] == ["success", "cancelled", "cancelled", "success"]
    assert [r.get("reason") for r in finished[1:3]] == ["superseded", "superseded"]
    assert nagare.tasks(ids[1])["work"]["status"] == "cancelled"
    refused = nagare.call("POST", f"/api/runs/{ids[1]}/tasks/work/retry")
    assert refused.status == 409 and "never started (superseded)" in refused.text


def test_a_waiting_run_starts_after_a_restart(
    nagare_factory: NagareFactory, tmp_path: Path
) -> None:
    first = nagare_factory(dags={"o.yaml": _overlap_dag("queue", 1)})
    running, waiting = first.trigger("o"), first.trigger("o")
    assert first.get(f"/api/runs/{waiting}")["status"] == "queued"
    first.app.stop()
    second = nagare_factory(root=tmp_path)
    second.wait_run(running, 20)
    assert second.wait_run(waiting, 20)["status"] == "success"


def test_killing_a_waiting_run_cancels_it(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"o.yaml": _overlap_dag("queue", 1)})
    running, waiting, third = (nagare.trigger("o") for _ in range(3))
    assert nagare.call("POST", f"/api/runs/{waiting}/kill").status == 200
    assert nagare.wait_run(waiting, 5)["status"] == "cancelled"
    assert nagare.wait_run(running, 20)["status"] == "success"
    assert nagare.wait_run(third, 20)["status"] == "success"


# ---------------------------------------------------------------- tags and the DAG JSON

TAGGED = {
    "a.yaml": "id: a\ntags: [finance, nightly]\ntasks: [{id: t, command: 'true'}]\n",
    "b.yaml": "id: b\ntags: [nightly]\ntasks: [{id: t, command: 'true'}]\n",
    "c.yaml": "id: c\ntasks: [{id: t, command: 'true'}]\n",
}


def test_dags_filter_by_tag_in_the_api_and_the_cli(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags=TAGGED)

    def ids(query: str) -> list[str]:
        return [d["dag_id"] for d in nagare.get(f"/api/dags{query}")]

    assert ids("") == ["a", "b", "c"]
    assert ids("?tag=nightly") == ["a", "b"]
    assert ids("?tag=finance") == ["a"]
    assert ids("?tag=finance&tag=nightly") == ["a", "b"]  # any of the tags
    assert ids("?tag=nope") == []
    client = ApiClient(nagare.url)
    listed = client.dags(["finance"])
    assert [d["dag_id"] for d in listed] == ["a"]
    table = dags_table(client.dags())
    assert table.splitlines()[0].split()[-1] == "TAGS" and "finance,nightly" in table


def test_dag_json_has_the_run_rules(nagare_factory: NagareFactory) -> None:
    nagare = nagare_factory(dags={"full.yaml": FULL.replace("pool: serial", "pool: default")})
    dag = nagare.get("/api/dags/full")
    assert dag["schedule"] == "0 6 * * 1-5"
    assert dag["schedules"] == ["0 6 * * 1-5", "0 9 * * 6"]
    assert dag["start_date"] == "2025-12-31T23:00:00.000Z"
    assert dag["end_date"] == "2026-12-31T23:59:59.000Z"
    assert dag["tags"] == ["finance", "nightly"]
    assert (dag["max_active_runs"], dag["overlap_policy"]) == (2, "latest")
    assert dag["timeout_seconds"] == 3600
    assert dag["handler_on"] == {"failure": "command", "exit": "command"}
    plain = nagare_factory(dags=TAGGED).get("/api/dags/c")
    assert plain["schedules"] == [] and plain["max_active_runs"] is None
    assert plain["handler_on"] == {} and plain["tags"] == []


def test_an_ended_dag_has_no_next_run(nagare_factory: NagareFactory) -> None:
    dag = "id: old\nschedule: '@daily'\nend_date: 2020-01-01\ntasks: [{id: t, command: 'true'}]\n"
    nagare = nagare_factory(dags={"old.yaml": dag})
    assert nagare.get("/api/dags/old")["next_run_at"] is None


# ---------------------------------------------------------------- the examples in dags/


def test_handlers_example_runs(nagare_factory: NagareFactory, tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    shutil.copy(ROOT / "dags" / "handlers_example.yaml", tmp_path / "dags")
    nagare = nagare_factory()
    ok = nagare.trigger("handlers_demo")
    assert wait_handlers(nagare, ok)["status"] == "success"
    assert "all good, the run is success" in nagare.log(ok, "on_success")
    assert "cleaning up after a success run" in nagare.log(ok, "on_exit")
    bad = nagare.trigger("handlers_demo", {"FAIL": "1"})
    assert wait_handlers(nagare, bad)["status"] == "failed"
    assert "failed tasks load" in nagare.log(bad, "on_failure")


def test_overlap_example_runs(nagare_factory: NagareFactory, tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    shutil.copy(ROOT / "dags" / "overlap_example.yaml", tmp_path / "dags")
    nagare = nagare_factory()
    dag = nagare.get("/api/dags/overlap_demo")
    assert dag["schedules"] == ["0 6 * * 1-5", "0 9 * * 6"]
    assert dag["tags"] == ["examples", "reports"] and dag["next_run_at"] is not None
    ids = [nagare.trigger("overlap_demo", {"SECONDS_TO_TAKE": "0.5"}) for _ in range(3)]
    statuses = [nagare.wait_run(r, 20)["status"] for r in ids]
    assert statuses == ["success", "cancelled", "success"]
    assert "building the report" in nagare.log(ids[0], "report")


# ---------------------------------------------------------------- the store (real SQLite)

T0 = 1_800_000_000_000


def test_the_store_applies_the_overlap_rule_in_the_creating_transaction(store: Any) -> None:
    dag = _dag(_overlap_dag("queue", 1, limit=2))
    first, second, third = (
        store.runs.start(dag, Trigger.SCHEDULED, T0 + i * 60_000, {}, T0 + i) for i in range(3)
    )
    assert (first.held, second.held, third.held) == (False, False, True)
    assert {t.status for t in store.tasks.of_run(third.run_id)} == {TaskStatus.PENDING}
    assert store.runs.release_waiting(dag, T0 + 10) == []  # two active: no slot
    assert sorted(store.runs.active_ids()) == sorted([first.run_id, second.run_id])
    assert store.runs.finish(first.run_id, RunStatus.SUCCESS, T0 + 20) is RunStatus.SUCCESS
    assert store.runs.release_waiting(dag, T0 + 30) == [third.run_id]
    assert store.runs.get(third.run_id).held is False
    assert store.runs.release_waiting(dag, T0 + 40) == []

    skip = _dag(_overlap_dag("skip", 1, limit=1).replace("id: o", "id: s"))
    store.runs.start(skip, Trigger.MANUAL, T0, {}, T0)
    with pytest.raises(Conflict, match="max_active_runs \\(1\\) reached"):
        store.runs.start(skip, Trigger.MANUAL, T0 + 1, {}, T0 + 1)
    recorded = store.runs.start(skip, Trigger.WEBHOOK, T0 + 2, {}, T0 + 2)
    assert recorded.status is RunStatus.SKIPPED
    assert store.runs.get(recorded.run_id).reason.startswith("max_active_runs (1) reached")


def test_the_store_supersedes_older_waiting_runs(store: Any) -> None:
    dag = _dag(_overlap_dag("latest", 1))
    runs = [store.runs.start(dag, Trigger.MANUAL, T0 + i, {}, T0 + i) for i in range(4)]
    states = [store.runs.get(r.run_id) for r in runs]
    assert [(s.status, s.reason) for s in states] == [
        (RunStatus.QUEUED, ""),
        (RunStatus.CANCELLED, "superseded"),
        (RunStatus.CANCELLED, "superseded"),
        (RunStatus.QUEUED, ""),
    ]
    assert {t.status for t in store.tasks.of_run(runs[1].run_id)} == {TaskStatus.CANCELLED}


def test_the_store_keeps_deadlines_and_handlers(store: Any) -> None:
    dag = _dag(HANDLED.replace("tasks:", "timeout_seconds: 5\ntasks:"))
    run = store.runs.start(dag, Trigger.MANUAL, T0, {}, T0)
    assert run.deadline_at == T0 + 5000 and store.runs.next_deadline() == T0 + 5000
    assert store.runs.past_deadline(T0 + 4999) == []
    assert store.runs.past_deadline(T0 + 5000) == [run.run_id]
    assert store.runs.mark_timed_out(run.run_id, "timed out after 5 s")
    assert not store.runs.mark_timed_out(run.run_id, "again")
    ended = store.runs.finish(run.run_id, RunStatus.CANCELLED, T0 + 5001, dag, ["a"])
    assert ended is RunStatus.FAILED  # timed out: failed whatever the planner saw
    again = store.runs.get(run.run_id)
    assert (again.handling, again.failed_tasks, again.reason) == (
        True,
        ("a",),
        "timed out after 5 s",
    )
    assert run.run_id in store.runs.active_ids()  # until its handlers end
    handlers = {t.task_id: t.status for t in store.tasks.of_run(run.run_id)}
    assert handlers == {
        "a": TaskStatus.QUEUED,  # (the planted run's task was never claimed)
        "on_failure": TaskStatus.QUEUED,
        "on_exit": TaskStatus.PENDING,
    }
    assert store.runs.end_handling(run.run_id) and not store.runs.end_handling(run.run_id)
    assert run.run_id not in store.runs.active_ids()


def test_a_database_of_the_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    store = Store(path)
    dag = _dag("id: old\ntasks: [{id: a, command: 'true'}]\n")
    run = store.runs.start(dag, Trigger.MANUAL, T0, {"K": "v"}, T0)
    store.runs.finish(run.run_id, RunStatus.SUCCESS, T0 + 5)
    with store.db.write() as conn:  # back to the schema before the run rules (migration 9)
        conn.execute("ALTER TABLE task_instances DROP COLUMN allowed_failure")  # 10 goes too
        undo_migration_11(conn)  # and 11
        conn.execute("ALTER TABLE runs DROP COLUMN warnings")
        conn.execute("DROP INDEX runs_deadline")
        conn.execute("DROP INDEX runs_handling")
        for column in ("reason", "held", "deadline_at", "handling", "failed_tasks"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        conn.execute("PRAGMA user_version=8")
    store.close()
    upgraded = Store(path)
    assert upgraded.db.schema_version == len(MIGRATIONS)
    kept = upgraded.runs.get(run.run_id)
    assert (kept.status, kept.conf, kept.completed_at) == (RunStatus.SUCCESS, {"K": "v"}, T0 + 5)
    assert (kept.reason, kept.held, kept.deadline_at, kept.handling) == ("", False, None, False)
    assert [t.task_id for t in upgraded.tasks.of_run(run.run_id)] == ["a"]
    upgraded.close()
