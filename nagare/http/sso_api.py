"""The routes of single sign-on: `GET /api/auth/oidc/login` sends the browser to the provider,
`GET /api/auth/oidc/callback` takes it back, signs the person in (a session cookie) and sends it
to the dashboard. A failure answers a short page (a browser) or the JSON error (anything else),
never a traceback; the callback's outcome goes to the audit log as `auth.sso`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from nagare.access import Permission
from nagare.accounts import Accounts
from nagare.clock import now_ms
from nagare.errors import BadRequest, Conflict, NagareError
from nagare.http.accounts_api import cookie_of, session_cookie
from nagare.http.routing import Param, Route, prefers_html
from nagare.http.server import Request, Response, error_response

if TYPE_CHECKING:  # (loaded only when nagare.yaml has oidc:)
    from nagare.sso import SingleSignOn

PENDING_SECONDS = 600  # nagare.sso.PENDING_SECONDS: how long a sign-in may take at the provider

CALLBACK_PATH = "/api/auth/oidc/callback"
SIGN_IN_COOKIE = "nagare_sso"  # binds a sign-in to the browser that started it
_ANSWER = ("state", "code", "error", "error_description", "iss")  # the provider's, on callback
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class SsoApi:
    def __init__(
        self,
        sso: SingleSignOn | None,
        accounts: Accounts,
        session_seconds: int,
        secure: bool,
    ) -> None:
        self.sso = sso
        self.accounts = accounts
        self.session_seconds = session_seconds
        self.secure = secure  # served over TLS: cookies get `Secure`

    def routes(self) -> list[Route]:
        return [
            Route(
                "GET",
                "/api/auth/oidc/login",
                self.login,
                "Single sign-on: a 302 to the OpenID Connect provider's sign-in page (409 when "
                "auth_mode is not oidc; 502 when the provider cannot be reached)",
                status=302,
                tags=("auth",),
                permission=Permission.OPEN,
                action="auth.sso_start",
            ),
            Route(
                "GET",
                CALLBACK_PATH,
                self.callback,
                "Where the provider sends the browser back: checks the answer and the ID token, "
                "signs the person in (session cookie) and answers a 302 to the dashboard",
                query=(
                    Param("state", "the sign-in this answers"),
                    Param("code", "the authorization code"),
                    Param("error", "the provider's error code"),
                    Param("error_description", "the provider's error text"),
                    Param("iss", "the provider's issuer (RFC 9207)"),
                ),
                any_query=True,  # providers add parameters of their own (session_state, ...)
                status=302,
                tags=("auth",),
                permission=Permission.OPEN,
                action="auth.sso",
            ),
        ]

    def login(self, request: Request) -> Response:
        try:
            sso = self._sso()
            binding = _binding()
            url = sso.begin(self._redirect_uri(request), _hash(binding), now_ms() / 1000)
        except NagareError as err:
            return _failure(request, err)
        return _redirect(url, self._sign_in_cookie(binding))

    def callback(self, request: Request) -> Response:
        try:
            sso = self._sso()
            answer = {name: request.arg(name) for name in _ANSWER}
            binding = _hash(cookie_of(request, SIGN_IN_COOKIE))
            user = sso.finish(answer, binding, now_ms() / 1000)
            request.audit["actor"] = user.name  # refused below: the name the provider gave
            request.audit["detail"] = f"role {user.role} ({user.algorithm} ID token)"
            name = self.accounts.ensure_sso_user(user.subject, user.name, user.role, now_ms())
            request.audit["actor"] = name  # the account signed in (another one may be 'user.name')
            if name != user.name:
                request.note(provider_name=user.name)
            token, _csrf = self.accounts.start_session(name, request.address, now_ms())
        except NagareError as err:
            return _failure(request, err)
        return _redirect("/", session_cookie(token, self.session_seconds, self.secure))

    def _sso(self) -> SingleSignOn:
        if self.sso is None:
            raise Conflict("single sign-on is off: set auth_mode: oidc and an oidc: section")
        return self.sso

    def _redirect_uri(self, request: Request) -> str:
        configured = self.sso.settings.redirect_url if self.sso else ""
        if configured:
            return configured
        host = request.header("host")
        if not _HOST.match(host):
            raise BadRequest(
                "cannot tell this server's address from the Host header: set oidc.redirect_url"
            )
        return f"{'https' if self.secure else 'http'}://{host}{CALLBACK_PATH}"

    def _sign_in_cookie(self, binding: str) -> str:
        """Lax, not Strict: it must come along when the provider sends the browser back."""
        cookie = f"{SIGN_IN_COOKIE}={binding}; HttpOnly; SameSite=Lax; Path=/api/auth/oidc; "
        cookie += f"Max-Age={int(PENDING_SECONDS)}"
        return cookie + "; Secure" if self.secure else cookie


def _binding() -> str:
    """A new sign-in cookie (`secrets`, like `hashlib` and `html`, is imported where it is used:
    an idle server has no OpenSSL mapped and no HTML entity table)."""
    import secrets

    return secrets.token_urlsafe(32)


def _hash(value: str) -> str:
    """What the server keeps of the browser's sign-in cookie."""
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


def _redirect(location: str, cookie: str) -> Response:
    headers = {"Location": location, "Set-Cookie": cookie, "Cache-Control": "no-store"}
    return Response(302, b"", "text/plain", headers)


def _failure(request: Request, err: NagareError) -> Response:
    """The error for the audit entry and the person: a page for a browser, else the JSON."""
    request.audit["outcome"] = err.code
    request.audit.setdefault("detail", err.message[:300])
    if not prefers_html(request.header("accept")):
        return error_response(err)
    return Response(err.status, _page(err.message), "text/html; charset=utf-8")


def _page(message: str) -> bytes:
    import html

    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        "<title>Sign-in failed · Nagare</title>"
        "<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;"
        "color:#1f2328;background:#fff}@media(prefers-color-scheme:dark){body{color:#e6edf3;"
        "background:#0d1117}a{color:#7cb7ff}}</style></head><body><main>"
        "<h1>Single sign-on failed</h1>"
        f'<p role="alert">{html.escape(message[:1].upper() + message[1:])}</p>'
        '<p><a href="/">Back to the sign-in page</a></p></main></body></html>'
    ).encode()
