"""Giving freed memory back to the system. Start-up (imports, migrations, loading every DAG,
building the route table) leaves megabytes of freed but still mapped heap in the C library's
allocator; an idle server would hold them for days. `trim` returns them (glibc's malloc_trim;
a no-op where the C library has none), after dropping the `re` module's cache of the patterns
start-up compiled from strings (~0.5 MB: the ones in use are compiled again at their next use,
the ones modules hold as constants stay)."""

from __future__ import annotations

import ctypes
import gc
import re


def trim() -> bool:
    """Drop the regular-expression cache, collect garbage, then return the allocator's free
    pages to the system. Whether the C library could."""
    re.purge()
    gc.collect()
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (musl, macOS)
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))
