"""Cells of the CSV files people open in a spreadsheet (audit.csv, predictions.csv, predict's
output, corrections files), written so that a spreadsheet shows them as text and read back as
they were. Standard library only: runfolder.py and the corrections reader sit on it.

The rule (OWASP's for CSV injection): a cell that begins with `=`, `+`, `-`, `@`, a tab or a
carriage return is written with a leading single quote, so that a spreadsheet takes it for text
rather than a formula; a plain number (`-1`, `+1`, `-0.5`, `1e-3`) is written as it is. A cell
that itself begins with a single quote gets one more, so the reader can always remove exactly one
leading quote from a cell that begins with one and get the original back. The review form's
script (trainer/diagnostics/review.py) follows the same rule in JavaScript.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator

FORMULA = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
# A plain decimal number, ASCII digits only (Python's float() also takes "nan", "1_000" and
# other scripts' digits; the form's JavaScript must decide the same).
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def is_number(text: str) -> bool:
    return NUMBER.fullmatch(text) is not None


def escape(value) -> str:
    """The cell as written: value's text (None is empty), quoted when a spreadsheet would take
    it for a formula or when it begins with the quote itself."""
    text = "" if value is None else str(value)
    if text.startswith(QUOTE) or (text.startswith(FORMULA) and not is_number(text)):
        return QUOTE + text
    return text


def unescape(text: str) -> str:
    """The cell as it was before escape: one leading single quote removed."""
    return text[1:] if text.startswith(QUOTE) else text


def line(values: Iterable) -> str:
    """One CSV line of cells, each escaped, and quoted when it holds a comma, a double quote or a
    line break. (csv.writer leaves a lone carriage return unquoted when lines end in a line feed,
    and no reader then reads the row back.) The review form's script writes cells the same way."""
    written = [_quoted(escape(value)) for value in values]
    return (",".join(written) if written != [""] else '""') + "\n"  # one empty cell is not an empty line


def _quoted(text: str) -> str:
    if any(mark in text for mark in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def unescaped(values: Iterable[str]) -> list[str]:
    """A row of cells as read."""
    return [unescape(value) for value in values]


def read_rows(handle) -> Iterator[list[str]]:
    """csv.reader over handle, each cell as it was before escape."""
    for record in csv.reader(handle):
        yield unescaped(record)


def read_dicts(handle) -> Iterator[dict[str, str]]:
    """csv.DictReader over handle, header and cells as they were before escape (a short row's
    missing cells are None, as DictReader has them)."""
    for record in csv.DictReader(handle):
        yield {_original(key): _original(value) for key, value in record.items()}


def _original(value):
    return unescape(value) if isinstance(value, str) else value
