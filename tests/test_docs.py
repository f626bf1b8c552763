"""The README's reference tables stay in step with the code they describe."""

from __future__ import annotations

import re

from conftest import ROOT

from nagare.cli import build_parser
from nagare.config import options_markdown

README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "python3 build_pyz.py && python3 nagare.pyz" in first_block
    assert "python3 -m pip install -e '.[test]' && python3 -m pytest -q" in first_block


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m pip install -q -e '.[test]' && python3 -m pytest -q" in ci


def test_configuration_table_matches_the_option_table() -> None:
    table = README.split("<!-- options-table", 1)[1].split("-->", 1)[1]
    table = table.split("<!-- end options-table -->", 1)[0].strip()
    assert table == options_markdown().strip()


def test_every_cli_command_is_documented() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for name in commands.choices:  # type: ignore[union-attr]
        assert re.search(rf"`{name}[ `]", README), f"README does not document `{name}`"


def test_every_api_route_is_documented(nagare) -> None:  # type: ignore[no-untyped-def]
    for route in nagare.app.api.routes:
        path = route.path
        last = path.rsplit("/", 1)[-1]
        assert path in README or f"/{last}`" in README, f"README lacks {route.method} {path}"
