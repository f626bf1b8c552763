#!/usr/bin/env python3
"""Floors: the workloads' shell commands run with plain subprocess + concurrent.futures, no
orchestration. What is left between a workload and its floor is what the engine costs.

Standalone: `python3 benchmarks/floors.py chain --n 100 --reps 5` prints a JSON list of seconds,
one per repetition. `run.py` calls it in a child process so that the measuring process stays
out of the way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHELL = "/bin/sh"
NOOP = "true"


def sh(command: str) -> subprocess.CompletedProcess[bytes]:
    """One task as Nagare runs it: `sh -c COMMAND`, output captured, must exit 0."""
    done = subprocess.run([SHELL, "-c", command], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command!r} exited with {done.returncode}")
    return done


def chain(n: int) -> None:
    for _ in range(n):
        sh(NOOP)


def fanout(n: int, pool: int) -> None:
    sh(NOOP)
    with ThreadPoolExecutor(pool) as executor:
        list(executor.map(lambda _: sh(NOOP), range(n)))
    sh(NOOP)


def map_items(n: int, pool: int) -> None:
    source = sh(_map_source(n)).stdout.decode()
    items = json.loads(source.strip().splitlines()[-1])
    with ThreadPoolExecutor(pool) as executor:
        list(executor.map(lambda _: sh(NOOP), items))


def python_pass() -> None:
    """Interpreter start-up: `python3 -c pass`."""
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _map_source(items: int) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dagfiles import map_source_command

    return map_source_command(items)


def measure(work: Callable[[], None], reps: int) -> list[float]:
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("floor", choices=("chain", "fanout", "map", "python_pass"))
    parser.add_argument("--n", type=int, default=100, help="number of tasks (items)")
    parser.add_argument("--pool", type=int, default=8, help="worker threads")
    parser.add_argument("--reps", type=int, default=1, help="repetitions")
    args = parser.parse_args(argv)
    works: dict[str, Callable[[], None]] = {
        "chain": lambda: chain(args.n),
        "fanout": lambda: fanout(args.n, args.pool),
        "map": lambda: map_items(args.n, args.pool),
        "python_pass": python_pass,
    }
    print(json.dumps(measure(works[args.floor], args.reps)))
    return 0


def run_floor(floor: str, reps: int, n: int = 0, pool: int = 8) -> list[float]:
    """Run this script in a child process; returns seconds per repetition."""
    argv = [sys.executable, __file__, floor, "--reps", str(reps), "--pool", str(pool)]
    if n:
        argv += ["--n", str(n)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return [float(s) for s in json.loads(done.stdout)]


if __name__ == "__main__":
    sys.exit(main())
