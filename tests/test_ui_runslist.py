"""The runs list and the pages around it in a real browser (fixtures of test_ui.py): search by
run id and filters for state, trigger and tag kept in the URL (reload, Back, a pasted link),
run-level Retry, toasts that leave row buttons free, stacked cards and a reachable nav on a
phone, graphs at a readable size, an unknown run that stops polling, labelled pause switches,
stat cards that open the filtered lists, and the API-key gate without a clickable nav."""

from __future__ import annotations

import colorsys
import re
from typing import Any

import pytest
from axe import axe_violations
from conftest import wait_for
from test_ui import DESKTOP, FAILING, MAP, NIGHTLY, PHONE, browser, expect, ui  # noqa: F401

pytestmark = pytest.mark.slow

CHAIN = """
id: chain
schedule: "workflow_dispatch"
tasks:
  - id: step_0
    command: echo 0
""" + "".join(
    f"  - id: step_{i}\n    command: echo {i}\n    depends_on: [step_{i - 1}]\n"
    for i in range(1, 7)
)

HUE = """(sel) => {
    const el = document.querySelector(sel);
    const m = getComputedStyle(el).color.match(/[0-9.]+/g).map(Number);
    return m.slice(0, 3);
}"""


def hue(rgb: list[float]) -> float:
    h, _, _ = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    return h * 360


def hue_gap(a: list[float], b: list[float]) -> float:
    d = abs(hue(a) - hue(b)) % 360
    return min(d, 360 - d)


def test_runs_list_search_filters_in_the_url_retry_and_toasts(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"failing.yaml": FAILING, "map.yaml": MAP})
    failed = server.trigger("failing")
    ok = server.trigger("map_reduce")
    assert server.wait_run(failed)["status"] == "failed"
    assert server.wait_run(ok)["status"] == "success"
    u = ui(server, viewport=DESKTOP)
    page = u.go("/runs")
    rows = page.locator("tr[data-run]")
    expect(rows).to_have_count(2)
    # search by run id: in the URL, restored by a reload
    page.get_by_label("Run id").fill(failed[-8:])
    page.wait_for_url(re.compile(r"[?&]q="))
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-run="{failed}"]')).to_be_visible()
    page.reload()
    expect(page.get_by_label("Run id")).to_have_value(failed[-8:])
    expect(rows).to_have_count(1)
    page.get_by_role("button", name="Clear filters").click()
    expect(rows).to_have_count(2)
    # state, trigger and tag filters each push a history entry
    page.get_by_label("State").select_option("success")
    expect(rows).to_have_count(1)
    expect(page.locator(f'tr[data-run="{ok}"]')).to_be_visible()
    page.get_by_label("Tag").select_option("demo")
    page.wait_for_url(re.compile(r"tag=demo"))
    expect(rows).to_have_count(0)
    expect(page.get_by_text("No runs found")).to_be_visible()
    page.go_back()
    page.wait_for_url(re.compile(r"/runs\?status=success$"))
    expect(page.get_by_label("Tag")).to_have_value("")
    expect(rows).to_have_count(1)
    # a pasted link restores every filter
    page = u.go("/runs?tag=demo&trigger=manual&status=failed")
    expect(page.get_by_label("Tag")).to_have_value("demo")
    expect(page.get_by_label("Trigger")).to_have_value("manual")
    expect(page.get_by_label("State")).to_have_value("failed")
    expect(rows).to_have_count(1)
    page.wait_for_load_state("networkidle")
    u.shot("runs_list_filtered_light_1440")
    assert axe_violations(page) == []
    # run-level Retry; its toast leaves every row button clickable
    page = u.go("/runs")
    retry = page.get_by_role("button", name=f"Retry run {failed}")
    retry.click()
    expect(page.locator(".toast")).to_contain_text(failed)
    wait_for(lambda: server.task(failed, "breaks")["attempt"] == 2, 10, message="retried")
    covered = page.evaluate(
        """() => [...document.querySelectorAll("main button")].filter((b) => {
            const r = b.getBoundingClientRect();
            if (!r.width) return false;
            return [...document.querySelectorAll(".toast")].some((t) => {
                const q = t.getBoundingClientRect();
                return r.left < q.right && q.left < r.right && r.top < q.bottom && q.top < r.bottom;
            });
        }).map((b) => b.textContent)"""
    )
    assert covered == []
    assert page.evaluate("getComputedStyle(document.querySelector('.toasts')).pointerEvents") == (
        "none"
    )
    # "failed" and "upstream failed" are clearly different colours, in both themes
    for theme in ("light", "dark"):
        t = ui(server, viewport=DESKTOP, color_scheme=theme)
        page = t.go(f"/runs?id={failed}")
        expect(page.locator('[data-task="never"] .badge.st-upstream_failed')).to_be_visible()
        red = page.evaluate(HUE, '[data-task="breaks"] .badge.st-failed')
        upstream = page.evaluate(HUE, '[data-task="never"] .badge.st-upstream_failed')
        assert hue_gap(red, upstream) >= 45, (theme, red, upstream)
        page = t.go("/runs?status=failed")
        expect(page.locator("tr[data-run]")).to_have_count(1)
        page.wait_for_load_state("networkidle")
        t.shot(f"runs_list_{theme}_1440")
        assert axe_violations(page) == [], theme
        assert t.errors == []
    assert u.errors == []


def test_phone_cards_nav_and_readable_graph(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(
        dags={"failing.yaml": FAILING, "chain.yaml": CHAIN, "nightly.yaml": NIGHTLY}
    )
    failed = server.trigger("failing")
    server.wait_run(failed)
    for theme in ("light", "dark"):
        u = ui(server, viewport=PHONE, is_mobile=True, color_scheme=theme)
        page = u.go("/runs")
        # every nav tab is inside the screen (none scrolled off)
        for label in ("Dashboard", "DAGs", "Runs", "Metrics", "Workers"):
            box = (
                page.get_by_role("navigation", name="Main")
                .get_by_role("link", name=label)
                .bounding_box()
            )
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], label
        # a run is a card: its actions come first, next to its id, above its details
        row = page.locator(f'tr[data-run="{failed}"]')
        expect(row).to_be_visible()
        assert row.evaluate("(r) => getComputedStyle(r).display") == "grid"
        action = row.get_by_role("button", name=f"Retry run {failed}").bounding_box()
        status = row.locator(".badge.st-failed").bounding_box()
        assert action and status and action["y"] < status["y"]
        assert action["x"] + action["width"] <= PHONE["width"]
        page.wait_for_load_state("networkidle")
        u.shot(f"runs_list_{theme}_390")
        assert page.evaluate("document.documentElement.scrollWidth - innerWidth") <= 1
        assert axe_violations(page) == [], theme
        page = u.go("/dags")
        card = page.locator('tr[data-dag="chain"]')
        trigger = card.get_by_role("button", name="Trigger chain", exact=True).bounding_box()
        schedule = card.locator('[data-label="Schedule"]').bounding_box()
        assert trigger and schedule and trigger["y"] < schedule["y"]
        expect(page.locator('tr[data-dag="nightly"] .switch-label')).to_contain_text("Active")
        page.wait_for_load_state("networkidle")
        u.shot(f"dags_list_{theme}_390")
        assert page.evaluate("document.documentElement.scrollWidth - innerWidth") <= 1
        assert axe_violations(page) == [], theme
        # a wide graph keeps a readable scale and scrolls sideways inside its panel
        page = u.go("/dags?id=chain")
        svg = page.locator(".graph svg").first
        expect(svg).to_be_visible()
        scale = svg.evaluate("(s) => s.getScreenCTM().a")
        assert scale >= 0.8, scale
        assert page.locator(".graph").first.evaluate("(g) => g.scrollWidth > g.clientWidth")
        assert page.evaluate("document.documentElement.scrollWidth - innerWidth") <= 1
        page.wait_for_load_state("networkidle")
        u.shot(f"dag_graph_{theme}_390")
        assert u.errors == []


def test_dashboard_cards_pause_label_paused_trigger_and_unknown_run(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"failing.yaml": FAILING, "nightly.yaml": NIGHTLY})
    failed = server.trigger("failing")
    server.wait_run(failed)
    u = ui(server, viewport=DESKTOP)
    page = u.go("/")
    # the pause switch has a visible label, a manual-only DAG has a note instead
    expect(page.locator('tr[data-dag="nightly"] .switch-label')).to_contain_text("Active")
    expect(page.locator('tr[data-dag="failing"] [data-manual-only]')).to_be_visible()
    expect(page.locator('tr[data-dag="failing"] [role="switch"]')).to_have_count(0)
    # stat cards open the lists they count
    expect(page.locator('[data-stat="Failed runs (24 h)"]')).to_have_text("1")
    page.get_by_role("link", name=re.compile("Failed runs")).click()
    page.wait_for_url(re.compile(r"/runs\?status=failed$"))
    expect(page.get_by_label("State")).to_have_value("failed")
    expect(page.locator("tr[data-run]")).to_have_count(1)
    page.go_back()
    page.get_by_role("link", name=re.compile("Loaded DAGs")).click()
    page.wait_for_url(re.compile(r"/dags$"))
    # triggering a paused DAG says the manual run starts anyway
    page.get_by_role("switch", name="nightly active").click()
    wait_for(lambda: server.get("/api/dags/nightly")["paused"], 5, message="paused")
    expect(page.locator('tr[data-dag="nightly"] .switch-label')).to_contain_text("Paused")
    page.get_by_role("button", name="Trigger nightly", exact=True).click()
    expect(page.locator(".toast").last).to_contain_text("nightly is paused")
    page.wait_for_url(re.compile(r"/runs\?id=nightly__"))
    # an unknown run: one 404, then no more requests
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/runs/nope" in r.url else None)
    page = u.go("/runs?id=nope")
    expect(page.get_by_role("alert")).to_contain_text("nope")
    page.wait_for_timeout(2500)
    assert len(asked) <= 2, asked  # the run and its tasks, asked once
    errors = [e for e in u.errors if "404" not in e]
    assert errors == []


def test_the_gate_leaves_no_clickable_nav(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"nightly.yaml": NIGHTLY}, api_key="k3y")
    for theme, size in (("light", DESKTOP), ("dark", PHONE)):
        u = ui(server, viewport=size, color_scheme=theme)
        page = u.go("/runs")
        expect(page.get_by_label("API key")).to_be_visible()
        expect(page.get_by_role("navigation", name="Main")).to_have_count(0)
        expect(page.get_by_role("link", name="Workers")).to_have_count(0)
        page.wait_for_load_state("networkidle")
        u.shot(f"gate_{theme}_{size['width']}")
        assert axe_violations(page) == [], theme
        page.get_by_label("API key").fill("k3y")
        page.get_by_role("button", name="Connect").click()
        expect(page.get_by_role("navigation", name="Main")).to_be_visible()
        expect(page.locator("main h1")).to_have_text("Runs")


def test_a_dag_page_s_run_history_filters_are_in_the_url(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    """Defect 5 on the DAG page: its run history's status filter and page survive a reload,
    and Back undoes a filter."""
    server = nagare_factory(dags={"failing.yaml": FAILING})
    runs = [server.trigger("failing") for _ in range(2)]
    for run_id in runs:
        server.wait_run(run_id)
    u = ui(server, viewport=DESKTOP)
    page = u.go("/dags?id=failing")
    history = page.locator("tr[data-run]")
    expect(history).to_have_count(2)
    page.get_by_label("Filter by status").select_option("success")
    expect(page).to_have_url(re.compile(r"/dags\?id=failing&status=success$"))
    expect(page.get_by_text("No runs found")).to_be_visible()
    page.reload()
    expect(page.get_by_label("Filter by status")).to_have_value("success")
    expect(page.get_by_text("No runs found")).to_be_visible()
    page.go_back()
    expect(page).to_have_url(re.compile(r"/dags\?id=failing$"))
    expect(history).to_have_count(2)
    assert u.errors == []
