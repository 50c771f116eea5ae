"""A run's data: the rows read, validated and split, with what validation learnt of each file."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer import places, record
from trainer.config import TrainConfig
from trainer.data import corrections as label_corrections
from trainer.data.groups import held_out_twins, split_keys
from trainer.data.report import Report, log_report
from trainer.data.rows import SPLITS, Row, load_rows
from trainer.data.split import split
from trainer.data.validate import note_usable, validate
from trainer.errors import InputError, listed, os_error_sentence

log = logging.getLogger("trainer")


@dataclass
class Data:
    labels: list[str]
    parts: dict[str, list[Row]]  # by split: train, validation, test
    report: Report
    files: dict = field(default_factory=dict)  # every listed file's FileState, as validation read it
    listed: tuple = ((), None)  # (rows, validation rows) as listed, before validation: the digest's input
    corrections: dict | None = None  # what the decisions in force changed (trainer.data.corrections.apply's summary)

    def y(self, name: str) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[row.label] for row in self.parts[name]], dtype=np.int32)

    def paths(self, name: str) -> list[str]:
        return [str(row.path) for row in self.parts[name]]

    def labels_by_split(self) -> dict[str, np.ndarray]:
        return {name: self.y(name) for name in SPLITS}

    def paths_by_split(self) -> dict[str, list[str]]:
        return {name: self.paths(name) for name in SPLITS}

    def rows(self) -> list[Row]:
        """Every image once, part after part (train, validation, test)."""
        return [row for rows in self.parts.values() for row in rows]

    def fingerprint(self) -> str:
        """One hash of every image's content, label and split: what the run was trained on."""
        digest = hashlib.sha256()
        for name in SPLITS:
            for row in sorted(self.parts[name], key=lambda row: row.sha256):
                digest.update(f"{name},{row.label},{row.sha256}\n".encode())
        return digest.hexdigest()


def load_data(config: TrainConfig) -> Data:
    """Read, validate (each file once) and split the data the options name: with
    --validation-file, that CSV is the validation split and the test split comes from the rest."""
    rows, report = load_rows(config.folder, config.file, config.label_folder, config.merge_labels,
                             config.allow_outside_folder)  # fmt: skip
    log.info("read %d rows from %s", report.rows_read, config.file or config.folder)
    as_listed = (list(rows), None)
    if config.validation_file:
        validation_rows, validation_report = load_rows(
            config.folder, config.validation_file, config.label_folder, config.merge_labels, config.allow_outside_folder
        )
        as_listed = (as_listed[0], list(validation_rows))
        validation_rows = validate(
            validation_rows, validation_report, strict=config.strict, min_class_size=1, allow_one_class=True
        )
        log_report(validation_report)
        rows = validate(rows, report, strict=config.strict, min_class_size=2)
        thumbnails = {**report.thumbnails, **validation_report.thumbnails}
        held_out = {row.sha256 for row in validation_rows} | held_out_twins(rows, validation_rows, thumbnails,
                                                                             config.seed)  # fmt: skip
        before = len(rows)
        rows = [row for row in rows if row.sha256 not in held_out]
        if len(rows) < before:
            log.warning("WARNING: %d training image(s) also in --validation-file, or near-duplicates of its images: "
                        "kept for validation only", before - len(rows))  # fmt: skip
        parts = split(rows, 0.0, config.test_fraction, config.seed,
                      split_keys(rows, report.thumbnails, config.group_pattern, config.seed))  # fmt: skip
        parts["validation"] = validation_rows
        report.files.update(validation_report.files)
    else:
        rows = validate(rows, report, strict=config.strict)
        parts = split(rows, config.validation_fraction, config.test_fraction, config.seed,
                      split_keys(rows, report.thumbnails, config.group_pattern, config.seed))  # fmt: skip
    log_report(report)
    parts, corrected = _corrected(config, parts)
    _say_usable(report, [row for part in parts.values() for row in part], corrected)
    labels = sorted({row.label for name in SPLITS for row in parts[name]})
    unknown = sorted({row.label for row in parts["validation"]} - {row.label for row in parts["train"]})
    if unknown:
        raise InputError(f"--validation-file: label(s) {listed(map(repr, unknown))} have no training images")
    for name in SPLITS:
        counts = Counter(row.label for row in parts[name])
        log.info("%-10s %4d images: %s", name, len(parts[name]), ", ".join(f"{k} {counts[k]}" for k in labels))
    return Data(labels, parts, report, report.files, as_listed, corrected)


def _corrected(config: TrainConfig, parts: dict, keep_file: bool = True) -> tuple[dict, dict | None]:
    """The decisions in force (the dataset's record, and --corrections FILE: trainer/record.py)
    applied to the split parts, said in one line. keep_file (training): once they apply cleanly,
    the file's decisions join the record, so a file the run refuses leaves the record as it was."""
    folder = places.record(config)
    rows = [row for part in parts.values() for row in part]
    decisions = record.gather(folder, config.corrections, rows, [Path(config.folder)], settle=keep_file)
    if not decisions.chosen:
        if decisions.skipped:
            log.info("%s", decisions.described())
        return parts, None
    where = " and ".join(place for place in (
        f"the dataset's record {folder} (`invoke decisions` shows it)" if folder is not None else "",
        f"--corrections {config.corrections}" if config.corrections else "") if place)  # fmt: skip
    parts, summary = label_corrections.apply(parts, decisions.chosen, f"the decisions in {where}")
    if "train" in parts:
        untrained = sorted(
            {row.label for rows in parts.values() for row in rows} - {row.label for row in parts["train"]}
        )
        if untrained:
            raise InputError(
                f"the decisions in {where}: class(es) {listed(map(repr, untrained))} have no training image after "
                "them (their images all fall in the validation or test split); relabel more images to them"
            )
    if keep_file:
        _keep_given(folder, decisions)
    log.info("%s: %s", decisions.described(), label_corrections.described(summary))
    summary.update(record=decisions.where or None, file=decisions.file or None, skipped=decisions.skipped)
    summary["in_force"] = decisions.decisions()  # the run keeps them as corrections.csv
    return parts, summary


def _say_usable(report: Report, rows: list[Row], corrected: dict | None) -> None:
    """How many images the run has, said once the decisions in force have dropped or relabelled
    theirs: the count is the sum of the splits (validation's own would count a dropped image)."""
    changed = corrected is not None and (corrected["dropped"] or corrected["relabelled"])
    for note in note_usable(report, rows, " after the decisions in force" if changed else ""):
        log.info("%s", note)


def _keep_given(folder, decisions) -> None:
    try:
        record.keep_given(folder, decisions)
    except OSError as error:
        log.warning("WARNING: %s; this run applies --corrections %s, but a later run will not unless it is given "
                    "again", os_error_sentence(error, folder, doing="writing the dataset's record"),
                    decisions.file)  # fmt: skip


def load_unsplit(config: TrainConfig) -> Data:
    """Read and validate the data the options name, as one part ("all"): what `python -m
    trainer audit` looks at."""
    rows, report = load_rows(config.folder, config.file, config.label_folder, config.merge_labels,
                             config.allow_outside_folder)  # fmt: skip
    log.info("read %d rows from %s", report.rows_read, config.file or config.folder)
    rows = validate(rows, report, strict=config.strict)
    log_report(report)
    parts, corrected = _corrected(config, {"all": rows}, keep_file=False)  # the audit only looks
    _say_usable(report, parts["all"], corrected)
    return Data(sorted({row.label for row in parts["all"]}), parts, report, report.files, corrections=corrected)
