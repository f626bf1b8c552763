"""The pure parts of single sign-on: the `oidc:` settings and their errors, role mapping, the
user name, PKCE, and the bounded, expiring, spend-once store of sign-ins in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nagare.config import coerce_oidc, load_config
from nagare.errors import ConfigError
from nagare.models import OidcSettings
from nagare.sso import (
    Pending,
    PendingSignIns,
    SsoRefused,
    claim_values,
    map_role,
    pkce_challenge,
    user_name,
)

MINIMAL = {"issuer": "https://id.example.com/realms/main/", "client_id": "nagare"}


def settings(**changes: Any) -> OidcSettings:
    found = coerce_oidc({**MINIMAL, **changes}, "oidc")
    assert found is not None
    return found


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "nagare.yaml"
    path.write_text(text)
    return {"config": str(path)}


# ---------------------------------------------------------------- settings


def test_minimal_section_gets_the_defaults() -> None:
    found = settings()
    assert found.issuer == "https://id.example.com/realms/main"  # the trailing / dropped
    assert found.scopes == ("openid", "profile", "email")
    assert found.name_claim == "preferred_username"
    assert found.provider_name == ""
    assert (found.role_map, found.default_role, found.client_secret_env) == ((), "", "")
    assert found.timeout_seconds == 10.0


def test_full_section_from_nagare_yaml(tmp_path: Path) -> None:
    flags = write_config(
        tmp_path,
        """
auth_mode: oidc
roles: {finance: {base: operator, tags: [finance]}}
oidc:
  issuer: https://id.example.com
  client_id: nagare
  client_secret_env: NAGARE_OIDC_SECRET
  redirect_url: https://nagare.example.com/api/auth/oidc/callback
  scopes: openid email groups
  name_claim: email
  role_claim: groups
  role_map: {nagare-admins: admin, finance-team: finance}
  default_role: viewer
  provider_name: Example ID
  timeout_seconds: 5
""",
    )
    config = load_config(flags, environ={})
    assert config.auth_mode == "oidc" and config.oidc is not None
    assert config.oidc.role_map == (("nagare-admins", "admin"), ("finance-team", "finance"))
    assert config.oidc.scopes == ("openid", "email", "groups")
    assert config.oidc.redirect_url.startswith("https://nagare.example.com/")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"issuer": None}, "oidc.issuer: required"),
        ({"issuer": "id.example.com"}, "oidc.issuer: expected an http"),
        ({"client_id": ""}, "oidc.client_id: required"),
        ({"client_secret_env": "my secret"}, "name of an environment variable"),
        ({"redirect_url": "/callback"}, "oidc.redirect_url: expected an http"),
        ({"scopes": ["profile"]}, "must include openid"),
        ({"scopes": 3}, "expected a list of scopes"),
        ({"role_map": ["admin"]}, "expected a mapping of claim value to role"),
        ({"role_map": {"admins": 1}}, "oidc.role_map.admins: expected a role name"),
        ({"role_map": {"admins": "admin"}}, "role_claim: required with role_map"),
        ({"role_claim": "bad claim"}, "expected a claim name"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"insecure": "maybe"}, "expected true or false"),
        ({"client_auth": "jwt"}, "expected post .* or basic"),
        ({"secret": "x"}, "unknown key 'secret'"),
    ],
)
def test_bad_sections_say_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        coerce_oidc({**MINIMAL, **changes}, "oidc")


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping such as"):
        coerce_oidc("https://id.example.com", "oidc")
    assert coerce_oidc(None, "oidc") is None


def test_auth_mode_oidc_needs_the_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_mode: oidc needs an oidc: section"):
        load_config(write_config(tmp_path, "auth_mode: oidc\n"), environ={})


def test_mapped_roles_must_exist(tmp_path: Path) -> None:
    text = (
        "auth_mode: oidc\noidc: {issuer: https://id.example.com, client_id: n, "
        "role_claim: groups, role_map: {admins: superuser}}\n"
    )
    with pytest.raises(ConfigError, match=r"oidc\.role_map\.admins: unknown role 'superuser'"):
        load_config(write_config(tmp_path, text), environ={})
    text = "oidc: {issuer: https://id.example.com, client_id: n, default_role: boss}\n"
    with pytest.raises(ConfigError, match=r"oidc\.default_role: unknown role 'boss'"):
        load_config(write_config(tmp_path, text), environ={})


# ---------------------------------------------------------------- roles and names


MAPPED = settings(role_claim="groups", role_map={"admins": "admin", "ops": "operator"})


def test_the_first_mapping_written_wins() -> None:
    assert map_role({"groups": ["ops", "admins"]}, MAPPED) == "admin"
    assert map_role({"groups": ["ops"]}, MAPPED) == "operator"


def test_no_mapped_value_and_no_default_is_refused() -> None:
    with pytest.raises(SsoRefused, match=r"no role is granted here.*has sales"):
        map_role({"groups": ["sales"]}, MAPPED)
    with pytest.raises(SsoRefused, match="has none"):
        map_role({}, MAPPED)
    unmapped = settings()
    with pytest.raises(SsoRefused, match="no role_claim set"):
        map_role({"groups": ["admin"]}, unmapped)  # a claim is never taken as a role as is


def test_default_role() -> None:
    assert map_role({"groups": ["sales"]}, settings(default_role="viewer")) == "viewer"


def test_claim_values_of_strings_lists_and_nested_claims() -> None:
    assert claim_values({"roles": "admin ops,dev"}, "roles") == ["admin", "ops", "dev"]
    assert claim_values({"groups": ["a", 7, True, None]}, "groups") == ["a", "7"]
    assert claim_values({"realm_access": {"roles": ["x"]}}, "realm_access.roles") == ["x"]
    assert claim_values({"https://x.example/roles": ["y"]}, "https://x.example/roles") == ["y"]
    assert claim_values({"groups": {"a": 1}}, "groups") == []


def test_user_name_falls_back_to_email_then_sub() -> None:
    assert user_name({"preferred_username": "ann", "sub": "1"}, "preferred_username") == "ann"
    assert user_name(
        {"preferred_username": "Ann Lee", "email": "ann@x.org"}, "preferred_username"
    ) == ("ann@x.org")
    assert user_name({"sub": "a1b2"}, "preferred_username") == "a1b2"
    with pytest.raises(SsoRefused, match="no usable user name"):
        user_name({"sub": "x" * 200}, "preferred_username")


def test_pkce_s256_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


# ---------------------------------------------------------------- sign-ins in flight


def pending(started: float) -> Pending:
    return Pending("nonce", "verifier", "https://n.example/cb", "binding", started)


def test_a_sign_in_is_spent_once() -> None:
    store = PendingSignIns()
    store.add("s1", pending(100.0))
    assert store.take("s1", 101.0) == pending(100.0)
    assert store.take("s1", 102.0) is None
    assert store.take("unknown", 102.0) is None


def test_sign_ins_expire() -> None:
    store = PendingSignIns(ttl=600)
    store.add("old", pending(0.0))
    store.add("new", pending(500.0))
    assert store.take("old", 600.0) is None
    assert store.take("new", 600.0) is not None


def test_at_most_limit_sign_ins_are_kept_the_oldest_go() -> None:
    store = PendingSignIns(limit=3)
    for index in range(5):
        store.add(f"s{index}", pending(float(index)))
    assert [store.take(f"s{i}", 10.0) is not None for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
