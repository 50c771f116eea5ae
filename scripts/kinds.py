"""The kinds of value a setting holds, and the one check that reads a value as its kind: text,
yes/no, words, whole numbers and seconds, and a trainer option (its type, then the values it
accepts). Standard library only, as everything the setup steps import before they run."""

from __future__ import annotations

from dataclasses import Field

from trainer.names import model_problem, shown

TEXT, FLAG, WORDS, NAME = "text", "yes/no", "words", "folder name"


def whole(minimum: int):
    return ("whole", minimum)


def seconds():
    return ("number", 0)


TRUE, FALSE = ("yes", "true", "on", "1"), ("no", "false", "off", "0", "")


class SettingError(Exception):
    pass


def check_value(where: str, kind, value):
    """The value as the tasks use it, or SettingError naming `where`."""
    if kind == TEXT:
        if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return "" if value is None else str(value)
        raise SettingError(f"{where} must be text (got {value!r})")
    if kind == WORDS:
        if value is None or isinstance(value, str):
            return value or ""
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise SettingError(f"{where} must be space-separated words or a list of them (got {value!r})")
    if kind == NAME:
        text = check_value(where, TEXT, value)
        if text and model_problem(text):
            raise SettingError(f"{where} must be a folder name, and {shown(text)} {model_problem(text)}")
        return text
    if kind == FLAG:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise SettingError(f"{where} must be yes or no (got {value!r})")
    if isinstance(kind, Field):
        return check_option(where, kind, value)
    name, minimum = kind
    if value is None or value == "":
        return ""  # empty: the default of whatever reads it
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if name == "whole" else float(value)
        if name == "whole" and isinstance(value, float) and value != int(value):
            raise ValueError
    except (TypeError, ValueError):
        what = "a whole number" if name == "whole" else "a number"
        raise SettingError(f"{where} must be {what} (got {value!r})") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{where} must be at least {minimum} (got {value!r})")
    return number


KINDS = {"str": TEXT, "str | None": TEXT, "bool": FLAG, "int": ("whole", None), "float": ("number", None)}


def check_option(where: str, option: Field, value):
    """A trainer option's value: its type, then the values it accepts. Empty (or absent) means
    the trainer's own default."""
    if value is None or value == "":
        return ""
    checked = check_value(where, KINDS[option.type], value)
    accepts = option.metadata["accepts"]
    if accepts is not None and not accepts.test(checked):
        raise SettingError(f"{where} must be {accepts.words} (got {value!r})")
    return checked
