"""Cron arithmetic: the only module that uses croniter. Pure functions of expression, zone, time."""

from __future__ import annotations

import os
import re
from datetime import datetime, tzinfo
from functools import lru_cache
from typing import Any

from nagare.clock import now_ms

MANUAL_SCHEDULES = ("", "workflow_dispatch")
DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = re.compile(r"^@every\s+(\d+)\s*(s|m|h|d)$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _croniter() -> Any:
    """croniter (and dateutil under it) is imported by the first cron schedule, not by every
    command: a DAG without one, `nagare exec` of it or a client command never needs it."""
    from croniter import croniter

    return croniter


class Schedule:
    """A parsed schedule: 5-field cron, a descriptor, or `@every <n><s|m|h|d>` (epoch-aligned)."""

    def __init__(self, expression: str, zone: tzinfo) -> None:
        self.expression = expression
        self.zone = zone
        self._every_ms = _every_ms(expression)
        self._cron = "" if self._every_ms else DESCRIPTORS.get(expression, expression)

    def next_after(self, ms: int) -> int:
        """The first slot strictly after `ms` (epoch milliseconds).

        On the night clocks go back, a fixed-hour expression (`0 2 * * *`) fires once, not
        again in the repeated hour, as cron does.
        """
        if self._every_ms:
            return (ms // self._every_ms + 1) * self._every_ms
        start = datetime.fromtimestamp(ms / 1000, tz=self.zone)
        iterator = _croniter()(self._cron, start)
        while True:
            nxt = iterator.get_next(datetime)
            if not (self._fixed_hours and _wall(nxt) <= _wall(start)):
                return int(nxt.timestamp() * 1000)

    @property
    def _fixed_hours(self) -> bool:
        return "*" not in self._cron.split()[1]

    def slots_between(self, after_ms: int, until_ms: int, limit: int) -> tuple[list[int], int]:
        """Slots s with after < s <= until, oldest first; keeps the newest `limit`.

        Returns (slots, how many older slots were dropped by the limit).
        """
        if self._every_ms:
            return self._every_between(after_ms, until_ms, limit)
        slots: list[int] = []
        dropped = 0
        slot = self.next_after(after_ms)
        while slot <= until_ms:
            slots.append(slot)
            if len(slots) > limit:
                slots.pop(0)
                dropped += 1
            slot = self.next_after(slot)
        return slots, dropped

    def _every_between(self, after_ms: int, until_ms: int, limit: int) -> tuple[list[int], int]:
        step = self._every_ms
        first = (after_ms // step + 1) * step
        last = until_ms // step * step
        if last < first:
            return [], 0
        count = (last - first) // step + 1
        kept = min(count, limit)
        return [last - (kept - 1 - i) * step for i in range(kept)], count - kept

    def describe(self) -> str:
        return describe(self.expression)


NEVER = 2**62  # epoch ms of "no next slot" (past an end_date)


class Schedules:
    """Every schedule of a DAG within its start and end dates: a slot several expressions
    produce is one slot. Same interface as `Schedule`."""

    def __init__(
        self, parts: list[Schedule], start: int | None = None, end: int | None = None
    ) -> None:
        self.parts = parts
        self.start = start
        self.end = end

    def next_after(self, ms: int) -> int:
        after = ms if self.start is None else max(ms, self.start - 1)
        slot = min(part.next_after(after) for part in self.parts)
        return NEVER if self.end is not None and slot > self.end else slot

    def slots_between(self, after_ms: int, until_ms: int, limit: int) -> tuple[list[int], int]:
        after = after_ms if self.start is None else max(after_ms, self.start - 1)
        until = until_ms if self.end is None else min(until_ms, self.end)
        if until <= after:
            return [], 0
        merged: set[int] = set()
        dropped = 0
        for part in self.parts:
            slots, lost = part.slots_between(after, until, limit)
            merged.update(slots)
            dropped = max(dropped, lost)
        ordered = sorted(merged)
        kept = ordered[-limit:] if limit > 0 else []
        return kept, dropped + len(ordered) - len(kept)


def dag_schedules(
    expressions: tuple[str, ...], timezone: str, start: int | None, end: int | None
) -> Schedules:
    """The parsed schedules of a DAG (`DagDef.cron_expressions`, its timezone and dates)."""
    return Schedules([parse_schedule(e, timezone) for e in expressions], start, end)


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def _every_ms(expression: str) -> int:
    match = _EVERY.match(expression.strip())
    if not match:
        return 0
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_schedule(expression: str, timezone: str = "") -> Schedule:
    """Validate and parse; raises ValueError saying what was found and what is expected."""
    zone = resolve_zone(timezone)
    expr = expression.strip()
    if expr.startswith("@every"):
        if not _every_ms(expr):
            raise ValueError(
                f"'{expression}' is not a valid @every schedule (expected e.g. '@every 5m')"
            )
        return Schedule(expr, zone)
    cron = DESCRIPTORS.get(expr, expr)
    if expr.startswith("@") and expr not in DESCRIPTORS:
        raise ValueError(
            f"unknown schedule descriptor '{expression}' "
            f"(expected one of {', '.join(DESCRIPTORS)} or @every <n>s|m|h|d)"
        )
    problem = field_problem(cron.split())
    if problem:
        raise ValueError(f"'{expression}' is not a valid cron expression: {problem}")
    if not _croniter().is_valid(cron):
        raise ValueError(
            f"'{expression}' is not a valid cron expression "
            "(expected 5 fields: minute hour day-of-month month day-of-week, each a number, "
            "a range, a list, a step or '*', e.g. '0 */6 * * *')"
        )
    schedule = Schedule(expr, zone)
    try:
        schedule.next_after(now_ms())  # croniter accepts some expressions it cannot evaluate
    except Exception:
        raise ValueError(f"cron expression '{expression}' never matches a date") from None
    return schedule


# (name, low, high) of the five fields; names (jan, mon) are checked by croniter
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_NUMBER_PART = re.compile(r"^(\d+)(?:-(\d+))?(?:/(\d+))?$")


def field_problem(fields: list[str]) -> str:
    """What is wrong with the count or the numbers of a cron expression's fields, or ''."""
    if len(fields) != 5:
        return (
            "expected 5 fields: minute hour day-of-month month day-of-week "
            f"(e.g. '0 */6 * * *'), found {len(fields)}"
        )
    for text, (name, low, high) in zip(fields, CRON_FIELDS, strict=True):
        for part in text.split(","):
            match = _NUMBER_PART.match(part.removeprefix("*"))
            numbers = [int(n) for n in match.groups()[:2] if n is not None] if match else []
            for number in numbers:
                if not low <= number <= high:
                    return f"{name} {number} out of range {low}\u2013{high}"
    return ""


def resolve_zone(name: str) -> tzinfo:
    """An IANA zone by name, or the server's local zone when the name is empty."""
    if not name:
        return local_zone()
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # with the first zone: not at start

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone '{name}' (expected an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


@lru_cache(maxsize=1)
def local_zone() -> tzinfo:
    """The server's zone: $TZ, else /etc/localtime, else UTC."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except OSError:
        return ZoneInfo("UTC")


def describe(expression: str) -> str:
    """A short English description of common schedules, for people reading a DAG list."""
    expr = expression.strip()
    if expr in MANUAL_SCHEDULES:
        return "manual only"
    if match := _EVERY.match(expr):
        unit = {"s": "second", "m": "minute", "h": "hour", "d": "day"}[match.group(2)]
        count = int(match.group(1))
        return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    names = {
        "@hourly": "every hour",
        "@daily": "every day at 00:00",
        "@midnight": "every day at 00:00",
        "@weekly": "every Sunday at 00:00",
        "@monthly": "on day 1 of every month at 00:00",
        "@yearly": "every year on Jan 1 at 00:00",
        "@annually": "every year on Jan 1 at 00:00",
    }
    if expr in names:
        return names[expr]
    return _describe_fields(expr.split())


def _describe_fields(fields: list[str]) -> str:
    if len(fields) != 5:
        return expr_text(fields)
    minute, hour, dom, month, dow = fields
    if fields == ["*"] * 5:
        return "every minute"
    if minute.startswith("*/") and hour == dom == month == dow == "*":
        return f"every {minute[2:]} minutes"
    if minute.isdigit() and hour == dom == month == dow == "*":
        return f"every hour at minute {minute}"
    if minute.isdigit() and hour.startswith("*/") and dom == month == dow == "*":
        return f"every {hour[2:]} hours at minute {minute}"
    if minute.isdigit() and hour.isdigit():
        at = f"{int(hour):02d}:{int(minute):02d}"
        if dom == month == dow == "*":
            return f"every day at {at}"
        if dom == month == "*" and dow in {"1-5", "MON-FRI", "mon-fri"}:
            return f"every weekday at {at}"
    return f"cron '{expr_text(fields)}'"


def expr_text(fields: list[str]) -> str:
    return " ".join(fields)
