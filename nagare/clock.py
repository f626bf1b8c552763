"""Time helpers. The engine stores UTC epoch milliseconds; the API speaks ISO-8601 with `Z`."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """The current wall-clock time in UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_iso(ms: int | None) -> str | None:
    """Epoch milliseconds -> `2026-11-21T10:15:00.123Z` (None stays None)."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def compact_stamp(ms: int) -> str:
    """Epoch milliseconds -> `20261121T101500.123Z`, used inside run ids."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y%m%dT%H%M%S.") + f"{ms % 1000:03d}Z"


def slot_stamp(ms: int) -> str:
    """Epoch milliseconds of a schedule slot -> `20261121T100000Z` (slots are whole seconds)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y%m%dT%H%M%SZ")


def parse_iso(text: str) -> int:
    """ISO-8601 (with `Z` or an offset; a bare date means midnight UTC) -> epoch milliseconds.

    Raises ValueError with a message naming the expected form.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"'{text}' is not an ISO-8601 time (expected e.g. 2026-11-21T10:00:00Z)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
