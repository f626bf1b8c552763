"""The run page in a real browser (fixtures of test_ui.py), issue 18: Kill asks first (run page,
task, runs list) and sits away from Refresh/Retry; a queued task says why; a run that never
started shows no start time; running is a steady colour with an activity dot; map children show
their item; the timeline (wall-clock ticks, every attempt, the queued segment, a broken axis
after a late retry); a killed task cancels its run, drawn grey; the Task details panel. Light,
dark and phone, axe clean."""

from __future__ import annotations

import re
from typing import Any

import pytest
from axe import axe_violations
from conftest import wait_for
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

DAGS = {
    "sleeper.yaml": """
id: sleeper
schedule: "workflow_dispatch"
tasks:
  - id: nap
    command: sleep 60
  - id: later
    depends_on: [nap]
    command: echo never
""",
    "stuck.yaml": """
id: stuck
schedule: "workflow_dispatch"
tasks:
  - id: train
    pool: gpu
    command: echo never
""",
    "flaky.yaml": """
id: flaky
schedule: "workflow_dispatch"
secrets: [{name: API_TOKEN, env: UI_RUNPAGE_TOKEN}]
env: {REGION: eu}
tasks:
  - id: files
    command: |
      echo '["alpha-report-long-name.csv", "beta.csv", {"id": 3, "path": "/data/gamma.csv"}]'
  - id: each
    type: map
    map_over: files
    command: echo "processing {{item}}"
  - id: try
    depends_on: [each]
    command: 'echo "attempt $NAGARE_ATTEMPT"; test $NAGARE_ATTEMPT -ge 2'
    retries: 1
    retry_delay_seconds: 0
    env: {MODE: fast}
""",
}
TIME = re.compile(r"\d{1,2}:\d{2}:\d{2}")


def test_kill_asks_first_and_a_killed_task_cancels_the_run_in_grey(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags=DAGS)
    run_id = server.trigger("sleeper")
    wait_for(lambda: server.get(f"/api/runs/{run_id}/tasks/nap")["status"] == "running", 10)
    u = ui(server, viewport={"width": 1440, "height": 900})
    page = u.go(f"/runs?id={run_id}")
    nap = page.locator("[data-task=nap]")
    expect(nap).to_have_attribute("data-status", "running")
    # running: steady colour (no fading animation on the badge), a small animated dot instead
    badge = nap.locator(".badge.st-running")
    assert badge.evaluate("b => getComputedStyle(b).animationName") == "none"
    assert badge.evaluate("b => getComputedStyle(b, '::before').animationName") == "activity"
    expect(page.locator('[data-node="nap"] [data-activity]')).to_have_count(1)
    # Kill run sits with the status, away from Refresh
    heading = page.locator("h1")
    kill = heading.get_by_role("button", name=f"Kill run {run_id}…")
    refresh = heading.get_by_role("button", name="↻ Refresh")
    gap = refresh.bounding_box()["x"] - (kill.bounding_box()["x"] + kill.bounding_box()["width"])
    assert gap > 200, gap
    # a task's Kill asks first; Cancel (focused) and Escape change nothing
    nap.get_by_role("button", name="Kill task nap…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Kill task nap?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    u.shot("runpage_confirm_kill_light")
    assert axe_violations(page) == []
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    nap.get_by_role("button", name="Kill task nap…").click()
    dialog.get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(300)
    assert server.get(f"/api/runs/{run_id}/tasks/nap")["status"] == "running"
    nap.get_by_role("button", name="Kill task nap…").click()
    dialog.get_by_role("button", name="■ Kill task").click()
    expect(nap).to_have_attribute("data-status", "cancelled")
    # killing one task ends the run as killing the run does: cancelled, and grey, not red
    expect(heading.locator(".badge").first).to_have_text("cancelled")
    bar = page.locator("[data-progress]")
    expect(bar).to_have_class("bar-cancelled")
    grey = page.evaluate(
        "getComputedStyle(document.documentElement).getPropertyValue('--cancelled')"
    )
    assert bar.evaluate("b => getComputedStyle(b).backgroundColor") == _rgb(grey.strip())

    # on a phone, in dark, with reduced motion: the dot stays, still; Kill still asks
    phone = ui(
        server,
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        color_scheme="dark",
        reduced_motion="reduce",
    )
    other = server.trigger("sleeper")
    wait_for(lambda: server.get(f"/api/runs/{other}")["status"] == "running", 10)
    small = phone.go(f"/runs?id={other}")
    badge = small.locator("h1 .badge.st-running")
    assert badge.evaluate("b => getComputedStyle(b, '::before').animationName") == "none"
    assert small.evaluate("document.documentElement.scrollWidth") <= 390
    small.wait_for_load_state("networkidle")
    phone.shot("runpage_running_phone_dark")
    assert axe_violations(small) == []
    small.locator("h1").get_by_role("button", name=f"Kill run {other}…").click()
    expect(small.get_by_role("dialog")).to_be_visible()
    phone.shot("runpage_confirm_kill_phone_dark")
    assert axe_violations(small) == []
    small.get_by_role("dialog").get_by_role("button", name="■ Kill run").click()
    expect(small.locator("h1 .badge").first).to_have_text("cancelled")
    assert phone.errors == []

    # the runs list asks too
    other = server.trigger("sleeper")
    wait_for(lambda: server.get(f"/api/runs/{other}")["status"] == "running", 10)
    page = u.go("/runs")
    row = page.locator(f'[data-run="{other}"]')
    row.get_by_role("button", name=f"Kill run {other}…").click()
    expect(page.get_by_role("dialog")).to_contain_text(f"Kill run {other}?")
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    assert server.get(f"/api/runs/{other}")["status"] == "running"
    row.get_by_role("button", name=f"Kill run {other}…").click()
    page.get_by_role("dialog").get_by_role("button", name="■ Kill run").click()
    expect(row.locator(".badge").first).to_have_text("cancelled")
    assert u.errors == []


def _rgb(hex_colour: str) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgb({r}, {g}, {b})"


def test_queued_reason_timeline_map_items_and_task_details(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UI_RUNPAGE_TOKEN", "hunter2-secret-value")
    server = nagare_factory(dags=DAGS)
    stuck = server.trigger("stuck")
    flaky = server.trigger("flaky")
    assert server.wait_run(flaky)["status"] == "success"
    u = ui(server, viewport={"width": 1440, "height": 900})

    # a task in a pool nobody serves says so, on its row and in the graph; no start time
    page = u.go(f"/runs?id={stuck}")
    train = page.locator("[data-task=train]")
    expect(train.locator("[data-reason]")).to_have_text(
        "waiting for a worker in pool gpu — none online"
    )
    expect(page.locator('[data-node="train"] title')).to_contain_text("none online")
    expect(page.locator("[data-started]")).to_have_text("not started")
    expect(page.locator("[data-duration]")).to_have_text("—")
    expect(page.locator("[data-timeline] [data-seg=queued]")).to_have_count(1)
    page = u.go("/runs")
    expect(page.locator(f'[data-run="{stuck}"] [data-not-started]')).to_have_text("not started")

    for theme in ("light", "dark"):
        t = ui(server, viewport={"width": 1440, "height": 900}, color_scheme=theme)
        page = t.go(f"/runs?id={flaky}&task=try")
        # map children show their item (truncated) in rows and graph nodes
        group = page.locator("[data-map-group=each]")
        group.get_by_role("button", name="Expand map children of each").click()
        first = page.locator('[data-task="each[0]"] [data-map-item]')
        expect(first).to_have_text("alpha-report-long-name.csv")
        expect(page.locator('[data-task="each[2]"] [data-map-item]')).to_have_text(
            '{"id":3,"path":"/data/gamma.csv"}'
        )
        expect(page.locator('[data-node="each[0]"] [data-node-item]')).to_contain_text(
            "[0] alpha-rep…"
        )
        # the timeline: every attempt, wall-clock ticks, hover details
        timeline = page.locator("[data-timeline]")
        tries = timeline.locator("[data-tl-task=try] [data-seg=attempt]")
        expect(tries).to_have_count(2)
        expect(tries.first).to_have_attribute("data-status", "failed")
        expect(tries.last).to_have_attribute("data-status", "success")
        assert TIME.search(timeline.locator(".tl-tick").first.inner_text())
        tries.last.hover()
        expect(timeline.locator("[data-tl-detail]")).to_contain_text("try: attempt 2 · success")
        # the Task details panel: pool, times, every try, the command, env names, secret masked
        details = page.locator("[data-task-details=try]")
        expect(details.locator("[data-detail-pool]")).to_have_text("default")
        expect(details.locator("[data-try]")).to_have_count(2)
        expect(details.locator("[data-detail-command]")).to_contain_text(
            "test $NAGARE_ATTEMPT -ge 2"
        )
        env = details.locator("[data-detail-env]")
        expect(env.locator('[data-env="NAGARE_RUN_ID"]')).to_contain_text(flaky)
        for name in ("REGION", "MODE", "API_TOKEN"):
            expect(env.locator(f'[data-env="{name}"]')).to_have_count(1)
        expect(env.locator('[data-env="API_TOKEN"] [data-masked]')).to_have_count(1)
        assert "hunter2" not in page.content()
        page.wait_for_load_state("networkidle")
        t.shot(f"runpage_details_{theme}")
        assert axe_violations(page) == [], theme
        assert t.errors == []

    # a late manual retry breaks the axis: both groups stay readable
    groups = page.evaluate(
        """async () => {
        const m = await import("/runpage.js");
        const s = Date.parse("2026-01-01T10:00:00Z");
        return m.axisGroups([{s, e: s + 10000}, {s: s + 12000, e: s + 20000},
                             {s: s + 7200000, e: s + 7205000}]).map((g) => g.w);
    }"""
    )
    assert len(groups) == 2 and min(groups) >= 15, groups
    # ... and drawn: a marked break, ticks on both sides, both attempts visible
    page.evaluate(
        """async () => {
        const { html, render } = await import("/common.js");
        const { Timeline } = await import("/runpage.js");
        const iso = (ms) => new Date(ms).toISOString();
        const s = Date.now() - 7300000;
        const task = (id, status, a, b) => ({ task_id: id, status, attempt: 1,
            queued_at: iso(a - 2000), started_at: iso(a), completed_at: iso(b) });
        const tasks = [task("extract", "success", s, s + 40000),
                       task("load", "failed", s + 40000, s + 70000),
                       { ...task("load_again", "success", s + 7200000, s + 7230000), attempt: 1 }];
        const box = document.createElement("section");
        box.className = "panel"; box.id = "late-retry"; box.style.width = "700px";
        document.querySelector("main").prepend(box);
        render(html`<h2>Timeline</h2><${Timeline} run=${{ run_id: "nope" }} tasks=${tasks}
            children=${{}} now=${Date.now()} />`, box);
    }"""
    )
    late = page.locator("#late-retry [data-timeline]")
    expect(late).to_have_attribute("data-axis-breaks", "1")
    # 2 h later, less the 70 s before and the 2 s queued
    expect(late.locator("[data-axis-break]")).to_have_text("+1h 58m")
    spans = late.locator("[data-seg=attempt]").evaluate_all(
        "xs => xs.map((x) => x.getBoundingClientRect().width)"
    )
    assert len(spans) == 3 and min(spans) > 20, spans
    assert late.locator(".tl-tick").count() >= 3
    late.screenshot(path=str(t.shots / "runpage_timeline_late_retry.png"))

    phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.go(f"/runs?id={flaky}&task=try")
    expect(page.locator("[data-task-details=try]")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    phone.shot("runpage_details_phone")
    assert axe_violations(page) == []
    assert phone.errors == [] and u.errors == []
