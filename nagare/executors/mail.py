"""Mail executor: a `type: mail` step sends one mail with the standard library's SMTP client.

The only module that uses `smtplib`. The mail server is the `smtp:` of the nagare.yaml of the
host that runs the step (the server's, or a remote worker's own); its password is read from the
environment variable `smtp.password_env` names, when the mail is sent, and never written
anywhere (any message that could hold it is masked, like the task's secrets).

One attempt: the step's fields (templates already rendered; `${NAME}` references to the task's
environment expanded here) become a message (attachments read from the host's files), then one
SMTP conversation — connect (implicit TLS with `ssl`), STARTTLS with `starttls`, login with
`username`, MAIL FROM, one RCPT TO per recipient, DATA — runs in a thread of its own (the
client blocks) and posts its end to the reactor of the thread that owns the executor. The
task's timeout and a kill end the attempt at once, in that thread: the conversation's socket is
shut down so its thread ends soon after, and a line it had left to write is dropped.

Exit codes (what `retry_on_exit_codes` and `allow_failure` see): 0 sent; the server's reply
code when it refused something (e.g. 535 the login, 550 a recipient, 421 or 450 "try again
later"); 1 when no answer could be had (connection refused, unknown host, no answer in time,
TLS or STARTTLS failed, the connection dropped); 2 when the step cannot be sent as written (no
`smtp:`, a missing attachment, a bad address, the password's variable not set).
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any

from nagare.engine.secrets import mask
from nagare.engine.steps_env import expand_env
from nagare.executors import AttemptHandle, AttemptListener, not_started
from nagare.executors.reactor import Reactor, Timer
from nagare.models import Assignment, AttemptMetrics, Outcome, SmtpSettings, TaskType

log = logging.getLogger("nagare.mail")

EXIT_UNREACHABLE = 1  # no answer: connection, DNS, time, TLS, STARTTLS, a dropped connection
EXIT_BAD_INPUT = 2  # nothing was sent: no smtp:, an attachment, an address, the password
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024  # all the attachments of one mail, together
# CRLF lines, and 7-bit content (quoted-printable or base64): any server takes it, 8BITMIME or not
_POLICY = SMTP_POLICY.clone(cte_type="7bit")
NO_SMTP = "no smtp: in nagare.yaml (the mail server that sends type: mail steps; see the README)"


class MailFailure(Exception):
    """The attempt fails with this exit code and message."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


# ---------------------------------------------------------------- the mail (pure, but files)


@dataclass(frozen=True)
class Mail:
    """One mail as the step asks for it: envelope recipients and the message."""

    to: tuple[str, ...]  # header forms ("Name <a@x>" or "a@x")
    cc: tuple[str, ...]
    subject: str
    body: str
    attach: tuple[str, ...]  # paths on this host

    @property
    def recipients(self) -> tuple[str, ...]:
        """The envelope addresses (To, then Cc), each once."""
        found = [address for _, address in getaddresses([*self.to, *self.cc])]
        return tuple(dict.fromkeys(found))

    def summary(self) -> str:
        """The log line naming the mail: "mail to a@x, b@y (cc c@z): subject"."""
        to = ", ".join(address for _, address in getaddresses(list(self.to)))
        cc = ", ".join(address for _, address in getaddresses(list(self.cc)))
        return f"mail to {to}{f' (cc {cc})' if cc else ''}: {self.subject}"


def mail_of(step: Mapping[str, Any], env: Mapping[str, str]) -> Mail:
    """The step's fields, `${NAME}` expanded from the task's environment, checked."""

    def texts(key: str) -> list[str]:
        value = step.get(key) or []
        items = [value] if isinstance(value, str) else [str(v) for v in value]
        return [expand_env(item, env) for item in items]

    to = _addresses(texts("to"), "to")
    if not to:
        raise MailFailure(EXIT_BAD_INPUT, "to: no recipient (expected at least one address)")
    return Mail(
        to=to,
        cc=_addresses(texts("cc"), "cc"),
        subject=" ".join(expand_env(str(step.get("subject", "")), env).split()),
        body=expand_env(str(step.get("body", "")), env),
        attach=tuple(p for p in (t.strip() for t in texts("attach")) if p),
    )


def _addresses(items: list[str], field: str) -> tuple[str, ...]:
    """Each item may hold several addresses ("a@x, Bob <b@y>"); each must be name@domain."""
    found: list[str] = []
    for item in items:
        if "\n" in item or "\r" in item:
            raise MailFailure(EXIT_BAD_INPUT, f"{field}: a line break in '{item.strip()}'")
        if not item.strip():
            continue
        for name, address in getaddresses([item]):
            if not _is_address(address):
                shown = item.strip() if len(item.strip()) <= 200 else item.strip()[:200] + "…"
                raise MailFailure(
                    EXIT_BAD_INPUT,
                    f"{field}: '{shown}' is not a mail address (name@domain, in ASCII)",
                )
            found.append(formataddr((name, address)))
    return tuple(found)


def _is_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return (
        bool(at and local and domain)
        and address.isascii()
        and not any(c.isspace() for c in address)
    )


def read_attachments(paths: tuple[str, ...], limit: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each attachment; a missing or unreadable file, or more than
    `limit` bytes in all, fails the attempt naming it."""
    found: list[tuple[str, bytes]] = []
    total = 0
    for path in paths:
        if not os.path.isabs(path):
            raise MailFailure(EXIT_BAD_INPUT, f"attach: expected an absolute path, found '{path}'")
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit - total + 1)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MailFailure(EXIT_BAD_INPUT, f"attach: cannot read {path}: {reason}") from None
        total += len(data)
        if total > limit:
            raise MailFailure(
                EXIT_BAD_INPUT,
                f"attach: the attachments exceed {limit // (1024 * 1024)} MiB (at {path})",
            )
        found.append((os.path.basename(path), data))
    return found


def build_message(
    mail: Mail, sender: str, files: list[tuple[str, bytes]], now: float
) -> EmailMessage:
    """The message: From, To, Cc, Subject, Date, Message-ID, the body as text, the files."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(mail.to)
    if mail.cc:
        message["Cc"] = ", ".join(mail.cc)
    message["Subject"] = mail.subject
    message["Date"] = formatdate(now, localtime=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].strip(" >") or None)
    message.set_content(mail.body)
    for name, data in files:
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        main, _, sub = kind.partition("/")
        message.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return message


# ---------------------------------------------------------------- one attempt


class _Attempt:
    """One mail attempt: its handle, and the guard that ends it exactly once.

    `finish` runs in the reactor's thread only; `line`, `track` and `checkpoint` in the
    conversation's thread; `cancel` in any thread."""

    def __init__(
        self, executor: MailExecutor, listener: AttemptListener, secrets: list[str]
    ) -> None:
        self.reactor = executor.reactor
        self.listener = listener
        self.secrets = secrets
        self.started = time.monotonic()
        self.timer: Timer | None = None
        self._lock = threading.RLock()  # a line being written finishes before the end
        self._stopped = False  # no more lines: the attempt ended, or is ending
        self._ended = False  # `ended` was reported (the reactor's thread only)
        self._smtp: smtplib.SMTP | None = None

    # ------------------------------------------------------------ any thread

    def cancel(self, reason: str = "killed") -> None:
        self._stop()
        self.reactor.post(lambda: self.finish(_outcome(None, reason, cancelled=True)))

    def _stop(self) -> None:
        """Ends the conversation: its socket is shut down, which wakes its thread."""
        with self._lock:
            self._stopped = True
            smtp = self._smtp
        sock = getattr(smtp, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------ the reactor's thread

    def expire(self) -> None:
        """The task's timeout."""
        self._stop()
        self.finish(_outcome(None, "timed out", timed_out=True))

    def finish(self, outcome: Outcome) -> None:
        """Report the end, once (the first of: the conversation's end, a kill, the timeout)."""
        if self._ended:
            return
        self._ended = True
        with self._lock:
            self._stopped = True
        if self.timer is not None:
            self.timer.cancel()
        outcome.metrics = AttemptMetrics(
            duration_ms=int((time.monotonic() - self.started) * 1000),
            exit_code=outcome.exit_code,
            executor_type=TaskType.MAIL,
        )
        outcome.error = self.masked(outcome.error)
        self.listener.ended(outcome)

    # ------------------------------------------------------------ the conversation's thread

    def line(self, text: str) -> None:
        with self._lock:
            if not self._stopped:
                self.listener.line("stdout", self.masked(text))

    def track(self, smtp: smtplib.SMTP) -> None:
        with self._lock:
            self._smtp = smtp
        self.checkpoint()

    def checkpoint(self) -> None:
        """Stop here if the attempt has ended (killed, timed out)."""
        with self._lock:
            stopped = self._stopped
        if stopped:
            raise MailFailure(EXIT_UNREACHABLE, "stopped")

    def masked(self, text: str) -> str:
        return mask(text, self.secrets) if self.secrets and text else text


def _outcome(
    exit_code: int | None, error: str = "", cancelled: bool = False, timed_out: bool = False
) -> Outcome:
    metrics = AttemptMetrics(exit_code=exit_code, executor_type=TaskType.MAIL)
    return Outcome(exit_code, timed_out, cancelled, error, metrics)


# ---------------------------------------------------------------- the executor


class MailExecutor:
    """Sends the mail of `type: mail` attempts through `settings`; `ended` is reported in the
    thread that owns `reactor`. `environ` holds the variable `settings.password_env` names."""

    def __init__(
        self,
        reactor: Reactor,
        settings: SmtpSettings | None,
        environ: Mapping[str, str],
        max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.environ = environ
        self.max_attachment_bytes = max_attachment_bytes
        self.clock = clock

    @property
    def executor_type(self) -> str:
        return TaskType.MAIL

    def start(self, assignment: Assignment, listener: AttemptListener) -> AttemptHandle:
        settings = self.settings
        if settings is None:
            return not_started(self.reactor, listener, _outcome(EXIT_BAD_INPUT, NO_SMTP))
        password = ""
        if settings.password_env:
            password = self.environ.get(settings.password_env, "")
            if not password:
                problem = (
                    f"smtp.password_env: the environment variable {settings.password_env} is "
                    "not set on this host"
                )
                return not_started(self.reactor, listener, _outcome(EXIT_BAD_INPUT, problem))
        attempt = _Attempt(self, listener, [*assignment.secrets, *([password] if password else [])])
        threading.Thread(
            target=self._attempt_thread,
            args=(attempt, assignment, settings, password),
            daemon=True,
            name=f"mail-{assignment.task_id}"[:40],
        ).start()
        if assignment.timeout_seconds > 0:
            attempt.timer = self.reactor.call_later(assignment.timeout_seconds, attempt.expire)
        return attempt

    def _attempt_thread(
        self, attempt: _Attempt, assignment: Assignment, settings: SmtpSettings, password: str
    ) -> None:
        try:
            outcome = self._send(attempt, assignment, settings, password)
        except MailFailure as failure:
            outcome = _outcome(failure.exit_code, failure.message)
        except Exception as exc:  # a bug here fails the task, never the thread that owns it
            log.exception("mail task %s failed in its executor", assignment.task_id)
            outcome = _outcome(None, f"internal error: {attempt.masked(str(exc))}")
        self.reactor.post(lambda: attempt.finish(outcome))

    def _send(
        self, attempt: _Attempt, assignment: Assignment, settings: SmtpSettings, password: str
    ) -> Outcome:
        mail = mail_of(assignment.step, assignment.env)
        attempt.line(mail.summary())
        files = read_attachments(mail.attach, self.max_attachment_bytes)
        message = build_message(mail, settings.sender, files, self.clock())
        for name, data in files:
            attempt.line(f"attached {name} ({len(data)} bytes)")
        try:
            answer = self._converse(attempt, settings, password, mail, message)
        except MailFailure:
            raise
        except Exception as exc:
            raise MailFailure(*failure_of(exc, settings)) from None
        attempt.line(f"sent: {answer}")
        return _outcome(0)

    def _converse(
        self,
        attempt: _Attempt,
        settings: SmtpSettings,
        password: str,
        mail: Mail,
        message: EmailMessage,
    ) -> str:
        """The SMTP conversation; the server's answer to the mail."""
        context = _tls_context(settings) if settings.ssl or settings.starttls else None
        attempt.line(f"SMTP server {settings.host}:{settings.port}{_security(settings)}")
        smtp = _connect(settings, context)  # (a kill meanwhile: the timeout bounds it)
        try:
            attempt.track(smtp)
            _secure_and_login(smtp, settings, password, context)
            attempt.checkpoint()
            return _transfer(smtp, attempt, settings.sender, mail, message)
        finally:
            with contextlib.suppress(Exception):
                smtp.quit()
            smtp.close()


def _connect(settings: SmtpSettings, context: ssl.SSLContext | None) -> smtplib.SMTP:
    """Connected, greeted (TLS from the first byte with `ssl`)."""
    host, port, timeout = settings.host, settings.port, settings.timeout_seconds
    if settings.ssl:
        return smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    return smtplib.SMTP(host, port, timeout=timeout)


def _security(settings: SmtpSettings) -> str:
    how = " (TLS)" if settings.ssl else " (STARTTLS)" if settings.starttls else ""
    return how + (f" as {settings.username}" if settings.username else "")


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MailFailure(
            EXIT_BAD_INPUT, f"smtp.ca_file: cannot read {settings.ca_file}: {reason}"
        ) from None
    if settings.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _secure_and_login(
    smtp: smtplib.SMTP, settings: SmtpSettings, password: str, context: ssl.SSLContext | None
) -> None:
    smtp.ehlo_or_helo_if_needed()
    if settings.starttls:
        if not smtp.has_extn("starttls"):
            raise MailFailure(
                EXIT_UNREACHABLE,
                f"the SMTP server {settings.host}:{settings.port} does not offer STARTTLS",
            )
        smtp.starttls(context=context)
        smtp.ehlo()
    if settings.username:
        if not smtp.has_extn("auth"):
            hint = "" if settings.ssl or settings.starttls else " (try starttls: true)"
            raise MailFailure(
                EXIT_UNREACHABLE,
                f"the SMTP server {settings.host}:{settings.port} offers no login (AUTH) on "
                f"this connection{hint}",
            )
        smtp.login(settings.username, password)


def _transfer(
    smtp: smtplib.SMTP, attempt: _Attempt, sender: str, mail: Mail, message: EmailMessage
) -> str:
    """MAIL FROM, RCPT TO each recipient, DATA. A refused recipient fails the attempt with its
    reply code (after the mail went to the others, if the server took any)."""
    envelope_from = getaddresses([sender])[0][1] or sender
    code, reply = smtp.mail(envelope_from)
    if code != 250:
        _reset(smtp)
        raise MailFailure(
            code, f"the SMTP server refused the sender {envelope_from}: {_reply(code, reply)}"
        )
    refused: list[tuple[str, int, bytes]] = []
    for recipient in mail.recipients:
        attempt.checkpoint()
        code, reply = smtp.rcpt(recipient)
        if code not in (250, 251):
            refused.append((recipient, code, reply))
            attempt.line(f"refused recipient {recipient}: {_reply(code, reply)}")
    if len(refused) == len(mail.recipients):
        _reset(smtp)
        recipient, code, reply = refused[0]
        raise MailFailure(
            code, f"the SMTP server refused every recipient ({recipient}: {_reply(code, reply)})"
        )
    attempt.checkpoint()
    code, reply = smtp.data(message.as_bytes())
    if code != 250:
        raise MailFailure(code, f"the SMTP server refused the mail: {_reply(code, reply)}")
    answer = _reply(code, reply)
    if refused:
        attempt.line(f"sent to the other recipients: {answer}")
        names = ", ".join(r for r, _, _ in refused)
        _, code, reply = refused[0]
        raise MailFailure(
            code,
            f"the SMTP server refused {names} ({_reply(code, reply)}); the mail went to the "
            "other recipients",
        )
    return answer


def _reset(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.rset()


def _reply(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}".strip()


def failure_of(exc: BaseException, settings: SmtpSettings) -> tuple[int, str]:
    """(exit code, message) of an error of the SMTP conversation."""
    server = f"the SMTP server {settings.host}:{settings.port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return exc.smtp_code, (
            f"{server} refused the login of '{settings.username}': "
            f"{_reply(exc.smtp_code, exc.smtp_error)}"
        )
    if isinstance(exc, smtplib.SMTPConnectError):
        return exc.smtp_code, (
            f"{server} refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}"
        )
    if isinstance(exc, smtplib.SMTPDataError):
        return exc.smtp_code, f"{server} refused the mail: {_reply(exc.smtp_code, exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code, f"{server} answered {_reply(exc.smtp_code, exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(
        exc.__context__, TimeoutError
    ):
        exc = exc.__context__  # smtplib's name for a reply that did not come in time
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return EXIT_UNREACHABLE, f"{server} closed the connection ({exc or 'no reason given'})"
    if isinstance(exc, smtplib.SMTPException):
        return EXIT_UNREACHABLE, f"{server}: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return EXIT_UNREACHABLE, (
            f"TLS with {server} failed: its certificate is not trusted "
            f"({exc.verify_message or exc.reason}; see smtp.ca_file)"
        )
    if isinstance(exc, ssl.SSLError):
        return EXIT_UNREACHABLE, f"TLS with {server} failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return EXIT_UNREACHABLE, (
            f"{server} did not answer within {settings.timeout_seconds:g}s (smtp.timeout_seconds)"
        )
    if isinstance(exc, socket.gaierror):
        return EXIT_UNREACHABLE, f"cannot resolve the SMTP host {settings.host}: {exc.strerror}"
    if isinstance(exc, OSError):
        return EXIT_UNREACHABLE, f"cannot talk to {server}: {exc.strerror or exc}"
    raise exc
