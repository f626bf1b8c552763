"""`type: chat` (issue 17, item 5): one LLM call over the OpenAI or Anthropic wire protocol
without an SDK. No model runs on these machines: a small local server speaking both protocols
(tests/web_servers.py, non-streaming answers, scripted 429 / 5xx) is the honest substitute; the
tests assert what it received (path, headers, body) and what the task published and logged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare
from test_secrets import files_containing
from web_servers import WebHarness, chat_server

from nagare.dagfile import parse_dag
from nagare.engine.chat_step import (
    MAX_RETRY_AFTER,
    RETRY_DELAYS,
    chat_answer,
    chat_call,
    retry_wait,
)
from nagare.engine.http_step import Answer, StepError
from nagare.engine.secrets import MASK

KEY = "sk-test-Key-0123456789"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hi\nin two lines"},
]


# ---------------------------------------------------------------- pure


def test_an_openai_call_posts_chat_completions_with_a_bearer_key() -> None:
    call = chat_call(
        {
            "provider": "openai",
            "model": "${MODEL}",
            "messages": MESSAGES,
            "api_key": "${OPENAI_API_KEY}",
            "temperature": 0.2,
            "max_tokens": 50,
        },
        {"OPENAI_API_KEY": KEY, "MODEL": "gpt-4o-mini"},
    )
    request = call.request
    assert request.url == "https://api.openai.com/v1/chat/completions"
    assert request.method == "POST"
    assert dict(request.headers)["Authorization"] == f"Bearer {KEY}"
    assert json.loads(request.body or b"") == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_tokens": 50,
        "temperature": 0.2,
    }
    assert call.api_key == KEY


def test_an_anthropic_call_moves_the_system_message_and_sets_max_tokens() -> None:
    call = chat_call(
        {"provider": "anthropic", "model": "claude-x", "messages": MESSAGES, "api_key": KEY},
        {},
    )
    headers = dict(call.request.headers)
    assert call.request.url == "https://api.anthropic.com/v1/messages"
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers
    assert json.loads(call.request.body or b"") == {
        "model": "claude-x",
        "system": "You are terse.",
        "messages": [MESSAGES[1]],
        "max_tokens": 1024,
    }


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434/v1/chat/completions"),
        ("http://127.0.0.1:11434/", "http://127.0.0.1:11434/v1/chat/completions"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/chat/completions"),
    ],
)
def test_a_base_url_gets_the_protocols_path_once(base_url: str, url: str) -> None:
    call = chat_call(
        {"provider": "openai", "model": "m", "messages": MESSAGES, "base_url": base_url}, {}
    )
    assert call.request.url == url
    assert "Authorization" not in dict(call.request.headers)  # no key: no header (Ollama)


def test_an_api_key_naming_an_absent_variable_is_refused_by_name() -> None:
    with pytest.raises(StepError) as error:
        chat_call(
            {
                "provider": "openai",
                "model": "m",
                "messages": MESSAGES,
                "api_key": "${OPENAI_API_KEY}",
            },
            {},
        )
    assert str(error.value) == (
        "api_key refers to ${OPENAI_API_KEY}, which this task's environment does not hold "
        "(declare it under secrets:)"
    )


def answer(data: Any, status: int = 200) -> Answer:
    return Answer(status, "OK", (), json.dumps(data).encode(), False)


def test_answers_of_both_protocols_give_content_and_token_counts() -> None:
    openai = {
        "choices": [{"message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    assert chat_answer("openai", answer(openai)).outputs() == {
        "content": "hi",
        "input_tokens": "3",
        "output_tokens": "1",
    }
    anthropic = {
        "content": [
            {"type": "text", "text": "a"},
            {"type": "tool_use"},
            {"type": "text", "text": "b"},
        ],
        "usage": {"input_tokens": 5, "output_tokens": 2},
    }
    assert chat_answer("anthropic", answer(anthropic)).outputs() == {
        "content": "ab",
        "input_tokens": "5",
        "output_tokens": "2",
    }
    with pytest.raises(StepError, match="the openai answer has no 'choices'"):
        chat_answer("openai", answer({"error": "x"}))
    with pytest.raises(StepError, match="the anthropic answer needs a JSON response body"):
        chat_answer("anthropic", Answer(200, "OK", (), b"<html>", False))


def test_retries_follow_retry_after_or_the_backoff_then_stop() -> None:
    now = 1_000_000.0
    assert retry_wait(429, "3", 1, now) == 3
    assert retry_wait(503, "3600", 1, now) == MAX_RETRY_AFTER
    assert retry_wait(429, formatdate(now + 5, usegmt=True), 1, now) == pytest.approx(5)
    assert retry_wait(500, None, 1, now) == RETRY_DELAYS[0]
    assert retry_wait(500, "soon", 2, now) == RETRY_DELAYS[1]
    assert retry_wait(500, None, 3, now) is None  # three tries made
    assert retry_wait(400, "1", 1, now) is None
    assert retry_wait(401, None, 1, now) is None


def test_a_chat_task_may_retry_on_statuses() -> None:
    text = (
        'id: c\nschedule: "workflow_dispatch"\ntasks:\n  - id: ask\n    type: chat\n'
        "    provider: openai\n    model: m\n    messages: [{role: user, content: hi}]\n"
        "    retry_on_exit_codes: [429, 529]\n"
    )
    _, errors = parse_dag(text, "c.yaml")
    assert errors == []


# ---------------------------------------------------------------- the executor


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[WebHarness]:
    h = WebHarness(tmp_path / "shared", "chat", retry_delays=(0.05, 0.05))
    yield h
    assert h.close() == []


@pytest.fixture
def server() -> Iterator[Any]:
    with chat_server() as running:
        yield running


def step(server: Any, provider: str = "openai", **more: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": "test-model",
        "base_url": server.url,
        "messages": MESSAGES,
        "api_key": "${API_KEY}",
        **more,
    }


def test_an_openai_call_publishes_the_answer_and_logs_the_transcript(
    harness: WebHarness, server: Any
) -> None:
    attempt = harness.step(step(server, temperature=0), env={"API_KEY": KEY}, secrets=(KEY,))
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert outcome.outputs == {
        "content": "echo: Say hi\nin two lines",
        "input_tokens": "11",
        "output_tokens": "7",
    }
    received = server.received[-1]
    assert received.path == "/v1/chat/completions"
    assert received.headers["Authorization"] == f"Bearer {KEY}"
    assert received.headers["Content-Type"] == "application/json"
    assert received.json == {"model": "test-model", "messages": MESSAGES, "temperature": 0}
    assert attempt.stdout == [
        "system: You are terse.",
        "user: Say hi",
        "  in two lines",
        "assistant: echo: Say hi",
        "  in two lines",
    ]
    notes = attempt.recorder.stream("nagare")
    assert (
        notes[0] == f"[nagare] > POST {server.url}/v1/chat/completions (openai, model test-model)"
    )
    assert notes[-1] == "[nagare] tokens: 11 in, 7 out"
    assert KEY not in json.dumps(attempt.recorder.lines)


def test_an_anthropic_call_sends_its_headers_and_top_level_system(
    harness: WebHarness, server: Any
) -> None:
    # a key written in the file (not a declared secret) is still never logged
    attempt = harness.step(step(server, "anthropic", api_key=KEY, max_tokens=64))
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert outcome.outputs == {
        "content": "echo: Say hi\nin two lines",
        "input_tokens": "13",
        "output_tokens": "5",
    }
    received = server.received[-1]
    assert received.path == "/v1/messages"
    assert received.headers["x-api-key"] == KEY
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in received.headers
    assert received.json == {
        "model": "test-model",
        "system": "You are terse.",
        "messages": [MESSAGES[1]],
        "max_tokens": 64,
    }


def test_a_429_then_success_is_retried_inside_the_attempt(harness: WebHarness, server: Any) -> None:
    server.script((429, {"Retry-After": "0"}, b'{"error": {"message": "slow down"}}'))
    attempt = harness.step(step(server), env={"API_KEY": KEY}, secrets=(KEY,))
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert len(server.received) == 2
    assert "[nagare] HTTP 429: trying again in 0s (try 2)" in attempt.recorder.stream("nagare")
    assert '{"error": {"message": "slow down"}}' in attempt.stderr


def test_server_errors_fail_after_three_tries_with_the_status_as_exit_code(
    harness: WebHarness, server: Any
) -> None:
    echoed = f'{{"error": "bad key {KEY}"}}'.encode()  # an API that echoes the key back
    server.script(*[(500, {}, echoed)] * 3)
    attempt = harness.step(step(server, api_key=KEY))
    outcome = harness.finish(attempt)
    assert outcome.exit_code == 500
    assert outcome.error == (
        "the openai API answered HTTP 500 Internal Server Error after 3 tries; the exit code "
        "is the status"
    )
    assert len(server.received) == 3
    assert attempt.stderr == [f'{{"error": "bad key {MASK}"}}'] * 3


def test_an_unauthorized_call_without_a_key_says_so(harness: WebHarness, server: Any) -> None:
    server.script((401, {}, b'{"error": "no key"}'))
    outcome = harness.finish(harness.step({**step(server), "api_key": ""}))
    assert outcome.exit_code == 401
    assert "(no api_key was given)" in outcome.error


def test_a_kill_during_the_backoff_ends_the_attempt_at_once(tmp_path: Path, server: Any) -> None:
    harness = WebHarness(tmp_path / "slow", "chat", retry_delays=(30.0, 30.0))
    try:
        server.script((503, {}, b"{}"))
        attempt = harness.step(step(server, api_key=KEY))
        harness.run_until(lambda: "try 2" in str(attempt.recorder.lines), 5, "the backoff")
        attempt.handle.cancel("killed")
        outcome = harness.finish(attempt, timeout=2)
        assert outcome.cancelled
    finally:
        assert harness.close() == []


def test_an_unreachable_api_fails_with_exit_code_1(harness: WebHarness) -> None:
    from test_cluster import free_port

    port = free_port()
    unreachable = {"provider": "openai", "model": "m", "messages": MESSAGES, "api_key": KEY}
    outcome = harness.finish(harness.step({**unreachable, "base_url": f"http://127.0.0.1:{port}"}))
    assert outcome.exit_code == 1
    assert "connection refused" in outcome.error


# ---------------------------------------------------------------- through the real server


def test_a_chat_dag_feeds_the_answer_downstream_and_never_shows_the_key(
    nagare_factory: Callable[..., Nagare],
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("NAGARE_TEST_OPENAI_KEY", KEY)
    nagare = nagare_factory(
        dags={
            "c.yaml": f"""
                id: chat_e2e
                schedule: workflow_dispatch
                params:
                  topic: pipelines
                secrets: [{{name: OPENAI_API_KEY, env: NAGARE_TEST_OPENAI_KEY}}]
                tasks:
                  - id: ask
                    type: chat
                    provider: openai
                    base_url: {server.url}
                    model: small
                    api_key: ${{OPENAI_API_KEY}}
                    retries: 1
                    retry_delay_seconds: 0
                    retry_on_exit_codes: [429, 500, 502, 503]
                    messages:
                      - {{role: system, content: "Answer in one line."}}
                      - {{role: user, content: "One word about {{{{ .params.topic }}}}"}}
                  - id: use
                    depends_on: [ask]
                    command: echo "got [$content] for $output_tokens tokens"
            """
        }
    )
    run_id = nagare.trigger("chat_e2e")
    assert nagare.wait_run(run_id)["status"] == "success"
    ask = nagare.task(run_id, "ask")
    assert ask["outputs"] == {
        "content": "echo: One word about pipelines",
        "input_tokens": "11",
        "output_tokens": "7",
    }
    assert nagare.log(run_id, "use") == "got [echo: One word about pipelines] for 7 tokens\n"
    log = nagare.log(run_id, "ask")
    assert "user: One word about pipelines" in log
    assert "assistant: echo: One word about pipelines" in log
    assert server.received[-1].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in json.dumps(nagare.get(f"/api/runs/{run_id}/tasks")) + log
    nagare.app.stop()
    assert files_containing(tmp_path, KEY) == []
