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
    seen: dict  # marker -> seconds after the start when it first appeared on stderr


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
    marker: str | None = None,
    watch: tuple = (),
) -> Outcome:
    """Run argv to its end, or SIGKILL its group `kill_after` seconds after it starts (after
    `marker` first appears on its stderr, when given); a command that ends first is not killed.
    The times at which the `watch` markers first appear are recorded."""
    started = time.monotonic()
    process, out, err = _launch(argv, cwd, env, logs)
    seen: dict[str, float] = {}
    wanted = set(watch) | ({marker} if marker else set())
    killed = False
    while process.poll() is None:
        if wanted - seen.keys():
            text = err.read_text(errors="replace")
            for word in wanted - seen.keys():
                if word in text:
                    seen[word] = time.monotonic() - started
        armed = kill_after is not None and (marker is None or marker in seen)
        if armed and time.monotonic() - started - seen.get(marker, 0.0) >= kill_after:
            _kill_group(process)
            killed = True
            break
        time.sleep(0.01)
    process.wait()
    text = err.read_text(errors="replace")
    for word in wanted - seen.keys():
        if word in text:
            seen[word] = time.monotonic() - started
    return Outcome(None if killed else process.returncode, out.read_text(), text, time.monotonic() - started, seen)
