"""The trainer's options as command-line flags: one flag per TrainConfig field, made from its
type, default and help (trainer.config). `python -m trainer` (trainer.cli) and invoke.yaml's
`train.extra` (scripts.training) read flags through here alone, so a flag means the same in both.

Every flag defaults to "not given", so that what a command line gives can be laid over options
from elsewhere: `python -m trainer train --config FILE --epochs 5` is FILE's options with five
epochs, and TrainConfig's own defaults fill the rest.
"""

from __future__ import annotations

import argparse

from trainer.config import described, flag, options
from trainer.errors import InputError, nearest

TYPES = {"str": str, "str | None": str, "int": int, "float": float, "bool": bool}


class Parser(argparse.ArgumentParser):
    """Options exactly as written (no guessing from a prefix: --epoch is not --epochs), and usage
    errors as one line that names the nearest real option and where to look (`see`)."""

    def __init__(self, *args, see: str | None = None, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)
        self.see = see

    def error(self, message: str) -> None:
        raise InputError(f"{message} ({self.see or f'see {self.prog!r} --help'})")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option names the command's nearest real one."""
        known, unknown = self.parse_known_args(args, namespace)
        if unknown:
            command = getattr(known, "command", None)
            chosen = self.commands.get(command, self) if hasattr(self, "commands") else self
            names = [name for action in chosen._actions for name in action.option_strings if name.startswith("--")]
            close = nearest(unknown[0].split("=")[0], names)
            hint = f" (did you mean {close}?)" if close else ""
            chosen.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return known


def add_train_options(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per TrainConfig field (or each of `names`), from its type, default and help; a
    yes/no option that is on by default also takes --no-NAME."""
    for option in options():
        if names is not None and option.name not in names:
            continue
        kind, text = TYPES[option.type], described(option)
        if kind is bool:
            action = argparse.BooleanOptionalAction if option.default else "store_true"
            parser.add_argument(flag(option.name), action=action, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag(option.name), type=kind, default=argparse.SUPPRESS, help=text)


def given(args: argparse.Namespace) -> dict:
    """The trainer options a parsed command line gave, by name."""
    names = {option.name for option in options()}
    return {key: value for key, value in vars(args).items() if key in names}


def parse_flags(words: list[str], where: str) -> dict:
    """The options that `words` give (invoke.yaml's train.extra, say: "--patience 10 --strict"),
    by name; InputError naming `where` for a word that is not a trainer option or a value that
    is not of its type."""
    parser = Parser(prog=where, add_help=False, see=f"{where} takes `python -m trainer train` flags")
    add_train_options(parser)
    try:
        return given(parser.parse_args(words))
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
