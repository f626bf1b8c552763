"""Reading /proc: a process tree's peak memory, a process's start time (to tell a reused pid
from the process Nagare started), and the boot clock those start times count in. Nothing here
starts or signals a process."""

from __future__ import annotations

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_rss(pid: int) -> int:
    """The sum of each member's peak resident memory (VmHWM) over a process tree, in bytes.
    psutil is loaded at the first call (when a task ends): an idle server never loads it."""
    import psutil

    try:
        root = psutil.Process(pid)
        pids = [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return 0
    return sum(peak_rss(str(p)) for p in pids)


def peak_rss(pid: str) -> int:
    """A process's peak resident memory (VmHWM) in bytes; `pid` may be "self"; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def boot_ticks() -> float:
    """Now, in clock ticks since boot: the unit of a process's start time (/proc/PID/stat field
    22). Read just before a start, it bounds the new process's start time from below without
    reading /proc (which is slow while the new process is still loading)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return text.rpartition(")")[2].split()  # fields after the command name, from field 3


def process_alive(pid: int, create_time: float | None) -> bool:
    """Whether `pid` still is the process we started (guards against pid reuse): its start
    time lies within a second after `create_time` (`boot_ticks()` read just before the start;
    a pid is not reused that fast)."""
    fields = _stat_fields(pid)
    if len(fields) < 20 or fields[0] == "Z":
        return False
    started = float(fields[19])
    return not create_time or create_time - 1 <= started <= create_time + CLOCK_TICKS
