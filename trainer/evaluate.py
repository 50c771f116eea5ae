"""Metrics from labels and predicted probabilities, and evaluating a saved run on new data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.errors import InputError


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random negative,
    ties counting half (the Mann-Whitney statistic, from average ranks). None without both kinds."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores))
    start = 0
    while start < len(sorted_scores):
        end = start
        while end + 1 < len(sorted_scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """How often the true label is among the k most probable."""
    top = np.argsort(-probabilities, axis=1, kind="mergesort")[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(axis=1).mean()) if len(y_true) else 0.0


def log_loss(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean negative log of each true label's probability (clipped at 1e-7); 0 for no images."""
    if not len(y_true):
        return 0.0
    chosen = np.clip(np.asarray(probabilities, dtype=np.float64)[np.arange(len(y_true)), y_true], 1e-7, 1.0)
    return float(-np.log(chosen).mean())


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict:
    """accuracy, per-class precision / recall / f1 / support, macro and support-weighted
    averages, the confusion matrix (rows: true label, columns: predicted, both in `labels`
    order), log-loss, ROC AUC (two classes: of the second label's score; more: the mean of each
    class against the rest) and, with more than three classes, top-3 and top-5 accuracy."""
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
    support = np.array([values["support"] for values in per_class.values()], dtype=float)
    if n == 2:
        auc = roc_auc(y_true == 1, probabilities[:, 1]) if len(y_true) else None
    else:
        per_class_auc = [roc_auc(y_true == i, probabilities[:, i]) for i in range(n)]
        known = [value for value in per_class_auc if value is not None]
        auc = float(np.mean(known)) if known else None
    return {
        "count": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "per_class": per_class,
        "macro_avg": {
            key: float(np.mean([values[key] for values in per_class.values()])) for key in ("precision", "recall", "f1")
        },
        "weighted_avg": {
            key: float(np.average([v[key] for v in per_class.values()], weights=support)) if support.sum() else 0.0
            for key in ("precision", "recall", "f1")
        },
        "roc_auc": auc,
        **{f"top_{k}_accuracy": top_k_accuracy(y_true, probabilities, k) for k in (3, 5) if n > k},
        "confusion_matrix": confusion.tolist(),
        "labels": list(labels),
        "log_loss": log_loss(y_true, probabilities),
    }


def summary_line(metrics: dict) -> str:
    f1 = ", ".join(f"{label} {values['f1']:.3f}" for label, values in metrics["per_class"].items())
    auc = f", ROC AUC {metrics['roc_auc']:.3f}" if metrics.get("roc_auc") is not None else ""
    return (
        f"accuracy {metrics['accuracy']:.3f}, log-loss {metrics['log_loss']:.3f}{auc}, F1 {f1} "
        f"({metrics['count']} images)"
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
