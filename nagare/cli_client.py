"""API client commands of the command line (filled in below)."""

from __future__ import annotations

import argparse


def add_client_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    return None
