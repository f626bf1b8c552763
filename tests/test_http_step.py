"""`type: http` (issue 17, item 2): the pure request/answer rules, the executor through its seam
against the test's own HTTP servers (plain, TLS with a self-signed certificate, slow, failing,
huge), and whole DAGs through the real server: outputs downstream, secrets masked, retries by
status, the `dags/` example against Nagare's own /api/health, and a remote worker."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Nagare, wait_for
from executor_harness import Recorder
from test_cluster import GPU_ONLY, LEASE, Worker, gpu_dag, wait_online, workers
from test_secrets import files_containing
from web_servers import JSON_DOC, WebHarness, self_signed_certificate, web_server

from nagare.dagfile import parse_dag
from nagare.engine.http_step import (
    Answer,
    StepError,
    body_text,
    http_outputs,
    http_request,
    status_expected,
)
from nagare.engine.secrets import MASK
from nagare.engine.steps_env import expand_env

__all__ = ["workers"]  # the fixture, used by the remote test

ROOT = Path(__file__).resolve().parent.parent
SECRET = "tok-Secret-9f8e7d"


# ---------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("status", "expected", "ok"),
    [
        (200, ("2xx",), True),
        (204, ("2xx",), True),
        (301, ("2xx",), False),
        (404, ("200", "404"), True),
        (503, ("2xx", "4xx"), False),
        (500, ("5xx",), True),
    ],
)
def test_a_status_is_expected_by_value_or_class(
    status: int, expected: tuple[str, ...], ok: bool
) -> None:
    assert status_expected(status, expected) is ok


def test_env_references_expand_known_names_only() -> None:
    env = {"TOKEN": "t1", "HOST": "h"}
    assert expand_env("Bearer ${TOKEN} at ${HOST}", env) == "Bearer t1 at h"
    assert (
        expand_env("${MISSING} and $TOKEN and ${TOKEN", env) == "${MISSING} and $TOKEN and ${TOKEN"
    )


def test_the_request_expands_references_in_url_headers_and_json() -> None:
    step = {
        "method": "post",
        "url": "https://api.example.com:8443/v1/items?key=${TOKEN}",
        "headers": {"Authorization": "Bearer ${TOKEN}", "X-Unknown": "${NOPE}"},
        "json": {"name": "${NAME}", "list": ["${TOKEN}", 3], "n": 1},
    }
    request = http_request(step, {"TOKEN": "t1", "NAME": "n1"})
    assert (request.method, request.scheme, request.host, request.port) == (
        "POST",
        "https",
        "api.example.com",
        8443,
    )
    assert request.target == "/v1/items?key=t1"
    headers = dict(request.headers)
    assert headers["Authorization"] == "Bearer t1"
    assert headers["X-Unknown"] == "${NOPE}"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("nagare/")
    assert json.loads(request.body or b"") == {"name": "n1", "list": ["t1", 3], "n": 1}
    assert request.url == "https://api.example.com:8443/v1/items?key=t1"


def test_the_request_takes_a_text_body_and_basic_auth_from_the_url() -> None:
    request = http_request({"url": "http://me:p%40ss@example.com/x", "body": "a=${A}"}, {"A": "1"})
    assert request.method == "GET" and request.port == 80 and request.body == b"a=1"
    assert dict(request.headers)["Authorization"] == "Basic bWU6cEBzcw=="  # me:p@ss
    assert request.url == "http://example.com/x"  # no password in what is logged


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"url": "ftp://example.com/"}, "expected an http:// or https:// URL"),
        ({"url": "${BASE}/x"}, "expected an http:// or https:// URL"),  # not set
        ({"url": "http://example.com:99999/"}, "invalid port"),
        ({"url": "http://example.com/a b"}, "space"),
        ({"url": "http://example.com/", "method": "GE T"}, "not an HTTP method"),
        ({"url": "http://example.com/", "headers": {"X": "a\nb"}}, "line break"),
        ({"url": "http://example.com/", "headers": {"X Y": "a"}}, "not a valid header name"),
    ],
)
def test_a_request_that_cannot_be_made_says_why(step: dict[str, Any], message: str) -> None:
    with pytest.raises(StepError, match=message):
        http_request(step, {})


def answer(body: bytes, cut: bool = False, content_type: str = "application/json") -> Answer:
    return Answer(200, "OK", (("Content-Type", content_type),), body, cut)


def test_outputs_are_status_body_and_the_jq_values_as_text() -> None:
    outputs = http_outputs(
        answer(json.dumps(JSON_DOC).encode()),
        {
            "STATE": ".status",
            "ITEMS": ".items",
            "RATIO": ".ratio",
            "NONE": ".none",
            "N": ".items[0]",
        },
    )
    assert outputs == {
        "status": "200",
        "body": json.dumps(JSON_DOC),
        "STATE": "ok",
        "ITEMS": "[1,2,3]",
        "RATIO": "1.5",
        "NONE": "",
        "N": "1",
    }


def test_output_jq_over_a_body_that_is_not_json_or_was_cut_fails_clearly() -> None:
    with pytest.raises(StepError) as error:
        http_outputs(answer(b"<html>hi</html>", content_type="text/html"), {"X": ".a"})
    assert str(error.value) == (
        "output_jq needs a JSON response body; this one is not JSON (Expecting value at line 1 "
        "column 1; text/html); it starts with: <html>hi</html>"
    )
    with pytest.raises(StepError, match="larger than 1 MiB"):
        http_outputs(answer(b"{", cut=True), {"X": ".a"})
    with pytest.raises(StepError, match=r"output_jq.X: jq '.a.b' failed"):
        http_outputs(answer(b'{"a": 1}'), {"X": ".a.b"})
    assert http_outputs(answer(b"plain"), {}) == {"status": "200", "body": "plain"}
    big = json.dumps({"a": "\n" * 600_000}).encode()  # < 1 MiB of body, > 1 MiB as an output
    with pytest.raises(StepError, match="outputs: output 'A' is 1200002 bytes"):
        http_outputs(answer(big), {"A": ".a | tojson"})


def test_body_text_stays_within_its_byte_limit_whatever_the_bytes() -> None:
    assert body_text(b"\xff" * 10, 100) == "\ufffd" * 10
    assert len(body_text(b"\xff" * 100, 10).encode()) <= 10
    assert body_text("héllo".encode(), 2) == "h"


def dag_errors(task: str) -> list[str]:
    text = 'id: d\nschedule: "workflow_dispatch"\ntasks:\n' + task
    _, errors = parse_dag(text, "d.yaml")
    return [str(e) for e in errors]


def test_http_tasks_may_retry_on_statuses_and_keep_their_own_output_names() -> None:
    assert (
        dag_errors(
            "  - id: a\n    type: http\n    url: ${BASE}/x\n    retry_on_exit_codes: [503, 429]\n"
            "    allow_failure: {exit_codes: [404]}\n"
        )
        == []
    )
    errors = dag_errors("  - id: a\n    command: 'true'\n    retry_on_exit_codes: [503]\n")
    assert any("expected an exit code 1-255, found 503" in e for e in errors), errors
    errors = dag_errors(
        "  - id: a\n    type: http\n    url: http://x/\n    retry_on_exit_codes: [600]\n"
    )
    assert any("expected an exit code 1-599, found 600" in e for e in errors), errors
    errors = dag_errors(
        "  - id: a\n    type: http\n    url: http://x/\n    output_jq: {status: .a}\n"
    )
    assert any("'status' is an output of every http step already" in e for e in errors), errors


# ---------------------------------------------------------------- the executor


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[WebHarness]:
    h = WebHarness(tmp_path / "shared", "http")
    yield h
    assert h.close() == []


@pytest.fixture
def server() -> Iterator[Any]:
    with web_server() as running:
        yield running


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_a_get_logs_the_exchange_and_publishes_status_body_and_jq_values(
    harness: WebHarness, server: Any
) -> None:
    attempt = harness.step(
        {"url": f"{server.url}/json", "output_jq": {"STATE": ".status", "ITEMS": ".items"}}
    )
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert outcome.outputs == {
        "status": "200",
        "body": json.dumps(JSON_DOC),
        "STATE": "ok",
        "ITEMS": "[1,2,3]",
    }
    notes = attempt.recorder.stream("nagare")
    assert notes[0] == f"[nagare] > GET {server.url}/json"
    assert notes[1].startswith("[nagare] < 200 OK (")
    assert "[nagare] < Content-Type: application/json" in notes
    assert attempt.stdout == [json.dumps(JSON_DOC)]
    assert notes[-1] == f"[nagare] body: {len(json.dumps(JSON_DOC))} bytes"


def test_a_post_sends_expanded_secrets_and_masks_them_everywhere(
    harness: WebHarness, server: Any
) -> None:
    attempt = harness.step(
        {
            "method": "POST",
            "url": f"{server.url}/echo?key=${{TOKEN}}",
            "headers": {"Authorization": "Bearer ${TOKEN}"},
            "json": {"token": "${TOKEN}", "n": 1},
            "output_jq": {"SEEN": ".headers.Authorization"},
        },
        env={"TOKEN": SECRET},
        secrets=(SECRET,),
    )
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    received = server.received[-1]
    assert received.headers["Authorization"] == f"Bearer {SECRET}"
    assert received.path == f"/echo?key={SECRET}"
    assert received.json == {"token": SECRET, "n": 1}
    assert outcome.outputs is not None and outcome.outputs["SEEN"] == f"Bearer {MASK}"
    assert SECRET not in json.dumps(outcome.outputs)
    lines = [text for _, text in attempt.recorder.lines]
    size = len(json.dumps({"token": SECRET, "n": 1}))
    assert f"[nagare] > POST {server.url}/echo?key={MASK} ({size} bytes of body)" in lines
    assert not [line for line in lines if SECRET in line]


def test_statuses_outside_expect_status_fail_with_the_status_as_exit_code(
    harness: WebHarness, server: Any
) -> None:
    ok = harness.finish(
        harness.step({"url": f"{server.url}/status/404", "expect_status": ["200", "404"]})
    )
    assert ok.succeeded and ok.outputs is not None and ok.outputs["status"] == "404"
    failed = harness.finish(harness.step({"url": f"{server.url}/status/503"}))
    assert failed.exit_code == 503
    assert failed.error == (
        "HTTP 503 Service Unavailable: expected 2xx (expect_status); the exit code is the status"
    )
    assert failed.outputs is None
    redirect = harness.finish(harness.step({"url": f"{server.url}/status/302"}))
    assert redirect.exit_code == 302  # redirects are not followed


def test_a_refused_connection_and_an_unknown_host_fail_with_exit_code_1(
    harness: WebHarness, server: Any
) -> None:
    from test_cluster import free_port

    port = free_port()
    refused = harness.finish(harness.step({"url": f"http://127.0.0.1:{port}/"}))
    assert refused.exit_code == 1
    assert refused.error == f"connection refused by 127.0.0.1:{port} (is the service running?)"
    unknown = harness.finish(harness.step({"url": "http://no-such-host.invalid/"}), timeout=60)
    assert unknown.exit_code == 1
    assert unknown.error.startswith("cannot resolve the host name 'no-such-host.invalid': ")


def test_tls_is_verified_unless_insecure(
    harness: WebHarness, certificate: tuple[Path, Path]
) -> None:
    with web_server(certificate) as tls:
        refused = harness.finish(harness.step({"url": f"{tls.url}/json"}))
        assert refused.exit_code == 1
        assert refused.error.startswith(
            f"the TLS certificate of 127.0.0.1:{tls.url.rsplit(':', 1)[1]} is not trusted: "
        )
        assert refused.error.endswith("(insecure: true skips the check)")
        ok = harness.finish(harness.step({"url": f"{tls.url}/json", "insecure": True}))
        assert ok.succeeded, ok
        assert ok.outputs is not None and ok.outputs["body"] == json.dumps(JSON_DOC)
        assert [r.path for r in tls.received] == ["/json"]  # the refused one sent nothing


def test_a_slow_answer_times_out_at_once_and_its_thread_ends(
    harness: WebHarness, server: Any
) -> None:
    attempt = harness.step({"url": f"{server.url}/slow/30"}, timeout=0.5)
    outcome = harness.finish(attempt, timeout=5)
    assert outcome.timed_out and outcome.exit_code is None
    assert outcome.metrics.duration_ms < 2000, outcome.metrics


def test_a_kill_ends_a_never_ending_body_at_once(harness: WebHarness, server: Any) -> None:
    attempt = harness.step({"url": f"{server.url}/drip"})
    harness.run_until(lambda: any("< 200" in t for _, t in attempt.recorder.lines), 5, "headers")
    attempt.handle.cancel("killed")
    outcome = harness.finish(attempt, timeout=2)
    assert outcome.cancelled and outcome.exit_code is None


class _CancelsOnFirstLine(Recorder):
    """A listener that kills its attempt from inside `line` (as a pool does when the log
    cannot be written)."""

    handle: Any = None

    def line(self, stream: str, text: str) -> None:
        super().line(stream, text)
        if self.handle is not None:
            self.handle.cancel("log full")


def test_a_listener_may_cancel_from_inside_a_line(harness: WebHarness, server: Any) -> None:
    recorder = _CancelsOnFirstLine()
    assignment = harness.assignment("", step_type="http", step={"url": f"{server.url}/slow/0.3"})
    recorder.handle = harness.executor.start(assignment, recorder)
    harness.run_until(lambda: recorder.outcomes, 3, "the end")
    assert recorder.outcomes[0].cancelled and recorder.outcomes[0].error == "log full"
    assert recorder.lines_after_end == 0
    assert not any(stream == "stdout" for stream, _ in recorder.lines)  # cut before the body


def test_a_huge_body_is_read_up_to_the_cap_in_bounded_memory(
    harness: WebHarness, server: Any
) -> None:
    size = 50 << 20
    tracemalloc.start()
    try:
        attempt = harness.step({"url": f"{server.url}/big/{size}"}, discard=("stdout",))
        outcome = harness.finish(attempt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.succeeded, outcome
    assert outcome.outputs is not None
    assert len(outcome.outputs["body"].encode()) == 1 << 20
    assert peak < 12 << 20, f"peak {peak} bytes"
    assert attempt.recorder.counts["stdout"] == 64  # the first 64 KiB: 64 lines of 1 KiB
    assert attempt.recorder.stream("nagare")[-1] == (
        f"[nagare] body larger than 1048576 bytes of {size} bytes: reading stopped there, the "
        "`body` output is cut to its first 1048576 bytes, the log shows 65536"
    )
    harness.drive(0.2)
    assert server.server.sent_bytes < size // 2  # the rest was never read


def test_output_jq_over_text_fails_the_task_with_exit_code_2(
    harness: WebHarness, server: Any
) -> None:
    outcome = harness.finish(harness.step({"url": f"{server.url}/text", "output_jq": {"X": ".a"}}))
    assert outcome.exit_code == 2
    assert outcome.error.startswith("output_jq needs a JSON response body; this one is not JSON")
    assert outcome.error.endswith("it starts with: hello\nworld")


def test_a_step_that_cannot_be_sent_fails_before_it_starts(harness: WebHarness) -> None:
    attempt = harness.step(
        {"url": "http://example.com/${SECRET_PATH} x"},
        env={"SECRET_PATH": SECRET},
        secrets=(SECRET,),
    )
    outcome = harness.finish(attempt)
    assert outcome.exit_code == 2
    assert "space" in outcome.error and SECRET not in outcome.error


# ---------------------------------------------------------------- through the real server


def test_an_http_dag_passes_outputs_downstream_and_masks_its_secret(
    nagare_factory: Callable[..., Nagare],
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SRC_TOKEN", SECRET)
    nagare = nagare_factory(
        dags={
            "h.yaml": f"""
                id: http_e2e
                schedule: workflow_dispatch
                params:
                  base: "{server.url}"
                secrets: [{{name: TOKEN, env: SRC_TOKEN}}]
                tasks:
                  - id: call
                    type: http
                    method: POST
                    url: "{{{{ .params.base }}}}/echo"
                    headers: {{Authorization: "Bearer ${{TOKEN}}"}}
                    json: {{run: "{{{{ .run.id }}}}"}}
                    output_jq:
                      METHOD: .method
                      AUTH: .headers.Authorization
                  - id: use
                    depends_on: [call]
                    command: >-
                      echo "status=$status method={{{{ .tasks.call.outputs.METHOD }}}}
                      auth=$AUTH"
            """
        }
    )
    run_id = nagare.trigger("http_e2e")
    assert nagare.wait_run(run_id)["status"] == "success"
    call = nagare.task(run_id, "call")
    assert call["outputs"]["status"] == "200"
    assert call["outputs"]["METHOD"] == "POST"
    assert call["outputs"]["AUTH"] == f"Bearer {MASK}"
    assert nagare.log(run_id, "use") == f"status=200 method=POST auth=Bearer {MASK}\n"
    assert server.received[-1].headers["Authorization"] == f"Bearer {SECRET}"
    assert server.received[-1].json == {"run": run_id}
    log = nagare.log(run_id, "call")
    assert f"> POST {server.url}/echo" in log and SECRET not in log
    assert SECRET not in json.dumps(nagare.get(f"/api/runs/{run_id}/tasks"))
    nagare.app.stop()
    assert files_containing(tmp_path, SECRET) == []


def test_statuses_are_retried_as_retry_on_exit_codes_says(
    nagare_factory: Callable[..., Nagare], server: Any
) -> None:
    nagare = nagare_factory(
        dags={
            "r.yaml": f"""
                id: http_retry
                schedule: workflow_dispatch
                tasks:
                  - id: flaky
                    type: http
                    url: {server.url}/flaky/e2e/2
                    retries: 3
                    retry_delay_seconds: 0
                    retry_on_exit_codes: [503, 429]
                  - id: missing
                    type: http
                    url: {server.url}/status/404
                    retries: 3
                    retry_delay_seconds: 0
                    retry_on_exit_codes: [503, 429]
            """
        }
    )
    run_id = nagare.trigger("http_retry")
    assert nagare.wait_run(run_id)["status"] == "failed"
    attempts = nagare.get(f"/api/runs/{run_id}/tasks/flaky/attempts")
    assert [a["status"] for a in attempts] == ["failed", "failed", "success"]
    assert [a["exit_code"] for a in attempts] == [503, 503, 0]
    missing = nagare.get(f"/api/runs/{run_id}/tasks/missing/attempts")
    assert len(missing) == 1 and missing[0]["exit_code"] == 404
    assert "retry_on_exit_codes does not list it" in nagare.log(run_id, "missing")


def test_a_slow_call_times_out_and_a_killed_one_is_cancelled_at_once(
    nagare_factory: Callable[..., Nagare], server: Any
) -> None:
    nagare = nagare_factory(
        dags={
            "s.yaml": f"""
                id: http_slow
                schedule: workflow_dispatch
                tasks:
                  - id: timed
                    type: http
                    url: {server.url}/slow/30
                    timeout_seconds: 0.5
                  - id: killed
                    type: http
                    url: {server.url}/drip
            """
        }
    )
    run_id = nagare.trigger("http_slow")
    wait_for(lambda: "< 200 OK" in nagare.log(run_id, "killed"), 10, message="the drip")
    started = time.monotonic()
    assert nagare.call("POST", f"/api/runs/{run_id}/tasks/killed/kill").status == 200
    wait_for(lambda: nagare.task(run_id, "killed")["status"] == "cancelled", 5)
    assert time.monotonic() - started < 2
    assert nagare.wait_run(run_id)["status"] in ("failed", "cancelled")
    timed = nagare.task(run_id, "timed")
    assert timed["status"] == "failed"
    assert "timed out after 0.5s: the request was abandoned (its connection closed)" in (
        nagare.log(run_id, "timed")
    )


def test_the_example_calls_nagares_own_health(
    nagare_factory: Callable[..., Nagare], tmp_path: Path
) -> None:
    text = (ROOT / "dags" / "http_example.yaml").read_text()
    nagare = nagare_factory(dags={"http_example.yaml": text})
    run_id = nagare.trigger("http_example", {"NAGARE_URL": nagare.url})
    assert nagare.wait_run(run_id)["status"] == "success"
    health = nagare.task(run_id, "health")
    assert health["outputs"]["status"] == "200"
    assert health["outputs"]["STATE"] == "ok"
    assert "server is ok" in nagare.log(run_id, "report")


def test_an_http_step_runs_on_the_remote_worker_of_its_pool(
    nagare_factory: Callable[..., Nagare], workers: Callable[..., Worker], server: Any
) -> None:
    nagare = nagare_factory(
        dags={
            "w.yaml": gpu_dag(
                "remote_http",
                f"- id: t\n  pool: gpu\n  type: http\n  url: {server.url}/json\n"
                "  output_jq: {NAME: .name}\n",
            )
        },
        worker_pools=GPU_ONLY,
        lease_timeout_seconds=LEASE,
    )
    w1 = workers(nagare.url, "w1")
    wait_online(nagare, w1)
    run_id = nagare.trigger("remote_http")
    assert nagare.wait_run(run_id)["status"] == "success", (nagare.log(run_id, "t"), w1.text())
    task = nagare.task(run_id, "t")
    assert task["worker"] == "w1"
    assert task["outputs"]["NAME"] == "nagare"
    assert f"> GET {server.url}/json" in nagare.log(run_id, "t")
    w1.proc.kill()
    w1.wait_exit(10)


def test_an_http_step_is_a_handler_told_how_the_run_ended(
    nagare_factory: Callable[..., Nagare], server: Any
) -> None:
    """handler_on with an http step: the failure handler calls out with the run's failed
    tasks, in the run's context (the on-call webhook of a team)."""
    nagare = nagare_factory(
        dags={
            "hh.yaml": f"""
                id: http_handler
                schedule: workflow_dispatch
                tasks:
                  - id: load
                    command: exit 3
                handler_on:
                  failure:
                    type: http
                    method: POST
                    url: "{server.url}/echo"
                    json:
                      text: "{{{{ .dag.id }}}} run {{{{ .run.id }}}} failed"
                      failed: "${{NAGARE_FAILED_TASKS}}"
            """
        }
    )
    run_id = nagare.trigger("http_handler")
    assert nagare.wait_run(run_id)["status"] == "failed"
    wait_for(lambda: nagare.task(run_id, "on_failure")["status"] == "success", 10)
    assert server.received[-1].json == {
        "text": f"http_handler run {run_id} failed",
        "failed": "load",
    }
    assert nagare.task(run_id, "on_failure")["outputs"]["status"] == "200"
