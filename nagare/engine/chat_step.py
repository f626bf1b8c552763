"""The `chat` step, pure: one LLM call over the wire protocol of its provider, without an SDK.

- `openai`: `POST {base_url}/v1/chat/completions` (any OpenAI-compatible server: Ollama, vLLM,
  llama.cpp's server, OpenRouter), `Authorization: Bearer <api_key>` (no header without a key);
  the answer is `choices[0].message.content`, usage `prompt_tokens` / `completion_tokens`.
- `anthropic`: `POST {base_url}/v1/messages`, `x-api-key` and `anthropic-version: 2023-06-01`;
  `system` messages go to the top-level `system` field; `max_tokens` is required by the API
  (1024 unless given); the answer is the text blocks of `content`, usage `input_tokens` /
  `output_tokens`.

A base URL that already ends with `/v1` (as OpenAI-compatible servers often document theirs)
does not get a second one. `${NAME}` is expanded in `api_key`, `base_url` and `model` (messages
take `{{ … }}` templates). Retries inside one attempt: 429 and 5xx answers are tried again
(`retry_wait`), then the attempt fails with the status as its exit code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from nagare.engine.http_step import Answer, StepError, WebRequest, json_body, web_request
from nagare.engine.steps_env import expand_env, unresolved

PROVIDERS: dict[str, tuple[str, str]] = {  # provider: (default base URL, path)
    "openai": ("https://api.openai.com", "/v1/chat/completions"),
    "anthropic": ("https://api.anthropic.com", "/v1/messages"),
}
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # anthropic only (the API requires it)
# Waits before the second and third tries of a 429 / 5xx answer (a Retry-After header, capped
# at MAX_RETRY_AFTER, replaces them).
RETRY_DELAYS = (2.0, 8.0)
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class ChatCall:
    provider: str
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    api_key: str
    request: WebRequest


@dataclass(frozen=True)
class ChatAnswer:
    content: str
    input_tokens: int | None
    output_tokens: int | None

    def outputs(self) -> dict[str, str]:
        return {
            "content": self.content,
            "input_tokens": _count_text(self.input_tokens),
            "output_tokens": _count_text(self.output_tokens),
        }


def _count_text(count: int | None) -> str:
    return "" if count is None else str(count)


def chat_call(step: Mapping[str, Any], env: Mapping[str, str]) -> ChatCall:
    """The request of a `chat` step (its fields already rendered)."""
    provider = str(step.get("provider") or "")
    if provider not in PROVIDERS:
        raise StepError(f"unknown provider '{provider}' (expected openai or anthropic)")
    default_base, path = PROVIDERS[provider]
    api_key = expand_env(str(step.get("api_key") or ""), env).strip()
    missing = unresolved(api_key)
    if missing:
        raise StepError(
            f"api_key refers to ${{{missing[0]}}}, which this task's environment does not hold "
            "(declare it under secrets:)"
        )
    model = expand_env(str(step.get("model") or ""), env).strip()
    messages = tuple((m["role"], m["content"]) for m in step.get("messages") or ())
    base = expand_env(str(step.get("base_url") or default_base), env).strip().rstrip("/")
    url = base + (path.removeprefix("/v1") if base.endswith("/v1") else path)
    body = _body(provider, model, messages, step)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(_auth(provider, api_key))
    request = web_request("POST", url, headers, body, bool(step.get("insecure")))
    return ChatCall(provider, model, messages, api_key, request)


def _auth(provider: str, api_key: str) -> dict[str, str]:
    if provider == "anthropic":
        found = {"anthropic-version": ANTHROPIC_VERSION}
        return {"x-api-key": api_key, **found} if api_key else found
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _body(
    provider: str, model: str, messages: Sequence[tuple[str, str]], step: Mapping[str, Any]
) -> bytes:
    data: dict[str, Any] = {"model": model}
    if provider == "anthropic":
        system = "\n\n".join(content for role, content in messages if role == "system")
        if system:
            data["system"] = system
        data["messages"] = [{"role": r, "content": c} for r, c in messages if r != "system"]
        data["max_tokens"] = step.get("max_tokens") or DEFAULT_MAX_TOKENS
    else:
        data["messages"] = [{"role": r, "content": c} for r, c in messages]
        if step.get("max_tokens"):
            data["max_tokens"] = step["max_tokens"]
    if step.get("temperature") is not None:
        data["temperature"] = step["temperature"]
    return json.dumps(data, ensure_ascii=False).encode()


def chat_answer(provider: str, answer: Answer) -> ChatAnswer:
    """The content and token counts of a successful answer, or StepError saying what is
    missing."""
    data = json_body(answer, f"the {provider} answer")
    try:
        if provider == "anthropic":
            return _anthropic_answer(data)
        return _openai_answer(data)
    except (KeyError, IndexError, TypeError) as exc:
        shown = json.dumps(data, ensure_ascii=False)[:300]
        raise StepError(
            f"the {provider} answer has no {_missing(exc)} where the content should be: {shown}"
        ) from None


def _openai_answer(data: Any) -> ChatAnswer:
    content = data["choices"][0]["message"]["content"]
    usage = data.get("usage") or {}
    return ChatAnswer(
        str(content or ""), _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    )


def _anthropic_answer(data: Any) -> ChatAnswer:
    blocks = data["content"]
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    usage = data.get("usage") or {}
    return ChatAnswer(text, _int(usage.get("input_tokens")), _int(usage.get("output_tokens")))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _missing(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"'{exc.args[0]}'"
    return "value of the expected shape"


def retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def retry_wait(
    status: int,
    retry_after: str | None,
    tries: int,
    now: float,
    delays: Sequence[float] = RETRY_DELAYS,
) -> float | None:
    """How long to wait before trying again after `tries` tries ended with `status` (None: do
    not try again). `retry_after`: the answer's Retry-After header (seconds or an HTTP date,
    read against `now`, epoch seconds), capped at MAX_RETRY_AFTER."""
    if not retryable_status(status) or tries > len(delays):
        return None
    asked = _retry_after_seconds(retry_after, now)
    if asked is not None:
        return min(asked, MAX_RETRY_AFTER)
    return delays[tries - 1]


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None
