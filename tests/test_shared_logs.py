"""Logs readable and followable live from any master (PostgreSQL): each master ships its logs'
lines to `log_chunks`; every master serves a log as its file, then the lines the database holds
past it. The store's part on both backends, the shipper and readers over a real store, then
real master processes on one PostgreSQL database (a task run on one master read and followed
through the other, that master killed, a remote worker moving between masters)."""

from __future__ import annotations

import threading
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import http, wait_for
from postgres_server import PgServer
from test_cluster import gpu_dag, online, workers  # noqa: F401 - fixture
from test_multimaster import Master, MasterGroup
from test_sse import SseStream

from nagare.log_shipping import CHUNK_BYTES, LogShipper, SharedLogs
from nagare.logs import LogFiles, LogHub
from nagare.models import LogChunk
from nagare.store import Store

# ---------------------------------------------------------------- the store's part, both backends


def _chunk(first: int, texts: list[str], run_id: str = "r1", meta: str = "") -> LogChunk:
    text = "".join(t + "\n" for t in texts)
    return LogChunk(run_id, "ti1", 1, first, first + len(texts) - 1, text, meta)


def test_log_chunks_are_stored_read_in_order_past_a_line_and_go_with_their_run(
    store: Store,
) -> None:
    run_id = _finished_run(store)
    chunks = store.log_chunks
    assert chunks.last_line("ti1", 1) == 0 and chunks.after("ti1", 1, 0, 10) == []
    chunks.append([_chunk(1, ["a", "b"], run_id, "1 1000 o\n"), _chunk(3, ["c"], run_id)])
    # the same chunk again (ignored), and the mark of a closed log
    chunks.append([_chunk(3, ["c"], run_id), _chunk(4, [], run_id)])
    assert chunks.last_line("ti1", 1) == 3
    assert [(c.first_line, c.last_line) for c in chunks.after("ti1", 1, 0, 10)] == [
        (1, 2),
        (3, 3),
        (4, 3),
    ]
    assert [(c.first_line, c.closes) for c in chunks.after("ti1", 1, 2, 10)] == [
        (3, False),
        (4, True),
    ]
    assert len(chunks.after("ti1", 1, 0, 1)) == 1
    lines, closed = SharedLogs(chunks).read("ti1", 1, 1)
    assert [line[:2] for line in lines] == [(2, "b"), (3, "c")] and closed
    assert SharedLogs(chunks).read("ti1", 1, 0)[0][0] == (1, "a", (1000, "stdout"))
    # retention: the run's chunks go with it
    store.retention.delete_old_runs(cutoff=10**13, limit=10)
    assert chunks.after("ti1", 1, 0, 10) == []


def _finished_run(store: Store) -> str:
    """An old finished run (what retention deletes)."""
    from test_store_contract import dag_of

    from nagare.models import RunStatus, Trigger

    dag = dag_of("id: d\ntasks:\n  - id: a\n    command: 'true'\n")
    run = store.runs.start(dag, Trigger.MANUAL, 1000, {}, 1000)
    assert run is not None
    with store.db.write() as conn:
        conn.execute(
            "UPDATE runs SET status = ?, completed_at = 2000 WHERE run_id = ?",
            (str(RunStatus.SUCCESS), run.run_id),
        )
    return run.run_id


def test_a_sqlite_server_ships_no_line_and_reads_its_files_only(
    nagare_factory: Any, tmp_path: Path
) -> None:
    dag = "id: talk\ntasks:\n  - id: t\n    command: 'echo hello'\n"
    nagare = nagare_factory(dags={"talk.yaml": dag}, db=str(tmp_path / "own.db"))
    run_id = nagare.trigger("talk")
    assert nagare.wait_run(run_id)["status"] == "success"
    assert nagare.call("GET", f"/api/runs/{run_id}/tasks/t/logs").text == "hello\n"
    app = nagare.app
    assert app.log_shipper is None and app.logs.shared is None and app.logs.watcher is None
    assert "log-shipper" not in app.health().loops
    with app.store.db.read() as conn:
        assert conn.execute("SELECT count(*) FROM log_chunks").fetchone()[0] == 0


# ---------------------------------------------------------------- shipper and readers


def test_the_hub_wakes_the_followers_of_a_log_that_grew_elsewhere_and_keeps_nothing_else() -> None:
    hub = LogHub()
    hub.poke("ti/1")  # nobody follows it here: nothing is kept
    assert hub.version("ti/1") == 0
    started = time.monotonic()
    assert hub.wait("ti/1", 0, 0.2) == 0  # a log never written here: waits (no spinning)
    assert time.monotonic() - started >= 0.2
    woken: list[int] = []
    waiter = threading.Thread(target=lambda: woken.append(hub.wait("ti/1", 0, 10)))
    waiter.start()
    started = time.monotonic()
    while waiter.is_alive() and time.monotonic() - started < 5:
        hub.poke("ti/1")
        waiter.join(0.01)
    assert woken == [1] and time.monotonic() - started < 1
    assert hub.version("ti/1") == 0  # forgotten once nobody waits


def _pair(tmp_path: Path, store: Store) -> tuple[LogFiles, LogShipper, LogFiles]:
    """Master A's logs (shipping to `store`) and master B's (reading from it)."""
    shipper = LogShipper(store.log_chunks)
    here = LogFiles(str(tmp_path / "a"))
    here.shared, here.watcher = SharedLogs(store.log_chunks), shipper
    there = LogFiles(str(tmp_path / "b"))
    there.shared = SharedLogs(store.log_chunks)
    return here, shipper, there


def test_lines_shipped_by_one_master_are_read_whole_stamped_tailed_and_followed_by_another(
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "n.db"))
    here, shipper, there = _pair(tmp_path, store)
    log = here.open_attempt("r1", "ti1", 1)
    follower = there.follower("r1", "ti1", 1, 0, stamps=True)
    log.on_line("stdout", "one")
    log.on_line("stderr", "two")
    assert there.tail("r1", "ti1", 1, 5) == [] and follower.read_new() == []
    shipper.ship()
    assert list(there.lines("r1", "ti1", 1)) == [(1, "one"), (2, "two")]
    stamped = [text for _, text in there.stamped_lines("r1", "ti1", 1)]
    assert stamped[0].endswith("Z stdout one") and stamped[1].endswith("Z stderr two")
    assert [(n, t) for n, t, _ in follower.read_new()] == [(1, "one"), (2, "two")]
    assert not follower.complete
    big = "x" * 1000
    for _ in range(CHUNK_BYTES // 1000 + 5):  # more than a chunk
        log.on_line("stdout", big)
    log.close()
    shipper.ship()
    assert shipper.watching() == 0  # shipped to its end and its close marked: forgotten
    count = there.line_count("r1", "ti1", 1)
    assert count == CHUNK_BYTES // 1000 + 7 == len(list(there.lines("r1", "ti1", 1)))
    assert there.tail("r1", "ti1", 1, 2) == [(count - 1, big), (count, big)]
    assert len(follower.read_new()) == count - 2 and follower.complete
    # the writer's own readers read its file (the same lines)
    assert list(here.lines("r1", "ti1", 1)) == list(there.lines("r1", "ti1", 1))
    follower.close()
    store.close()


def test_a_database_that_fails_stops_no_task_and_its_lines_are_shipped_once_it_is_back(
    tmp_path: Path,
) -> None:
    store = Store(str(tmp_path / "n.db"))
    broken = Store(str(tmp_path / "broken.db"))
    broken.close()  # every write now fails
    here, shipper, there = _pair(tmp_path, store)
    shipper.store = broken.log_chunks
    log = here.open_attempt("r1", "ti1", 1)
    for n in range(100):
        log.on_line("stdout", f"line {n}")
    shipper.ship()
    beat = shipper.liveness.beat_now()
    assert "log lines not shared with the other masters" in beat.error
    assert "1 logs waiting" in beat.error
    log.on_line("stdout", "after the failure")  # the task's writes go on
    log.close()
    assert len(list(here.lines("r1", "ti1", 1))) == 101
    assert list(there.lines("r1", "ti1", 1)) == []
    shipper.store = store.log_chunks  # the database is back
    shipper.ship()
    assert shipper.liveness.beat_now().error == ""
    assert [t for _, t in there.lines("r1", "ti1", 1)][-2:] == ["line 99", "after the failure"]
    assert len(list(there.lines("r1", "ti1", 1))) == 101
    store.close()


def test_an_attempt_reopened_on_another_master_goes_on_numbering_from_the_stored_lines(
    tmp_path: Path,
) -> None:
    """A remote worker that moved to master B part way: B copies the lines A stored into its
    file, then appends; both masters serve the whole log, numbered once."""
    store = Store(str(tmp_path / "n.db"))
    here, shipper, there = _pair(tmp_path, store)
    their_shipper = LogShipper(store.log_chunks)
    there.watcher = their_shipper
    first = here.open_attempt("r1", "ti1", 1)
    first.on_line("stdout", "on a")
    shipper.ship()
    moved = there.open_attempt("r1", "ti1", 1, resume=True)
    moved.on_line("stdout", "on b")
    moved.close()
    their_shipper.ship()
    whole = [(1, "on a"), (2, "on b")]
    assert list(there.lines("r1", "ti1", 1)) == whole
    assert list(here.lines("r1", "ti1", 1)) == whole  # A's file, then what B stored past it
    first.close()
    store.close()


# ---------------------------------------------------------------- real masters on PostgreSQL

LINES = gpu_dag(
    "talk",
    """
    - id: t
      pool: talk
      command: >-
        for i in $(seq 1 40); do echo "line $i"; done;
        sleep 0.3; echo oops >&2; sleep 1.5; echo last
    """,
)


@pytest.fixture
def masters(postgres_server: PgServer, tmp_path: Path) -> Any:
    group = MasterGroup(postgres_server, tmp_path)
    yield group
    group.close()


def _log(master: Master, run_id: str, query: str = "") -> str:
    answer = http("GET", f"{master.url}/api/runs/{run_id}/tasks/t/logs{query}")
    assert answer.status == 200, answer.body
    return answer.body.decode()


def _stream(master: Master, run_id: str, query: str = "") -> SseStream:
    port = urlparse(master.url).port
    conn = HTTPConnection("127.0.0.1", port, timeout=10)
    path = f"/api/runs/{run_id}/tasks/t/logs" + (f"?{query}" if query else "")
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    return SseStream(conn, conn.getresponse())


EXPECTED = [f"line {i}" for i in range(1, 41)] + ["oops", "last"]


def test_a_log_written_on_one_master_is_read_and_followed_live_through_the_other(
    masters: Any,
) -> None:
    one, two = masters({"talk.yaml": LINES}, "worker_pools: {talk: 1}\n", "worker_pools: {}\n")
    run_id = one.post("/api/dags/talk/runs")["run_id"]
    wait_for(lambda: "line 40" in _log(two, run_id), 10, message="B to serve A's lines")
    follow = _stream(two, run_id, "timestamps=true")
    try:
        assert follow.status == 200
        events = follow.until_end(15)
    finally:
        follow.close()
    texts = [e.data.split(" ", 2)[2] for e in events if e.event == "message"]
    assert texts == EXPECTED and follow.end == {"status": "success"}
    stamped = [e.data for e in events if e.event == "message"]
    assert " stderr oops" in stamped[40] and stamped[0].split(" ")[1] == "stdout"
    replay = _stream(two, run_id)
    try:
        assert [e.data for e in replay.until_end(15) if e.event == "message"] == EXPECTED
    finally:
        replay.close()
    assert _log(two, run_id).splitlines() == EXPECTED
    assert _log(two, run_id, "?tail=2").splitlines() == ["oops", "last"]
    assert _log(two, run_id, "?timestamps=true").splitlines()[40].endswith("Z stderr oops")
    assert _log(one, run_id) == _log(two, run_id)


def test_a_killed_master_leaves_every_shipped_line_readable_on_the_other(masters: Any) -> None:
    one, two = masters({"talk.yaml": LINES}, "worker_pools: {talk: 1}\n", "worker_pools: {}\n")
    run_id = one.post("/api/dags/talk/runs")["run_id"]
    wait_for(lambda: "oops" in _log(two, run_id), 10, message="B to serve A's lines")
    one.kill()  # kill -9, during the task's sleep
    assert _log(two, run_id).splitlines() == EXPECTED[:-1]
    assert _log(two, run_id, "?tail=1") == "oops\n"


def test_a_worker_moving_to_the_other_master_mid_task_leaves_one_whole_log_on_both(
    masters: Any,
    workers: Any,  # noqa: F811
) -> None:
    dag = gpu_dag(
        "remote",
        """
        - id: t
          pool: gpu
          command: 'echo before; sleep 3; echo after'
        """,
    )
    settings = "worker_pools: {default: 0, gpu: 0}\nlease_timeout_seconds: 8\n"
    one, two = masters({"remote.yaml": dag}, settings, settings)
    workers(f"{one.url},{two.url}", "w1")
    wait_for(lambda: online(one.url, "w1"), 15, message="the worker to join")
    run_id = one.post("/api/dags/remote/runs")["run_id"]
    wait_for(lambda: "before" in _log(two, run_id), 10, message="the first line, shared")
    one.stop()  # the worker's master: the worker goes on with the other one
    wait_for(
        lambda: two.get(f"/api/runs/{run_id}")["status"] in ("success", "failed"),
        20,
        message="the run to end through the other master",
    )
    assert two.get(f"/api/runs/{run_id}")["status"] == "success"
    whole = _log(two, run_id).splitlines()
    assert whole[-2:] == ["before", "after"], whole
    one.proc = one._launch()
    wait_for(one.ready, 30, message="the first master back")
    assert _log(one, run_id).splitlines() == whole  # its file, then the rest from the database
