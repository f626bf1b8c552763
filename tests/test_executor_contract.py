"""The executor contract: the same tests for every executor (`local`: `sh -c` processes,
`docker`: containers of the local test image), driven through the seam alone (`start` an
assignment with a recording listener, run the owning thread's reactor until `ended`).

Where the executors honestly differ (the exit code of a kill, whether `started` is reported,
the variables the engine adds), the expectation is written per executor next to the test. The
fixture fails a test that leaves anything behind: a descriptor, an unreaped child, a timer in
the reactor, a container.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DOCKER_TEST_IMAGE, require_docker, wait_for
from executor_harness import DockerHarness, ExecutorHarness, LocalHarness

from nagare.executors.local import LocalExecutor
from nagare.executors.spawn import Spawner

MAX_LINE = 4096  # max_line_bytes of the executors under test
MiB = 1024 * 1024

# a kill (cancel, timeout): SIGTERM to the local process group (the shell dies of it), SIGKILL
# to the container (as the engine reports it)
KILLED_EXIT_CODE = {"local": 128 + signal.SIGTERM, "docker": 128 + signal.SIGKILL}

PID_1_SIGNALS = (
    "docker runs the task's shell as PID 1 of the container, and the kernel drops a signal "
    "sent to a PID 1 from inside its namespace unless it installed a handler: `kill -KILL $$` "
    "does nothing and the task goes on (exit 42, 'survived'), where the local shell dies "
    "(137). containers.container_spec does not ask for an init process (HostConfig "
    "Init=true, `docker run --init`), with which the engine reports 137 as locally"
)


@pytest.fixture(params=["local", "docker"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExecutorHarness]:
    shared = tmp_path / "shared"
    made: ExecutorHarness
    if request.param == "docker":
        require_docker()
        made = DockerHarness(
            shared, MAX_LINE, owner=f"contract:{tmp_path}", image=DOCKER_TEST_IMAGE
        )
    else:
        made = LocalHarness(shared, MAX_LINE)
    yield made
    leftovers = made.close()
    assert leftovers == [], f"{made.kind}: left behind: {leftovers}"


def truncated(text: str, more: int) -> str:
    return f"{text} … [line truncated: {more} more bytes]"


def expected_lines(data: bytes, max_bytes: int) -> list[str]:
    """The lines an executor reports for `data` on one stream: split at newlines, cut at
    `max_bytes` and marked, decoded with replacement characters, a final CR dropped."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    lines = []
    for piece in pieces:
        text = piece[:max_bytes].decode("utf-8", errors="replace").rstrip("\r")
        more = len(piece) - max_bytes
        lines.append(truncated(text, more) if more > 0 else text)
    return lines


def digest(lines: list[str]) -> str:
    """The hash a Recorder keeps of the lines of a stream it discards."""
    hashed = hashlib.sha256()
    for line in lines:
        hashed.update(line.encode() + b"\n")
    return hashed.hexdigest()


def background_child(harness: ExecutorHarness, pid_file: str) -> str:
    """A command that starts a 30 s background child, writes its pid, says so and waits."""
    return f"sleep 30 & echo $! > {harness.task_path(pid_file)}; echo started; wait"


# ---------------------------------------------------------------- output


def test_output_arrives_line_by_line_while_the_task_still_runs(harness: ExecutorHarness) -> None:
    """The task cannot print its second line (nor end) before the test, having seen the
    first, creates the file it waits for."""
    go = harness.task_path("go")
    attempt = harness.start(
        f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second", timeout=60
    )
    harness.wait_line(attempt, "first")
    assert not attempt.ended
    assert attempt.stdout == ["first"]
    (harness.shared / "go").touch()
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert attempt.stdout == ["first", "second"]


def test_stdout_and_stderr_are_told_apart_each_in_order(harness: ExecutorHarness) -> None:
    attempt = harness.start('for i in $(seq 1 300); do echo "out $i"; echo "err $i" >&2; done')
    assert harness.finish(attempt).succeeded
    assert attempt.stdout == [f"out {i}" for i in range(1, 301)]
    assert attempt.stderr == [f"err {i}" for i in range(1, 301)]
    assert set(attempt.recorder.counts) == {"stdout", "stderr"}


def test_a_line_longer_than_the_cap_is_cut_and_marked(harness: ExecutorHarness) -> None:
    def line_of(char: str, size: int, to: str = "") -> str:
        return f"head -c {size} /dev/zero | tr '\\0' {char} {to}; echo {to}"

    attempt = harness.start(
        "; ".join(
            [
                line_of("a", MAX_LINE),
                line_of("b", MAX_LINE + 1),
                line_of("c", 100_000),
                line_of("d", 5000, ">&2"),
                "echo after",
                "printf 'no newline at the end'",
            ]
        )
    )
    assert harness.finish(attempt).succeeded
    assert attempt.stdout == [
        "a" * MAX_LINE,
        truncated("b" * MAX_LINE, 1),
        truncated("c" * MAX_LINE, 100_000 - MAX_LINE),
        "after",
        "no newline at the end",
    ]
    assert attempt.stderr == [truncated("d" * MAX_LINE, 5000 - MAX_LINE)]


def test_a_32_mib_line_is_streamed_in_bounded_memory(harness: ExecutorHarness) -> None:
    """Python allocations while the line streams stay far below its size (tracemalloc sees
    every thread: the reactor's and a container's output thread)."""
    import tracemalloc

    size = 32 * MiB
    tracemalloc.start()
    try:
        attempt = harness.start(f"head -c {size} /dev/zero | tr '\\0' x; echo; echo after")
        outcome = harness.finish(attempt, timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.succeeded, outcome
    assert attempt.stdout == [truncated("x" * MAX_LINE, size - MAX_LINE), "after"]
    assert peak < 8 * MiB, f"{peak} bytes allocated while a {size}-byte line streamed"


def test_24_mib_of_binary_output_arrives_whole_with_replacement_characters(
    harness: ExecutorHarness,
) -> None:
    """Random bytes (NULs, CRs, invalid UTF-8, a newline every 256 bytes on average), then
    chosen invalid UTF-8 on stderr: every line arrives, decoded with U+FFFD; ended once."""
    blob = random.Random(20240607).randbytes(24 * MiB)
    (harness.shared / "blob.bin").write_bytes(blob)
    attempt = harness.start(
        f"cat {harness.task_path('blob.bin')}; "
        r"printf '\377\376 bad \303( end\n' >&2; printf 'nul\000byte\r\n' >&2",
        discard=("stdout",),
    )
    outcome = harness.finish(attempt, timeout=60)
    assert outcome.succeeded, outcome
    expected = expected_lines(blob, MAX_LINE)
    recorder = attempt.recorder
    assert recorder.counts["stdout"] == len(expected)
    assert recorder.digests["stdout"].hexdigest() == digest(expected)
    assert attempt.stderr == ["\ufffd\ufffd bad \ufffd( end", "nul\x00byte"]


def test_a_partial_last_line_is_reported_when_the_task_is_killed(harness: ExecutorHarness) -> None:
    ready = harness.shared / "ready"
    attempt = harness.start(
        f"printf 'no newline yet'; touch {harness.task_path('ready')}; sleep 30", timeout=60
    )
    harness.run_until(ready.exists, 30, "the task to have printed")
    attempt.handle.cancel("killed")
    assert harness.finish(attempt).cancelled
    assert attempt.stdout == ["no newline yet"]


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize("code", [0, 3])
def test_the_exit_code_is_reported(harness: ExecutorHarness, code: int) -> None:
    outcome = harness.finish(harness.start(f"echo code {code}; exit {code}"))
    assert outcome.exit_code == code
    assert outcome.metrics.exit_code == code
    assert outcome.succeeded is (code == 0)
    assert (outcome.timed_out, outcome.cancelled, outcome.error) == (False, False, "")


def test_a_child_killed_by_a_signal_exits_128_plus_n_through_the_shell(
    harness: ExecutorHarness,
) -> None:
    outcome = harness.finish(harness.start("sh -c 'kill -TERM $$'; exit $?"))
    assert outcome.exit_code == 128 + signal.SIGTERM
    assert not outcome.succeeded


@pytest.mark.parametrize(
    "harness",
    [
        "local",
        pytest.param(
            "docker",
            marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=PID_1_SIGNALS),
        ),
    ],
    indirect=True,
)
def test_a_task_killed_by_a_signal_reports_128_plus_n(harness: ExecutorHarness) -> None:
    attempt = harness.start("kill -KILL $$; echo survived; exit 42")
    outcome = harness.finish(attempt)
    assert (outcome.exit_code, attempt.stdout) == (128 + signal.SIGKILL, [])
    assert outcome.metrics.exit_code == 128 + signal.SIGKILL
    assert not outcome.succeeded


# ---------------------------------------------------------------- environment


SHELL_AND_ENGINE_VARIABLES = {
    "local": {"PWD", "OLDPWD", "SHLVL"},  # what sh sets itself: nothing else is needed
    "docker": {"PWD", "OLDPWD", "SHLVL", "HOME", "HOSTNAME", "PATH"},  # and the engine
}


def test_the_assignment_env_reaches_the_task_and_nothing_of_the_host(
    harness: ExecutorHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAGARE_CONTRACT_PLANTED", "from the host")
    env = {"GREETING": "hello wörld", "EMPTY": "", "WITH_EQUALS": "a=b c", "NAGARE_TASK_ID": "t"}
    attempt = harness.start(
        'printf "%s|%s|%s\\n" "$GREETING" "$EMPTY" "${NAGARE_CONTRACT_PLANTED-unset}"; env',
        env=env,
    )
    assert harness.finish(attempt).succeeded
    assert attempt.stdout[0] == "hello wörld||unset"
    variables = dict(line.split("=", 1) for line in attempt.stdout[1:])
    assert {name: variables.get(name) for name in env} == env
    extra = set(variables) - set(env)
    assert extra <= SHELL_AND_ENGINE_VARIABLES[harness.kind], extra


# ---------------------------------------------------------------- timeout and cancel


def test_a_timeout_kills_the_whole_task(harness: ExecutorHarness) -> None:
    attempt = harness.start(background_child(harness, "child.pid"), timeout=1)
    outcome = harness.finish(attempt)
    elapsed = time.monotonic() - attempt.started_at
    assert 1.0 <= elapsed < 15
    assert (outcome.timed_out, outcome.cancelled, outcome.error) == (True, False, "timed out")
    assert outcome.exit_code == KILLED_EXIT_CODE[harness.kind]
    assert not outcome.succeeded
    assert attempt.stdout == ["started"]
    pid_file = harness.shared / "child.pid"
    wait_for(lambda: not harness.remains(pid_file), 5, message="the whole task to be gone")


def test_cancel_from_another_thread_ends_the_attempt_and_kills_its_children(
    harness: ExecutorHarness,
) -> None:
    attempt = harness.start(background_child(harness, "child.pid"), timeout=60)
    harness.wait_line(attempt, "started")
    pid_file = harness.shared / "child.pid"
    assert harness.remains(pid_file), "the probe cannot see the running task"
    killer = threading.Thread(target=attempt.handle.cancel, args=("killed",))
    cancelled_at = time.monotonic()
    killer.start()
    killer.join(10)
    outcome = harness.finish(attempt)
    assert time.monotonic() - cancelled_at < 10
    assert (outcome.cancelled, outcome.timed_out) == (True, False)
    assert outcome.exit_code == KILLED_EXIT_CODE[harness.kind]
    assert not outcome.succeeded
    wait_for(lambda: not harness.remains(pid_file), 5, message="the whole task to be gone")


def test_a_task_that_ignores_sigterm_is_killed_all_the_same(harness: ExecutorHarness) -> None:
    """Locally SIGTERM first, SIGKILL after a grace period; a container gets SIGKILL at once:
    either way the task dies of SIGKILL."""
    attempt = harness.start("trap '' TERM; " + background_child(harness, "child.pid"), timeout=60)
    harness.wait_line(attempt, "started")
    attempt.handle.cancel("killed")
    outcome = harness.finish(attempt, timeout=10)
    assert (outcome.cancelled, outcome.exit_code) == (True, 128 + signal.SIGKILL)
    pid_file = harness.shared / "child.pid"
    wait_for(lambda: not harness.remains(pid_file), 5, message="the whole task to be gone")


def test_a_background_child_the_shell_leaves_running_ends_with_the_attempt(
    harness: ExecutorHarness,
) -> None:
    """The shell exits at once, its child holds the output open: the attempt ends soon (the
    local executor drains the output for a second, a container stops with its first process),
    with the shell's exit code, and the child does not outlive it."""
    pid_file = harness.task_path("child.pid")
    attempt = harness.start(f"(sleep 30; echo late) & echo $! > {pid_file}; echo early")
    outcome = harness.finish(attempt)
    assert time.monotonic() - attempt.started_at < 10
    assert outcome.succeeded, outcome
    assert attempt.stdout == ["early"]
    child = harness.shared / "child.pid"
    wait_for(lambda: not harness.remains(child), 5, message="the background child to be gone")


def test_a_cancel_before_anything_ran_ends_the_attempt_cancelled(
    harness: ExecutorHarness,
) -> None:
    attempt = harness.start("sleep 30", timeout=60)
    attempt.handle.cancel("killed")  # before the reactor turned once
    outcome = harness.finish(attempt, timeout=10)
    assert (outcome.cancelled, outcome.timed_out) == (True, False)
    assert not outcome.succeeded


def test_cancel_twice_from_two_threads_ends_the_attempt_once(harness: ExecutorHarness) -> None:
    attempt = harness.start(background_child(harness, "child.pid"), timeout=60)
    harness.wait_line(attempt, "started")
    killers = [threading.Thread(target=attempt.handle.cancel, args=("killed",)) for _ in "ab"]
    for killer in killers:
        killer.start()
    attempt.handle.cancel("killed")
    for killer in killers:
        killer.join(10)
    outcome = harness.finish(attempt)
    assert outcome.cancelled
    harness.drive(0.3)
    assert len(attempt.recorder.outcomes) == 1


def test_cancel_after_the_end_does_nothing(harness: ExecutorHarness) -> None:
    attempt = harness.start("echo done")
    outcome = harness.finish(attempt)
    attempt.handle.cancel("killed")
    killer = threading.Thread(target=attempt.handle.cancel, args=("killed",))
    killer.start()
    killer.join(10)
    harness.drive(0.3)
    assert attempt.recorder.outcomes == [outcome]
    assert outcome.succeeded and not outcome.cancelled


# ---------------------------------------------------------------- metrics


def test_a_short_task_has_duration_exit_code_and_executor_type(harness: ExecutorHarness) -> None:
    outcome = harness.finish(harness.start("sleep 0.2"))
    metrics = outcome.metrics
    assert 0 < metrics.duration_ms < 20_000
    assert metrics.exit_code == 0
    assert metrics.executor_type == harness.kind == harness.executor.executor_type


def test_the_peak_memory_and_cpu_time_of_a_busy_task_are_reported(
    harness: ExecutorHarness,
) -> None:
    """A shell holding a 30 MB string for 2 s: the local tree is sampled every 250 ms, the
    engine's stats stream sends a frame a second (a shorter task may honestly report 0, as a
    container's `sleep 0.2` does). Pushing 30 MB through `tr` costs CPU time (~100 ms)."""
    size = 30_000_000
    attempt = harness.start(f"x=$(head -c {size} /dev/zero | tr '\\0' a); sleep 2; echo ${{#x}}")
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert attempt.stdout == [str(size)]
    assert outcome.metrics.peak_memory_bytes >= size
    assert outcome.metrics.cpu_user_ms + outcome.metrics.cpu_system_ms > 0


# ---------------------------------------------------------------- the listener's calls


def test_ended_comes_once_in_the_owning_thread_for_attempts_running_together(
    harness: ExecutorHarness,
) -> None:
    attempts = [
        harness.start(command)
        for command in ("exit 0", "echo one; exit 1", "sleep 0.3; echo two >&2; exit 2")
    ]
    for attempt in attempts:
        harness.finish(attempt)  # once, in this thread, no line after it
    harness.drive(0.5)
    assert [[o.exit_code for o in a.recorder.outcomes] for a in attempts] == [[0], [1], [2]]
    assert [a.recorder.ended_threads for a in attempts] == [[harness.owner_thread]] * 3
    assert harness.reactor.idle  # nothing of the ended attempts is left in the loop


def test_started_comes_before_any_output_where_there_is_a_process(
    harness: ExecutorHarness,
) -> None:
    """The local executor reports the shell's pid (for the crash recovery); a container's
    attempt reports none (its leftovers are found by their labels)."""
    attempt = harness.start("echo hi")
    assert harness.finish(attempt).succeeded
    recorder = attempt.recorder
    if harness.kind == "local":
        [(pid, start_time)] = recorder.starts
        assert pid > 0 and start_time > 0
        assert recorder.lines_before_start == 0
    else:
        assert recorder.starts == []


def test_a_task_that_cannot_start_ends_with_an_error_reported_later(
    harness: ExecutorHarness,
) -> None:
    """Local: no shell to execute; Docker: a relative volume path. `start` raises nothing and
    reports `ended` at the owning thread's next turn, not from inside `start`."""
    with contextlib.ExitStack() as cleanup:
        if harness.kind == "local":
            broken = LocalExecutor(harness.reactor, MAX_LINE, Spawner(shell="/nonexistent/sh"))
            cleanup.callback(broken.close)
            attempt = harness.start("echo never", executor=broken)
            expected = "cannot start /nonexistent/sh: "
        else:
            attempt = harness.start("echo never", volumes=("relative:/data",))
            expected = "volume 'relative:/data': host and container paths must be absolute"
        assert not attempt.ended
        outcome = harness.finish(attempt, timeout=10)
        assert outcome.error.startswith(expected), outcome.error
        assert (outcome.exit_code, outcome.cancelled, outcome.timed_out) == (None, False, False)
        assert attempt.recorder.starts == [] and attempt.recorder.lines == []
        attempt.handle.cancel("killed")  # nothing to cancel
        harness.drive(0.2)
        assert len(attempt.recorder.outcomes) == 1
