"""Git sync on the DAGs page, in a real browser (fixtures of test_ui.py): the synced commit
(sha, subject, times), "Sync now", a failing fetch reported while the DAGs stay; light, dark and
phone, axe clean. The repository is a real local bare one with real commits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from axe import axe_violations
from conftest import wait_for
from test_git_sync import DAG, Remote
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

from nagare.models import GitSyncSettings

pytestmark = pytest.mark.slow

SUBJECT = "Add <script>alert(1)</script> the nightly export"


def test_git_sync_status_on_the_dags_page(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    remote = Remote(tmp_path)
    sha = remote.commit({"export.yaml": DAG.format(name="export")}, SUBJECT)
    settings = GitSyncSettings(url=str(remote.bare), interval_seconds=300, timeout_seconds=20)
    server = nagare_factory(git_sync=settings)
    wait_for(lambda: server.get("/api/dags"), timeout=15)
    views = {
        "desktop": {"viewport": {"width": 1440, "height": 900}},
        "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True},
    }
    for view, context in views.items():
        for theme in ("light", "dark"):
            u = ui(server, color_scheme=theme, **context)
            page = u.go("/dags")
            box = page.get_by_role("region", name="Git sync")
            expect(box.get_by_test_id("gitsync-sha")).to_have_text(sha[:10])
            expect(box).to_contain_text(SUBJECT)  # text, never markup
            assert box.locator("script").count() == 0
            expect(box).to_contain_text("in sync")
            expect(page.locator("table")).to_contain_text("export")
            page.wait_for_load_state("networkidle")
            assert (
                page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
            )
            u.shot(f"gitsync_{view}_{theme}")
            assert axe_violations(page) == [], (view, theme)
            assert u.errors == []

    # a new commit: "Sync now" picks it up; then a broken remote: reported, the DAGs stay
    u = ui(server, viewport={"width": 1440, "height": 900})
    page = u.go("/dags")
    box = page.get_by_role("region", name="Git sync")
    second = remote.commit({"more.yaml": DAG.format(name="more")}, "Add more")
    box.get_by_role("button", name="Sync now").click()
    # (the fetch runs in the git sync loop: seconds on a loaded machine)
    expect(box.get_by_test_id("gitsync-sha")).to_have_text(second[:10], timeout=20_000)
    expect(page.locator("table")).to_contain_text("more", timeout=20_000)
    os.rename(remote.bare, tmp_path / "gone.git")
    box.get_by_role("button", name="Sync now").click()
    expect(box.get_by_test_id("gitsync-error")).to_contain_text(
        "git fetch of branch main", timeout=20_000
    )
    expect(box).to_contain_text("sync failing")
    expect(box.get_by_test_id("gitsync-sha")).to_have_text(second[:10])  # the commit it holds
    expect(page.locator("table")).to_contain_text("more")
    page.wait_for_load_state("networkidle")
    u.shot("gitsync_failing_desktop_light")
    assert axe_violations(page) == []
    for theme in ("dark",):
        d = ui(server, color_scheme=theme, viewport={"width": 390, "height": 844}, is_mobile=True)
        page = d.go("/dags")
        expect(page.get_by_test_id("gitsync-error")).to_be_visible()
        u.shot("gitsync_failing_phone_dark")
        d.shot("gitsync_failing_phone_dark")
        assert axe_violations(page) == []


def test_no_git_sync_no_panel(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    server = nagare_factory(dags={"a.yaml": DAG.format(name="a")})
    u = ui(server)
    page = u.go("/dags")
    expect(page.locator("table")).to_contain_text("a")
    page.wait_for_load_state("networkidle")
    expect(page.get_by_role("region", name="Git sync")).to_have_count(0)
