"""Every setting invoke.yaml and INVOKE_* variables may hold, checked before a task runs.

Invoke itself accepts any key and casts an environment variable by the type of the value it
replaces: `INVOKE_TRAIN_EPOCHS=ten` crashes with a traceback, and `INVOKE_CHECK_REQUIRE_GPU=false`
becomes True (any non-empty string does). So tasks.py calls `check_or_exit` when invoke imports
it, which is before invoke reads the environment: a typo or a wrong type is one line naming the
file or variable and the setting, exit code 2, and nothing run; a yes/no variable is rewritten
to the form invoke reads correctly.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import Field
from pathlib import Path

from scripts.kinds import FALSE, FLAG, NAME, TEXT, TRUE, SettingError, check_value, seconds
from scripts.registry import STEPS
from trainer.config import options
from trainer.errors import nearest

__all__ = ["FALSE", "SCHEMA", "TRUE", "SettingError", "check_environment", "check_file", "check_flags", "check_or_exit"]

# Each setup step's settings come from its row in scripts.registry; the tasks' own sections here.
SCHEMA: dict[str, dict[str, object]] = {
    "setup": {"report": TEXT, "lock_wait": seconds()},
    **{step.name: {key: setting.kind for key, setting in step.settings.items()} for step in STEPS},
    # Every trainer option (trainer/config.py), and the step's own two:
    "train": {**{option.name: option for option in options()}, "extra": TEXT, "force": FLAG},
    "publish": {"to": TEXT, "folder": NAME, "local_folder": TEXT},
}


def _suggest(word: str, choices) -> str:
    close = nearest(word, choices)
    return f" (did you mean {close}?)" if close else ""


def check_file(path: Path, invoke_sections=()) -> None:
    """invoke.yaml: valid YAML, known sections and keys, values of the right type."""
    from invoke.vendor import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise SettingError(f"{path.name}: cannot read it ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SettingError(f"{path.name}{where}: not valid YAML ({problem}); fix that line") from None
    if not isinstance(data, dict):
        raise SettingError(f"{path.name}: must be sections of settings (got {type(data).__name__})")
    for section, values in data.items():
        if section in invoke_sections:
            continue  # invoke's own settings (run, sudo, tasks, ...) are invoke's business
        if section not in SCHEMA:
            raise SettingError(f"{path.name}: {section!r} is not a section{_suggest(str(section), SCHEMA)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise SettingError(f"{path.name}: {section} must hold settings, key: value (got {values!r})")
        for key, value in values.items():
            known = SCHEMA[section]
            if key not in known:
                raise SettingError(
                    f"{path.name}: {section}.{key} is not a setting{_suggest(str(key), known)}; "
                    f"{section} has {', '.join(known)}"
                )
            check_value(f"{path.name}: {section}.{key}", known[key], value)


def check_environment(environ) -> dict[str, str]:
    """INVOKE_<SECTION>_<KEY> variables for this bundle's sections: known keys, right types.
    Returns the yes/no ones rewritten as invoke reads them ("1" or "")."""
    rewritten = {}
    for name, value in environ.items():
        if not name.startswith("INVOKE_"):
            continue
        rest = name[len("INVOKE_") :].lower()
        section = next((s for s in SCHEMA if rest.startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :]
        if key not in SCHEMA[section]:
            close = nearest(key, SCHEMA[section])
            hint = f" (did you mean INVOKE_{section.upper()}_{close.upper()}?)" if close else ""
            raise SettingError(f"{name} is not a setting{hint}; unset it")
        kind = SCHEMA[section][key]
        checked = check_value(name, kind, value)
        if isinstance(kind, Field) and kind.type == "bool":
            kind, checked = FLAG, kind.default if checked == "" else checked
        if kind == FLAG:
            rewritten[name] = "1" if checked else ""
    return rewritten


def check_or_exit(root: Path) -> None:
    """Check invoke.yaml and the environment; on a problem print one line and exit with 2."""
    try:
        from invoke import Config

        invoke_sections = set(Config.global_defaults())
        project = root / "invoke.yaml"
        if project.is_file():
            check_file(project, invoke_sections)
        os.environ.update(check_environment(os.environ))
    except SettingError as error:
        print(f"invoke: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _long_names(task) -> dict:
    return {name: argument for argument in task.get_arguments() for name in argument.names if len(name) > 1}


def _not_an_option(current, word: str, tasks: dict, argv: list[str], position: int) -> str:
    """Why a flag is refused: the task whose flag it is, with the command line that gives it
    there (`--source belongs to invoke setup: invoke setup --source my.zip train`), else the
    task's nearest flag."""
    name = word[2:].partition("=")[0]
    owners = [other for other, task in tasks.items() if other != current.name and name in _long_names(task)]
    if not owners:
        longs = _long_names(current)
        choices = [f"--{known}" for known in longs] + [f"--no-{k}" for k, a in longs.items() if a.kind is bool]
        return (
            f"{current.name} has no option --{name}{_suggest('--' + name, choices)}; see `invoke --help {current.name}`"
        )
    owner = "setup" if "setup" in owners else owners[0]
    takes_value = _long_names(tasks[owner])[name].kind is not bool and "=" not in word
    moved = argv[position : position + (2 if takes_value else 1)]
    words = argv[:position] + argv[position + len(moved) :]
    if owner in words:
        at = words.index(owner) + 1
    elif owner == "train":  # training runs after the setup steps: after this task and its flags
        start = words.index(current.name)
        at = next((i for i in range(start + 1, len(words)) if words[i] in tasks), len(words))
        words.insert(at, owner)
        at += 1
    else:  # a setup step runs before training: before this task
        at = words.index(current.name)
        words.insert(at, owner)
        at += 1
    words[at:at] = moved
    others = "".join(f" (and invoke {other})" for other in owners if other != owner)
    return f"{current.name} has no option --{name}: it belongs to invoke {owner}{others}: invoke {shlex.join(words)}"


def check_flags(tasks: dict, argv: list[str]) -> None:
    """The flags after each task name on an invoke command line, against that task's own:
    invoke refuses an unknown one with `No idea what '--epoch' is!` and exit code 1; here it is
    one line naming the task and its nearest flag, with exit code 2, as the trainer does.
    `tasks` maps each task name to its invoke Task. Invoke's own options before the first task
    are invoke's business."""
    current = None
    values_follow = False
    for position, word in enumerate(argv):
        if values_follow:
            values_follow = False
            continue
        if word == "--":
            return
        if word in tasks:
            current = tasks[word]
            continue
        if current is None or not word.startswith("-") or word in ("-h", "--help"):
            continue
        arguments = current.get_arguments()
        longs = {name: argument for argument in arguments for name in argument.names if len(name) > 1}
        shorts = {name: argument for argument in arguments for name in argument.names if len(name) == 1}
        if word.startswith("--"):
            name, equals, _ = word[2:].partition("=")
            argument = longs.get(name)
            if argument is None and name.startswith("no-") and name[3:] in longs:
                argument = longs[name[3:]] if longs[name[3:]].kind is bool else None
            if argument is None:
                raise SettingError(_not_an_option(current, word, tasks, argv, position))
            values_follow = argument.kind is not bool and not argument.optional and not equals
        else:
            letters = word[1:]
            for index, letter in enumerate(letters):
                argument = shorts.get(letter)
                if argument is None:
                    raise SettingError(f"{current.name} has no option -{letter}; see `invoke --help {current.name}`")
                if argument.kind is not bool:
                    values_follow = index == len(letters) - 1
                    break
