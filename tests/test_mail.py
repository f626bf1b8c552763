"""`type: mail` steps (issue 17, item 3): the `smtp:` settings, the message a step makes, the
executor against a real SMTP server in this process (aiosmtpd on 127.0.0.1, port 0: plain,
STARTTLS and implicit TLS with a certificate made here by the openssl command, AUTH, refusals),
and whole DAGs through the real server — a handler of `default_handler_on` included.

No mock: what the server received (envelope, headers, body, attachment bytes) is what is checked.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import ROOT, Nagare, wait_for
from executor_harness import Recorder
from test_cluster import GPU_ONLY, LEASE, Worker, gpu_dag, wait_online, workers

from nagare.config import load_config
from nagare.dagfile import parse_dag
from nagare.engine.attempt_end import failure_message
from nagare.engine.secrets import MASK
from nagare.engine.steps_env import expand_env
from nagare.errors import ConfigError
from nagare.executors import AttemptHandle
from nagare.executors.mail import (
    EXIT_BAD_INPUT,
    EXIT_UNREACHABLE,
    MailExecutor,
    MailFailure,
    build_message,
    mail_of,
    read_attachments,
)
from nagare.executors.reactor import Reactor
from nagare.models import Assignment, Outcome, SmtpSettings

__all__ = ["workers"]  # the fixture, used by the remote test

PASSWORD = "Sm7p-pa55word-42"
PASSWORD_ENV = "NAGARE_TEST_SMTP_PASSWORD"


# ---------------------------------------------------------------- a real SMTP server


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    login: str

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]

    def attachments(self) -> dict[str, bytes]:
        return {
            str(part.get_filename()): part.get_payload(decode=True)
            for part in self.message.iter_attachments()
        }


@dataclass
class Sink:
    """The handler: keeps what arrives; refuses the recipients in `refuse` (address -> reply;
    with `times[address]`, that many times, then accepts them)."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    times: dict[str, int] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        left = self.times.get(address)  # refusals left (None: every time)
        if address in self.refuse and (left is None or left > 0):
            if left is not None:
                self.times[address] = left - 1
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data.login.decode() if session.authenticated else ""
        content = bytes(envelope.original_content or envelope.content)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), content, login))
        return "250 2.0.0 Ok: queued as N4G4R3"


class _Controller(Controller):
    """aiosmtpd's threaded controller, on port 0: the port the listener got is read back
    before the controller's own first connection."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def _login_alice(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"alice",
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=data)


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return Certificate(cert, key)


@dataclass
class SmtpServer:
    sink: Sink
    port: int

    def settings(self, **changes: Any) -> SmtpSettings:
        base = SmtpSettings(host="127.0.0.1", sender="Nagare <nagare@example.test>", port=self.port)
        return replace(base, timeout_seconds=5.0, **changes)

    def yaml(self, **changes: Any) -> dict[str, Any]:
        """The `smtp:` of a nagare.yaml for this server."""
        return {"host": "127.0.0.1", "port": self.port, "from": "nagare@example.test", **changes}


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., SmtpServer]]:
    """`smtp_server(**aiosmtpd options)` starts a server on 127.0.0.1, port 0."""
    controllers: list[Controller] = []

    def start(**options: Any) -> SmtpServer:
        sink = Sink()
        controller = _Controller(
            sink, hostname="127.0.0.1", port=0, server_hostname="smtp.test", **options
        )
        controller.start()
        controllers.append(controller)
        return SmtpServer(sink, controller.port)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def tls_server(smtp_server: Callable[..., SmtpServer], certificate: Certificate) -> SmtpServer:
    """STARTTLS required, and AUTH (only over TLS: aiosmtpd's default) required."""
    return smtp_server(
        tls_context=certificate.server_context(),
        require_starttls=True,
        authenticator=_login_alice,
        auth_required=True,
    )


def silent_port() -> tuple[socket.socket, int]:
    """A listener that never answers (its backlog accepts the connection, nobody reads)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, listener.getsockname()[1]


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


# ---------------------------------------------------------------- driving the executor


@dataclass
class Sending:
    recorder: Recorder
    handle: AttemptHandle


class MailHarness:
    """The executor on a reactor owned by the test's thread."""

    def __init__(self, settings: SmtpSettings | None, environ: dict[str, str] | None = None):
        self.reactor = Reactor()
        self.executor = MailExecutor(self.reactor, settings, environ or {})
        self.owner = threading.get_ident()

    def start(
        self, step: dict[str, Any], env: dict[str, str] | None = None, **fields: Any
    ) -> Sending:
        assignment = Assignment(
            "ti", "run-1", "d", "notify", 1, "", dict(env or {}), step_type="mail", step=step
        )
        recorder = Recorder()
        handle = self.executor.start(replace(assignment, **fields), recorder)
        return Sending(recorder, handle)

    def finish(self, sending: Sending, timeout: float = 15) -> Outcome:
        recorder = sending.recorder
        deadline = time.monotonic() + timeout
        while not recorder.outcomes:
            assert time.monotonic() < deadline, f"no end after {timeout}s: {recorder.lines}"
            self.reactor.run_once(0.05)
        self.drive(0.1)  # nothing more arrives
        assert len(recorder.outcomes) == 1
        assert recorder.ended_threads == [self.owner]
        assert recorder.lines_after_end == 0
        outcome = recorder.outcomes[0]
        assert outcome.metrics.executor_type == "mail"
        assert outcome.metrics.exit_code == outcome.exit_code
        return outcome

    def drive(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.reactor.run_once(min(left, 0.05))

    def send(self, step: dict[str, Any], **fields: Any) -> tuple[Outcome, list[str]]:
        sending = self.start(step, **fields)
        outcome = self.finish(sending)
        return outcome, sending.recorder.stream("stdout")


STEP = {"to": ["ops@example.test"], "subject": "nightly done", "body": "all good\n"}


# ---------------------------------------------------------------- the settings


def load_smtp(tmp_path: Path, smtp: Any) -> SmtpSettings | None:
    path = tmp_path / "nagare.yaml"
    path.write_text(yaml.safe_dump({"smtp": smtp}))
    return load_config({"config": str(path)}, environ={}).smtp


def test_smtp_settings_are_read_with_defaults_by_security(tmp_path: Path) -> None:
    plain = load_smtp(tmp_path, {"host": "mail.example.com", "from": "n@example.com"})
    assert plain == SmtpSettings(host="mail.example.com", sender="n@example.com", port=25)
    starttls = load_smtp(
        tmp_path,
        {
            "host": "mail.example.com",
            "from": "Nagare <n@example.com>",
            "starttls": True,
            "username": "alice",
            "password_env": "SMTP_PASSWORD",
            "timeout_seconds": 5,
        },
    )
    assert starttls is not None
    assert (starttls.port, starttls.starttls, starttls.timeout_seconds) == (587, True, 5.0)
    assert (starttls.username, starttls.password_env) == ("alice", "SMTP_PASSWORD")
    tls = load_smtp(tmp_path, {"host": "h", "from": "n@x", "ssl": True})
    assert tls is not None and tls.port == 465
    assert load_smtp(tmp_path, {"host": "h", "from": "n@x", "port": 2525}).port == 2525  # type: ignore[union-attr]
    assert load_smtp(tmp_path, None) is None
    assert load_config({"config": str(tmp_path / "none.yaml")}, environ={}).smtp is None


@pytest.mark.parametrize(
    ("smtp", "message"),
    [
        ("mail.example.com", "smtp: expected a mapping such as {host: mail.example.com"),
        ({"from": "n@x"}, "smtp.host: required"),
        ({"host": "h"}, "smtp.from: required"),
        ({"host": "h", "from": "nobody"}, "smtp.from: expected a mail address (ASCII), found"),
        ({"host": "h", "from": "n@x", "pasword_env": "P"}, "smtp: unknown key 'pasword_env'"),
        ({"host": "h", "from": "n@x", "port": 70000}, "smtp.port: expected a port number"),
        ({"host": "h", "from": "n@x", "port": "x"}, "smtp.port: expected a whole number"),
        ({"host": "h", "from": "n@x", "starttls": "maybe"}, "smtp.starttls: expected true"),
        ({"host": "h", "from": "n@x", "ssl": True, "starttls": True}, "either ssl"),
        ({"host": "h", "from": "n@x", "username": "a"}, "smtp.password_env: required with"),
        ({"host": "h", "from": "n@x", "password_env": "P"}, "smtp.username: required with"),
        (
            {"host": "h", "from": "n@x", "username": "a", "password_env": "my password"},
            "smtp.password_env: expected the name of an environment variable",
        ),
        ({"host": "h", "from": "n@x", "timeout_seconds": 0}, "smtp.timeout_seconds: expected"),
    ],
)
def test_bad_smtp_settings_are_refused_at_start(tmp_path: Path, smtp: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_smtp(tmp_path, smtp)
    assert message in str(info.value)
    assert str(tmp_path / "nagare.yaml") in str(info.value)


def test_the_settings_never_hold_the_password(tmp_path: Path) -> None:
    path = tmp_path / "nagare.yaml"
    path.write_text(
        yaml.safe_dump(
            {"smtp": {"host": "h", "from": "n@x", "username": "a", "password_env": PASSWORD_ENV}}
        )
    )
    config = load_config({"config": str(path)}, environ={PASSWORD_ENV: PASSWORD})
    assert PASSWORD not in repr(config)
    assert config.smtp is not None and PASSWORD not in repr(config.smtp)


# ---------------------------------------------------------------- the mail of a step (pure)


def test_expand_env_replaces_only_known_braced_names() -> None:
    env = {"NAME": "Ada", "EMPTY": ""}
    assert expand_env("hi ${NAME}, $NAME, ${EMPTY}|${UNKNOWN}", env) == "hi Ada, $NAME, |${UNKNOWN}"
    assert expand_env("no references", {}) == "no references"


def test_a_step_becomes_a_mail_with_env_references_expanded() -> None:
    step = {
        "to": ["${ONCALL}", "Bob <bob@example.test>, carol@example.test"],
        "cc": "boss@example.test",
        "subject": "run ${RUN}\n  failed",
        "body": "see ${URL}\n",
        "attach": ["${OUT}/report.csv"],
    }
    env = {"ONCALL": "ann@example.test", "RUN": "r1", "URL": "http://x/r1", "OUT": "/data"}
    mail = mail_of(step, env)
    assert mail.to == ("ann@example.test", "Bob <bob@example.test>", "carol@example.test")
    assert mail.cc == ("boss@example.test",)
    assert mail.subject == "run r1 failed"  # one header line
    assert mail.body == "see http://x/r1\n"
    assert mail.attach == ("/data/report.csv",)
    assert mail.recipients == (
        "ann@example.test",
        "bob@example.test",
        "carol@example.test",
        "boss@example.test",
    )
    assert mail.summary() == (
        "mail to ann@example.test, bob@example.test, carol@example.test "
        "(cc boss@example.test): run r1 failed"
    )


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"to": ["${ONCALL}"], "subject": "s"}, "to: '${ONCALL}' is not a mail address"),
        ({"to": ["ops"], "subject": "s"}, "to: 'ops' is not a mail address"),
        ({"to": ["a@x", "b c@y"], "subject": "s"}, "to: 'b c@y' is not a mail address"),
        ({"to": ["a@x\nBcc: evil@y"], "subject": "s"}, "to: a line break in"),
        ({"to": [""], "subject": "s"}, "to: no recipient"),
        ({"to": ["a@x"], "cc": ["nope"], "subject": "s"}, "cc: 'nope' is not a mail address"),
        ({"to": ["jörg@x.test"], "subject": "s"}, "to: 'jörg@x.test' is not a mail address"),
    ],
)
def test_bad_addresses_fail_with_exit_code_2(step: dict[str, Any], message: str) -> None:
    with pytest.raises(MailFailure) as info:
        mail_of(step, {})
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert message in info.value.message


def test_attachments_are_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"x,y\n1,2\n")
    (tmp_path / "big.bin").write_bytes(b"\0" * 2048)
    found = read_attachments((str(tmp_path / "a.csv"),), 1024)
    assert found == [("a.csv", b"x,y\n1,2\n")]
    with pytest.raises(MailFailure) as info:
        read_attachments((str(tmp_path / "missing.txt"),), 1024)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert info.value.message == (
        f"attach: cannot read {tmp_path / 'missing.txt'}: No such file or directory"
    )
    with pytest.raises(MailFailure, match="attachments exceed"):
        read_attachments((str(tmp_path / "a.csv"), str(tmp_path / "big.bin")), 1024)


def test_the_message_has_headers_body_and_attachments() -> None:
    mail = mail_of({"to": "a@x.test", "cc": "c@x.test", "subject": "héllo", "body": "ünïcode"}, {})
    message = build_message(mail, "Nagare <n@x.test>", [("r.bin", b"\x00\xff")], 0.0)
    parsed = message_from_bytes(message.as_bytes(), policy=default_policy)
    assert parsed["From"] == "Nagare <n@x.test>"
    assert (parsed["To"], parsed["Cc"], parsed["Subject"]) == ("a@x.test", "c@x.test", "héllo")
    assert parsed["Message-ID"].endswith("@x.test>")
    assert parsed["Date"]
    assert b"\r\n" in message.as_bytes() and b"\xc3" not in message.as_bytes()  # 7-bit, CRLF


# ---------------------------------------------------------------- the executor, real server


def test_a_mail_reaches_the_server_with_recipients_body_and_attachments(
    smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = smtp_server()
    report = tmp_path / "report.csv"
    report.write_bytes(b"day,rows\n2026-12-06,42\n")
    image = tmp_path / "chart.png"
    image.write_bytes(bytes(range(256)) * 4)
    step = {
        "to": ["ops@example.test", "${ONCALL}"],
        "cc": ["boss@example.test"],
        "subject": "nightly ${DAY} done",
        "body": "rows: 42\nsee attachments\n",
        "attach": [str(report), str(image)],
    }
    env = {"ONCALL": "Ann <ann@example.test>", "DAY": "2026-12-06"}
    harness = MailHarness(server.settings())
    outcome, lines = harness.send(step, env=env)
    assert outcome.succeeded, outcome
    [got] = server.sink.received
    assert got.mail_from == "nagare@example.test"
    assert got.rcpt_tos == ["ops@example.test", "ann@example.test", "boss@example.test"]
    message = got.message
    assert message["Subject"] == "nightly 2026-12-06 done"
    assert message["To"] == "ops@example.test, Ann <ann@example.test>"
    assert message["Cc"] == "boss@example.test"
    assert message["From"] == "Nagare <nagare@example.test>"
    assert got.body == "rows: 42\nsee attachments\n"
    assert got.attachments() == {"report.csv": report.read_bytes(), "chart.png": image.read_bytes()}
    assert lines[0] == (
        "mail to ops@example.test, ann@example.test (cc boss@example.test): nightly 2026-12-06 done"
    )
    assert "attached report.csv (23 bytes)" in lines
    assert f"SMTP server 127.0.0.1:{server.port}" in lines
    assert lines[-1] == "sent: 250 2.0.0 Ok: queued as N4G4R3"


def test_starttls_and_login_with_the_password_from_the_environment(
    tls_server: SmtpServer, certificate: Certificate
) -> None:
    settings = tls_server.settings(
        starttls=True, username="alice", password_env=PASSWORD_ENV, ca_file=str(certificate.cert)
    )
    harness = MailHarness(settings, {PASSWORD_ENV: PASSWORD})
    outcome, lines = harness.send(STEP)
    assert outcome.succeeded, outcome
    [got] = tls_server.sink.received
    assert got.login == "alice"
    assert got.rcpt_tos == ["ops@example.test"]
    assert f"SMTP server 127.0.0.1:{tls_server.port} (STARTTLS) as alice" in lines
    assert not any(PASSWORD in line for line in lines)


def test_implicit_tls(smtp_server: Callable[..., SmtpServer], certificate: Certificate) -> None:
    server = smtp_server(ssl_context=certificate.server_context())
    harness = MailHarness(server.settings(ssl=True, ca_file=str(certificate.cert)))
    outcome, lines = harness.send(STEP)
    assert outcome.succeeded, outcome
    assert len(server.sink.received) == 1
    assert f"SMTP server 127.0.0.1:{server.port} (TLS)" in lines


def test_a_refused_login_fails_with_the_reply_code_and_no_password(
    tls_server: SmtpServer, certificate: Certificate
) -> None:
    settings = tls_server.settings(
        starttls=True, username="alice", password_env=PASSWORD_ENV, ca_file=str(certificate.cert)
    )
    wrong = "Wr0ng-pa55word-7"
    harness = MailHarness(settings, {PASSWORD_ENV: wrong})
    outcome, lines = harness.send(STEP)
    assert outcome.exit_code == 535
    assert outcome.error.startswith(
        f"the SMTP server 127.0.0.1:{tls_server.port} refused the login of 'alice': 535 "
    )
    assert wrong not in outcome.error and not any(wrong in line for line in lines)
    assert tls_server.sink.received == []


def test_an_untrusted_certificate_fails_the_starttls(tls_server: SmtpServer) -> None:
    settings = tls_server.settings(starttls=True, username="alice", password_env=PASSWORD_ENV)
    outcome, _ = MailHarness(settings, {PASSWORD_ENV: PASSWORD}).send(STEP)
    assert outcome.exit_code == EXIT_UNREACHABLE
    assert outcome.error.startswith(f"TLS with the SMTP server 127.0.0.1:{tls_server.port} failed")
    assert "not trusted" in outcome.error and "smtp.ca_file" in outcome.error
    insecure = replace(settings, insecure=True)
    outcome, _ = MailHarness(insecure, {PASSWORD_ENV: PASSWORD}).send(STEP)
    assert outcome.succeeded, outcome  # insecure: true opts out of the check


def test_starttls_asked_of_a_server_that_does_not_offer_it(
    smtp_server: Callable[..., SmtpServer],
) -> None:
    server = smtp_server()
    outcome, _ = MailHarness(server.settings(starttls=True)).send(STEP)
    assert outcome.exit_code == EXIT_UNREACHABLE
    assert outcome.error == f"the SMTP server 127.0.0.1:{server.port} does not offer STARTTLS"


def test_a_login_over_plain_text_is_not_offered(
    smtp_server: Callable[..., SmtpServer], certificate: Certificate
) -> None:
    server = smtp_server(tls_context=certificate.server_context(), authenticator=_login_alice)
    settings = server.settings(username="alice", password_env=PASSWORD_ENV)
    outcome, _ = MailHarness(settings, {PASSWORD_ENV: PASSWORD}).send(STEP)
    assert outcome.exit_code == EXIT_UNREACHABLE
    assert "offers no login (AUTH) on this connection (try starttls: true)" in outcome.error


def test_refused_recipients(smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    server.sink.refuse = {"ghost@example.test": "550 5.1.1 <ghost@example.test>: no such user"}
    harness = MailHarness(server.settings())
    outcome, lines = harness.send({**STEP, "to": ["ghost@example.test"]})
    assert outcome.exit_code == 550
    assert outcome.error == (
        "the SMTP server refused every recipient (ghost@example.test: 550 5.1.1 "
        "<ghost@example.test>: no such user)"
    )
    assert server.sink.received == []
    outcome, lines = harness.send({**STEP, "to": ["ops@example.test", "ghost@example.test"]})
    assert outcome.exit_code == 550
    assert outcome.error.endswith("the mail went to the other recipients")
    assert [r.rcpt_tos for r in server.sink.received] == [["ops@example.test"]]
    assert "refused recipient ghost@example.test: 550 5.1.1 <ghost@example.test>: no such user" in (
        lines
    )


def test_a_refused_connection_and_an_unknown_host_exit_1(
    smtp_server: Callable[..., SmtpServer],
) -> None:
    port = closed_port()
    settings = SmtpSettings(host="127.0.0.1", sender="n@x.test", port=port, timeout_seconds=5)
    outcome, _ = MailHarness(settings).send(STEP)
    assert outcome.exit_code == EXIT_UNREACHABLE
    assert outcome.error == (f"cannot talk to the SMTP server 127.0.0.1:{port}: Connection refused")
    unknown = replace(settings, host="smtp.invalid")
    outcome, _ = MailHarness(unknown).send(STEP)
    assert outcome.exit_code == EXIT_UNREACHABLE
    assert outcome.error.startswith("cannot resolve the SMTP host smtp.invalid")


def test_a_silent_server_times_out_by_smtp_timeout_seconds() -> None:
    listener, port = silent_port()
    try:
        settings = SmtpSettings(host="127.0.0.1", sender="n@x.test", port=port, timeout_seconds=0.3)
        started = time.monotonic()
        outcome, _ = MailHarness(settings).send(STEP)
        assert outcome.exit_code == EXIT_UNREACHABLE
        assert outcome.error == (
            f"the SMTP server 127.0.0.1:{port} did not answer within 0.3s (smtp.timeout_seconds)"
        )
        assert time.monotonic() - started < 3
    finally:
        listener.close()


def test_the_task_timeout_and_a_kill_end_the_attempt_at_once() -> None:
    listener, port = silent_port()
    try:
        settings = SmtpSettings(host="127.0.0.1", sender="n@x.test", port=port, timeout_seconds=30)
        harness = MailHarness(settings)
        started = time.monotonic()
        outcome = harness.finish(harness.start(STEP, timeout_seconds=0.3))
        assert outcome.timed_out and outcome.exit_code is None
        assert time.monotonic() - started < 2
        killed = harness.start(STEP)
        harness.drive(0.2)
        started = time.monotonic()
        killed.handle.cancel("killed")
        outcome = harness.finish(killed)
        assert outcome.cancelled and not outcome.timed_out
        assert time.monotonic() - started < 1
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("settings", "environ", "step", "message"),
    [
        (None, {}, STEP, "no smtp: in nagare.yaml"),
        (
            SmtpSettings("h", "n@x", username="a", password_env=PASSWORD_ENV),
            {},
            STEP,
            f"smtp.password_env: the environment variable {PASSWORD_ENV} is not set on this host",
        ),
        (
            SmtpSettings("127.0.0.1", "n@x", port=1),
            {},
            {**STEP, "attach": ["/nonexistent/report.pdf"]},
            "attach: cannot read /nonexistent/report.pdf: No such file or directory",
        ),
        (
            SmtpSettings("127.0.0.1", "n@x", port=1, starttls=True, ca_file="/nonexistent/ca"),
            {},
            STEP,
            "smtp.ca_file: cannot read /nonexistent/ca",
        ),
    ],
)
def test_what_cannot_be_sent_as_written_exits_2(
    settings: SmtpSettings | None, environ: dict[str, str], step: dict[str, Any], message: str
) -> None:
    outcome, _ = MailHarness(settings, environ).send(step)
    assert outcome.exit_code == EXIT_BAD_INPUT
    assert outcome.error.startswith(message), outcome.error


def test_secrets_are_masked_in_the_log_but_sent(smtp_server: Callable[..., SmtpServer]) -> None:
    server = smtp_server()
    token = "t0ken-Value-99"
    step = {**STEP, "subject": "token ${TOKEN}", "body": "the token is ${TOKEN}\n"}
    outcome, lines = MailHarness(server.settings()).send(
        step, env={"TOKEN": token}, secrets=(token,)
    )
    assert outcome.succeeded
    assert lines[0] == f"mail to ops@example.test: token {MASK}"
    assert not any(token in line for line in lines)
    assert server.sink.received[0].body == f"the token is {token}\n"  # the mail is the user's


# ---------------------------------------------------------------- whole DAGs, real server


def write_settings(root: Path, settings: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nagare.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))


MAIL_DAG = """\
id: report
params:
  region: {type: string, default: eu}
env:
  TEAM: data@example.test
tasks:
  - id: count
    command: echo 'rows=42' >> "$NAGARE_OUTPUT"
  - id: notify
    type: mail
    depends_on: [count]
    to: ["ops@example.test", "${TEAM}"]
    subject: "{{ .dag.id }} {{ .params.region }}: {{ .tasks.count.outputs.rows }} rows"
    body: "run {{ .run.id }}"
"""


def test_a_dag_sends_a_mail_through_the_real_server(
    nagare_factory: Callable[..., Nagare], smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = smtp_server()
    write_settings(tmp_path, {"smtp": server.yaml()})
    nagare = nagare_factory(dags={"report.yaml": MAIL_DAG})
    run_id = nagare.trigger("report", {"region": "us"})
    assert nagare.wait_run(run_id)["status"] == "success"
    [got] = server.sink.received
    assert got.message["Subject"] == "report us: 42 rows"
    assert got.body == f"run {run_id}\n"
    assert got.rcpt_tos == ["ops@example.test", "data@example.test"]
    log = nagare.log(run_id, "notify")
    assert "mail to ops@example.test, data@example.test: report us: 42 rows" in log
    assert "sent: 250 2.0.0 Ok: queued as N4G4R3" in log
    task = nagare.task(run_id, "notify")
    assert task["status"] == "success"


def test_a_refused_recipient_is_retried_by_its_reply_code(
    nagare_factory: Callable[..., Nagare], smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = smtp_server()
    server.sink.refuse = {"busy@example.test": "450 4.2.1 mailbox busy, try later"}
    server.sink.times = {"busy@example.test": 1}
    write_settings(tmp_path, {"smtp": server.yaml()})
    dag = (
        "id: busy\ntasks:\n  - id: notify\n    type: mail\n    to: busy@example.test\n"
        "    subject: hi\n    retries: 2\n    retry_delay_seconds: 0.05\n"
        "    retry_on_exit_codes: [421, 450]\n"
        "  - id: wrong\n    type: mail\n    to: nobody\n    subject: hi\n    retries: 2\n"
        "    retry_on_exit_codes: [421, 450]\n"
    )
    nagare = nagare_factory(dags={"busy.yaml": dag})
    run_id = nagare.trigger("busy")
    assert nagare.wait_run(run_id)["status"] == "failed"
    notify = nagare.task(run_id, "notify")
    assert (notify["status"], notify["attempt"]) == ("success", 2)
    assert [r.rcpt_tos for r in server.sink.received] == [["busy@example.test"]]
    wrong = nagare.task(run_id, "wrong")
    assert (wrong["status"], wrong["attempt"]) == ("failed", 1)  # exit code 2: not retried
    assert "to: 'nobody' is not a mail address" in wrong["message"]


def test_no_smtp_settings_fail_the_task_with_a_clear_message(
    nagare_factory: Callable[..., Nagare],
) -> None:
    nagare = nagare_factory(dags={"report.yaml": MAIL_DAG})
    run_id = nagare.trigger("report")
    assert nagare.wait_run(run_id)["status"] == "failed"
    task = nagare.task(run_id, "notify")
    assert task["status"] == "failed"
    assert task["message"].startswith("no smtp: in nagare.yaml")
    assert nagare.task(run_id, "count")["status"] == "success"  # only its task fails


def test_the_smtp_password_stays_out_of_the_tasks_and_the_database(
    nagare_factory: Callable[..., Nagare],
    tls_server: SmtpServer,
    certificate: Certificate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    smtp = tls_server.yaml(
        starttls=True, username="alice", password_env=PASSWORD_ENV, ca_file=str(certificate.cert)
    )
    write_settings(tmp_path, {"smtp": smtp})
    dag = (
        "id: secure\ntasks:\n  - id: env\n    command: env\n"
        "  - id: notify\n    type: mail\n    to: ops@example.test\n"
        "    subject: 'leak? ${" + PASSWORD_ENV + "}'\n"
    )
    nagare = nagare_factory(dags={"secure.yaml": dag})
    run_id = nagare.trigger("secure")
    assert nagare.wait_run(run_id)["status"] == "success"
    [got] = tls_server.sink.received
    assert got.login == "alice"
    assert got.message["Subject"] == "leak? ${" + PASSWORD_ENV + "}"  # not in the task's env
    assert PASSWORD_ENV not in nagare.log(run_id, "env")
    leaked = [
        str(p) for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert leaked == []


def test_a_remote_worker_sends_with_its_own_smtp_settings(
    nagare_factory: Callable[..., Nagare],
    workers: Callable[..., Worker],
    tls_server: SmtpServer,
    certificate: Certificate,
    tmp_path: Path,
) -> None:
    """The master has no `smtp:`; the worker's own nagare.yaml and environment are used."""
    config = tmp_path / "worker-nagare.yaml"
    smtp = tls_server.yaml(
        starttls=True, username="alice", password_env=PASSWORD_ENV, ca_file=str(certificate.cert)
    )
    config.write_text(yaml.safe_dump({"smtp": smtp}))
    dag = gpu_dag(
        "remote_mail",
        "- {id: notify, pool: gpu, type: mail, to: o@x.test, subject: 'from {{ .run.id }}'}",
    )
    nagare = nagare_factory(
        dags={"r.yaml": dag}, worker_pools=GPU_ONLY, lease_timeout_seconds=LEASE
    )
    w1 = workers(nagare.url, "w1", env={"NAGARE_CONFIG": str(config), PASSWORD_ENV: PASSWORD})
    wait_online(nagare, w1)
    run_id = nagare.trigger("remote_mail")
    nagare.wait_run(run_id)
    task = nagare.task(run_id, "notify")
    assert task["status"] == "success", task["message"]
    assert task["worker"] == "w1"
    assert task["metrics"]["executor_type"] == "mail"
    [got] = tls_server.sink.received
    assert (got.login, got.message["Subject"]) == ("alice", f"from {run_id}")
    assert "sent: 250" in nagare.log(run_id, "notify")
    w1.proc.kill()
    w1.wait_exit(10)


def test_mail_me_on_any_failure_in_three_lines_of_nagare_yaml(
    nagare_factory: Callable[..., Nagare], smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    """The README's example: `default_handler_on` with a mail handler."""
    server = smtp_server()
    readme = (ROOT / "README.md").read_text()
    start = readme.index("# nagare.yaml: mail me on any failure")
    example = yaml.safe_load(readme[start : readme.index("```", start)])
    example["smtp"] = server.yaml()  # the README's smtp: points at a real relay
    write_settings(tmp_path, example)
    dags = {
        "broken.yaml": "id: broken\ntasks:\n  - {id: boom, command: 'exit 3'}\n",
        "fine.yaml": "id: fine\ntasks:\n  - {id: ok, command: 'true'}\n",
    }
    nagare = nagare_factory(dags=dags)
    fine = nagare.trigger("fine")
    assert nagare.wait_run(fine)["status"] == "success"
    run_id = nagare.trigger("broken")
    assert nagare.wait_run(run_id)["status"] == "failed"
    wait_for(lambda: server.sink.received, message="the failure mail")
    [got] = server.sink.received  # one: the run that failed
    assert got.rcpt_tos == ["oncall@example.com"]
    assert got.message["Subject"] == "broken failed"
    assert run_id in got.body and "boom" in got.body
    handler = wait_for(
        lambda: (t := nagare.task(run_id, "on_failure"))["status"] == "success" and t
    )
    assert handler["status"] == "success"


def test_the_example_dag_sends_its_mail(
    nagare_factory: Callable[..., Nagare], smtp_server: Callable[..., SmtpServer], tmp_path: Path
) -> None:
    server = smtp_server()
    write_settings(tmp_path, {"smtp": server.yaml()})
    text = (ROOT / "dags" / "mail_example.yaml").read_text()
    dag, errors = parse_dag(text)
    assert dag is not None, errors
    nagare = nagare_factory(dags={"mail_example.yaml": text})
    run_id = nagare.trigger(dag.dag_id)
    assert nagare.wait_run(run_id)["status"] == "success", nagare.tasks(run_id)
    [got] = server.sink.received
    assert got.message["Subject"] == "mail_example: 3 lines counted"
    assert run_id in got.body
    assert got.attachments() == {"summary.txt": b"one\ntwo\nthree\n"}
    assert got.rcpt_tos == ["ops@example.com"]
    attached = Path(nagare.task(run_id, "count")["outputs"]["file"])
    assert not attached.parent.exists()  # clean_up removed the folder


# ---------------------------------------------------------------- load-time checks


def test_a_mail_task_is_checked_when_its_dag_loads() -> None:
    _, errors = parse_dag(
        "id: d\ntasks:\n"
        "  - {id: a, type: mail, to: ops@example.test, subject: s, attach: [report.csv]}\n"
        "  - {id: b, type: mail, subject: s}\n"
        "  - {id: c, type: mail, to: x@y.test, subject: s, command: echo}\n"
    )
    messages = [e.message for e in errors]
    assert any(
        "expected an absolute path (a file on the host that runs the step), found 'report.csv'" in m
        for m in messages
    ), messages
    assert any("'to' is required for type 'mail'" in m for m in messages), messages
    assert any("'command' cannot be used with type 'mail'" in m for m in messages), messages


def test_reply_codes_may_be_retried_on_mail_steps_only() -> None:
    mail, errors = parse_dag(
        "id: d\ntasks:\n  - id: a\n    type: mail\n    to: o@x.test\n    subject: s\n"
        "    retries: 2\n    retry_on_exit_codes: [1, 421, 450]\n"
        "    allow_failure: {exit_codes: [550]}\n"
    )
    assert mail is not None, errors
    assert mail.task("a").retry_on_exit_codes == (1, 421, 450)
    _, errors = parse_dag(
        "id: d\ntasks:\n  - {id: a, command: x, retries: 2, retry_on_exit_codes: [450]}\n"
        "  - {id: b, command: x, retry_on_exit_codes: [600]}\n"
    )
    messages = [e.message for e in errors]
    assert any(m.startswith("expected an exit code 1-255, found 450") for m in messages), messages
    assert any("found 600" in m for m in messages), messages


def test_a_timed_out_mail_says_the_step_was_stopped() -> None:
    outcome = Outcome(exit_code=None, timed_out=True)
    outcome.metrics.executor_type = "mail"
    assert failure_message(outcome, 5) == "timed out after 5s: the mail step was stopped"
