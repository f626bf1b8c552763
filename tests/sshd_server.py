"""A real OpenSSH server for the tests of the ssh step: Debian's `/usr/sbin/sshd`, started by
the test as the current user on a free 127.0.0.1 port, with a host key and a client key made by
`ssh-keygen` in a temporary folder (nothing of the machine's own ssh setup is used or changed;
as root, sshd only needs its privilege separation folder /run/sshd, created if missing).

Without sshd the tests skip, unless NAGARE_REQUIRE_SSHD=1 (CI), which makes them fail.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import _missing

SSHD = "/usr/sbin/sshd"
START_SECONDS = 10.0


def require_sshd() -> None:
    """sshd and ssh-keygen installed (`apt-get install openssh-server`), else skip or fail."""
    for program in (SSHD, shutil.which("ssh-keygen"), shutil.which("ssh")):
        if not program or not os.path.exists(program):
            _missing(
                "an OpenSSH server and client",
                "NAGARE_REQUIRE_SSHD",
                "sshd, ssh or ssh-keygen is not installed (apt-get install openssh-server)",
            )


def keygen(path: Path) -> str:
    """A new ed25519 key pair at `path` (and `path`.pub); returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SshServer:
    """A running sshd that accepts `client_key` for `user` and presents `host_key`."""

    folder: Path
    port: int
    user: str
    client_key: Path
    host_public: str  # "ssh-ed25519 AAAA..."
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def known_hosts(self, path: Path, public: str | None = None) -> Path:
        """A known_hosts file with the line of this server (or of another key: `public`)."""
        key = " ".join((public or self.host_public).split()[:2])
        path.write_text(f"[{self.host}]:{self.port} {key}\n")
        return path

    def step(self, known_hosts: Path, **fields: Any) -> dict[str, Any]:
        """The fields of an ssh step that reaches this server."""
        step: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.client_key),
            "known_hosts": str(known_hosts),
        }
        step.update(fields)
        return {k: v for k, v in step.items() if v is not None}

    def log(self) -> str:
        return (self.folder / "sshd.log").read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_sshd(folder: Path) -> SshServer:
    """Keys, config and a running sshd in `folder` (retried on another port if one is taken)."""
    require_sshd()
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "host_key"
    host_public = keygen(host_key)
    client_key = folder / "client_key"
    (folder / "authorized_keys").write_text(keygen(client_key) + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation (root only)
    problem = ""
    for _ in range(5):
        port = free_port()
        config = _write_config(folder, port, host_key)
        process = _spawn(folder, config)
        problem = _wait_listening(folder, process, port)
        if not problem:
            return SshServer(folder, port, getpass.getuser(), client_key, host_public, process)
    raise AssertionError(f"sshd did not start: {problem}")


def _write_config(folder: Path, port: int, host_key: Path) -> Path:
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                f"PidFile {folder / 'sshd.pid'}",
                "UsePAM no",
                "StrictModes no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                "X11Forwarding no",
                "MaxStartups 50",
                "LogLevel INFO",
                "",
            ]
        )
    )
    return config


def _spawn(folder: Path, config: Path) -> subprocess.Popen[bytes]:
    with open(folder / "sshd.log", "wb") as log:
        return subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_listening(folder: Path, process: subprocess.Popen[bytes], port: int) -> str:
    """ "" once sshd listens on `port`; else why not (it exited, or it never said so)."""
    deadline = time.monotonic() + START_SECONDS
    log = folder / "sshd.log"
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if f"listening on 127.0.0.1 port {port}" in text:
            return ""
        if process.poll() is not None:
            return text.strip() or f"exited with {process.returncode}"
        time.sleep(0.02)
    process.kill()
    process.wait()
    return f"no 'Server listening' line after {START_SECONDS}s: {log.read_text()[-500:]}"
