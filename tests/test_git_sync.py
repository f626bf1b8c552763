"""Git sync against real repositories: a bare repository in tmp_path, real commits pushed to it,
the system's `git` client fetching them (no mocks)."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nagare.config import load_config
from nagare.errors import ConfigError
from nagare.executors.spawn import CommandResult, run_command
from nagare.git_sync import GitSync, mask, public_url, stale_checkouts
from nagare.models import GitSyncSettings

DAG = """\
id: {name}
tasks:
  - id: hello
    command: echo {name}
"""


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(cwd),
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class Remote:
    """A bare repository and a clone that commits and pushes to it."""

    def __init__(self, root: Path, branch: str = "main") -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.branch = branch
        self.bare.mkdir()
        git(self.bare, "init", "--bare", "--quiet", f"--initial-branch={branch}")
        self.work.mkdir()
        git(self.work, "init", "--quiet", f"--initial-branch={branch}")
        git(self.work, "remote", "add", "origin", str(self.bare))

    def commit(self, files: dict[str, str | None], message: str) -> str:
        for name, text in files.items():
            path = self.work / name
            if text is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message)
        git(self.work, "push", "--quiet", "origin", f"HEAD:{self.branch}")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def syncer(
    tmp_path: Path,
    url: str,
    run: Any = run_command,
    environ: dict[str, str] | None = None,
    **kw: Any,
) -> GitSync:
    settings = GitSyncSettings(url=url, timeout_seconds=20, **kw)
    return GitSync(settings, str(tmp_path / "dags"), str(tmp_path / "cache"), run, environ or {})


def dag_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "dags").iterdir())


def test_a_new_commit_replaces_the_folder_atomically(tmp_path: Path, remote: Remote) -> None:
    first = remote.commit({"a.yaml": DAG.format(name="a")}, "add a")
    (tmp_path / "dags").mkdir()  # the empty folder the server creates at start
    sync = syncer(tmp_path, str(remote.bare))
    status = sync.sync_once()
    assert status.last_error == "" and status.commit == first and status.subject == "add a"
    assert os.path.islink(tmp_path / "dags") and dag_files(tmp_path) == ["a.yaml"]
    assert status.committed_at is not None and status.synced_at is not None

    second = remote.commit({"a.yaml": None, "b.yaml": DAG.format(name="b")}, "b instead of a")
    status = sync.sync_once()
    assert status.commit == second and status.subject == "b instead of a"
    assert dag_files(tmp_path) == ["b.yaml"]
    # the checkout before stays (a scan may be reading it); a third commit removes the first
    third = remote.commit({"c.yaml": DAG.format(name="c")}, "add c")
    sync.sync_once()
    assert sorted(os.listdir(tmp_path / "cache" / "checkouts")) == sorted([second, third])
    # nothing new: nothing changes, the attempt is recorded
    again = sync.sync_once()
    assert again.commit == third and again.synced_at == sync.status().synced_at


def test_a_restart_keeps_the_link_and_its_checkout(tmp_path: Path, remote: Remote) -> None:
    first = remote.commit({"a.yaml": DAG.format(name="a")}, "add a")
    syncer(tmp_path, str(remote.bare)).sync_once()
    again = syncer(tmp_path, str(remote.bare))  # a new server process, same folders
    status = again.sync_once()
    assert status.commit == first and status.subject == "add a" and status.last_error == ""
    assert dag_files(tmp_path) == ["a.yaml"]
    second = remote.commit({"b.yaml": DAG.format(name="b")}, "add b")
    again.sync_once()
    # the checkout the folder pointed at before stays next to the new one
    assert sorted(os.listdir(tmp_path / "cache" / "checkouts")) == sorted([first, second])


def test_subdirectory_and_a_missing_one(tmp_path: Path, remote: Remote) -> None:
    remote.commit({"dags/x.yaml": DAG.format(name="x"), "README": "hi"}, "layout")
    sync = syncer(tmp_path, str(remote.bare), subdirectory="dags")
    assert sync.sync_once().last_error == ""
    assert dag_files(tmp_path) == ["x.yaml"]
    remote.commit({"dags/x.yaml": None}, "remove the folder")
    status = sync.sync_once()
    assert "has no folder 'dags'" in status.last_error
    assert dag_files(tmp_path) == ["x.yaml"]  # the last good commit stays


def test_a_broken_url_reports_and_keeps_the_folder(tmp_path: Path, remote: Remote) -> None:
    good = remote.commit({"a.yaml": DAG.format(name="a")}, "add a")
    sync = syncer(tmp_path, str(remote.bare))
    sync.sync_once()
    sync.settings = GitSyncSettings(url=str(tmp_path / "nowhere.git"), timeout_seconds=20)
    status = sync.sync_once()
    assert status.commit == good and dag_files(tmp_path) == ["a.yaml"]
    assert "git fetch of branch main" in status.last_error
    assert status.last_success_at is not None and status.last_attempt_at is not None
    assert status.last_attempt_at >= status.last_success_at


def test_a_folder_with_files_is_not_replaced(tmp_path: Path, remote: Remote) -> None:
    remote.commit({"a.yaml": DAG.format(name="a")}, "add a")
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "mine.yaml").write_text("x")
    status = syncer(tmp_path, str(remote.bare)).sync_once()
    assert "is a folder with files" in status.last_error
    assert dag_files(tmp_path) == ["mine.yaml"]


class _Auth(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(403)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_remote() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Auth,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/team/dags.git", seen
    server.shutdown()
    server.server_close()


def test_token_travels_as_a_header_and_never_in_argv_logs_or_errors(
    tmp_path: Path, http_remote: tuple[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    url, seen = http_remote
    token = "s3cr3t-T0KEN-value"
    argvs: list[list[str]] = []

    def recording(argv: list[str], env: dict[str, str], cwd: str | None, t: float) -> Any:
        argvs.append(argv)
        return run_command(argv, env, cwd, t)

    caplog.set_level(logging.INFO, logger="nagare.git_sync")
    sync = syncer(tmp_path, url, recording, {"GIT_TOKEN": token}, token_env="GIT_TOKEN")
    status = sync.sync_once()
    expected = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert f"Basic {expected}" in seen  # the server received it
    assert status.last_error and "403" in status.last_error
    basic = expected
    for text in [status.last_error, caplog.text, *(" ".join(a) for a in argvs)]:
        assert token not in text and basic not in text


def test_token_env_unset_is_a_clear_error(tmp_path: Path) -> None:
    sync = syncer(tmp_path, "https://example.invalid/x.git", token_env="NOT_SET")
    assert "NOT_SET (token_env) is not set" in sync.sync_once().last_error


def test_masking_and_public_url() -> None:
    assert public_url("https://bob:pw@git.example.com/x.git") == "https://git.example.com/x.git"
    assert mask("fatal: https://bob:pw@h/x: tok", ["tok"]) == "fatal: https://***@h/x: ***"
    assert stale_checkouts(["a", "b", "c.tmp"], ["b"]) == ["a", "c.tmp"]


def test_run_command_times_out_and_kills() -> None:
    started = time.monotonic()
    result = run_command(["sh", "-c", "sleep 30"], {"PATH": os.defpath}, None, 0.3)
    assert result.timed_out and result.exit_code == -1 and time.monotonic() - started < 5
    assert run_command(["/nonexistent/git"], {}, None, 1).exit_code == -1
    assert run_command(["sh", "-c", "echo hi; exit 3"], {"PATH": os.defpath}) == CommandResult(
        3, "hi\n"
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"branch": "main"}, "git_sync.url: required"),
        ({"url": "u", "token_env": "A", "ssh_key_file": "k"}, "not both"),
        ({"url": "u", "token_env": "no-dash"}, "name of an environment variable"),
        ({"url": "u", "branch": "a..b"}, "expected a branch name"),
        ({"url": "u", "subdirectory": "../x"}, "folder inside the repository"),
        ({"url": "u", "interval_seconds": 0}, "interval_seconds"),
        ({"url": "u", "push": True}, "unknown key 'push'"),
    ],
)
def test_settings_are_checked(tmp_path: Path, raw: dict[str, Any], problem: str) -> None:
    import yaml

    path = tmp_path / "nagare.yaml"
    path.write_text(yaml.safe_dump({"git_sync": raw}))
    with pytest.raises(ConfigError, match=problem.replace(".", r"\.").replace("(", r"\(")):
        load_config({"config": str(path)}, environ={})


def test_settings_defaults(tmp_path: Path) -> None:
    path = tmp_path / "nagare.yaml"
    path.write_text("git_sync: {url: 'https://h/x.git', token_env: GIT_TOKEN}\n")
    settings = load_config({"config": str(path)}, environ={}).git_sync
    assert settings == GitSyncSettings(url="https://h/x.git", token_env="GIT_TOKEN")


def _until(check: Callable[[], Any], timeout: float = 15) -> Any:
    due = time.monotonic() + timeout
    while time.monotonic() < due:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_the_server_picks_up_pushed_commits(
    nagare_factory: Any, tmp_path: Path, remote: Remote
) -> None:
    first = remote.commit({"a.yaml": DAG.format(name="a")}, "add a")
    settings = GitSyncSettings(url=str(remote.bare), interval_seconds=1, timeout_seconds=20)
    server = nagare_factory(git_sync=settings)
    _until(lambda: server.get("/api/git")["commit"] == first)
    _until(lambda: [d["dag_id"] for d in server.get("/api/dags")] == ["a"])
    status = server.get("/api/git")
    assert status["enabled"] and status["subject"] == "add a" and status["ok"]
    assert status["url"] == str(remote.bare) and status["last_error"] is None

    second = remote.commit({"b.yaml": DAG.format(name="b")}, "add b")
    server.call("POST", "/api/git/sync")
    _until(lambda: server.get("/api/git")["commit"] == second)
    _until(lambda: len(server.get("/api/dags")) == 2)

    # a broken remote: the error is reported, the DAGs stay, health names the loop
    os.rename(remote.bare, tmp_path / "moved.git")
    server.call("POST", "/api/git/sync")
    error = _until(lambda: server.get("/api/git")["last_error"])
    assert "git fetch" in error and server.get("/api/git")["commit"] == second
    assert len(server.get("/api/dags")) == 2
    health = server.call("GET", "/api/health")
    assert health.status == 503 and health.json["components"]["git_sync"]["status"] == "failing"


def test_git_status_when_off(nagare: Any) -> None:
    assert nagare.get("/api/git") == {"enabled": False}
    assert nagare.call("POST", "/api/git/sync").status == 409
