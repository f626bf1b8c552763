"""Git sync: the DAGs folder follows a branch of a git repository (`git_sync:` of nagare.yaml).

Every `interval_seconds` the loop fetches the branch (the system's `git` client, run by the
spawner's `run_command`) into a bare cache repository next to the database. A new commit is
checked out into a folder of its own (`checkouts/<sha>`), and the DAGs folder — a symbolic link
that git sync owns — is switched to it with one `rename`: the folder watcher sees the old tree
or the new one, never a mix. The previous checkout is kept (a scan may still be reading it);
older ones are removed.

A fetch or checkout that fails changes nothing: the link keeps pointing at the last good commit,
the loaded DAGs stay, and the error is reported (`GET /api/git`, the DAGs page, the `git_sync`
component of `/api/health`). Credentials never reach a command line, a log line or an error:
a token travels as an HTTP header in git's environment (GIT_CONFIG_*), an SSH key as
GIT_SSH_COMMAND, and every message is masked (the token, and any user:password in the URL).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from nagare.clock import now_ms
from nagare.liveness import DistinctErrors, Heartbeat
from nagare.models import GitSyncSettings

log = logging.getLogger("nagare.git_sync")
BEAT_SECONDS = 5.0  # while waiting for the next fetch, the loop beats this often
MAX_ERROR_CHARS = 600
KEEP_CHECKOUTS = 2  # the current one and the one before it
SYNC_REF = "refs/nagare-sync/head"
MASK = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


class _Result(Protocol):
    @property
    def exit_code(self) -> int: ...

    @property
    def output(self) -> str: ...


Runner = Callable[[list[str], dict[str, str], str | None, float], _Result]


class GitError(Exception):
    """One step of a sync failed; the message is already masked."""


@dataclass(frozen=True)
class GitStatus:
    """What `GET /api/git` answers: the commit the DAGs folder holds, and the last attempt."""

    url: str  # without credentials
    branch: str
    subdirectory: str
    interval_seconds: float
    commit: str = ""  # the full sha the DAGs folder holds, "" before the first sync
    subject: str = ""
    committed_at: int | None = None  # ms
    synced_at: int | None = None  # ms: when the folder switched to `commit`
    last_attempt_at: int | None = None
    last_success_at: int | None = None
    last_error: str = ""


def public_url(url: str) -> str:
    """The URL without a user:password part (`https://user:pw@host/x` -> `https://host/x`)."""
    return _URL_USERINFO.sub(lambda m: m.group("scheme"), url)


def mask(text: str, secrets: list[str]) -> str:
    """`text` with every secret (and the URL's credentials) replaced by ***."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)


def git_env(settings: GitSyncSettings, environ: dict[str, str]) -> tuple[dict[str, str], str]:
    """The environment of every git command, and the token it carries (to mask), or ''.
    A token becomes an `Authorization` header of git's HTTP transport (GIT_CONFIG_*: never on
    the command line); an SSH key becomes GIT_SSH_COMMAND with IdentitiesOnly."""
    env = {
        k: v
        for k, v in environ.items()
        if k in ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR")
        or k.endswith("_proxy")
        or k.endswith("_PROXY")
    }
    env.update(
        {
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",  # fail instead of asking for a password
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
    )
    env.setdefault("PATH", os.defpath)
    token = ""
    if settings.token_env:
        token = environ.get(settings.token_env, "")
        if not token:
            raise GitError(f"the environment variable {settings.token_env} (token_env) is not set")
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            }
        )
        token = f"{token}\n{basic}"
    if settings.ssh_key_file:
        key = shlex.quote(os.path.abspath(settings.ssh_key_file))
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
            "-o StrictHostKeyChecking=accept-new"
        )
    return env, token


def checkout_name(sha: str) -> str:
    return sha


def stale_checkouts(names: list[str], keep: list[str]) -> list[str]:
    """The checkout folders to remove: all but `keep` (and half-written `.tmp` ones)."""
    return sorted(n for n in names if n not in keep)


class GitSync:
    """The `git_sync` loop and its status; `run(stop)` is a long-lived loop that `app` starts."""

    def __init__(
        self,
        settings: GitSyncSettings,
        dags_path: str,
        cache_dir: str,
        run: Runner,
        environ: dict[str, str] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.dags_path = os.path.abspath(dags_path)
        self.cache_dir = os.path.abspath(cache_dir)
        self.repo = os.path.join(self.cache_dir, "repo.git")
        self.checkouts = os.path.join(self.cache_dir, "checkouts")
        self._run = run
        self._environ = dict(os.environ) if environ is None else environ
        self.clock = clock
        self._lock = threading.Lock()
        self._status = GitStatus(
            public_url(settings.url),
            settings.branch,
            settings.subdirectory,
            settings.interval_seconds,
        )
        self._errors = DistinctErrors()
        self._secrets: list[str] = []
        self.wake_event = threading.Event()
        self.liveness = Heartbeat("git_sync", max(BEAT_SECONDS, settings.interval_seconds))

    # ------------------------------------------------------------ reading

    def status(self) -> GitStatus:
        with self._lock:
            return self._status

    # ------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """A sync at once, then every `interval_seconds` (or when woken); it beats meanwhile
        (an exception ends it: app logs it, backs off and runs it again)."""
        while not stop.is_set():
            status = self.sync_once()
            self.liveness.beat(status.last_error)
            if not self._wait(stop, self.settings.interval_seconds):
                return

    def wake(self) -> None:
        """Sync now (e.g. `POST /api/git/sync`)."""
        self.wake_event.set()

    def _wait(self, stop: threading.Event, seconds: float) -> bool:
        due = time.monotonic() + seconds
        while not stop.is_set():
            left = due - time.monotonic()
            if left <= 0 or self.wake_event.is_set():
                self.wake_event.clear()
                return True
            if stop.wait(min(BEAT_SECONDS, left, 0.2 if seconds < 5 else 1.0)):
                return False
            self.liveness.beat(self.status().last_error)
        return False

    def sync_once(self) -> GitStatus:
        """Fetch the branch; when it moved, check the commit out and switch the folder to it.
        Never raises for what git or the disk says: the error becomes the status's."""
        started = self.clock()
        try:
            env, token = git_env(self.settings, self._environ)
            self._secrets = [s for s in token.split("\n") if s]
            sha = self._fetch(env)
            current = self.status()
            if sha != current.commit or not self._link_points_at(sha):
                subject, committed = self._describe(env, sha)
                self._check_out(env, sha)
                previous = self._linked_checkout()
                self._switch(sha)
                self._remove_stale(sha, previous)
                log.info("git sync: the DAGs folder is now at %s (%s)", sha[:12], subject)
                self._update(commit=sha, subject=subject, committed_at=committed, synced_at=started)
        except GitError as exc:
            return self._failed(str(exc), started)
        except OSError as exc:
            return self._failed(
                f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), started
            )
        if self._errors.clear():
            log.info("git sync: %s fetched again", public_url(self.settings.url))
        return self._update(last_attempt_at=started, last_success_at=started, last_error="")

    def _failed(self, error: str, started: int) -> GitStatus:
        message = mask(error, self._secrets)[:MAX_ERROR_CHARS]
        if self._errors.first(message):
            log.warning("git sync failed (the DAGs loaded before are kept): %s", message)
        return self._update(last_attempt_at=started, last_error=message)

    def _update(self, **changes: object) -> GitStatus:
        with self._lock:
            self._status = replace(self._status, **changes)  # type: ignore[arg-type]
            return self._status

    # ------------------------------------------------------------ the steps

    def _git(self, env: dict[str, str], *args: str, what: str) -> str:
        result = self._run(
            ["git", "--git-dir", self.repo, *args],
            env,
            self.cache_dir,
            self.settings.timeout_seconds,
        )
        if result.exit_code != 0:
            lines = [line for line in result.output.splitlines() if line.strip()]
            detail = " ".join(lines[-3:]) or f"exit code {result.exit_code}"
            raise GitError(f"{what} failed: {mask(detail, self._secrets)}")
        return result.output

    def _fetch(self, env: dict[str, str]) -> str:
        os.makedirs(self.checkouts, exist_ok=True)
        if not os.path.isdir(os.path.join(self.repo, "objects")):
            self._git(env, "init", "--bare", "--quiet", what="git init")
        branch = self.settings.branch
        self._git(
            env,
            "fetch",
            "--quiet",
            "--no-tags",
            "--force",
            "--",
            self.settings.url,
            f"+refs/heads/{branch}:{SYNC_REF}",
            what=f"git fetch of branch {branch} from {public_url(self.settings.url)}",
        )
        return self._git(
            env, "rev-parse", "--verify", f"{SYNC_REF}^{{commit}}", what="git rev-parse"
        ).strip()

    def _describe(self, env: dict[str, str], sha: str) -> tuple[str, int | None]:
        out = self._git(env, "log", "-1", "--format=%ct%x00%s", sha, what="git log")
        stamp, _, subject = out.strip().partition("\x00")
        return subject, int(stamp) * 1000 if stamp.isdigit() else None

    def _check_out(self, env: dict[str, str], sha: str) -> None:
        target = os.path.join(self.checkouts, checkout_name(sha))
        if os.path.isdir(target):
            return
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        index = os.path.join(self.cache_dir, "index.tmp")
        with_index = {**env, "GIT_INDEX_FILE": index}
        try:
            self._git(
                with_index,
                "--work-tree",
                tmp,
                "checkout",
                "--force",
                sha,
                "--",
                ".",
                what="git checkout",
            )
        finally:
            if os.path.exists(index):
                os.unlink(index)
        folder = os.path.join(tmp, self.settings.subdirectory)
        if not os.path.isdir(folder):
            shutil.rmtree(tmp, ignore_errors=True)
            raise GitError(
                f"commit {sha[:12]} of branch {self.settings.branch} has no folder "
                f"'{self.settings.subdirectory}' (subdirectory)"
            )
        os.rename(tmp, target)

    def _target(self, sha: str) -> str:
        return os.path.join(self.checkouts, checkout_name(sha), self.settings.subdirectory).rstrip(
            "/"
        )

    def _link_points_at(self, sha: str) -> bool:
        return os.path.islink(self.dags_path) and os.readlink(self.dags_path) == self._target(sha)

    def _switch(self, sha: str) -> None:
        """Point the DAGs folder at the checkout with one rename (atomic for the watcher)."""
        path = self.dags_path
        if not os.path.islink(path) and os.path.isdir(path):
            if os.listdir(path):
                raise GitError(
                    f"the DAGs folder {path} is a folder with files; git sync manages it as a "
                    "link to its checkout: move those files into the repository and remove the "
                    "folder (or point `dags` at a new path)"
                )
            os.rmdir(path)  # the empty folder created at start
        elif os.path.exists(path) and not os.path.islink(path):
            raise GitError(f"the DAGs folder {path} exists and is not a folder")
        link = f"{path}.nagare-link.tmp"
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(self._target(sha), link)
        os.replace(link, path)

    def _linked_checkout(self) -> str:
        """The checkout folder the DAGs folder points at now, or ''."""
        if not os.path.islink(self.dags_path):
            return ""
        relative = os.path.relpath(os.readlink(self.dags_path), self.checkouts)
        return "" if relative.startswith("..") else relative.split(os.sep)[0]

    def _remove_stale(self, sha: str, previous: str) -> None:
        keep = [checkout_name(sha)] + ([checkout_name(previous)] if previous else [])
        for name in stale_checkouts(os.listdir(self.checkouts), keep[:KEEP_CHECKOUTS]):
            shutil.rmtree(os.path.join(self.checkouts, name), ignore_errors=True)
