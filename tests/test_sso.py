"""Single sign-on end to end against a real OpenID Connect provider (node-oidc-provider, started
by the test): the code flow with PKCE for a confidential RS256 client and a public ES256 one,
role mapping from the groups claim (and its change at the next sign-in), a person with no role
refused, a spent or foreign state refused, key rotation, and a provider that is down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, http
from oidc_provider import (
    CONFIDENTIAL_SECRET,
    Browser,
    Provider,
    free_port,
    provider_module,
    through_provider,
)

from nagare.config import coerce_oidc
from nagare.store import AuditFilter

ROLE_MAP = {"nagare-admins": "admin", "ops": "operator", "readers": "viewer"}


@pytest.fixture
def oidc(
    nagare_factory: Callable[..., Nagare], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Nagare, Provider]]]:
    """`oidc(client_id="nagare", **oidc_settings)`: a Nagare with auth_mode oidc and its
    provider, running."""
    module = provider_module()
    providers: list[Provider] = []
    monkeypatch.setenv("NAGARE_TEST_OIDC_SECRET", CONFIDENTIAL_SECRET)

    def start(client_id: str = "nagare", **settings: Any) -> tuple[Nagare, Provider]:
        port = free_port()
        section = {
            "issuer": f"http://127.0.0.1:{port}",
            "client_id": client_id,
            "role_claim": "groups",
            "role_map": ROLE_MAP,
            **settings,
        }
        if client_id in ("nagare", "nagare-basic"):
            section.setdefault("client_secret_env", "NAGARE_TEST_OIDC_SECRET")
        server = nagare_factory(auth_mode="oidc", oidc=coerce_oidc(section, "oidc"))
        provider = Provider(module, tmp_path, port, server.url + "/api/auth/oidc/callback")
        providers.append(provider)
        provider.start()
        return server, provider

    yield start
    for provider in providers:
        provider.stop()


def sign_in(server: Nagare, login: str, browser: Browser | None = None) -> tuple[Browser, Any]:
    """A whole sign-in; the callback's answer."""
    browser = browser or Browser()
    answer = browser.open(through_provider(browser, server.url, login))
    return browser, answer


def me(server: Nagare, browser: Browser) -> Any:
    cookie = f"nagare_session={browser.cookie('nagare_session')}"
    return http("GET", server.url + "/api/me", headers={"Cookie": cookie})


def sso_entries(server: Nagare) -> list[Any]:
    entries, _ = server.app.store.audit.find(AuditFilter(action="auth.sso"), 1, 50)
    return list(reversed(entries))


def test_sign_in_with_a_confidential_rs256_client(oidc: Callable[..., Any]) -> None:
    server, provider = oidc()
    provider.set_user("alice", groups=["staff", "nagare-admins"])
    browser, answer = sign_in(server, "alice")
    assert answer.status == 302, answer.body
    assert answer.headers["Location"] == "/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert f"Max-Age={7 * 24 * 3600};" in cookie + ";"  # the session's longest life
    who = me(server, browser)
    assert who.status == 200, who.body
    assert (who.json["name"], who.json["kind"], who.json["role"]) == ("alice", "session", "admin")
    assert who.json["csrf"]
    user = server.app.store.users.get("alice")
    issuer = server.app.config.oidc.issuer
    assert user is not None and (user.source, user.subject) == ("oidc", f"{issuer} alice")
    assert user.last_login_at is not None  # the admin page shows when
    [entry] = sso_entries(server)
    assert (entry.actor, entry.outcome, entry.address) == ("alice", "ok", "127.0.0.1")
    assert entry.detail == "role admin (RS256 ID token)"
    assert CONFIDENTIAL_SECRET not in str(server.app.store.audit.find(AuditFilter(), 1, 100))
    config = server.get("/api/auth/config")
    assert config["sso"] is True and config["sso_name"] == ""


def test_a_builtin_users_name_is_never_taken_over(oidc: Callable[..., Any]) -> None:
    """A person whose provider name is a local user's gets an account of its own, and the audit
    log names that account, not the local user."""
    server, provider = oidc()
    server.app.accounts.add_user("alice", "admin", "a local password", 1_000)
    provider.set_user("alice", groups=["readers"])
    browser, answer = sign_in(server, "alice")
    assert answer.status == 302, answer.body
    who = me(server, browser).json
    assert (who["name"], who["role"]) == ("alice-2", "viewer")
    local = server.app.store.users.get("alice")
    assert local is not None and (local.source, local.role) == ("builtin", "admin")
    [entry] = sso_entries(server)
    assert (entry.actor, entry.outcome) == ("alice-2", "ok")
    assert entry.detail == "role viewer (RS256 ID token) provider_name=alice"


def test_client_secret_basic(oidc: Callable[..., Any]) -> None:
    server, provider = oidc("nagare-basic", client_auth="basic")
    provider.set_user("judy", groups=["readers"])
    browser, answer = sign_in(server, "judy")
    assert answer.status == 302, answer.body
    assert me(server, browser).json["role"] == "viewer"


def test_a_wrong_client_secret_is_a_clear_error(
    oidc: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAGARE_WRONG_SECRET", "not-the-secret")
    server, provider = oidc(client_secret_env="NAGARE_WRONG_SECRET")
    provider.set_user("kim", groups=["ops"])
    _, answer = sign_in(server, "kim")
    assert answer.status == 502
    assert "refused the sign-in&#x27;s code: invalid_client (client authentication" in answer.body
    assert "not-the-secret" not in answer.body
    assert [e.outcome for e in sso_entries(server)] == ["sso_provider"]


def test_sign_in_with_a_public_es256_client(oidc: Callable[..., Any]) -> None:
    server, provider = oidc("nagare-es", provider_name="Example ID")
    provider.set_user("bob", groups=["ops"], email="bob@example.com")
    browser, answer = sign_in(server, "bob")
    assert answer.status == 302, answer.body
    assert me(server, browser).json["role"] == "operator"
    assert me(server, browser).json["name"] == "bob"
    assert sso_entries(server)[0].detail == "role operator (ES256 ID token)"
    assert server.get("/api/auth/config")["sso_name"] == "Example ID"


def test_the_role_follows_the_claim_and_no_role_is_refused(oidc: Callable[..., Any]) -> None:
    server, provider = oidc(name_claim="email")
    provider.set_user("carol", groups=["readers"], email="carol@example.com")
    browser, answer = sign_in(server, "carol")
    assert me(server, browser).json["role"] == "viewer"
    assert me(server, browser).json["name"] == "carol@example.com"

    provider.set_user("carol", groups=["ops", "readers"], email="carol@example.com")
    browser, answer = sign_in(server, "carol", browser)  # the provider remembers her
    assert answer.status == 302, answer.body
    assert me(server, browser).json["role"] == "operator"

    provider.set_user("carol", groups=["sales"], email="carol@example.com")
    fresh = Browser()
    _, answer = sign_in(server, "carol", fresh)
    assert answer.status == 403
    assert "text/html" in answer.headers["Content-Type"]
    assert "no role is granted here" in answer.body and "sales" in answer.body
    assert "Traceback" not in answer.body
    assert not fresh.cookie("nagare_session")
    outcomes = [(e.actor, e.outcome) for e in sso_entries(server)]
    assert outcomes == [
        ("carol@example.com", "ok"),
        ("carol@example.com", "ok"),
        ("anonymous", "sso_refused"),
    ]


def test_default_role_lets_everyone_in(oidc: Callable[..., Any]) -> None:
    server, provider = oidc(default_role="viewer")
    provider.set_user("dave", groups=[])
    browser, answer = sign_in(server, "dave")
    assert answer.status == 302
    assert me(server, browser).json["role"] == "viewer"


def test_a_spent_or_foreign_state_is_refused(oidc: Callable[..., Any]) -> None:
    server, provider = oidc()
    provider.set_user("erin", groups=["ops"])
    browser = Browser()
    callback = through_provider(browser, server.url, "erin")

    # the answer opened in another browser (a login CSRF: no sign-in cookie) is refused, and
    # its state is spent: the browser that started it cannot use it either
    victim = Browser()
    refused = victim.open(callback)
    assert refused.status == 400 and "started in another browser" in refused.body
    assert not victim.cookie("nagare_session")
    again = browser.open(callback)
    assert again.status == 400 and "already used" in again.body

    # a JSON client gets the JSON error shape
    callback = through_provider(browser, server.url, "erin")
    assert browser.open(callback).status == 302
    reuse = http("GET", callback, headers={"Cookie": f"nagare_sso={browser.cookie('nagare_sso')}"})
    assert reuse.status == 400
    assert reuse.json["error"]["code"] == "sso_failed"

    forged = http("GET", server.url + "/api/auth/oidc/callback?state=made-up&code=x")
    assert forged.status == 400 and forged.json["error"]["code"] == "sso_failed"
    error = Browser().open(server.url + "/api/auth/oidc/callback?error=access_denied")
    assert error.status == 400 and "Traceback" not in error.body
    outcomes = [e.outcome for e in sso_entries(server)]
    assert outcomes == ["sso_failed", "sso_failed", "ok", "sso_failed", "sso_failed", "sso_failed"]


def test_a_rotated_key_is_fetched_again(oidc: Callable[..., Any]) -> None:
    server, provider = oidc()
    provider.set_user("frank", groups=["ops"])
    _, answer = sign_in(server, "frank")
    assert answer.status == 302
    provider.restart(key_id="2")  # new signing keys; Nagare still holds the old JWKS
    browser, answer = sign_in(server, "frank")
    assert answer.status == 302, answer.body
    assert me(server, browser).json["name"] == "frank"


def test_a_provider_that_is_down_gets_a_clear_error(oidc: Callable[..., Any]) -> None:
    server, provider = oidc()
    provider.stop()
    page = Browser().open(server.url + "/api/auth/oidc/login")
    assert page.status == 502
    assert "cannot be reached" in page.body and "Traceback" not in page.body
    answer = http("GET", server.url + "/api/auth/oidc/login")
    assert answer.status == 502 and answer.json["error"]["code"] == "sso_provider"
    assert server.get("/api/health")["status"] == "ok"  # the server keeps running
    starts = server.app.store.audit.find(AuditFilter(action="auth.sso_start"), 1, 10)[0]
    assert [e.outcome for e in starts] == ["sso_provider", "sso_provider"]


def test_the_client_secret_stays_out_of_tasks(
    nagare_factory: Callable[..., Nagare], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAGARE_TEST_OIDC_SECRET", CONFIDENTIAL_SECRET)
    section = {
        "issuer": "https://id.example.com",
        "client_id": "nagare",
        "client_secret_env": "NAGARE_TEST_OIDC_SECRET",
    }
    dag = "id: env\ntasks:\n  - id: show\n    command: env\n"
    server = nagare_factory(dags={"env.yaml": dag}, oidc=coerce_oidc(section, "oidc"))
    run = server.wait_run(server.trigger("env"))
    assert run["status"] == "success"
    log = server.log(run["run_id"], "show")
    assert "PATH=" in log
    assert "NAGARE_TEST_OIDC_SECRET" not in log and CONFIDENTIAL_SECRET not in log


def test_sso_routes_without_oidc(nagare_factory: Callable[..., Nagare]) -> None:
    server = nagare_factory(auth_mode="builtin")
    answer = http("GET", server.url + "/api/auth/oidc/login")
    assert answer.status == 409 and "single sign-on is off" in answer.json["error"]["message"]
    assert server.get("/api/auth/config")["sso"] is False
