"""Kill a real command with SIGKILL at a random point, as a Colab reset does, then rerun it.

The command runs in a process group of its own and the whole group is killed (a runtime reset
takes the trainer with the invoke that started it). The random points come from one seeded
generator: FAULT_SEED=N reruns a failure's exact schedule, and every test prints its seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

INVOKE = [sys.executable, "-m", "invoke"]


def generator(test_name: str) -> random.Random:
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"{test_name}: FAULT_SEED={seed}")
    return random.Random(seed)


@dataclass
class Outcome:
    returncode: int | None  # None: killed
    stdout: str
    stderr: str
    seconds: float
    seen: dict  # condition -> seconds after the start when it first held


def _launch(argv: list, cwd: Path, env: dict | None, logs: Path) -> tuple[subprocess.Popen, Path, Path]:
    logs.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.monotonic_ns()}"
    out, err = logs / f"{stamp}.out", logs / f"{stamp}.err"
    process = subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        stdout=out.open("w"),
        stderr=err.open("w"),
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return process, out, err


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run(
    argv: list,
    cwd: Path,
    env: dict | None,
    logs: Path,
    *,
    kill_after: float | None = None,
    after: Callable[[], bool] | None = None,
    watch: dict[str, Callable[[], bool]] | None = None,
) -> Outcome:
    """Run argv to its end, or SIGKILL its group `kill_after` seconds after it starts (after
    `after()` first holds, when given: a state of the files, not a log line); a command that
    ends first is not killed. The times at which each `watch` condition first holds are recorded."""
    started = time.monotonic()
    process, out, err = _launch(argv, cwd, env, logs)
    conditions = {**(watch or {}), **({"after": after} if after else {})}
    seen: dict[str, float] = {}
    killed = False
    while process.poll() is None:
        for name in conditions.keys() - seen.keys():
            if conditions[name]():
                seen[name] = time.monotonic() - started
        armed = kill_after is not None and (after is None or "after" in seen)
        if armed and time.monotonic() - started - seen.get("after", 0.0) >= kill_after:
            _kill_group(process)
            killed = True
            break
        time.sleep(0.01)
    process.wait()
    for name in conditions.keys() - seen.keys():
        if conditions[name]():
            seen[name] = time.monotonic() - started
    text = err.read_text(errors="replace")
    return Outcome(None if killed else process.returncode, out.read_text(), text, time.monotonic() - started, seen)
