"""Evaluation: a run's metrics on its held-out splits as it trains, and a saved run's on its own
test split or on other labelled images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer import runfolder
from trainer.data.report import log_report
from trainer.data.rows import load_rows
from trainer.data.split import learnt_from, read_split
from trainer.data.validate import note_usable, validate
from trainer.errors import InputError, counted, listed
from trainer.metrics import classification_metrics, summary_line
from trainer.predict import load_run

log = logging.getLogger("trainer")


def evaluate_splits(config, data, predictor, datasets: dict, decision=None) -> tuple[dict, dict]:
    """Metrics and probabilities on test and validation (and train, --metrics-on-train), each
    image's label decided by `decision` (trainer.decision; the most likely class by default)."""
    metrics, probabilities = {}, {}
    for name in ("test", "validation", "train") if config.metrics_on_train else ("test", "validation"):
        probabilities[name] = predictor.predict(datasets["train_eval" if name == "train" else name], verbose=0)
        predicted = None if decision is None else decision.predict(probabilities[name])
        metrics[name] = classification_metrics(data.y(name), probabilities[name], data.labels, predicted)
    log.info("test: %s", summary_line(metrics["test"]))
    if config.metrics_on_train:
        log.info("train: %s", summary_line(metrics["train"]))
    return metrics, probabilities


def evaluate_run(run_dir: str | Path, folder: str | None, file: str | None, strict: bool, batch_size: int) -> dict:
    """Evaluate a run's model on a folder or CSV, or, with no folder, on the run's own test split."""
    run = load_run(run_dir)
    if folder is None:
        split_path = run.path / runfolder.SPLIT
        if not split_path.is_file():
            raise InputError(f"{run.path}: no split.csv; give --folder with the images to evaluate on")
        rows = read_split(split_path)["test"]
    else:
        # The run's own label rules (--label-folder, --merge-labels) name the classes it knows.
        config = runfolder.read_json(run.path / runfolder.CONFIG)
        label_rules = (config.get("label_folder") or "auto", config.get("merge_labels"))
        rows, report = load_rows(folder, file, *label_rules)
        rows = validate(rows, report, strict=strict, min_class_size=1, allow_one_class=True)
        note_usable(report, rows)
        log_report(report)
    unknown = sorted({row.label for row in rows} - set(run.labels))
    if unknown:
        raise InputError(
            f"label(s) {listed(map(repr, unknown))} were never seen in training; this model knows {listed(run.labels)}"
        )
    index = {label: i for i, label in enumerate(run.labels)}
    probabilities = run.predict([str(row.path) for row in rows], batch_size)
    y_true = np.array([index[row.label] for row in rows])
    predicted = run.decision.predict(probabilities)
    metrics = classification_metrics(y_true, probabilities, run.labels, predicted)
    if folder is not None:
        seen_apart(metrics, rows, learnt_from(run.path / runfolder.SPLIT), y_true, probabilities, predicted, run.labels)
    return metrics


def seen_apart(metrics: dict, rows, learnt: dict, y_true, probabilities, predicted, labels) -> None:
    """When some of the images are ones the model trained or validated on (same content), say
    so, and score the unseen ones apart: metrics["seen"] holds the counts and the unseen images'
    metrics (None when every image was seen)."""
    where = [learnt.get(row.sha256) for row in rows]
    seen = sum(split is not None for split in where)
    if not seen:
        return
    unseen = np.array([split is None for split in where])
    counts = {name: sum(split == name for split in where) for name in ("train", "validation")}
    apart = (
        classification_metrics(y_true[unseen], probabilities[unseen], labels, np.asarray(predicted)[unseen])
        if unseen.any()
        else None
    )
    metrics["seen"] = {**counts, "unseen": int(unseen.sum()), "unseen_metrics": apart}
    on_unseen = (
        f"on the {int(unseen.sum())} it has not seen: accuracy {apart['accuracy']:.3f}"
        if apart
        else "no image here is new to it, so this is no test of the model"
    )
    log.warning(
        "WARNING: %d of these %s %s the model was trained on (%d) or validated on (%d), so the overall score "
        "flatters it; %s",
        seen, counted(len(rows), "image"), "is one" if seen == 1 else "are ones", counts["train"], counts["validation"],
        on_unseen,
    )  # fmt: skip
