"""Where the store lives: a SQLite file path, or a PostgreSQL URL
(`postgresql://user[:password]@host[:port]/dbname?sslmode=...&sslrootcert=...&password_env=NAME`).

Pure parsing and the `~/.pgpass` lookup; the driver is never imported here. A password never
appears in what `describe` returns (logs, messages, `/api/health`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from nagare.errors import ConfigError

SCHEMES = ("postgresql://", "postgres://")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
QUERY_KEYS = ("sslmode", "sslrootcert", "password_env", "connect_timeout", "application_name")
DEFAULT_PORT = 5432


def is_postgres_url(where: str) -> bool:
    return where.lower().startswith(SCHEMES)


class PgTarget(NamedTuple):  # a NamedTuple: cheap to define (this module loads with config)
    """A parsed PostgreSQL URL; `password` is the one in the URL (often empty: see
    `resolve_password`)."""

    host: str
    port: int
    user: str
    database: str
    password: str = ""
    sslmode: str = "prefer"
    sslrootcert: str = ""
    password_env: str = ""
    connect_timeout: float = 10.0
    application_name: str = "nagare"

    def describe(self) -> str:
        """The URL without its password (safe to log)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}"


def parse_postgres_url(url: str, password_env: str = "") -> PgTarget:
    """`url` -> PgTarget, or ConfigError saying what is wrong (the password never quoted)."""
    if not is_postgres_url(url):
        raise ConfigError(f"db: expected postgresql://user@host:port/dbname, found '{url}'")
    parts = urlsplit(url)
    where = f"db '{describe(url)}'"
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"{where}: the port must be a number from 1 to 65535") from None
    host = parts.hostname or "localhost"
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigError(f"{where}: expected one database name after the host, e.g. /nagare")
    user = unquote(parts.username or "") or os.environ.get("USER", "") or "postgres"
    query = _query(parts.query, where)
    sslmode = query.get("sslmode", "prefer")
    if sslmode not in SSL_MODES:
        raise ConfigError(f"{where}: sslmode must be one of {', '.join(SSL_MODES)}")
    return PgTarget(
        host=host,
        port=port,
        user=user,
        database=database,
        password=unquote(parts.password or ""),
        sslmode=sslmode,
        sslrootcert=query.get("sslrootcert", ""),
        password_env=query.get("password_env", password_env),
        connect_timeout=_timeout(query.get("connect_timeout", "10"), where),
        application_name=query.get("application_name", "nagare"),
    )


def _query(text: str, where: str) -> dict[str, str]:
    values = parse_qs(text, keep_blank_values=True)
    unknown = sorted(set(values) - set(QUERY_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(QUERY_KEYS)})"
        )
    return {key: value[-1] for key, value in values.items()}


def _timeout(text: str, where: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0
    if not 0 < seconds <= 300:
        raise ConfigError(f"{where}: connect_timeout must be seconds from 1 to 300")
    return seconds


def describe(where: str) -> str:
    """A database location fit for a log line: a URL loses its password, a path stays."""
    if not is_postgres_url(where):
        return where
    parts = urlsplit(where)
    if parts.password is None:
        return where
    netloc = parts.netloc.rpartition("@")
    user = (parts.username or "") + ":***"
    return parts._replace(netloc=f"{user}@{netloc[2]}").geturl()


def resolve_password(
    target: PgTarget, environ: dict[str, str] | None = None, pgpass: Path | None = None
) -> str:
    """The password: the URL's own, else the variable named by `password_env`, else the first
    matching line of the pgpass file (PGPASSFILE or ~/.pgpass), else empty (trust, peer)."""
    env = os.environ if environ is None else environ
    if target.password:
        return target.password
    if target.password_env:
        value = env.get(target.password_env)
        if value is None:
            raise ConfigError(
                f"db '{target.describe()}': password_env names {target.password_env}, "
                "which is not set"
            )
        return value
    path = pgpass or Path(env.get("PGPASSFILE") or Path.home() / ".pgpass")
    return pgpass_lookup(path, target) or ""


def pgpass_lookup(path: Path, target: PgTarget) -> str | None:
    """The password of the first `host:port:database:user:password` line matching `target`
    (`*` matches anything, `\\:` and `\\\\` escape); None without a file or a match."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    wanted = (target.host, str(target.port), target.database, target.user)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) != 5:
            continue
        if all(f == "*" or f == w for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return None


def _pgpass_fields(line: str) -> list[str]:
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields
