"""The DAG editor and the load-error panel in a real browser (fixtures of test_ui.py): line
numbers, highlighting built from text nodes (a <script> in the YAML stays inert), validation as
you type with errors on their lines, save with the load result, the conflict when the file
changed underneath, create, delete with confirmation, `allow_dag_edits: false`; defect 12 (the
file named once, the unclosed quote's line, the cron field out of range, errors open the editor
at their line). Light, dark and phone, axe clean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from axe import axe_violations
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

HELLO = """id: hello
description: "<script>window.__pwned = 1</script><img src=x onerror=window.__pwned=2>"
tasks:
  - id: a
    command: echo hi  # says hi
"""
BROKEN = 'id: broken\ndescription: "never closed\ntasks:\n  - id: a\n    command: x\n\n\n'
CRON = 'id: cronbad\nschedule: "61 * * * *"\ntasks:\n  - id: a\n    command: x\n'
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}


CARET_LINE = (
    "(() => { const t = document.querySelector('textarea.code-input');"
    " return t.value.slice(0, t.selectionStart).split('\\n').length; })()"
)


def wait_caret_line(page: Any, line: int) -> None:
    """The caret reaches `line` (the editor moves it after rendering)."""
    page.wait_for_function(f"{CARET_LINE} === {line} && document.activeElement.matches('textarea')")


def test_the_error_panel_names_each_file_once_and_opens_the_editor_at_the_line(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"hello.yaml": HELLO, "broken.yaml": BROKEN, "cronbad.yaml": CRON})
    u = ui(server, viewport=DESKTOP)
    page = u.go("/dags")
    broken = page.locator('[data-error-file="broken.yaml"]')
    expect(broken).to_contain_text("unclosed quote: the value quoted at line 2, column 14")
    assert broken.inner_text().count("broken.yaml") == 1  # was printed twice
    cron = page.locator('[data-error-file="cronbad.yaml"]')
    expect(cron).to_contain_text("minute 61 out of range 0\u201359")
    assert "expected 5 fields" not in cron.inner_text()
    u.shot("dag_errors_light")
    assert axe_violations(page) == []
    broken.get_by_role("link", name="broken.yaml:2").click()
    expect(page).to_have_url(server.url + "/dags/edit?file=broken.yaml&line=2")
    expect(page.locator("textarea.code-input")).to_be_focused()
    wait_caret_line(page, 2)
    expect(page.locator('.gl.err[data-line="2"]')).to_be_visible()  # validated as it opened
    expect(page.locator("[data-validation=invalid]")).to_contain_text("unclosed quote")
    assert u.errors == []


def test_edit_validate_save_conflict_and_delete(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"hello.yaml": HELLO})
    file = Path(server.root) / "dags" / "hello.yaml"
    u = ui(server, viewport=DESKTOP)
    page = u.go("/dags?id=hello")
    page.locator("[data-edit-file]").click()
    expect(page).to_have_url(server.url + "/dags/edit?file=hello.yaml")
    area = page.get_by_label("YAML of the DAG file")
    expect(area).to_have_value(HELLO)
    expect(page.locator("[data-validation=valid]")).to_be_visible()
    # the <script> and the <img> are text in the highlighted copy, never elements
    highlight = page.locator("[data-highlight]")
    expect(highlight).to_contain_text("<script>window.__pwned = 1</script>")
    assert highlight.locator("script, img").count() == 0
    assert page.evaluate("window.__pwned") is None
    expect(highlight.locator(".y-key").first).to_have_text("id")
    expect(highlight.locator(".y-com")).to_have_text("# says hi")
    expect(page.locator(".code-gutter .gl")).to_have_count(HELLO.count("\n") + 1)
    u.shot("editor_light")
    assert axe_violations(page) == []
    # a problem as you type: marked in the gutter and listed with line and field
    area.fill(HELLO.replace("command: echo hi", "command: echo hi\n    retries: -1"))
    expect(page.locator('.gl.err[data-line="6"]')).to_be_visible()
    problems = page.locator("[data-validation=invalid]")
    expect(problems.locator("[data-error-line='6']")).to_contain_text("tasks[0] (a).retries")
    expect(page.locator("[data-modified]")).to_be_visible()
    u.shot("editor_problem_light")
    problems.get_by_role("button", name="line 6").click()
    wait_caret_line(page, 6)
    # fixed and saved: written to the file, and the answer says the DAG loaded
    edited = HELLO.replace("echo hi", "echo edited")
    area.fill(edited)
    expect(page.locator("[data-validation=valid]")).to_be_visible()
    area.press("Control+s")  # (the Save button does the same)
    expect(page.locator("[data-outcome=loaded]")).to_contain_text("DAG hello is loaded")
    assert file.read_text() == edited
    # the file changed underneath: saving is refused, reloading shows the file as it is
    file.write_text(HELLO.replace("echo hi", "echo from git"))
    area.fill(edited + "# mine\n")
    page.locator("[data-save]").click()
    expect(page.locator("[data-outcome=conflict]")).to_contain_text("changed since it was opened")
    assert "from git" in file.read_text()
    page.get_by_role("button", name="Reload the file (your changes are discarded)").click()
    expect(area).to_have_value(HELLO.replace("echo hi", "echo from git"))
    # delete asks first
    page.locator("[data-delete]").click()
    expect(page.get_by_role("alertdialog")).to_contain_text("Delete hello.yaml?")
    assert file.exists()
    page.get_by_role("button", name="Cancel").click()
    page.locator("[data-delete]").click()
    page.locator("[data-confirm-delete]").click()
    expect(page).to_have_url(server.url + "/dags")
    assert not file.exists()
    assert [e for e in u.errors if "status of 409" not in e] == []  # (the conflict, on purpose)


def test_create_a_dag_in_dark_and_on_a_phone(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"hello.yaml": HELLO})
    u = ui(server, viewport=DESKTOP, color_scheme="dark")
    page = u.go("/dags")
    page.locator("[data-new-dag]").click()
    expect(page).to_have_url(server.url + "/dags/new")
    expect(page.locator("[data-validation=valid]")).to_be_visible()
    u.shot("editor_new_dark")
    assert axe_violations(page) == []
    area = page.get_by_label("YAML of the DAG file")
    area.fill("id: made_here\ntasks:\n  - id: a\n    command: echo made\n")
    page.get_by_role("button", name="Create DAG").click()
    expect(page).to_have_url(server.url + "/dags/edit?file=made_here.yaml")
    expect(page.locator("[data-outcome=loaded]")).to_contain_text("DAG made_here is loaded")
    assert (Path(server.root) / "dags" / "made_here.yaml").exists()
    # creating the same id again is refused (the file is never overwritten)
    page = u.go("/dags/new")
    page.get_by_label("YAML of the DAG file").fill(
        "id: made_here\ntasks:\n  - id: b\n    command: x\n"
    )
    page.get_by_role("button", name="Create DAG").click()
    expect(page.locator("[data-outcome=error]")).to_contain_text("already exists")
    assert "echo made" in (Path(server.root) / "dags" / "made_here.yaml").read_text()
    for theme in ("light", "dark"):
        phone = ui(server, color_scheme=theme, **PHONE)
        page = phone.go("/dags/edit?file=hello.yaml")
        expect(page.locator("[data-validation=valid]")).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        phone.shot(f"editor_phone_{theme}")
        assert axe_violations(page) == [], theme
        assert phone.errors == []
    assert [e for e in u.errors if "status of 409" not in e] == []


def test_edits_turned_off_show_the_text_read_only(
    nagare_factory: Any,
    ui: Any,  # noqa: F811
) -> None:
    server = nagare_factory(dags={"hello.yaml": HELLO}, allow_dag_edits=False)
    u = ui(server, viewport=DESKTOP)
    page = u.go("/dags/edit?file=hello.yaml")
    expect(page.locator("[data-edits-off]")).to_contain_text("allow_dag_edits: false")
    area = page.get_by_label("YAML of the DAG file")
    expect(area).to_have_value(HELLO)
    expect(area).not_to_be_editable()
    expect(page.locator("[data-save]")).to_have_count(0)
    expect(page.locator("[data-delete]")).to_have_count(0)
    u.shot("editor_read_only_light")
    assert axe_violations(page) == []
    page = u.go("/dags")  # no "New DAG" offered either
    expect(page.get_by_role("link", name="hello")).to_be_visible()
    expect(page.locator("[data-new-dag]")).to_have_count(0)
    assert axe_violations(page) == []
    assert u.errors == []
