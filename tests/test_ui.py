"""The embedded dashboard in a real browser (Playwright driving Debian's Chromium).

One browser per module; every test starts its own real server with real DAGs. Screenshots of
every page are saved under the test's tmp folder (`screenshots/`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from axe import axe_violations
from conftest import (
    ROOT,
    Nagare,
    http,
    pythonpath_env,
    require_chromium,
    serve_pyz,
    wait_for,
)

pytestmark = pytest.mark.slow

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT = 15_000  # ms, for expectations
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

SLOW = """
id: printer
description: "prints numbered lines slowly"
schedule: "workflow_dispatch"
tasks:
  - id: talk
    command: |
      for i in $(seq 1 12); do echo "line $i"; sleep 0.25; done
  - id: after
    depends_on: [talk]
    command: echo finished
"""
SLEEPER = """
id: sleeper
schedule: "workflow_dispatch"
tasks:
  - id: nap
    command: sleep 60
  - id: later
    depends_on: [nap]
    command: echo never
"""
MAP = """
id: map_reduce
schedule: "workflow_dispatch"
tasks:
  - id: get_files
    command: echo '["a.csv", "b.csv", "c.csv"]'
  - id: process_file
    type: map
    map_over: get_files
    command: echo "processing {{item}}"
  - id: aggregate
    depends_on: [process_file]
    command: echo "all files processed"
"""
XSS = """
id: xss
description: "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"
schedule: "workflow_dispatch"
tasks:
  - id: evil
    command: |
      echo '<script>window.__xss=3</script>'
      echo '<img src=x onerror="window.__xss=4">'
"""
BAD = "id: broken\ntasks: [\n"
NIGHTLY = """
id: nightly
schedule: "0 3 * * *"
tasks:
  - id: report
    command: echo report
"""
FAILING = """
id: failing
description: "fails, so its downstream is upstream failed"
tags: [demo]
tasks:
  - id: breaks
    command: exit 3
  - id: never
    depends_on: [breaks]
    command: echo never
"""
BIG_MAP = """
id: big_map
schedule: "workflow_dispatch"
tasks:
  - id: items
    command: python3 -c 'import json; print(json.dumps(list(range(1000))))'
  - id: each
    type: map
    map_over: items
    # the last child waits for the test's gate file, so the run is surely live while checked
    command: '[ {{item}} != 999 ] || while [ ! -e "$GATE" ]; do sleep 0.05; done'
"""
COUNTER = """
id: counter
schedule: "workflow_dispatch"
tasks:
  - id: count
    command: |
      for i in $(seq 1 40); do echo "n=$i"; sleep 0.1; done
"""
FAN_FIVE = """
id: fan_five
schedule: "workflow_dispatch"
tasks:
  - id: items
    command: echo '["a", "b", "c", "d", "e"]'
  - id: each
    type: map
    map_over: items
    command: '[ "{{item}}" != "c" ]'
  - id: done
    depends_on: [each]
    command: echo done
"""
FAN_FIFTY = """
id: fan_fifty
schedule: "workflow_dispatch"
tasks:
  - id: items
    command: python3 -c 'import json; print(json.dumps(list(range(50))))'
  - id: each
    type: map
    map_over: items
    command: echo {{item}}
  - id: total
    depends_on: [each]
    command: echo total
"""
CPU_WAIT = """
id: needs_cpu_pool
schedule: "workflow_dispatch"
tasks:
  - id: crunch
    pool: cpu
    command: echo never runs without a cpu worker
"""
# ms between a click and the next animation frame after the DOM changed (main thread free)
ROUND_TRIP = """([sel, want]) => new Promise((done) => {
    const t0 = performance.now();
    document.querySelector(sel).click();
    const check = () => (document.querySelector(want) ? done(performance.now() - t0)
        : performance.now() - t0 > 5000 ? done(-1) : requestAnimationFrame(check));
    requestAnimationFrame(check);
})"""
# the longest gap between animation frames over `ms` (a blocked main thread shows up here)
FRAME_GAP = """(ms) => new Promise((done) => {
    let last = performance.now(), worst = 0; const end = last + ms;
    const tick = (t) => { worst = Math.max(worst, t - last); last = t;
        t < end ? requestAnimationFrame(tick) : done(worst); };
    requestAnimationFrame(tick);
})"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("NAGARE_REQUIRE_BROWSER") == "1":
            pytest.fail("NAGARE_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=require_chromium(), args=ARGS)
        yield b
        b.close()


class UI:
    """A page plus the console errors it logged."""

    def __init__(self, browser: Any, base: str, shots: Path, **context: Any) -> None:
        context.setdefault("viewport", {"width": 1280, "height": 800})
        self.context = browser.new_context(**context)
        self.context.set_default_timeout(TIMEOUT)
        self.page = self.context.new_page()
        self.base = base
        self.shots = shots
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def go(self, path: str) -> Any:
        self.page.goto(self.base + path)
        return self.page

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def ui(browser: Any, tmp_path: Path) -> Iterator[Callable[..., UI]]:
    opened: list[UI] = []

    def make(server: Nagare, **context: Any) -> UI:
        u = UI(browser, server.url, tmp_path / "screenshots", **context)
        opened.append(u)
        return u

    yield make
    for u in opened:
        u.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_gate_wrong_key_right_key_and_disconnect(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"printer.yaml": SLOW}, api_key="s3cret-key")
    u = ui(server)
    page = u.go("/")
    expect(page.get_by_text("Enter your API key to access the dashboard.")).to_be_visible()
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("alert")).to_have_text("API key is required.")
    page.get_by_label("API key").fill("wrong")
    page.get_by_role("button", name="Connect").click()
    expect(page.get_by_role("alert")).to_have_text("Invalid API key. Please try again.")
    u.shot("gate")
    page.get_by_label("API key").fill("s3cret-key")
    page.keyboard.press("Enter")
    expect(page.locator('[data-stat="Loaded DAGs"]')).to_have_text("1")
    assert page.evaluate("localStorage.getItem('nagare_api_key')") == "s3cret-key"
    page.reload()  # the key is remembered
    expect(page.locator("tr[data-dag=printer]")).to_be_visible()
    page.get_by_role("button", name="Disconnect").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("localStorage.getItem('nagare_api_key')") is None
    # a key that stops working (401 on any call) sends the user back to the gate
    page.evaluate("localStorage.setItem('nagare_api_key', 'revoked')")
    page.goto(server.url + "/runs")
    expect(page.get_by_label("API key")).to_be_visible()
    # the only console errors are the browser's own 401 resource messages
    assert all("401" in e for e in u.errors), u.errors


def test_trigger_from_the_ui_live_log_and_success(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"printer.yaml": SLOW}, api_key="k")
    u = ui(server)
    u.page.add_init_script("localStorage.setItem('nagare_api_key', 'k')")
    page = u.go("/")
    page.get_by_role("button", name="Trigger printer", exact=True).click()
    page.wait_for_url(re.compile(r"/runs\?id=printer__manual__"))
    run_id = page.url.split("id=")[1]
    talk = page.locator("[data-task=talk]")
    expect(talk).to_have_attribute("data-status", "running")
    log = talk.locator("[data-log]")  # running tasks open by themselves
    expect(log).to_contain_text("line 3")
    assert server.get(f"/api/runs/{run_id}")["status"] == "running"  # seen live, not after
    u.shot("run_live")
    expect(page.locator("h1 .badge")).to_have_text("success")
    expect(log).to_contain_text("line 12")
    text = log.inner_text()
    assert text.count("line 7\n") == 1  # no duplicated lines
    expect(page.locator("[data-task=after]")).to_have_attribute("data-status", "success")
    u.shot("run_success")
    assert u.errors == []


def test_trigger_with_parameters_and_pause_switch(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"map.yaml": MAP, "nightly.yaml": NIGHTLY})
    u = ui(server)
    page = u.go("/")
    page.get_by_role("button", name="Trigger map_reduce with parameters").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Run parameters", exact=False).fill("[1, 2]")
    dialog.get_by_role("button", name="Trigger run").click()
    expect(dialog.get_by_role("alert")).to_have_text("Parameters must be a JSON object.")
    dialog.get_by_label("Run parameters", exact=False).fill('{"WHO": "<b>ui</b>"}')
    dialog.get_by_role("button", name="Trigger run").click()
    page.wait_for_url(re.compile(r"/runs\?id=map_reduce__manual__"))
    run_id = page.url.split("id=")[1]
    expect(page.get_by_text('"WHO": "<b>ui</b>"')).to_be_visible()
    assert server.get(f"/api/runs/{run_id}")["conf"] == {"WHO": "<b>ui</b>"}
    page = u.go("/")
    # a manual-only DAG has nothing to pause: no switch, a note instead
    expect(page.locator('tr[data-dag="map_reduce"] [data-manual-only]')).to_have_text("manual only")
    switch = page.get_by_role("switch", name="nightly active", exact=False)
    expect(switch).to_be_checked()
    switch.click()
    expect(switch).not_to_be_checked()
    wait_for(lambda: server.get("/api/dags/nightly")["paused"], 5, message="paused")
    switch.press("Space")  # keyboard works too
    expect(switch).to_be_checked()
    wait_for(lambda: not server.get("/api/dags/nightly")["paused"], 5, message="active")
    u.shot("dashboard_after_trigger")
    assert u.errors == []


def test_kill_task_then_retry(nagare_factory: Any, ui: Any, tmp_path: Path) -> None:
    server = nagare_factory(dags={"sleeper.yaml": SLEEPER})
    run_id = server.trigger("sleeper")
    wait_for(lambda: server.get(f"/api/runs/{run_id}/tasks/nap")["status"] == "running", 10)
    u = ui(server)
    page = u.go(f"/runs?id={run_id}")
    nap = page.locator("[data-task=nap]")
    expect(nap).to_have_attribute("data-status", "running")
    nap.get_by_role("button", name="Kill task nap…").click()
    page.get_by_role("dialog").get_by_role("button", name="■ Kill task").click()  # asks first
    expect(nap).to_have_attribute("data-status", "cancelled")
    expect(nap.locator(".badge").first).to_have_text("cancelled")
    u.shot("run_killed_task")
    # retry re-opens the run; the new attempt runs again
    nap.get_by_role("button", name="Retry task nap").click()
    expect(nap).to_have_attribute("data-status", re.compile("queued|running"))
    expect(nap).to_contain_text("attempt 2")
    page.get_by_role("button", name=f"Kill run {run_id}…").click()
    page.get_by_role("dialog").get_by_role("button", name="■ Kill run").click()
    expect(page.locator("h1 .badge")).to_have_text(re.compile("cancelled|failed"))
    expect(nap.get_by_role("tab", name=re.compile("Attempt 1"))).to_be_visible()
    u.shot("run_killed_run")
    assert u.errors == []


def test_map_group_counters_and_child_log(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"map.yaml": MAP})
    run_id = server.trigger("map_reduce")
    assert server.wait_run(run_id)["status"] == "success"
    u = ui(server)
    page = u.go(f"/runs?id={run_id}")
    group = page.locator("[data-map-group=process_file]")
    expect(group.locator("[data-map-count]")).to_have_text("3")
    expect(group.locator("[data-map-status=success]")).to_have_text("3 success")
    expect(page.locator('[data-node="process_file"]')).to_contain_text("3/3")
    group.get_by_role("button", name="Expand map children of process_file").click()
    child = page.locator('[data-task="process_file[1]"]')
    expect(child).to_have_attribute("data-status", "success")
    child.get_by_role("button", name="Show log of process_file[1]").click()
    expect(child.locator("[data-log]")).to_contain_text("processing b.csv")
    assert "task=process_file%5B1%5D" in page.url
    u.shot("run_map")
    assert u.errors == []


def test_thousand_child_map_run_page_stays_responsive(
    nagare_factory: Any, ui: Any, tmp_path: Path
) -> None:
    server = nagare_factory(dags={"big.yaml": BIG_MAP}, worker_pools={"default": 8})
    gate = tmp_path / "gate"
    run_id = server.trigger("big_map", {"GATE": str(gate)})
    wait_for(lambda: server.get(f"/api/runs/{run_id}/tasks/each")["status"] != "pending", 10)
    u = ui(server)
    page = u.go(f"/runs?id={run_id}")
    group = page.locator("[data-map-group=each]")
    expect(group.locator("[data-map-count]")).to_have_text("1000")  # seen while it runs
    assert server.get(f"/api/runs/{run_id}")["status"] == "running"
    assert page.evaluate(FRAME_GAP, 1500) < 500  # polling 1,000 tasks does not freeze the page
    gate.touch()
    assert server.wait_run(run_id, 60)["status"] == "success"
    page = u.go(f"/runs?id={run_id}")
    expect(group.locator("[data-map-status=success]")).to_have_text("1000 success")
    expect(page.locator('[data-node="each"]')).to_contain_text("1000/1000")
    took = page.evaluate(
        ROUND_TRIP,
        ["[data-map-group=each] .expander", '[data-task="each[999]"], .task .body button'],
    )
    assert 0 <= took < 1000, f"expanding 1,000 map children took {took} ms"
    child = page.locator('[data-task="each[42]"]')
    expect(child).to_be_visible(timeout=2000)
    assert page.locator("[data-map-group=each] [data-task]").count() <= 100  # a bounded page
    took = page.evaluate(
        ROUND_TRIP, ['[data-task="each[42]"] .expander', '[data-task="each[42]"] [data-log]']
    )
    assert 0 <= took < 1000, f"opening a child log took {took} ms"
    expect(child.locator("[data-log]")).to_have_text("No output yet.", timeout=2000)
    expect(child.get_by_text("finished: success")).to_be_visible(timeout=2000)
    assert page.evaluate(FRAME_GAP, 1000) < 500
    u.shot("run_big_map")
    assert u.errors == []


def test_map_fan_out_drawn_as_child_nodes_and_capped(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"five.yaml": FAN_FIVE, "fifty.yaml": FAN_FIFTY})
    u = ui(server)
    page = u.go("/dags?id=fan_five")  # no run yet: one map node, marked as a fan-out
    expect(page.locator('[data-node="each"]')).to_have_attribute("data-fan-out", "collapsed")
    expect(page.locator('[data-node="each"]')).to_contain_text("fan-out over items")
    assert page.locator("[data-map-child]").count() == 0
    u.shot("dag_map_fan_out_no_run")
    five = server.trigger("fan_five")
    assert server.wait_run(five)["status"] == "failed"  # child [2] fails, `done` never runs
    page = u.go(f"/runs?id={five}")
    kids = page.locator("[data-map-child=each]")
    expect(kids).to_have_count(5)
    for i, status in enumerate(["success", "success", "failed", "success", "success"]):
        expect(page.locator(f'[data-node="each[{i}]"]')).to_have_attribute("data-status", status)
    expect(page.locator('[data-node="each"]')).to_contain_text("4/5")  # the counter stays
    expect(page.locator('[data-node="each"]')).to_have_attribute("data-fan-out", "expanded")
    assert page.locator("[data-node-more]").count() == 0
    # one edge into each child from the map, one out of each child to the downstream task
    assert page.locator(".graph path.edge").count() == 1 + 5 + 5
    u.shot("run_map_fan_out_5")
    page.locator('[data-node="each[2]"]').click()  # a child node opens that child's log
    child = page.locator('[data-task="each[2]"]')
    expect(child.locator("[data-log]")).to_be_visible()
    assert "task=each%5B2%5D" in page.url
    fifty = server.trigger("fan_fifty")
    assert server.wait_run(fifty, 30)["status"] == "success"
    page = u.go(f"/runs?id={fifty}")
    expect(page.locator('[data-node="each"]')).to_contain_text("50/50")
    expect(page.locator("[data-map-child=each]")).to_have_count(12)
    expect(page.locator("[data-node-more=each] text")).to_have_text("+38 more")
    expect(page.locator('[data-node="each[0]"]')).to_have_attribute("data-status", "success")
    u.shot("run_map_fan_out_50")
    page = u.go("/dags?id=fan_fifty")  # the DAG page draws its latest run the same way
    expect(page.locator("[data-node-more=each] text")).to_have_text("+38 more")
    assert u.errors == []


def test_graph_zoom_buttons_wheel_drag_and_fit(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"map.yaml": MAP})
    u = ui(server)
    page = u.go("/dags?id=map_reduce")
    svg = page.locator(".graph svg")
    expect(page.locator('[data-node="aggregate"]')).to_be_visible()
    fit = svg.get_attribute("viewBox")
    zoom_in = page.get_by_role("button", name="Zoom in")
    zoom_in.click()
    expect(svg).not_to_have_attribute("viewBox", fit)
    assert float(svg.get_attribute("data-scale")) == pytest.approx(1.25, abs=0.01)
    expect(page.locator("[data-zoom]")).to_have_text("125%")
    page.get_by_role("button", name="Zoom out").click()
    page.get_by_role("button", name="Zoom out").click()
    assert float(svg.get_attribute("data-scale")) == pytest.approx(0.8, abs=0.01)
    fit_button = page.get_by_role("button", name="Fit to view")
    fit_button.click()
    expect(svg).to_have_attribute("viewBox", fit)
    # keyboard: the buttons are reachable with Tab and work with Enter
    zoom_in.focus()
    page.keyboard.press("Enter")
    expect(svg).not_to_have_attribute("viewBox", fit)
    fit_button.focus()
    page.keyboard.press("Enter")
    expect(svg).to_have_attribute("viewBox", fit)
    # a plain wheel scrolls the page, Ctrl + wheel zooms in around the pointer; a drag pans;
    # neither selects a node
    box = svg.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -300)
    page.wait_for_timeout(100)
    expect(svg).to_have_attribute("viewBox", fit)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    expect(svg).not_to_have_attribute("viewBox", fit)
    zoomed = float(svg.get_attribute("data-scale"))
    assert zoomed > 1.2, zoomed
    before = [float(v) for v in svg.get_attribute("viewBox").split()]
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 20, steps=5)
    page.mouse.up()
    after = [float(v) for v in svg.get_attribute("viewBox").split()]
    assert after[0] < before[0] and after[2:] == before[2:], (before, after)
    u.shot("dag_graph_zoomed")
    fit_button.click()
    expect(svg).to_have_attribute("viewBox", fit)
    # the run page has the same controls; clicking a node still opens its task
    run_id = server.trigger("map_reduce")
    assert server.wait_run(run_id)["status"] == "success"
    page = u.go(f"/runs?id={run_id}")
    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator(".graph svg")).to_have_attribute("data-scale", "1.250")
    page.locator('[data-node="aggregate"]').click()
    expect(page.locator("[data-task=aggregate] [data-log]")).to_be_visible()
    assert u.errors == []


def test_workers_page_shows_a_real_remote_worker_and_pools_without_one(
    nagare_factory: Any, ui: Any, tmp_path: Path
) -> None:
    # a short lease keeps the worker's long polls short, so it stops quickly on SIGTERM
    server = nagare_factory(
        dags={"cpu.yaml": CPU_WAIT},
        worker_pools={"default": 2, "gpu": 0, "cpu": 0},
        lease_timeout_seconds=3,
    )
    server.trigger("needs_cpu_pool")  # queued on a pool nobody serves
    command = [sys.executable, "-m", "nagare", "worker", "--join", server.url]
    command += ["--pools", "gpu", "--worker-id", "ui-w1"]
    out = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        command,
        env=pythonpath_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: any(w["worker_id"] == "ui-w1" for w in server.get("/api/workers")),
            15,
            message="the worker to join",
        )
        wait_for(
            lambda: any(p["pool"] == "cpu" and p["queued"] for p in server.get("/api/pools")),
            10,
            message="a task queued on the cpu pool",
        )
        u = ui(server)
        page = u.go("/workers")
        row = page.locator("tr[data-worker=ui-w1]")
        expect(row).to_contain_text("ui-w1")
        expect(row.locator("[data-worker-status]")).to_have_text("online")
        expect(row.locator("[data-worker-pool=gpu]")).to_have_text("gpu")
        expect(row.locator("[data-worker-load]")).to_have_text("0 / 4")  # running / max tasks
        expect(row.locator("[data-heartbeat]")).to_have_text(re.compile(r"\d+s ago"))
        gpu = page.locator("tr[data-pool=gpu]")
        expect(gpu.locator("[data-remote-workers]")).to_contain_text("1 / 1")
        assert gpu.locator("[data-no-live-worker]").count() == 0
        cpu = page.locator("tr[data-pool=cpu]")
        expect(cpu.locator("td:not(.hide-sm) [data-no-live-worker]").first).to_be_hidden()
        expect(cpu.locator(".hide-sm [data-no-live-worker]")).to_have_text(
            "⚠ no live worker — 1 task waiting"
        )
        expect(page.locator("tr[data-pool=default] [data-no-live-worker]")).to_have_count(0)
        u.shot("workers_cluster")
        phone = ui(server, viewport={"width": 390, "height": 844}, is_mobile=True)
        page = phone.go("/workers")
        expect(page.locator("tr[data-worker=ui-w1]")).to_be_visible()
        flag = page.locator("tr[data-pool=cpu] .show-sm [data-no-live-worker]")
        expect(flag).to_have_text("⚠ no live worker — 1 task waiting")  # flagged on a phone too
        assert page.evaluate("document.documentElement.scrollWidth - innerWidth") <= 1
        phone.shot("workers_cluster_phone")
        # a worker that stops cleanly is shown as having left
        worker.terminate()
        worker.wait(20)
        page = u.page
        expect(page.locator("tr[data-worker=ui-w1] [data-worker-status]")).to_have_text(
            "left", timeout=10_000
        )
        u.shot("workers_cluster_left")
        assert u.errors == [] and phone.errors == []
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)
        out.close()


def test_workers_page_polling_pauses_while_the_tab_is_hidden(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory()
    u = ui(server)
    calls: list[str] = []
    u.page.on("request", lambda r: calls.append(r.url) if "/api/workers" in r.url else None)
    page = u.go("/workers")
    expect(page.get_by_text("No remote workers connected.", exact=False)).to_be_visible()
    hide = """(hidden) => {
        Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    page.evaluate(hide, True)
    page.wait_for_timeout(200)
    seen = len(calls)
    page.wait_for_timeout(3500)  # longer than one poll interval
    assert len(calls) == seen, calls
    page.evaluate(hide, False)  # shown again: polls at once
    wait_for(lambda: len(calls) > seen, 3, message="a poll after the tab is shown")
    assert u.errors == []


def test_live_log_resumes_after_a_dropped_connection_without_duplicates(
    nagare_factory: Any, ui: Any
) -> None:
    server = nagare_factory(dags={"counter.yaml": COUNTER})
    run_id = server.trigger("counter")
    wait_for(lambda: server.get(f"/api/runs/{run_id}/tasks/count")["status"] == "running", 10)
    u = ui(server)
    seen: list[str | None] = []

    def drop_first(route: Any) -> None:
        # the first stream is cut after the lines written so far (real server data) and ends,
        # as a dropped connection would; EventSource then reconnects on its own
        seen.append(route.request.all_headers().get("last-event-id"))
        if len(seen) > 1:
            route.continue_()
            return
        wait_for(lambda: len(_log_text(server, run_id, "count")) >= 5, 10)
        lines = _log_text(server, run_id, "count")
        body = "retry: 300\n\n" + "".join(f"id: {i}\ndata: {t}\n\n" for i, t in enumerate(lines, 1))
        route.fulfill(status=200, content_type="text/event-stream", body=body)
        seen.append(str(len(lines)))

    page = u.page
    page.route(re.compile(r"/tasks/count/logs"), drop_first)
    page = u.go(f"/runs?id={run_id}&task=count")
    task = page.locator("[data-task=count]")
    log = task.locator("[data-log]")
    expect(task.get_by_text("finished: success")).to_be_visible()
    assert len(seen) == 3, seen  # one cut stream, one reconnect
    assert log.inner_text().split("\n") == [f"n={i}" for i in range(1, 41)]
    expect(task.get_by_text("40 lines")).to_be_visible()
    u.shot("live_log_reconnect")
    assert u.errors == []


def _log_text(server: Nagare, run_id: str, task: str) -> list[str]:
    body = http("GET", f"{server.url}/api/runs/{run_id}/tasks/{task}/logs").body
    return body.decode().splitlines()


def test_metrics_page_draws_charts_after_runs(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"map.yaml": MAP, "printer.yaml": SLOW})
    for _ in range(2):
        assert server.wait_run(server.trigger("map_reduce"))["status"] == "success"
    u = ui(server)
    page = u.go("/metrics")
    expect(page.locator('[data-stat="tasks"]')).to_have_text("10")
    charts = page.locator("[data-chart] canvas")
    expect(charts).to_have_count(4)
    painted = page.evaluate(
        """() => [...document.querySelectorAll('[data-chart] canvas')].map(c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })"""
    )
    assert all(n > 500 for n in painted), painted
    expect(page.get_by_role("cell", name="map_reduce").first).to_be_visible()
    u.shot("metrics")
    page.get_by_role("button", name="1h").click()
    expect(page.get_by_role("button", name="1h")).to_have_attribute("aria-pressed", "true")
    assert u.errors == []


def test_user_controlled_text_stays_inert(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(dags={"xss.yaml": XSS})
    run_id = server.trigger("xss")
    assert server.wait_run(run_id)["status"] == "success"
    u = ui(server)
    page = u.go("/")
    expect(page.get_by_text("<script>window.__xss=2</script>", exact=False)).to_be_visible()
    page = u.go("/dags?id=xss")
    page.get_by_role("tab", name="YAML").click()
    expect(page.locator("[data-yaml]")).to_contain_text("onerror=window.__xss=1")
    page = u.go(f"/runs?id={run_id}&task=evil")
    log = page.locator("[data-task=evil] [data-log]")
    expect(log).to_contain_text("<script>window.__xss=3</script>")
    expect(log).to_contain_text('<img src=x onerror="window.__xss=4">')
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.locator("[data-log] img, [data-log] script").count() == 0
    u.shot("xss")
    assert u.errors == []


def test_every_page_light_dark_and_phone_without_console_errors(
    nagare_factory: Any, ui: Any
) -> None:
    """Every page in both themes and on a phone: no console error, no horizontal overflow on
    the phone, and no critical or serious axe-core violation anywhere."""
    server = nagare_factory(
        dags={"map.yaml": MAP, "printer.yaml": SLOW, "broken.yaml": BAD, "failing.yaml": FAILING}
    )
    run_id = server.trigger("map_reduce")
    failed_id = server.trigger("failing")
    server.wait_run(run_id)
    server.wait_run(failed_id)
    pages = {
        "dashboard": "/",
        "dags": "/dags",
        "dag_detail": "/dags?id=map_reduce",
        "dag_editor": "/dags/edit?file=map.yaml",
        "runs": "/runs",
        "run_detail": f"/runs?id={run_id}",
        "run_failed": f"/runs?id={failed_id}",
        "metrics": "/metrics",
        "workers": "/workers",
    }
    violations: dict[str, list[str]] = {}
    for theme in ("light", "dark"):
        u = ui(server, color_scheme=theme, viewport=DESKTOP)
        for name, path in pages.items():
            page = u.go(path)
            expect(page.locator("main h1")).to_be_visible()
            page.wait_for_load_state("networkidle")
            u.shot(f"{name}_{theme}_1440")
            violations[f"{name}_{theme}"] = axe_violations(page)
        assert u.errors == [], (theme, u.errors)
    page = u.go("/")  # the dashboard lists load errors and no remote workers sensibly
    paint = page.evaluate(
        """() => new Promise((done) => {
            new PerformanceObserver((list) => {
                const fcp = list.getEntries().find((e) => e.name === "first-contentful-paint");
                if (fcp) done(fcp.startTime);
            }).observe({ type: "paint", buffered: true });
            setTimeout(() => done(-1), 5000);
        })"""
    )
    assert 0 <= paint <= 300, f"first contentful paint of the dashboard took {paint} ms"
    expect(page.locator(".errors")).to_contain_text("broken.yaml")
    page = u.go("/workers")
    expect(page.get_by_text("No remote workers connected.", exact=False)).to_be_visible()
    # the theme toggle is a keyboard-reachable button and is remembered
    page.get_by_role("button", name="Toggle light/dark theme").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    for theme in ("light", "dark"):
        phone = ui(server, viewport=PHONE, is_mobile=True, color_scheme=theme)
        for name, path in pages.items():
            page = phone.go(path)
            expect(page.locator("main h1")).to_be_visible()
            page.wait_for_load_state("networkidle")
            phone.shot(f"{name}_{theme}_390")
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 1, (name, theme, overflow)
            violations[f"{name}_phone_{theme}"] = axe_violations(page)
        assert phone.errors == [], (theme, phone.errors)
    assert {name: found for name, found in violations.items() if found} == {}


def test_dashboard_loads_from_the_built_pyz(browser: Any, built_pyz: Path, tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    shutil.copy(ROOT / "dags" / "hello.yaml", tmp_path / "dags")
    with serve_pyz(built_pyz, tmp_path) as url:
        u = UI(browser, url, tmp_path / "screenshots")
        page = u.go("/metrics")
        expect(page.locator("main h1")).to_contain_text("Metrics")
        page = u.go("/")
        expect(page.locator("tr[data-dag=hello_world]")).to_be_visible()
        assert http("GET", url + "/vendor/uPlot.esm.js").status == 200
        u.shot("pyz_dashboard")
        assert u.errors == []
        u.close()
