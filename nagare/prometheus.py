"""The Prometheus text exposition format, version 0.0.4: metric families in, text out. Pure.

https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    suffix: str  # "" or _bucket / _sum / _count of a histogram
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass
class Family:
    """One metric: a counter's name ends in `_total`; a histogram's samples carry suffixes."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        self.samples.append(Sample(suffix, tuple(labels.items()), value))
        return self

    def histogram(
        self, buckets: Iterable[tuple[float, int]], total: float, **labels: str
    ) -> Family:
        """Add one histogram series from (upper bound, count in that bucket alone) pairs in
        ascending order, the last with bound +Inf; counts are made cumulative here."""
        running = 0
        for bound, count in buckets:
            running += count
            self.add(running, "_bucket", **labels, le=format_value(bound))
        self.add(total, "_sum", **labels)
        self.add(running, "_count", **labels)
        return self


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            lines.append(
                f"{family.name}{sample.suffix}{_labels(sample.labels)} {format_value(sample.value)}"
            )
    return "\n".join(lines) + "\n"


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels)
    return "{" + body + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
