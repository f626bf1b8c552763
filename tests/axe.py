"""axe-core in the browser tests: the script comes with the test dependency
`axe-playwright-python` (which bundles axe.min.js), so no Node.js is needed."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any


@cache
def axe_script() -> str:
    return (resources.files("axe_playwright_python") / "axe.min.js").read_text()


def axe_violations(page: Any) -> list[str]:
    """The critical and serious axe-core violations of the page as it is now."""
    page.add_script_tag(content=axe_script())
    found = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .filter((v) => v.impact === "critical" || v.impact === "serious")
            .map((v) => `${v.id}: ${v.help} `
                + `(${v.nodes.map((n) => n.target.join(" ")).join(", ")})`)"""
    )
    return list(found)
