"""One invoke at a time per bundle.

Two `invoke setup` runs in the same bundle would interleave pip, the C library's files and the
dataset's folders. Every task that changes something first takes an exclusive `flock` on a file
named after the bundle's path; a second run waits for it (saying who holds it) and then finds
the work done. The kernel releases the lock when its process ends, however it ends, so a run
killed with SIGKILL never leaves a stale lock behind.

The lock file lives in the system's temporary folder, not in the bundle, because the bundle may
sit on Google Drive, whose FUSE mount does not promise `flock`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from scripts.steps import StepFailed

_held: dict[str, int] = {}  # lock path -> open descriptor, for the life of this process


def lock_path(root: Path) -> Path:
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ud-cd-classifier-{digest}.lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another invoke"
    since = time.time() - holder.get("since", time.time())
    return f"`{holder.get('command', 'invoke')}` (pid {holder.get('pid', '?')}, running for {since:.0f} s)"


def acquire(root: Path, wait: float = 3600, echo=lambda message: print(message, file=sys.stderr, flush=True)) -> float:
    """Hold the bundle's lock until this process ends; returns the seconds spent waiting.

    Taking it again in the same process (as `invoke setup train` does) is free.
    """
    path = lock_path(root)
    if str(path) in _held:
        return 0.0
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    started = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waited = time.monotonic() - started
            holder = _holder(path)
            if waited >= wait:
                os.close(descriptor)
                raise StepFailed(
                    f"{_describe(holder)} still holds {path} after {waited:.0f} s",
                    f"wait for it to finish, or stop it (kill {holder.get('pid', 'its process')})",
                ) from None
            if not said:
                echo(f"waiting for {_describe(holder)} to finish; this bundle runs one invoke at a time")
                said = True
            time.sleep(0.2)
    os.ftruncate(descriptor, 0)
    record = {"pid": os.getpid(), "command": " ".join(["invoke", *sys.argv[1:]]), "since": time.time()}
    os.pwrite(descriptor, json.dumps(record).encode(), 0)
    _held[str(path)] = descriptor
    waited = time.monotonic() - started
    if said:
        echo(f"the other invoke finished after {waited:.1f} s; going on")
    return waited
