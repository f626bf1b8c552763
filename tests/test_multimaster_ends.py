"""Several masters on one database, at the edges: a restarted master closes what its earlier
start left open at once (and nothing of another master's); a master's start extends no lease
another master answers for; a kill reaches a worker whichever master it polls and no master
keeps a pending kill for good; an expired wait ends once however many masters act on it; a
master is listening before it registers, and is told to look again once the others see it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import StoreFactory, wait_for
from postgres_server import PgServer
from test_cluster_leases import LEASE, _Master, ok
from test_multimaster import MasterGroup, _attempts, _both

from nagare.app import container_owner
from nagare.cluster.coordinator import Coordinator
from nagare.cluster.protocol import WorkerHello
from nagare.dagfile import parse_dag
from nagare.leadership import Leadership, master_id, newcomers, previous_incarnations, stable_key
from nagare.logs import LogFiles
from nagare.models import TaskStatus, Trigger
from nagare.store import MasterRecord, Store, text_digest
from nagare.waits import Waits

# ---------------------------------------------------------------- a master's identity (pure)


def test_a_master_knows_its_earlier_starts_by_host_port_and_folder() -> None:
    key = stable_key("box", ("0.0.0.0", 8080), "/srv/nagare")
    assert key.startswith("box-8080-") and key == stable_key(
        "box", ("0.0.0.0", 8080), "/srv/nagare"
    )
    assert stable_key("box", ("0.0.0.0", 8080), "/srv/other") != key  # another folder
    assert stable_key("box", ("127.0.0.1", 8080), "/srv/nagare") != key  # another address
    assert stable_key("box", ("", 0), "/srv/nagare") == ""  # port 0: no identity
    me = master_id(key, "box", 42, "ab12")
    earlier = master_id(key, "box", 41, "9f00")
    other = master_id(stable_key("box", ("0.0.0.0", 8081), "/srv/nagare"), "box", 7, "0001")
    ids = {me, earlier, other, f"{key}x-1-aa", f"{key}-1-aa-2-bb", "box-41-9f00"}
    assert previous_incarnations(ids, key, me) == [earlier]
    assert previous_incarnations(ids, "", master_id("", "box", 42, "ab12")) == []
    assert newcomers(None, {"m2"}) == [] and newcomers({"m2"}, {"m2", "m4", "m3"}) == ["m3", "m4"]


# ---------------------------------------------------------------- real masters

LONG = """
id: long
tasks:
  - id: here
    pool: a
    command: 'sleep 60'
  - id: there
    pool: b
    command: 'sleep 60'
"""


@pytest.fixture
def group(postgres_server: PgServer, tmp_path: Path) -> Iterator[MasterGroup]:
    masters = MasterGroup(postgres_server, tmp_path)
    yield masters
    masters.close()


def test_a_master_killed_and_restarted_closes_its_own_attempts_at_once_only(
    group: MasterGroup,
) -> None:
    """Leases of a minute: what ends the killed master's attempt within seconds is its
    restart recognising it (same host, port and folder), not the lease; the other master's
    task runs on."""
    settings = (
        "lease_timeout_seconds: 60\nshutdown_grace_seconds: 0\nworker_pools: {a: %d, b: %d}\n"
    )
    one, _ = group({"long.yaml": LONG}, settings % (1, 0), settings % (0, 1))
    wait_for(lambda: _both(one), 10, message="both masters to register")
    run_id = one.post("/api/dags/long/runs")["run_id"]

    def running() -> dict[str, list[tuple[int, str, str]]] | None:
        found = _attempts(group.url, run_id)
        return found if len(found) == 2 else None

    before = wait_for(running, 15, message="both tasks to run")
    (_, _, dead_name), (_, _, live_name) = before["here"][0], before["there"][0]
    one.kill()
    one.proc = one._launch()  # the same master again: same folder, same port
    wait_for(one.ready, 30, message="the master to answer again")
    after = _attempts(group.url, run_id)
    assert after["here"][0][1:] == ("failed", dead_name), after
    assert after["there"] == before["there"] == [(1, "running", live_name)]
    task = one.get(f"/api/runs/{run_id}/tasks/here")
    assert "the server stopped while this attempt ran" in task["message"]
    listed = wait_for(lambda: _both(one), 10, message="two masters listed, not three")
    assert dead_name.removeprefix("local@") not in {m["id"] for m in listed["masters"]}


# ---------------------------------------------------------------- leases on a master's start


def test_a_master_start_extends_only_remote_leases_and_only_when_alone(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = store_factory()
    dag, errors = parse_dag("id: d\ntasks:\n  - {id: t, pool: gpu, command: 'true'}\n")
    assert dag is not None, errors
    for _ in range(2):
        store.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
    (remote,) = store.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)
    (local,) = store.workers.claim("local@other-1-ab", ["gpu"], 1, now=0, lease_until=LEASE)
    logs = LogFiles(str(tmp_path / "logs"))
    coordinator = Coordinator(store, logs, LEASE / 1000, lambda ended: None, clock=lambda: 50_000)

    def holders() -> list[str | None]:
        return [store.workers.holder(c.task.id, c.attempt, LEASE + 1) for c in (remote, local)]

    coordinator.start(others_live=True)  # the workers could fail over: nothing is extended
    assert holders() == [None, None]
    coordinator.start()  # alone: a remote lease gets a full term, a master's own does not
    assert holders() == ["w1", None]


# ---------------------------------------------------------------- kills of remote tasks

ONE_SLOT = WorkerHello("w1", "box-1", ("gpu",), 1)


def test_a_kill_reaches_the_worker_through_any_master_and_no_master_keeps_it(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """Master one hands the task out; only master two hears the kill (its `kill` wake-up):
    the worker learns it from master one all the same (the task's status), and master two's
    pending copy goes when the task ends elsewhere or, failing that, after a lease term."""
    one = _Master(store_factory(), tmp_path)
    now = [0]
    two = Coordinator(
        store_factory.reopen(one.store),  # its own connections, the same data
        LogFiles(str(tmp_path / "logs")),
        LEASE / 1000,
        lambda ended: None,
        clock=lambda: now[0],
    )
    (a,) = one.poll([], [], hello=ONE_SLOT).tasks
    one.store.tasks.transition(
        [a.task_instance_id], [TaskStatus.RUNNING], TaskStatus.CANCELLED, 5, "killed"
    )
    assert two.cancel(a.task_instance_id)
    held = replace(ONE_SLOT, held=((a.task_instance_id, a.attempt),))
    assert one.coordinator.heartbeat(held).cancel == [a.task_instance_id]
    one.now = 1_000
    assert one.poll([a], [], hello=ONE_SLOT).cancel == [a.task_instance_id]
    assert two._cancels  # what would stay for good without a bound
    two.ended_elsewhere(["something-else"])
    two.reap(LEASE)
    assert two._cancels  # not a lease old yet
    two.reap(LEASE + 1)
    assert two._cancels == {}
    now[0] = LEASE + 2
    assert two.cancel(a.task_instance_id)  # (heard again)
    one.now = 2_000
    one.coordinator.result(ok(a, exit_code=None, cancelled=True))
    two.ended_elsewhere([a.task_instance_id])  # its `done` wake-up
    assert two._cancels == {}
    assert one.status("a") is TaskStatus.CANCELLED


# ---------------------------------------------------------------- deadlines of waiting steps

GATE = "id: gate\ntasks:\n  - {id: ask, type: approval, timeout_seconds: 1}\n"


def test_two_masters_expiring_one_wait_end_it_once(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """Should two masters both act on an expired approval (two leaders overlapping for a
    moment), one ends it: one outcome, one announcement (so one scheduler pass and one set of
    handlers), one note in its log."""
    first = store_factory()
    second = store_factory.reopen(first)
    dag, errors = parse_dag(GATE)
    assert dag is not None, errors
    run = first.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
    assert run is not None
    logs = LogFiles(str(tmp_path / "logs"))  # a shared logs_dir: both would write here
    announced: list[list[str]] = []
    waits = [
        Waits(s, logs, lambda: 0, lambda e: announced.append([t for _, t, _ in e]))
        for s in (first, second)
    ]
    task = first.tasks.get(run.run_id, "ask")
    assert task is not None
    waits[0].begin([task.id], 0)
    task = first.tasks.by_id(task.id)
    assert task is not None and task.status is TaskStatus.WAITING
    barrier = threading.Barrier(2)

    def expire(w: Waits) -> None:
        barrier.wait()
        w.expire(1_001)

    threads = [threading.Thread(target=expire, args=(w,)) for w in waits]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert announced == [[task.id]]
    ended = first.tasks.by_id(task.id)
    assert ended is not None and ended.status is TaskStatus.FAILED and ended.timed_out
    (attempt,) = first.tasks.attempts(task.id)
    assert attempt.status is TaskStatus.FAILED
    text = (tmp_path / "logs" / run.run_id / f"{task.id}.1.log").read_text()
    assert text.count("timed out after 1 s waiting") == 1, text


# ---------------------------------------------------------------- wake-ups from the start


def _leadership(store: Store, name: str) -> Leadership:
    me = MasterRecord(name, "host", f"http://{name}", 1)
    dags: dict[str, Any] = {}
    return Leadership(store.masters, store.db.leader_lock(), me, lambda: dags, text_digest)


def test_a_master_listens_before_it_registers_and_is_told_to_look_once_seen(
    postgres_server: PgServer,
) -> None:
    """What another master sends once this one listens reaches it even before its wake-up
    loop runs; the first master to see a newcomer tells it (`on_joined`), once."""
    name = postgres_server.new_database()
    url = postgres_server.url(name)
    stores = [Store(url), Store(url)]
    stop = threading.Event()
    heard: list[tuple[str, list[str]]] = []
    channels = [s.db.wake_channel(f"m{i + 1}") for i, s in enumerate(stores)]
    threads: list[threading.Thread] = []
    try:
        one, two = _leadership(stores[0], "m1"), _leadership(stores[1], "m2")
        joined: list[list[str]] = []
        one.on_joined = joined.append
        one.turn()  # alone
        channels[1].listen()  # the newcomer listens first, then registers
        two.turn()
        assert two.others == 1 and one.others == 0
        channels[1].on_event = lambda kind, args: heard.append((kind, args))
        channels[0].publish("queued", "a=1")  # master one sends before two's loop runs
        for channel in channels:
            threads.append(threading.Thread(target=channel.run, args=(stop,), daemon=True))
            threads[-1].start()
            wait_for(lambda: not channels[0]._pending, 10)  # sent
            time.sleep(0.2)
        wait_for(lambda: heard, 10, message="the wake-up sent before the loop ran")
        assert heard == [("queued", ["a=1"])]
        one.turn()
        one.turn()
        assert joined == [["m2"]] and one.others == 1
        one.step_down()  # (frees the leader lock's connection)
        two.step_down()
    finally:
        stop.set()
        for channel in channels:
            channel.wake()
        for thread in threads:
            thread.join(10)
        for channel in channels:
            channel.close()
        for store in stores:
            store.close()
        postgres_server.drop_database(name)


def test_two_masters_reaping_one_lost_attempt_close_it_once(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    """Every master runs the lease reaper: of two that find one expired lease at once, one
    closes the attempt, notes it and announces it."""
    first = store_factory()
    second = store_factory.reopen(first)
    dag, errors = parse_dag("id: d\ntasks:\n  - {id: t, pool: gpu, command: 'true'}\n")
    assert dag is not None, errors
    first.runs.start(dag, Trigger.MANUAL, 0, {}, 0)
    (claim,) = first.workers.claim("w1", ["gpu"], 1, now=0, lease_until=LEASE)
    first.workers.renew("w1", [(claim.task.id, claim.attempt)], LEASE)  # confirmed
    logs = LogFiles(str(tmp_path / "logs"))  # a shared logs_dir: both would write here
    announced: list[str] = []
    reapers = [
        Coordinator(s, logs, LEASE / 1000, lambda e: announced.extend(t for _, t, _ in e))
        for s in (first, second)
    ]
    barrier = threading.Barrier(2)
    closed: list[int] = []

    def reap(coordinator: Coordinator) -> None:
        barrier.wait()
        closed.append(coordinator.reap(LEASE + 1))

    threads = [threading.Thread(target=reap, args=(c,)) for c in reapers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(closed) == [0, 1] and announced == [claim.task.id]
    (attempt,) = first.tasks.attempts(claim.task.id)
    assert attempt.status is TaskStatus.FAILED
    text = (tmp_path / "logs" / claim.run.run_id / f"{claim.task.id}.1.log").read_text()
    assert text.count("worker w1 lost") == 1, text


def test_container_owner_names_the_master_only_on_a_shared_database() -> None:
    """Two masters on one host and one PostgreSQL get different owner labels, so the clean-up
    of one's leftover containers cannot remove the other's; on SQLite the label stays the host
    and database (a restarted server still finds its own leftovers)."""
    alone = container_owner("box", "nagare.db", "")
    first = container_owner("box", "postgresql://db/nagare", "box-8080-a1b2c3")
    second = container_owner("box", "postgresql://db/nagare", "box-8081-d4e5f6")
    assert alone == "box:nagare.db"
    assert first != second
    assert first.startswith("box:postgresql://db/nagare:")
    assert container_owner("box", "postgresql://db/nagare", "box-8080-a1b2c3") == first
