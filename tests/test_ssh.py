"""The `ssh` step against a real OpenSSH server (tests/sshd_server.py): the executor driven
through its seam (streaming, exit codes, the task's variables, timeout and kill ending the
remote processes, ssh's own failures explained), whole DAGs through the real server, and the
pure decisions (fields, exported variables, the command line, messages) on their own."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nagare, pythonpath_env, wait_for
from executor_harness import Attempt, LocalHarness
from sshd_server import SshServer, free_port, keygen, start_sshd

from nagare.dagfile import parse_dag
from nagare.engine.steps_env import expand_env
from nagare.executors.procfs import process_alive
from nagare.executors.ssh import (
    MAX_LINE_BYTES,
    SshExecutor,
    SshFieldError,
    SshTarget,
    failure_message,
    missing_file,
    remote_env,
    remote_line,
    ssh_line,
    ssh_target,
)
from nagare.models import Outcome, TaskType


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


class SshHarness(LocalHarness):
    """The local harness (it checks that no child, descriptor or timer is left behind) with an
    ssh executor wrapping its local executor; attempts get the test process's environment."""

    def __init__(self, shared: Path) -> None:
        super().__init__(shared, 4096)
        self.ssh = SshExecutor(self.reactor, self.executor, os.environ)

    def run(self, command: str, step: dict[str, Any], timeout: float = 0, **fields: Any) -> Attempt:
        env = {**os.environ, **fields.pop("env", {})}
        return self.start(
            command,
            env,
            timeout,
            executor=self.ssh,
            step_type=TaskType.SSH,
            step=step,
            **fields,
        )

    def finish_unstarted(self, attempt: Attempt) -> Outcome:
        """An attempt refused before it started: it ends at the next turn, with no process."""
        self.run_until(lambda: attempt.ended, 10, "the end of a refused attempt")
        assert attempt.recorder.starts == []
        return attempt.recorder.outcomes[0]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SshHarness]:
    made = SshHarness(tmp_path / "shared")
    yield made
    leftovers = made.close()
    assert leftovers == [], f"left behind: {leftovers}"


@pytest.fixture
def step(sshd: SshServer, tmp_path: Path) -> dict[str, Any]:
    """Fields of a step that reaches the test server."""
    return sshd.step(sshd.known_hosts(tmp_path / "known hosts"))  # (a path with a space)


def pids_gone(*pid_files: Path) -> bool:
    """Whether the processes whose pids the remote command wrote have ended (sshd runs here,
    so /proc shows them; a zombie has ended: reaping it is its new parent's, init's, job)."""
    return not any(process_alive(int(p.read_text()), None) for p in pid_files)


# ---------------------------------------------------------------- the executor, through its seam


def test_output_streams_while_the_remote_command_runs(
    harness: SshHarness, step: dict[str, Any], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    attempt = harness.run(
        f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second", step
    )
    harness.wait_line(attempt, "first")
    assert not attempt.ended
    go.touch()
    outcome = harness.finish(attempt)
    assert outcome.succeeded, outcome
    assert attempt.stdout == ["first", "second"]  # CRLF of the terminal trimmed


def test_exit_code_is_the_remote_commands_and_stderr_arrives_as_stdout(
    harness: SshHarness, step: dict[str, Any]
) -> None:
    attempt = harness.run("echo out; echo err >&2; read line; echo read=$?; exit 3", step)
    outcome = harness.finish(attempt)
    assert outcome.exit_code == 3 and not outcome.error, outcome
    assert attempt.stdout == ["out", "err", "read=1"]  # stdin: /dev/null, as for local tasks
    assert attempt.stderr == []


def test_the_tasks_own_variables_reach_the_remote_shell_and_the_servers_do_not(
    harness: SshHarness, step: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONLY_ON_THE_SERVER", "server-value")
    harness.ssh = SshExecutor(harness.reactor, harness.executor, os.environ)
    script = (
        'echo "g=$GREETING"; echo "s=${ONLY_ON_THE_SERVER-unset}"; echo "t=$NAGARE_TASK_ID"; '
        'echo "o=${NAGARE_OUTPUT-unset}"; echo "k=$TOKEN"; echo "term=$TERM"; echo "$0"'
    )
    env = {
        "GREETING": 'it\'s a "quoted" $value; `x`',
        "NAGARE_TASK_ID": "remote_step",
        "NAGARE_OUTPUT": "/tmp/local-only",
        "TOKEN": "s3cret-token",
    }
    attempt = harness.run(script, step, env=env, secrets=("s3cret-token",))
    assert harness.finish(attempt).succeeded
    assert attempt.stdout == [
        'g=it\'s a "quoted" $value; `x`',
        "s=unset",
        "t=remote_step",
        "o=unset",
        "k=s3cret-token",  # the attempt log masks it (see the DAG test)
        "term=dumb",
        "/bin/sh",
    ]


def test_a_timeout_ends_the_remote_process_group(
    harness: SshHarness, step: dict[str, Any], tmp_path: Path
) -> None:
    shell, child = tmp_path / "shell.pid", tmp_path / "child.pid"
    attempt = harness.run(
        f"echo $$ > {shell}; sleep 60 & echo $! > {child}; echo ready; wait", step, timeout=1
    )
    harness.wait_line(attempt, "ready")
    assert not pids_gone(shell) and not pids_gone(child)
    outcome = harness.finish(attempt)
    assert outcome.timed_out and outcome.error == "timed out", outcome
    wait_for(lambda: pids_gone(shell, child), 10, message="the remote processes to end")


def test_a_kill_ends_the_remote_process_group(
    harness: SshHarness, step: dict[str, Any], tmp_path: Path
) -> None:
    shell, child = tmp_path / "shell.pid", tmp_path / "child.pid"
    attempt = harness.run(
        f"echo $$ > {shell}; sleep 60 & echo $! > {child}; echo ready; sleep 60", step
    )
    harness.wait_line(attempt, "ready")
    attempt.handle.cancel("killed")
    outcome = harness.finish(attempt)
    assert outcome.cancelled and not outcome.timed_out, outcome
    wait_for(lambda: pids_gone(shell, child), 10, message="the remote processes to end")


def test_a_host_key_mismatch_fails_clearly(
    harness: SshHarness, sshd: SshServer, tmp_path: Path
) -> None:
    other = keygen(tmp_path / "other_host_key")
    known = sshd.known_hosts(tmp_path / "known_hosts", public=other)
    marker = tmp_path / "ran"
    attempt = harness.run(f"touch {marker}", sshd.step(known))
    outcome = harness.finish(attempt)
    assert outcome.exit_code == 255, outcome
    assert outcome.error.startswith("ssh: the host key of"), outcome.error
    assert f"does not match the one in {known}" in outcome.error
    assert not marker.exists()


def test_an_unknown_host_key_fails_clearly(
    harness: SshHarness, sshd: SshServer, tmp_path: Path
) -> None:
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    outcome = harness.finish(harness.run("true", sshd.step(known)))
    assert outcome.exit_code == 255
    assert f"is not in {known} (strict host key checking" in outcome.error, outcome.error


def test_a_refused_connection_fails_clearly(harness: SshHarness, step: dict[str, Any]) -> None:
    port = free_port()  # nothing listens there
    outcome = harness.finish(harness.run("true", {**step, "port": port}))
    assert outcome.exit_code == 255
    assert outcome.error == (
        f"ssh: connection refused by {step['user']}@127.0.0.1 port {port} (no SSH server there)"
    )


def test_an_unknown_user_or_a_key_the_server_does_not_know_is_refused(
    harness: SshHarness, step: dict[str, Any], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    for fields in ({"user": "no_such_user"}, {"identity_file": str(stranger)}):
        outcome = harness.finish(harness.run("true", {**step, **fields}))
        assert outcome.exit_code == 255
        assert outcome.error.startswith("ssh: authentication refused: "), outcome.error
        assert str(fields.get("identity_file", step["identity_file"])) in outcome.error


def test_a_key_other_users_can_read_is_refused_with_the_reason(
    harness: SshHarness, step: dict[str, Any], tmp_path: Path
) -> None:
    key = tmp_path / "open_key"
    key.write_bytes(Path(step["identity_file"]).read_bytes())
    key.chmod(0o644)
    outcome = harness.finish(harness.run("true", {**step, "identity_file": str(key)}))
    assert outcome.exit_code == 255
    assert outcome.error == (
        f"ssh: the key {key} can be read by other users, so ssh ignores it (chmod 600 it)"
    )


def test_bad_fields_fail_before_anything_starts(
    harness: SshHarness, step: dict[str, Any], tmp_path: Path
) -> None:
    cases = {
        "port: expected a port number 1-65535, found 'abc'": {"port": "abc"},
        "host: '-oProxyCommand=touch x' is not a host name or address": {
            "host": "-oProxyCommand=touch x"
        },
        f"identity_file: no file {tmp_path}/nope on this host": {
            "identity_file": str(tmp_path / "nope")
        },
        "host: '${NOT_SET}' is not a host name or address": {"host": "${NOT_SET}"},
        "'host' is empty (the machine to run the command on)": {"host": ""},
    }
    for message, fields in cases.items():
        attempt = harness.run("true", {**step, **fields})
        outcome = harness.finish_unstarted(attempt)
        assert outcome.error == message, outcome
        assert outcome.exit_code is None


def test_fields_take_env_references(
    harness: SshHarness, step: dict[str, Any], sshd: SshServer
) -> None:
    fields = {**step, "host": "${TARGET_HOST}", "port": "${TARGET_PORT}"}
    env = {"TARGET_HOST": sshd.host, "TARGET_PORT": str(sshd.port)}
    attempt = harness.run("echo reached", fields, env=env)
    assert harness.finish(attempt).succeeded
    assert attempt.stdout == ["reached"]


def test_a_huge_variable_is_not_sent_and_the_log_says_so(
    harness: SshHarness, step: dict[str, Any]
) -> None:
    env = {"BIG": "x" * (MAX_LINE_BYTES + 10), "SMALL": "kept"}
    attempt = harness.run('echo "${BIG-unset} $SMALL"', step, env=env)
    assert harness.finish(attempt).succeeded
    assert attempt.stdout == ["unset kept"]
    notes = attempt.recorder.stream("nagare")
    assert notes == [
        f"ssh: $BIG ({MAX_LINE_BYTES + 10} bytes) is not sent to the remote host: the ssh "
        f"command line holds at most {MAX_LINE_BYTES} bytes"
    ]


# ---------------------------------------------------------------- DAGs through the real server


def ssh_dag(sshd: SshServer, known: Path) -> str:
    return f"""
    id: remote
    secrets:
      - {{name: API_TOKEN, env: NAGARE_TEST_SSH_TOKEN}}
    tasks:
      - id: prepare
        command: echo "REGION=eu-west" >> $NAGARE_OUTPUT
      - id: remote
        type: ssh
        depends_on: [prepare]
        host: "{{{{ .params.host }}}}"
        port: "{{{{ .params.port }}}}"
        user: {sshd.user}
        identity_file: {sshd.client_key}
        known_hosts: {known}
        output: REPORT
        env: {{GREETING: hello}}
        command: |
          echo "$GREETING from $NAGARE_TASK_ID in $REGION with $API_TOKEN"
      - id: after
        depends_on: [remote]
        command: echo "got {{{{ .tasks.remote.outputs.REPORT }}}}"
    params:
      host: 127.0.0.1
      port: "{sshd.port}"
    """


def test_an_ssh_task_in_a_dag_publishes_its_stdout_and_masks_secrets(
    nagare_factory: Callable[..., Nagare],
    sshd: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NAGARE_TEST_SSH_TOKEN", "tok-9f8e7d")
    known = sshd.known_hosts(tmp_path / "known_hosts")
    nagare = nagare_factory(dags={"remote.yaml": ssh_dag(sshd, known)})
    run_id = nagare.trigger("remote")
    assert nagare.wait_run(run_id)["status"] == "success", nagare.tasks(run_id)
    report = "hello from remote in eu-west with *****"
    assert nagare.tasks(run_id)["remote"]["outputs"] == {"REPORT": report}
    assert report in nagare.log(run_id, "remote")
    assert "tok-9f8e7d" not in nagare.log(run_id, "remote")
    assert f"got {report}" in nagare.log(run_id, "after")


def test_a_host_key_mismatch_fails_only_its_task_with_the_message(
    nagare_factory: Callable[..., Nagare], sshd: SshServer, tmp_path: Path
) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts", public=keygen(tmp_path / "other"))
    dag = f"""
    id: mismatch
    tasks:
      - {{id: remote, type: ssh, host: 127.0.0.1, port: {sshd.port}, known_hosts: {known},
          identity_file: {sshd.client_key}, command: "echo never"}}
      - {{id: local, command: echo fine}}
    """
    nagare = nagare_factory(dags={"mismatch.yaml": dag})
    run_id = nagare.trigger("mismatch")
    assert nagare.wait_run(run_id)["status"] == "failed"
    tasks = nagare.tasks(run_id)
    assert tasks["local"]["status"] == "success"
    remote = nagare.task(run_id, "remote")
    assert remote["status"] == "failed" and remote["exit_code"] == 255
    assert "ssh: the host key of 127.0.0.1 port" in remote["message"], remote
    assert "does not match" in nagare.log(run_id, "remote")


def test_killing_the_run_ends_the_remote_command(
    nagare_factory: Callable[..., Nagare], sshd: SshServer, tmp_path: Path
) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts")
    shell, child = tmp_path / "shell.pid", tmp_path / "child.pid"
    dag = f"""
    id: killed
    tasks:
      - id: remote
        type: ssh
        host: 127.0.0.1
        port: {sshd.port}
        identity_file: {sshd.client_key}
        known_hosts: {known}
        command: echo $$ > {shell}; sleep 60 & echo $! > {child}; wait
    """
    nagare = nagare_factory(dags={"killed.yaml": dag})
    run_id = nagare.trigger("killed")
    wait_for(lambda: child.exists() and child.read_text().strip(), 10, message="the pid files")
    assert nagare.call("POST", f"/api/runs/{run_id}/kill").status == 200
    assert nagare.wait_run(run_id)["status"] == "cancelled"
    assert nagare.task(run_id, "remote")["status"] == "cancelled"
    wait_for(lambda: pids_gone(shell, child), 10, message="the remote processes to end")


def test_a_remote_worker_runs_an_ssh_task_of_its_pool(
    nagare_factory: Callable[..., Nagare],
    sshd: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NAGARE_TEST_SSH_TOKEN", "tok-worker-42")
    known = sshd.known_hosts(tmp_path / "known_hosts")
    dag = ssh_dag(sshd, known).replace("type: ssh", "type: ssh\n        pool: far")
    nagare = nagare_factory(dags={"remote.yaml": dag}, worker_pools={"far": 0})
    home = tmp_path / "worker"
    home.mkdir()
    command = [sys.executable, "-m", "nagare", "worker", "--join", nagare.url, "--pools", "far"]
    with open(home / "out.log", "wb") as sink:
        worker = subprocess.Popen(
            [*command, "--worker-id", "w1"],
            cwd=home,
            env=pythonpath_env(),
            stdout=sink,
            stderr=sink,
        )
    try:
        run_id = nagare.trigger("remote")
        run = nagare.wait_run(run_id, timeout=30)
        tasks = nagare.tasks(run_id)
        assert run["status"] == "success", (
            nagare.task(run_id, "remote")["message"],
            nagare.log(run_id, "remote"),
            (home / "out.log").read_text(),
        )
        assert tasks["remote"]["worker"] == "w1"
        report = "hello from remote in eu-west with *****"
        assert tasks["remote"]["outputs"] == {"REPORT": report}
        assert "tok-worker-42" not in nagare.log(run_id, "remote")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


def test_the_example_dag_runs_against_the_test_server(
    nagare_factory: Callable[..., Nagare], sshd: SshServer, tmp_path: Path
) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts")
    text = (ROOT / "dags" / "ssh_example.yaml").read_text()
    nagare = nagare_factory(dags={"ssh_example.yaml": text})
    conf = {
        "host": sshd.host,
        "port": str(sshd.port),
        "user": sshd.user,
        "identity_file": str(sshd.client_key),
        "known_hosts": str(known),
    }
    run_id = nagare.trigger("ssh_example", conf)
    assert nagare.wait_run(run_id)["status"] == "success", nagare.tasks(run_id)
    status = nagare.tasks(run_id)["uptime"]["outputs"]["STATUS"]
    assert status.startswith("hello from ") and "(task uptime): load " in status, status
    assert f"remote says: {status}" in nagare.log(run_id, "report")


# ---------------------------------------------------------------- pure decisions


def test_the_target_reads_the_fields_and_checks_them() -> None:
    env = {"H": "db1.example.org", "P": "2222"}
    target = ssh_target({"host": "${H}", "port": "${P}", "user": "deploy"}, env)
    assert target == SshTarget("db1.example.org", "deploy", 2222)
    assert target.where == "deploy@db1.example.org port 2222"
    assert ssh_target({"host": "h", "port": 22, "user": ""}, {}).port == 22
    for step, problem in (
        ({"host": "a b"}, "host: 'a b' is not a host name or address"),
        ({"host": "h", "user": "-oX"}, "user: '-oX' is not a user name"),
        ({"host": "me@h"}, "host: 'me@h' holds a user: give it in 'user' instead"),
        ({"host": "h", "port": "70000"}, "port: expected a port number 1-65535, found '70000'"),
        ({"host": "h", "known_hosts": '/a"b'}, "known_hosts: ssh cannot take a path with"),
    ):
        with pytest.raises(SshFieldError, match=problem.replace("(", r"\(")):
            ssh_target(step, {})


def test_only_the_tasks_own_variables_are_exported() -> None:
    host = {"PATH": "/usr/bin", "HOME": "/root", "SAME": "v", "SECRET": "x"}
    env = {
        **host,
        "PATH": "/opt/bin",  # the task changed it: sent
        "NAGARE_RUN_ID": "r1",
        "NAGARE_OUTPUT": "/srv/out",
        "OUTPUT_A": "1",
        "bad-name": "2",
        "SECRET": "x",  # a secret of the same value as the server's variable: still sent
    }
    assert remote_env(env, host, ("x",)) == {
        "PATH": "/opt/bin",
        "SECRET": "x",
        "NAGARE_RUN_ID": "r1",
        "OUTPUT_A": "1",
    }


def test_the_remote_line_runs_the_command_under_sh_with_the_exports(tmp_path: Path) -> None:
    command = "printf '%s|%s\\n' \"$A\" \"$B\"\necho 'done'"
    line = remote_line(command, {"A": "it's", "B": "$(date) `x` \\"})
    result = subprocess.run(
        ["sh", "-c", line],
        capture_output=True,
        text=True,
        timeout=10,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.stdout == "it's|$(date) `x` \\\ndone\n"
    assert remote_line("true", {}) == "exec /bin/sh -c true </dev/null"


def test_the_command_line_quotes_every_part_and_stays_under_the_argument_cap() -> None:
    target = SshTarget("h", "u", 2200, "/k y", "/kh")
    line, dropped = ssh_line("/usr/bin/ssh", target, "echo hi", {"A": "1"})
    assert dropped == []
    argv = shlex.split(line)
    assert argv[0] == "exec" and argv[1:3] == ["/usr/bin/ssh", "-tt"]
    assert argv[argv.index("-i") : argv.index("-i") + 2] == ["-i", "/k y"]
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert 'UserKnownHostsFile="/kh"' in argv and argv[argv.index("-p") :][:2] == ["-p", "2200"]
    assert argv[-3:] == ["--", "h", "export A=1; exec /bin/sh -c 'echo hi' </dev/null"]
    big = {"A": "a" * MAX_LINE_BYTES, "B": "b" * 100, "C": "c" * (MAX_LINE_BYTES // 2)}
    line, dropped = ssh_line("/usr/bin/ssh", target, "true", big)
    assert dropped == ["A"] and len(line) <= MAX_LINE_BYTES
    for quoted in ("'" * 4000, "x'y" * 9000, "é'" * 12000, "plain" * 5000):
        values = {f"V{i}": quoted[: len(quoted) // (i + 1)] for i in range(6)}
        line, dropped = ssh_line("/usr/bin/ssh", target, "true", values)
        assert len(line.encode()) <= MAX_LINE_BYTES and len(dropped) < 6, dropped
        assert [n for n in values if f" {n}=" in line] == [n for n in values if n not in dropped]
    with pytest.raises(SshFieldError, match="fit on the ssh command line"):
        ssh_line("/usr/bin/ssh", target, "x" * MAX_LINE_BYTES, {})


def test_key_files_that_do_not_exist_are_named_before_connecting(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    home = str(tmp_path)
    assert missing_file(SshTarget("h", identity_file="~/key"), home) == ""
    assert missing_file(SshTarget("h", identity_file=f"{home}/key", known_hosts="~/kh"), home) == (
        "known_hosts: no file ~/kh on this host"
    )
    for left_to_ssh in ("~/kh", "~other/kh", "%d/kh"):  # no home given, another's, a token
        assert missing_file(SshTarget("h", identity_file=left_to_ssh), "") == ""


def test_ssh_failures_become_messages() -> None:
    target = SshTarget("db1", "deploy", 2222, "/keys/id", "/etc/kh")
    cases = {
        "Host key for [db1]:2222 has changed and you have requested strict checking.": (
            "ssh: the host key of deploy@db1 port 2222 does not match the one in /etc/kh"
        ),
        "No ED25519 host key is known for [db1]:2222 and you have requested strict checking.": (
            "ssh: the host key of deploy@db1 port 2222 is not in /etc/kh"
        ),
        "ssh: connect to host db1 port 2222: Connection refused": (
            "ssh: connection refused by deploy@db1 port 2222"
        ),
        "ssh: Could not resolve hostname db1: Name or service not known": (
            "ssh: cannot resolve the host name 'db1'"
        ),
        "ssh: connect to host db1 port 2222: Connection timed out": "ssh: no answer from",
        "deploy@db1: Permission denied (publickey).": (
            "ssh: authentication refused: deploy@db1 port 2222 did not accept user 'deploy' "
            "with the key /keys/id"
        ),
        "Timeout, server db1 not responding.": "ssh: the connection to deploy@db1 port 2222",
        'Load key "/keys/id": bad permissions': (
            "ssh: the key /keys/id can be read by other users, so ssh ignores it (chmod 600 it)"
        ),
        'Load key "/keys/id": error in libcrypto': "ssh: cannot load the key /keys/id",
        "something new": "ssh to deploy@db1 port 2222 failed (exit code 255): something new",
    }
    for line, expected in cases.items():
        assert failure_message(["", line], target).startswith(expected), line
    assert "the remote command itself exited with 255" in failure_message([], target)


def test_expand_env_replaces_only_known_braced_names() -> None:
    env = {"A": "1", "B_2": "two"}
    assert expand_env("${A}-${B_2}-$A-${C}-${}", env) == "1-two-$A-${C}-${}"


def test_the_dag_file_reads_ssh_fields() -> None:
    text = """
    id: d
    tasks:
      - {id: a, type: ssh, host: h, port: "{{ .params.port }}", command: "true"}
      - {id: b, type: ssh, host: h, port: 2222, command: "true"}
      - {id: c, type: ssh, host: h, port: "22x", command: "true"}
      - {id: d, type: ssh, command: "true"}
    """
    _, errors = parse_dag(textwrap.dedent(text), "d.yaml")
    messages = [e.message for e in errors]
    assert any("expected a whole number >= 1" in m for m in messages), messages
    assert any("'host' is required for type 'ssh'" in m for m in messages), messages
    assert len(messages) == 2, messages
