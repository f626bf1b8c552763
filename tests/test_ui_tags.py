"""The DAG list's tag filter and a run's handlers in a real browser (Playwright driving Debian's
Chromium): light, dark and phone screenshots (under the test's tmp folder, `screenshots/`) and
no critical or serious axe-core violation."""

from __future__ import annotations

from typing import Any

import pytest
from axe import axe_violations
from conftest import Nagare, wait_for
from test_ui import browser, expect, ui  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

DAGS = {
    "ledger.yaml": """\
        id: ledger
        description: "books the day"
        tags: [finance, nightly]
        tasks: [{id: book, command: "true"}]
        """,
    "backup.yaml": """\
        id: backup
        description: "copies the disks"
        tags: [nightly, ops]
        tasks: [{id: copy, command: "true"}]
        """,
    "adhoc.yaml": """\
        id: adhoc
        tasks: [{id: once, command: "true"}]
        """,
    "cleanup.yaml": """\
        id: cleanup
        description: "fails, then its handlers clean up"
        tags: [ops]
        handler_on:
          failure: {command: 'echo "telling on-call: $NAGARE_FAILED_TASKS failed"'}
          exit: {command: 'echo "removing temporary files"'}
        tasks:
          - {id: fetch, command: "echo fetching"}
          - {id: load, depends_on: [fetch], command: "echo loading; exit 4"}
        """,
}


def shown_dags(page: Any) -> list[str]:
    return [r.get_attribute("data-dag") for r in page.locator("tr[data-dag]").all()]


def test_tag_filter_on_the_dag_list(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    server: Nagare = nagare_factory(dags=DAGS)
    for theme in ("light", "dark"):
        u = ui(server, color_scheme=theme)
        page = u.go("/dags")
        expect(page.locator("tr[data-dag]")).to_have_count(4)
        filters = page.get_by_role("group", name="Filter by tag")
        assert [b.inner_text() for b in filters.get_by_role("button").all()] == [
            "finance",
            "nightly",
            "ops",
        ]
        expect(page.locator("tr[data-dag=ledger] .tag")).to_have_text(["finance", "nightly"])
        filters.get_by_role("button", name="finance").click()
        expect(page.locator("tr[data-dag]")).to_have_count(1)
        assert shown_dags(page) == ["ledger"]
        assert page.url.endswith("/dags?tag=finance")
        filters.get_by_role("button", name="ops").click()  # any of the chosen tags
        expect(page.locator("tr[data-dag]")).to_have_count(3)
        assert shown_dags(page) == ["backup", "cleanup", "ledger"]
        expect(filters.get_by_role("button", name="ops")).to_have_attribute("aria-pressed", "true")
        u.shot(f"dags-tag-filter-{theme}")
        assert axe_violations(page) == []
        page.get_by_role("button", name="Clear").click()
        expect(page.locator("tr[data-dag]")).to_have_count(4)
        assert u.errors == []
    phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.go("/dags?tag=nightly")  # the filter survives a reload (it is in the URL)
    expect(page.locator("tr[data-dag]")).to_have_count(2)
    phone.shot("dags-tag-filter-phone")
    assert axe_violations(page) == []
    assert phone.errors == []


def test_handlers_on_the_run_page(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    server: Nagare = nagare_factory(dags=DAGS)
    run_id = server.trigger("cleanup")
    wait_for(lambda: server.tasks(run_id).get("on_exit", {}).get("status") == "success", 15)
    for theme in ("light", "dark"):
        u = ui(server, color_scheme=theme)
        page = u.go(f"/runs?id={run_id}")
        panel = page.locator("section[data-handlers]")
        expect(panel.get_by_role("heading", name="Handlers")).to_be_visible()
        expect(panel).to_contain_text("Run after the run ended failed")
        expect(panel.locator("#task-on_failure")).to_contain_text("success")
        expect(panel.locator("#task-on_exit")).to_contain_text("success")
        expect(page.locator("h1 .badge")).to_have_text("failed")  # the run's own status
        panel.get_by_role("button", name="Show log of on_failure").click()
        expect(panel).to_contain_text("telling on-call: load failed")
        u.shot(f"run-handlers-{theme}")
        assert axe_violations(page) == []
        assert u.errors == []
    phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.go(f"/runs?id={run_id}&task=on_exit")
    expect(page.locator("section[data-handlers]")).to_contain_text("removing temporary files")
    phone.shot("run-handlers-phone")
    assert axe_violations(page) == []
    assert phone.errors == []


def test_a_run_a_rule_ended_shows_why(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    latest = "id: report\nmax_active_runs: 1\noverlap_policy: latest\n"
    latest += "tasks: [{id: build, command: 'sleep 0.5'}]\n"
    server: Nagare = nagare_factory(dags={"report.yaml": latest})
    first, superseded, last = (server.trigger("report") for _ in range(3))
    server.wait_run(last, 15)
    u = ui(server)
    page = u.go(f"/runs?id={superseded}")
    expect(page.locator("[data-reason]")).to_have_text("Cancelled: superseded")
    expect(page.locator("h1 .badge")).to_have_text("cancelled")
    expect(page.locator("[data-action=retry]")).to_have_count(0)  # it never started
    u.shot("run-superseded-light")
    assert axe_violations(page) == []
    page = u.go("/runs")
    expect(page.locator(f"tr[data-run='{first}']")).to_contain_text("success")
    assert u.errors == []
