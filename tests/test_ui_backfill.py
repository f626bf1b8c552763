"""The Backfill dialog of the DAG page, in a real browser (fixtures of test_ui.py): a date
range, the slots listed (dry run) before anything is created, the slots that have a run shown
as skipped, max_active_runs explained, then the runs created; light, dark and phone, axe clean."""

from __future__ import annotations

from typing import Any

import pytest
from axe import axe_violations
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

DAILY = """\
id: daily
schedule: "0 0 * * *"
timezone: UTC
max_active_runs: 2
tasks:
  - id: t
    command: "true"
"""
MANUAL = """\
id: manual
tasks:
  - id: t
    command: "true"
"""


def test_backfill_dialog_lists_slots_then_creates_them(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"daily.yaml": DAILY, "manual.yaml": MANUAL})
    path = "/api/dags/daily/backfill"
    assert server.call("POST", path, {"start": "2024-01-02", "end": "2024-01-02"}).status == 201
    views = {
        "desktop": {"viewport": {"width": 1440, "height": 900}},
        "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True},
    }
    for view, context in views.items():
        for theme in ("light", "dark"):
            u = ui(server, color_scheme=theme, reduced_motion="reduce", **context)
            page = u.go("/dags?id=daily")
            page.get_by_role("button", name="Backfill daily").click()
            dialog = page.get_by_role("dialog", name="Backfill daily")
            dialog.get_by_label("From").fill("2024-01-01")
            dialog.get_by_label("To").fill("2024-01-05")
            summary = dialog.get_by_test_id("backfill-summary")
            expect(summary).to_contain_text("4 new run(s) of 5 slot(s)")
            expect(summary).to_contain_text("at most 2 active at once")
            rows = dialog.locator("tbody tr")
            expect(rows).to_have_count(5)
            expect(rows.nth(1)).to_contain_text("exists — skipped")
            expect(dialog.get_by_role("button", name="Create 4 run(s)")).to_be_enabled()
            assert server.get("/api/runs?trigger=backfill")["total"] == 1  # nothing created yet
            page.wait_for_load_state("networkidle")
            u.shot(f"backfill_{view}_{theme}")
            assert axe_violations(page) == [], (view, theme)
            # an end before the start: said, nothing to create
            dialog.get_by_label("To").fill("2023-12-01")
            expect(dialog.get_by_role("alert")).to_contain_text("before the start")
            expect(dialog.get_by_role("button", name="Nothing to create")).to_be_disabled()
            dialog.get_by_role("button", name="Cancel").click()
            expect(dialog).to_have_count(0)
            assert u.errors == []

    u = ui(server, viewport={"width": 1440, "height": 900})
    page = u.go("/dags?id=daily")
    page.get_by_role("button", name="Backfill daily").click()
    dialog = page.get_by_role("dialog", name="Backfill daily")
    dialog.get_by_label("From").fill("2024-01-01")
    dialog.get_by_label("To").fill("2024-01-05")
    dialog.get_by_role("button", name="Create 4 run(s)").click()
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("status")).to_contain_text("4 run(s) created, 1 skipped")
    runs = server.get("/api/runs?trigger=backfill&limit=10")["data"]
    assert sorted(r["execution_date"][:10] for r in runs) == [f"2024-01-0{d}" for d in range(1, 6)]
    # a manual DAG has no slots: no Backfill button
    page = u.go("/dags?id=manual")
    expect(page.get_by_role("button", name="Trigger manual", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Backfill manual")).to_have_count(0)
    assert u.errors == []
