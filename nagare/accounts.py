"""Users, API keys and sessions (`auth_mode: builtin` and `oidc`): the rules over the store's
records, sign-in with its rate limit, and the principal of a session cookie or a created key.

A password is checked against its scrypt hash and forgotten; keys and session tokens are handed
out once and kept as their SHA-256. The sign-in limit is a pure decision (`sign_in_wait`) over
the recent failures, with `now` passed in.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from nagare.access import Kind, Principal, Role, RoleDef, principal_of
from nagare.errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized
from nagare.passwords import (
    dummy_verify,
    hash_password,
    key_prefix,
    new_api_key,
    new_token,
    password_problem,
    token_hash,
    verify_password,
)
from nagare.patterns import ACCOUNT_NAME
from nagare.store import KeyRecord, KeyStore, SessionStore, UserRecord, UserStore

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
SESSION_CAP_MS = 7 * 24 * HOUR_MS  # however busy, a session ends this long after sign-in
WRONG_SIGN_IN = "wrong name or password"
MAX_KEY_NAME_CHARS = 64
# the audit log's actors that are not users: no user (nor single sign-on name) may take them
RESERVED_NAMES = frozenset({"api-key", "anonymous", "worker"})


class AccountsStore(Protocol):
    """The parts of the store accounts live in."""

    @property
    def users(self) -> UserStore: ...

    @property
    def keys(self) -> KeyStore: ...

    @property
    def sessions(self) -> SessionStore: ...


# ---------------------------------------------------------------- the sign-in limit


@dataclass(frozen=True)
class SignInLimit:
    """Failed sign-ins allowed within `window_ms`: for one name from one address, and from one
    address whatever the names (someone trying many names)."""

    per_name: int = 5
    per_address: int = 20
    window_ms: int = 15 * MINUTE_MS
    max_tracked: int = 10_000  # addresses and names remembered at most (memory stays bounded)


Failures = Mapping[str, Sequence[int]]  # key -> epoch ms of the recent failures, oldest first


def failure_keys(name: str, address: str) -> tuple[str, str]:
    return f"name:{name.lower()}\0{address}", f"address:{address}"


def sign_in_wait(failures: Failures, name: str, address: str, now: int, limit: SignInLimit) -> int:
    """Milliseconds before `name` may try to sign in again from `address` (0: now)."""
    by_name, by_address = failure_keys(name, address)
    return max(
        _wait(failures.get(by_name, ()), limit.per_name, now, limit.window_ms),
        _wait(failures.get(by_address, ()), limit.per_address, now, limit.window_ms),
    )


def _wait(times: Sequence[int], allowed: int, now: int, window_ms: int) -> int:
    recent = [t for t in times if t > now - window_ms]
    if len(recent) < allowed:
        return 0
    return recent[-allowed] + window_ms - now  # when the oldest failure that counts expires


def with_failure(
    failures: Failures, name: str, address: str, now: int, limit: SignInLimit
) -> dict[str, list[int]]:
    """`failures` with one more for `name` from `address`, forgetting what left the window
    (and, past `max_tracked` keys, the keys whose last failure is oldest)."""
    kept = {key: [t for t in times if t > now - limit.window_ms] for key, times in failures.items()}
    for key in failure_keys(name, address):
        kept.setdefault(key, []).append(now)
    kept = {key: times for key, times in kept.items() if times}
    if len(kept) > limit.max_tracked:
        newest = sorted(kept, key=lambda k: kept[k][-1], reverse=True)[: limit.max_tracked]
        kept = {key: kept[key] for key in newest}
    return kept


def without_name_failures(failures: Failures, name: str, address: str) -> dict[str, list[int]]:
    """After a successful sign-in: that name's failures from that address are forgotten."""
    by_name, _ = failure_keys(name, address)
    return {key: list(times) for key, times in failures.items() if key != by_name}


# ---------------------------------------------------------------- the service


class Accounts:
    def __init__(
        self,
        store: AccountsStore,
        roles: Mapping[str, RoleDef],
        session_hours: float,
        limit: SignInLimit | None = None,
    ) -> None:
        self.store = store
        self.roles = roles  # every role a user or key may hold (access.all_roles)
        self.session_ms = int(session_hours * HOUR_MS)
        self.session_cap_ms = max(self.session_ms, SESSION_CAP_MS)
        self.limit = limit or SignInLimit()
        self._failures: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ users

    def users(self) -> list[UserRecord]:
        return self.store.users.all()

    def user(self, name: str) -> UserRecord:
        found = self.store.users.get(name)
        if found is None:
            raise NotFound(f"no user '{name}'")
        return found

    def needs_first_admin(self) -> bool:
        return self.store.users.count() == 0

    def add_user(self, name: str, role: str, password: str, now: int) -> UserRecord:
        _check_name(name)
        self._check_role(role)
        _check_password(password)
        taken = self._taken_as(name)
        if taken:
            raise Conflict(f"user '{taken}' already exists")
        user = UserRecord(name, role, "builtin", now, now)
        if not self.store.users.add(user, hash_password(password)):
            raise Conflict(f"user '{name}' already exists")
        return user

    def _taken_as(self, name: str) -> str:
        """The existing user whose name is `name` but for letter case ('' when none): "Alice"
        next to "alice" would read as one person in the audit log."""
        folded = name.casefold()
        return next((u.name for u in self.users() if u.name.casefold() == folded), "")

    def update_user(
        self,
        name: str,
        now: int,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> UserRecord:
        user = self.user(name)
        if role is not None:
            self._check_role(role)
        if password is not None:
            self._check_settable(user)
            _check_password(password)
        changed = replace(
            user,
            role=user.role if role is None else role,
            disabled=user.disabled if disabled is None else disabled,
        )
        if self._is_admin(user) and not self._is_admin(changed):
            self._keep_an_admin(name, "take the admin role from" if role else "disable")
        self.store.users.update(name, now, role, disabled)
        if password is not None:
            self.store.users.set_password(name, hash_password(password), now)
        return self.user(name)

    def remove_user(self, name: str) -> None:
        user = self.user(name)
        if self._is_admin(user):
            self._keep_an_admin(name, "remove")
        self.store.users.remove(name)

    def change_password(
        self,
        name: str,
        current: str,
        new: str,
        now: int,
        keep_session: str = "",
        address: str = "",
    ) -> None:
        """A user's own change: it proves the current password (under the sign-in's limit, so
        a borrowed session cannot guess it); the user's other sessions end (`keep_session`,
        the token of the one asking, stays)."""
        user = self.user(name)
        self._check_settable(user)
        self._check_limit(name, address, now)
        if not verify_password(current, self.store.users.password_hash(name)):
            with self._lock:
                self._failures = with_failure(self._failures, name, address, now, self.limit)
            raise Forbidden("the current password is wrong")
        _check_password(new)
        keep = token_hash(keep_session) if keep_session else ""
        self.store.users.set_password(name, hash_password(new), now, keep)

    def ensure_sso_user(self, subject: str, name: str, role: str, now: int) -> str:
        """The user a single sign-on provider vouches for (`subject` is its stable id): created
        on the first sign-in, its role updated from the provider's claim on each. Returns the
        user's name (`name`, made safe and unique among the users)."""
        self._check_role(role)
        name = self._sso_user(subject, name, role, now)
        self.store.users.signed_in(name, now)
        self.store.sessions.purge(now)  # as a password sign-in does
        return name

    def _sso_user(self, subject: str, name: str, role: str, now: int) -> str:
        found = self.store.users.by_subject(subject)
        if found is not None:
            if found.disabled:
                raise Forbidden(f"user '{found.name}' is disabled")
            if found.role != role:
                self.store.users.update(found.name, now, role=role)
            return found.name
        base = _safe_name(name) or "user"
        for candidate in _candidates(base):
            if candidate.casefold() in RESERVED_NAMES or self._taken_as(candidate):
                continue
            user = UserRecord(candidate, role, "oidc", now, now, subject=subject)
            if self.store.users.add(user, None):
                return candidate
        raise Conflict(f"no free user name for '{base}'")  # pragma: no cover - 1000 taken

    def _check_role(self, role: str) -> None:
        if role not in self.roles:
            raise BadRequest(
                f"role '{role}' does not exist (roles: {', '.join(sorted(self.roles))})"
            )

    def _check_settable(self, user: UserRecord) -> None:
        if user.source != "builtin":
            raise Conflict(
                f"user '{user.name}' signs in with single sign-on: the provider keeps its password"
            )

    def _is_admin(self, user: UserRecord) -> bool:
        found = self.roles.get(user.role)
        return not user.disabled and found is not None and found.base == Role.ADMIN

    def _keep_an_admin(self, name: str, verb: str) -> None:
        admins = [r for r, d in self.roles.items() if d.base == Role.ADMIN]
        others = [u for u in self.store.users.enabled_with_role(tuple(admins)) if u != name]
        if not others:
            raise Conflict(f"cannot {verb} '{name}': it is the last enabled admin")

    # ------------------------------------------------------------ sign-in and sessions

    def sign_in(self, name: str, password: str, address: str, now: int) -> UserRecord:
        """The user `name` when `password` is its password; Unauthorized (the same message for
        an unknown name), or TooManyRequests after too many failures."""
        self._check_limit(name, address, now)
        stored = self.store.users.password_hash(name)
        if stored is None:
            dummy_verify(password)
        if stored is None or not verify_password(password, stored):
            with self._lock:
                self._failures = with_failure(self._failures, name, address, now, self.limit)
            raise Unauthorized(WRONG_SIGN_IN)
        with self._lock:
            self._failures = without_name_failures(self._failures, name, address)
        user = self.user(name)
        if user.role not in self.roles:
            raise Forbidden(f"the role of '{name}' ('{user.role}') no longer exists")
        self.store.users.signed_in(name, now)
        self.store.sessions.purge(now)
        return user

    def _check_limit(self, name: str, address: str, now: int) -> None:
        with self._lock:
            wait = sign_in_wait(self._failures, name, address, now, self.limit)
        if wait > 0:
            seconds = -(-wait // 1000)
            raise TooManyRequests(
                f"too many failed sign-ins for '{name}' from this address; "
                f"try again in {seconds} s",
                seconds,
            )

    def start_session(self, user_name: str, address: str, now: int) -> tuple[str, str]:
        """A new session of `user_name`: (the cookie's token, its CSRF token)."""
        token, csrf = new_token(), new_token()
        self.store.sessions.add(
            token_hash(token), user_name, csrf, now, now + self.session_ms, address
        )
        return token, csrf

    def session(self, token: str, now: int) -> Principal | None:
        """The principal of a session cookie; None when it is unknown, expired, or its user
        is disabled or gone. Its expiry slides with use (written at most once a minute), up to
        `session_cap_ms` after sign-in: a stolen cookie kept busy does not live for ever."""
        hashed = token_hash(token)
        found = self.store.sessions.get(hashed)
        if found is None or found.disabled:
            return None
        if found.expires_at <= now or self._past_cap(found.created_at, now):
            self.store.sessions.remove(hashed)
            return None
        if now - found.last_seen_at >= MINUTE_MS:
            self.store.sessions.touch(hashed, now, now + self.session_ms)
        return principal_of(found.user_name, Kind.SESSION, found.role, self.roles, found.csrf)

    def _past_cap(self, created_at: int | None, now: int) -> bool:
        return created_at is not None and now - created_at >= self.session_cap_ms

    def end_session(self, token: str) -> None:
        self.store.sessions.remove(token_hash(token))

    # ------------------------------------------------------------ API keys

    def api_keys(self) -> list[KeyRecord]:
        return self.store.keys.all()

    def create_key(
        self, name: str, role: str, expires_at: int | None, created_by: str, now: int
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the key itself (shown once, stored as its hash)."""
        if not ACCOUNT_NAME.fullmatch(name.strip()):
            raise BadRequest(
                f"{name[:70]!r} is not a valid key name (1 to {MAX_KEY_NAME_CHARS} letters, "
                "digits, '_', '.', '@', '+', '-'; starting with a letter or digit): the audit "
                "log names the key's actions key:<name>"
            )
        self._check_role(role)
        if expires_at is not None and expires_at <= now:
            raise BadRequest("expires_at must be in the future")
        key = new_api_key()
        record = KeyRecord(
            id="k_" + os.urandom(6).hex(),
            name=name.strip(),
            role=role,
            prefix=key_prefix(key),
            created_by=created_by,
            created_at=now,
            expires_at=expires_at,
        )
        self.store.keys.add(record, token_hash(key))
        return record, key

    def revoke_key(self, key_id: str, now: int) -> KeyRecord:
        if not self.store.keys.revoke(key_id, now):
            raise NotFound(f"no API key '{key_id}'")
        found = self.store.keys.get(key_id)
        assert found is not None
        return found

    def key_principal(self, key: str, now: int) -> Principal | None:
        """The principal of a created key (None: not one); Unauthorized when it was revoked,
        has expired, or its role no longer exists. Its use is noted at most once a minute."""
        found = self.store.keys.by_hash(token_hash(key))
        if found is None:
            return None
        if found.revoked_at is not None:
            raise Unauthorized("API key revoked")
        if found.expires_at is not None and found.expires_at <= now:
            raise Unauthorized("API key expired")
        principal = principal_of(f"key:{found.name}", Kind.KEY, found.role, self.roles)
        if principal is None:
            raise Unauthorized(f"the role of this API key ('{found.role}') no longer exists")
        if found.last_used_at is None or now - found.last_used_at >= MINUTE_MS:
            self.store.keys.used(found.id, now)
        return principal


def is_account_name(name: str) -> bool:
    """Whether `name` may name a user (so may stand as an actor in the audit log as is)."""
    return bool(ACCOUNT_NAME.fullmatch(name)) and name.casefold() not in RESERVED_NAMES


def _check_name(name: str) -> None:
    if not ACCOUNT_NAME.fullmatch(name):
        raise BadRequest(
            f"{name[:70]!r} is not a valid user name (1 to 64 letters, digits, '_', '.', '@', "
            "'+', '-'; starting with a letter or digit)"
        )
    if name.casefold() in RESERVED_NAMES:
        raise BadRequest(
            f"'{name}' names another kind of caller in the audit log: choose another name "
            f"(reserved: {', '.join(sorted(RESERVED_NAMES))})"
        )


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise BadRequest(problem)


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]", "-", name.strip()).lstrip("_.@+-")
    return cleaned[:56]


def _candidates(base: str) -> list[str]:
    return [base] + [f"{base}-{n}" for n in range(2, 1000)]
