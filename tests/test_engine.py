"""Run-time semantics of the engine with real processes: dependencies, failures, retries,
timeouts, kill, map fan-out, trigger_dag, pools and hot reload."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import Nagare, wait_for


def load(nagare: Nagare, name: str, text: str) -> None:
    nagare.write_dag(name, text)
    nagare.app.folder.scan()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/status") as handle:
            return "zombie" not in handle.read()
    except OSError:
        return False


def read_pid(path: Path) -> int:
    return int(
        wait_for(lambda: path.exists() and path.read_text().strip(), 10, message=f"pid file {path}")
    )


# ---------------------------------------------------------------- dependencies and failures


def test_chain_runs_in_order_and_env_is_assembled(nagare: Nagare) -> None:
    load(
        nagare,
        "chain.yaml",
        """
    id: chain
    env: {REGION: eu, SHARED: dag}
    tasks:
      - id: first
        env: {SHARED: task, PORT: 5432}
        command: echo "$REGION $SHARED $PORT $NAGARE_DAG_ID $NAGARE_TASK_ID $NAGARE_ATTEMPT $K"
      - id: second
        depends_on: first
        command: echo "run=$NAGARE_RUN_ID trigger=$NAGARE_TRIGGER"
    """,
    )
    os.environ["NAGARE_API_KEY"] = "must-not-leak"
    try:
        run_id = nagare.trigger("chain", {"K": "v", "SHARED": "conf"})
        assert nagare.wait_run(run_id)["status"] == "success"
    finally:
        del os.environ["NAGARE_API_KEY"]
    assert nagare.log(run_id, "first") == "eu task 5432 chain first 1 v\n"
    assert nagare.log(run_id, "second") == f"run={run_id} trigger=manual\n"
    tasks = nagare.tasks(run_id)
    assert tasks["first"]["completed_at"] <= tasks["second"]["started_at"]
    assert tasks["first"]["metrics"]["executor_type"] == "local"


def test_secrets_are_not_in_task_env(nagare: Nagare) -> None:
    load(
        nagare,
        "env.yaml",
        """
    id: envdump
    tasks:
      - id: dump
        command: env
    """,
    )
    os.environ["NAGARE_API_KEY"] = "planted-key-123"
    os.environ["NAGARE_TOKEN"] = "planted-token-456"
    try:
        run_id = nagare.trigger("envdump")
        nagare.wait_run(run_id)
    finally:
        del os.environ["NAGARE_API_KEY"], os.environ["NAGARE_TOKEN"]
    log = nagare.log(run_id, "dump")
    assert "planted-key-123" not in log and "planted-token-456" not in log
    assert "NAGARE_EXECUTION_DATE=" in log


def test_failure_marks_the_whole_downstream_chain_upstream_failed(nagare: Nagare) -> None:
    load(
        nagare,
        "fail.yaml",
        """
    id: failing
    tasks:
      - id: a
        command: echo boom; exit 3
      - id: b
        depends_on: a
        command: echo never
      - id: c
        depends_on: b
        command: echo never
      - id: side
        command: echo independent branch
    """,
    )
    run_id = nagare.trigger("failing")
    run = nagare.wait_run(run_id)
    assert run["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["a"]["status"] == "failed" and tasks["a"]["exit_code"] == 3
    assert tasks["a"]["message"] == "exit code 3"
    assert tasks["b"]["status"] == tasks["c"]["status"] == "upstream_failed"
    assert tasks["side"]["status"] == "success"
    assert run["task_counts"] == {"failed": 1, "upstream_failed": 2, "success": 1}


def test_large_output_and_huge_line_do_not_hang(nagare: Nagare) -> None:
    load(
        nagare,
        "big.yaml",
        """
    id: big
    tasks:
      - id: huge_line
        command: head -c 10000000 /dev/zero | tr '\\0' x; echo; echo after
      - id: many_lines
        command: seq 1 200000
    """,
    )
    run_id = nagare.trigger("big")
    assert nagare.wait_run(run_id, 60)["status"] == "success"
    lines = nagare.log(run_id, "huge_line").splitlines()
    assert "line truncated" in lines[0] and len(lines[0]) < 70_000
    assert lines[1] == "after"
    many = nagare.log(run_id, "many_lines").splitlines()
    assert len(many) == 200_000 and many[-1] == "200000"


# ---------------------------------------------------------------- retries and timeouts


def test_retries_keep_each_attempt_log_and_metrics(nagare: Nagare) -> None:
    load(
        nagare,
        "retry.yaml",
        """
    id: retry
    tasks:
      - id: flaky
        retries: 2
        retry_delay_seconds: 0.3
        command: echo "attempt $NAGARE_ATTEMPT"; [ "$NAGARE_ATTEMPT" -ge 3 ]
    """,
    )
    start = time.monotonic()
    run_id = nagare.trigger("retry")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert time.monotonic() - start >= 0.6  # two delays
    attempts = nagare.get(f"/api/runs/{run_id}/tasks/flaky/attempts")
    assert [a["status"] for a in attempts] == ["failed", "failed", "success"]
    assert all(a["metrics"] is not None for a in attempts)
    for number in (1, 2, 3):
        assert nagare.log(run_id, "flaky", attempt=number).startswith(f"attempt {number}\n")
    task = nagare.task(run_id, "flaky")
    assert task["attempt"] == 3 and task["max_attempts"] == 3


def test_retries_exhausted_then_failed(nagare: Nagare) -> None:
    load(
        nagare,
        "retry2.yaml",
        """
    id: always_fails
    tasks:
      - id: bad
        retries: 1
        command: exit 1
    """,
    )
    run_id = nagare.trigger("always_fails")
    assert nagare.wait_run(run_id)["status"] == "failed"
    assert nagare.task(run_id, "bad")["attempt"] == 2


def test_timeout_kills_the_whole_process_group(nagare: Nagare, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    load(
        nagare,
        "timeout.yaml",
        f"""
    id: slow
    tasks:
      - id: sleepy
        timeout_seconds: 0.5
        command: echo started; sleep 30 & echo $! > {pid_file}; wait
    """,
    )
    run_id = nagare.trigger("slow")
    child = read_pid(pid_file)
    run = nagare.wait_run(run_id, 10)
    assert run["status"] == "failed"
    task = nagare.task(run_id, "sleepy")
    assert task["timed_out"] is True and "timed out after 0.5s" in task["message"]
    wait_for(lambda: not pid_alive(child), 3, message="the background child to die")
    assert nagare.log(run_id, "sleepy").startswith("started\n")


def test_timed_out_attempt_is_retried(nagare: Nagare) -> None:
    load(
        nagare,
        "timeout_retry.yaml",
        """
    id: slow_then_fast
    tasks:
      - id: t
        timeout_seconds: 0.5
        retries: 1
        command: '[ "$NAGARE_ATTEMPT" -ge 2 ] || sleep 10'
    """,
    )
    run_id = nagare.trigger("slow_then_fast")
    assert nagare.wait_run(run_id)["status"] == "success"
    attempts = nagare.get(f"/api/runs/{run_id}/tasks/t/attempts")
    assert attempts[0]["timed_out"] is True and attempts[1]["status"] == "success"


# ---------------------------------------------------------------- kill


def test_kill_run_kills_process_groups_and_keeps_partial_output(
    nagare: Nagare, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    load(
        nagare,
        "long.yaml",
        f"""
    id: long
    tasks:
      - id: work
        command: echo partial; sleep 30 & echo $! > {pid_file}; wait
      - id: later
        depends_on: work
        command: echo never
    """,
    )
    run_id = nagare.trigger("long")
    grandchild = read_pid(pid_file)
    wait_for(lambda: "partial" in nagare.log(run_id, "work"), message="first output")
    started = time.monotonic()
    result = nagare.call("POST", f"/api/runs/{run_id}/kill")
    assert result.status == 200
    wait_for(lambda: not pid_alive(grandchild), 2, message="the process group to die")
    assert time.monotonic() - started < 1.5
    run = nagare.wait_run(run_id, 5)
    assert run["status"] == "cancelled" and run["completed_at"]
    tasks = nagare.tasks(run_id)
    assert tasks["work"]["status"] == "cancelled" and tasks["later"]["status"] == "cancelled"
    assert nagare.log(run_id, "work").startswith("partial\n")
    again = nagare.call("POST", f"/api/runs/{run_id}/kill")
    assert again.status == 409 and "already finished" in again.json["error"]["message"]


def test_kill_one_task_cancels_the_run_and_skips_dependants(nagare: Nagare) -> None:
    load(
        nagare,
        "two.yaml",
        """
    id: two
    tasks:
      - id: slow
        command: sleep 30
      - id: after
        depends_on: slow
        command: echo never
      - id: other
        command: echo fine
    """,
    )
    run_id = nagare.trigger("two")
    wait_for(lambda: nagare.task(run_id, "slow")["status"] == "running", message="slow to run")
    result = nagare.call("POST", f"/api/runs/{run_id}/tasks/slow/kill")
    assert result.status == 200 and result.json["status"] == "cancelled"
    run = nagare.wait_run(run_id, 5)
    assert run["status"] == "cancelled"  # as when the run is killed (only killed tasks failed)
    tasks = nagare.tasks(run_id)
    assert tasks["after"]["status"] == "upstream_failed" and tasks["other"]["status"] == "success"
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/slow/kill").status == 409
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/nope/kill").status == 404


def test_retry_after_kill_reopens_the_run(nagare: Nagare) -> None:
    load(
        nagare,
        "reopen.yaml",
        """
    id: reopen
    tasks:
      - id: gate
        command: '[ -n "$OPEN" ] || [ "$NAGARE_ATTEMPT" -ge 2 ] || sleep 30'
      - id: after
        depends_on: gate
        command: echo after
    """,
    )
    run_id = nagare.trigger("reopen")
    wait_for(lambda: nagare.task(run_id, "gate")["status"] == "running", message="gate running")
    assert nagare.call("POST", f"/api/runs/{run_id}/kill").status == 200
    assert nagare.wait_run(run_id)["status"] == "cancelled"
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/gate/retry").status == 200
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.tasks(run_id)["after"]["status"] == "success"


# ---------------------------------------------------------------- map and with_items


MAP_DAG = """
id: mapper
tasks:
  - id: source
    command: |
      echo "noise first"; echo '{items}'
  - id: each
    type: map
    map_over: source
    retries: 1
    command: |
      echo "item={{{{item}}}} env=$NAGARE_MAP_ITEM index=$NAGARE_MAP_INDEX"; {extra}
  - id: reduce
    depends_on: each
    command: echo reduced
"""


def test_map_fans_out_over_any_json_values(nagare: Nagare) -> None:
    load(
        nagare, "map.yaml", MAP_DAG.format(items='["a.csv", 7, {"k": [1, 2]}, null]', extra="true")
    )
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = nagare.tasks(run_id)
    assert list(tasks) == ["source", "each", "each[0]", "each[1]", "each[2]", "each[3]", "reduce"]
    assert nagare.log(run_id, "each[0]") == "item=a.csv env=a.csv index=0\n"
    assert nagare.log(run_id, "each[1]") == "item=7 env=7 index=1\n"
    # {{item}} is substituted as compact JSON; the shell then removes the inner quotes
    assert nagare.log(run_id, "each[2]") == 'item={k:[1,2]} env={"k":[1,2]} index=2\n'
    assert tasks["each[2]"]["item"] == {"k": [1, 2]} and tasks["each[2]"]["map_index"] == 2
    assert tasks["reduce"]["started_at"] >= max(
        tasks[f"each[{i}]"]["completed_at"] for i in range(4)
    )


def test_map_child_keeps_its_item_on_retry(nagare: Nagare) -> None:
    load(
        nagare,
        "map.yaml",
        MAP_DAG.format(
            items='["x", "y"]', extra='[ "$NAGARE_ATTEMPT" -ge 2 ] || [ "{{item}}" = x ]'
        ),
    )
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.log(run_id, "each[1]", attempt=2) == "item=y env=y index=1\n"


def test_failed_map_child_fails_parent_and_retry_recovers(nagare: Nagare, tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    load(
        nagare,
        "map.yaml",
        MAP_DAG.format(items='["ok", "bad"]', extra=f'[ "{{{{item}}}}" = ok ] || [ -e {flag} ]'),
    )
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["each"]["status"] == "failed" and "1 of 2" in tasks["each"]["message"]
    assert tasks["reduce"]["status"] == "upstream_failed"
    flag.touch()
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/each%5B1%5D/retry").status == 200
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.tasks(run_id)["reduce"]["status"] == "success"


def test_map_over_empty_array_succeeds_at_once(nagare: Nagare) -> None:
    load(nagare, "map.yaml", MAP_DAG.format(items="[]", extra="true"))
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert "each[0]" not in nagare.tasks(run_id)


def test_map_over_non_array_fails_with_a_clear_message(nagare: Nagare) -> None:
    load(nagare, "map.yaml", MAP_DAG.format(items="not json", extra="true"))
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "failed"
    message = nagare.task(run_id, "each")["message"]
    assert "is not a JSON array" in message and "not json" in message


def test_map_cap_fails_the_map_task(nagare_factory) -> None:  # type: ignore[no-untyped-def]
    nagare = nagare_factory(max_map_items=3)
    load(nagare, "map.yaml", MAP_DAG.format(items="[1,2,3,4]", extra="true"))
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "failed"
    assert "the limit is 3" in nagare.task(run_id, "each")["message"]


def test_map_source_stdout_past_the_cap_fails_the_map_task(nagare: Nagare) -> None:
    """Cut output would parse as fewer items (or as no array at all): the map task fails and
    says why; the source itself succeeded and its log says where its capture was cut."""
    nagare.app.logs.max_stdout_bytes = 100  # the real cap is 64 MiB
    load(
        nagare,
        "map.yaml",
        """
    id: mapper
    tasks:
      - id: source
        command: |
          echo '['
          printf '  "item-%s",\\n' $(seq 1 20)
          echo '  "last"'
          echo ']'
      - id: each
        type: map
        map_over: source
        command: echo "{{item}}"
      - id: reduce
        depends_on: each
        command: echo reduced
    """,
    )
    run_id = nagare.trigger("mapper")
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["source"]["status"] == "success"
    assert (tasks["each"]["status"], tasks["each"]["message"]) == (
        "failed",
        "the stdout of 'source' is larger than 100 bytes, the most a map source may print "
        "(its items would be cut)",
    )
    assert "each[0]" not in tasks
    assert tasks["reduce"]["status"] == "upstream_failed"
    assert (
        "[nagare] the captured stdout was cut at 100 bytes, the most a map source may print "
        "(the map task over it will fail)\n"
    ) in nagare.log(run_id, "source")
    assert '"last"' in nagare.log(run_id, "source")  # the log itself keeps every line


def test_with_items_clones_run_and_fan_in(nagare: Nagare) -> None:
    load(
        nagare,
        "loop.yaml",
        """
    id: loop
    tasks:
      - id: get
        with_items: [eu, us]
        command: echo "get {{item}}"
      - id: all
        depends_on: get
        command: echo done
    """,
    )
    run_id = nagare.trigger("loop")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.log(run_id, "get_us") == "get us\n"
    assert set(nagare.tasks(run_id)) == {"get_eu", "get_us", "all"}


# ---------------------------------------------------------------- trigger_dag


def test_trigger_dag_starts_the_other_dag_with_conf(nagare: Nagare) -> None:
    load(
        nagare,
        "child.yaml",
        """
    id: child
    tasks:
      - id: hello
        command: echo "child got $COLOR"
    """,
    )
    load(
        nagare,
        "parent.yaml",
        """
    id: parent
    tasks:
      - id: kick
        type: trigger_dag
        dag_id: child
      - id: missing
        type: trigger_dag
        dag_id: no_such_dag
    """,
    )
    run_id = nagare.trigger("parent", {"COLOR": "blue"})
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["kick"]["status"] == "success"
    assert "no_such_dag" in tasks["missing"]["message"]
    child_runs = nagare.get("/api/runs?dag_id=child")["data"]
    assert len(child_runs) == 1 and child_runs[0]["trigger"] == "triggered"
    child_id = child_runs[0]["run_id"]
    assert child_id in tasks["kick"]["message"]
    nagare.wait_run(child_id)
    assert nagare.log(child_id, "hello") == "child got blue\n"


# ---------------------------------------------------------------- pools


def test_pool_of_one_runs_tasks_one_at_a_time(nagare_factory) -> None:  # type: ignore[no-untyped-def]
    nagare = nagare_factory(worker_pools={"serial": 1})
    load(
        nagare,
        "serial.yaml",
        """
    id: serial
    tasks:
      - id: job
        with_items: [a, b, c]
        pool: serial
        command: echo "$(date +%s.%N) start"; sleep 0.3; echo "$(date +%s.%N) end"
    """,
    )
    run_id = nagare.trigger("serial")
    assert nagare.wait_run(run_id)["status"] == "success"
    spans = []
    for item in "abc":
        lines = nagare.log(run_id, f"job_{item}").split()
        spans.append((float(lines[0]), float(lines[2])))
    spans.sort()
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), spans


def test_pool_of_size_zero_keeps_tasks_queued(nagare_factory) -> None:  # type: ignore[no-untyped-def]
    nagare = nagare_factory(worker_pools={"gpu": 0})
    load(
        nagare,
        "gpu.yaml",
        """
    id: gpu
    tasks:
      - id: train
        pool: gpu
        command: echo never here
    """,
    )
    run_id = nagare.trigger("gpu")
    assert nagare.task(run_id, "train")["status"] == "queued"  # never claimed: test_services
    pools = {p["pool"]: p for p in nagare.get("/api/pools")}
    assert pools["gpu"]["queued"] == 1 and pools["gpu"]["remote_only"] is True


# ---------------------------------------------------------------- hot reload


def test_dag_folder_changes_take_effect_within_a_second(nagare: Nagare) -> None:
    good = """
    id: live
    description: version {n}
    tasks:
      - id: t
        command: echo v{n}
    """
    nagare.write_dag("live.yaml", good.format(n=1))
    wait_for(
        lambda: "live" in {d["dag_id"] for d in nagare.get("/api/dags")},
        2,
        message="the new DAG to load",
    )
    run_id = nagare.trigger("live")
    nagare.wait_run(run_id)
    edited = nagare.write_dag("live.yaml", good.format(n=2))  # same size: only the time differs
    os.utime(edited, ns=(time.time_ns(), edited.stat().st_mtime_ns + 10_000_000))
    wait_for(
        lambda: nagare.get("/api/dags/live")["description"] == "version 2",
        2,
        message="the edit to load",
    )
    nagare.write_dag("live.yaml", "id: live\ntasks:\n  - id: t\n    comand: x\n")
    errors = wait_for(
        lambda: nagare.get("/api/dags/errors").get("live.yaml"), 2, message="the error to show"
    )
    assert "did you mean 'command'" in errors[0] and "live.yaml:4" in errors[0]
    assert nagare.get("/api/dags/live")["description"] == "version 2"  # last good keeps running
    (nagare.root / "dags" / "live.yaml").unlink()
    wait_for(
        lambda: nagare.call("GET", "/api/dags/live").status == 404,
        2,
        message="the DAG to disappear",
    )
    assert nagare.get("/api/dags/errors") == {}


def test_duplicate_dag_id_keeps_the_first_file(nagare: Nagare) -> None:
    text = "id: same\ndescription: {}\ntasks:\n  - {{id: t, command: x}}\n"
    load(nagare, "a_first.yaml", text.format("first"))
    load(nagare, "b_second.yaml", text.format("second"))
    assert nagare.get("/api/dags/same")["description"] == "first"
    assert "already defined by a_first.yaml" in nagare.get("/api/dags/errors")["b_second.yaml"][0]


# ---------------------------------------------------------------- cron


def test_cron_fires_on_its_slot_with_a_deterministic_run_id(nagare: Nagare) -> None:
    load(
        nagare,
        "tick.yaml",
        """
    id: tick
    schedule: "@every 1s"
    tasks:
      - id: t
        command: echo "$NAGARE_SCHEDULED_TIME"
    """,
    )
    nagare.app.scheduler.wake(None)
    runs = wait_for(
        lambda: nagare.get("/api/runs?dag_id=tick")["data"], 3, message="a scheduled run"
    )
    run = runs[-1]
    assert run["trigger"] == "scheduled"
    assert run["run_id"].startswith("tick__scheduled__")
    slot = run["execution_date"]
    assert slot.endswith(".000Z")
    created = run["created_at"]
    lag = _ms(created) - _ms(slot)
    assert 0 <= lag < 500, (slot, created)
    nagare.wait_run(run["run_id"])
    assert nagare.log(run["run_id"], "t").strip() == slot


def test_pause_stops_scheduling_and_activate_skips_missed_slots(nagare: Nagare) -> None:
    load(
        nagare,
        "tick.yaml",
        """
    id: tick
    schedule: "@every 1s"
    catchup: true
    tasks:
      - id: t
        command: "true"
    """,
    )
    assert nagare.call("POST", "/api/dags/tick/pause").json == {"dag_id": "tick", "paused": True}
    dag = nagare.get("/api/dags/tick")
    assert dag["paused"] is True and dag["next_run_at"] is None  # (the rule: test_services)
    count = nagare.get("/api/runs?dag_id=tick")["total"]
    nagare.call("POST", "/api/dags/tick/activate")
    wait_for(
        lambda: nagare.get("/api/runs?dag_id=tick")["total"] > count,
        3,
        message="scheduling to resume",
    )
    runs = nagare.get("/api/runs?dag_id=tick")["data"]
    assert all(r["trigger"] == "scheduled" for r in runs)  # nothing caught up from the pause


def _ms(iso: str) -> int:
    from nagare.clock import parse_iso

    return parse_iso(iso)
