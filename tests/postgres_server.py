"""A real PostgreSQL server for the tests: Debian's `postgresql` package (`initdb`, `pg_ctl` in
/usr/lib/postgresql/<version>/bin), a cluster made in a temporary folder and started on a free
127.0.0.1 port, password (SCRAM) authentication for TCP, TLS offered with a certificate for
localhost and 127.0.0.1 signed by a test CA (`ca.pem` in the server's folder). initdb refuses
to run as root: as root the folder is given to the `postgres` user (the package creates it)
and the programs run as it (`runuser`). One server per test session; each test gets a fresh
database copied from a template that already holds the schema (`CREATE DATABASE ... TEMPLATE`,
a file copy).

Nothing of the machine's own PostgreSQL setup is used or changed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER = "nagare"
PASSWORD = "s3cret-pg-test"  # the tests check it never shows up in logs
TEMPLATE = "nagare_template"
START_SECONDS = 60


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (with initdb and pg_ctl), or None."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    found = [p.parent for p in candidates if (p.parent / "pg_ctl").exists()]
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PgServer:
    """A running PostgreSQL cluster in `folder`, listening on 127.0.0.1:`port`."""

    bindir: Path
    folder: Path
    port: int
    _numbers: Any = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def admin(self, database: str = "postgres") -> Any:
        import pg8000.native

        return pg8000.native.Connection(
            USER, host="127.0.0.1", port=self.port, password=PASSWORD, database=database
        )

    def new_database(self, template: str = TEMPLATE) -> str:
        """A fresh database (a copy of `template`: the schema, no rows); returns its name."""
        name = f"t{os.getpid()}_{next(self._numbers)}"
        conn = self.admin()
        try:
            conn.run(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        finally:
            conn.close()
        return name

    def drop_database(self, name: str) -> None:
        conn = self.admin()
        try:
            conn.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            conn.close()

    def stop(self) -> None:
        _as_owner(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _owner() -> str | None:
    """The user the cluster runs as: None (this user) unless this is root."""
    return "postgres" if os.geteuid() == 0 else None


def _as_owner(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    owner = _owner()
    full = ["runuser", "-u", owner, "--", *command] if owner else command
    result = subprocess.run(full, capture_output=True, text=True, timeout=START_SECONDS)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")
    return result


def start_server(bindir: Path) -> PgServer:
    """initdb + pg_ctl start in a new temporary folder, then the schema template."""
    folder = Path(tempfile.mkdtemp(prefix="nagare-pg-"))
    owner = _owner()
    pwfile = folder / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if owner:
        shutil.chown(folder, owner)
        shutil.chown(pwfile, owner)
    server = PgServer(bindir, folder, free_port())
    try:
        _initdb(server, pwfile)
        make_certificates(folder, owner)
        _start(server)
        _make_template(server)
    except BaseException:
        server.stop()
        raise
    return server


def _initdb(server: PgServer, pwfile: Path) -> None:
    _as_owner(
        [
            str(server.bindir / "initdb"),
            "-D",
            str(server.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
    )


def make_certificates(folder: Path, owner: str | None = None, name: str = "ca") -> Path:
    """A certificate authority `<name>.pem` and, for the first one, the server's certificate
    and key (`server.crt`, `server.key`: localhost and 127.0.0.1) signed by it; the CA file."""
    ca_key, ca = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", f"/CN=Nagare test {name}"],
        check=True, capture_output=True, timeout=START_SECONDS,
    )  # fmt: skip
    if name != "ca":
        return ca
    key, request, cert = folder / "server.key", folder / "server.csr", folder / "server.crt"
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(request), "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=START_SECONDS,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions)],
        check=True, capture_output=True, timeout=START_SECONDS,
    )  # fmt: skip
    key.chmod(0o600)
    if owner:
        shutil.chown(key, owner)
        shutil.chown(cert, owner)
    return ca


def _start(server: PgServer) -> None:
    options = " ".join(
        [
            f"-p {server.port}",
            "-c ssl=on",  # TLS offered (sslmode=disable in the tests' URLs but the TLS ones)
            f"-c ssl_cert_file={server.folder / 'server.crt'}",
            f"-c ssl_key_file={server.folder / 'server.key'}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={server.folder}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=300",
            "-c shared_buffers=32MB",
        ]
    )
    _as_owner(
        [
            str(server.bindir / "pg_ctl"),
            "-D",
            str(server.data),
            "-l",
            str(server.folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(START_SECONDS),
            "start",
        ]
    )


def _make_template(server: PgServer) -> None:
    """The template database: created and migrated once by a real Store."""
    from nagare.store import Store

    conn = server.admin()
    try:
        conn.run(f"CREATE DATABASE {TEMPLATE}")
    finally:
        conn.close()
    Store(server.url(TEMPLATE)).close()
