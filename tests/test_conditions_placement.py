"""Task preconditions run where the task runs, with its environment: on a remote worker (the
worker's environment) and in the task's container (a shell of the image), skipping the task
with the failing command and its exit code as the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import Nagare
from test_cluster import GPU_ONLY, LEASE, Worker, gpu_dag, wait_online, workers  # noqa: F401
from test_docker_executor import engine, run_one  # noqa: F401

REMOTE = """
- id: on_worker
  pool: gpu
  preconditions:
    - test "$WORKER_ROLE" = batch
  command: echo "ran on the batch worker"
- id: not_on_worker
  pool: gpu
  preconditions: ['[ "$WORKER_ROLE" = gpu ]']
  command: echo never
"""


def test_preconditions_run_on_the_remote_worker_with_its_environment(
    nagare_factory: Callable[..., Nagare],
    workers: Callable[..., Worker],  # noqa: F811
) -> None:
    nagare = nagare_factory(
        dags={"r.yaml": gpu_dag("remote_pre", REMOTE)},
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1", env={"WORKER_ROLE": "batch"})
    wait_online(nagare, w1)
    run = nagare.wait_run(nagare.trigger("remote_pre"))
    assert run["status"] == "success"
    tasks = nagare.tasks(run["run_id"])
    assert (tasks["on_worker"]["status"], tasks["on_worker"]["worker"]) == ("success", "w1")
    assert "ran on the batch worker" in nagare.log(run["run_id"], "on_worker")
    skipped = tasks["not_on_worker"]
    assert (skipped["status"], skipped["worker"]) == ("skipped", "w1")
    assert skipped["reason"] == 'precondition failed: [ "$WORKER_ROLE" = gpu ] (exit code 1)'


def test_preconditions_run_inside_the_tasks_container(
    engine: Any,  # noqa: F811
    nagare_factory: Callable[..., Nagare],
) -> None:
    # in the container the task's shell is PID 1: the second precondition fails there only
    nagare, run_id, task = run_one(
        nagare_factory,
        "preconditions: ['test -x /bin/sh', 'test \"$(cat /proc/1/comm)\" != sh || exit 3']\n"
        "command: echo never",
    )
    assert task["status"] == "skipped", task
    assert task["reason"] == (
        'precondition failed: test "$(cat /proc/1/comm)" != sh || exit 3 (exit code 3)'
    )
    assert task["metrics"]["executor_type"] == "docker"
    assert nagare.wait_run(run_id)["status"] == "success"
