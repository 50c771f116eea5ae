"""The split: deterministic, stratified, seeded; and split.csv, which keeps it with the run so
that evaluation and resume use the same one."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from trainer.data.rows import SPLITS, Row


def split(rows: list[Row], validation_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Row]]:
    """Stratified and seeded: every class gets at least one image in each split."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: (row.label, str(row.path))):
        by_label[row.label].append(row)
    parts: dict[str, list[Row]] = {name: [] for name in SPLITS}
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
