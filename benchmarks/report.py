"""Result rows, the console table and `results.md`."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass
class Row:
    workload: str
    value: str  # the measured median (or percentiles)
    floor: str
    ratio: str  # ratio to the floor, or overhead per hop
    target: str
    passed: bool | None  # None: informational, no target
    notes: str = ""

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "FAIL"


HEADERS = ("workload", "median", "floor", "ratio / overhead", "target", "result")


def error_row(workload: str, message: str) -> Row:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    return Row(workload, "ERROR", "-", "-", "-", False, first[:200])


def _cells(row: Row) -> tuple[str, ...]:
    return (row.workload, row.value, row.floor, row.ratio, row.target, row.verdict)


def console_table(rows: list[Row]) -> str:
    table = [HEADERS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.workload}: {r.notes}" for r in rows if r.notes]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def machine() -> dict[str, str]:
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def markdown(rows: list[Row], context: dict[str, str]) -> str:
    info = {**machine(), **context}
    head = "| " + " | ".join(HEADERS) + " | notes |\n|" + "---|" * (len(HEADERS) + 1) + "\n"
    body = "".join(
        "| " + " | ".join(_escape(c) for c in (*_cells(r), r.notes)) + " |\n" for r in rows
    )
    lines = [f"- {key}: {value}" for key, value in info.items()]
    return (
        "# Nagare benchmark results\n\n"
        "Written by `python3 benchmarks/run.py`; overwritten on every run.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + head
        + body
    )


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def write_markdown(path: Path, rows: list[Row], context: dict[str, str]) -> None:
    path.write_text(markdown(rows, context))
