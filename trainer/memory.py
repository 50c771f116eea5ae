"""The memory this process may still take, as the machine enforces it, and where that figure
comes from. Standard library only: the setup steps read it too.

The smallest of these wins: MemAvailable (/proc/meminfo); the cgroup v2 limit (memory.max less
memory.current) at this process's cgroup and every cgroup above it; the cgroup v1 limit
(memory.limit_in_bytes less memory.usage_in_bytes) likewise; and the address-space rlimit
(RLIMIT_AS less what the process has mapped). A container or a Colab VM enforces one of the
cgroup limits; reading only the v2 file missed a v1 limit of 1.5 GB and planned with 20 GB.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


@dataclass(frozen=True)
class Limit:
    available_bytes: int
    source: str  # "MemAvailable", "cgroup v2", "cgroup v1" or "RLIMIT_AS"
    limit_bytes: int | None = None  # the limit itself, where the source is one

    def to_dict(self) -> dict:
        return {"available_bytes": self.available_bytes, "source": self.source, "limit_bytes": self.limit_bytes}


def _number(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    return None


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> Limit | None:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = meminfo.read_text().splitlines()
        kilobytes = int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1])
        return Limit(kilobytes * 1024, "MemAvailable")
    return None


def cgroup_folders(cgroup: str, mountinfo: str) -> dict[str, list[Path]]:
    """{"v1": [...], "v2": [...]}: the folders of this process's memory cgroup and each one
    above it up to its hierarchy's mount, read from /proc/self/cgroup and /proc/self/mountinfo."""
    paths = {}
    for line in cgroup.splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    found: dict[str, list[Path]] = {"v1": [], "v2": []}
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        root, mountpoint = fields[3], fields[4]
        kind, _, options = line.split(" - ", 1)[1].partition(" ")
        version = (
            "v2"
            if kind == "cgroup2"
            else "v1"
            if kind == "cgroup" and "memory" in options.split()[-1].split(",")
            else ""
        )
        if not version or version not in paths:
            continue
        inside = paths[version]
        relative = Path(inside).relative_to(root) if Path(inside).is_relative_to(root) else Path()
        folder = Path(mountpoint) / relative
        while True:
            found[version].append(folder)
            if folder == Path(mountpoint) or folder.parent == folder:
                break
            folder = folder.parent
    return found


def cgroup_limit(folders: list[Path], limit_file: str, usage_file: str, source: str) -> Limit | None:
    """The tightest limit among the folders: the least headroom (limit less usage) of any."""
    best = None
    for folder in folders:
        limit, usage = _number(folder / limit_file), _number(folder / usage_file)
        if limit is None or limit >= UNLIMITED:
            continue
        headroom = max(0, limit - (usage or 0))
        if best is None or headroom < best.available_bytes:
            best = Limit(headroom, source, limit)
    return best


def address_space() -> Limit | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = 0
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/self/status").read_text().splitlines()
        mapped = int(next(line for line in lines if line.startswith("VmSize:")).split()[1]) * 1024
    return Limit(max(0, soft - mapped), "RLIMIT_AS", soft)


def limits() -> list[Limit]:
    """Every limit this machine puts on this process that could be read."""
    found = [mem_available(), address_space()]
    with contextlib.suppress(OSError):
        folders = cgroup_folders(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
        found.append(cgroup_limit(folders["v2"], "memory.max", "memory.current", "cgroup v2"))
        found.append(cgroup_limit(folders["v1"], "memory.limit_in_bytes", "memory.usage_in_bytes", "cgroup v1"))
    return [limit for limit in found if limit is not None]


def tightest() -> Limit | None:
    """The limit with the least memory left, or None where none could be read."""
    return min(limits(), key=lambda limit: limit.available_bytes, default=None)


def available_bytes() -> int | None:
    """The memory this process may still take (tightest), or None where nothing says."""
    limit = tightest()
    return None if limit is None else limit.available_bytes


def gigabytes(count: int | None) -> str:
    return "?" if count is None else f"{count / 1e9:.1f} GB"
