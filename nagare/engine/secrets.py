"""Secrets of a DAG (`secrets:`): where each value comes from, resolving them when a task
starts, and masking their values out of every text Nagare writes (logs, outputs, messages).

Pure: the environment and the file reader are passed in. Values never reach the store: they
live in the assignment of one attempt and in the masker of its log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from nagare.models import Assignment, DagDef, SecretDef, TaskDef

MASK = "*****"
# A value (or line of a multi-line value) shorter than this is injected but not masked: masking
# "a" or "42" would blank every occurrence of it in every log line.
MIN_MASKED_CHARS = 4
MAX_SECRET_BYTES = 65536  # a secret file larger than this is refused (it is not a secret)


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of each secret value replaced by `*****`. A multi-line
    value is masked line by line (a log line holds one line of it); longer values first, so a
    value containing another is masked whole."""
    return apply_mask(text, mask_values(values))


def apply_mask(text: str, prepared: tuple[str, ...]) -> str:
    """`mask` with the values already prepared by `mask_values` (once per attempt)."""
    for value in prepared:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_values(values: Iterable[str]) -> tuple[str, ...]:
    """The strings `mask` looks for: each line of each value (trailing `\\r` trimmed), those of
    at least MIN_MASKED_CHARS characters, longest first, each once."""
    found: set[str] = set()
    for value in values:
        for line in value.splitlines() or [value]:
            line = line.rstrip("\r")
            if len(line) >= MIN_MASKED_CHARS:
                found.add(line)
        if "\n" in value.strip("\n") and len(value) >= MIN_MASKED_CHARS:
            found.add(value)  # a message may quote the whole value
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


def task_secrets(dag: DagDef, task: TaskDef | None) -> tuple[SecretDef, ...]:
    """The secrets a task gets: the DAG's, then its own (a task secret of the same name wins)."""
    if not dag.secrets and (task is None or not task.secrets):
        return ()  # most tasks: nothing to merge
    merged = {secret.name: secret for secret in dag.secrets}
    if task is not None:
        merged.update({secret.name: secret for secret in task.secrets})
    return tuple(merged.values())


def resolve(
    secrets: Iterable[SecretDef],
    environ: Mapping[str, str],
    read_file: Callable[[str], str],
) -> tuple[dict[str, str], str]:
    """(name -> value, "") or ({}, why) — the message names the secret and its source, never a
    value. `read_file` returns a file's text or raises OSError (or ValueError: not text)."""
    values: dict[str, str] = {}
    for secret in secrets:
        if secret.env:
            value = environ.get(secret.env)
            if value is None:
                return {}, (
                    f"secret '{secret.name}': the environment variable {secret.env} is not set "
                    "on the server"
                )
        else:
            try:
                value = read_file(secret.file)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                return {}, f"secret '{secret.name}': cannot read the file {secret.file}: {reason}"
            value = value[:-1] if value.endswith("\n") else value
            value = value[:-1] if value.endswith("\r") else value
        values[secret.name] = value
    return values, ""


def with_secrets(assignment: Assignment, values: dict[str, str]) -> Assignment:
    """The assignment with its resolved secrets: injected last into its environment (a secret
    wins over any variable of the same name) and listed for masking (by the worker too)."""
    return replace(
        assignment,
        env={**assignment.env, **values},
        secrets=tuple(dict.fromkeys(values.values())),
    )
