"""The parallel-validation figure's measurements, in a process of its own that has not imported
TensorFlow, as the trainer's own process has not when it validates (validation forks worker
processes only where no other thread runs; see trainer.data.fork_is_safe).

    python -m benchmarks.validation_worker FOLDER REPEAT

Prints one JSON object: the seconds of each repetition for ours (trainer.data.validate), the
single-threaded Pillow loop, and our per-image check in a plain loop, and the plan validation chose;
and the machine's own ceiling in the same rounds: how much faster pure-Python work runs on one
forked process per CPU than on one (on a shared 2-vCPU VM it has ranged 1.24-1.93x run to run).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path


def _burn(count: int) -> int:
    total = 0
    for step in range(count):
        total += step * step
    return total


def ceiling(workers: int, count: int = 2_000_000) -> float:
    """Pure-Python work on `workers` forked processes against the same work on one."""
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_burn, [1] * workers)
        started = time.perf_counter()
        pool.map(_burn, [count] * workers)
        parallel = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(workers):
        _burn(count)
    return (time.perf_counter() - started) / parallel


def main(argv: list[str]) -> int:
    folder, repeat = Path(argv[0]), int(argv[1])
    from benchmarks.suite import alternate, naive_check, timed
    from trainer.data import validate as data
    from trainer.data.images import read_and_inspect
    from trainer.data.report import Report
    from trainer.data.rows import load_rows

    rows, _ = load_rows(folder, None)

    def ours() -> float:
        return timed(lambda: data.validate(list(rows), Report(), min_class_size=1))

    def loop() -> float:
        return timed(lambda: [naive_check(row.path) for row in rows])

    def same_work_one_thread() -> float:
        return timed(lambda: [read_and_inspect(row.path) for row in rows])

    ours(), loop()  # the files into the page cache, the imports done
    plan = data.inspection_plan(len(rows))
    mine, theirs, single, ceilings = [], [], [], []
    for _ in range(repeat):
        (one,), (other,) = alternate(1, ours, loop)
        mine.append(one)
        theirs.append(other)
        single.append(same_work_one_thread())
        ceilings.append(ceiling(plan[1]))
    found = {"ours": mine, "loop": theirs, "single": single, "ceiling": statistics.median(ceilings)}
    print(json.dumps({**found, "ceilings": ceilings, "images": len(rows), "plan": list(plan)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
