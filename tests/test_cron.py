"""Cron arithmetic (`nagare/cron.py`): pure functions of expression, zone and time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from nagare.cron import DESCRIPTORS, Schedule, describe, parse_schedule, resolve_zone

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def ms(text: str) -> int:
    """ISO-8601 with an offset -> epoch milliseconds."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def utc(ms_value: int) -> str:
    return datetime.fromtimestamp(ms_value / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_slots(schedule: Schedule, after: str, count: int) -> list[str]:
    slots, slot = [], ms(after)
    for _ in range(count):
        slot = schedule.next_after(slot)
        slots.append(utc(slot))
    return slots


# ---------------------------------------------------------------- 5-field cron


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", "2024-05-10T10:07:00+00:00", "2024-05-10T10:15:00Z"),
        ("*/15 * * * *", "2024-05-10T10:15:00+00:00", "2024-05-10T10:30:00Z"),  # strictly after
        ("*/15 * * * *", "2024-05-10T10:14:59.999+00:00", "2024-05-10T10:15:00Z"),
        ("0 */6 * * *", "2024-05-10T07:00:00+00:00", "2024-05-10T12:00:00Z"),
        ("30 9 * * 1-5", "2024-05-10T10:00:00+00:00", "2024-05-13T09:30:00Z"),  # Fri -> Mon
        ("0 0 29 2 *", "2024-03-01T00:00:00+00:00", "2028-02-29T00:00:00Z"),
        ("5 4 1 1,7 *", "2024-05-10T00:00:00+00:00", "2024-07-01T04:05:00Z"),
        ("0 12 * * sun", "2024-05-10T00:00:00+00:00", "2024-05-12T12:00:00Z"),
        ("0 12 * * 7", "2024-05-10T00:00:00+00:00", "2024-05-12T12:00:00Z"),
    ],
)
def test_five_field_cron_next_slot(expression: str, after: str, expected: str) -> None:
    schedule = parse_schedule(expression, "UTC")
    assert utc(schedule.next_after(ms(after))) == expected


def test_slots_are_whole_minutes_whatever_the_start() -> None:
    schedule = parse_schedule("* * * * *", "UTC")
    slot = schedule.next_after(ms("2024-05-10T10:00:30.250+00:00"))
    assert utc(slot) == "2024-05-10T10:01:00Z"
    assert slot % MINUTE == 0


def test_surrounding_whitespace_is_ignored() -> None:
    schedule = parse_schedule("  0 * * * *  ", "UTC")
    assert utc(schedule.next_after(ms("2024-05-10T10:30:00+00:00"))) == "2024-05-10T11:00:00Z"


# ---------------------------------------------------------------- descriptors


@pytest.mark.parametrize(
    ("descriptor", "expected"),
    [
        ("@hourly", "2024-05-10T11:00:00Z"),
        ("@daily", "2024-05-11T00:00:00Z"),
        ("@midnight", "2024-05-11T00:00:00Z"),
        ("@weekly", "2024-05-12T00:00:00Z"),  # the next Sunday
        ("@monthly", "2024-06-01T00:00:00Z"),
        ("@yearly", "2025-01-01T00:00:00Z"),
        ("@annually", "2025-01-01T00:00:00Z"),
    ],
)
def test_descriptors(descriptor: str, expected: str) -> None:
    schedule = parse_schedule(descriptor, "UTC")
    assert utc(schedule.next_after(ms("2024-05-10T10:20:00+00:00"))) == expected
    cron = parse_schedule(DESCRIPTORS[descriptor], "UTC")
    assert schedule.next_after(ms("2024-05-10T10:20:00+00:00")) == cron.next_after(
        ms("2024-05-10T10:20:00+00:00")
    )


# ---------------------------------------------------------------- @every


@pytest.mark.parametrize(
    ("expression", "period"),
    [
        ("@every 5m", 5 * MINUTE),
        ("@every 90s", 90_000),
        ("@every 1h", HOUR),
        ("@every 2d", 2 * DAY),
        ("@every 5 m", 5 * MINUTE),
    ],
)
def test_every_is_aligned_to_the_epoch(expression: str, period: int) -> None:
    schedule = parse_schedule(expression, "UTC")
    start = ms("2024-05-10T10:07:13.5+00:00")
    first = schedule.next_after(start)
    assert first % period == 0
    assert start < first <= start + period
    assert schedule.next_after(first) == first + period  # strictly after a slot


def test_every_5m_slots() -> None:
    schedule = parse_schedule("@every 5m", "Europe/Berlin")
    assert next_slots(schedule, "2024-05-10T10:07:00+00:00", 3) == [
        "2024-05-10T10:10:00Z",
        "2024-05-10T10:15:00Z",
        "2024-05-10T10:20:00Z",
    ]


def test_every_ignores_the_timezone() -> None:
    start = ms("2024-05-10T10:07:00+00:00")
    berlin = parse_schedule("@every 1d", "Europe/Berlin").next_after(start)
    tokyo = parse_schedule("@every 1d", "Asia/Tokyo").next_after(start)
    assert berlin == tokyo == ms("2024-05-11T00:00:00+00:00")


# ---------------------------------------------------------------- invalid expressions


@pytest.mark.parametrize(
    "expression",
    [
        "* * * *",
        "* * * * * *",
        "a b c d e",
        "*/0 * * * *",
        "hourly",
    ],
)
def test_invalid_cron_expressions(expression: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(expression, "UTC")
    message = str(info.value)
    assert f"'{expression}' is not a valid cron expression" in message
    assert "expected 5 fields: minute hour day-of-month month day-of-week" in message


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("61 * * * *", "minute 61 out of range 0\u201359"),
        ("60 * * * *", "minute 60 out of range 0\u201359"),
        ("* 24 * * *", "hour 24 out of range 0\u201323"),
        ("* * 32 * *", "day-of-month 32 out of range 1\u201331"),
        ("* * 0 * *", "day-of-month 0 out of range 1\u201331"),
        ("* * * 13 *", "month 13 out of range 1\u201312"),
        ("* * * * 8", "day-of-week 8 out of range 0\u20137"),
        ("5-70 * * * *", "minute 70 out of range 0\u201359"),
        ("0 1,25 * * *", "hour 25 out of range 0\u201323"),
    ],
)
def test_an_out_of_range_field_is_named_with_its_range(expression: str, problem: str) -> None:
    """Defect 12: an out-of-range field used to be reported as "expected 5 fields"."""
    with pytest.raises(ValueError) as info:
        parse_schedule(expression, "UTC")
    assert str(info.value) == f"'{expression}' is not a valid cron expression: {problem}"


def test_a_wrong_field_count_says_how_many_were_found() -> None:
    with pytest.raises(ValueError, match=r"expected 5 fields: .*found 6"):
        parse_schedule("* * * * * *", "UTC")


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 *"])
def test_a_date_that_never_exists_never_matches(expression: str) -> None:
    with pytest.raises(ValueError, match=r"never matches a date") as info:
        parse_schedule(expression, "UTC")
    assert expression in str(info.value)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("@reboot", "unknown schedule descriptor '@reboot'"),
        ("@fortnightly", "unknown schedule descriptor"),
        ("@every", "not a valid @every schedule"),
        ("@every 0m", "not a valid @every schedule"),
        ("@every 5", "not a valid @every schedule"),
        ("@every 5w", "not a valid @every schedule"),
        ("@every -5m", "not a valid @every schedule"),
    ],
)
def test_invalid_descriptors_and_every(expression: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        parse_schedule(expression, "UTC")
    assert "@every" in str(info.value)  # the message shows the expected form


# ---------------------------------------------------------------- timezones


def test_unknown_timezone_is_rejected() -> None:
    for name in ("Mars/Olympus", "Europe/Berlín", "../../etc/passwd"):
        with pytest.raises(ValueError, match="unknown timezone") as info:
            parse_schedule("@daily", name)
        assert "expected an IANA name" in str(info.value)


def test_resolve_zone_by_name() -> None:
    assert resolve_zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert resolve_zone("UTC") == ZoneInfo("UTC")


def test_daily_berlin_schedule_in_winter_is_01_utc() -> None:
    schedule = parse_schedule("0 2 * * *", "Europe/Berlin")
    assert next_slots(schedule, "2024-01-15T12:00:00+00:00", 2) == [
        "2024-01-16T01:00:00Z",
        "2024-01-17T01:00:00Z",
    ]


def test_daily_berlin_schedule_in_summer_is_00_utc() -> None:
    schedule = parse_schedule("0 2 * * *", "Europe/Berlin")
    assert next_slots(schedule, "2024-07-15T12:00:00+00:00", 2) == [
        "2024-07-16T00:00:00Z",
        "2024-07-17T00:00:00Z",
    ]


def test_a_zone_east_of_utc_can_put_the_slot_on_the_previous_utc_day() -> None:
    schedule = parse_schedule("0 1 * * *", "Asia/Tokyo")
    assert next_slots(schedule, "2024-05-10T12:00:00+00:00", 1) == ["2024-05-10T16:00:00Z"]


def test_dst_gap_day_runs_once_right_after_the_gap() -> None:
    """2024-03-31: Berlin clocks jump 02:00 CET -> 03:00 CEST; 02:00 does not exist that day.

    The slot is not lost: it runs at 03:00 CEST (01:00 UTC), then 02:00 CEST the next days.
    """
    schedule = parse_schedule("0 2 * * *", "Europe/Berlin")
    assert next_slots(schedule, "2024-03-29T12:00:00+00:00", 3) == [
        "2024-03-30T01:00:00Z",
        "2024-03-31T01:00:00Z",
        "2024-04-01T00:00:00Z",
    ]


def test_an_hourly_schedule_across_the_dst_gap_has_no_duplicate() -> None:
    schedule = parse_schedule("0 * * * *", "Europe/Berlin")
    slots = next_slots(schedule, "2024-03-30T23:30:00+00:00", 4)
    assert slots == [
        "2024-03-31T00:00:00Z",
        "2024-03-31T01:00:00Z",
        "2024-03-31T02:00:00Z",
        "2024-03-31T03:00:00Z",
    ]


def test_dst_fold_day_runs_a_daily_schedule_once() -> None:
    schedule = parse_schedule("0 2 * * *", "Europe/Berlin")
    slots, _ = schedule.slots_between(
        ms("2024-10-26T12:00:00+00:00"), ms("2024-10-28T12:00:00+00:00"), 10
    )
    berlin = ZoneInfo("Europe/Berlin")
    local_days = [datetime.fromtimestamp(s / 1000, berlin).date().isoformat() for s in slots]
    assert local_days == ["2024-10-27", "2024-10-28"], [utc(s) for s in slots]


def test_interval_schedule_across_the_dst_fold_keeps_real_time_spacing() -> None:
    schedule = parse_schedule("*/30 * * * *", "Europe/Berlin")
    assert next_slots(schedule, "2024-10-26T23:50:00+00:00", 5) == [
        "2024-10-27T00:00:00Z",
        "2024-10-27T00:30:00Z",
        "2024-10-27T01:00:00Z",
        "2024-10-27T01:30:00Z",
        "2024-10-27T02:00:00Z",
    ]


# ---------------------------------------------------------------- slots_between


def test_slots_between_is_after_exclusive_until_inclusive_oldest_first() -> None:
    schedule = parse_schedule("*/10 * * * *", "UTC")
    start = ms("2024-05-10T10:00:00+00:00")
    slots, dropped = schedule.slots_between(start, start + 30 * MINUTE, 100)
    assert [utc(s) for s in slots] == [
        "2024-05-10T10:10:00Z",
        "2024-05-10T10:20:00Z",
        "2024-05-10T10:30:00Z",
    ]
    assert dropped == 0


def test_slots_between_with_a_limit_keeps_the_newest_and_counts_the_dropped() -> None:
    schedule = parse_schedule("@every 1m", "UTC")
    start = ms("2024-05-10T10:00:00+00:00")
    slots, dropped = schedule.slots_between(start, start + 10 * MINUTE, 3)
    assert slots == [start + 8 * MINUTE, start + 9 * MINUTE, start + 10 * MINUTE]
    assert dropped == 7


def test_slots_between_with_no_slot_in_range() -> None:
    schedule = parse_schedule("@hourly", "UTC")
    start = ms("2024-05-10T10:00:00+00:00")
    assert schedule.slots_between(start, start + 59 * MINUTE, 5) == ([], 0)
    assert schedule.slots_between(start, start, 5) == ([], 0)
    assert schedule.slots_between(start, start - HOUR, 5) == ([], 0)


def test_slots_between_exactly_at_the_limit_drops_nothing() -> None:
    schedule = parse_schedule("@every 1m", "UTC")
    start = ms("2024-05-10T10:00:00+00:00")
    slots, dropped = schedule.slots_between(start, start + 3 * MINUTE, 3)
    assert (len(slots), dropped) == (3, 0)


# ---------------------------------------------------------------- describe


@pytest.mark.parametrize(
    ("expression", "text"),
    [
        ("", "manual only"),
        ("workflow_dispatch", "manual only"),
        ("@every 1m", "every minute"),
        ("@every 5m", "every 5 minutes"),
        ("@every 1h", "every hour"),
        ("@every 30s", "every 30 seconds"),
        ("@every 2d", "every 2 days"),
        ("@hourly", "every hour"),
        ("@daily", "every day at 00:00"),
        ("@midnight", "every day at 00:00"),
        ("@weekly", "every Sunday at 00:00"),
        ("@monthly", "on day 1 of every month at 00:00"),
        ("@yearly", "every year on Jan 1 at 00:00"),
        ("@annually", "every year on Jan 1 at 00:00"),
        ("* * * * *", "every minute"),
        ("*/15 * * * *", "every 15 minutes"),
        ("5 * * * *", "every hour at minute 5"),
        ("7 */6 * * *", "every 6 hours at minute 7"),
        ("30 9 * * *", "every day at 09:30"),
        ("0 2 * * *", "every day at 02:00"),
        ("30 9 * * 1-5", "every weekday at 09:30"),
        ("0 9 * * MON-FRI", "every weekday at 09:00"),
        ("0 0 1 1 *", "cron '0 0 1 1 *'"),
        ("1,2 * * * *", "cron '1,2 * * * *'"),
    ],
)
def test_describe(expression: str, text: str) -> None:
    assert describe(expression) == text


def test_schedule_describe_uses_its_expression() -> None:
    assert parse_schedule("*/5 * * * *", "UTC").describe() == "every 5 minutes"
    assert parse_schedule("@every 5m", "UTC").describe() == "every 5 minutes"
