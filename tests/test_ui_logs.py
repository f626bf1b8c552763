"""The task log viewer in a real browser (fixtures of test_ui.py): ANSI colours as spans (other
escapes stripped), stderr told from stdout, line numbers, times, search with a count and
next/previous, wrap, Copy on a page without the Clipboard API; a 100,000-line log wholly
reachable with only a window of rows in the DOM; light, dark and phone, axe clean."""

from __future__ import annotations

import re
from typing import Any

import pytest
from axe import axe_violations
from test_ui import FRAME_GAP, TIMEOUT, browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

COLOURS = r"""
id: colours
schedule: "workflow_dispatch"
tasks:
  - id: paint
    command: |
      printf '\033[31mred\033[0m plain \033[1;32mbold green\033[0m\n'
      printf '\033[38;5;208morange256\033[0m \033[38;2;255;200;0mtruecolour\033[0m '
      printf '\033[30;47mblack on white\033[0m\n'
      printf '\033[3mitalic\033[23m \033[4munder\033[24m \033[2mdim\033[22m '
      printf '\033[?25l\033]0;title\007gone\n'
      printf '\033[33mspans\nlines\033[0m\n'
      sleep 0.3
      echo 'oops <script>alert(1)</script><img src=x onerror=alert(2)>' >&2
      sleep 0.3
      echo needle one; echo needle two; echo NEEDLE three
  - id: spew
    command: seq 1 100000
"""
# (the time a search takes to show a match 100,000 lines away)
SEARCH = """([input, q]) => new Promise((done) => {
    const t0 = performance.now();
    const box = document.querySelector(input);
    box.value = q; box.dispatchEvent(new Event('input', { bubbles: true }));
    box.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
    const check = () => (document.querySelector('[data-task=spew] mark.cur')
        ? done(performance.now() - t0)
        : performance.now() - t0 > 5000 ? done(-1) : requestAnimationFrame(check));
    requestAnimationFrame(check);
})"""
# (the rows' summed height, the room the layout gave them, the stderr row's height)
ROW_HEIGHTS = """(e) => {
    const rows = [...e.querySelectorAll('.logv-row')];
    const inner = e.querySelector('.logv-inner');
    return [rows.reduce((k, r) => k + r.offsetHeight, 0), inner.offsetHeight - 16,
            e.querySelector('[data-stream=stderr]').offsetHeight];
}"""
NO_CLIPBOARD = """
Object.defineProperty(Navigator.prototype, 'clipboard', {
    get: () => undefined, configurable: true });
document.addEventListener('copy', (e) => {
    window.__copied = e.target.value ?? String(getSelection()); }, true);
"""


def test_colours_streams_search_times_wrap_and_copy(nagare_factory: Any, ui: Any) -> None:  # noqa: F811
    server = nagare_factory(dags={"colours.yaml": COLOURS})
    run_id = server.trigger("colours")
    assert server.wait_run(run_id)["status"] == "success"
    u = ui(server, viewport={"width": 1440, "height": 900})
    u.page.add_init_script(NO_CLIPBOARD)  # as on a plain-HTTP origin
    page = u.go(f"/runs?id={run_id}&task=paint")
    task = page.locator("[data-task=paint]")
    log = task.locator("[data-log]")
    expect(task.get_by_text("finished: success")).to_be_visible()
    # colours and styles become spans; everything else is stripped
    red = log.locator(".af1", has_text="red")
    expect(red).to_have_count(1)
    assert red.evaluate("e => getComputedStyle(e).color") == "rgb(248, 113, 113)"
    expect(log.locator(".af2.a-b")).to_have_text("bold green")
    orange = log.locator("span", has_text=re.compile("^orange256$"))
    expect(orange).to_have_attribute("style", re.compile(r"color: rgb\(255, 135, 0\)"))
    expect(log.locator("span", has_text=re.compile("^truecolour$"))).to_have_attribute(
        "style", re.compile(r"color: rgb\(255, 200, 0\)")
    )
    expect(log.locator(".ab7.af0")).to_have_text("black on white")
    expect(log.locator(".a-i")).to_have_text("italic")
    expect(log.locator(".a-u")).to_have_text("under")
    expect(log.locator(".a-d")).to_have_text("dim")
    expect(log.locator("[data-line='3'] .lt")).to_have_text("italic under dim gone")
    expect(log.locator("[data-line='5'] .af3")).to_have_text("lines")  # colour spans lines
    assert "\x1b" not in log.inner_text()
    # stderr is told apart (marked, and said to screen readers); markup stays text
    err = log.locator("[data-stream=stderr]")
    expect(err).to_have_count(1)
    expect(err).to_contain_text("oops <script>alert(1)</script><img src=x onerror=alert(2)>")
    expect(err).to_contain_text("stderr:")
    assert log.locator("script, img").count() == 0
    expect(log.locator("[data-stream=stdout]")).to_have_count(8)
    expect(task.get_by_text("stderr", exact=True)).to_be_visible()  # the legend
    # line numbers (not part of the text) and times on demand
    expect(log.locator("[data-line='7'] .ln")).to_have_attribute("data-n", "7")
    assert log.inner_text().split("\n")[0] == "red plain bold green"
    expect(log.locator(".ts")).to_have_count(0)
    task.get_by_role("button", name="Times").click()
    expect(log.locator("[data-line='1'] .ts")).to_have_attribute(
        "data-t", re.compile(r"^\d\d:\d\d:\d\d$")
    )
    # search: a count, marks, next and previous (Enter, Shift+Enter)
    search = task.get_by_label("Search the log")
    search.fill("needle")
    count = task.locator("[data-match-count]")
    expect(count).to_have_text("1 of 3")
    expect(log.locator("mark")).to_have_count(3)
    expect(log.locator("mark.cur")).to_have_text("needle")
    search.press("Enter")
    expect(count).to_have_text("2 of 3")
    expect(log.locator("[data-line='8'] mark.cur")).to_have_count(1)
    task.get_by_role("button", name="Next match").click()
    expect(count).to_have_text("3 of 3")
    expect(log.locator("mark.cur")).to_have_text("NEEDLE")
    search.press("Shift+Enter")
    expect(count).to_have_text("2 of 3")
    u.shot("log_viewer_light")
    assert axe_violations(page) == []
    # wrap
    wrap = task.get_by_role("button", name="Wrap")
    expect(wrap).to_have_attribute("aria-pressed", "false")
    wrap.click()
    expect(wrap).to_have_attribute("aria-pressed", "true")
    expect(log).to_have_class(re.compile(r"\bwrap\b"))
    # Copy without the Clipboard API: the hidden-textarea fallback
    task.get_by_role("button", name="Copy").click()
    expect(page.get_by_text("Copied 9 lines")).to_be_visible()
    copied = page.evaluate("window.__copied")
    assert copied.startswith("red plain bold green\norange256 truecolour black on white\n")
    assert copied.endswith("needle two\nNEEDLE three") and "\x1b" not in copied
    search.fill("nothing like this")
    expect(count).to_have_text("no matches")
    assert u.errors == []
    for theme, extra in (
        ("dark", {"viewport": {"width": 1440, "height": 900}}),
        ("phone_light", {"viewport": {"width": 390, "height": 844}, "is_mobile": True}),
        ("phone_dark", {"viewport": {"width": 390, "height": 844}, "is_mobile": True}),
    ):
        scheme = "dark" if theme.endswith("dark") else "light"
        v = ui(server, color_scheme=scheme, **extra)
        page = v.go(f"/runs?id={run_id}&task=paint")
        task = page.locator("[data-task=paint]")
        expect(task.get_by_text("finished: success")).to_be_visible()
        task.get_by_label("Search the log").fill("needle")
        expect(task.locator("[data-match-count]")).to_have_text("1 of 3")
        v.shot(f"log_viewer_{theme}")
        assert axe_violations(page) == [], theme
        # wrapped, each row takes the height the character width predicts (no overlap, no gap)
        task.get_by_role("button", name="Wrap").click()
        expect(task.locator("[data-log]")).to_have_class(re.compile(r"\bwrap\b"))
        heights = task.locator("[data-log]").evaluate(ROW_HEIGHTS)
        assert heights[0] == heights[1], (theme, heights)
        assert heights[2] >= (36 if theme.startswith("phone") else 18), (theme, heights)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= extra["viewport"]["width"], (theme, width)  # type: ignore[index]
        assert v.errors == []


def test_hundred_thousand_lines_all_reachable_with_a_window_of_rows(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"colours.yaml": COLOURS})
    run_id = server.trigger("colours")
    assert server.wait_run(run_id)["status"] == "success"
    u = ui(server, viewport={"width": 1440, "height": 900})
    page = u.go(f"/runs?id={run_id}&task=spew")
    task = page.locator("[data-task=spew]")
    log = task.locator("[data-log]")
    expect(task.get_by_text("100000 lines")).to_be_visible(timeout=4 * TIMEOUT)
    expect(task.get_by_text("finished: success")).to_be_visible()
    # the end is what you see, and only a window of rows is in the DOM
    expect(log.locator("[data-line='100000']")).to_be_visible(timeout=TIMEOUT)
    assert log.evaluate("e => e.scrollTop + e.clientHeight >= e.scrollHeight - 20")
    assert log.locator(".logv-row").count() < 200
    # the first line is reachable by scrolling (the old viewer kept only the last 2,000)
    log.evaluate("e => { e.scrollTop = 0; }")
    expect(log.locator("[data-line='1']")).to_be_visible()
    assert log.locator(".logv-row").count() < 200
    assert page.evaluate(FRAME_GAP, 600) < 500
    log.hover()
    for _ in range(5):
        page.mouse.wheel(0, 40000)
    assert page.evaluate(FRAME_GAP, 600) < 500
    log.focus()
    page.keyboard.press("End")
    expect(log.locator("[data-line='100000']")).to_be_visible()
    # a search finds a line far away and scrolls to it, quickly
    took = page.evaluate(SEARCH, ["[data-task=spew] input[type=search]", "12345"])
    assert 0 <= took < 1000, f"search took {took} ms"
    expect(task.locator("[data-match-count]")).to_have_text("1 of 1")
    expect(log.locator("[data-line='12345'] mark.cur")).to_be_visible()
    # wrapped, the offsets still hold: the middle and the end
    task.get_by_role("button", name="Wrap").click()
    log.evaluate("e => { e.scrollTop = e.scrollHeight / 2; }")
    expect(log.locator("[data-line='50010']")).to_be_visible()
    assert log.locator(".logv-row").count() < 200
    assert page.evaluate(FRAME_GAP, 600) < 500
    u.shot("log_viewer_100k")
    assert u.errors == []
