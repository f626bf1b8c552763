"""Errors shared by every layer. Each carries a stable code and a message for users."""

from __future__ import annotations

from collections.abc import Iterable


class NagareError(Exception):
    """Base class: `code` is machine-readable, `str(err)` is the user-facing message."""

    code = "error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(NagareError):
    code = "bad_request"
    status = 400


class Unauthorized(NagareError):
    code = "unauthorized"
    status = 401


class Forbidden(NagareError):
    code = "forbidden"
    status = 403


class NotFound(NagareError):
    code = "not_found"
    status = 404


class MethodNotAllowed(NagareError):
    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allow: list[str] | None = None) -> None:
        super().__init__(message)
        self.allow = allow or []


class Conflict(NagareError):
    code = "conflict"
    status = 409


class TooManyRequests(NagareError):
    """Refused for a while (failed sign-ins): answered with Retry-After."""

    code = "too_many_requests"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds


class PayloadTooLarge(NagareError):
    code = "payload_too_large"
    status = 413


class Unprocessable(NagareError):
    code = "unprocessable"
    status = 422


class InvalidParams(Unprocessable):
    """A run's parameters do not match the DAG's `params:`; `details` names every bad one."""

    code = "invalid_params"

    def __init__(self, message: str, details: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.details = details


class ConfigError(NagareError):
    """A bad option value in nagare.yaml, the environment or the command line."""

    code = "config_error"
    status = 400


class Overloaded(NagareError):
    """The server holds as many connections as it may (answered with Retry-After)."""

    code = "overloaded"
    status = 503


def close_matches(
    word: str, candidates: Iterable[str], n: int = 1, cutoff: float = 0.6
) -> list[str]:
    """`difflib.get_close_matches`, with difflib imported by the first "did you mean" (a
    valid DAG file never needs it)."""
    import difflib

    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
