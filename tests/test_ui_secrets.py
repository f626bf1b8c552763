"""Secrets and run-level retry in the dashboard, in a real browser: a secret printed by a task
shows as ***** in the live log and the task row, never its value; a failed run offers
"Retry failed", which re-runs its failed tasks in the same run. Light, dark and phone
screenshots; axe-core finds no critical or serious violation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from axe import axe_violations
from conftest import Nagare
from test_ui import UI, browser, expect, ui

__all__ = ["browser", "ui"]  # the fixtures of test_ui

pytestmark = pytest.mark.slow

VALUE = "ui-s3cret-Value-77"
DAG = """
id: vault
schedule: workflow_dispatch
secrets: [{{name: PW, env: UI_SRC_PW}}]
tasks:
  - id: connect
    command: echo "connecting with $PW"
  - id: flaky
    depends_on: [connect]
    command: 'test -e {marker} || {{ echo "no marker, pw $PW"; exit 3; }}'
  - id: after
    depends_on: [flaky]
    command: echo after
"""


def test_a_secret_is_masked_in_the_ui_and_a_failed_run_is_retried_from_it(
    nagare_factory: Callable[..., Nagare],
    ui: Callable[..., UI],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("UI_SRC_PW", VALUE)
    marker = tmp_path / "marker"
    server = nagare_factory(dags={"vault.yaml": DAG.format(marker=marker)})
    run_id = server.trigger("vault")
    assert server.wait_run(run_id)["status"] == "failed"
    for theme in ("light", "dark"):
        u = ui(server, color_scheme=theme)
        page = u.go(f"/runs?id={run_id}")
        flaky = page.locator("[data-task=flaky]")
        expect(flaky).to_have_attribute("data-status", "failed")
        # (a failed task's log opens by itself)
        expect(flaky.locator("[data-log]")).to_contain_text("no marker, pw *****")
        connect = page.locator("[data-task=connect]")
        connect.get_by_role("button", name="Show log of connect").click()
        expect(connect.locator("[data-log]")).to_contain_text("connecting with *****")
        expect(page.locator("[data-action=retry-run]")).to_be_visible()
        assert VALUE not in page.content()
        u.shot(f"secret_masked_{theme}")
        assert axe_violations(page) == []
        assert u.errors == []
    phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.go(f"/runs?id={run_id}")
    expect(page.locator("[data-action=retry-run]")).to_be_visible()
    phone.shot("secret_masked_phone")
    assert page.evaluate("document.documentElement.scrollWidth - innerWidth") <= 1
    # retry the failed run from the page: same run, new attempts, now successful
    marker.touch()
    page.locator("[data-action=retry-run]").click()
    expect(page.locator("h1 .badge")).to_have_text("success")
    expect(page.locator("[data-task=flaky]")).to_contain_text("attempt 2")
    expect(page.locator("[data-action=retry-run]")).to_have_count(0)
    phone.shot("run_retried_phone")
    assert server.get(f"/api/runs/{run_id}/tasks/after")["status"] == "success"
    assert VALUE not in page.content()
    assert phone.errors == []
