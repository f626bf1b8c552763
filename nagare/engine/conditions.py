"""Conditions and failure handling as pure functions: what a pending task does given its
upstream states (`trigger_rule`), whether a failed attempt is retried and after how long, whether
a failure is allowed, and how task preconditions run and report.

Preconditions run inside the task's own attempt, as a prefix of its shell script: the same
process environment, the same executor (local, Docker, remote worker), nothing new to ship. A
precondition that exits non-zero ends the script with `PRECONDITION_EXIT` after a marker line;
the engine reads the two together as "precondition not met" and skips the task.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from enum import StrEnum

from nagare.models import AllowFailure, TaskStatus, TriggerRule

FAILED_LIKE = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED})
# states an upstream task ends in (an allowed failure is passed in as success)
ENDED = frozenset(
    {
        TaskStatus.SUCCESS,
        TaskStatus.FAILED,
        TaskStatus.UPSTREAM_FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.SKIPPED,
    }
)
NOT_OK = frozenset({TaskStatus.FAILED, TaskStatus.UPSTREAM_FAILED, TaskStatus.CANCELLED})


class Verdict(StrEnum):
    RUN = "run"
    WAIT = "wait"
    SKIP = "skipped"
    UPSTREAM_FAILED = "upstream_failed"


# The reason recorded with each outcome that is not RUN (a few fixed texts, so that a whole
# chain that fails at once is recorded in one statement per text).
UPSTREAM_DID_NOT_SUCCEED = "an upstream task did not succeed"
REASONS: dict[tuple[TriggerRule, Verdict], str] = {
    (TriggerRule.ALL_SUCCESS, Verdict.UPSTREAM_FAILED): UPSTREAM_DID_NOT_SUCCEED,
    (TriggerRule.ALL_SUCCESS, Verdict.SKIP): "an upstream task was skipped",
    (
        TriggerRule.ALL_FAILED,
        Verdict.SKIP,
    ): "trigger_rule all_failed: an upstream task did not fail",
    (TriggerRule.ONE_SUCCESS, Verdict.UPSTREAM_FAILED): (
        "trigger_rule one_success: no upstream task succeeded"
    ),
    (TriggerRule.ONE_FAILED, Verdict.SKIP): "trigger_rule one_failed: no upstream task failed",
    (TriggerRule.NONE_FAILED, Verdict.UPSTREAM_FAILED): (
        "trigger_rule none_failed: an upstream task failed or was cancelled"
    ),
    (TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, Verdict.UPSTREAM_FAILED): (
        "trigger_rule none_failed_min_one_success: an upstream task failed or was cancelled"
    ),
    (TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, Verdict.SKIP): (
        "trigger_rule none_failed_min_one_success: every upstream task was skipped"
    ),
}


def reason_of(rule: TriggerRule, verdict: Verdict) -> str:
    return REASONS.get((rule, verdict), "")


def trigger_verdict(rule: TriggerRule, upstream: Iterable[TaskStatus]) -> Verdict:
    """What a pending task does now, given the statuses of its direct upstream tasks (an
    allowed failure passed as SUCCESS). A verdict other than WAIT is final: it is given as soon
    as no later upstream end could change it. A task without upstream tasks runs."""
    states = list(upstream)
    if not states:
        return Verdict.RUN
    ok = sum(s is TaskStatus.SUCCESS for s in states)
    failed = sum(s in FAILED_LIKE for s in states)
    bad = sum(s in NOT_OK for s in states)
    skipped = sum(s is TaskStatus.SKIPPED for s in states)
    waiting = len(states) - sum(s in ENDED for s in states)
    return _RULES[rule](len(states), ok, failed, bad, skipped, waiting)


def _all_success(total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int) -> Verdict:
    if bad:
        return Verdict.UPSTREAM_FAILED
    if waiting:
        return Verdict.WAIT
    return Verdict.RUN if ok == total else Verdict.SKIP


def _all_done(total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int) -> Verdict:
    return Verdict.WAIT if waiting else Verdict.RUN


def _all_failed(total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int) -> Verdict:
    if total - waiting > failed:  # one ended some other way
        return Verdict.SKIP
    return Verdict.WAIT if waiting else Verdict.RUN


def _one_success(total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int) -> Verdict:
    if ok:
        return Verdict.RUN
    return Verdict.WAIT if waiting else Verdict.UPSTREAM_FAILED


def _one_failed(total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int) -> Verdict:
    if failed:
        return Verdict.RUN
    return Verdict.WAIT if waiting else Verdict.SKIP


def _none_failed(total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int) -> Verdict:
    if bad:
        return Verdict.UPSTREAM_FAILED
    return Verdict.WAIT if waiting else Verdict.RUN


def _none_failed_min_one_success(
    total: int, ok: int, failed: int, bad: int, skipped: int, waiting: int
) -> Verdict:
    if bad:
        return Verdict.UPSTREAM_FAILED
    if waiting:
        return Verdict.WAIT
    return Verdict.RUN if ok else Verdict.SKIP


_RULES: dict[TriggerRule, Callable[[int, int, int, int, int, int], Verdict]] = {
    TriggerRule.ALL_SUCCESS: _all_success,
    TriggerRule.ALL_DONE: _all_done,
    TriggerRule.ALL_FAILED: _all_failed,
    TriggerRule.ONE_SUCCESS: _one_success,
    TriggerRule.ONE_FAILED: _one_failed,
    TriggerRule.NONE_FAILED: _none_failed,
    TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS: _none_failed_min_one_success,
}


# ---------------------------------------------------------------- failures and retries


def failure_allowed(allow: AllowFailure | None, exit_code: int | None, timed_out: bool) -> bool:
    """Whether a task's last failed attempt ends it failed-but-allowed."""
    if allow is None:
        return False
    if not allow.exit_codes:
        return True
    return not timed_out and exit_code in allow.exit_codes


def retryable(
    on_exit_codes: tuple[int, ...], on_timeout: bool, exit_code: int | None, timed_out: bool
) -> bool:
    """Whether a failed attempt may be retried (attempts left aside): a timeout unless
    `retry_on_timeout: false`; an exit code if `retry_on_exit_codes` is empty or lists it; a
    failure without an exit code (a start error, a lost worker) always."""
    if timed_out:
        return on_timeout
    if on_exit_codes and exit_code is not None:
        return exit_code in on_exit_codes
    return True


def retry_delay_ms(
    delay_seconds: float,
    backoff: float,
    max_delay_seconds: float,
    failed_attempt: int,
    random: Callable[[], float],
) -> int:
    """The wait before attempt n+1 after attempt n failed: min(delay * backoff^(n-1), max),
    then ±10 % jitter (`random()` in [0, 1); none when there is no backoff and no maximum,
    so that a plain `retry_delay_seconds` keeps its exact meaning)."""
    if delay_seconds <= 0:
        return 0
    delay = delay_seconds * backoff ** max(failed_attempt - 1, 0)
    if max_delay_seconds > 0:
        delay = min(delay, max_delay_seconds)
    if backoff != 1 or max_delay_seconds > 0:
        delay *= 0.9 + 0.2 * random()
    return int(delay * 1000)


# ---------------------------------------------------------------- preconditions

PRECONDITION_EXIT = 86  # the exit code of a script whose precondition was not met
PRECONDITION_MARK = "nagare: precondition not met: "
_MARK_LINE = re.compile(
    r"^" + re.escape(PRECONDITION_MARK) + r"(?P<command>.*) exited with code (?P<code>\d+)$"
)


def with_preconditions(command: str, preconditions: tuple[str, ...]) -> str:
    """The task's shell script with its preconditions first: each runs in a subshell; the
    first that exits non-zero prints the marker line (stderr) and ends the script."""
    if not preconditions:
        return command
    parts = []
    for pre in preconditions:
        shown = shlex.quote(" ".join(pre.split()))
        parts.append(
            f'( {pre}\n) </dev/null; __nagare_rc=$?; if [ "$__nagare_rc" -ne 0 ]; then '
            f"printf '%s%s exited with code %s\\n' {shlex.quote(PRECONDITION_MARK)} {shown} "
            f'"$__nagare_rc" >&2; exit {PRECONDITION_EXIT}; fi\n'
        )
    return "".join(parts) + "unset __nagare_rc\n" + command


def precondition_reason(exit_code: int | None, tail: str) -> str:
    """Why a task was skipped by a precondition ("" if it was not): its script exited with
    `PRECONDITION_EXIT` and its output ends with the marker line (among the last few lines:
    stdout and stderr are read side by side)."""
    if exit_code != PRECONDITION_EXIT or not tail:
        return ""
    for line in reversed(tail.splitlines()[-5:]):
        match = _MARK_LINE.match(line)
        if match is not None:
            return f"precondition failed: {match['command']} (exit code {match['code']})"
    return ""
