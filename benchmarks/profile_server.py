#!/usr/bin/env python3
"""Run the Nagare command line with cProfile in every thread; write the merged profile at exit.

    python3 benchmarks/profile_server.py OUT.prof [nagare arguments...]

`run.py --profile` starts its servers through this script (numbers are then inflated by the
profiler) and prints the hottest functions of each server to benchmarks/.cache/profile-*.txt.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
from pathlib import Path
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_thread_profile(*_: Any) -> None:
    """threading.setprofile hook: the first event of a new thread switches on its profiler."""
    profile = cProfile.Profile()
    with _lock:
        _profiles.append(profile)
    profile.enable()


def _dump(out: Path) -> None:
    with _lock:
        profiles = list(_profiles)
    for profile in profiles:
        profile.disable()
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    stats.dump_stats(str(out))


def summary(prof: Path, top: int = 30) -> str:
    """The hottest functions of a dumped profile, by own time and by cumulative time."""
    buffer = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buffer)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buffer.getvalue()


def main() -> int:
    out = Path(sys.argv[1])
    sys.argv = ["nagare", *sys.argv[2:]]
    threading.setprofile(_start_thread_profile)
    _start_thread_profile()
    try:
        from nagare.cli import main as nagare_main

        return int(nagare_main())
    finally:
        _dump(out)


if __name__ == "__main__":
    sys.exit(main())
