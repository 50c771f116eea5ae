"""Write it whole or not at all: files and folders that a reader (or a run after a kill) sees
complete, as they were or as they are now, never half of either.

Everything is written under a hidden temporary name beside its destination (`.NAME.partial...`)
and renamed into place, which POSIX makes atomic within one filesystem. What a killed process
leaves under those names is removed by the next run (`remove_leftovers`).

Standard library only: the setup steps (scripts/) and the trainer (trainer/) both use it, and
the setup path must run before numpy or TensorFlow are installed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial"


def temporary_name(path: Path, suffix: str = "", unique: bool = False) -> Path:
    """`.NAME.partial` beside path (with `-PID` when several processes may write the same name,
    and `suffix` for writers that insist on an extension)."""
    return path.with_name(f".{path.name}{PARTIAL}{f'-{os.getpid()}' if unique else ''}{suffix}")


@contextmanager
def replacing(path: Path, suffix: str = "", unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without an error it is renamed over
    `path`, otherwise removed, and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path, suffix, unique)
    remove(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        remove(temporary)
        raise


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write text (UTF-8) or bytes to path, whole or not at all."""
    with replacing(path) as temporary:
        if isinstance(content, bytes):
            temporary.write_bytes(content)
        else:
            temporary.write_text(content, encoding="utf-8")


@contextmanager
def partial_folder(target: Path, replace: bool = False, keep_as: Path | None = None) -> Iterator[Path]:
    """Yield a new hidden folder beside `target` to fill. When the block ends without an error
    it becomes `target`; otherwise it is removed and `target` is untouched.

    Without `replace`, `target` may exist only as an empty folder (a run folder is never
    overwritten). With it, an existing `target` is swapped out (see replace_folder), and kept
    as `keep_as` when that is given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL}-", dir=target.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; these folders are for sharing
    try:
        yield partial
        if replace:
            replace_folder(partial, target, keep_as)
        else:
            if target.exists():
                target.rmdir()  # empty, as callers check; rmdir refuses anything else
            partial.rename(target)
    except BaseException:
        remove(partial)
        raise


def replace_folder(partial: Path, target: Path, keep_as: Path | None = None) -> None:
    """`partial` becomes `target`; the old `target` is removed afterwards, or becomes `keep_as`
    (whose own old content goes). Where the filesystem can (renameat2's RENAME_EXCHANGE: ext4,
    xfs, btrfs, tmpfs) the two swap names in one step, so `target` is never missing; elsewhere
    the old one is renamed aside first."""
    aside = None
    if keep_as is not None and (keep_as.exists() or keep_as.is_symlink()):
        aside = keep_as.with_name(f".{keep_as.name}.old-{os.getpid()}")
        remove(aside)
        keep_as.rename(aside)
    if not target.exists() and not target.is_symlink():
        partial.rename(target)
    elif exchange(partial, target):  # partial now holds the old folder
        if keep_as is not None:
            partial.rename(keep_as)
        else:
            remove(partial)
    else:
        old = keep_as or target.with_name(f".{target.name}.old-{os.getpid()}")
        remove(old)
        target.rename(old)
        partial.rename(target)
        if keep_as is None:
            remove(old)
    if aside is not None:
        remove(aside)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths' names atomically; False where the filesystem or the C library cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc before 2.28, or no C library to ask
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def remove(path: Path) -> None:
    """Remove a file, a symlink or a folder tree; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(folder: Path, *prefixes: str) -> list[str]:
    """Remove what an interrupted run left in folder: entries whose names start with one of
    prefixes (the hidden temporary names written through). Callers hold the bundle lock or
    otherwise know that no other process is writing them."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(prefixes):
            remove(entry)
            removed.append(entry.name)
    return removed


def link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the filesystem allows one (no second copy of a large file), else a copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def sha256_of(path: Path) -> str:
    """A file's SHA-256, read in 1 MiB blocks: how a copy is proved whole."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
