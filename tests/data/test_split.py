"""trainer/data/split.py with groups: every group whole in one split, stratified as well as the
groups allow or refused in one line, and data without groups split exactly as before groups
existed."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data.rows import SPLITS, Row
from trainer.data.split import split
from trainer.errors import InputError


def split_before_groups(rows, validation_fraction, test_fraction, seed):
    """The split as it was before groups (commit 19606e7), kept here as the reference that data
    without groups must still match draw for draw."""
    rng = np.random.default_rng(seed)
    by_label = defaultdict(list)
    for row in sorted(rows, key=lambda row: (row.label, str(row.path))):
        by_label[row.label].append(row)
    parts = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        members = by_label[label]
        order = rng.permutation(len(members))
        n = len(members)
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(n * validation_fraction)) if validation_fraction > 0 else 0
        n_test = min(n_test, n - 2) if n_val else min(n_test, n - 1)
        n_val = min(n_val, n - n_test - 1)
        shuffled = [members[i] for i in order]
        parts["test"] += shuffled[:n_test]
        parts["validation"] += shuffled[n_test : n_test + n_val]
        parts["train"] += shuffled[n_test + n_val :]
    return parts


def rows_of(counts: dict[str, int]) -> list[Row]:
    return [Row(0, f"{label}/{i}.jpg", Path(f"/d/{label}/{i}.jpg"), label, f"{label}{i}")
            for label, count in counts.items() for i in range(count)]  # fmt: skip


def listed(parts):
    return {name: [str(row.path) for row in parts[name]] for name in SPLITS}


@settings(max_examples=200, deadline=None)
@given(
    counts=st.dictionaries(st.sampled_from(["CD", "UD", "a", "b", "Z"]), st.integers(3, 60), min_size=2, max_size=5),
    validation=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]),
    test=st.sampled_from([0.05, 0.1, 0.25, 0.45]),
    seed=st.integers(0, 2**32 - 1),
)
def test_without_groups_the_split_is_the_one_before_groups(counts, validation, test, seed):
    """Every row alone (no groups given, or a key each): the same parts, in the same order, as
    the split before groups, so that figures and published models do not move for nothing."""
    rows = rows_of(counts)
    before = listed(split_before_groups(rows, validation, test, seed))
    assert listed(split(rows, validation, test, seed)) == before
    assert listed(split(rows, validation, test, seed, [row.sha256 for row in rows])) == before


def test_the_shipped_photos_split_as_before():
    """The 400 concrete photos through validation, the near-duplicate search and the split, at
    the default seed and at seed 0: the same split.csv as before groups (its rows' names, labels
    and splits hashed; recorded with commit 19606e7's code)."""
    from tests.conftest import CONCRETE
    from trainer.data.groups import split_keys
    from trainer.data.rows import load_rows
    from trainer.data.validate import validate

    rows, report = load_rows(CONCRETE, "training_data.csv")
    rows = validate(rows, report)
    keys = split_keys(rows, report.thumbnails, None, 42)
    assert len(set(keys)) == len(rows)  # no near-duplicates among them
    for seed, recorded in BEFORE.items():
        parts = split(rows, 0.1, 0.1, seed, split_keys(rows, report.thumbnails, None, seed))
        text = "".join(f"{row.path.name},{row.label},{name}\n" for name in SPLITS for row in parts[name])
        assert hashlib.sha256(text.encode()).hexdigest() == recorded, seed


BEFORE = {
    42: "dd8b913ef2d9d1ed0c12e07335002d3c86a4f51019ca618b63ab34f5d8ef40b4",
    0: "871eadfa462ac23ca6efc3917b5c81a91837e43b269ff37b877e3e2edd19a85c",
}


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.sampled_from(["CD", "UD", "X"]), st.integers(1, 6)), min_size=12, max_size=80),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_group_stays_whole_and_every_class_is_in_every_split_or_refused(sizes, seed):
    rows, keys = [], []
    for number, (label, size) in enumerate(sizes):
        for i in range(size):
            rows.append(Row(0, f"{number}-{i}.jpg", Path(f"/d/{number}-{i}.jpg"), label, f"{number}-{i}"))
            keys.append(f"photo{number}")
    try:
        parts = split(rows, 0.1, 0.1, seed, keys)
    except InputError as error:
        assert str(error).startswith("the groups cannot be stratified: class ")
        assert "\n" not in str(error)
        return
    where = {row.sha256: name for name in SPLITS for row in parts[name]}
    assert sorted(where) == sorted(row.sha256 for row in rows)
    for key in set(keys):
        assert len({where[row.sha256] for row, k in zip(rows, keys, strict=True) if k == key}) == 1
    for name in SPLITS:
        assert {row.label for row in parts[name]} == {row.label for row in rows}


def test_groups_are_dealt_close_to_the_shares():
    """600 images in 150 groups of 1 to 7: each split's share of each class within a group's size
    of what a plain split gives."""
    rng = np.random.default_rng(0)
    rows, keys = [], []
    for number in range(150):
        label = ("CD", "UD")[number % 2]
        for i in range(int(rng.integers(1, 8))):
            rows.append(Row(0, f"{number}-{i}.jpg", Path(f"/d/{number}-{i}.jpg"), label, f"{number}-{i}"))
            keys.append(number)
    parts = split(rows, 0.1, 0.1, 3, keys)
    totals = Counter(row.label for row in rows)
    for name in ("test", "validation"):
        counts = Counter(row.label for row in parts[name])
        for label in totals:
            assert abs(counts[label] - round(0.1 * totals[label])) <= 7, (name, label, counts[label], totals[label])


def test_a_group_that_holds_a_whole_class_is_refused_in_one_line():
    """As the shipped photos by deck photo: photo 7001 holds all 200 UD crops and 33 CD."""
    rows = rows_of({"CD": 200, "UD": 200})
    keys = [("7001" if row.label == "UD" or i < 33 else f"70{2 + i % 9:02d}") for i, row in enumerate(rows)]
    with pytest.raises(InputError) as refused:
        split(rows, 0.1, 0.1, 42, keys)
    assert str(refused.value) == (
        "the groups cannot be stratified: class 'UD' has no validation or test image once every group stays in one "
        "split (its largest group, group '7001', holds 200 of its 200 images); name smaller groups, or train without "
        "them"
    )
