"""Metrics from labels and predicted probabilities, and evaluating a saved run on new data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.errors import InputError


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict:
    """accuracy, per-class precision / recall / f1 / support, macro averages, the confusion
    matrix (rows: true label, columns: predicted, both in `labels` order) and log-loss."""
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = probabilities.argmax(axis=1)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for index, label in enumerate(labels):
        true_positive = confusion[index, index]
        predicted = confusion[:, index].sum()
        actual = confusion[index, :].sum()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(actual),
        }
    eps = 1e-7
    chosen = np.clip(probabilities[np.arange(len(y_true)), y_true], eps, 1.0)
    return {
        "count": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "per_class": per_class,
        "macro_avg": {
            key: float(np.mean([values[key] for values in per_class.values()])) for key in ("precision", "recall", "f1")
        },
        "confusion_matrix": confusion.tolist(),
        "labels": list(labels),
        "log_loss": float(-np.log(chosen).mean()) if len(y_true) else 0.0,
    }


def summary_line(metrics: dict) -> str:
    f1 = ", ".join(f"{label} {values['f1']:.3f}" for label, values in metrics["per_class"].items())
    return (
        f"accuracy {metrics['accuracy']:.3f}, log-loss {metrics['log_loss']:.3f}, F1 {f1} ({metrics['count']} images)"
    )


def evaluate_run(run_dir: str | Path, folder: str | None, file: str | None, strict: bool, batch_size: int) -> dict:
    """Evaluate a run's model on a folder or CSV, or, with no folder, on the run's own test split."""
    from trainer import data, predict

    run = predict.load_run(run_dir)
    if folder is None:
        split_path = run.path / "split.csv"
        if not split_path.is_file():
            raise InputError(f"{run.path}: no split.csv; give --folder with the images to evaluate on")
        rows = data.read_split(split_path)["test"]
    else:
        rows, report = data.load_rows(folder, file)
        rows = data.validate(rows, report, strict=strict, min_class_size=1, allow_one_class=True)
        predict.log_report(report)
    unknown = sorted({row.label for row in rows} - set(run.labels))
    if unknown:
        raise InputError(
            f"label(s) {', '.join(map(repr, unknown))} were never seen in training; "
            f"this model knows {', '.join(run.labels)}"
        )
    index = {label: i for i, label in enumerate(run.labels)}
    probabilities = run.predict([str(row.path) for row in rows], batch_size)
    y_true = np.array([index[row.label] for row in rows])
    return classification_metrics(y_true, probabilities, run.labels)


def write_metrics(metrics: dict, path: Path) -> None:
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
