"""The DAG page's tabs in a real browser (fixtures of test_ui.py): the graph opens a clicked
task in the latest run (defect 10), the Grid (an ARIA grid: keyboard, click, a 100 x 200 grid),
the Calendar, Versions with a side-by-side diff, and the run page drawing the version its run
followed; tabs in the URL; light, dark and phone, axe clean."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from axe import axe_violations
from conftest import wait_for
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

from nagare.engine.new_run import build_run
from nagare.models import RunStatus, TaskInstance, TaskStatus, Trigger

pytestmark = pytest.mark.slow

FLOW = """
id: flow
schedule: "workflow_dispatch"
tasks:
  - id: items
    command: echo '["a", "b", "c"]'
  - id: each
    type: map
    map_over: items
    command: '[ "{{item}}" != "b" ]'
  - id: after
    depends_on: [each]
    trigger_rule: all_done
    command: echo after
"""
# the next version: a new first task, and a command that must stay inert text in the diff
FLOW_V2 = FLOW.replace("echo after", "echo '<script>window.__xss=1</script>'").replace(
    "tasks:\n", "tasks:\n  - id: first\n    command: echo first\n"
)
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}
DESKTOP = {"viewport": {"width": 1440, "height": 900}}


def _settle(page: Any) -> None:
    page.wait_for_load_state("networkidle")


def test_graph_click_tabs_grid_calendar_versions(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    server = nagare_factory(dags={"flow.yaml": FLOW})
    first = server.trigger("flow")
    assert server.wait_run(first)["status"] == "failed"

    # defect 10: a click on a task of the DAG page's graph opens it in the latest run
    u = ui(server, **DESKTOP)
    page = u.go("/dags?id=flow")
    expect(page.locator("[data-node=after]")).to_have_attribute("data-status", "success")
    page.locator("[data-node=after]").click()
    page.wait_for_url(re.compile(rf"/runs\?id={re.escape(first)}&task=after$"))
    expect(page.locator("[data-task=after] [data-log]")).to_contain_text("after")

    # the Grid: tab in the URL, states with glyphs, the map as one row with its summary
    page = u.go("/dags?id=flow")
    page.get_by_role("tab", name="Grid").click()
    page.wait_for_url(re.compile(r"/dags\?id=flow&tab=grid$"))
    grid = page.get_by_role("grid")
    summary = grid.locator("[data-task-row=each] [data-map-summary]")
    expect(summary).to_have_text("⇉ 2/3 ok, 1 failed")
    cell = grid.locator("[data-task-row=each] td").first
    expect(cell).to_have_attribute("data-state", "failed")
    expect(cell).to_have_text("✕")
    expect(cell).to_have_attribute("aria-label", "failed; children 2/3 ok, 1 failed")
    page.reload()  # the tab survives a reload
    expect(page.get_by_role("tab", name="Grid")).to_have_attribute("aria-selected", "true")
    grid.locator("[data-task-row=items] td").first.click()
    page.wait_for_url(re.compile(rf"/runs\?id={re.escape(first)}&task=items$"))
    page.go_back()
    expect(page.get_by_role("grid")).to_be_visible()

    # a new version of the file: the old run keeps drawing its own version
    (server.root / "dags" / "flow.yaml").write_text(FLOW_V2)
    wait_for(lambda: server.get("/api/dags/flow")["tasks"][0]["task_id"] == "first", 10)
    second = server.trigger("flow")
    server.wait_run(second)
    page = u.go(f"/runs?id={first}")
    expect(page.locator("[data-node=after]")).to_be_visible()
    expect(page.locator("[data-node=items]")).to_be_visible()
    expect(page.locator("[data-version-changed]")).to_be_visible()
    assert page.locator("[data-node=first]").count() == 0  # today's DAG has it, the run did not
    _settle(page)
    u.shot("dagpage_run_of_an_older_version")
    page = u.go(f"/runs?id={second}")
    expect(page.locator("[data-node=first]")).to_be_visible()

    # Versions: both listed with their runs, a side-by-side diff, the script inert
    page = u.go("/dags?id=flow&tab=versions")
    rows = page.locator("[data-versions] tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("loaded now")
    diff = page.locator("[data-diff]")
    expect(diff).to_contain_text("<script>window.__xss=1</script>")
    expect(diff.locator("td.add", has_text='"task_id": "first"')).to_have_count(1)
    changed = diff.locator("tr[data-change]", has=page.locator("td.del", has_text="echo after"))
    expect(changed.locator("td.add")).to_contain_text("window.__xss=1")  # side by side
    ops = page.evaluate(
        """async () => (await import("/dagpage.js")).lineDiff("a\\nb\\nc\\nd", "a\\nx\\nc\\nd\\ne")
            .map((o) => `${o.op[0]}${o.a ?? ""}:${o.b ?? ""}:${o.text}`)"""
    )
    assert ops == ["s1:1:a", "d2::b", "a:2:x", "s3:3:c", "s4:4:d", "a:5:e"]
    assert page.evaluate("window.__xss") is None
    _settle(page)
    u.shot("dagpage_versions_light")
    assert axe_violations(page) == []

    # the Calendar: today holds two failed runs
    page.get_by_role("tab", name="Calendar").click()
    page.wait_for_url(re.compile(r"&tab=calendar"))
    today = page.evaluate("new Date().toLocaleDateString('sv')")  # YYYY-MM-DD, local
    day = page.locator(f"[data-calendar] td[data-date='{today}']")
    expect(day).to_have_attribute("data-outcome", "failed")
    expect(day).to_contain_text(f"{today}: 2 failed")
    day.click()
    expect(page.locator("[data-calendar-day]")).to_have_text(f"{today}: 2 failed")
    _settle(page)
    u.shot("dagpage_calendar_light")
    assert axe_violations(page) == []
    page.go_back()  # Back restores the previous tab
    expect(page).to_have_url(re.compile(r"&tab=versions"))
    expect(page.get_by_role("tab", name="Versions")).to_have_attribute("aria-selected", "true")
    assert u.errors == [], u.errors

    for theme in ("light", "dark"):
        for where, context in (("", DESKTOP), ("_phone", PHONE)):
            t = ui(server, color_scheme=theme, **context)
            for tab in ("grid", "calendar", "versions"):
                page = t.go(f"/dags?id=flow&tab={tab}")
                expect(page.locator(f"[data-{tab}-tab]")).to_be_visible()
                _settle(page)
                t.shot(f"dagpage_{tab}_{theme}{where}")
                overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
                assert overflow <= 1, (tab, theme, where, overflow)
                assert axe_violations(page) == [], (tab, theme, where)
            assert t.errors == [], t.errors


def _wide_dag(tasks: int) -> str:
    lines = ['id: wide\nschedule: "workflow_dispatch"\ntasks:\n']
    lines.append("  - id: items\n    command: 'true'\n")
    lines.append("  - id: each\n    type: map\n    map_over: items\n    command: 'true'\n")
    lines += [f"  - id: t{i:03d}\n    command: 'true'\n" for i in range(tasks - 2)]
    return "".join(lines)


def _plant_runs(server: Any, runs: int) -> list[str]:
    """`runs` finished runs of `wide` straight into its store (each map with 100 children, one
    failed), oldest first; returns their ids."""
    store = server.app.store
    dag = server.app.folder.snapshot.dags["wide"]
    base = int(time.time() * 1000) - runs * 60_000
    version = store.dags.save_version(dag, base)
    ids = []
    for i in range(runs):
        at = base + i * 60_000
        run, tasks = build_run(dag, version, Trigger.MANUAL, at, {}, at, f"wide__manual__{i:03d}")
        run.status, run.completed_at = RunStatus.SUCCESS, at + 1000
        for n, task in enumerate(tasks):
            task.status = TaskStatus.FAILED if (n + i) % 17 == 0 else TaskStatus.SUCCESS
            task.queued_at = None
        children = [
            TaskInstance(
                id=f"c{i}-{k}",
                run_id=run.run_id,
                task_id=f"each[{k}]",
                base_task_id="each",
                map_index=k,
                position=1,
                status=TaskStatus.FAILED if k == 3 else TaskStatus.SUCCESS,
                pool="default",
            )
            for k in range(100)
        ]
        assert store.runs.insert(run, [*tasks, *children])
        ids.append(run.run_id)
    return ids


def test_grid_of_100_runs_by_200_tasks_renders_and_navigates_by_keyboard(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"wide.yaml": _wide_dag(200)})
    wait_for(lambda: "wide" in server.app.folder.snapshot.dags, 10)
    ids = _plant_runs(server, 100)
    u = ui(server, **DESKTOP)
    started = time.monotonic()
    page = u.go("/dags?id=wide&tab=grid&runs=100")
    grid = page.get_by_role("grid")
    expect(grid.locator("tbody tr")).to_have_count(200, timeout=20_000)
    took = time.monotonic() - started
    print(f"grid of 100 x 200 shown after {took:.2f}s")
    assert took < 20, took  # loose: speed targets belong to benchmarks
    assert grid.locator("td").count() == 200 * 100
    expect(grid.locator("[data-task-row=each] [data-map-summary]")).to_have_text(
        "⇉ 99/100 ok, 1 failed"
    )
    expect(page.locator("[data-grid-size]")).to_have_value("100")

    # roving tabindex: one tab stop; arrows, Home/End and PageDown move it; Enter opens
    assert grid.locator('[tabindex="0"]').count() == 1
    grid.locator('[tabindex="0"]').focus()
    focused = "() => [document.activeElement.dataset.r, document.activeElement.dataset.c]"
    assert page.evaluate(focused) == ["1", "1"]
    started = time.monotonic()
    for key in ("ArrowRight", "ArrowRight", "ArrowDown", "ArrowLeft"):
        page.keyboard.press(key)
    assert page.evaluate(focused) == ["2", "2"]
    page.keyboard.press("End")
    assert page.evaluate(focused) == ["2", "100"]
    page.keyboard.press("PageDown")
    assert page.evaluate(focused) == ["12", "100"]
    page.keyboard.press("Control+End")
    assert page.evaluate(focused) == ["200", "100"]
    page.keyboard.press("Home")
    assert page.evaluate(focused) == ["200", "0"]
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowRight")
    assert time.monotonic() - started < 5  # loose again
    assert grid.locator('[tabindex="0"]').count() == 1
    row = page.evaluate("document.activeElement.closest('tr').dataset.taskRow")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/runs\?id={re.escape(ids[-1])}&task={row}$"))
    page.go_back()
    expect(page.get_by_role("grid").locator("tbody tr")).to_have_count(200)
    _settle(page)
    u.shot("dagpage_grid_100x200")
    assert u.errors == [], u.errors
