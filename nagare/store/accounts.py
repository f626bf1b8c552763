"""Users, API keys and dashboard sessions. Secrets are stored only as hashes: a user's scrypt
password hash (never handed out but to the sign-in check), the SHA-256 of a key or a cookie."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nagare.store.db import Database


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: str
    source: str  # builtin | oidc
    created_at: int
    updated_at: int
    last_login_at: int | None = None
    disabled: bool = False
    subject: str | None = None  # the single sign-on provider's id of the user


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    role: str
    prefix: str  # the first characters of the key, to tell keys apart
    created_by: str
    created_at: int
    expires_at: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None


@dataclass(frozen=True)
class SessionRecord:
    user_name: str
    role: str
    csrf: str
    expires_at: int
    last_seen_at: int
    disabled: bool
    created_at: int | None = None  # when its user signed in (None: a store that cannot say)


_USER_COLUMNS = "name, role, source, created_at, updated_at, last_login_at, disabled, subject"
_KEY_COLUMNS = (
    "id, name, role, prefix, created_by, created_at, expires_at, last_used_at, revoked_at"
)


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def all(self) -> list[UserRecord]:
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()
        return [_user(r) for r in rows]

    def get(self, name: str) -> UserRecord | None:
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,))
            found = row.fetchone()
        return _user(found) if found else None

    def by_subject(self, subject: str) -> UserRecord | None:
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE subject = ?", (subject,))
            found = row.fetchone()
        return _user(found) if found else None

    def password_hash(self, name: str) -> str | None:
        """The stored hash of an enabled user's password (None: no such user, disabled, or a
        single sign-on user)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE name = ? AND disabled = 0", (name,)
            ).fetchone()
        return str(row[0]) if row and row[0] else None

    def count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def enabled_with_role(self, roles: tuple[str, ...]) -> list[str]:
        marks = ", ".join("?" for _ in roles)
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT name FROM users WHERE disabled = 0 AND role IN ({marks}) ORDER BY name",
                roles,
            ).fetchall()
        return [str(r[0]) for r in rows]

    def add(self, user: UserRecord, password_hash: str | None) -> bool:
        """Insert `user`; False when the name (or the subject) is taken."""
        with self.db.write() as conn:
            taken = conn.execute(
                "SELECT 1 FROM users WHERE name = ? OR (subject IS NOT NULL AND subject = ?)",
                (user.name, user.subject),
            ).fetchone()
            if taken:
                return False
            conn.execute(
                "INSERT INTO users(name, role, password_hash, source, subject, created_at, "
                "updated_at, disabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.name,
                    user.role,
                    password_hash,
                    user.source,
                    user.subject,
                    user.created_at,
                    user.updated_at,
                    int(user.disabled),
                ),
            )
        return True

    def update(
        self,
        name: str,
        now: int,
        role: str | None = None,
        disabled: bool | None = None,
    ) -> bool:
        """Change a user's role or state; disabling one ends its sessions. False: no such user."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE users SET role = COALESCE(?, role), disabled = COALESCE(?, disabled), "
                "updated_at = ? WHERE name = ?",
                (role, None if disabled is None else int(disabled), now, name),
            )
            if disabled:
                conn.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
            return cursor.rowcount == 1

    def set_password(self, name: str, password_hash: str, now: int, keep: str = "") -> bool:
        """A new password ends every session of the user but the one whose hash is `keep`."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE users SET password_hash = ?, updated_at = ? WHERE name = ?",
                (password_hash, now, name),
            )
            conn.execute(
                "DELETE FROM sessions WHERE user_name = ? AND token_hash != ?", (name, keep)
            )
            return cursor.rowcount == 1

    def signed_in(self, name: str, now: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE users SET last_login_at = ? WHERE name = ?", (now, name))

    def remove(self, name: str) -> bool:
        """Delete a user (its sessions go with it); False when there is none."""
        with self.db.write() as conn:
            conn.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
            return conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, key: KeyRecord, key_hash: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                f"INSERT INTO api_keys({_KEY_COLUMNS}, key_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.name,
                    key.role,
                    key.prefix,
                    key.created_by,
                    key.created_at,
                    key.expires_at,
                    key.last_used_at,
                    key.revoked_at,
                    key_hash,
                ),
            )

    def all(self) -> list[KeyRecord]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ).fetchall()
        return [_key(r) for r in rows]

    def get(self, key_id: str) -> KeyRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return _key(row) if row else None

    def by_hash(self, key_hash: str) -> KeyRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        return _key(row) if row else None

    def revoke(self, key_id: str, now: int) -> bool:
        """Revoke a key (a revoked key stays revoked: its first time counts); False: none."""
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (now, key_id),
            )
            return cursor.rowcount == 1

    def used(self, key_id: str, now: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, token_hash: str, user_name: str, csrf: str, now: int, expires_at: int, address: str
    ) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO sessions(token_hash, user_name, csrf, created_at, expires_at, "
                "last_seen_at, address) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_hash, user_name, csrf, now, expires_at, now, address),
            )

    def get(self, token_hash: str) -> SessionRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT s.user_name, u.role, s.csrf, s.expires_at, s.last_seen_at, u.disabled, "
                "s.created_at FROM sessions s JOIN users u ON u.name = s.user_name "
                "WHERE s.token_hash = ?",
                (token_hash,),
            ).fetchone()
        if row is None:
            return None
        return SessionRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6])

    def touch(self, token_hash: str, now: int, expires_at: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                "UPDATE sessions SET last_seen_at = ?, expires_at = MAX(expires_at, ?) "
                "WHERE token_hash = ?",
                (now, expires_at, token_hash),
            )

    def remove(self, token_hash: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def purge(self, now: int) -> int:
        """Delete the expired sessions; how many."""
        with self.db.write() as conn:
            return int(conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount)

    def count(self, user_name: str) -> int:
        with self.db.read() as conn:
            row = conn.execute("SELECT COUNT(*) FROM sessions WHERE user_name = ?", (user_name,))
            return int(row.fetchone()[0])


def _user(row: Any) -> UserRecord:
    name, role, source, created, updated, last_login, disabled, subject = row
    return UserRecord(name, role, source, created, updated, last_login, bool(disabled), subject)


def _key(row: Any) -> KeyRecord:
    return KeyRecord(*row)
