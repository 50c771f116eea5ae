"""Exceptions the command layer turns into one line and an exit code."""


class InputError(Exception):
    """Bad input or usage: a file, row, column or option the user can fix (exit code 2)."""


class ImageError(InputError):
    """An image that cannot be used: missing, unreadable, corrupt or too large."""


class CheckFailed(Exception):
    """A result that does not hold up, such as an export that disagrees with Keras (exit code 1)."""
