"""Several masters on one database: one leads (the leader lock: always the server on SQLite, a
PostgreSQL advisory lock otherwise) and another takes over when the leader dies; the masters
register rows that the API lists, with the DAGs whose definitions differ between them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import http, pythonpath_env, wait_for
from postgres_server import PgServer, free_port
from test_cluster import gpu_dag, online, workers  # noqa: F401 - fixture

from nagare.leadership import Leadership, digest_mismatches
from nagare.models import Trigger
from nagare.store import MasterRecord, RunFilter, Store, text_digest

EVERY_MINUTE = """
id: tick
schedule: "* * * * *"
catchup: true
start_date: "2026-01-01"
tasks:
  - id: a
    command: 'true'
"""


def _master(master_id: str, leader: bool = False, **digests: str) -> MasterRecord:
    return MasterRecord(master_id, "h", "", 1, 1, leader, dict(digests))


def test_a_dag_whose_definition_differs_between_masters_names_the_odd_ones() -> None:
    masters = [
        _master("m1", True, a="x", b="y"),
        _master("m2", False, a="x", b="z"),
        _master("m3", False, a="w", b="z"),
    ]
    assert digest_mismatches(masters) == {"a": ["m3"], "b": ["m1"]}
    assert digest_mismatches([_master("m1", True, a="x"), _master("m2", a="y")]) == {"a": ["m2"]}
    assert digest_mismatches([_master("m1", True, a="x"), _master("m2")]) == {"a": ["m2"]}
    assert digest_mismatches([_master("m1", a="x"), _master("m2", a="x")]) == {}


def test_wake_ups_travel_in_payloads_under_the_cap_and_odd_ones_are_ignored() -> None:
    import json

    from nagare.store.postgres import NOTIFY_BYTES, PgWakeChannel, _payloads

    events = [["done", f"run-{i} task-{i}-é"] for i in range(400)]
    payloads = _payloads("m1", events)
    assert len(payloads) > 1 and all(len(p) <= NOTIFY_BYTES for p in payloads)
    assert all(p.isascii() for p in payloads)  # what the driver reads
    assert [e for p in payloads for e in json.loads(p)["events"]] == events
    channel = PgWakeChannel(lambda: None, "m1")  # type: ignore[arg-type, return-value]
    heard: list[tuple[str, list[str]]] = []
    channel.on_event = lambda kind, args: heard.append((kind, args))
    channel._deliver(
        [
            _payloads("m1", [["kill", "mine"]])[0],  # its own: not for it
            "not json",
            '{"from": "m2"}',
            '{"from": "m2", "events": [["queued", "default=3"], []]}',
        ]
    )
    channel.close()
    assert heard == [("queued", ["default=3"])]


def _leadership(store: Store, name: str) -> Leadership:
    me = MasterRecord(name, "host", f"http://{name}", 1)
    dags: dict[str, Any] = {}
    return Leadership(store.masters, store.db.leader_lock(), me, lambda: dags, text_digest)


def test_a_sqlite_server_always_leads_and_lists_itself(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "n.db"))
    leadership = _leadership(store, "m1")
    leadership.turn()
    assert leadership.leads
    assert [(m.master_id, m.leader) for m in leadership.masters()] == [("m1", True)]
    assert store.masters.seen_since(0) == []  # alone on its database: no row to keep
    store.close()


def test_one_of_two_masters_leads_and_the_other_takes_over_when_its_connection_dies(
    postgres_server: PgServer,
) -> None:
    name = postgres_server.new_database()
    url = postgres_server.url(name)
    first, second = Store(url), Store(url)
    try:
        one, two = _leadership(first, "m1"), _leadership(second, "m2")
        gained: list[str] = []
        two.on_gained = lambda: gained.append("m2")
        one.turn()
        two.turn()
        assert one.leads and not two.leads
        assert {(m.master_id, m.leader) for m in one.masters()} == {("m1", True), ("m2", False)}
        admin = postgres_server.admin(name)  # the leader's lock connection dies
        admin.run(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objid = 7467362"
        )
        admin.close()
        two.turn()
        assert two.leads and gained == ["m2"]
        one.turn()
        assert not one.leads
        two.step_down()  # stepping down frees the lock at once
        one.turn()
        assert one.leads
        one.step_down()
    finally:
        first.close()
        second.close()
        postgres_server.drop_database(name)


# ---------------------------------------------------------------- real master processes


class Master:
    """`python -m nagare` on a shared PostgreSQL database, in a folder of its own."""

    def __init__(self, root: Path, url: str, dags: dict[str, str], settings: str = "") -> None:
        self.root = root
        (root / "dags").mkdir(parents=True)
        for file, text in dags.items():
            (root / "dags" / file).write_text(textwrap.dedent(text))
        (root / "nagare.yaml").write_text(textwrap.dedent(settings))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        self.db_url = url
        self.proc = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        args = ["--port", f"127.0.0.1:{self.port}", "--db", self.db_url]
        with open(self.log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "nagare", *args],
                cwd=self.root,
                env=pythonpath_env(),
                stdout=out,
                stderr=out,
            )

    def restart(self) -> None:
        """A clean stop (SIGTERM), then the same master again (same folder, same port)."""
        self.stop()
        assert self.proc.returncode == 0, self.log.read_text()
        self.proc = self._launch()

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.log.read_text())
        try:
            return http("GET", self.url + "/api/health", timeout=1).status == 200
        except OSError:
            return False

    def post(self, path: str, body: Any = None) -> Any:
        answer = http("POST", self.url + path, body or {})
        assert answer.status in (200, 201, 202), (path, answer.status, answer.body)
        return answer.json

    def get(self, path: str) -> Any:
        answer = http("GET", self.url + path)
        assert answer.status == 200, (path, answer.status, answer.body)
        return answer.json

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class MasterGroup:
    """`group(dags, settings_one, settings_two, ...)` starts masters on one database (`url`)."""

    def __init__(self, server: PgServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.name = server.new_database()
        self.url = server.url(self.name)
        self.started: list[Master] = []

    def __call__(self, dags: dict[str, str], *settings: str, seen_since: int = 0) -> list[Master]:
        """Masters on the group's database; `seen_since` (epoch ms): the cron DAGs were first
        seen then (their slots since then are missed slots to catch up)."""
        if seen_since:
            store = Store(self.url)
            for file in dags:
                store.dags.ensure_state(file.removesuffix(".yaml"), seen_since)
            store.close()
        new = [
            Master(self.root / f"m{len(self.started) + i}", self.url, dags, text)
            for i, text in enumerate(settings or ("", ""))
        ]
        self.started.extend(new)
        for master in new:
            wait_for(master.ready, 30, message="the master to answer /api/health")
        return new

    def close(self) -> None:
        for master in self.started:
            master.stop()
        self.server.drop_database(self.name)


@pytest.fixture
def masters(postgres_server: PgServer, tmp_path: Path) -> Any:
    group = MasterGroup(postgres_server, tmp_path)
    yield group
    group.close()


def _both(master: Master) -> Any:
    listed = master.get("/api/masters")
    return listed if len(listed["masters"]) == 2 else None


def test_two_masters_one_leader_and_a_killed_leader_is_replaced_within_seconds(
    masters: Any,
) -> None:
    catch_up = "max_catchup_runs: 20\n"
    an_hour_ago = int(time.time() * 1000) - 3_600_000
    one, two = masters({"tick.yaml": EVERY_MINUTE}, catch_up, catch_up, seen_since=an_hour_ago)
    listed = wait_for(lambda: _both(one), 10, message="both masters to register")
    leader_id = listed["leader"]
    assert leader_id is not None and listed["digest_mismatch"] == {}
    by_id = {m["id"]: m for m in listed["masters"]}
    assert [m["leader"] for m in by_id.values()].count(True) == 1
    assert one.get("/api/health")["master"]["leader"] == (leader_id == listed["me"])
    # a DAG file that differs on one master is flagged in the DAG list (two masters: the one
    # whose version differs from the leader's)
    follower = next(m["id"] for m in listed["masters"] if not m["leader"])
    changed = EVERY_MINUTE.replace("command: 'true'", "command: 'echo changed'")
    (two.root / "dags" / "tick.yaml").write_text(textwrap.dedent(changed))
    wait_for(
        lambda: one.get("/api/dags")[0]["digest_mismatch"] == [follower],
        10,
        message="the DAG to be flagged",
    )
    assert two.get("/api/masters")["digest_mismatch"] == {"tick": [follower]}
    leader, other = (one, two) if leader_id == listed["me"] else (two, one)
    leader.kill()
    killed = time.monotonic()
    wait_for(lambda: other.get("/api/health")["master"]["leader"], 10, interval=0.05,
             message="the other master to lead")  # fmt: skip
    took = time.monotonic() - killed
    print(f"take-over after kill -9 of the leader: {took:.2f} s")
    assert took < 3.0
    after = other.get("/api/masters")
    assert after["leader"] == after["me"] != leader_id
    time.sleep(0.5)  # the new leader's first pass looked at the cron slots
    runs = other.get("/api/runs?dag_id=tick&limit=500")["data"]
    slots = [r["execution_date"] for r in runs if r["trigger"] != "manual"]
    assert len(slots) >= 20 and len(slots) == len(set(slots)), "each slot fired once"


def _chain(hops: int) -> str:
    """A chain whose tasks alternate between pool a and pool b (and a last one that sleeps)."""
    tasks = []
    for i in range(hops):
        after = f"\n    depends_on: [t{i - 1}]" if i else ""
        tasks.append(f"  - id: t{i}\n    pool: {'ab'[i % 2]}\n    command: 'true'{after}")
    tasks.append(f"  - id: last\n    pool: b\n    command: sleep 60\n    depends_on: [t{hops - 1}]")
    return "id: zigzag\ntasks:\n" + "\n".join(tasks) + "\n"


def test_wake_ups_cross_masters_so_each_hop_takes_milliseconds_and_a_kill_reaches_the_task(
    masters: Any,
) -> None:
    """Master one runs pool a only, master two pool b only: every hop of the chain crosses
    from one master to the other (without wake-ups each would wait for a 5 s recheck)."""
    one, two = masters(
        {"zigzag.yaml": _chain(10)},
        "worker_pools: {a: 2, b: 0}\n",
        "worker_pools: {a: 0, b: 2}\n",
    )
    wait_for(lambda: _both(one), 10, message="both masters to register")
    time.sleep(1.1)  # each master's leadership loop has seen the other (wake-ups go out now)
    run_id = one.post("/api/dags/zigzag/runs")["run_id"]
    started = time.monotonic()

    def running_last() -> bool:
        task = one.get(f"/api/runs/{run_id}/tasks/last")
        assert task["status"] in ("queued", "running", "pending", "ready"), task
        return bool(task["status"] == "running")

    wait_for(running_last, 20, interval=0.02, message="the chain to reach its last task")
    took = time.monotonic() - started
    print(f"10 hops across two masters: {took * 100:.0f} ms per hop")
    assert took < 4.0
    one.post(f"/api/runs/{run_id}/tasks/last/kill")  # it runs on master two
    ended = wait_for(
        lambda: (r := one.get(f"/api/runs/{run_id}"))["status"] != "running" and r,
        5,
        message="the run to end",
    )
    assert ended["status"] in ("failed", "cancelled")
    attempts = two.get(f"/api/runs/{run_id}/tasks/last/attempts")
    assert attempts[-1]["status"] != "running"


def test_a_slot_fired_by_two_masters_at_once_makes_one_run(postgres_server: PgServer) -> None:
    """Even if two masters both believed they led (the old leader's last pass overlapping the
    new one's first), a slot's deterministic run id lets only one of them create its run."""
    from test_store_contract import dag_of

    name = postgres_server.new_database()
    url = postgres_server.url(name)
    stores = [Store(url), Store(url)]
    dag = dag_of("id: tick\ntasks:\n  - id: a\n    command: 'true'\n")
    slots = [60_000 * minute for minute in range(1, 41)]
    created: list[str] = []

    def fire(store: Store) -> None:
        for slot in slots:
            run = store.runs.start(dag, Trigger.SCHEDULED, slot, {}, slot)
            if run is not None:
                created.append(run.run_id)

    try:
        threads = [threading.Thread(target=fire, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(created) == sorted(set(created)) and len(created) == len(slots)
        assert stores[0].runs.find(RunFilter(), 1, 100)[1] == len(slots)
    finally:
        for store in stores:
            store.close()
        postgres_server.drop_database(name)


def test_a_worker_joined_to_two_masters_delivers_its_result_through_the_other_when_one_dies(
    masters: Any,
    workers: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    dag = gpu_dag("remote", f"- id: t\n  pool: gpu\n  command: 'echo x >> {marker}; sleep 2'\n")
    settings = "worker_pools: {default: 0, gpu: 0}\nlease_timeout_seconds: 4\n"
    one, two = masters({"remote.yaml": dag}, settings, settings)
    worker = workers(f"{one.url},{two.url}", "w1")
    wait_for(lambda: online(one.url, "w1"), 15, message="the worker to join")
    run_id = one.post("/api/dags/remote/runs")["run_id"]
    wait_for(
        lambda: two.get(f"/api/runs/{run_id}/tasks/t")["status"] == "running",
        10,
        message="the task to run on the worker",
    )
    one.kill()  # the master the worker talks to (the first of --join)
    run = wait_for(
        lambda: (r := two.get(f"/api/runs/{run_id}"))["status"] in ("success", "failed") and r,
        20,
        message="the run to end through the other master",
    )
    assert run["status"] == "success"
    task = two.get(f"/api/runs/{run_id}/tasks/t")
    assert (task["worker"], task["attempt"]) == ("w1", 1)
    assert marker.read_text() == "x\n"  # it ran once
    assert worker.proc.poll() is None
    assert "going on with the master at " + two.url in worker.output.read_text()


def _fanout(marks: Path, count: int) -> str:
    """A root, then `count` tasks at once: each appends its attempt number to a file of its own
    (before it sleeps a little), with one retry."""
    tasks = ["  - id: root\n    command: 'true'"]
    for i in range(count):
        tasks.append(
            f"  - id: t{i:03d}\n    depends_on: [root]\n    retries: 1\n"
            f"    retry_delay_seconds: 0\n"
            f"    command: 'echo $NAGARE_ATTEMPT >> {marks}/t{i:03d}; sleep 0.1'"
        )
    return "id: fan\ntasks:\n" + "\n".join(tasks) + "\n"


def _attempts(url: str, run_id: str) -> dict[str, list[tuple[int, str, str]]]:
    """task id -> its attempts (number, status, worker), read from the database."""
    store = Store(url)
    try:
        with store.db.read() as conn:
            rows = conn.execute(
                "SELECT task_id, attempt, status, worker FROM task_attempts WHERE run_id=? "
                "ORDER BY task_id, attempt",
                (run_id,),
            ).fetchall()
    finally:
        store.close()
    found: dict[str, list[tuple[int, str, str]]] = {}
    for task_id, attempt, status, worker in rows:
        found.setdefault(task_id, []).append((attempt, status, worker))
    return found


def test_two_masters_run_500_tasks_once_each_and_survive_the_leaders_kill(
    masters: MasterGroup, tmp_path: Path
) -> None:
    """Both masters claim from one run's queue; the leader dies by kill -9 mid-run: the other
    leads, closes the dead master's attempts once their lease ran out (their retry runs, once)
    and finishes the run. Every task's file holds one line per recorded attempt (but for
    a lost attempt that the killed master claimed and never started)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    settings = "worker_pools: {default: 8}\nlease_timeout_seconds: 2\n"
    one, two = masters({"fan.yaml": _fanout(marks, 500)}, settings, settings)
    listed = wait_for(lambda: _both(one), 10, message="both masters to register")
    leader, other = (one, two) if listed["leader"] == listed["me"] else (two, one)
    run_id = other.post("/api/dags/fan/runs")["run_id"]
    wait_for(lambda: len(list(marks.iterdir())) >= 150, 30, message="a part of the run")
    leader.kill()
    killed = time.monotonic()
    wait_for(lambda: other.get("/api/health")["master"]["leader"], 10, message="a new leader")
    print(f"take-over mid-run: {time.monotonic() - killed:.2f} s")
    run = wait_for(
        lambda: (r := other.get(f"/api/runs/{run_id}"))["status"] != "running" and r,
        60,
        message="the run to end",
    )
    assert run["status"] == "success", run
    attempts = _attempts(masters.url, run_id)
    assert len(attempts) == 501
    names = {w for tries in attempts.values() for _, _, w in tries}
    assert len(names) == 2 and all(w.startswith("local@") for w in names)
    retried = {t: tries for t, tries in attempts.items() if len(tries) > 1}
    for task_id, tries in attempts.items():
        assert tries[-1][1] == "success", (task_id, tries)
        if task_id != "root":
            lines = (marks / task_id).read_text().split()
            ran = [str(n) for n, _, _ in tries]
            # an attempt lost with the killed master may never have started its command (the
            # master died between the claim and the start): its line may be missing, no other
            assert lines in (ran, ran[1:] if len(ran) == 2 else ran), (task_id, tries, lines)
    for task_id, tries in retried.items():  # the first ran on the dead master and was lost
        assert len(tries) == 2 and tries[0][1] == "failed", (task_id, tries)
    print(f"{len(retried)} task(s) lost with the killed master ran again, once each")


def _independent(marks: Path, count: int) -> str:
    """`count` tasks with no dependencies, on the remote-only pool: each appends its attempt
    number to a file of its own (then sleeps a little, so that a restart finds attempts in
    flight), with one retry."""
    tasks = [
        f"  - id: t{i:04d}\n    retries: 1\n    retry_delay_seconds: 0\n"
        f"    command: 'echo $NAGARE_ATTEMPT >> {marks}/t{i:04d}; sleep 0.05'"
        for i in range(count)
    ]
    return "id: race\ntasks:\n" + "\n".join(tasks) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["steady", "restart"])
def test_two_masters_and_three_workers_run_1000_tasks_once_each(
    masters: MasterGroup,
    workers: Any,  # noqa: F811
    tmp_path: Path,
    case: str,
) -> None:
    """Two remote-only masters, three workers split between them (each joins both, in a
    different order); in `restart`, the leader, which two of the workers talk to, stops
    cleanly at about 40 % and starts again. Every task ran once: one attempt, one line in its
    file (a lost attempt would show as a failed attempt and its retry, a line for each)."""
    count = 1000
    marks = tmp_path / "marks"
    marks.mkdir()
    settings = "worker_pools: {default: 0}\nlease_timeout_seconds: 4\n"
    pair = masters({"race.yaml": _independent(marks, count)}, settings, settings)
    listed = wait_for(lambda: _both(pair[0]), 10, message="both masters to register")
    one, two = pair if listed["leader"] == listed["me"] else pair[::-1]  # one leads
    joins = {
        "w1": f"{one.url},{two.url}",
        "w2": f"{two.url},{one.url}",
        "w3": f"{one.url},{two.url}",
    }
    started_workers = [
        workers(join, name, pools="default", max_tasks=4) for name, join in joins.items()
    ]
    for name, master in (("w1", one), ("w2", two), ("w3", one)):
        wait_for(lambda m=master, n=name: online(m.url, n), 15, message=f"worker {name} to join")
    run_id = two.post("/api/dags/race/runs")["run_id"]
    started = time.monotonic()
    if case == "restart":
        wait_for(lambda: len(os.listdir(marks)) >= count * 2 // 5, 40, interval=0.02,
                 message="40 % of the run")  # fmt: skip
        at_stop = len(os.listdir(marks))
        one.restart()
        wait_for(one.ready, 30, message="the restarted master to answer /api/health")
        print(f"restart: stopped at {at_stop} tasks, back at {len(os.listdir(marks))}")
    run = wait_for(
        lambda: (r := two.get(f"/api/runs/{run_id}"))["status"] not in ("queued", "running") and r,
        60,
        message="the run to end",
    )
    took = time.monotonic() - started
    assert run["status"] == "success", run
    attempts = _attempts(masters.url, run_id)
    assert sorted(attempts) == [f"t{i:04d}" for i in range(count)]
    retried = {t: tries for t, tries in attempts.items() if len(tries) > 1}
    for task_id, tries in attempts.items():
        assert [n for n, _, _ in tries] == list(range(1, len(tries) + 1)), (task_id, tries)
        assert tries[-1][1] == "success", (task_id, tries)
        assert all(status == "failed" for _, status, _ in tries[:-1]), (task_id, tries)
        lines = (marks / task_id).read_text().split()
        assert lines == [str(n) for n, _, _ in tries], (task_id, tries, lines)  # ran once each
    names = {w for tries in attempts.values() for _, _, w in tries}
    assert names == set(joins), names
    assert retried == {}, retried  # a clean stop of a master loses no worker's attempt
    if case == "restart":  # the workers of the stopped master went on with the other; it is back
        for worker in (started_workers[0], started_workers[2]):
            assert "going on with the master at " + two.url in worker.text(), worker.text()
        wait_for(lambda: _both(one), 10, message="the restarted master to register")
        assert one.get(f"/api/runs/{run_id}")["status"] == "success"
    assert all(worker.proc.poll() is None for worker in started_workers)
    print(f"{case}: {count} tasks on 3 workers and 2 masters in {took:.1f} s, "
          f"{len(retried)} retried")  # fmt: skip
