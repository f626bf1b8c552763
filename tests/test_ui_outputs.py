"""Outputs on the run page, in a real browser (fixtures of test_ui.py): a task's published
values in an Outputs section (a map parent's as lists), light, dark and phone, axe clean."""

from __future__ import annotations

from typing import Any

import pytest
from axe import axe_violations
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

DAG = """
id: published
schedule: "workflow_dispatch"
tasks:
  - id: extract
    command: |
      echo "ROWS=1200" >> "$NAGARE_OUTPUT"
      echo "SOURCE=s3://bucket/orders/2026-12-06.csv" >> "$NAGARE_OUTPUT"
      printf 'SUMMARY<<EOF\\nfirst line\\nwith <b>markup</b>\\nEOF\\n' >> "$NAGARE_OUTPUT"
  - id: regions
    depends_on: [extract]
    output: REGIONS
    command: echo '["eu", "us", "apac"]'
  - id: per_region
    type: map
    map_over: regions
    command: echo "TOTAL=${#NAGARE_MAP_ITEM}0" >> "$NAGARE_OUTPUT"
  - id: reduce
    depends_on: [per_region]
    command: echo "sum {{ .tasks.per_region.outputs.TOTAL | map(tonumber) | add }}"
"""


def test_outputs_on_the_run_page_light_dark_phone_and_axe_clean(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"published.yaml": DAG})
    run_id = server.trigger("published")
    assert server.wait_run(run_id)["status"] == "success"
    for theme in ("light", "dark"):
        u = ui(server, color_scheme=theme)
        page = u.go(f"/runs?id={run_id}")
        row = page.locator('[data-task="extract"]')
        expect(row.locator("[data-output-count]")).to_have_text("3 outputs")
        row.get_by_role("button", name="Show log of extract").click()
        section = page.get_by_role("region", name="Outputs of extract")
        expect(section.locator('[data-output="ROWS"] td')).to_have_text("1200")
        expect(section.locator('[data-output="SUMMARY"] td')).to_have_text(
            "first line\nwith <b>markup</b>"
        )
        assert section.locator("b").count() == 0  # values are text, never markup
        parent = page.locator('[data-task="per_region"]')
        expect(parent.locator("[data-output-count]")).to_have_text("1 output")
        parent.get_by_role("button", name="Show log of per_region").click()
        values = page.get_by_role("region", name="Outputs of per_region")
        expect(values).to_contain_text("one value per map child")
        expect(values.locator('[data-output="TOTAL"] td')).to_contain_text('"20"')
        expect(page.locator('[data-task="reduce"] [data-output-count]')).to_have_count(0)
        page.wait_for_load_state("networkidle")
        u.shot(f"outputs_{theme}")
        assert axe_violations(page) == [], theme
        assert u.errors == [], u.errors
    phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.go(f"/runs?id={run_id}")
    page.locator('[data-task="extract"]').get_by_role("button", name="Show log of extract").click()
    expect(page.get_by_role("region", name="Outputs of extract")).to_be_visible()
    page.wait_for_load_state("networkidle")
    phone.shot("outputs_phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
    assert overflow <= 1, overflow
    assert axe_violations(page) == []
    assert phone.errors == []
