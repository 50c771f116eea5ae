"""The memory this process may still take, as the machine enforces it. Standard library only."""

from __future__ import annotations

import contextlib
from pathlib import Path


def available_bytes() -> int | None:
    """The memory this process may still take: MemAvailable, or what the cgroup's limit leaves
    when that is less (a container); None where neither can be read."""
    found = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        found.append(int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(found) if found else None
