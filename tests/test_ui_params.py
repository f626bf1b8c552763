"""The trigger dialog of a DAG with `params:` is a form generated from them (workflow language
§2), judged in a real browser: type-appropriate inputs, the server's 422 messages next to each
field, a run started with the typed values; light, dark and phone screenshots; axe-core clean."""

from __future__ import annotations

import re
from typing import Any

import test_ui
from axe import axe_violations
from conftest import ROOT
from test_ui import expect

browser = test_ui.browser  # the fixtures of the browser tests
ui = test_ui.ui


def test_params_form_server_errors_next_to_fields_then_a_typed_run(
    nagare_factory: Any, ui: Any
) -> None:
    example = (ROOT / "dags" / "params_example.yaml").read_text()
    server = nagare_factory(dags={"params_example.yaml": example})
    u = ui(server)
    page = u.go("/")
    # A required parameter: the quick trigger opens the form instead of failing.
    page.get_by_role("button", name="Trigger params_example", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Trigger params_example")).to_be_visible()
    batch = dialog.get_by_label("batch_size", exact=False)
    expect(batch).to_have_attribute("type", "number")
    expect(batch).to_have_attribute("min", "1")
    expect(batch).to_have_attribute("max", "10000")
    expect(batch).to_have_value("500")
    expect(dialog.get_by_text("Rows per batch")).to_be_visible()
    mode = dialog.get_by_label("mode", exact=False)
    assert mode.evaluate("e => e.tagName") == "SELECT"
    expect(mode.locator("option:checked")).to_have_text("incremental")
    dry = dialog.get_by_label("dry_run", exact=False)
    expect(dry).to_have_attribute("type", "checkbox")
    expect(dry).not_to_be_checked()
    tables = dialog.get_by_label("tables", exact=False)
    assert tables.evaluate("e => e.tagName") == "TEXTAREA"
    expect(tables).to_have_value('["orders","customers"]')
    since = dialog.get_by_label("since", exact=False)
    expect(since).to_have_attribute("aria-required", "true")
    expect(since).to_have_attribute("pattern", r"^\d{4}-\d{2}-\d{2}$")
    u.shot("params_form_light")
    assert axe_violations(page) == []

    # Out of bounds and a bad date: the server's messages appear next to their fields.
    batch.fill("0")
    since.fill("yesterday")
    dialog.get_by_role("button", name="Trigger run").click()
    batch_error = dialog.locator("#param-batch_size-err")
    expect(batch_error).to_have_text("expected an integer from 1 to 10000, found the number 0")
    expect(batch).to_have_attribute("aria-invalid", "true")
    assert "param-batch_size-err" in (batch.get_attribute("aria-describedby") or "")
    expect(dialog.locator("#param-since-err")).to_contain_text("expected a string matching")
    expect(dialog.get_by_role("alert")).to_contain_text("Some parameters are not valid")
    expect(dialog.locator("[aria-invalid=true]")).to_have_count(2)
    expect(batch).to_be_focused()
    assert server.get("/api/runs")["total"] == 0
    u.shot("params_form_errors_light")
    assert axe_violations(page) == []

    # Fixed: the run starts with the typed values.
    batch.fill("25")
    since.fill("2026-01-02")
    mode.select_option("full")
    dry.check()
    tables.fill('["orders"]')
    dialog.get_by_role("button", name="Trigger run").click()
    page.wait_for_url(re.compile(r"/runs\?id=params_example__manual__"))
    run_id = page.url.split("id=")[1]
    params = server.get(f"/api/runs/{run_id}")["params"]
    assert params == {
        "REGION": "eu",
        "batch_size": 25,
        "mode": "full",
        "dry_run": True,
        "since": "2026-01-02",
        "ratio": 0.5,
        "tables": ["orders"],
        "filters": {},
    }
    expect(page.locator("[data-params]")).to_contain_text('"batch_size": 25')
    assert server.wait_run(run_id)["status"] == "success"
    assert "mode=full batch_size=25 dry_run=true" in server.log(run_id, "load")
    assert [e for e in u.errors if "status of 422" not in e] == [], u.errors  # the browser's own

    for name, context in (
        ("dark", {"color_scheme": "dark"}),
        ("phone", {"viewport": {"width": 390, "height": 844}, "is_mobile": True}),
    ):
        other = ui(server, **context)
        page = other.go("/dags?id=params_example")
        page.get_by_role("button", name="Trigger params_example with parameters").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_label("batch_size", exact=False).fill("99999")
        dialog.get_by_role("button", name="Trigger run").click()
        expect(dialog.locator("#param-batch_size-err")).to_be_visible()
        other.shot(f"params_form_errors_{name}")
        assert axe_violations(page) == [], name
        overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 1, (name, overflow)
        assert [e for e in other.errors if "status of 422" not in e] == [], other.errors


def test_a_dag_without_params_keeps_the_key_value_dialog(nagare_factory: Any, ui: Any) -> None:
    server = nagare_factory(
        dags={"plain.yaml": "id: plain\ntasks: [{id: t, command: 'echo $WHO'}]\n"}
    )
    u = ui(server)
    page = u.go("/")
    page.get_by_role("button", name="Trigger plain with parameters").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Run parameters", exact=False).fill('{"WHO": "ui"}')
    dialog.get_by_role("button", name="Trigger run").click()
    page.wait_for_url(re.compile(r"/runs\?id=plain__manual__"))
    run_id = page.url.split("id=")[1]
    assert server.get(f"/api/runs/{run_id}")["conf"] == {"WHO": "ui"}
    assert u.errors == []
