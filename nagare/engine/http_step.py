"""The `http` step, pure: the request its fields describe (`${NAME}` references expanded from
the task's environment), whether a status is expected, and the outputs of a response. The I/O
is `executors/web.py`'s; the `chat` step builds its requests with the same `WebRequest`.

Exit codes of a failed attempt (README, "type: http"): a status outside `expect_status` is the
exit code itself (so `retry_on_exit_codes: [429, 503]` retries those); `EXIT_NO_RESPONSE` when no
HTTP answer came (DNS, refused or reset connection, TLS, not HTTP, no byte for the idle time);
`EXIT_UNUSABLE` when the request cannot be built or the answer cannot give its outputs. A timeout
is `timed_out` (no exit code)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from nagare import __version__
from nagare.engine.assignment import env_value, size_text
from nagare.engine.expressions import ExpressionError, first_result
from nagare.engine.outputs import MAX_VALUE_BYTES, OutputError, check_outputs
from nagare.engine.steps_env import expand_env

EXIT_NO_RESPONSE = 1
EXIT_UNUSABLE = 2
MAX_BODY_BYTES = MAX_VALUE_BYTES  # kept of a response (the `body` output); reading stops there
LOG_BODY_BYTES = 64 << 10  # of a response body written to the task log
DEFAULT_EXPECT = ("2xx",)
USER_AGENT = f"nagare/{__version__}"
USER_AGENT_HEADER = "User-Agent"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # a method or header name (RFC 9110)


class StepError(ValueError):
    """A request that cannot be made, or an answer that cannot give its outputs; the message is
    for the task log."""


@dataclass(frozen=True)
class WebRequest:
    """One HTTP request, ready to send."""

    method: str
    scheme: str  # http | https
    host: str
    port: int
    target: str  # path and query
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    insecure: bool = False

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL as logged: without user and password."""
        return f"{self.scheme}://{self.address}{self.target}"


@dataclass(frozen=True)
class Answer:
    """What came back: the status line, the headers and (at most MAX_BODY_BYTES of) the body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    cut: bool  # the body was longer than what was kept

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


def web_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    insecure: bool = False,
) -> WebRequest:
    """A request to `url` (http or https), with a User-Agent unless `headers` names one and a
    basic Authorization from the URL's user and password."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise StepError(f"expected an http:// or https:// URL with a host, found '{url}'")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise StepError(f"the URL '{url}' has an invalid port") from None
    if not _TOKEN.match(method):
        raise StepError(f"'{method}' is not an HTTP method")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n"):
        raise StepError("the URL's path holds a space or a line break (encode it as %20)")
    found = [(USER_AGENT_HEADER, USER_AGENT)] if not _has(headers, USER_AGENT_HEADER) else []
    if parts.username is not None and not _has(headers, "Authorization"):
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        found.append(("Authorization", "Basic " + base64.b64encode(pair).decode()))
    for name, value in headers.items():
        found.append((_header_name(name), _header_value(name, value)))
    return WebRequest(
        method, scheme, parts.hostname, port, target, tuple(found), body, bool(insecure)
    )


def _has(headers: Mapping[str, str], name: str) -> bool:
    return any(k.lower() == name.lower() for k in headers)


def _header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise StepError(f"'{name}' is not a valid header name")
    return name


def _header_value(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise StepError(f"the value of header '{name}' holds a line break")
    return value.strip()


def http_request(step: Mapping[str, Any], env: Mapping[str, str]) -> WebRequest:
    """The request of an `http` step (its fields already rendered): `${NAME}` references in the
    URL, the headers and the body expanded from `env`."""
    headers = {k: expand_env(v, env) for k, v in (step.get("headers") or {}).items()}
    body: bytes | None = None
    if "json" in step:
        body = json.dumps(_expanded(step["json"], env), ensure_ascii=False).encode()
        if not _has(headers, "Content-Type"):
            headers["Content-Type"] = "application/json"
    elif step.get("body") is not None:
        body = expand_env(str(step["body"]), env).encode()
    method = expand_env(str(step.get("method") or "GET"), env).strip().upper()
    url = expand_env(str(step.get("url") or ""), env)
    return web_request(method, url, headers, body, bool(step.get("insecure")))


def _expanded(value: Any, env: Mapping[str, str]) -> Any:
    """A JSON value with `${NAME}` expanded in every string of it."""
    if isinstance(value, str):
        return expand_env(value, env)
    if isinstance(value, dict):
        return {k: _expanded(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expanded(v, env) for v in value]
    return value


def expected_statuses(step: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(step.get("expect_status") or DEFAULT_EXPECT)


def status_expected(status: int, expected: tuple[str, ...]) -> bool:
    """Whether `status` is one of `expected` ("200", "2xx", ...)."""
    text = str(status)
    return any(e == text or (e.endswith("xx") and e[0] == text[0]) for e in expected)


def body_text(body: bytes, limit: int = MAX_BODY_BYTES) -> str:
    """A body as text (UTF-8, invalid bytes replaced), at most `limit` bytes once encoded."""
    text = body[:limit].decode("utf-8", errors="replace")
    encoded = text.encode()
    if len(encoded) > limit:  # replacement characters are longer than the bytes they replace
        text = encoded[:limit].decode("utf-8", errors="ignore")
    return text


def http_outputs(answer: Answer, output_jq: Mapping[str, str]) -> dict[str, str]:
    """`status`, `body` and the `output_jq` values (jq over the body parsed as JSON)."""
    outputs = {"status": str(answer.status), "body": body_text(answer.body)}
    if output_jq:
        document = json_body(answer, "output_jq")
        for name, expression in output_jq.items():
            outputs[name] = jq_output(name, expression, document)
    try:
        check_outputs(outputs)
    except OutputError as exc:
        raise StepError(f"outputs: {exc}") from None
    return outputs


def json_body(answer: Answer, why: str) -> Any:
    """The body parsed as JSON, or StepError saying what it is instead."""
    if answer.cut:
        raise StepError(
            f"{why} needs the whole response body, and it is larger than "
            f"{size_text(MAX_BODY_BYTES)} (the most Nagare reads)"
        )
    try:
        return json.loads(answer.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        shown = body_text(answer.body, 200).strip() or "(an empty body)"
        kind = answer.header("Content-Type") or "no Content-Type"
        raise StepError(
            f"{why} needs a JSON response body; this one is not JSON ({_json_problem(exc)}; "
            f"{kind}); it starts with: {shown}"
        ) from None


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not UTF-8"


def jq_output(name: str, expression: str, document: Any) -> str:
    try:
        return env_value(first_result(expression, document))
    except ExpressionError as exc:
        raise StepError(f"output_jq.{name}: jq '{expression}' failed: {exc}") from None
