"""Giving freed memory back to the system. Start-up (imports, migrations, loading every DAG,
building the route table) leaves megabytes of freed but still mapped heap in the C library's
allocator; an idle server would hold them for days. `trim` returns them (glibc's malloc_trim;
a no-op where the C library has none)."""

from __future__ import annotations

import ctypes
import gc


def trim() -> bool:
    """Collect garbage, then return the allocator's free pages to the system. Whether the C
    library could."""
    gc.collect()
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (musl, macOS)
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return bool(malloc_trim(0))
