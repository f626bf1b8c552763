"""The forms of the names Nagare accepts, declared once: DAG, task and pool ids, environment
variable names, run and task instance ids, worker ids, host names, memory sizes. The DAG file
parser, the URL router, the run service and the cluster protocol all check against these."""

from __future__ import annotations

import re

# a DAG, task or pool id (a map child's task id adds `[index]`)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TASK_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(\[\d{1,7}\])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")  # a user name (may end in $)
# a user of the dashboard (single sign-on names may be e-mail addresses)
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
API_KEY_ID = re.compile(r"^k_[0-9a-f]{12}$")  # a created API key's id
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,199}$")
TASK_INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# an event name (`wait` steps, POST /api/events/{name}, a webhook trigger's `emit_event`)
EVENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
# bytes, or a number with a unit b, k, m or g (any case): "512m", "2g"
MEMORY = re.compile(r"^([0-9]+)([bkmg]?)$", re.IGNORECASE)

# `{{ … }}` in a templated field; it is a template only when its expression starts with one of
# the context's top-level names (or is `item`, or is the literal `"{{"`): see template_expression
TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
CONTEXT_START = re.compile(r"^\.(dag|run|params|tasks|item|index)(?![A-Za-z0-9_])")
# an output name (`NAME=value` in $NAGARE_OUTPUT, `output: NAME`)
OUTPUT_NAME = ENV_NAME


def template_expression(inner: str) -> str | None:
    """The jq expression of a `{{ inner }}` that is a template, else None (left as written)."""
    expression = inner.strip()
    if expression == "item":
        return ".item"
    if expression == '"{{"' or CONTEXT_START.match(expression):
        return expression
    return None


def has_template(text: str) -> bool:
    """Whether `text` holds at least one template (cheap: most fields have no `{{`)."""
    if "{{" not in text:
        return False
    return any(template_expression(m.group(1)) is not None for m in TEMPLATE.finditer(text))
