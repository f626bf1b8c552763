"""Several masters in a real browser (fixtures of test_ui.py): a DAG whose file differs between
two masters on one PostgreSQL database has a warning badge in the DAG list; light, dark and
phone, axe clean."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from axe import axe_violations
from conftest import wait_for
from test_multimaster import EVERY_MINUTE, masters  # noqa: F401 - fixture
from test_ui import browser, expect, ui  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_a_dag_that_differs_between_masters_has_a_warning_badge(
    masters: Any,  # noqa: F811
    ui: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    one, two = masters(
        {"tick.yaml": EVERY_MINUTE, "same.yaml": EVERY_MINUTE.replace("tick", "same")}
    )
    changed = EVERY_MINUTE.replace("command: 'true'", "command: 'echo changed'")
    (two.root / "dags" / "tick.yaml").write_text(textwrap.dedent(changed))
    wait_for(lambda: one.get("/api/dags")[1]["digest_mismatch"], 10, message="the flag")
    views = {
        "desktop": {"viewport": {"width": 1440, "height": 900}},
        "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True},
    }
    for view, context in views.items():
        for theme in ("light", "dark"):
            u = ui(one, color_scheme=theme, **context)
            page = u.go("/dags")
            badge = page.locator("tr[data-dag=tick] [data-digest-mismatch]")
            expect(badge).to_contain_text("differs on 1 master")
            expect(page.locator("tr[data-dag=same] [data-digest-mismatch]")).to_have_count(0)
            page.wait_for_load_state("networkidle")
            assert (
                page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
            )
            u.shot(f"masters_{view}_{theme}")
            assert axe_violations(page) == [], (view, theme)
            assert u.errors == []
