"""`${NAME}` references in a step's fields: how a secret, a parameter or an upstream output
reaches a field the shell never sees (a header, an api_key, a host name). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` replaced by `env[NAME]`; only that form (never `$NAME`), and
    an unknown name is left as written."""
    if "${" not in text:
        return text
    return _REFERENCE.sub(lambda match: env.get(match[1], match[0]), text)
