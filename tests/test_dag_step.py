"""`type: dag` steps (sub-DAG calls) with the real server: a child run with templated params,
its DAG-level `outputs` as the step's outputs, parent <-> child in the API, kills both ways,
retries (a new child run), timeouts, the run-time depth limit, no slot held while waiting;
and the load-time checks of the call graph (cycles, depth) over the DAG folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, Nagare, pythonpath_env, wait_for

from nagare.dag_folder import DagFolder
from nagare.dagfile import dag_from_json, dag_to_json, parse_dag
from nagare.dagfile.calls import MAX_CALL_DEPTH, call_errors
from nagare.models import DagDef, RunStatus, Trigger
from nagare.store import Store


def dag_of(text: str) -> DagDef:
    dag, errors = parse_dag(textwrap.dedent(text), "x.yaml")
    assert dag is not None and not errors, errors
    return dag


def caller(dag_id: str, *calls: str) -> DagDef:
    steps = "".join(f"  - {{id: call_{c}, type: dag, dag_id: '{c}'}}\n" for c in calls)
    return dag_of(f"id: {dag_id}\ntasks:\n  - {{id: work, command: 'true'}}\n{steps}")


# ---------------------------------------------------------------- load time


def test_dag_level_outputs_are_read_compiled_and_kept_in_the_snapshot() -> None:
    dag = dag_of(
        """
        id: child
        outputs:
          ROWS: "{{ .tasks.count.outputs.ROWS }}"
          NOTE: plain text
        tasks:
          - {id: count, command: "true"}
        """
    )
    assert dag.outputs == {"ROWS": "{{ .tasks.count.outputs.ROWS }}", "NOTE": "plain text"}
    assert dag_from_json(dag_to_json(dag)).outputs == dag.outputs
    plain = dag_of("id: p\ntasks:\n  - {id: a, command: 'true'}\n")
    assert "outputs" not in dag_to_json(plain)  # the stored form of other DAGs is unchanged
    _, errors = parse_dag(
        'id: c\noutputs:\n  9bad: x\n  ok: "{{ .tasks | }}"\ntasks:\n  - {id: a, command: x}\n',
        "c.yaml",
    )
    found = [str(e) for e in errors]
    assert found[0] == (
        "c.yaml:3: outputs.9bad: '9bad' is not a valid output name (expected letters, digits "
        "and '_', not starting with a digit)"
    )
    assert found[1].startswith("c.yaml:4: outputs.ok: template '{{ .tasks | }}' does not compile")
    assert len(found) == 2
    _, errors = parse_dag("id: c\noutputs: [a]\ntasks:\n  - {id: a, command: x}\n", "c.yaml")
    assert [str(e) for e in errors] == [
        "c.yaml:2: outputs: expected a mapping of NAME: template, found a list"
    ]


def test_a_cycle_of_calls_is_an_error_of_each_dag_in_it_naming_the_chain() -> None:
    dags = {d.dag_id: d for d in (caller("a", "b"), caller("b", "c"), caller("c", "a"))}
    dags["d"] = caller("d", "a", "nowhere")  # calls into a cycle, and an unknown DAG: no error
    dags["self"] = caller("self", "self")
    found = call_errors(dags)
    assert found == {
        "a": [(4, "tasks[1] (call_b).dag_id", "calls form a cycle: a → b → c → a")],
        "b": [(4, "tasks[1] (call_c).dag_id", "calls form a cycle: b → c → a → b")],
        "c": [(4, "tasks[1] (call_a).dag_id", "calls form a cycle: c → a → b → c")],
        "self": [(4, "tasks[1] (call_self).dag_id", "calls form a cycle: self → self")],
    }


def test_a_templated_dag_id_is_left_to_run_time() -> None:
    looping = dag_of('id: loop\ntasks:\n  - {id: again, type: dag, dag_id: "{{ .dag.id }}"}\n')
    assert call_errors({"loop": looping}) == {}
    _, errors = parse_dag(
        'id: l\ntasks:\n  - {id: a, type: dag, dag_id: "{{ .tasks | }}"}\n', "l.yaml"
    )
    assert len(errors) == 1, errors
    assert str(errors[0]).startswith(
        "l.yaml:3: tasks[0] (a).dag_id: template '{{ .tasks | }}' does not compile"
    )


def test_calls_nested_deeper_than_the_limit_are_an_error_of_the_dags_too_deep() -> None:
    ids = [f"d{i}" for i in range(MAX_CALL_DEPTH + 2)]  # d0 -> d1 -> ... -> d11: 11 calls
    dags = {d: caller(d, *ids[i + 1 : i + 2]) for i, d in enumerate(ids)}
    found = call_errors(dags)
    assert list(found) == ["d0"]
    line, field, message = found["d0"][0]
    assert (line, field) == (4, "tasks[1] (call_d1).dag_id")
    assert message == f"calls nest 11 deep: {' → '.join(ids)} (at most {MAX_CALL_DEPTH})"
    del dags["d0"]
    assert call_errors(dags) == {}  # 10 calls are allowed


def test_the_folder_does_not_load_dags_whose_calls_form_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "id: a\ntasks:\n  - id: first\n    command: 'true'\n  - id: call\n    type: dag\n"
        "    dag_id: b\n"
    )
    (tmp_path / "b.yaml").write_text("id: b\ntasks:\n  - {id: call, type: dag, dag_id: a}\n")
    (tmp_path / "c.yaml").write_text("id: c\ntasks:\n  - {id: call, type: dag, dag_id: a}\n")
    folder = DagFolder(str(tmp_path))
    folder.scan()
    snapshot = folder.snapshot
    assert sorted(snapshot.dags) == ["c"]  # (c calls into the cycle: it fails at run time)
    assert snapshot.errors == {
        "a.yaml": ["a.yaml:5: tasks[1] (call).dag_id: calls form a cycle: a → b → a"],
        "b.yaml": ["b.yaml:3: tasks[0] (call).dag_id: calls form a cycle: b → a → b"],
    }
    (tmp_path / "b.yaml").write_text("id: b\ntasks:\n  - {id: work, command: 'true'}\n")
    os.utime(tmp_path / "b.yaml", ns=(1, 1))
    folder.scan()
    assert sorted(folder.snapshot.dags) == ["a", "b", "c"]
    assert folder.snapshot.errors == {}


def test_validate_reports_call_cycles_and_warns_of_unknown_callees(tmp_path: Path) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "a.yaml").write_text("id: a\ntasks:\n  - {id: call, type: dag, dag_id: b}\n")
    (folder / "b.yaml").write_text("id: b\ntasks:\n  - {id: call, type: dag, dag_id: a}\n")
    (folder / "c.yaml").write_text("id: c\ntasks:\n  - {id: call, type: dag, dag_id: zzz}\n")
    result = subprocess.run(
        [sys.executable, "-m", "nagare", "validate"],
        cwd=tmp_path,
        env=pythonpath_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "dags/a.yaml:3: tasks[0] (call).dag_id: calls form a cycle: a → b → a" in lines
    assert "dags/b.yaml:3: tasks[0] (call).dag_id: calls form a cycle: b → a → b" in lines
    assert "ok   dags/c.yaml: DAG 'c' (1 task)" in lines
    assert (
        "warning: dags/c.yaml:3: task 'call' calls DAG 'zzz', which is not among these files "
        "(the step fails unless it is loaded by then)"
    ) in lines
    assert "1 valid, 2 invalid" in result.stderr


def test_a_run_keeps_its_outputs_only_when_it_succeeds(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "n.db"))
    try:
        dag = dag_of("id: d\ntasks:\n  - {id: a, command: 'true'}\n")
        made = [store.runs.start(dag, Trigger.MANUAL, i, {}, i) for i in (1, 2, 3)]
        ok, killed, failed = (run.run_id for run in made if run is not None)
        store.runs.start(dag, Trigger.TRIGGERED, 9, {}, 9, None, (ok, "a"))
        assert store.runs.finish(ok, RunStatus.SUCCESS, 5, outputs={"X": "1"})
        assert store.runs.mark_killed(killed)
        assert store.runs.finish(killed, RunStatus.SUCCESS, 5, outputs={"X": "1"})
        assert store.runs.finish(failed, RunStatus.FAILED, 5, outputs={"X": "1"})
        outputs = {r: (store.runs.get(r) or made[0]).outputs for r in (ok, killed, failed)}
        assert outputs == {ok: {"X": "1"}, killed: None, failed: None}
        child = store.runs.child_of(ok, "a", 9)
        assert child is not None and store.runs.child_of(ok, "a", 10) is None
    finally:
        store.close()


# ---------------------------------------------------------------- the real server

CHILD = """
id: child
params:
  region: eu
  batch: {type: integer, default: 10}
outputs:
  ROWS: "{{ .tasks.count.outputs.ROWS }}"
  SUMMARY: "{{ .params.region }}/{{ .params.batch }}: {{ .tasks.count.outputs.ROWS }}"
tasks:
  - id: count
    command: echo "ROWS=$(( batch * 3 ))" >> "$NAGARE_OUTPUT"
"""

PARENT = """
id: parent
params:
  region: us
tasks:
  - id: call
    type: dag
    dag_id: child
    params:
      region: "{{ .params.region }}"
      batch: 7
  - id: after
    depends_on: [call]
    command: echo "got $ROWS and {{ .tasks.call.outputs.SUMMARY }}"
"""


def only_child(n: Nagare, run_id: str, task_id: str = "call") -> dict[str, Any]:
    child_id = wait_for(lambda: n.task(run_id, task_id).get("child_run_id"), 10)
    return n.get(f"/api/runs/{child_id}")  # type: ignore[no-any-return]


def test_a_dag_step_runs_its_child_and_gets_its_outputs(nagare_factory: Any) -> None:
    n: Nagare = nagare_factory(dags={"child.yaml": CHILD, "parent.yaml": PARENT})
    run_id = n.trigger("parent")
    run = n.wait_run(run_id)
    assert run["status"] == "success", run
    call = n.task(run_id, "call")
    assert call["outputs"] == {"ROWS": "21", "SUMMARY": "us/7: 21"}
    child = n.get(f"/api/runs/{call['child_run_id']}")
    assert child["parent"] == {"run_id": run_id, "task_id": "call"}
    assert child["params"] == {"region": "us", "batch": 7}
    assert child["outputs"] == {"ROWS": "21", "SUMMARY": "us/7: 21"}
    assert "got 21 and us/7: 21" in n.log(run_id, "after")
    assert f"started child run {child['run_id']} of 'child'" in n.log(run_id, "call")
    assert "parent" not in run or run["parent"] is None


def test_outputs_that_fail_to_render_fail_the_child_run_and_the_step(nagare_factory: Any) -> None:
    broken = CHILD.replace('"{{ .params.region }}', '"{{ .params.region | tonumber }}')
    n: Nagare = nagare_factory(dags={"child.yaml": broken, "parent.yaml": PARENT})
    run_id = n.trigger("parent")
    assert n.wait_run(run_id)["status"] == "failed"
    call = n.task(run_id, "call")
    child = n.get(f"/api/runs/{call['child_run_id']}")
    assert child["status"] == "failed"
    assert child["reason"].startswith("outputs.SUMMARY: ")
    assert "outputs" not in child or child["outputs"] is None
    assert call["status"] == "failed"
    assert call["message"].startswith(f"child run {child['run_id']} failed: outputs.SUMMARY: ")


def test_a_bad_call_fails_only_its_step_with_a_clear_message(nagare_factory: Any) -> None:
    n: Nagare = nagare_factory(
        dags={
            "child.yaml": CHILD,
            "p.yaml": """
                id: p
                tasks:
                  - {id: unknown, type: dag, dag_id: not_there}
                  - id: bad_params
                    type: dag
                    dag_id: child
                    params: {batch: "{{ .dag.id }}"}
                  - {id: fine, command: "true"}
            """,
        }
    )
    run_id = n.trigger("p")
    assert n.wait_run(run_id)["status"] == "failed"
    tasks = n.tasks(run_id)
    assert tasks["unknown"]["status"] == "failed"
    assert tasks["unknown"]["message"] == "cannot call 'not_there': DAG 'not_there' not found"
    assert tasks["bad_params"]["status"] == "failed"
    assert tasks["bad_params"]["message"].startswith("cannot call 'child': ")
    assert "batch" in tasks["bad_params"]["message"]
    assert tasks["fine"]["status"] == "success"


def test_recursion_stops_at_the_depth_limit(nagare_factory: Any) -> None:
    n: Nagare = nagare_factory(
        dags={
            "loop.yaml": """
                id: loop
                tasks:
                  - {id: again, type: dag, dag_id: "{{ .dag.id }}"}
            """
        }
    )
    run_id = n.trigger("loop")
    assert n.wait_run(run_id, timeout=30)["status"] == "failed"
    chain = [run_id]
    while True:
        child = n.task(chain[-1], "again").get("child_run_id")
        if not child:
            break
        chain.append(child)
    assert len(chain) == MAX_CALL_DEPTH + 1  # the top run and 10 nested calls
    deepest = n.task(chain[-1], "again")
    assert deepest["message"] == (
        f"cannot call 'loop': calls would nest deeper than {MAX_CALL_DEPTH}: "
        + " → ".join(["loop"] * (MAX_CALL_DEPTH + 2))
    )
    assert n.task(run_id, "again")["message"].startswith(f"child run {chain[1]} failed")


EVENT_CHILD = """
id: event_child
tasks:
  - {id: hold, type: wait, event: go}
"""

WAITING_CHILD = """
id: slow_child
tasks:
  - id: work
    command: echo $$ > "{pidfile}"; exec sleep 60
"""


def caller_of(child: str, extra: str = "") -> str:
    return f"""
        id: caller
        tasks:
          - id: call
            type: dag
            dag_id: {child}
            {extra}
    """


def child_pid(path: Path) -> psutil.Process:
    wait_for(lambda: path.exists() and path.read_text().strip(), 10)
    return psutil.Process(int(path.read_text()))


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("kill", ["task", "run"])
def test_killing_the_parent_kills_the_child_run_and_its_processes(
    nagare_factory: Any, tmp_path: Path, kill: str
) -> None:
    pidfile = tmp_path / "pid"
    n: Nagare = nagare_factory(
        dags={
            "slow.yaml": WAITING_CHILD.format(pidfile=pidfile),
            "caller.yaml": caller_of("slow_child"),
        }
    )
    run_id = n.trigger("caller")
    process = child_pid(pidfile)
    child = only_child(n, run_id)
    path = f"/api/runs/{run_id}" + ("/tasks/call" if kill == "task" else "")
    assert n.call("POST", path + "/kill").status == 200
    assert n.wait_run(child["run_id"])["status"] == "cancelled"
    wait_for(lambda: gone(process), 10, message="the child's process to die")
    assert n.wait_run(run_id)["status"] in ("cancelled", "failed")
    assert n.task(run_id, "call")["status"] == "cancelled"
    assert n.task(child["run_id"], "work")["status"] == "cancelled"


def test_a_killed_child_fails_the_step_and_a_retry_starts_a_new_child(
    nagare_factory: Any, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    flaky = """
        id: flaky
        tasks:
          - id: work
            command: |
              if [ -e "{marker}" ]; then echo "RESULT=second" >> "$NAGARE_OUTPUT"; exit 0; fi
              touch "{marker}"; echo $$ > "{pidfile}"; exec sleep 60
        outputs:
          RESULT: "{{{{ .tasks.work.outputs.RESULT }}}}"
    """.format(marker=tmp_path / "marker", pidfile=pidfile)
    n: Nagare = nagare_factory(
        dags={"flaky.yaml": flaky, "caller.yaml": caller_of("flaky", "retries: 1")}
    )
    run_id = n.trigger("caller")
    process = child_pid(pidfile)
    first = only_child(n, run_id)
    assert n.call("POST", f"/api/runs/{first['run_id']}/kill").status == 200
    wait_for(lambda: gone(process), 10, message="the child's process to die")
    run = n.wait_run(run_id)
    assert run["status"] == "success", run
    call = n.task(run_id, "call")
    assert (call["attempt"], call["outputs"]) == (2, {"RESULT": "second"})
    assert call["child_run_id"] != first["run_id"]
    assert n.get(f"/api/runs/{first['run_id']}")["status"] == "cancelled"
    second = n.get(f"/api/runs/{call['child_run_id']}")
    assert (second["status"], second["parent"]["run_id"]) == ("success", run_id)
    attempts = n.get(f"/api/runs/{run_id}/tasks/call/attempts")
    assert attempts[0]["status"] == "failed"
    retried = f"child run {first['run_id']} cancelled; retrying (attempt 2 of 2)"
    assert retried in attempts[0]["message"]


def test_the_step_timeout_kills_the_child_run(nagare_factory: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    n: Nagare = nagare_factory(
        dags={
            "slow.yaml": WAITING_CHILD.format(pidfile=pidfile),
            "caller.yaml": caller_of("slow_child", "timeout_seconds: 1"),
        }
    )
    run_id = n.trigger("caller")
    process = child_pid(pidfile)
    child = only_child(n, run_id)
    assert n.wait_run(run_id)["status"] == "failed"
    call = n.task(run_id, "call")
    assert call["timed_out"] is True
    assert (
        call["message"]
        == f"timed out after 1 s waiting (its child run {child['run_id']} is killed)"
    )
    assert n.wait_run(child["run_id"])["status"] == "cancelled"
    wait_for(lambda: gone(process), 10, message="the child's process to die")


def test_a_child_run_timeout_fails_the_step(nagare_factory: Any, tmp_path: Path) -> None:
    slow = WAITING_CHILD.format(pidfile=tmp_path / "pid").replace(
        "id: slow_child", "id: slow_child\ntimeout_seconds: 1"
    )
    n: Nagare = nagare_factory(dags={"slow.yaml": slow, "caller.yaml": caller_of("slow_child")})
    run_id = n.trigger("caller")
    assert n.wait_run(run_id)["status"] == "failed"
    call = n.task(run_id, "call")
    expected = f"child run {call['child_run_id']} failed: timed out after 1 s"
    assert call["message"] == expected, call


def test_a_waiting_parent_holds_no_slot(nagare_factory: Any) -> None:
    """One slot in the only pool: the child's task gets it while its parent waits."""
    n: Nagare = nagare_factory(
        dags={"child.yaml": CHILD, "parent.yaml": PARENT}, worker_pools={"default": 1}
    )
    assert n.app.config.worker_pools == {"default": 1}
    run_id = n.trigger("parent")
    assert n.wait_run(run_id)["status"] == "success"
    call = n.task(run_id, "call")
    assert call["pool"] != "default"  # held by the engine, in no pool of slots
    assert n.task(call["child_run_id"], "count")["pool"] == "default"


def test_waiting_parents_and_children_hold_no_thread(nagare_factory: Any) -> None:
    """Twenty parents wait for twenty children waiting for an event: no thread more."""
    n: Nagare = nagare_factory(
        dags={"child.yaml": EVENT_CHILD, "caller.yaml": caller_of("event_child")}
    )
    before = threading.active_count()
    runs = [n.trigger("caller") for _ in range(20)]
    for run_id in runs:
        child = only_child(n, run_id)["run_id"]
        wait_for(lambda c=child: n.task(c, "hold")["status"] == "waiting", 10)
    assert threading.active_count() <= before + 2  # (an HTTP request's thread may linger)
    assert len(n.call("POST", "/api/events/go", {}).json["matched"]) == 20
    for run_id in runs:
        assert n.wait_run(run_id)["status"] == "success"


def test_the_subdag_example_runs(nagare_factory: Any) -> None:
    names = ("subdag_example.yaml", "subdag_child.yaml")
    n: Nagare = nagare_factory(dags={k: (ROOT / "dags" / k).read_text() for k in names})
    run_id = n.trigger("subdag_example")
    assert n.wait_run(run_id)["status"] == "success"
    tasks = n.tasks(run_id)
    assert tasks["load_region"]["outputs"] == {
        "ROWS": "750",
        "SUMMARY": "us: 750 rows in batches of 250",
    }
    assert tasks["load_default"]["outputs"]["ROWS"] == "300"
    log = n.log(run_id, "report")
    assert "us: 750 rows in batches of 250" in log and "total: 1050" in log
