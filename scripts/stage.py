"""stage: the executable bit restored on the bundle's own scripts (files copied through Google
Drive lose it). Only files of the bundle that start with `#!`; never world-writable."""

from __future__ import annotations

import stat
from pathlib import Path

from scripts.steps import Context, Result, changed, ok

# Where the bundle keeps programs meant to be run directly.
SCRIPT_FOLDERS = ("scripts", ".ci", "benchmarks")


def wanted_mode(mode: int) -> int:
    """Executable wherever readable; group and others may not write."""
    mode |= (mode & 0o444) >> 2
    return mode & ~(stat.S_IWGRP | stat.S_IWOTH)


def plan(root: Path) -> list[tuple[Path, int, int]]:
    """(file, current mode, wanted mode) for every script whose mode is not yet as wanted."""
    changes = []
    for folder in SCRIPT_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            with path.open("rb") as handle:
                if handle.read(2) != b"#!":
                    continue
            mode = stat.S_IMODE(path.stat().st_mode)
            if wanted_mode(mode) != mode:
                changes.append((path, mode, wanted_mode(mode)))
    return changes


def stage(ctx: Context) -> Result:
    changes = plan(ctx.root)
    if not changes:
        return ok("every bundle script is executable")
    names = ", ".join(f"{p.relative_to(ctx.root)} {old:o}->{new:o}" for p, old, new in changes)
    if ctx.dry_run:
        return ctx.would(f"chmod {names}")
    for path, _, new in changes:
        path.chmod(new)
    return changed(f"chmod {names}")
