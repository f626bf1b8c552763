"""Single sign-on in a real browser against a real OpenID provider (fixtures of test_ui.py and
test_sso.py): the sign-in link leads through the provider's pages back to the dashboard, whose
requests then carry the session (a SameSite=Strict cookie set at the end of a cross-site
redirect chain); a person without a role gets the failure page (light, dark, phone; axe clean)."""

from __future__ import annotations

from typing import Any

import pytest
from axe import axe_violations
from test_sso import oidc  # noqa: F401 - fixture
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def through_provider_pages(page: Any, server_url: str, login: str) -> None:
    """Sign in and consent on the provider's own pages until it sends the browser back."""
    for _ in range(4):
        if page.url.startswith(server_url):
            return
        field = page.locator("input[name=login]")
        if field.count():
            field.fill(login)
            page.locator("input[name=password]").fill("any password")
        with page.expect_navigation():
            page.locator("button[type=submit]").first.click()
    assert page.url.startswith(server_url), page.url


def test_sign_in_through_the_provider_in_a_browser(oidc: Any, ui: Any) -> None:  # noqa: F811
    server, provider = oidc()
    provider.set_user("grace", groups=["ops"])
    u = ui(server)
    page = u.go("/api/auth/oidc/login")
    assert page.url.startswith(provider.issuer)  # the provider's sign-in page
    through_provider_pages(page, server.url, "grace")
    assert page.url == server.url + "/"
    me = page.evaluate("fetch('/api/me').then(r => r.json())")
    assert (me["name"], me["role"], me["kind"]) == ("grace", "operator", "session")
    cookies = {c["name"]: c for c in u.context.cookies()}
    session = cookies["nagare_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"


def test_a_person_without_a_role_sees_why(oidc: Any, ui: Any) -> None:  # noqa: F811
    server, provider = oidc()
    provider.set_user("heidi", groups=["sales"])
    views = {
        "desktop": {"viewport": {"width": 1280, "height": 800}},
        "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True},
    }
    for view, context in views.items():
        for theme in ("light", "dark"):
            u = ui(server, color_scheme=theme, **context)
            page = u.go("/api/auth/oidc/login")
            through_provider_pages(page, server.url, "heidi")
            expect(page.get_by_role("heading", name="Single sign-on failed")).to_be_visible()
            expect(page.get_by_role("alert")).to_contain_text("no role is granted here")
            expect(page.get_by_role("link", name="Back to the sign-in page")).to_be_visible()
            assert (
                page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
            )
            u.shot(f"sso_refused_{view}_{theme}")
            assert axe_violations(page) == [], (view, theme)
            assert "nagare_session" not in {c["name"] for c in u.context.cookies()}


def test_the_sign_in_page_button(oidc: Any, ui: Any) -> None:  # noqa: F811
    server, provider = oidc(provider_name="Example ID")
    provider.set_user("ivan", groups=["nagare-admins"])
    u = ui(server)
    page = u.go("/")
    button = page.get_by_role("link", name="Sign in with single sign-on")
    expect(button).to_be_visible()
    expect(page.get_by_text("through Example ID")).to_be_visible()
    u.shot("sso_button")
    button.click()
    page.wait_for_url(provider.issuer + "/**")
    through_provider_pages(page, server.url, "ivan")
    expect(page.get_by_text("ivan").first).to_be_visible()  # signed in on arrival
    u.errors.clear()  # (the provider's pages load things of their own; the gate's first 401)
    page.reload()
    expect(page.get_by_text("ivan").first).to_be_visible()
    me = page.evaluate("fetch('/api/me').then(r => r.json())")
    assert (me["name"], me["role"]) == ("ivan", "admin")
    u.shot("sso_signed_in")
    assert u.errors == [], u.errors
