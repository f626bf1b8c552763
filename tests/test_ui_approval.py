"""Steps that wait on the run page and the runs list, in a real browser (fixtures of
test_ui.py): the approval banner (message, who may answer, Approve / Reject with a comment), a
waiting event's name, the "Waiting for approval" filter; light, dark and phone, axe clean."""

from __future__ import annotations

from typing import Any

import pytest
from axe import axe_violations
from test_approval_wait import waiting
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

RELEASE = """
id: release
schedule: "workflow_dispatch"
tasks:
  - id: build
    command: echo built
  - id: go_live
    type: approval
    depends_on: [build]
    message: "Ship <b>v2</b> to production? The change freeze ends on Friday."
    approvers: [alice, bob]
    timeout_seconds: 86400
  - id: ship
    depends_on: [go_live]
    command: echo shipped
"""
LISTEN = """
id: listen
schedule: "workflow_dispatch"
tasks:
  - id: upload
    type: wait
    event: "upload-{{ .run.id }}"
"""


def test_approve_from_the_run_page_and_filter_the_runs_list(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"release.yaml": RELEASE, "listen.yaml": LISTEN})
    listening = server.trigger("listen")
    runs = {theme: server.trigger("release") for theme in ("light", "dark")}
    waiting(server, listening, "upload")
    for run_id in runs.values():
        waiting(server, run_id, "go_live")
    for theme, run_id in runs.items():
        u = ui(server, color_scheme=theme, reduced_motion="reduce")  # (no pulsing badge)
        page = u.go(f"/runs?id={run_id}")
        banner = page.get_by_role("region", name="Waiting for approval · go_live")
        expect(banner.locator("[data-approval-message]")).to_have_text(
            "Ship <b>v2</b> to production? The change freeze ends on Friday."
        )
        assert banner.locator("b").count() == 0  # text, never markup
        expect(banner).to_contain_text("Only alice, bob may answer.")
        expect(page.locator('[data-task="go_live"] [data-status]')).to_have_count(0)
        expect(page.locator('[data-task="go_live"]')).to_have_attribute("data-status", "waiting")
        page.wait_for_load_state("networkidle")
        u.shot(f"approval_banner_{theme}")
        assert axe_violations(page) == [], theme
        banner.get_by_label("Your name").fill("mallory")
        banner.get_by_role("button", name="✓ Approve").click()
        expect(banner.get_by_role("alert")).to_contain_text("'mallory' may not answer")
        banner.get_by_label("Your name").fill("alice")
        banner.get_by_label("Comment (optional)").fill(f"fine in {theme}")
        banner.get_by_role("button", name="✓ Approve").click()
        expect(page.locator("[data-approval]")).to_have_count(0)
        expect(page.locator('[data-task="go_live"]')).to_have_attribute("data-status", "success")
        assert server.task(run_id, "go_live")["outputs"]["comment"] == f"fine in {theme}"
        refused = [e for e in u.errors if "status of 403" not in e]  # (mallory, on purpose)
        assert refused == [], u.errors
        # a waiting event shows its name
        page = u.go(f"/runs?id={listening}")
        expect(page.locator('[data-task="upload"] [data-waiting-event]')).to_have_text(
            f"event upload-{listening}"
        )
        page.wait_for_load_state("networkidle")
        u.shot(f"waiting_event_{theme}")
        assert axe_violations(page) == [], theme
    for run_id in runs.values():
        assert server.wait_run(run_id)["status"] == "success"
    asking = server.trigger("release")
    waiting(server, asking, "go_live")
    u = ui(server, reduced_motion="reduce")
    page = u.go("/runs")
    expect(page.locator("tr[data-run]")).to_have_count(4)
    page.get_by_label("Waiting for approval").check()
    expect(page.locator("tr[data-run]")).to_have_count(1)
    expect(page.locator(f'tr[data-run="{asking}"] [data-waiting-count]')).to_have_text("1 waiting")
    assert page.url.endswith("/runs?waiting=approval")
    page.wait_for_load_state("networkidle")
    u.shot("runs_waiting_for_approval")
    assert axe_violations(page) == []
    page = u.go("/runs?waiting=approval")  # a link to what needs an answer
    expect(page.get_by_label("Waiting for approval")).to_be_checked()
    expect(page.locator("tr[data-run]")).to_have_count(1)
    phone = ui(
        server, viewport={"width": 390, "height": 844}, is_mobile=True, reduced_motion="reduce"
    )
    page = phone.go(f"/runs?id={asking}")
    banner = page.get_by_role("region", name="Waiting for approval · go_live")
    expect(banner).to_be_visible()
    page.wait_for_load_state("networkidle")
    phone.shot("approval_banner_phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
    assert overflow <= 1, overflow
    assert axe_violations(page) == []
    banner.get_by_label("Your name").fill("bob")
    banner.get_by_role("button", name="✕ Reject").click()
    expect(page.locator('[data-task="go_live"]')).to_have_attribute("data-status", "failed")
    assert phone.errors == []
