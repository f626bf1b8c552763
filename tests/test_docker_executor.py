"""Container tasks on a real Docker engine (no mocks of the SDK), through a real server.

The engine cannot pull from any registry here: every container uses the local test image built
by `.ci/docker-up` (static busybox). Without an engine these tests skip with the reason; with
NAGARE_REQUIRE_DOCKER=1 (CI) they fail instead. The session fixture checks at the end that no
container of these tests is left behind.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCKER_TEST_IMAGE, Nagare, require_docker, wait_for
from test_restart import ServerProcess

IMAGE = DOCKER_TEST_IMAGE
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A docker SDK client for inspecting what the server did; at the end of the session, no
    container of these tests (their owner label holds the pytest temp folder) may remain."""
    require_docker()
    import docker

    client = docker.from_env()
    base = str(tmp_path_factory.getbasetemp())
    yield client
    leftovers = [
        f"{c['Names'][0]} ({c['State']})"
        for c in client.api.containers(all=True, filters={"label": "nagare.managed=true"})
        if base in (c.get("Labels") or {}).get("nagare.owner", "")
    ]
    client.close()
    assert leftovers == [], f"containers left behind by the tests: {leftovers}"


def owner(root: Path) -> str:
    """The owner label of the containers of a server whose database is root/nagare.db."""
    return f"{socket.gethostname()}:{root / 'nagare.db'}"


def containers(engine: Any, root: Path, **labels: str) -> list[dict[str, Any]]:
    """The containers of the server in `root` (run ids alone are not unique across servers
    sharing the engine), as the engine lists them (no inspect: a container may be removed
    between a list and an inspect)."""
    filters = ["nagare.managed=true", f"nagare.owner={owner(root)}"]
    filters += [f"nagare.{k}={v}" for k, v in labels.items()]
    return list(engine.api.containers(all=True, filters={"label": filters}))


def running_container(
    engine: Any, root: Path, run_id: str, task_id: str, timeout: float = 20
) -> Any:
    def find() -> Any:
        listed = containers(engine, root, run=run_id, task=task_id)
        running = [c for c in listed if c.get("State") == "running"]
        return running[0]["Id"] if running else None

    found = wait_for(find, timeout, message=f"the container of {task_id} to run")
    return engine.containers.get(found)


def one_task_dag(task: str, dag_id: str = "boxed") -> str:
    """A DAG with one container task; `task` holds the task's fields after the image."""
    lines = "\n".join("    " + line for line in task.strip().splitlines())
    return f"id: {dag_id}\ntasks:\n  - id: job\n    image: {IMAGE}\n{lines}\n"


def run_one(
    nagare_factory: Callable[..., Nagare], task: str, timeout: float = 30, **settings: Any
) -> tuple[Nagare, str, dict[str, Any]]:
    nagare = nagare_factory({"boxed.yaml": one_task_dag(task)}, **settings)
    run_id = nagare.trigger("boxed")
    nagare.wait_run(run_id, timeout)
    return nagare, run_id, nagare.task(run_id, "job")


# ---------------------------------------------------------------- running


def test_a_container_task_succeeds_and_its_output_is_in_the_log(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    nagare, run_id, task = run_one(
        nagare_factory, "command: echo hello from the container; echo to stderr >&2"
    )
    assert task["status"] == "success", task
    log = nagare.log(run_id, "job")
    assert "hello from the container" in log
    assert "to stderr" in log
    metrics = task["metrics"]
    assert metrics["executor_type"] == "docker"
    assert metrics["exit_code"] == 0
    assert metrics["duration_ms"] > 0
    assert (
        containers(engine, nagare.root, run=run_id) == []
    )  # removed before the attempt was recorded


def test_a_failing_command_reports_its_exit_code(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    _, _, task = run_one(nagare_factory, "command: echo nope; exit 3")
    assert task["status"] == "failed"
    assert task["message"] == "exit code 3"
    assert task["metrics"]["exit_code"] == 3


def test_output_is_streamed_live_and_a_kill_removes_the_container_within_seconds(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    nagare = nagare_factory({"boxed.yaml": one_task_dag("command: echo first line; sleep 120")})
    run_id = nagare.trigger("boxed")
    running_container(engine, nagare.root, run_id, "job")
    wait_for(lambda: "first line" in nagare.log(run_id, "job"), 10, message="the first line")
    assert nagare.task(run_id, "job")["status"] == "running"
    started = time.monotonic()
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/job/kill").status == 200
    wait_for(
        lambda: not containers(engine, nagare.root, run=run_id), 5, message="the container to go"
    )
    assert time.monotonic() - started < 5
    nagare.wait_run(run_id, 10)
    assert nagare.task(run_id, "job")["status"] == "cancelled"


def test_a_timeout_kills_and_removes_the_container(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    started = time.monotonic()
    nagare, run_id, task = run_one(
        nagare_factory, "timeout_seconds: 1\ncommand: echo before; sleep 120"
    )
    assert time.monotonic() - started < 15
    assert task["status"] == "failed"
    assert task["timed_out"] is True
    assert task["message"] == "timed out after 1s: the container was killed"
    assert "before" in nagare.log(run_id, "job")
    assert containers(engine, nagare.root, run=run_id) == []


def test_several_containers_run_in_parallel(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    text = f"""
    id: fan
    tasks:
      - id: part
        with_items: [a, b, c, d]
        image: {IMAGE}
        command: sleep 1; echo "part {{{{item}}}} done"
      - id: after
        depends_on: [part_a, part_b, part_c, part_d]
        command: echo all done
    """
    nagare = nagare_factory({"fan.yaml": text})
    started = time.monotonic()
    run_id = nagare.trigger("fan")
    assert nagare.wait_run(run_id, 30)["status"] == "success"
    assert time.monotonic() - started < 4 * 1.0 + 3  # not one after the other
    assert "part c done" in nagare.log(run_id, "part_c")
    assert containers(engine, nagare.root, run=run_id) == []


# ---------------------------------------------------------------- environment and files


def test_env_is_only_nagare_variables_conf_and_dag_task_env_and_workdir_applies(
    engine: Any, nagare_factory: Callable[..., Nagare], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAGARE_TEST_PLANTED", "from-the-host")
    text = f"""
    id: envs
    env: {{SHARED: dag, FROM_DAG: d}}
    tasks:
      - id: boxed
        image: {IMAGE}
        workdir: /work/here
        env: {{SHARED: task, PORT: 5432}}
        command: env | sort; echo "pwd=$(pwd)"
      - id: on_host
        command: echo "planted=${{NAGARE_TEST_PLANTED:-absent}}"
    """
    nagare = nagare_factory({"envs.yaml": text})
    run_id = nagare.trigger("envs", {"FROM_CONF": "c"})
    assert nagare.wait_run(run_id, 30)["status"] == "success"
    log = nagare.log(run_id, "boxed")
    for line in (
        "NAGARE_DAG_ID=envs",
        f"NAGARE_RUN_ID={run_id}",
        "NAGARE_TASK_ID=boxed",
        "NAGARE_ATTEMPT=1",
        "FROM_CONF=c",
        "FROM_DAG=d",
        "SHARED=task",
        "PORT=5432",
        "pwd=/work/here",
    ):
        assert line in log.splitlines(), (line, log)
    assert "NAGARE_TEST_PLANTED" not in log  # never the host's environment
    assert "planted=from-the-host" in nagare.log(run_id, "on_host")  # local tasks get it


def test_read_only_volume_rejects_writes_and_rw_volume_files_appear_on_the_host(
    engine: Any, nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    (inbox / "in.txt").write_text("input data\n")
    task = f"""
volumes: ["{inbox}:/in:ro", "{outbox}:/out", "relative:/rel:rw"]
command: |
  cat /in/in.txt
  if echo x > /in/new.txt; then echo "ro write succeeded"; else echo "ro write refused"; fi
  echo result > /out/result.txt
  echo beside the dag > /rel/r.txt
"""
    nagare, run_id, info = run_one(nagare_factory, task)
    assert info["status"] == "success", info
    log = nagare.log(run_id, "job")
    assert "input data" in log
    assert "ro write refused" in log
    assert not (inbox / "new.txt").exists()
    assert (outbox / "result.txt").read_text() == "result\n"
    # a relative host path is resolved against the DAG file's folder
    assert (nagare.root / "dags" / "relative" / "r.txt").read_text() == "beside the dag\n"


def test_volumes_outside_the_allowed_roots_fail_the_task(
    engine: Any, nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    text = f"""
    id: roots
    tasks:
      - id: inside
        image: {IMAGE}
        volumes: ["{allowed}:/data"]
        command: echo ok > /data/ok.txt
      - id: escape
        image: {IMAGE}
        volumes: ["{outside}:/data"]
        command: echo should not run
    """
    nagare = nagare_factory({"roots.yaml": text}, docker_volume_roots=(str(allowed),))
    run_id = nagare.trigger("roots")
    nagare.wait_run(run_id, 30)
    tasks = nagare.tasks(run_id)
    assert tasks["inside"]["status"] == "success"
    assert (allowed / "ok.txt").read_text() == "ok\n"
    assert tasks["escape"]["status"] == "failed"
    assert tasks["escape"]["message"] == (
        f"volume '{outside}:/data': host path {outside} is outside the folders containers may "
        f"mount (docker_volume_roots: {allowed})"
    )


# ---------------------------------------------------------------- resources and metrics


def test_memory_and_cpu_limits_are_applied(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    task = 'resources: {cpus: "0.5", memory: "64m"}\ncommand: sleep 120'
    nagare = nagare_factory({"boxed.yaml": one_task_dag(task)})
    run_id = nagare.trigger("boxed")
    container = running_container(engine, nagare.root, run_id, "job")
    info = nagare.task(run_id, "job")
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 64 * MiB
    assert host["MemorySwap"] == 64 * MiB
    assert host["NanoCpus"] == 500_000_000
    assert container.attrs["Config"]["Entrypoint"] == ["/bin/sh", "-c"]
    assert container.attrs["Config"]["Cmd"] == ["sleep 120"]
    assert container.labels["nagare.task_instance"] == info["id"]
    assert container.labels["nagare.attempt"] == "1"
    assert container.labels["nagare.owner"] == owner(nagare.root)
    assert nagare.call("POST", f"/api/runs/{run_id}/kill").status == 200
    wait_for(
        lambda: not containers(engine, nagare.root, run=run_id), 5, message="the container to go"
    )


def test_going_past_the_memory_limit_is_reported_as_oom_killed(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    task = 'resources: {memory: "64m"}\ncommand: head -c 300m /dev/zero | tail'
    nagare, run_id, info = run_one(nagare_factory, task)
    assert info["status"] == "failed"
    assert info["message"] == "out of memory (OOM-killed at the 64m limit)"
    assert info["metrics"]["exit_code"] == 137
    assert containers(engine, nagare.root, run=run_id) == []


def test_metrics_come_from_the_stats_api(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    task = r"""
command: |
  x=$(head -c 20m /dev/zero | tr '\0' a)
  i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done
  sleep 1.5
  echo ${#x}
"""
    nagare, run_id, info = run_one(nagare_factory, task)
    assert info["status"] == "success", info
    assert f"{20 * MiB}" in nagare.log(run_id, "job")
    metrics = info["metrics"]
    assert metrics["executor_type"] == "docker"
    assert metrics["peak_memory_bytes"] >= 20 * MiB
    assert metrics["cpu_user_ms"] + metrics["cpu_system_ms"] > 50
    assert metrics["duration_ms"] >= 1500


# ---------------------------------------------------------------- failures


def test_a_missing_image_fails_quickly_with_the_registrys_message(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    image = "registry.invalid/nagare/missing:1"
    text = f"id: missing\ntasks:\n  - id: job\n    image: {image}\n    command: echo never\n"
    nagare = nagare_factory({"missing.yaml": text})
    started = time.monotonic()
    run_id = nagare.trigger("missing")
    nagare.wait_run(run_id, 60)
    assert time.monotonic() - started < 30
    task = nagare.task(run_id, "job")
    assert task["status"] == "failed"
    assert task["message"].startswith(f"cannot pull image {image}: ")
    assert len(task["message"]) > len(f"cannot pull image {image}: ") + 5  # the reason
    assert f"[nagare] pulling image {image}" in nagare.log(run_id, "job")
    assert task["metrics"]["executor_type"] == "docker"


def test_an_unreachable_engine_fails_the_task_clearly_and_the_server_keeps_running(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    """Needs no engine: the executor is pointed at a socket where none listens."""
    address = f"unix://{tmp_path}/no-engine.sock"
    text = f"""
    id: mixed
    tasks:
      - id: boxed
        image: {IMAGE}
        command: echo never
      - id: local
        command: echo local still works
    """
    nagare = nagare_factory({"mixed.yaml": text}, docker_host=address)
    for _ in range(2):
        run_id = nagare.trigger("mixed")
        nagare.wait_run(run_id)
        tasks = nagare.tasks(run_id)
        assert tasks["boxed"]["status"] == "failed"
        assert tasks["boxed"]["message"] == (
            f"Docker engine not reachable at {address}: No such file or directory"
        )
        assert tasks["local"]["status"] == "success"
        assert "local still works" in nagare.log(run_id, "local")
    assert nagare.call("GET", "/api/health").status == 200


# ---------------------------------------------------------------- shutdown and crashes


def test_server_shutdown_removes_a_running_container(
    engine: Any, nagare_factory: Callable[..., Nagare]
) -> None:
    nagare = nagare_factory({"boxed.yaml": one_task_dag("command: sleep 120")})
    run_id = nagare.trigger("boxed")
    running_container(engine, nagare.root, run_id, "job")
    started = time.monotonic()
    nagare.app.stop()
    assert time.monotonic() - started < 10
    assert containers(engine, nagare.root, run=run_id) == []


def test_a_restart_after_a_crash_removes_the_containers_left_behind(
    engine: Any, tmp_path: Path
) -> None:
    server = ServerProcess(tmp_path)
    server.dag("crash.yaml", one_task_dag("command: echo started; sleep 120", dag_id="crash"))
    try:
        server.start()
        run_id = server.post("/api/dags/crash/runs").json["run_id"]
        container = running_container(engine, tmp_path, run_id, "job")
        server.stop()  # SIGKILL: the server cannot remove its container
        container.reload()
        assert container.status == "running"
        server.start()
        assert containers(engine, tmp_path, run=run_id) == []  # removed before the server answered
        run = server.wait_run(run_id)
        task = server.task(run_id, "job")
        assert run["status"] == "failed"
        assert task["message"] == (
            "the server stopped while this attempt ran; "
            f"its leftover container {container.name} was removed"
        )
    finally:
        server.stop()


def test_the_server_warns_at_start_when_volumes_may_mount_any_host_path(
    nagare_factory: Callable[..., Nagare], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Needs no engine: the warning comes from the loaded DAGs and the settings."""
    dag = one_task_dag('volumes: ["/tmp:/data:ro"]\ncommand: ls /data')
    warning = "docker_volume_roots is not configured"
    with caplog.at_level("WARNING", logger="nagare"):
        nagare_factory({"boxed.yaml": dag}, root=tmp_path / "open")
    assert warning in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="nagare"):
        nagare_factory({"boxed.yaml": dag}, root=tmp_path / "closed", docker_volume_roots=("/tmp",))
        nagare_factory({"hello.yaml": "id: h\ntasks:\n  - id: t\n    command: 'true'\n"})
    assert warning not in caplog.text
