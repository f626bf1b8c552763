"""The server's own log lines (not task output): `text` for people, `json` for log pipelines.

Log calls about a run or a task pass its ids with `extra={"run_id": ..., "task_id": ...}`; both
formats show them: text as `key=value` after the message, JSON as top-level keys.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

CONTEXT_KEYS = ("dag_id", "run_id", "task_id", "task_instance_id", "attempt", "pool")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The run/task context a log call attached to its record."""
    values = record.__dict__
    return {key: values[key] for key in CONTEXT_KEYS if values.get(key) not in (None, "")}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        found = context(record)
        if not found:
            return text
        pairs = " ".join(f"{key}={value}" for key, value in found.items())
        head, newline, rest = text.partition("\n")  # keep a traceback below the line
        return f"{head} [{pairs}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO-8601), level, logger, message, the context keys
    present, and `exception` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        data: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **context(record),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False, default=str)


def configure(level: str, fmt: str) -> None:
    """Send every log record at `level` or above to stderr, formatted as `fmt`."""
    handler = _Handler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)  # configuring again replaces ours, never someone else's
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure` installs (so that a second call replaces it). It writes to
    whatever `sys.stderr` is at the time of each record."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass
