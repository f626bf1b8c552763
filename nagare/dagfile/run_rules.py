"""DAG-level rules of a run: schedules (one or a list), start/end dates, tags, the run's
deadline, max_active_runs and overlap_policy; and the task ids reserved for handlers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from yaml.nodes import Node, ScalarNode, SequenceNode

from nagare.cron import MANUAL_SCHEDULES, parse_schedule, resolve_zone
from nagare.dagfile.nodes import (
    ID_EXPECTED,
    ID_PATTERN,
    Collector,
    integer,
    node_kind,
    number,
    scalar_text,
    string_list,
)
from nagare.models import HANDLER_TASK_IDS, OverlapPolicy, TaskDef

MAX_SCHEDULES = 20
MAX_TAGS = 20
DATE_EXPECTED = "a date (2026-01-01) or a date and time (2026-01-01T06:00:00Z)"


@dataclass
class RunRules:
    schedules: tuple[str, ...] = ()
    start_date: int | None = None
    end_date: int | None = None
    tags: tuple[str, ...] = ()
    timeout_seconds: float = 0
    max_active_runs: int = 0
    overlap_policy: OverlapPolicy = OverlapPolicy.QUEUE


def read_schedules(node: Node | None, errors: Collector) -> tuple[str, ...]:
    """`schedule`: one expression or a list of them (duplicates dropped, order kept)."""
    if node is None:
        return ()
    if isinstance(node, SequenceNode):
        items = [s.strip() for s in string_list(node, "schedule", errors, False)]
        if not items:
            errors.add(node, "schedule", "expected a cron expression or a non-empty list of them")
        if len(items) > MAX_SCHEDULES:
            errors.add(node, "schedule", f"{len(items)} schedules; at most {MAX_SCHEDULES}")
        for index, item in enumerate(items):
            if item in MANUAL_SCHEDULES:
                errors.add(
                    node.value[index],
                    f"schedule[{index}]",
                    f"expected a cron expression in a list of schedules, found '{item}'",
                )
        return tuple(dict.fromkeys(items))
    text = (scalar_text(node, "schedule", errors) or "").strip()
    return (text,) if text else ()


def check_schedules(
    node: Node | None, schedules: tuple[str, ...], timezone: str, errors: Collector
) -> None:
    if node is None or not isinstance(node, SequenceNode):
        return  # a single schedule is checked with the timezone as it always was
    for index, expression in enumerate(schedules):
        try:
            parse_schedule(expression, timezone if _zone_ok(timezone) else "UTC")
        except ValueError as exc:
            at = node.value[index] if isinstance(node, SequenceNode) else node
            errors.add(at, f"schedule[{index}]", str(exc))


def _zone_ok(timezone: str) -> bool:
    try:
        resolve_zone(timezone)
    except ValueError:
        return False
    return True


def read_rules(fields: dict[str, Node], timezone: str, errors: Collector) -> RunRules:
    rules = RunRules()
    zone = timezone if _zone_ok(timezone) else "UTC"
    if "start_date" in fields:
        rules.start_date = _moment(fields["start_date"], "start_date", zone, False, errors)
    if "end_date" in fields:
        rules.end_date = _moment(fields["end_date"], "end_date", zone, True, errors)
    start, end = rules.start_date, rules.end_date
    if start is not None and end is not None and end < start:
        errors.add(fields["end_date"], "end_date", "end_date is before start_date")
    if "tags" in fields:
        rules.tags = _tags(fields["tags"], errors)
    if "timeout_seconds" in fields:
        timeout = number(fields["timeout_seconds"], "timeout_seconds", errors, True)
        rules.timeout_seconds = timeout or 0
    if "max_active_runs" in fields:
        limit = integer(fields["max_active_runs"], "max_active_runs", errors, 1)
        rules.max_active_runs = limit or 0
    if "overlap_policy" in fields:
        rules.overlap_policy = _policy(fields["overlap_policy"], errors)
        if "max_active_runs" not in fields:
            errors.add(
                fields["overlap_policy"],
                "overlap_policy",
                "overlap_policy needs max_active_runs (how many runs may be active at once)",
            )
    return rules


def _moment(node: Node, field: str, zone: str, end: bool, errors: Collector) -> int | None:
    """Epoch ms of a date (in the DAG's timezone; an end date includes its whole day) or of
    a date and time (with its own offset, else in the DAG's timezone)."""
    text = scalar_text(node, field, errors)
    if text is None:
        return None
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            moment = datetime.combine(day, time(), tzinfo=resolve_zone(zone))
            if end:
                moment += timedelta(days=1) - timedelta(milliseconds=1)
        else:
            moment = datetime.fromisoformat(value.replace(" ", "T"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=resolve_zone(zone))
    except ValueError:
        errors.add(node, field, f"expected {DATE_EXPECTED}, found {node_kind(node)}")
        return None
    return int(moment.timestamp() * 1000)


def _tags(node: Node, errors: Collector) -> tuple[str, ...]:
    if isinstance(node, ScalarNode):
        errors.add(node, "tags", f"expected a list of tags, found {node_kind(node)}")
        return ()
    tags = string_list(node, "tags", errors, False)
    if len(tags) > MAX_TAGS:
        errors.add(node, "tags", f"{len(tags)} tags; at most {MAX_TAGS}")
    for index, tag in enumerate(tags):
        if not ID_PATTERN.match(tag) and isinstance(node, SequenceNode):
            errors.add(
                node.value[index], f"tags[{index}]", f"'{tag}' is not a valid tag ({ID_EXPECTED})"
            )
    return tuple(dict.fromkeys(tags))


def _policy(node: Node, errors: Collector) -> OverlapPolicy:
    text = scalar_text(node, "overlap_policy", errors)
    try:
        return OverlapPolicy(text or "")
    except ValueError:
        known = " | ".join(p.value for p in OverlapPolicy)
        errors.add(node, "overlap_policy", f"expected {known}, found {node_kind(node)}")
        return OverlapPolicy.QUEUE


def check_reserved_ids(tasks: list[TaskDef], errors: Collector) -> None:
    """The handler ids are the run's own: a task cannot take one."""
    for task in tasks:
        if task.task_id in HANDLER_TASK_IDS:
            errors.add_at(
                task.line,
                f"tasks.{task.task_id}.id",
                f"'{task.task_id}' is reserved for handler_on (on_success, on_failure, "
                "on_cancel, on_exit); expected another id",
            )
