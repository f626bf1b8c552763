"""`nagare audit`: the audit log of a running server (GET /api/audit) as a table, or its JSON.
Registered with the other client commands by `cli_client`, whose plumbing (connection flags,
errors, `--json`) it shares; tables are `cli_format`'s."""

from __future__ import annotations

import argparse
from typing import Any

from nagare.cli_format import local_time, positive_int, table
from nagare.clock import now_ms, parse_iso, to_iso
from nagare.errors import BadRequest

DEFAULT_AUDIT_LIMIT = 50
MAX_AUDIT_LIMIT = 500  # the server's page size bound


def audit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", default="", help="only this actor: a user, key:NAME, api-key")
    parser.add_argument(
        "--action", default="", help="only this action (run.kill), or its family (run.)"
    )
    parser.add_argument("--target", default="", help="only this target (dag:ID, run:ID, ...)")
    parser.add_argument(
        "--outcome", default="", help="only this outcome: ok, or an error code (forbidden, ...)"
    )
    parser.add_argument(
        "--since",
        type=_time,
        default=None,
        metavar="TIME",
        help="only entries at or after TIME: ISO 8601 (2026-11-21T10:00:00Z) or an age (90m, "
        "24h, 7d)",
    )
    parser.add_argument(
        "--until", type=_time, default=None, metavar="TIME", help="only entries before TIME"
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_AUDIT_LIMIT,
        metavar="N",
        help=f"entries per page (default {DEFAULT_AUDIT_LIMIT}, at most {MAX_AUDIT_LIMIT})",
    )
    parser.add_argument("--page", type=positive_int, default=1, metavar="N", help="page, from 1")


def cmd_audit(namespace: argparse.Namespace) -> int:
    from nagare.cli_client import _client, _emit

    filters = {
        name: getattr(namespace, name)
        for name in ("actor", "action", "target", "outcome", "since", "until", "page", "limit")
    }
    page = _client(namespace).audit(filters)
    return _emit(namespace, page, lambda: audit_table(page))


AUDIT_COMMAND = (
    "audit",
    "list the audit log: who did what, when, from where",
    audit_args,
    cmd_audit,
)


def audit_table(page: dict[str, Any]) -> str:
    """The entries (local times) and a line saying which of how many they are."""
    entries = page.get("data", [])
    rows = [
        (
            local_time(e.get("at")),
            e.get("actor", ""),
            e.get("action", ""),
            e.get("target") or "-",
            e.get("outcome", ""),
            e.get("address") or "-",
        )
        for e in entries
    ]
    first = (page.get("page", 1) - 1) * page.get("limit", 0)
    shown = f"{first + 1}-{first + len(entries)}" if entries else "none"
    summary = f"entries {shown} of {page.get('total', 0)}"
    if not rows:
        return summary
    return table(("AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "ADDRESS"), rows) + "\n\n" + summary


def audit_time(text: str, now: int) -> str:
    """`--since`/`--until`: an ISO 8601 time as given, or an age (`24h`) as the ISO time that
    long before `now`. Raises ValueError naming both forms."""
    from nagare.metrics import parse_span

    value = text.strip()
    if value[:1].isdigit() and value[-1:] in ("m", "h", "d") and value[:-1].isdigit():
        try:
            return str(to_iso(now - parse_span(value, "the age")))
        except BadRequest as err:
            raise ValueError(err.message) from None
    try:
        return str(to_iso(parse_iso(value)))
    except ValueError:
        raise ValueError(
            f"expected an ISO 8601 time (2026-11-21T10:00:00Z) or an age (90m, 24h, 7d), "
            f"found '{text}'"
        ) from None


def _time(text: str) -> str:
    try:
        return audit_time(text, now_ms())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _limit(text: str) -> int:
    value = positive_int(text)
    if value > MAX_AUDIT_LIMIT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_AUDIT_LIMIT}, found {value}")
    return value
