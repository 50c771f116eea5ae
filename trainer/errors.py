"""Exceptions the command layer turns into one line and an exit code, and the sentence for an
error the operating system raised. Standard library only: the setup steps use it too.

    0    done
    1    a check that did not hold up (an export disagreeing with Keras), or a bug
    2    bad input or usage: a file, row, column or option the user can fix
    3    the model is complete, but a diagnostic failed (trainer.diagnostics)
    4    the machine refused: a full disk, a read-only or missing folder, no permission, an I/O error
    130  interrupted (Ctrl-C); rerunning the same command resumes
"""

from __future__ import annotations

import difflib
import errno
from pathlib import Path

EXIT_CHECK, EXIT_INPUT, EXIT_DIAGNOSTICS, EXIT_MACHINE, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


class InputError(Exception):
    """Bad input or usage: a file, row, column or option the user can fix (exit code 2)."""


class ImageError(InputError):
    """An image that cannot be used: missing, unreadable, corrupt or too large."""


class CheckFailed(Exception):
    """A result that does not hold up, such as an export that disagrees with Keras (exit code 1)."""


class MachineError(Exception):
    """The machine refused a read or a write: a full disk, a read-only file system, no
    permission, a file where a folder should be, an I/O error (exit code 4). Its message is one
    sentence: the cause, the path, and what to do."""


# errno -> (what happened, what to do); "{where}" is the option or folder to move the work to.
CAUSES = {
    errno.ENOSPC: ("no space left on device", "free space, or give {where} on a larger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota, or give {where} elsewhere"),
    errno.EFBIG: ("file too large for this file system", "give {where} on another disk"),
    errno.EROFS: ("read-only file system", "make it writable, or give {where} on a writable disk"),
    errno.EACCES: ("permission denied", "fix the folder's permissions, or give {where} where you may write"),
    errno.EPERM: ("operation not permitted", "fix the folder's permissions, or give {where} where you may write"),
    errno.ENOTDIR: ("a file stands where a folder is needed", "move that file away, or give {where} elsewhere"),
    errno.EISDIR: ("a folder stands where a file is needed", "move that folder away, or give {where} elsewhere"),
    errno.EIO: (
        "input/output error (a failing disk, or a network mount such as Drive dropped)",
        "check the disk or remount Drive, then rerun",
    ),  # fmt: skip
    errno.ENAMETOOLONG: ("a file name too long for this file system", "give {where} with a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n), then rerun"),
    errno.ENOENT: ("no such file or folder", "check the path; is Drive mounted?"),
}


def nearest(word: str, choices) -> str | None:
    """The real option a mistyped one most likely meant, or None: one the word abbreviates by
    initials (--lr: --learning-rate), then one it begins (--epoch: --epochs), then the closest
    spelling. Only ever a suggestion: nothing is guessed from a prefix."""
    choices = list(choices)
    bare = word.lstrip("-").lower()
    if not bare:
        return None

    def words(choice: str) -> list[str]:
        return [part for part in choice.lstrip("-").lower().replace("_", "-").split("-") if part]

    for choice in choices:
        parts = words(choice)
        if len(parts) > 1 and "".join(part[0] for part in parts) == bare.replace("-", "").replace("_", ""):
            return choice
    starting = [choice for choice in choices if choice.lstrip("-").lower().startswith(bare)]
    if starting:
        return min(starting, key=len)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def listed(items, limit: int = 10, separator: str = ", ") -> str:
    """Items for a message, at most `limit` of them and then "and N more": a line stays a line
    whatever the data (500 classes made one error of 8,159 characters)."""
    items = [str(item) for item in items]
    shown = separator.join(items[:limit])
    return shown + (f"{separator}and {len(items) - limit} more" if len(items) > limit else "")


def counted(count, noun: str, plural: str | None = None) -> str:
    """'1 image', '2 images', '0 images': a count and its noun, plural unless the count is one
    (`plural` where adding s is wrong: counted(n, "class", "classes"))."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def os_error_sentence(error: OSError, path: str | Path | None = None, doing: str = "writing",
                      where: str = "the folder") -> str:  # fmt: skip
    """'no space left on device writing PATH: free space, or give --workspace on a larger disk'.
    `path`: what was being read or written when the error does not name it; `where`: the option
    or folder that moves the work elsewhere."""
    cause, todo = CAUSES.get(error.errno, (error.strerror or type(error).__name__, "fix the cause, then rerun"))
    named = path if path is not None else (error.filename or "")
    return f"{cause} {doing} {named}: {todo.format(where=where)}".replace("  ", " ")


def is_machine_error(error: BaseException) -> bool:
    """An OSError the machine raised for a reason a user can act on (CAUSES), not a bug."""
    return isinstance(error, OSError) and error.errno in CAUSES
