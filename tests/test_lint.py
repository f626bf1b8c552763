"""House style is part of the test suite: ruff (lint and format), mypy --strict over the package,
and a dead-code check (vulture, with a small whitelist of names only frameworks and tests use)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

TARGETS = ["nagare", "tests", "build_pyz.py", "benchmarks"]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(
    shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')"
)
def test_ruff_lint_and_format() -> None:
    lint = run("ruff", "check", *TARGETS)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", *TARGETS)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = run(sys.executable, "-m", "mypy", "nagare")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_dead_code() -> None:
    pytest.importorskip("vulture", reason="vulture is not installed (pip install -e '.[test]')")
    result = run(
        sys.executable,
        "-m",
        "vulture",
        "nagare",
        "tests/vulture_whitelist.py",
        "--min-confidence",
        "60",
    )
    assert result.returncode == 0, (
        "unused code (delete it; if only a framework or a test uses it by name, add it to "
        "tests/vulture_whitelist.py with the reason):\n" + result.stdout + result.stderr
    )
