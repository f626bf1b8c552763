"""`${NAME}` references in the string fields of a step (`http`, `mail`, `ssh`, `chat`): how a
secret, a parameter or an upstream output reaches a header, an API key or a password. Pure.

Only the braced form is a reference (`$NAME` is left alone: a body may hold shell or price
text); a name the task's environment does not hold is left exactly as written."""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` replaced by `env[NAME]` (unknown names kept as written)."""
    if "${" not in text:
        return text
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def unresolved(text: str) -> list[str]:
    """The `${NAME}` references left in `text` (names the environment did not hold)."""
    return _REFERENCE.findall(text)
