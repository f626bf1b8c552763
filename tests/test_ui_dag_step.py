"""A `dag` step on the run page, in a real browser (fixtures of test_ui.py): the parent task
links to its child run, the child run's page links back to the step that called it; both
links followed; light, dark and phone, axe clean."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from axe import axe_violations
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("subdag_example.yaml", "subdag_child.yaml")


def test_parent_and_child_runs_link_to_each_other(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={k: (ROOT / "dags" / k).read_text() for k in NAMES})
    run_id = server.trigger("subdag_example")
    assert server.wait_run(run_id)["status"] == "success"
    child_id = server.task(run_id, "load_region")["child_run_id"]
    for theme in ("light", "dark"):
        u = ui(server, color_scheme=theme)
        page = u.go(f"/runs?id={run_id}")
        link = page.get_by_role("link", name="Child run of load_region")
        expect(link).to_have_attribute("data-child-run", child_id)
        expect(page.locator("[data-parent-run]")).to_have_count(0)
        page.wait_for_load_state("networkidle")
        u.shot(f"dag_step_parent_{theme}")
        assert axe_violations(page) == [], theme
        link.click()
        page.wait_for_url(re.compile(r"/runs\?id=subdag_child__"))
        card = page.locator("[data-parent-run]")
        expect(card).to_contain_text("Called by")
        expect(card).to_contain_text(f"in {run_id}")
        expect(page.locator("h1")).to_contain_text(child_id)
        returns = page.get_by_role("region", name=f"Outputs of run {child_id}")
        expect(returns.locator('[data-output="ROWS"] td')).to_have_text("750")
        page.wait_for_load_state("networkidle")
        u.shot(f"dag_step_child_{theme}")
        assert axe_violations(page) == [], theme
        card.get_by_role("link", name="load_region").click()
        page.wait_for_url(re.compile(rf"/runs\?id={re.escape(run_id)}&task=load_region"))
        expect(page.locator("h1")).to_contain_text(run_id)
        expect(page.get_by_role("link", name="Child run of load_default")).to_be_visible()
        assert u.errors == [], u.errors
    phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.go(f"/runs?id={child_id}")
    expect(page.locator("[data-parent-run]")).to_contain_text("Called by")
    page.wait_for_load_state("networkidle")
    phone.shot("dag_step_child_phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
    assert overflow <= 1, overflow
    assert axe_violations(page) == []
    assert phone.errors == []
