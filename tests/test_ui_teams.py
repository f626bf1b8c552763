"""The dashboard with users (auth_mode: builtin) in a real browser (fixtures of test_ui.py):
sign-in (wrong, right, rate-limited), sign-out, a session that ends returns to the sign-in
page, what each role is shown, the Users & keys page (a user and an API key created, the key
shown once, revoked), the audit page listing and filtering those actions, and the CSRF token
a signed-in write carries. Light, dark and phone screenshots; no critical or serious axe-core
violation."""

from __future__ import annotations

import re
from typing import Any

import pytest
from axe import axe_violations
from conftest import Nagare, http, wait_for
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

from nagare.access import parse_roles
from nagare.clock import now_ms

pytestmark = pytest.mark.slow

PASSWORD = "correct-horse-7"
NEW_PASSWORD = "battery-staple-8"
USERS = {"ada": "admin", "olga": "operator", "vic": "viewer", "dev": "developer"}
SLEEPER = """\
id: sleeper
schedule: "0 3 * * *"
tags: [finance]
tasks:
  - {id: nap, command: sleep 60}
"""
FAILING = """\
id: failing
tasks:
  - {id: breaks, command: "echo broken; exit 3"}
"""
GATE = """\
id: gate
tasks:
  - {id: ask, type: approval, message: "Ship it?"}
  - {id: ship, depends_on: [ask], command: echo shipped}
"""
VIEWS: dict[str, dict[str, Any]] = {
    "light": {"color_scheme": "light"},
    "dark": {"color_scheme": "dark"},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True},
}


def teams_server(nagare_factory: Any, **settings: Any) -> Nagare:
    server: Nagare = nagare_factory(
        dags={"sleeper.yaml": SLEEPER, "failing.yaml": FAILING, "gate.yaml": GATE},
        auth_mode="builtin",
        **settings,
    )
    for name, role in USERS.items():
        server.app.accounts.add_user(name, role, PASSWORD, now_ms())
    cookie, csrf = login(server, "ada")  # the test's own calls (server.get, .trigger) as an admin
    server.headers = {**cookie, "X-CSRF-Token": csrf}
    return server


def sign_in(page: Any, name: str, password: str = PASSWORD) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def signed_in(u: Any, name: str, path: str = "/", password: str = PASSWORD) -> Any:
    page = u.go(path)
    sign_in(page, name, password)
    expect(page.locator(f"[data-who='{name}']")).to_be_visible()
    return page


def unexpected(u: Any, *expected: int) -> list[str]:
    """The console errors but the browser's own line for a 401 (the first look at /api/me
    before signing in, a wrong password) and for the `expected` statuses."""
    said = [f"status of {status}" for status in (401, *expected)]
    return [e for e in u.errors if not any(s in e for s in said)]


def nav_labels(page: Any) -> list[str]:
    return [
        a.inner_text()
        for a in page.get_by_role("navigation", name="Main").get_by_role("link").all()
    ]


def session_token(u: Any) -> str:
    return str(next(c["value"] for c in u.context.cookies() if c["name"] == "nagare_session"))


def login(server: Nagare, name: str) -> tuple[dict[str, str], str]:
    """An API sign-in: the Cookie header and the session's CSRF token."""
    answer = http("POST", server.url + "/api/auth/login", {"name": name, "password": PASSWORD})
    assert answer.status == 200, answer.body
    cookie = answer.headers["Set-Cookie"].split(";")[0]
    return {"Cookie": cookie}, answer.json["csrf"]


def test_sign_in_wrong_then_right_sign_out_and_an_ended_session(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = teams_server(nagare_factory)
    for view, context in VIEWS.items():
        u = ui(server, **context)
        page = u.go("/runs")
        expect(page.get_by_role("heading", name="Sign in to Nagare")).to_be_visible()
        expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
        expect(page.locator("[data-sso]")).to_have_count(0)  # no single sign-on configured
        sign_in(page, "ada", "not-the-password")
        expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
        expect(page.get_by_label("Password")).to_have_value("")
        u.shot(f"signin-{view}")
        assert axe_violations(page) == [], view
        sign_in(page, "ada")
        expect(page.locator("[data-who=ada] [data-role]")).to_have_text("admin")
        expect(page.get_by_role("heading", name="Runs")).to_be_visible()  # where it was going
        assert "Audit" in nav_labels(page) and "Users & keys" in nav_labels(page)
        if view == "phone":
            u.shot("header-signed-in-phone")
        assert unexpected(u) == []

    u = ui(server)
    page = signed_in(u, "vic")
    page.reload()  # the session cookie survives a reload
    expect(page.locator("[data-who=vic]")).to_be_visible()
    # one's own password: the current one first; this session stays
    page.get_by_role("button", name="Password…").click()
    dialog = page.get_by_role("dialog", name="Change your password")
    dialog.get_by_label("Current password").fill("not-it-at-all")
    dialog.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    dialog.get_by_label("New password again").fill(NEW_PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog.get_by_role("alert")).to_have_text("The current password is wrong.")
    dialog.get_by_label("Current password").fill(PASSWORD)
    dialog.get_by_role("button", name="Change password").click()
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("status")).to_contain_text("Password changed")
    page.get_by_role("link", name="Runs", exact=True).click()
    expect(page.locator("[data-who=vic]")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("[data-signin-notice]")).to_have_text("You have signed out.")
    page.reload()
    expect(page.get_by_role("heading", name="Sign in to Nagare")).to_be_visible()

    # a session that ends (expired here) sends the page back to sign-in at its next call
    page = signed_in(u, "vic", "/runs", NEW_PASSWORD)
    server.app.accounts.session(session_token(u), now_ms() + 48 * 3600_000)  # past its end
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # polls at once
    expect(page.locator("[data-signin-notice]")).to_contain_text("Your session has ended")
    sign_in(page, "vic", NEW_PASSWORD)
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()  # where it was


def test_sign_in_rate_limit_is_said_plainly(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    server = teams_server(nagare_factory)
    u = ui(server)
    page = u.go("/")
    for _ in range(5):
        sign_in(page, "olga", "wrong-guess-1")
        expect(page.get_by_label("Password")).to_have_value("")  # cleared once refused
        expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    sign_in(page, "olga")  # even the right password waits now
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Too many failed sign-ins for 'olga'")
    expect(alert).to_have_text(re.compile(r"try again in \d+ s\.$"))
    u.shot("signin-rate-limited")


def test_a_viewer_sees_no_actions_and_no_admin_pages(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = teams_server(nagare_factory)
    failed, running = server.trigger("failing"), server.trigger("sleeper")
    u = ui(server)
    page = signed_in(u, "vic")
    assert nav_labels(page) == ["Dashboard", "DAGs", "Runs", "Metrics", "Workers"]
    expect(page.locator("tr[data-dag=sleeper]")).to_be_visible()
    expect(page.locator("[data-action=trigger]")).to_have_count(0)
    expect(page.get_by_role("switch")).to_have_count(0)
    expect(page.locator("tr[data-dag=sleeper] [data-active-state]")).to_have_text("Active")
    expect(page.locator(f"tr[data-run='{running}']")).to_be_visible()
    expect(page.locator("[data-action^=kill], [data-action^=retry]")).to_have_count(0)
    page = u.go("/dags?id=sleeper")
    expect(page.get_by_role("tab", name="Graph")).to_be_visible()
    expect(page.get_by_role("tab", name="YAML")).to_have_count(0)
    actions = "[data-action=trigger], [data-action=backfill], [data-edit-file]"
    expect(page.locator(actions)).to_have_count(0)
    page = u.go("/dags")
    expect(page.locator("tr[data-dag]")).to_have_count(3)
    expect(page.locator("[data-new-dag]")).to_have_count(0)
    page = u.go(f"/runs?id={failed}")
    expect(page.locator("h1 .badge")).to_have_text("failed")
    expect(page.locator("[data-action=retry-run], [data-action=retry]")).to_have_count(0)
    expect(page.locator("[data-task=breaks] [data-log]")).to_contain_text("broken")  # the cookie
    page = u.go(f"/runs?id={running}")
    expect(page.locator("[data-task=nap]")).to_have_attribute("data-status", "running")
    expect(page.get_by_role("button", name=re.compile("Kill"))).to_have_count(0)
    for path in ("/admin", "/audit", "/dags/new"):
        page = u.go(path)
        expect(page.get_by_role("heading", name="Not available to your role")).to_be_visible()
    assert unexpected(u) == []


def test_an_operator_runs_and_kills_but_does_not_edit(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = teams_server(nagare_factory)
    u = ui(server)
    page = signed_in(u, "olga", "/dags?id=sleeper")
    expect(page.get_by_role("tab", name="YAML")).to_have_count(0)
    expect(page.locator("[data-edit-file]")).to_have_count(0)
    assert "Audit" not in nav_labels(page) and "Users & keys" not in nav_labels(page)
    # a write from the UI: the session's CSRF token goes with it
    page.get_by_role("button", name="Trigger sleeper", exact=True).click()
    page.wait_for_url(re.compile(r"/runs\?id=sleeper__manual__"))
    run_id = page.url.split("id=")[1]
    expect(page.locator("[data-task=nap]")).to_have_attribute("data-status", "running")
    page.locator("h1").get_by_role("button", name=re.compile("Kill run")).click()
    page.get_by_role("dialog").get_by_role("button", name="■ Kill run").click()
    expect(page.locator("h1 .badge").first).to_have_text("cancelled")
    page = u.go("/dags")
    expect(page.locator("[data-new-dag]")).to_have_count(0)
    expect(page.get_by_role("switch", name="sleeper active")).to_be_visible()
    assert server.get(f"/api/runs/{run_id}")["status"] == "cancelled"
    # an approval: she answers as herself (no name to type)
    gate = server.trigger("gate")
    page = u.go(f"/runs?id={gate}")
    banner = page.locator("[data-approval=ask]")
    expect(banner.locator("[data-approval-as]")).to_have_text("You answer as olga.")
    expect(banner.locator("[data-approval-by]")).to_have_count(0)
    banner.get_by_role("button", name="✓ Approve").click()
    expect(page.locator("h1 .badge").first).to_have_text("success")
    entries = [(e["actor"], e["action"]) for e in audit(server)]
    for done in ("dag.trigger", "run.kill", "task.approve"):
        assert ("olga", done) in entries, (done, entries)
    assert unexpected(u) == []


def test_a_role_limited_to_some_tags_sees_only_their_dags(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = teams_server(nagare_factory, roles=parse_roles({"operator": {"tags": ["finance"]}}))
    other = server.trigger("failing")
    u = ui(server)
    page = signed_in(u, "olga")
    assert nav_labels(page) == ["Dashboard", "DAGs", "Runs"]  # no pages over every DAG
    expect(page.locator("tr[data-dag]")).to_have_count(1)
    expect(page.locator("tr[data-dag=sleeper] [data-action=trigger]")).to_be_visible()
    expect(page.locator("[data-stat-link]")).to_have_count(0)  # counters cover every DAG
    page.get_by_role("button", name="Trigger sleeper", exact=True).click()
    page.wait_for_url(re.compile(r"/runs\?id=sleeper__manual__"))
    expect(page.locator("[data-task=nap]")).to_have_attribute("data-status", "running")
    page = u.go("/runs")
    expect(page.locator("tr[data-run]")).to_have_count(1)
    expect(page.locator(f"tr[data-run='{other}']")).to_have_count(0)
    page = u.go("/dags")
    expect(page.locator("tr[data-dag]")).to_have_count(1)
    page = u.go("/metrics")
    expect(page.get_by_role("heading", name="Not available to your role")).to_be_visible()
    u.shot("limited-operator")
    assert unexpected(u) == []  # no call of a route over every DAG (403)


def test_a_manager_limited_to_some_tags_has_no_audit_page(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    """The audit log holds every DAG's entries: the API refuses it (403) to a role limited to
    some tags, and the page is not offered."""
    server = teams_server(nagare_factory, roles=parse_roles({"manager": {"tags": ["finance"]}}))
    server.app.accounts.add_user("mona", "manager", PASSWORD, now_ms())
    u = ui(server)
    page = signed_in(u, "mona")
    assert "Audit" not in nav_labels(page)
    page = u.go("/audit")
    expect(page.get_by_role("heading", name="Not available to your role")).to_be_visible()
    assert unexpected(u) == []  # the page never asked /api/audit


def test_key_mode_is_unchanged_but_for_the_audit_page(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server: Nagare = nagare_factory(dags={"failing.yaml": FAILING}, api_key="k3y")
    server.trigger("failing")
    u = ui(server)
    u.page.add_init_script("localStorage.setItem('nagare_api_key', 'k3y')")
    page = u.go("/audit")
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    assert nav_labels(page) == ["Dashboard", "DAGs", "Runs", "Metrics", "Workers", "Audit"]
    expect(page.locator("[data-who]")).to_have_count(0)  # no users: no name, no Sign out
    expect(page.get_by_role("button", name="Disconnect")).to_be_visible()
    row = page.locator("tr[data-audit-action='dag.trigger']")
    expect(row.locator("[data-actor]")).to_have_text("api-key")
    page = u.go("/admin")  # users exist only with auth_mode builtin or oidc
    expect(page.get_by_role("heading", name="No users on this server")).to_be_visible()
    page = u.go("/dags?id=failing")
    expect(page.get_by_role("tab", name="YAML")).to_be_visible()
    expect(page.locator("[data-edit-file]")).to_be_visible()
    assert u.errors == []


def audit(server: Nagare, query: str = "") -> list[dict[str, Any]]:
    return list(server.get("/api/audit" + query)["data"])


def test_csrf_a_signed_in_write_needs_the_session_token(nagare_factory: Any) -> None:
    server = teams_server(nagare_factory)
    headers, csrf = login(server, "olga")
    forged = http("POST", server.url + "/api/dags/failing/runs", {}, headers=headers)
    assert forged.status == 403 and forged.json["error"]["code"] == "forbidden"
    assert "CSRF" in forged.json["error"]["message"]
    wrong = {**headers, "X-CSRF-Token": "not-" + csrf}
    assert http("POST", server.url + "/api/dags/failing/runs", {}, headers=wrong).status == 403
    right = {**headers, "X-CSRF-Token": csrf}
    assert http("POST", server.url + "/api/dags/failing/runs", {}, headers=right).status == 201
    assert http("GET", server.url + "/api/runs", headers=headers).status == 200  # reads need none


def test_admin_creates_a_user_and_a_key_revokes_it_and_audits_it(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = teams_server(nagare_factory)
    u = ui(server, viewport={"width": 1440, "height": 900})
    page = signed_in(u, "ada")
    page.get_by_role("link", name="Users & keys").click()
    users = page.locator("section[data-users]")
    expect(users.locator("tr[data-user]")).to_have_count(4)
    expect(users.locator("tr[data-user=ada]")).to_contain_text("you")

    # add a user: mismatched passwords are caught first, then a taken name by the server
    form = page.locator("form[data-add-user]")
    form.get_by_label("Name").fill("nina")
    form.get_by_label("Role").select_option("operator")
    form.get_by_label("Password", exact=True).fill("first-pass-1")
    form.get_by_label("Password again").fill("other-pass-1")
    form.get_by_role("button", name="Add user").click()
    expect(form.get_by_role("alert")).to_have_text("The two passwords differ.")
    form.get_by_label("Password again").fill("first-pass-1")
    form.get_by_role("button", name="Add user").click()
    expect(users.locator("tr[data-user=nina]")).to_contain_text("operator")
    expect(form.get_by_label("Name")).to_have_value("")
    form.get_by_label("Name").fill("olga")
    form.get_by_label("Password", exact=True).fill("first-pass-1")
    form.get_by_label("Password again").fill("first-pass-1")
    form.get_by_role("button", name="Add user").click()
    expect(form.get_by_role("alert")).to_contain_text("olga")

    # change a role, disable, enable; the last admin cannot be demoted (said inline)
    users.get_by_label("Role of nina").select_option("developer")
    wait_for(lambda: server.app.accounts.user("nina").role == "developer", 10)
    users.get_by_role("button", name="Disable nina").click()
    expect(users.locator("tr[data-user=nina] [data-user-status]")).to_have_text("disabled")
    users.get_by_role("button", name="Enable nina").click()
    expect(users.locator("tr[data-user=nina] [data-user-status]")).to_have_text("enabled")
    users.get_by_label("Role of ada").select_option("viewer")
    expect(users.locator("[data-panel-error]")).to_contain_text("last enabled admin")
    expect(users.get_by_label("Role of ada")).to_have_value("admin")

    # reset a password (twice, in a dialog), then the user signs in with it
    users.get_by_role("button", name="Reset password of nina…").click()
    dialog = page.get_by_role("dialog", name="New password for nina")
    dialog.get_by_label("New password", exact=True).fill("second-pass-2")
    dialog.get_by_label("New password again").fill("second-pass-2")
    dialog.get_by_role("button", name="Set password").click()
    expect(dialog).to_have_count(0)
    assert login_status(server, "nina", "second-pass-2") == 200

    # create an API key: shown once, with Copy and the warning; it works, then it is revoked
    keys = page.locator("section[data-keys]")
    create = page.locator("form[data-create-key]")
    create.get_by_label("Name").fill("ci-deploy")
    create.get_by_label("Role").select_option("operator")
    create.get_by_label("Expires (optional)").fill("2099-12-31")
    create.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("dialog", name="API key ci-deploy created")
    expect(shown).to_contain_text("you will not see it again")
    key = shown.locator("[data-key-value]").input_value()
    assert key.startswith("ngk_")
    shown.get_by_role("button", name="Copy").click()
    expect(shown.locator("[data-copied]")).to_have_text("Copied.")
    for view in ("desktop-light", "phone"):
        if view == "phone":
            page.set_viewport_size({"width": 390, "height": 844})
        u.shot(f"admin-new-key-{view}")
        assert axe_violations(page) == [], view
    page.set_viewport_size({"width": 1440, "height": 900})
    shown.get_by_role("button", name="I have copied it").click()
    expect(shown).to_have_count(0)
    assert key not in page.content()  # never shown again
    row = keys.locator("tr[data-key=ci-deploy]")
    expect(row).to_contain_text(key[:8])
    expect(row.locator("[data-key-status]")).to_have_text("active")
    bearer = {"Authorization": f"Bearer {key}"}
    assert http("GET", server.url + "/api/me", headers=bearer).json["name"] == "key:ci-deploy"
    row.get_by_role("button", name="Revoke key ci-deploy…").click()
    confirm = page.get_by_role("dialog", name="Revoke key ci-deploy?")
    expect(confirm.get_by_role("button", name="Cancel")).to_be_focused()
    confirm.get_by_role("button", name="Revoke key").click()
    expect(row.locator("[data-key-status]")).to_have_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    assert http("GET", server.url + "/api/me", headers=bearer).status == 401

    # delete a user, asked first
    users.get_by_role("button", name="Delete nina…").click()
    asked = page.get_by_role("dialog", name="Delete user nina?")
    asked.get_by_role("button", name="Delete user").click()
    expect(users.locator("tr[data-user=nina]")).to_have_count(0)
    expect(page.locator(".toast")).to_have_count(0, timeout=10_000)  # not over the table
    for theme in ("light", "dark"):
        page.emulate_media(color_scheme=theme)
        u.shot(f"admin-{theme}")
        assert axe_violations(page) == [], theme
    page.set_viewport_size({"width": 390, "height": 844})
    u.shot("admin-phone")
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 1440, "height": 900})
    page.emulate_media(color_scheme="light")

    # the audit page lists those actions, newest first, and filters them
    page.get_by_role("link", name="Audit").click()
    table = page.locator("table[data-audit]")
    expect(table.locator("tr[data-audit-action='user.delete']")).to_have_count(1)
    actions = [r.get_attribute("data-audit-action") for r in table.locator("tr[data-entry]").all()]
    for done in ("user.create", "user.update", "key.create", "key.revoke", "auth.signin"):
        assert done in actions, (done, actions)
    assert actions.index("user.delete") < actions.index("key.revoke") < actions.index("key.create")
    refused = table.locator("tr.not-ok[data-audit-action='user.create']")
    expect(refused).to_have_count(1)  # the taken name
    expect(refused.locator("[data-outcome]")).to_contain_text("conflict")
    page.get_by_label("Action").select_option("key.")
    expect(table.locator("tr[data-entry]")).to_have_count(2)
    expect(table.locator("tr[data-entry] [data-actor]")).to_have_text(["ada", "ada"])
    assert "action=key." in page.url
    page.get_by_label("Outcome").select_option("ok")
    expect(table.locator("tr[data-entry]")).to_have_count(2)
    page.get_by_role("button", name="Clear filters").click()
    page.get_by_label("Actor").fill("nina")  # she signed in once, with her new password
    page.get_by_label("Actor").press("Enter")
    expect(table.locator("tr[data-entry]")).to_have_count(1)
    expect(table.locator("tr[data-entry]")).to_have_attribute("data-audit-action", "auth.signin")
    page.get_by_label("Actor").fill("nobody")
    page.get_by_label("Actor").press("Enter")
    expect(table.locator("tr[data-entry]")).to_have_count(0)
    expect(page.locator("main .empty")).to_have_text("No entries match these filters.")
    page.get_by_label("Actor").fill("ada")
    page.get_by_label("Actor").press("Enter")
    expect(table.locator("tr[data-audit-action='key.create']")).to_have_count(1)
    page.get_by_label("Until").fill("2000-01-01T00:00")
    expect(table.locator("tr[data-entry]")).to_have_count(0)
    page.get_by_role("button", name="Clear filters").click()
    expect(table.locator("tr.not-ok").first).to_be_visible()
    for view, context in VIEWS.items():
        a = ui(server, **context)
        p = signed_in(a, "ada", "/audit")
        expect(p.locator("tr.not-ok").first).to_be_visible()
        a.shot(f"audit-{view}")
        assert axe_violations(p) == [], view
        assert unexpected(a) == []
    assert key not in str(audit(server, "?limit=500"))
    assert unexpected(u, 409) == []  # the taken name, the last admin


def login_status(server: Nagare, name: str, password: str) -> int:
    body = {"name": name, "password": password}
    return http("POST", server.url + "/api/auth/login", body).status
