#!/usr/bin/env python3
"""Nagare benchmarks: each workload's median next to a floor measured in the same run.

    python3 benchmarks/run.py [--quick] [--only NAME[,NAME]] [--reps N] [--pyz [PATH]]

Prints a table (workload, median, floor, ratio or overhead, target, PASS/FAIL) and writes it to
benchmarks/results.md. Exit status: 0 when every measured row passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from harness import BENCH_DIR, CACHE_DIR, ROOT, Launcher
from profile_server import summary
from report import Row, console_table, error_row, write_markdown
from workloads import WORKLOADS, Settings

RESULTS = BENCH_DIR / "results.md"
REPO_PYZ = ROOT / "nagare.pyz"
PROFILE_DIR = CACHE_DIR / "profiles"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, < 1 minute")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these workloads (repeatable or comma-separated): {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--reps", type=int, help="repetitions of every workload (default: each's)")
    parser.add_argument(
        "--pyz",
        nargs="?",
        const="",
        metavar="PATH",
        help="run servers from a zipapp (default: ./nagare.pyz if it exists, else a fresh "
        "build of the source tree in benchmarks/.cache)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the engine's servers under cProfile (source tree; inflates the numbers) and "
        "write their hottest functions to benchmarks/.cache/profile-*.txt",
    )
    args = parser.parse_args(argv)
    if args.profile and args.pyz is not None:
        parser.error("--profile runs the source tree; it cannot be combined with --pyz")
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def selected(only: list[str]) -> list[str]:
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    aliases = {"idle_rss": "startup"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    return [n for n in WORKLOADS if not names or n in names]


def resolve_pyz(option: str | None) -> Path | None:
    """--pyz PATH -> PATH; --pyz -> ./nagare.pyz, else a fresh build of the current source tree
    in .cache (a few seconds; never a stale one); absent -> None."""
    if option is None:
        return None
    if option:
        path = Path(option).resolve()
        if not path.is_file():
            raise SystemExit(f"--pyz: no file {path}")
        return path
    if REPO_PYZ.is_file():
        return REPO_PYZ
    return build_pyz(CACHE_DIR / "nagare.pyz")


def build_pyz(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {output.relative_to(ROOT)} with build_pyz.py ...", flush=True)
    base = [sys.executable, str(ROOT / "build_pyz.py"), "--output", str(output)]
    for extra in (["--offline"], []):
        done = subprocess.run(base + extra, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return output
    raise SystemExit(f"build_pyz.py failed:\n{done.stderr[-2000:]}")


def settings(args: argparse.Namespace) -> Settings:
    pyz = resolve_pyz(args.pyz)
    engine = Launcher(pyz, profile_dir=PROFILE_DIR if args.profile else None)
    startup_pyz = pyz or (REPO_PYZ if REPO_PYZ.is_file() else None)
    return Settings(engine, Launcher(startup_pyz), quick=args.quick, reps=args.reps, say=say)


def say(message: str) -> None:
    print(message, flush=True)


def run_workload(name: str, cfg: Settings) -> list[Row]:
    say(f"== {name}")
    start = time.perf_counter()
    cfg.launcher.profile_tag = name
    try:
        rows = WORKLOADS[name](cfg)
    except Exception as exc:  # one broken workload must not hide the others
        traceback.print_exc()
        rows = [error_row(name, f"{type(exc).__name__}: {exc}")]
    say(f"   ({time.perf_counter() - start:.1f}s)")
    if cfg.launcher.profile_dir is not None:
        summarize_profiles(cfg.launcher.profile_dir, name)
    return rows


def summarize_profiles(folder: Path, name: str) -> None:
    """profile-<workload>.txt: the hottest functions of the workload's server(s)."""
    files = sorted(folder.glob(f"{name}-*.prof"))
    if not files:
        return
    text = "\n".join(f"### {f.name}\n{summary(f)}" for f in files)
    out = CACHE_DIR / f"profile-{name}.txt"
    out.write_text(text)
    say(f"   profile: {out.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = selected(args.only)
    cfg = settings(args)
    if args.profile:
        shutil.rmtree(PROFILE_DIR, ignore_errors=True)
        PROFILE_DIR.mkdir(parents=True)
    say(f"engine: {cfg.launcher.label}; startup: {cfg.startup_launcher.label}")
    start = time.perf_counter()
    rows = [row for name in names for row in run_workload(name, cfg)]
    total = time.perf_counter() - start
    print()
    print(console_table(rows))
    context = {
        "mode": "quick" if args.quick else "full",
        "workloads": ", ".join(names),
        "repetitions": str(args.reps) if args.reps else "per-workload defaults",
        "engine": cfg.launcher.label,
        "startup": cfg.startup_launcher.label,
        "suite time": f"{total:.0f} s",
    }
    if args.profile:
        context["profiled"] = "yes: servers ran under cProfile, engine numbers are inflated"
    write_markdown(RESULTS, rows, context)
    print(f"\nsuite time {total:.0f}s; wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
