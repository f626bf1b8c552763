"""A real OpenID Connect provider for the tests: panva's node-oidc-provider (OpenID-certified),
installed once with npm into a cache folder and started by tests/fixtures/oidc_provider.mjs; and
a small browser (urllib with a cookie jar) that goes through its sign-in and consent pages.

Without node or npm the tests that need it are skipped, unless NAGARE_REQUIRE_OIDC=1 (the CI
machine), where they fail."""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest

PACKAGE = "oidc-provider@9.13.3"
MIN_NODE = 20
SCRIPT = Path(__file__).resolve().parent / "fixtures" / "oidc_provider.mjs"
CONFIDENTIAL_SECRET = "nagare-test-secret-nagare-test-secret"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nagare-test-oidc"


def provider_module() -> Path:
    """The installed package's entry file: npm installs it on first use (one process at a
    time, under a lock); skips (or fails with NAGARE_REQUIRE_OIDC=1) without node and npm."""
    if not (shutil.which("node") and shutil.which("npm")):
        _unavailable("node and npm are not installed (apt-get install nodejs npm)")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < MIN_NODE:
        _unavailable(f"node {version} is too old for {PACKAGE} (needs {MIN_NODE} or later)")
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / "node_modules" / "oidc-provider" / "lib" / "index.js"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed(folder):
            _npm_install(folder)
    return entry


def _installed(folder: Path) -> bool:
    manifest = folder / "node_modules" / "oidc-provider" / "package.json"
    try:
        return bool(json.loads(manifest.read_text())["version"] == PACKAGE.split("@")[1])
    except (OSError, ValueError, KeyError):
        return False


def _npm_install(folder: Path) -> None:
    command = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder), PACKAGE]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        _unavailable(f"npm install {PACKAGE} failed: {done.stderr[-500:]}")


def _unavailable(reason: str) -> None:
    if os.environ.get("NAGARE_REQUIRE_OIDC") == "1":
        pytest.fail(f"NAGARE_REQUIRE_OIDC=1 but the OpenID provider cannot run: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Provider:
    """One running provider; `restart(key_id)` starts it again with new signing keys."""

    def __init__(self, module: Path, folder: Path, port: int, callback: str) -> None:
        self.module = module
        self.port = port
        self.callback = callback
        self.users_file = folder / "oidc-users.json"
        self.users_file.write_text("{}")
        self.log = folder / "oidc-provider.log"
        self.process: subprocess.Popen[str] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_user(self, login: str, **claims: Any) -> None:
        users = json.loads(self.users_file.read_text())
        users[login] = claims
        self.users_file.write_text(json.dumps(users))

    def start(self, key_id: str = "1") -> None:
        env = {
            **os.environ,
            "OIDC_PROVIDER_MODULE": str(self.module),
            "OIDC_PORT": str(self.port),
            "OIDC_CALLBACK": self.callback,
            "OIDC_USERS": str(self.users_file),
            "OIDC_KEY_ID": key_id,
        }
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                ["node", str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise AssertionError(f"the provider did not start: {line!r} {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def restart(self, key_id: str) -> None:
        self.stop()
        self.start(key_id)


@contextmanager
def running_provider(folder: Path, callback: str) -> Iterator[Provider]:
    provider = Provider(provider_module(), folder, free_port(), callback)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


# ---------------------------------------------------------------- a small browser


@dataclass
class Page:
    status: int
    url: str
    headers: dict[str, str]
    body: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """Follows redirects itself (so a test can stop at one) and keeps cookies."""

    def __init__(self) -> None:
        self.jar = CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def open(self, url: str, form: dict[str, str] | None = None) -> Page:
        data = urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data, headers={"Accept": "text/html"})
        try:
            with self.opener.open(request, timeout=15) as response:
                return Page(response.status, url, dict(response.headers), response.read().decode())
        except urllib.error.HTTPError as err:
            with err:
                return Page(err.code, url, dict(err.headers), err.read().decode(errors="replace"))

    def follow(self, url: str, until: str = "", form: dict[str, str] | None = None) -> Page:
        """Open `url` and follow redirects, stopping before a URL that starts with `until`."""
        page = self.open(url, form)
        for _ in range(20):
            location = page.headers.get("Location")
            if page.status not in (301, 302, 303, 307) or not location:
                return page
            target = urljoin(page.url, location)
            if until and target.startswith(until):
                return Page(page.status, target, page.headers, "")
            page = self.open(target)
        raise AssertionError("too many redirects")

    def cookie(self, name: str) -> str:
        return next((c.value or "" for c in self.jar if c.name == name), "")


def through_provider(browser: Browser, nagare_url: str, login: str) -> str:
    """Start a sign-in at Nagare and go through the provider's sign-in and consent pages (its
    development interactions) as `login`: the callback URL the provider sends the browser to
    (not opened yet)."""
    callback = nagare_url + "/api/auth/oidc/callback"
    page = browser.follow(nagare_url + "/api/auth/oidc/login", until=callback)
    for _ in range(4):
        if page.url.startswith(callback):
            return page.url
        form = _form(page.body)
        assert form is not None, (page.status, page.url, page.body[:500])
        action, fields = form
        if "login" in fields:
            fields.update(login=login, password="any")
        page = browser.follow(urljoin(page.url, action), callback, fields)
    raise AssertionError(f"the provider did not send the browser back: {page.url}")


def _form(body: str) -> tuple[str, dict[str, str]] | None:
    found = re.search(r'<form[^>]*action="([^"]+)"[^>]*method="post"', body)
    if found is None:
        return None
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(
            r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', body
        )
    }
    if 'name="login"' in body:
        fields["login"] = ""
    return html.unescape(found.group(1)), fields
