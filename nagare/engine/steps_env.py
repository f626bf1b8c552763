"""`${NAME}` references in the fields of a step (http, mail, ssh, chat): the task's environment
(`Assignment.env`: its secrets, the run's parameters, upstream outputs, `env:`) reaches a header,
a mail body or an API key this way, as it reaches a command through the shell."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Only the braced form: a bare `$NAME` (prices, shell snippets in a body) is left alone.
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """`text` with each `${NAME}` replaced by `env[NAME]`; an unknown name is left as written."""
    if "${" not in text:
        return text
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), text)
