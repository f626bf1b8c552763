"""Single sign-on with an OpenID Connect provider: the authorization code flow with PKCE.

`begin` starts a sign-in: it reads the provider's discovery document (cached), keeps the
sign-in's state, nonce and PKCE verifier in memory (bounded, expiring) and returns the provider's
authorization URL. `finish` takes the provider's answer (state, code): it spends the state once,
exchanges the code at the token endpoint, checks the ID token (signature against the provider's
JWKS, fetched again once for an unknown key id; issuer, audience, times, nonce: nagare.jose)
and maps its claims to a user name and a role. Creating the user and its session is the
caller's part. Every failure is an `SsoError` with a message for the person signing in.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

from nagare.client import ApiError, fetch_json
from nagare.errors import ConfigError, NagareError
from nagare.jose import (
    Expected,
    Jwk,
    Jwt,
    TokenError,
    check_claims,
    parse_jwks,
    parse_jwt,
    select_key,
    verify_signature,
)
from nagare.models import OidcSettings

PENDING_SECONDS = 600.0  # a sign-in must come back from the provider within 10 minutes
MAX_PENDING = 1000  # sign-ins started and not finished, kept at once (the oldest go first)
DISCOVERY_SECONDS = 3600.0  # how long the discovery document and the keys are reused
# a user name taken from a claim (the accounts' rule: e-mail addresses allowed)
SSO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")

Fetch = Callable[..., tuple[int, Any]]


class SsoError(NagareError):
    """A sign-in through the provider failed; the message tells the person what happened."""

    code = "sso_failed"
    status = 400


class SsoRefused(SsoError):
    """The provider vouched for the person, but Nagare gives them no role."""

    code = "sso_refused"
    status = 403


class ProviderError(SsoError):
    """The provider could not be reached or gave an answer that cannot be used."""

    code = "sso_provider"
    status = 502


@dataclass(frozen=True)
class Pending:
    """A sign-in sent to the provider and not yet back."""

    nonce: str
    verifier: str  # the PKCE code verifier (its S256 challenge went to the provider)
    redirect_uri: str
    binding: str  # the hash of the browser's sign-in cookie: the answer must come back to it
    started: float


@dataclass(frozen=True)
class SsoUser:
    subject: str  # the account's stable key: the issuer and its `sub` (subject_key)
    name: str
    role: str
    algorithm: str  # how the ID token was signed (RS256, ES256)


# ---------------------------------------------------------------- pure decisions


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def claim_values(claims: Mapping[str, Any], claim: str) -> list[str]:
    """A claim's values as text: a string (split on spaces and commas, as some providers send
    roles), or a list of strings. A dotted name reaches into objects (`realm_access.roles`)."""
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None and "." in claim:
        value = claims.get(claim)  # a claim whose name has a dot (`https://x.example/roles`)
    if isinstance(value, str):
        return [v for v in re.split(r"[\s,]+", value) if v]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int) and not isinstance(v, bool)]
    return []


def map_role(claims: Mapping[str, Any], settings: OidcSettings) -> str:
    """The role of the person: the first `role_map` entry (in the order written) whose claim
    value the token carries, else `default_role`; SsoRefused when neither gives one. Without a
    role_map, a role_claim value naming a role is not taken as is: roles come from the map."""
    values = set(claim_values(claims, settings.role_claim)) if settings.role_claim else set()
    for value, role in settings.role_map:
        if value in values:
            return role
    if settings.default_role:
        return settings.default_role
    shown = ", ".join(sorted(values)[:10]) or "none"
    raise SsoRefused(
        f"signed in at the provider, but no role is granted here: the claim "
        f"'{settings.role_claim or '(no role_claim set)'}' has {shown}, and role_map maps none "
        "of these (ask an administrator to map your group to a role)"
    )


def subject_key(issuer: str, sub: str) -> str:
    """The stable key of a person: a `sub` is unique only at its issuer, so a provider configured
    later never reaches the accounts of another one's subjects that happen to be spelt alike."""
    return f"{issuer.rstrip('/')} {sub}"


def user_name(claims: Mapping[str, Any], name_claim: str) -> str:
    """The user name: the first of `name_claim`, email and sub that is a usable name (an email
    the provider says it has not verified is not used: anyone could have typed it)."""
    for claim in dict.fromkeys((name_claim, "email", "sub")):
        if claim == "email" and claims.get("email_verified") is False:
            continue
        value = claims.get(claim)
        if isinstance(value, str) and SSO_NAME.match(value):
            return value
    raise SsoRefused(
        f"the provider gave no usable user name (claims {name_claim}, email, sub: letters, "
        "digits and . _ - @ +, at most 64)"
    )


class PendingSignIns:
    """The sign-ins sent to the provider, by state: each is spent once, expires after
    PENDING_SECONDS, and at most MAX_PENDING are kept (the oldest are dropped first)."""

    def __init__(self, limit: int = MAX_PENDING, ttl: float = PENDING_SECONDS) -> None:
        self.limit = limit
        self.ttl = ttl
        self._items: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, state: str, pending: Pending) -> None:
        with self._lock:
            self._expire(pending.started)
            self._items[state] = pending
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def take(self, state: str, now: float) -> Pending | None:
        """The sign-in of `state`, removed; None when unknown, spent or expired."""
        with self._lock:
            self._expire(now)
            return self._items.pop(state, None)

    def _expire(self, now: float) -> None:
        while self._items:
            state, oldest = next(iter(self._items.items()))
            if now - oldest.started < self.ttl:
                return
            del self._items[state]


# ---------------------------------------------------------------- the flow


@dataclass
class _Cached:
    value: Any
    at: float


class SingleSignOn:
    """The relying party of one provider (nagare.yaml's `oidc:`)."""

    def __init__(
        self,
        settings: OidcSettings,
        environ: Mapping[str, str],
        fetch: Fetch = fetch_json,
    ) -> None:
        self.settings = settings
        self.environ = environ
        self._fetch = fetch
        self.pending = PendingSignIns()
        self._lock = threading.Lock()
        self._metadata: _Cached | None = None
        self._keys: _Cached | None = None
        self._tls = _tls_context(settings)

    # ------------------------------------------------------------ begin

    def begin(self, redirect_uri: str, binding: str, now: float) -> str:
        """A new sign-in: the provider's authorization URL to send the browser to."""
        endpoint = self._endpoint("authorization_endpoint", now)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        self.pending.add(state, Pending(nonce, verifier, redirect_uri, binding, now))
        query = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.settings.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)

    # ------------------------------------------------------------ finish

    def finish(self, answer: Mapping[str, str], binding: str, now: float) -> SsoUser:
        """The provider's answer on the callback (its query: state, code or error): the person
        it vouches for, with their role. SsoError otherwise."""
        pending = self.pending.take(answer.get("state", ""), now)
        if pending is None or not secrets.compare_digest(pending.binding, binding):
            raise SsoError(
                "this sign-in is unknown, was already used, expired or was started in another "
                "browser: start again from the sign-in page"
            )
        if answer.get("error"):
            raise SsoError(_provider_refusal(answer))
        if answer.get("iss") and answer["iss"].rstrip("/") != self.settings.issuer:
            raise SsoError(f"the answer came from another provider ({answer['iss'][:100]})")
        code = answer.get("code", "")
        if not code:
            raise SsoError("the provider's answer has no authorization code")
        jwt = self._verified(self._exchange(code, pending, now), pending.nonce, now)
        role = map_role(jwt.claims, self.settings)
        name = user_name(jwt.claims, self.settings.name_claim)
        subject = subject_key(self.settings.issuer, jwt.claims["sub"])
        return SsoUser(subject, name, role, str(jwt.header["alg"]))

    def _exchange(self, code: str, pending: Pending, now: float) -> str:
        """The code (and the PKCE verifier) for tokens at the token endpoint: the ID token."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "client_id": self.settings.client_id,
            "code_verifier": pending.verifier,
        }
        headers = self._client_authentication(form)
        status, answer = self._call(self._endpoint("token_endpoint", now), form, headers)
        if status != 200 or not isinstance(answer, dict):
            raise ProviderError(
                f"the provider refused the sign-in's code: {_oauth_error(answer, status)}"
            )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError(
                "the provider's token answer has no ID token (is 'openid' a scope?)"
            )
        return id_token

    def _verified(self, id_token: str, nonce: str, now: float) -> Jwt:
        try:
            jwt = parse_jwt(id_token)
            verify_signature(jwt, self._key_for(jwt.header, now))
            # the discovery document's spelling (checked against oidc.issuer but for a
            # trailing slash, which some providers' issuers end with)
            issuer = str(self._discovery(now)["issuer"])
            expected = Expected(issuer, self.settings.client_id, nonce)
            check_claims(jwt.claims, expected, now)
        except TokenError as err:
            raise SsoError(f"the provider's ID token was refused: {err.message}") from None
        return jwt

    def _key_for(self, header: Mapping[str, Any], now: float) -> Jwk:
        """The key the token names; the JWKS is fetched again once when it is not there (the
        provider rotated its keys)."""
        key = select_key(self._jwks(now, refresh=False), header)
        if key is None:
            key = select_key(self._jwks(now, refresh=True), header)
        if key is None:
            raise TokenError(
                f"no {header.get('alg')} key '{header.get('kid', '')}' among the provider's keys"
            )
        return key

    # ------------------------------------------------------------ the provider's documents

    def _endpoint(self, name: str, now: float) -> str:
        value = self._discovery(now).get(name)
        if not isinstance(value, str) or not value.startswith(("https://", "http://")):
            raise ProviderError(f"the provider's discovery document has no {name}")
        return value

    def _discovery(self, now: float) -> dict[str, Any]:
        with self._lock:
            cached = self._metadata
        if cached is not None and now - cached.at < DISCOVERY_SECONDS:
            return dict(cached.value)
        url = self.settings.issuer + "/.well-known/openid-configuration"
        status, document = self._call(url, None)
        if status != 200 or not isinstance(document, dict):
            raise ProviderError(f"the provider's discovery document {url} answered {status}")
        if str(document.get("issuer", "")).rstrip("/") != self.settings.issuer:
            raise ProviderError(
                f"the discovery document names issuer {document.get('issuer')!r}, "
                f"not {self.settings.issuer!r} (check oidc.issuer)"
            )
        with self._lock:
            self._metadata = _Cached(document, now)
        return document

    def _jwks(self, now: float, refresh: bool) -> list[Jwk]:
        with self._lock:
            cached = self._keys
        if cached is not None and not refresh and now - cached.at < DISCOVERY_SECONDS:
            keys: list[Jwk] = cached.value
            return keys
        url = self._endpoint("jwks_uri", now)
        status, document = self._call(url, None)
        if status != 200:
            raise ProviderError(f"the provider's keys {url} answered {status}")
        keys = parse_jwks(document)
        with self._lock:
            self._keys = _Cached(keys, now)
        return keys

    def _call(
        self, url: str, form: dict[str, str] | None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        try:
            return self._fetch(
                url,
                form=form,
                headers=headers,
                timeout=self.settings.timeout_seconds,
                context=self._tls,
            )
        except ApiError as err:
            raise ProviderError(f"the sign-in provider cannot be reached: {err.message}") from None

    def _client_authentication(self, form: dict[str, str]) -> dict[str, str]:
        """A confidential client proves itself with its secret: in the form
        (client_secret_post) or as HTTP Basic (client_secret_basic, RFC 6749 §2.3.1: each part
        form-encoded first). A public client sends only its client_id (and PKCE)."""
        secret = self._client_secret()
        if not secret:
            return {}
        if self.settings.client_auth == "post":
            form["client_secret"] = secret
            return {}
        pair = f"{quote_plus(self.settings.client_id)}:{quote_plus(secret)}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}

    def _client_secret(self) -> str:
        name = self.settings.client_secret_env
        if not name:
            return ""
        secret = self.environ.get(name, "")
        if not secret:
            raise ProviderError(
                f"the client secret is missing: the environment variable {name} "
                "(oidc.client_secret_env) is not set on the server"
            )
        return secret


def _tls_context(settings: OidcSettings) -> ssl.SSLContext | None:
    if not settings.ca_file and not settings.insecure:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"oidc.ca_file: cannot read {settings.ca_file}: {exc}") from None
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _provider_refusal(answer: Mapping[str, str]) -> str:
    text = answer.get("error_description") or answer.get("error", "")
    return f"the provider did not sign you in: {text[:200]}"


def _oauth_error(answer: Any, status: int) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        detail = answer.get("error_description")
        return f"{answer['error']}" + (f" ({str(detail)[:200]})" if detail else "")
    return f"status {status}"
