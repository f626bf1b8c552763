"""Password hashes and random secrets (the standard library's scrypt, sha256 and secrets).

A stored password is `scrypt$n$r$p$salt$hash` (salt and hash in hex): the cost parameters
travel with each hash, so raising them later leaves the older hashes readable. Tokens (session
cookies, API keys) are long random strings, stored as their SHA-256: unlike passwords they need
no slow hash, since no one can guess them.

`hashlib`, `hmac` and `secrets` are imported by the functions that use them: they map OpenSSL's
libcrypto (~3.5 MB resident), which a server loads with its first account or key, not at start.
"""

from __future__ import annotations

import os

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # scrypt's work grows with the input: a cap keeps sign-in cheap
KEY_PREFIX = "ngk_"  # every created API key starts with it (recognisable in a leak scan)
KEY_SHOWN_CHARS = 8  # how much of a key the list shows to tell keys apart (after the prefix)


def hash_password(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether `password` is the one `stored` was made from; False for a malformed or absent
    hash (a single sign-on user has none)."""
    parts = (stored or "").split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    if len(password) > MAX_PASSWORD_CHARS:  # as slow as a check: no hint that the name exists
        dummy_verify(password)
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        digest = _scrypt(password, salt, n, r, p, len(expected))
    except ValueError:
        return False
    import hmac

    return hmac.compare_digest(digest, expected)


def dummy_verify(password: str) -> None:
    """Spend the time of one check, so an unknown name answers as slowly as a wrong password."""
    _scrypt(password[:MAX_PASSWORD_CHARS], b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)


def password_problem(password: str) -> str:
    """Why `password` may not be used ('' when it may)."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the password must have at least {MIN_PASSWORD_CHARS} characters"
    if len(password) > MAX_PASSWORD_CHARS:
        return f"the password may have at most {MAX_PASSWORD_CHARS} characters"
    if password.strip() == "":
        return "the password may not be only spaces"
    return ""


def new_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def new_api_key() -> str:
    import secrets

    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(key: str) -> str:
    """What lists show of a key: its prefix and first characters."""
    return key[: len(KEY_PREFIX) + KEY_SHOWN_CHARS]


def token_hash(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int = HASH_BYTES) -> bytes:
    import hashlib

    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=size
    )
