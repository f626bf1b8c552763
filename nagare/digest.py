"""SHA-256 of texts hashed at every start (a DAG's content hash), without OpenSSL.

`hashlib` maps OpenSSL's libcrypto into the process (about 3.5 MB resident) as soon as it is
imported; the interpreter's own SHA-256 (`_sha2` from 3.12, `_sha256` before) gives the same
digests without it. An idle server thus maps no libcrypto until something needs it (TLS,
passwords, webhook signatures). A build without those modules falls back to hashlib.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["sha256_hex"]


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data` in hex."""
    return str(_sha256()(data).hexdigest())


@functools.cache
def _sha256() -> Callable[[bytes], Any]:
    for name in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib  # only where the interpreter has no SHA-256 of its own

    return hashlib.sha256
