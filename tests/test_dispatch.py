"""The local dispatcher: one thread runs every local task through one Reactor; attempts that
end together are recorded with the next claims in one transaction (what the store does with them
is the store contract's: tests/test_store_contract.py); silent tasks cost no log file; tasks
start with the signal dispositions of a normal process; the pid records that the restart
recovery reads."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Nagare, wait_for

from nagare import pools
from nagare.executors.procfs import boot_ticks, process_alive, tree_pids, tree_rss
from nagare.executors.spawn import RunAs, Spawner


def test_eight_parallel_tasks_run_at_once_on_one_dispatcher_thread(nagare_factory) -> None:  # type: ignore[no-untyped-def]
    nagare: Nagare = nagare_factory(
        worker_pools={"default": 8},
        dags={
            "p.yaml": "id: p\ntasks:\n"
            + "".join(f"  - id: t{i}\n    command: sleep 1\n" for i in range(8))
        },
    )
    run_id = nagare.trigger("p")
    wait_for(lambda: nagare.app.pools.busy()["default"] == 8, 10, message="8 busy slots")
    names = [t.name for t in threading.enumerate()]
    assert names.count("pools") == 1
    assert not [n for n in names if n.startswith(("task-", "pool-"))], names
    assert sum(t["status"] == "running" for t in nagare.tasks(run_id).values()) == 8
    assert nagare.wait_run(run_id)["status"] == "success"


def test_a_silent_task_leaves_no_log_file_and_reads_as_empty(nagare: Nagare) -> None:
    nagare.write_dag(
        "s.yaml",
        """
        id: s
        tasks:
          - id: quiet
            command: "true"
          - id: loud
            command: echo hello
        """,
    )
    nagare.app.folder.scan()
    run_id = nagare.trigger("s")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks = nagare.tasks(run_id)
    folder = Path(nagare.app.logs.root) / run_id
    assert not (folder / f"{tasks['quiet']['id']}.1.log").exists()
    assert (folder / f"{tasks['loud']['id']}.1.log").read_text() == "hello\n"
    assert nagare.log(run_id, "quiet") == ""
    assert nagare.log(run_id, "loud") == "hello\n"


def test_tasks_start_with_no_ignored_or_blocked_signals(nagare: Nagare) -> None:
    """The server ignores SIGPIPE (Python does); a task must not inherit that, or `yes | head`
    style pipelines would spin on write errors instead of ending."""
    nagare.write_dag(
        "sig.yaml",
        """
        id: sig
        tasks:
          - id: masks  # builtins only: the shell's own masks (a waiting shell blocks signals)
            command: >-
              while read -r k v; do case $k in SigIgn:|SigBlk:) echo "$k$v";; esac;
              done < /proc/$$/status
          - id: pipe
            command: yes | head -n 1
            timeout_seconds: 10
        """,
    )
    nagare.app.folder.scan()
    run_id = nagare.trigger("sig")
    assert nagare.wait_run(run_id)["status"] == "success"
    lines = dict(line.split(":") for line in nagare.log(run_id, "masks").splitlines())
    assert set(lines) == {"SigIgn", "SigBlk"}, lines
    # the standard signals 1-31 (32 and 33 belong to the C library, which sets them itself)
    standard = (1 << 31) - 1
    assert int(lines["SigIgn"], 16) & standard == 0
    assert int(lines["SigBlk"], 16) & standard == 0
    assert nagare.log(run_id, "pipe") == "y\n"


def test_a_task_leads_its_own_session_reads_dev_null_and_gets_no_server_fds(
    nagare: Nagare,
) -> None:
    nagare.write_dag(
        "own.yaml",
        """
        id: own
        tasks:
          - id: show
            command: >-
              read -r pid comm state ppid pgrp sid rest < /proc/$$/stat;
              echo "$pid $pgrp $sid"; readlink /proc/$$/fd/0; ls /proc/$$/fd | tr '\\n' ' '
        """,
    )
    nagare.app.folder.scan()
    run_id = nagare.trigger("own")
    assert nagare.wait_run(run_id)["status"] == "success"
    ids, stdin, fds = nagare.log(run_id, "show").splitlines()
    pid, group, session = ids.split()
    assert pid == group == session  # session and process-group leader: a kill takes the group
    assert stdin == "/dev/null"
    assert fds.split() == ["0", "1", "2"]  # no database, socket or pipe of the server leaks


def test_a_shell_that_cannot_be_started_is_reported_and_leaks_nothing() -> None:
    spawner = Spawner(shell="/nonexistent/sh")
    spawner._stdin()  # /dev/null is opened once, kept for every start
    spawner.guardian.start()  # so is the guardian's pipe
    fds = len(os.listdir("/proc/self/fd"))
    try:
        spawner.spawn("true", {})
    except OSError as exc:
        assert exc.errno == errno.ENOENT, exc
    else:
        raise AssertionError("the start did not fail")
    assert len(os.listdir("/proc/self/fd")) == fds
    spawner.close()
    zombies = [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []  # the child that reported the failure was reaped


def _cpu_list(status: str) -> str:
    return next(
        line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")
    )


def test_a_task_may_run_on_every_cpu_the_server_may_use(nagare: Nagare) -> None:
    nagare.write_dag(
        "cpus.yaml",
        "id: cpus\ntasks:\n  - id: show\n    command: grep Cpus_allowed_list /proc/$$/status\n",
    )
    nagare.app.folder.scan()
    run_id = nagare.trigger("cpus")
    assert nagare.wait_run(run_id)["status"] == "success"
    server = Path("/proc/self/status").read_text()
    assert _cpu_list(nagare.log(run_id, "show")) == _cpu_list(server)


def _recorded_affinity_calls(monkeypatch) -> list[tuple[int, set[int]]]:  # type: ignore[no-untyped-def]
    calls: list[tuple[int, set[int]]] = []
    set_affinity = os.sched_setaffinity

    def recording(pid: int, cpus: set[int]) -> None:
        calls.append((pid, set(cpus)))
        set_affinity(pid, cpus)

    monkeypatch.setattr(os, "sched_setaffinity", recording)
    return calls


def _run_to_end(spawner: Spawner, command: str) -> tuple[int, int]:
    """Start `command` as a task process is started and wait for it: (pid, exit code)."""
    pid, stdout, stderr = spawner.spawn(command, {"PATH": os.defpath})
    os.close(stdout)
    os.close(stderr)
    return pid, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_new_task_process_is_moved_off_the_starting_cpu_then_gets_all_its_cpus_back(
    monkeypatch,
) -> None:  # type: ignore[no-untyped-def]
    allowed = os.sched_getaffinity(0)
    spawner = Spawner()
    if len(allowed) < 2 or not spawner.hands_off_cpu:
        pytest.skip("needs two CPUs and the C library's sched_getcpu")
    calls = _recorded_affinity_calls(monkeypatch)
    pid, stdout, stderr = spawner.spawn("sleep 0.3", {"PATH": os.defpath})
    try:
        (moved_pid, moved_to), (back_pid, back_to) = calls
        assert moved_pid == back_pid == pid
        assert len(moved_to) == len(allowed) - 1 and moved_to < allowed  # off the starting CPU
        assert back_to == allowed == os.sched_getaffinity(pid)  # the task sees every CPU
    finally:
        os.close(stdout)
        os.close(stderr)
        os.waitpid(pid, 0)


def test_where_the_kernel_refuses_the_move_tasks_start_as_before(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spawner = Spawner()
    if len(os.sched_getaffinity(0)) < 2 or not spawner.hands_off_cpu:
        pytest.skip("needs two CPUs and the C library's sched_getcpu")
    calls = _recorded_affinity_calls(monkeypatch)

    def refused(pid: int, cpus: set[int]) -> None:
        calls.append((pid, set(cpus)))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refused)
    assert _run_to_end(spawner, "exit 0")[1] == 0
    assert not spawner.hands_off_cpu  # given up for good: no failing call on every start
    calls.clear()
    assert _run_to_end(spawner, "exit 4")[1] == 4
    assert calls == []


def test_a_server_on_one_cpu_moves_nothing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = _recorded_affinity_calls(monkeypatch)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert _run_to_end(Spawner(), "true")[1] == 0
    assert calls == []


def test_starts_fall_back_to_posix_spawn_where_the_vfork_helper_differs() -> None:
    def other_python(*args: object) -> int:
        raise TypeError(f"fork_exec() takes exactly {len(args) + 1} arguments")

    spawner = Spawner(fork_exec=other_python)
    assert spawner.uses_vfork
    pid, stdout, stderr = spawner.spawn("echo fallback; exit 3", {"PATH": os.defpath})
    try:
        assert os.read(stdout, 100) == b"fallback\n"
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
    finally:
        os.close(stdout)
        os.close(stderr)
    assert not spawner.uses_vfork  # once: later starts go straight to posix_spawn


def test_the_pid_record_identifies_the_process_within_a_second_of_its_start() -> None:
    before = boot_ticks()
    process = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(process.pid, before)
        # the same pid with a recorded start 5 s after (or before) its real one: another process
        assert not process_alive(process.pid, before + 5 * 100)
        assert not process_alive(process.pid, before - 5 * 100)
    finally:
        process.kill()
        process.wait()
    assert not process_alive(process.pid, before)


def test_a_tasks_memory_sample_finds_its_whole_process_tree_as_psutil_does() -> None:
    """The sample reads each member's children (/proc/PID/task/TID/children), not every
    process's /proc/PID/stat: the same tree, at the cost of the tree."""
    script = "sleep 30 & (sleep 30 & sleep 30; wait) & wait"
    process = subprocess.Popen(["sh", "-c", script])
    try:
        wait_for(lambda: len(tree_pids(process.pid)) == 5, 5, 0.01, "the tree")
        found = sorted(tree_pids(process.pid))
        root = psutil.Process(process.pid)
        assert found == sorted([process.pid, *(c.pid for c in root.children(recursive=True))])
        assert tree_rss(process.pid) > 0
    finally:
        for pid in tree_pids(process.pid)[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        process.kill()
        process.wait()
    assert tree_pids(process.pid) == []


def test_the_slots_ended_attempts_leave_are_claimed_in_the_transaction_that_records_them(
    nagare_factory,
) -> None:  # type: ignore[no-untyped-def]
    tasks = "".join(f"  - id: t{i}\n    command: 'true'\n" for i in range(4))
    nagare = nagare_factory(
        worker_pools={"default": 1}, dags={"one.yaml": f"id: one\ntasks:\n{tasks}"}
    )
    store = nagare.app.store
    turns: list[tuple[int, dict[str, int]]] = []
    finish_and_claim = store.tasks.finish_and_claim

    def recording(finishes, wants, worker, clock, lease_ms=None, states=None):  # type: ignore[no-untyped-def]
        turns.append((len(finishes), dict(wants)))
        return finish_and_claim(finishes, wants, worker, clock, lease_ms, states)

    store.tasks.finish_and_claim = recording  # type: ignore[method-assign]
    run_id = nagare.trigger("one")
    assert nagare.wait_run(run_id)["status"] == "success"
    recorded = [wants for finished, wants in turns if finished]
    # each of the first three attempts to end frees the pool's one slot for the next task in
    # the same transaction, not one turn later
    assert recorded[:3] == [{"default": 1}] * 3, turns
    assert len(turns) <= 6, turns


def test_a_retry_starts_when_due_not_at_the_next_safety_sweep(nagare: Nagare) -> None:
    """The scheduler learns a retry's time from the attempt that set it (for map children
    too, which its run view does not hold), rather than from its 5 s sweep."""
    nagare.write_dag(
        "r.yaml",
        """
        id: r
        tasks:
          - id: plain
            retries: 1
            retry_delay_seconds: 0.2
            command: '[ "$NAGARE_ATTEMPT" -ge 2 ]'
          - id: items
            command: echo '["a"]'
          - id: child
            type: map
            map_over: items
            retries: 1
            retry_delay_seconds: 0.2
            command: '[ "$NAGARE_ATTEMPT" -ge 2 ]'
        """,
    )
    nagare.app.folder.scan()
    run_id = nagare.trigger("r")
    assert nagare.wait_run(run_id)["status"] == "success"
    retried = [t for t in nagare.get(f"/api/runs/{run_id}/tasks") if t["attempt"] == 2]
    assert len(retried) == 2, retried  # `plain` and the map child
    for task in retried:
        first, second = nagare.get(f"/api/runs/{run_id}/tasks/{task['task_id']}/attempts")
        gap = _seconds(second["started_at"]) - _seconds(first["completed_at"])
        assert 0.15 <= gap < 2.5, (task["task_id"], gap)


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_task_that_ignores_sigterm_is_killed_after_the_grace_period(
    nagare: Nagare, tmp_path: Path
) -> None:
    """The kill escalates to SIGKILL on the mux's timer, though nothing else wakes it."""
    pid_file = tmp_path / "stubborn.pid"
    nagare.write_dag(
        "stubborn.yaml",
        f"""
        id: stubborn
        tasks:
          - id: hold
            command: trap '' TERM; sleep 30 & echo $! > {pid_file}; wait
        """,
    )
    nagare.app.folder.scan()
    run_id = nagare.trigger("stubborn")
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), message="the sleep")
    sleeper = int(pid_file.read_text())
    killed_at = time.monotonic()
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/hold/kill").status == 200
    nagare.wait_run(run_id)
    assert nagare.task(run_id, "hold")["status"] == "cancelled"
    assert time.monotonic() - killed_at < 5  # SIGTERM ignored, SIGKILL 0.5 s later
    wait_for(lambda: not process_alive(sleeper, None), 5, message="the sleep to be gone")


def test_output_held_open_by_a_background_process_is_drained_for_a_second_at_most(
    nagare: Nagare,
) -> None:
    """The shell exits at once; its background child keeps stdout open: the attempt ends one
    drain period later (not when the child would finish) and the child is killed with it."""
    nagare.write_dag(
        "drain.yaml",
        """
        id: drain
        tasks:
          - id: bg
            command: (sleep 20; echo late) & echo early
        """,
    )
    nagare.app.folder.scan()
    started = time.monotonic()
    run_id = nagare.trigger("drain")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert time.monotonic() - started < 10
    assert nagare.log(run_id, "bg") == "early\n"


CHAIN = """
id: ab
tasks:
  - id: a
    command: sleep 0.3
  - id: b
    command: "true"
    depends_on: [a]
"""


def _record_settling_threads(nagare: Nagare) -> list[str]:
    """The threads that run the scheduler passes settling finished tasks."""
    scheduler = nagare.app.scheduler
    threads: list[str] = []
    advance = scheduler.advance

    def recording(run_id, now, finished=None, known=None):  # type: ignore[no-untyped-def]
        if finished:
            threads.append(threading.current_thread().name)
        return advance(run_id, now, finished, known)

    scheduler.advance = recording  # type: ignore[method-assign]
    return threads


def test_the_dispatcher_settles_the_runs_of_its_finished_tasks_itself(nagare: Nagare) -> None:
    nagare.write_dag("ab.yaml", CHAIN)
    nagare.app.folder.scan()
    threads = _record_settling_threads(nagare)
    run_id = nagare.trigger("ab")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert threads and set(threads) == {"pools"}, threads  # no hand-off to the scheduler thread


def test_finished_tasks_wait_for_a_scheduler_pass_under_way_then_go_on(nagare: Nagare) -> None:
    nagare.write_dag("ab.yaml", CHAIN)
    nagare.app.folder.scan()
    threads = _record_settling_threads(nagare)
    run_id = nagare.trigger("ab")
    wait_for(lambda: nagare.task(run_id, "a")["status"] == "running", 5, message="a running")
    scheduler_pass = nagare.app.scheduler._pass_lock  # the scheduler thread is in a long pass
    with scheduler_pass:
        wait_for(lambda: nagare.task(run_id, "a")["status"] == "success", 5, message="a done")
        # every pass holds this lock: b stays pending until the pass under way ends
        assert nagare.task(run_id, "b")["status"] == "pending"
    assert nagare.wait_run(run_id)["status"] == "success"
    assert "scheduler" in threads, threads


def test_a_failed_settling_pass_leaves_the_run_to_the_scheduler_thread(
    nagare: Nagare, caplog
) -> None:  # type: ignore[no-untyped-def]
    nagare.write_dag("ab.yaml", CHAIN)
    nagare.app.folder.scan()
    scheduler = nagare.app.scheduler
    advance = scheduler.advance
    failed: list[str] = []

    def failing_once(run_id, now, finished=None, known=None):  # type: ignore[no-untyped-def]
        if finished and not failed:
            failed.append(threading.current_thread().name)
            raise RuntimeError("database is locked")
        return advance(run_id, now, finished, known)

    scheduler.advance = failing_once  # type: ignore[method-assign]
    run_id = nagare.trigger("ab")
    assert nagare.wait_run(run_id)["status"] == "success"  # reloaded by the scheduler thread
    assert failed == ["pools"]
    assert "settling finished tasks failed" in caplog.text


def test_ended_attempts_wait_for_a_batch_only_while_every_slot_is_busy() -> None:
    unsettled = pools._Unsettled(batch=64, delay=0.5)
    assert not unsettled.ready(more_ended=False, slot_free=True, now=0.0)  # nothing to settle
    unsettled.finished, unsettled.since = [("run", "task", None)], 100.0
    assert unsettled.ready(more_ended=False, slot_free=False, now=100.0)  # nothing else first
    assert unsettled.ready(more_ended=True, slot_free=True, now=100.0)  # a free slot may fill
    assert not unsettled.ready(more_ended=True, slot_free=False, now=100.0)  # the next turn first
    assert unsettled.ready(more_ended=True, slot_free=False, now=100.5)  # waited long enough
    unsettled.finished = unsettled.finished * 64
    assert unsettled.ready(more_ended=True, slot_free=False, now=100.0)  # a full batch
    assert len(unsettled.take()[0]) == 64 and not unsettled


class _SlowSpawner(Spawner):
    """Every start returns only once its process has ended (it is left for the executor to
    reap): the tasks started before the next one have surely ended."""

    def spawn(
        self, command: str, env: dict[str, str], user: RunAs | None = None
    ) -> tuple[int, int, int]:
        started = super().spawn(command, env, user)
        os.waitid(os.P_PID, started[0], os.WEXITED | os.WNOWAIT)
        return started


def _slow_starts(nagare: Nagare) -> None:
    nagare.app.local.spawner = _SlowSpawner()
    nagare.app.pools.settling.delay = 30.0  # only the other rules apply


def _record_settled(nagare: Nagare) -> list[int]:
    """How many ended attempts each batch the dispatcher settles holds."""
    batches: list[int] = []
    settle = nagare.app.pools.on_finished

    def recording(finished: list[tuple[str, str, int | None]], states: Any) -> None:
        batches.append(len(finished))
        settle(finished, states)

    nagare.app.pools.on_finished = recording  # type: ignore[method-assign]
    return batches


def test_while_every_slot_is_busy_the_runs_of_ended_tasks_are_settled_in_batches(
    nagare_factory,
) -> None:  # type: ignore[no-untyped-def]
    tasks = "".join(f"  - id: t{i}\n    command: 'true'\n" for i in range(40))
    nagare = nagare_factory(
        worker_pools={"default": 4},
        dags={
            "wide.yaml": f"id: wide\ntasks:\n{tasks}  - id: end\n    command: 'true'\n"
            "    depends_on: [" + ", ".join(f"t{i}" for i in range(40)) + "]\n"
        },
    )
    _slow_starts(nagare)
    nagare.app.pools.settling.batch = 10
    batches = _record_settled(nagare)
    run_id = nagare.trigger("wide")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert sum(batches) == 41
    assert len(batches) <= 10, batches  # 41 attempts in 12+ turns, settled in batches of 10


def test_a_dependant_in_a_pool_with_a_free_slot_is_queued_at_once(
    nagare_factory,
) -> None:  # type: ignore[no-untyped-def]
    tasks = "".join(f"  - id: t{i}\n    command: 'true'\n" for i in range(30))
    nagare = nagare_factory(
        worker_pools={"default": 2, "side": 1},
        dags={
            "side.yaml": f"id: side\ntasks:\n{tasks}  - id: after\n    command: 'true'\n"
            "    pool: side\n    depends_on: [t0]\n"
        },
    )
    _slow_starts(nagare)
    run_id = nagare.trigger("side")
    assert nagare.wait_run(run_id)["status"] == "success"
    tasks_by_id = nagare.tasks(run_id)
    last_start = max(tasks_by_id[f"t{i}"]["started_at"] for i in range(30))
    assert tasks_by_id["after"]["started_at"] < last_start  # not after the busy pool drained
