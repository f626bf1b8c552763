"""The Metrics page in a real browser (fixtures of test_ui.py), over history planted at known
times (tests/planting.py): every DAG's success, worst first, at run and attempt level; charts of
the API's buckets over the whole window (1 h and 30 d differ); unmeasured memory shown as "—";
the window and the DAG in the URL (reload, Back, a pasted link); light, dark and phone, axe
clean."""

from __future__ import annotations

import re
from typing import Any

import pytest
from axe import axe_violations
from planting import DAY, HOUR, MINUTE, Attempt, plant_run
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

from nagare.clock import now_ms

pytestmark = pytest.mark.slow

BUSY = [f"busy_{n}" for n in range(9)]  # more than the 8 the page used to show
DAGS = [*BUSY, "rare_failing", "flaky", "gate"]
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}
DESKTOP = {"viewport": {"width": 1440, "height": 900}}


def dag_file(dag_id: str) -> str:
    return f'id: {dag_id}\nschedule: "workflow_dispatch"\ntasks:\n  - id: t\n    command: "true"\n'


def plant_history(server: Any) -> int:
    """Busy DAGs that always succeed, a rarely run DAG that fails, a DAG whose every run
    succeeded after a retry (attempts 50 %, runs 100 %), a step that measures no memory; and
    older history that only the 30-day window holds."""
    store, now = server.app.store, now_ms()
    for number, dag_id in enumerate(BUSY):
        for k in range(5):
            at = now - (2 + number + 3 * k) * MINUTE
            plant_run(store, dag_id, at - 2000, [Attempt("t", at, duration_ms=1500 + 100 * k)])
    failed = Attempt("t", now - 40 * MINUTE, status="failed", exit_code=1)
    plant_run(store, "rare_failing", now - 41 * MINUTE, [failed], "failed")
    for at in (now - 10 * MINUTE, now - 25 * MINUTE, now - 3 * DAY, now - 20 * DAY):
        attempts = [
            Attempt("t", at - MINUTE, status="failed", exit_code=1, memory=50_000_000),
            Attempt("t", at, attempt=2, duration_ms=9_000, memory=80_000_000),
        ]
        plant_run(store, "flaky", at - 2 * MINUTE, attempts)
    unmeasured = Attempt("ask", now - 5 * MINUTE, memory=0, cpu_user_ms=0)  # (an approval)
    plant_run(store, "gate", now - 6 * MINUTE, [unmeasured])
    for days in (2, 5, 9, 14, 27):
        at = now - days * DAY - 3 * HOUR
        plant_run(store, "busy_0", at - 1000, [Attempt("t", at, duration_ms=400 * days)])
    return now


def axis(page: Any, title: str) -> tuple[int, int, int]:
    """A chart's x range (seconds) and its number of bars, once drawn."""
    chart = page.locator(f'[data-chart="{title}"]')
    expect(chart).to_have_attribute("data-bars", re.compile(r"^[0-9]+$"))
    lo, hi, bars = (chart.get_attribute(a) for a in ("data-x-min", "data-x-max", "data-bars"))
    return int(lo or 0), int(hi or 0), int(bars or 0)


def test_metrics_success_by_dag_charts_over_the_window_and_state_in_the_url(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={f"{d}.yaml": dag_file(d) for d in DAGS})
    now = plant_history(server) // 1000
    u = ui(server, **DESKTOP)
    page = u.go("/metrics?since=1h")
    expect(page.get_by_role("button", name="1h")).to_have_attribute("aria-pressed", "true")
    # every DAG, worst first: runs first, then attempts
    rows = page.locator("[data-success-dag]")
    expect(rows).to_have_count(len(DAGS))
    order = rows.evaluate_all("rs => rs.map(r => r.dataset.successDag)")
    assert order[0] == "rare_failing", order
    assert order.index("flaky") < order.index("busy_0"), order  # 100 % runs, 50 % attempts
    flaky = page.locator('[data-success-dag="flaky"]')
    expect(flaky.locator('[data-rate="runs"]')).to_contain_text("100.0% 2/2")
    expect(flaky.locator('[data-rate="attempts"]')).to_contain_text("50.0% 2/4")
    expect(page.locator('[data-stat="runs"]')).to_have_text(str(len(BUSY) * 5 + 4))
    # the charts: the API's 1-minute buckets over the whole hour, p50/p95 as bars
    expect(page.locator("[data-chart] canvas")).to_have_count(4)
    lo, hi, hour_bars = axis(page, "Task duration")
    assert lo <= now - 3600 and now <= hi <= now + 60, (lo, hi, now)  # whole 1-minute buckets
    assert 3600 <= hi - lo <= 3720, (lo, hi)
    assert 10 <= hour_bars <= 61, hour_bars
    legend = page.locator('[data-chart="Task duration"] .u-legend')
    expect(legend).to_contain_text("p50")
    expect(legend).to_contain_text("p95")
    # unmeasured memory is "—", never "0 B"
    expect(page.locator('[data-recent="ask"] [data-memory]')).to_have_text("—")
    assert "0 B" not in page.locator("main").inner_text()
    page.wait_for_load_state("networkidle")
    u.shot("metrics_1h_light")
    assert axe_violations(page) == []
    # 30 days: another axis, 6-hour buckets, the older history drawn too
    page.get_by_role("button", name="30d").click()
    page.wait_for_url(re.compile(r"/metrics\?since=30d$"))
    expect(page.get_by_role("button", name="30d")).to_have_attribute("aria-pressed", "true")
    expect(page.locator('[data-chart="Task duration"]')).not_to_have_attribute(
        "data-x-min", str(lo)
    )
    lo30, hi30, month_bars = axis(page, "Task duration")
    assert lo30 <= now - 30 * DAY // 1000 and now <= hi30 <= now + 6 * 3600, (lo30, hi30, now)
    assert hi30 - lo30 <= (30 * DAY + 12 * HOUR) // 1000, (lo30, hi30)
    assert month_bars >= 7 and month_bars != hour_bars, (hour_bars, month_bars)
    expect(page.locator('[data-success-dag="flaky"] [data-rate="runs"]')).to_contain_text("4/4")
    # the selected DAG goes into the URL; Back and a reload restore each state
    page.get_by_label("DAG filter").select_option("flaky")
    page.wait_for_url(re.compile(r"/metrics\?since=30d&dag=flaky$"))
    expect(rows).to_have_count(1)
    expect(page.locator('[data-stat="runs"]')).to_have_text("4")
    expect(page.locator('[data-stat="run-success"]')).to_have_text("100.0%")
    expect(page.locator('[data-stat="attempt-success"]')).to_have_text("50.0%")
    expect(page.locator('[data-stat="memory"]')).to_have_text("76.3 MB")
    page.reload()
    expect(page.get_by_label("DAG filter")).to_have_value("flaky")
    expect(page.get_by_role("button", name="30d")).to_have_attribute("aria-pressed", "true")
    page.go_back()
    page.wait_for_url(re.compile(r"/metrics\?since=30d$"))
    expect(page.get_by_label("DAG filter")).to_have_value("")
    expect(rows).to_have_count(len(DAGS))
    page.go_back()
    page.wait_for_url(re.compile(r"/metrics\?since=1h$"))
    expect(page.get_by_role("button", name="1h")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function(
        """() => { const c = document.querySelector('[data-chart="Task duration"]');
            return c && c.dataset.xMax - c.dataset.xMin <= 3720; }"""
    )
    assert u.errors == [], u.errors
    # a pasted link, dark and phone
    dark = ui(server, color_scheme="dark", **DESKTOP)
    page = dark.go("/metrics?since=7d&dag=flaky")
    expect(page.get_by_label("DAG filter")).to_have_value("flaky")
    expect(page.get_by_role("button", name="7d")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("[data-chart] canvas")).to_have_count(4)
    page.wait_for_load_state("networkidle")
    dark.shot("metrics_7d_dag_dark")
    assert axe_violations(page) == []
    page = dark.go("/metrics?since=1h")
    expect(page.locator("[data-chart] canvas")).to_have_count(4)
    page.wait_for_load_state("networkidle")
    dark.shot("metrics_1h_dark")
    assert axe_violations(page) == []
    assert dark.errors == [], dark.errors
    for theme in ("light", "dark"):
        phone = ui(server, color_scheme=theme, **PHONE)
        page = phone.go("/metrics?since=30d")
        expect(page.locator("[data-chart] canvas")).to_have_count(4)
        expect(page.locator("[data-success-dag]")).to_have_count(len(DAGS))
        page.wait_for_load_state("networkidle")
        phone.shot(f"metrics_30d_phone_{theme}")
        overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 1, overflow
        assert axe_violations(page) == [], theme
        assert phone.errors == [], phone.errors


def test_a_bad_window_in_the_url_says_what_is_accepted(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"flaky.yaml": dag_file("flaky")})
    u = ui(server)
    page = u.go("/metrics?since=forever")
    expect(page.get_by_role("alert")).to_contain_text("since must be a positive number")
    expect(page.locator("[aria-pressed=true]")).to_have_count(0)
    page.get_by_role("button", name="6h").click()
    page.wait_for_url(re.compile(r"/metrics\?since=6h$"))
    expect(page.get_by_role("alert")).to_have_count(0)
    expect(page.get_by_text("No task executions in this window.").first).to_be_visible()
