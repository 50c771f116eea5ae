"""Folders that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield a new hidden folder beside `target` to fill; when the block ends without an error it
    is renamed to `target` (which may exist only as an empty folder), otherwise it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; these folders are for sharing
    try:
        yield staging
        if target.exists():
            target.rmdir()  # empty, as callers check; rmdir refuses anything else
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the filesystem allows one (no second copy of a large file), else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
