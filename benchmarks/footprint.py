"""Start-up and footprint rows of the `startup` workload: `nagare exec` of a 1-task and of a
100-task DAG as whole processes, the server's start measured against a bare interpreter, and an
idle server's PSS summed over its process tree. Each exec figure is the median of N processes;
the interpreter floor (`python3 -c pass`) is measured in the same run."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dagfiles import chain
from harness import BenchError, Launcher, median
from report import Row

MB = 2**20
EXEC_TINY_OVER_FLOOR = 0.25  # s over `python3 -c pass`
SERVER_START_OVER_FLOOR = 0.30  # s over `python3 -c pass`
IDLE_PSS_MB = 25.0
EXEC_CHAIN100_SECONDS = 0.5
TINY = 'id: tiny\ntasks:\n  - {"id": "a", "command": "true"}\n'


def pss_tree_bytes(pid: int) -> int:
    """PSS of `pid` and every process below it (/proc/PID/smaps_rollup), in bytes."""
    return sum(_pss(member) for member in _tree(pid))


def _tree(pid: int) -> list[int]:
    members = [pid]
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for thread in threads:
        try:
            children = (thread / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            members += _tree(int(child))
    return members


def _pss(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0  # exited meanwhile
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def exec_seconds(launcher: Launcher, dag_text: str, reps: int) -> list[float]:
    """Wall time of `nagare exec --quiet FILE` from process start to exit, `reps` times, after
    one run that is not counted (it may extract the archive's native packages)."""
    with tempfile.TemporaryDirectory(prefix="nagare-bench-exec-") as folder:
        dags = Path(folder) / "dags"
        dags.mkdir()
        dag_file = dags / "dag.yaml"
        dag_file.write_text(dag_text)
        command = [*launcher.command(), "exec", "--quiet", str(dag_file)]
        seconds = []
        for number in range(reps + 1):
            start = time.perf_counter()
            done = subprocess.run(
                command, cwd=folder, env=launcher.env(), capture_output=True, check=False
            )
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise BenchError(f"nagare exec failed: {done.stderr.decode()[-500:]}")
            if number:
                seconds.append(elapsed)
    return seconds


def footprint_rows(
    launcher: Launcher,
    reps: int,
    server_starts: list[float],
    idle_pss: list[int],
    idle_rss: list[int],
    floor_seconds: Callable[[], float],
    say: Callable[[str], None],
) -> list[Row]:
    """The four rows; `server_starts`, `idle_pss` and `idle_rss` come from the startup
    workload's warm starts, `floor_seconds()` measures `python3 -c pass` (median)."""
    tiny = exec_seconds(launcher, TINY, reps)
    say("  exec tiny: " + ", ".join(f"{s:.3f}s" for s in tiny))
    chain100 = exec_seconds(launcher, chain("chain100", 100), reps)
    say("  exec chain100: " + ", ".join(f"{s:.3f}s" for s in chain100))
    floor = floor_seconds()
    how = launcher.label
    exec_tiny, start = median(tiny), median(server_starts)
    pss_mb, rss_mb = (
        median([float(p) for p in idle_pss]) / MB,
        median([float(r) for r in idle_rss]) / MB,
    )
    exec_chain = median(chain100)
    return [
        Row(
            "exec_tiny",
            f"{exec_tiny:.3f} s",
            f"{floor:.3f} s",
            f"+{exec_tiny - floor:.3f} s",
            f"<= floor + {EXEC_TINY_OVER_FLOOR} s",
            exec_tiny - floor <= EXEC_TINY_OVER_FLOOR,
            f"`nagare exec` of a 1-task DAG, process start -> exit, median of {reps}; "
            f"floor: python3 -c pass; {how}",
        ),
        Row(
            "server_start",
            f"{start:.3f} s",
            f"{floor:.3f} s",
            f"+{start - floor:.3f} s",
            f"<= floor + {SERVER_START_OVER_FLOOR} s",
            start - floor <= SERVER_START_OVER_FLOOR,
            f"the startup row's starts (process start -> /api/health 200) against the "
            f"interpreter's start (python3 -c pass); {how}",
        ),
        Row(
            "idle_pss",
            f"{pss_mb:.1f} MB",
            "-",
            "-",
            f"<= {IDLE_PSS_MB:.0f} MB",
            pss_mb <= IDLE_PSS_MB,
            f"PSS summed over the server's process tree (smaps_rollup) 2 s after start, "
            f"repo dags/, median of {len(idle_pss)}; RSS {rss_mb:.1f} MB. PSS shares each "
            f"mapped library's pages among the processes mapping it, so it moves with what "
            f"else runs; {how}",
        ),
        Row(
            "exec_chain100",
            f"{exec_chain:.3f} s",
            f"{floor:.3f} s",
            f"+{exec_chain - floor:.3f} s",
            f"<= {EXEC_CHAIN100_SECONDS} s",
            exec_chain <= EXEC_CHAIN100_SECONDS,
            f"`nagare exec` of a chain of 100 `true`, whole process, median of {reps}; {how}",
        ),
    ]
