"""The real parts the other suites rely on are really there (mandatory in CI)."""

from __future__ import annotations

import subprocess

from conftest import DOCKER_TEST_IMAGE, require_chromium, require_docker


def test_docker_engine_runs_the_local_test_image() -> None:
    require_docker()
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            DOCKER_TEST_IMAGE,
            "sh",
            "-c",
            "echo ok from $(uname -s)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok from Linux"


def test_headless_chromium_starts() -> None:
    chromium = require_chromium()
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
            "data:text/html,<p>nagare</p>",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "<p>nagare</p>" in result.stdout, result.stderr[-2000:]
