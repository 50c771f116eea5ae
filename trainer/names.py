"""One rule for the names users bring, applied wherever a name enters: a class name (a class
folder, a CSV label, a corrections file, --merge-labels, the review form's choices) and a model's
name (--model-name, invoke's --name and publish.folder). Bad names are stopped at the input, in
one line naming the row, rather than escaped everywhere after; what is drawn or written is still
escaped (trainer/cells.py, the report), since a name that passes the rule may still hold `$`, `<`
or `=`.

A class name: 1 to MAX_LENGTH characters, no control or line-separator character (C0 and C1
controls, DEL, U+2028, U+2029: labels.txt is one name a line, and a name drawn on a picture or a
page is one line), and not one of the review's words (`keep`, `drop`, in any case), which a
corrections file would read as a decision. Names that differ only in spacing or case are still
merged by validation (trainer.data.validate). A model's name is a class name that is also a
folder name: no review word needed, but no `/` or `\\`, not starting with a dot (so not `.` or
`..` either).

Standard library only, and linear in the name's length whatever it holds (a 100,000-character
label is refused in one short line).
"""

from __future__ import annotations

import unicodedata

from trainer.errors import InputError

MAX_LENGTH = 100  # characters; SDNET2018's classes are two letters, ImageNet's longest about 40
RESERVED = ("keep", "drop")  # the review's words: a corrections file's Label column means them
SHOWN = 40  # characters of a refused name said in its message


def shown(name: str, limit: int = SHOWN) -> str:
    """A name as a message quotes it: repr of its first `limit` characters, and its length when
    it is longer, so that a 100,000-character name makes a short line."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name)} characters)"


def _control(character: str) -> bool:
    return unicodedata.category(character) in ("Cc", "Zl", "Zp")


def text_problem(name: str) -> str | None:
    """Why `name` cannot be one name a line (empty, too long, a control character), or None."""
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if len(name) > MAX_LENGTH:
        return f"is {len(name)} characters long (at most {MAX_LENGTH})"
    bad = next((character for character in name if _control(character)), None)
    if bad is not None:
        return f"holds the control character U+{ord(bad):04X} (a line break or the like)"
    return None


def class_problem(name: str) -> str | None:
    """Why `name` cannot be a class name, or None when it can."""
    problem = text_problem(name)
    if problem is None and name.strip().casefold() in RESERVED:
        return f"is one of the review's words ({', '.join(RESERVED)}), which a corrections file reads as a decision"
    return problem


def check_class(name: str, where: str) -> str:
    """`name`, or InputError: '<where>: class name <name> <why>; rename it'."""
    problem = class_problem(name)
    if problem is not None:
        raise InputError(f"{where}: class name {shown(name)} {problem}; rename it")
    return name


def model_problem(name: str) -> str | None:
    """Why `name` cannot name a model (and its folders), or None when it can."""
    problem = text_problem(name)
    if problem is not None:
        return problem
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if name.startswith("."):
        return "starts with a dot (a hidden or parent folder)"
    return None


def check_model(name: str, where: str) -> str:
    """`name`, or InputError naming `where` (an option or setting) and what to do."""
    problem = model_problem(name)
    if problem is not None:
        raise InputError(f"{where} must be a folder name, and {shown(name)} {problem}")
    return name
