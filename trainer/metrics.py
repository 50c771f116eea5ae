"""Metrics from labels and predicted probabilities: what metrics.json holds and the report shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer import runfolder
from trainer.errors import counted


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve of one class against the rest (ties count half); None when the
    labels hold only one kind, where it is undefined."""
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """How often the true label is among the k most probable."""
    from sklearn.metrics import top_k_accuracy_score

    if not len(y_true):
        return 0.0
    labels = np.arange(probabilities.shape[1])
    return float(top_k_accuracy_score(y_true, probabilities, k=k, labels=labels))


def normalized(probabilities: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1: float32 softmax outputs miss by about 1e-7, past which
    scikit-learn's log_loss warns and then renormalizes anyway."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    totals = probabilities.sum(axis=1, keepdims=True)
    return probabilities / np.where(totals > 0, totals, 1.0)


def log_loss(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """scikit-learn's log-loss over every class of `probabilities`; 0 for no images. The one
    metrics.json reports and the fine-tuning guard compares."""
    from sklearn.metrics import log_loss as sk_log_loss

    if not len(y_true):
        return 0.0
    classes = np.arange(np.shape(probabilities)[1])
    return float(sk_log_loss(y_true, normalized(probabilities), labels=classes))


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: list[str], predicted: np.ndarray | None = None
) -> dict:
    """accuracy, per-class precision / recall / f1 / support, macro and support-weighted
    averages, the confusion matrix (rows: true label, columns: predicted, both in `labels`
    order), log-loss, ROC AUC (two classes: of the second label's score; more: the mean of each
    class against the rest, over the classes present) and, with more than three classes, top-3
    and top-5 accuracy. `predicted`: each image's decided class (trainer.decision), when not the
    most likely one. scikit-learn computes them; this decides their names and edge cases."""
    from sklearn import metrics as sk

    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = probabilities.argmax(axis=1) if predicted is None else np.asarray(predicted, dtype=int)
    n = len(labels)
    classes = np.arange(n)
    confusion = sk.confusion_matrix(y_true, y_pred, labels=classes)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0.0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    if n == 2:
        auc = roc_auc(y_true == 1, probabilities[:, 1])
    else:
        known = [value for value in (roc_auc(y_true == i, probabilities[:, i]) for i in classes) if value is not None]
        auc = float(np.mean(known)) if known else None
    empty = not len(y_true)
    return {
        "count": int(len(y_true)),
        "accuracy": 0.0 if empty else float(sk.accuracy_score(y_true, y_pred)),
        "per_class": per_class,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted_avg": {
            key: float(np.average(values, weights=support)) if support.sum() else 0.0
            for key, values in (("precision", precision), ("recall", recall), ("f1", f1))
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
        f"({counted(metrics['count'], 'image')})"
    )


def write_metrics(metrics: dict, path: Path) -> None:
    runfolder.write_json(path, metrics)
