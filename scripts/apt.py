"""apt: the configured Debian packages installed; dpkg-query first, apt-get only for the missing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.steps import Context, Result, StepFailed, changed, is_root, ok, privileged, read, skipped

APT_LISTS = Path("/var/lib/apt/lists")
DPKG_UPDATES = Path("/var/lib/dpkg/updates")  # not empty after a dpkg run was killed


def installed_packages(packages: Sequence[str]) -> set[str]:
    """The subset of packages dpkg reports as fully installed."""
    out = read(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages]) or ""
    # dpkg-query exits 1 when any name is unknown but still prints the known ones; read() then
    # returns None, so ask again one by one in that case.
    if not out and packages:
        out = "".join(read(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", p]) or "" for p in packages)
    found = set()
    for line in out.splitlines():
        name, _, status = line.partition(" ")
        if status.strip() == "ii":
            found.add(name.split(":")[0])
    return found


def plan(wanted: Sequence[str], installed: set[str]) -> list[str]:
    return [package for package in wanted if package not in installed]


def _lists_are_stale(max_age_hours: float = 24) -> bool:
    newest = max((p.stat().st_mtime for p in APT_LISTS.glob("*Packages*")), default=0)
    return time.time() - newest > max_age_hours * 3600


def apt(ctx: Context, packages: Sequence[str] = ()) -> Result:
    if not packages:
        return skipped("no packages configured")
    if shutil.which("dpkg-query") is None:
        return skipped("not a Debian or Ubuntu system (no dpkg-query); install " + " ".join(packages) + " yourself")
    missing = plan(packages, installed_packages(packages))
    if not missing:
        return ok(f"{len(packages)} packages installed: {' '.join(packages)}")
    if ctx.dry_run:
        return ctx.would("install " + " ".join(missing))
    if not is_root() and read(["sudo", "-n", "true"]) is None:
        return skipped(
            f"not root, so {' '.join(missing)} not installed; run `sudo apt-get install {' '.join(missing)}`"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if DPKG_UPDATES.is_dir() and any(DPKG_UPDATES.iterdir()):
        # apt-get refuses to run after an interrupted dpkg ("you must manually run dpkg --configure -a").
        ctx.run(privileged(["dpkg", "--configure", "-a"]), env=env, capture=True)
    if _lists_are_stale():
        ctx.run(privileged(["apt-get", "update", "-qq"]), env=env, capture=True)
    ctx.run(privileged(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]), env=env, capture=True)
    still = plan(packages, installed_packages(packages))
    if still:
        raise StepFailed(f"apt-get finished but {' '.join(still)} is still not installed", "check the package names")
    return changed("installed " + " ".join(missing))
