#!/usr/bin/env python3
"""How much a second `invoke setup` costs next to invoke's own start-up (`invoke --list`).

Runs both commands alternately, several times, on a machine where setup already ran, and prints
the ratio of the medians with each side's spread. Goal: at most 2x.

    python benchmarks/setup_rerun.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    invoke = [sys.executable, "-m", "invoke"]
    report = str(ROOT / "runs" / "bench-setup-report.json")
    subprocess.run([*invoke, "setup", "--report", report], cwd=ROOT, check=True, capture_output=True)  # warm
    listing, setup = [], []
    for _ in range(args.repeat):
        listing.append(timed([*invoke, "--list"]))
        setup.append(timed([*invoke, "setup", "--report", report]))
    ratio = statistics.median(setup) / statistics.median(listing)
    print(
        f"invoke --list          median {statistics.median(listing):.3f} s  (min {min(listing):.3f}, max {max(listing):.3f})"
    )
    print(
        f"invoke setup (rerun)   median {statistics.median(setup):.3f} s  (min {min(setup):.3f}, max {max(setup):.3f})"
    )
    print(f"ratio {ratio:.2f}x (goal <= 2x): {'met' if ratio <= 2 else 'MISSED'}")
    return 0 if ratio <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
