"""The split: deterministic, stratified, seeded, with every group whole (trainer.data.groups:
near-duplicates and the groups a user names); and split.csv, which keeps it with the run so that
evaluation and resume use the same one."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from trainer.data.rows import SPLITS, Row
from trainer.errors import InputError
from trainer.names import shown


def sizes(count: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of a class's `count` images go to the test and the validation split: at least
    one each (when its fraction is not 0), and at least one left to train on."""
    n_test = max(1, round(count * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(count * validation_fraction)) if validation_fraction > 0 else 0
    n_test = min(n_test, count - 2) if n_val else min(n_test, count - 1)
    n_val = min(n_val, count - n_test - 1)
    return n_test, n_val


def split(rows: list[Row], validation_fraction: float, test_fraction: float, seed: int,
          groups: Sequence[Hashable] | None = None) -> dict[str, list[Row]]:  # fmt: skip
    """Stratified and seeded: every class gets at least one image in each split. `groups`: a key
    per row; rows with one key go to one split together (None: every row alone).

    Each group counts for its most frequent label (its stratum). Per stratum, in label order,
    the groups are shuffled and dealt: to the test split while it is short of its share, to
    validation next, the rest to training; a group that would overshoot a share by more than it
    would fill goes on (to training at the latest), and a stratum's last group goes to training
    when that has none of the label yet. With every row alone this is the split of a plain
    stratified shuffle, draw for draw: data without groups splits as it did before groups
    existed (tests/data/test_split.py holds that). InputError when the groups leave a class
    without an image in some split."""
    keys = list(range(len(rows))) if groups is None else list(groups)
    ordered = sorted(zip(rows, keys, strict=True), key=lambda pair: (pair[0].label, str(pair[0].path)))
    members: dict[Hashable, list[Row]] = defaultdict(list)
    for row, key in ordered:
        members[key].append(row)
    strata: dict[str, list[list[Row]]] = defaultdict(list)
    for group in members.values():
        counts = Counter(row.label for row in group)
        strata[min(counts, key=lambda label: (-counts[label], label))].append(group)
    totals = Counter(row.label for row in rows)
    wanted = {label: sizes(totals[label], validation_fraction, test_fraction) for label in totals}
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Row]] = {name: [] for name in SPLITS}
    placed: dict[str, Counter] = {name: Counter() for name in SPLITS}
    for label in sorted(strata):
        order = rng.permutation(len(strata[label]))
        for position, index in enumerate(order):
            group = strata[label][index]
            name = _destination(label, len(group), placed, wanted[label], last=position == len(order) - 1)
            parts[name] += group
            placed[name].update(row.label for row in group)
    if groups is not None:
        _check_every_class_in_every_split(parts, totals, validation_fraction, test_fraction, members)
    return parts


def _destination(label: str, size: int, placed: dict[str, Counter], wanted: tuple[int, int], last: bool) -> str:
    if last and not placed["train"][label]:
        return "train"
    for name, share in zip(("test", "validation"), wanted, strict=True):
        have = placed[name][label]
        if have < share and have + size - share <= share - have:  # overshoots by no more than it fills
            return name
    return "train"


def _check_every_class_in_every_split(parts, totals, validation_fraction, test_fraction, members) -> None:
    """InputError, one line naming the class, the split it misses and its largest group, when
    keeping the groups whole left a class out of a split."""
    needed = [name for name, fraction in zip(SPLITS, (1.0, validation_fraction, test_fraction), strict=True)
              if fraction > 0]  # fmt: skip
    for label in sorted(totals):
        missing = [name for name in needed if not any(row.label == label for row in parts[name])]
        if not missing:
            continue
        key, group = max(members.items(), key=lambda item: sum(row.label == label for row in item[1]))
        held = sum(row.label == label for row in group)
        raise InputError(
            f"the groups cannot be stratified: class {label!r} has no {' or '.join(missing)} image once every group "
            f"stays in one split (its largest group, {group_name(key, group)}, holds {held} of its {totals[label]} "
            "images); name smaller groups, or train without them"
        )


def group_name(key: Hashable, group: list[Row]) -> str:
    """A group as a message names it: its key when a user named it, else its first image."""
    if isinstance(key, str):
        return f"group {shown(key, 60)}"
    return f"the near-duplicates of {shown(group[0].written, 80)}"


def write_split(parts: dict[str, list[Row]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImagePath", "Label", "Split", "Sha256"])
        for name in SPLITS:
            for row in parts[name]:
                writer.writerow([str(row.path), row.label, name, row.sha256])


def read_split(path: Path) -> dict[str, list[Row]]:
    parts: dict[str, list[Row]] = {name: [] for name in SPLITS}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            parts[record["Split"]].append(
                Row(line, record["ImagePath"], Path(record["ImagePath"]), record["Label"], record["Sha256"])
            )
    return parts


def learnt_from(path: Path) -> dict[str, str]:
    """Content hash -> "train" or "validation" for every image a run (its split.csv at path)
    trained or validated on: what evaluate and predict compare other images with, so that a
    score on images the model has seen is never mistaken for a test of it. Empty when there is
    no split.csv (a bare .keras file, a SavedModel)."""
    if not path.is_file():
        return {}
    parts = read_split(path)
    return {row.sha256: name for name in ("train", "validation") for row in parts[name] if row.sha256}
