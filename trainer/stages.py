"""Each stage of a run timed, with the peak memory it reached: manifest.json's `stages`.

On Linux the peak (VmHWM, the resident high-water mark) is reset when a stage starts, by
writing 5 to /proc/self/clear_refs, so each stage's figure is its own peak rather than the
run's so far. Where that is refused, the figure is the process's peak up to the stage's end
(ru_maxrss) and `peak_is_own` says so.
"""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def resident_megabytes(field: str = "VmRSS") -> float | None:
    """The process's resident memory (VmRSS) or its high-water mark (VmHWM), in MiB."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_megabytes() -> float:
    high = resident_megabytes("VmHWM")
    return high if high is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """`with stages("featurize"): ...` records {"seconds", "peak_mb", "peak_is_own"} per stage."""

    def __init__(self) -> None:
        self.record: dict[str, dict] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        own = reset_peak()
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            previous = self.record.get(name, {})
            self.record[name] = {
                "seconds": round(previous.get("seconds", 0.0) + seconds, 3),
                "peak_mb": round(max(previous.get("peak_mb", 0.0), peak_megabytes()), 1),
                "peak_is_own": own,
            }
