"""The container executor's pure parts, without an engine: task fields -> container settings
(entrypoint, env, labels, volumes, cpus, memory, gpus), pull progress, stats, error texts, and
the docker_* settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nagare.config import load_config
from nagare.errors import ConfigError
from nagare.executors.containers import (
    ContainerConfigError,
    ContainerUsage,
    PullProgress,
    container_spec,
    device_requests,
    memory_bytes,
    nano_cpus,
    volume_binds,
)
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, Resources


def assignment(**changes: Any) -> Assignment:
    fields: dict[str, Any] = {
        "task_instance_id": "0123456789abcdef0123",
        "run_id": "manual__2025-01-01T00:00:00",
        "dag_id": "etl",
        "task_id": "load",
        "attempt": 2,
        "command": "echo hi && exit 3",
        "env": {"NAGARE_DAG_ID": "etl", "REGION": "eu"},
        "image": "python:3.12-slim",
    }
    fields.update(changes)
    return Assignment(**fields)


# ---------------------------------------------------------------- the container


def test_the_command_runs_under_sh_c_with_the_entrypoint_overridden() -> None:
    spec = container_spec(assignment())
    assert spec.image == "python:3.12-slim"
    assert spec.entrypoint == ["/bin/sh", "-c"]
    assert spec.command == ["echo hi && exit 3"]
    kwargs = spec.create_kwargs()
    assert kwargs["entrypoint"] == ["/bin/sh", "-c"]
    assert kwargs["command"] == ["echo hi && exit 3"]
    assert kwargs["use_config_proxy"] is False  # no proxy variables added by the SDK either


def test_the_environment_is_exactly_the_assignments() -> None:
    spec = container_spec(assignment(env={"A": "1", "NAGARE_RUN_ID": "r"}))
    assert spec.environment == {"A": "1", "NAGARE_RUN_ID": "r"}
    assert "PATH" not in spec.environment and "HOME" not in spec.environment


def test_workdir_is_set_only_when_given() -> None:
    assert container_spec(assignment(workdir="/data")).working_dir == "/data"
    assert container_spec(assignment()).working_dir is None  # the image's own


def test_labels_name_the_attempt_and_the_owner() -> None:
    spec = container_spec(assignment(), owner="host:/srv/nagare.db")
    assert spec.labels == {
        "nagare.managed": "true",
        "nagare.owner": "host:/srv/nagare.db",
        "nagare.run": "manual__2025-01-01T00:00:00",
        "nagare.dag": "etl",
        "nagare.task": "load",
        "nagare.task_instance": "0123456789abcdef0123",
        "nagare.attempt": "2",
    }
    assert "nagare.owner" not in container_spec(assignment()).labels


def test_the_name_is_readable_and_valid_for_docker() -> None:
    assert container_spec(assignment()).name == "nagare-load-0123456789abcdef0123-2"
    name = container_spec(assignment(task_id="process[17]")).name
    assert name == "nagare-process-17-0123456789abcdef0123-2"


def test_no_resources_means_no_limits() -> None:
    assert container_spec(assignment()).host_config == {}


def test_resources_become_engine_host_config() -> None:
    spec = container_spec(assignment(resources=Resources(cpus="1.5", memory="512m", gpus="all")))
    assert spec.host_config == {
        "NanoCpus": 1_500_000_000,
        "Memory": 512 * 1024**2,
        "MemorySwap": 512 * 1024**2,  # the limit is a hard one: no swap on top
        "DeviceRequests": [
            {"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]], "Options": {}}
        ],
    }
    assert spec.memory_text == "512m"


@pytest.mark.parametrize(
    ("text", "nanos"),
    [("1", 10**9), ("1.0", 10**9), ("0.5", 5 * 10**8), ("2", 2 * 10**9), ("0.001", 10**6)],
)
def test_cpus_to_nano_cpus(text: str, nanos: int) -> None:
    assert nano_cpus(text) == nanos


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf", "1e30"])
def test_bad_cpus_are_refused(text: str) -> None:
    with pytest.raises(ContainerConfigError, match=r"resources\.cpus"):
        nano_cpus(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("100b", 100),
        ("1k", 1024),
        ("64m", 64 * 1024**2),
        ("64M", 64 * 1024**2),
        ("2g", 2 * 1024**3),
        ("2G", 2 * 1024**3),
        ("0m", 0),
    ],
)
def test_memory_suffixes(text: str, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["", "1.5g", "64mb", "m", "-1m", "1t"])
def test_bad_memory_is_refused(text: str) -> None:
    with pytest.raises(ContainerConfigError, match=r"resources\.memory"):
        memory_bytes(text)


def test_gpus_all_or_a_count() -> None:
    assert device_requests("all") == [
        {"Driver": "nvidia", "Count": -1, "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert device_requests("2")[0]["Count"] == 2
    for bad in ("0", "-1", "some", "1.5", "²"):
        with pytest.raises(ContainerConfigError, match=r"resources\.gpus"):
            device_requests(bad)


# ---------------------------------------------------------------- volumes


def test_volumes_become_binds_with_a_mode(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    binds = volume_binds([f"{tmp_path}/in:/data:ro", f"{tmp_path}/out:/out", f"{tmp_path}:/w:rw"])
    assert binds == [f"{tmp_path}/in:/data:ro", f"{tmp_path}/out:/out:rw", f"{tmp_path}:/w:rw"]
    spec = container_spec(assignment(volumes=(f"{tmp_path}/in:/data:ro",)))
    assert spec.host_config == {"Binds": [f"{tmp_path}/in:/data:ro"]}


def test_a_symlinked_host_path_is_mounted_as_its_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert volume_binds([f"{tmp_path}/link:/data"]) == [f"{tmp_path}/real:/data:rw"]


@pytest.mark.parametrize(
    "spec", ["relative/path:/data", "/host:relative", "/host", "/a:/b:rx", ":/b", "/a:/b:ro:x"]
)
def test_bad_volumes_are_refused(spec: str) -> None:
    with pytest.raises(ContainerConfigError, match="volume"):
        volume_binds([spec])


def test_the_allow_list_admits_paths_inside_its_roots_only(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (tmp_path / "allowed2").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "allowed2")
    roots = [str(allowed)]
    assert volume_binds([f"{allowed}/sub:/data"], roots) == [f"{allowed}/sub:/data:rw"]
    assert volume_binds([f"{allowed}:/data:ro"], roots) == [f"{allowed}:/data:ro"]
    for outside in (f"{tmp_path}/allowed2:/d", f"{allowed}/escape:/d", "/:/host", "/etc:/etc"):
        with pytest.raises(ContainerConfigError) as info:
            volume_binds([outside], roots)
        assert "is outside the folders containers may mount (docker_volume_roots: " in str(
            info.value
        )


def test_without_roots_any_absolute_path_is_allowed() -> None:
    assert volume_binds(["/:/host:ro"]) == ["/:/host:ro"]


# ---------------------------------------------------------------- pull progress


def test_pull_progress_is_one_line_per_layer_state_change() -> None:
    events: list[dict[str, Any]] = [
        {"status": "Pulling from library/python", "id": "3.12-slim"},
        {"status": "Pulling fs layer", "id": "aaa"},
        {"status": "Pulling fs layer", "id": "bbb"},
        {"status": "Waiting", "id": "bbb"},
    ]
    for current in range(0, 30_000_000, 100_000):  # 300 progress ticks
        events.append(
            {
                "status": "Downloading",
                "id": "aaa",
                "progressDetail": {"current": current, "total": 30_000_000},
                "progress": "[=>   ]",
            }
        )
    events += [
        {"status": "Verifying Checksum", "id": "aaa"},
        {"status": "Download complete", "id": "aaa"},
        *(
            {"status": "Extracting", "id": "aaa", "progressDetail": {"current": i}}
            for i in range(50)
        ),
        {"status": "Pull complete", "id": "aaa"},
        {"status": "Already exists", "id": "bbb"},
        {"status": "Digest: sha256:abc"},
        {"status": "Status: Downloaded newer image for python:3.12-slim"},
    ]
    progress = PullProgress()
    lines = [line for line in map(progress.feed, events) if line]
    assert lines == [
        "Pulling from library/python 3.12-slim",
        "layer aaa: Pulling fs layer",
        "layer bbb: Pulling fs layer",
        "layer bbb: Waiting",
        "layer aaa: Downloading (28.6 MiB)",
        "layer aaa: Verifying Checksum",
        "layer aaa: Download complete",
        "layer aaa: Extracting",
        "layer aaa: Pull complete",
        "layer bbb: Already exists",
        "Digest: sha256:abc",
        "Status: Downloaded newer image for python:3.12-slim",
    ]
    assert progress.error == ""


def test_pull_progress_keeps_the_registrys_error() -> None:
    progress = PullProgress()
    assert progress.feed({"status": "Pulling from library/nope", "id": "latest"})
    message = "pull access denied for nope, repository does not exist or may require login"
    assert progress.feed({"errorDetail": {"message": message}, "error": message}) is None
    assert progress.error == message


# ---------------------------------------------------------------- stats


def test_usage_from_cgroup_v1_frames() -> None:
    usage = ContainerUsage()
    frames: list[dict[str, Any]] = [
        {
            "memory_stats": {"usage": 2_000_000, "max_usage": 3_000_000},
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": 40_000_000,
                    "usage_in_usermode": 30_000_000,
                    "usage_in_kernelmode": 0,
                }
            },
        },
        {
            "memory_stats": {"usage": 1_000_000, "max_usage": 33_000_000},
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": 390_000_000,
                    "usage_in_usermode": 270_000_000,
                    "usage_in_kernelmode": 110_000_000,
                }
            },
        },
        {"memory_stats": {}, "cpu_stats": {"cpu_usage": {"total_usage": 0}}},  # after the exit
    ]
    for frame in frames:
        usage.feed(frame)
    assert usage.peak_memory_bytes == 33_000_000
    assert (usage.cpu_user_ns, usage.cpu_system_ns) == (270_000_000, 110_000_000)


def test_usage_from_cgroup_v2_frames_samples_the_peak() -> None:
    usage = ContainerUsage()
    for used in (5_000_000, 80_000_000, 10_000_000):
        usage.feed({"memory_stats": {"usage": used}, "cpu_stats": {"cpu_usage": {}}})
    usage.feed({"cpu_stats": {"cpu_usage": {"total_usage": 500_000_000}}})
    assert usage.peak_memory_bytes == 80_000_000
    assert usage.cpu_user_ns == 500_000_000


# ---------------------------------------------------------------- engine errors


def test_the_unreachable_message_names_the_address_and_the_reason() -> None:
    DockerExecutor = pytest.importorskip("nagare.executors.docker").DockerExecutor

    class ProtocolError(Exception):  # how urllib3 wraps the socket's error
        pass

    executor = DockerExecutor(Reactor(), docker_host="unix:///run/nowhere.sock")
    inner = FileNotFoundError(2, "No such file or directory")
    try:
        try:
            raise ProtocolError("Connection aborted.", inner)
        except ProtocolError as exc:
            raise RuntimeError("Error while fetching server API version") from exc
    except RuntimeError as outer:
        message = executor.unreachable(outer)
    assert message == (
        "Docker engine not reachable at unix:///run/nowhere.sock: No such file or directory"
    )


def test_the_address_defaults_to_docker_host_then_the_local_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    DockerExecutor = pytest.importorskip("nagare.executors.docker").DockerExecutor
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert DockerExecutor(Reactor()).address == "unix:///var/run/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert DockerExecutor(Reactor()).address == "tcp://10.0.0.1:2375"
    assert DockerExecutor(Reactor(), docker_host="unix:///x.sock").address == "unix:///x.sock"


# ---------------------------------------------------------------- settings


def test_docker_settings_defaults(tmp_path: Path) -> None:
    config = load_config({"config": str(tmp_path / "none.yaml")}, environ={})
    assert config.docker_host == ""
    assert config.docker_volume_roots == ()
    assert config.docker_pull_timeout_seconds == 900.0


def test_volume_roots_from_yaml_list_and_from_comma_separated_env(tmp_path: Path) -> None:
    settings = tmp_path / "nagare.yaml"
    settings.write_text("docker_volume_roots: [/data, /srv/in]\ndocker_host: tcp://h:2375\n")
    config = load_config({"config": str(settings)}, environ={})
    assert config.docker_volume_roots == ("/data", "/srv/in")
    assert config.docker_host == "tcp://h:2375"
    config = load_config(
        {"config": str(settings)}, environ={"NAGARE_DOCKER_VOLUME_ROOTS": "/a, /b/c,"}
    )
    assert config.docker_volume_roots == ("/a", "/b/c")


def test_relative_volume_roots_are_refused(tmp_path: Path) -> None:
    settings = tmp_path / "nagare.yaml"
    settings.write_text("docker_volume_roots: [data]\n")
    with pytest.raises(ConfigError, match="docker_volume_roots: expected absolute paths"):
        load_config({"config": str(settings)}, environ={})


def test_the_executor_module_is_not_loaded_by_the_app_module() -> None:
    """Startup time: the SDK is imported only when the first container task runs."""
    import subprocess
    import sys

    code = (
        "import sys; import nagare.app, nagare.cli; "
        "print('docker' in sys.modules, 'nagare.executors.docker' in sys.modules)"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split() == ["False", "False"]
