"""A search's state and its choice: one plain JSON file in the dataset's record, replayed.

    <model>-record/search.json    what `invoke tune` / `python -m trainer tune` searched and chose

Drive's mount is a network filesystem: a database or an append-only journal opened on it can be
left locked or half-written by a reset. So the state is one small file, written whole under a
temporary name and renamed after every trial (and before one starts, naming it as running), and a
resumed search replays it: the trials it holds are done, a trial it names as running was cut short
and runs again. The file is bound to what it searched (the data's fingerprint, which covers every
image's content, label after the decisions in force, and split; the seed and the split options;
the space searched): a search bound to other data or another split is set aside, never continued,
so no search ever chose with photos that are today's test photos.

The choice is an ordinary training request: the options it names (SEARCHED), which `invoke train`
and `python -m trainer train --search FILE` take under every option the user sets. Nothing here
imports more than the standard library, so the setup side reads it too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trainer.atomic import write_atomically
from trainer.errors import InputError

STATE = "search.json"
VERSION = 1
MAX_BYTES = 4 * 1024 * 1024  # a state file larger than this is not one this code wrote
# The options a search chooses, with their defaults' values taken from trainer.config.TrainConfig.
SEARCHED = ("backbone", "image_size", "pooling", "head_c", "class_weights", "feature_augment", "head_refit")
# The options that make a split: a search bound to other values chose on other photos.
SPLIT_OPTIONS = ("seed", "validation_fraction", "test_fraction", "validation_file", "group_pattern")


def read(path: Path) -> dict | None:
    """The state a search left at `path`, or None when there is none. A file that is not a
    search's state is an InputError naming it (never silently replaced: it may be the user's)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(f"{path}: {path.stat().st_size} bytes is not a search's state; move it aside")
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a search's state ({error}); move it aside and search again") from None
    if not isinstance(state, dict) or state.get("version") != VERSION or not isinstance(state.get("trials"), list):
        raise InputError(f"{path}: not a search's state this trainer wrote; move it aside and search again")
    return state


def write(path: Path, state: dict) -> None:
    """The whole state, atomically: a reset mid-write leaves the previous state."""
    write_atomically(Path(path), json.dumps(state, indent=1, sort_keys=True) + "\n")


def choice(state: dict | None) -> dict:
    """The options the search chose ({} when it chose nothing yet), checked to be options it
    searches with values of plain types."""
    chosen = (state or {}).get("chosen") or {}
    options = chosen.get("options") or {}
    if not isinstance(options, dict) or set(options) - set(SEARCHED):
        raise InputError(
            f"{STATE}: its choice names options a search does not choose: {sorted(set(options) - set(SEARCHED))}"
        )
    for name, value in options.items():
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise InputError(f"{STATE}: its choice of {name} is {value!r}, not an option's value")
    return dict(options)


def applied(values: dict, explicit: set[str], state: dict | None, where: str) -> tuple[dict, list[str]]:
    """`values` (every option) with the search's choice taken for each option the user did not
    set (`explicit`); and what to say: the choice taken, and each option set that wins over it.
    A choice made on another split (SPLIT_OPTIONS differ) is not taken, and that is said."""
    chosen = choice(state)
    if not chosen:
        return values, []
    bound = state.get("binding", {}).get("split", {})
    moved = [name for name in SPLIT_OPTIONS if name in bound and bound[name] != values.get(name)]
    if moved:
        return values, [
            f"search: {where} chose on another split ({', '.join(moved)} differ); not taken: run invoke tune again"
        ]
    taken = {name: value for name, value in chosen.items() if name not in explicit}
    base = state.get("binding", {}).get("space", {}).get("given", {})
    differ = [f"{name} {value}" for name, value in chosen.items() if base.get(name) != value]
    said = [
        f"search: training what {where} chose: {', '.join(differ)}"
        if differ
        else f"search: {where} kept the options it was given (none beat them beyond the noise)"
    ]
    said += [
        f"search: {name} {values[name]} as set wins over the search's {value}"
        for name, value in chosen.items()
        if name in explicit and values.get(name) != value
    ]
    return {**values, **taken}, said
