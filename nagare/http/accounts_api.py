"""Users, API keys and sessions over HTTP: the authenticator of `auth_mode: builtin` (and
`oidc`), the session cookie, and the routes of signing in and out, who am I, users and keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nagare.access import ACCOUNT_MODES, API_KEY, ROLE_RIGHTS, Kind, Permission, Principal, Scope
from nagare.accounts import Accounts, is_account_name
from nagare.clock import now_ms, parse_iso, to_iso
from nagare.errors import BadRequest, Conflict, Unauthorized
from nagare.http.auth import bearer_of, same_secret
from nagare.http.routing import Route
from nagare.http.server import Request, Response, json_response
from nagare.store import KeyRecord, UserRecord

SESSION_COOKIE = "nagare_session"


class BuiltinAuthenticator:
    """Users and keys: the legacy `--api-key` is an admin named "api-key"; a created key has
    its role; a session cookie is its user's. A bearer token wins over a cookie."""

    missing = "sign in, or send 'Authorization: Bearer <API key>'"

    def __init__(self, accounts: Accounts, api_key: str, clock: Callable[[], int] = now_ms) -> None:
        self.accounts = accounts
        self.api_key = api_key
        self.clock = clock

    def identify(self, request: Request, allow_query_token: bool) -> Principal | None:
        supplied = bearer_of(request, allow_query_token)
        if supplied is not None:
            return self._key(supplied)
        token = cookie_of(request, SESSION_COOKIE)
        if not token:
            return None
        principal = self.accounts.session(token, self.clock())
        if principal is None:
            raise Unauthorized("your session has ended: sign in again")
        return principal

    def _key(self, supplied: str) -> Principal:
        if self.api_key and same_secret(supplied, self.api_key):
            return API_KEY
        principal = self.accounts.key_principal(supplied, self.clock())
        if principal is None:
            raise Unauthorized("invalid API key")
        return principal


def cookie_of(request: Request, name: str) -> str:
    """The value of cookie `name` in the request's Cookie header ('' when absent)."""
    for part in request.header("cookie").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip().strip('"')
    return ""


def session_cookie(token: str, max_age_seconds: int, secure: bool) -> str:
    """The Set-Cookie header of a session (an empty token and 0 clear it)."""
    parts = [
        f"{SESSION_COOKIE}={token}",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        f"Max-Age={max_age_seconds}",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def with_session(response: Response, token: str, max_age_seconds: int, secure: bool) -> Response:
    response.headers["Set-Cookie"] = session_cookie(token, max_age_seconds, secure)
    return response


def principal_json(principal: Principal) -> dict[str, Any]:
    rights = ROLE_RIGHTS[principal.role] if principal.role is not None else frozenset()
    return {
        "name": principal.name,
        "kind": principal.kind.value,
        "role": principal.role.value if principal.role is not None else None,
        "permissions": sorted(p.value for p in rights),
        "tags": sorted(principal.tags) if principal.tags is not None else None,
    }


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "source": user.source,
        "created_at": to_iso(user.created_at),
        "updated_at": to_iso(user.updated_at),
        "last_login_at": to_iso(user.last_login_at),
        "disabled": user.disabled,
    }


def key_json(key: KeyRecord) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "role": key.role,
        "prefix": key.prefix,
        "created_by": key.created_by,
        "created_at": to_iso(key.created_at),
        "expires_at": to_iso(key.expires_at),
        "last_used_at": to_iso(key.last_used_at),
        "revoked_at": to_iso(key.revoked_at),
    }


USER_BODY = {
    "type": "object",
    "required": ["name", "role", "password"],
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string"},
        "password": {"type": "string", "minLength": 8},
    },
}
USER_CHANGE_BODY = {
    "type": "object",
    "properties": {
        "role": {"type": "string"},
        "password": {"type": "string", "minLength": 8},
        "disabled": {"type": "boolean"},
    },
}
KEY_BODY = {
    "type": "object",
    "required": ["name", "role"],
    "properties": {
        "name": {"type": "string"},
        "role": {"type": "string"},
        "expires_at": {"type": "string", "description": "ISO 8601; none: the key never expires"},
    },
}
LOGIN_BODY = {
    "type": "object",
    "required": ["name", "password"],
    "properties": {"name": {"type": "string"}, "password": {"type": "string"}},
}
PASSWORD_BODY = {
    "type": "object",
    "required": ["current", "new"],
    "properties": {"current": {"type": "string"}, "new": {"type": "string", "minLength": 8}},
}


class AccountsApi:
    def __init__(
        self,
        accounts: Accounts,
        auth_mode: str,
        secure: bool,
        sso_name: str = "",
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.accounts = accounts
        self.auth_mode = auth_mode
        self.secure = secure  # TLS: the cookie is Secure
        self.sso_name = sso_name
        self.clock = clock

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/auth/config",
                self.auth_config,
                "How to sign in: the auth mode, whether a password form and a single sign-on "
                "button are offered",
                tags=("auth",),
                permission=Permission.OPEN,
            ),
            Route(
                "POST",
                "/api/auth/login",
                self.login,
                "Sign in with a name and password: sets the session cookie and answers the "
                "user's role, permissions and CSRF token",
                body=LOGIN_BODY,
                tags=("auth",),
                permission=Permission.OPEN,
                action="auth.signin",
            ),
            Route(
                "POST",
                "/api/auth/logout",
                self.logout,
                "Sign out: ends the session and clears its cookie",
                tags=("auth",),
                permission=Permission.SELF,
                action="auth.signout",
            ),
            Route(
                "GET",
                "/api/me",
                self.me,
                "Who the caller is: name, kind, role, permissions, tags, auth mode (and a "
                "session's CSRF token)",
                tags=("auth",),
                permission=Permission.SELF,
            ),
            Route(
                "POST",
                "/api/me/password",
                self.my_password,
                "Change the signed-in user's password (its other sessions end)",
                body=PASSWORD_BODY,
                tags=("auth",),
                permission=Permission.SELF,
                action="user.passwd",
            ),
            Route(
                "GET",
                "/api/users",
                self.list_users,
                "Every user",
                tags=("users",),
                permission=Permission.ADMIN,
                scope=Scope.NONE,
            ),
            Route(
                "POST",
                "/api/users",
                self.create_user,
                "Add a user with a role and a password",
                body=USER_BODY,
                status=201,
                tags=("users",),
                permission=Permission.ADMIN,
                action="user.create",
            ),
            Route(
                "PUT",
                "/api/users/{user_name}",
                self.update_user,
                "Change a user's role, password or disabled state",
                body=USER_CHANGE_BODY,
                tags=("users",),
                permission=Permission.ADMIN,
                action="user.update",
            ),
            Route(
                "DELETE",
                "/api/users/{user_name}",
                self.delete_user,
                "Remove a user (its sessions end)",
                tags=("users",),
                permission=Permission.ADMIN,
                action="user.delete",
            ),
            Route(
                "GET",
                "/api/keys",
                self.list_keys,
                "Every API key (never the key itself)",
                tags=("keys",),
                permission=Permission.ADMIN,
            ),
            Route(
                "POST",
                "/api/keys",
                self.create_key,
                "Create an API key with a role and an optional expiry: the answer holds the "
                "key, shown this once",
                body=KEY_BODY,
                status=201,
                tags=("keys",),
                permission=Permission.ADMIN,
                action="key.create",
            ),
            Route(
                "DELETE",
                "/api/keys/{key_id}",
                self.revoke_key,
                "Revoke an API key",
                tags=("keys",),
                permission=Permission.ADMIN,
                action="key.revoke",
            ),
        ]

    @property
    def _session_seconds(self) -> int:
        """The cookie's life: the session's longest (its sliding expiry is the server's)."""
        return self.accounts.session_cap_ms // 1000

    def _accounts_on(self, what: str) -> None:
        if self.auth_mode not in ACCOUNT_MODES:
            raise Conflict(
                f"{what} need auth_mode builtin or oidc in nagare.yaml "
                f"(this server runs auth_mode {self.auth_mode})"
            )

    # ------------------------------------------------------------ signing in

    def auth_config(self, request: Request) -> dict[str, Any]:
        return {
            "auth_mode": self.auth_mode,
            "password": self.auth_mode in ACCOUNT_MODES,
            "sso": self.auth_mode == "oidc",
            "sso_name": self.sso_name,
        }

    def login(self, request: Request) -> Response:
        self._accounts_on("signing in with a password")
        _json_only(request)
        body = _body(request, '{"name": "...", "password": "..."}')
        name, password = _text(body, "name"), _text(body, "password")
        request.audit["actor"] = _actor_tried(request, name)
        now = self.clock()
        user = self.accounts.sign_in(name, password, request.address, now)
        token, csrf = self.accounts.start_session(user.name, request.address, now)
        principal = self.accounts.session(token, now)
        if principal is None:  # pragma: no cover - the session was just made
            raise Unauthorized("the session could not be started")
        answer = {**principal_json(principal), "csrf": csrf}
        return with_session(json_response(answer), token, self._session_seconds, self.secure)

    def logout(self, request: Request) -> Response:
        token = cookie_of(request, SESSION_COOKIE)
        if token and request.principal.kind == Kind.SESSION:
            self.accounts.end_session(token)
        return with_session(json_response({}), "", 0, self.secure)

    def me(self, request: Request) -> dict[str, Any]:
        principal = request.principal
        return {
            **principal_json(principal),
            "auth_mode": self.auth_mode,
            "csrf": principal.csrf if principal.kind == Kind.SESSION else "",
        }

    def my_password(self, request: Request) -> dict[str, Any]:
        principal = request.principal
        if principal.kind != Kind.SESSION:
            raise Conflict("only a signed-in user has a password to change")
        request.audit["target"] = f"user:{principal.name}"
        body = _body(request, '{"current": "...", "new": "..."}')
        self.accounts.change_password(
            principal.name,
            _text(body, "current"),
            _text(body, "new"),
            self.clock(),
            cookie_of(request, SESSION_COOKIE),
            request.address,
        )
        return {}

    # ------------------------------------------------------------ users

    def list_users(self, request: Request) -> list[dict[str, Any]]:
        self._accounts_on("users")
        return [user_json(u) for u in self.accounts.users()]

    def create_user(self, request: Request) -> dict[str, Any]:
        self._accounts_on("users")
        body = _body(request, '{"name": "...", "role": "...", "password": "..."}')
        _known(body, ("name", "role", "password"))
        name = _text(body, "name")
        request.audit["target"] = f"user:{name}" if is_account_name(name) else "user:?"
        user = self.accounts.add_user(
            name, _text(body, "role"), _text(body, "password"), self.clock()
        )
        request.note(role=user.role)
        return user_json(user)

    def update_user(self, request: Request) -> dict[str, Any]:
        self._accounts_on("users")
        body = _body(request, '{"role"?: "...", "password"?: "...", "disabled"?: bool}')
        _known(body, ("role", "password", "disabled"))
        disabled = body.get("disabled")
        if disabled is not None and not isinstance(disabled, bool):
            raise BadRequest("'disabled' must be true or false")
        role = _text(body, "role") if "role" in body else None
        password = _text(body, "password") if "password" in body else None
        request.note(**_changes(role, password, disabled))
        user = self.accounts.update_user(
            request.params["user_name"], self.clock(), role, password, disabled
        )
        return user_json(user)

    def delete_user(self, request: Request) -> dict[str, Any]:
        self._accounts_on("users")
        self.accounts.remove_user(request.params["user_name"])
        return {}

    # ------------------------------------------------------------ keys

    def list_keys(self, request: Request) -> list[dict[str, Any]]:
        self._accounts_on("API keys")
        return [key_json(k) for k in self.accounts.api_keys()]

    def create_key(self, request: Request) -> dict[str, Any]:
        self._accounts_on("API keys")
        body = _body(request, '{"name": "...", "role": "...", "expires_at"?: ISO 8601}')
        _known(body, ("name", "role", "expires_at"))
        expires = body.get("expires_at")
        if expires is not None and not isinstance(expires, str):
            raise BadRequest("'expires_at' must be an ISO 8601 time such as 2027-01-31T00:00Z")
        key, secret = self.accounts.create_key(
            _text(body, "name"),
            _text(body, "role"),
            _parse_time(expires) if expires else None,
            request.principal.name,
            self.clock(),
        )
        request.audit["target"] = f"key:{key.id}"
        request.note(name=key.name, role=key.role, expires_at=to_iso(key.expires_at) or "never")
        return {**key_json(key), "key": secret}

    def revoke_key(self, request: Request) -> dict[str, Any]:
        self._accounts_on("API keys")
        return key_json(self.accounts.revoke_key(request.params["key_id"], self.clock()))


def _actor_tried(request: Request, name: str) -> str:
    """A sign-in's actor: the name tried, when it could be a user's; else `?` and the name,
    quoted, in the detail (a name such as `api-key` or `key:ci` is not passed off as one)."""
    if is_account_name(name):
        return name
    request.note(name=name[:100])
    return "?"


def _json_only(request: Request) -> None:
    """A sign-in must say its body is JSON: a form of another site cannot (it would need a
    CORS preflight, which no origin passes with users), so no site signs a visitor's browser in
    under an account of its choosing (login CSRF)."""
    media = request.header("content-type").partition(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest(
            f"a sign-in sends its body as Content-Type: application/json (not {media or 'none'})"
        )


def _body(request: Request, shape: str) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object: {shape}")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    return value


def _known(body: dict[str, Any], fields: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} (expected {', '.join(fields)})")


def _parse_time(text: str) -> int:
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise BadRequest(f"expires_at: {exc}") from None


def _changes(role: str | None, password: str | None, disabled: bool | None) -> dict[str, str]:
    """What an update changed, for the audit log (never the password itself)."""
    changes = {"role": role} if role is not None else {}
    if password is not None:
        changes["password"] = "changed"
    if disabled is not None:
        changes["disabled"] = str(disabled).lower()
    return changes
