"""The decision rule a model's probabilities go through: the most likely class, or, with
--target-recall CLASS=R, an operating point: CLASS whenever its probability reaches a threshold
chosen so that CLASS's recall reaches R.

An inspector who must not miss more than 5% of the cracks says `--target-recall CD=0.95`. The
threshold is chosen on out-of-fold probabilities of the head the run deploys (the same layers,
L2, views, class weights and epochs), over the training and validation images: each image's
probability comes from a head that did not see it, so the recall it promises is what unseen
images get, within the sampling error of the images it was chosen on. The test split is not
used to choose; it only reports what the point gave.

With more than two classes the rule is one class against the rest: CLASS when its probability
reaches the threshold, otherwise the most likely of the other classes. Stored in decision.json
beside the model; evaluate and predict apply it, and the ONNX export carries it in its metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer import runfolder
from trainer.atomic import write_atomically
from trainer.config import parse_target
from trainer.errors import InputError, listed

DECISION = runfolder.DECISION


def check_label(text: str, labels: list[str]) -> None:
    label, _ = parse_target(text)
    if label not in labels:
        raise InputError(f"--target-recall: no class {label!r} in this data; the classes are {listed(labels)}")


@dataclass(frozen=True)
class Decision:
    """argmax when label is None; else `label` (at `index`) when its probability >= threshold."""

    label: str | None = None
    index: int | None = None
    threshold: float | None = None
    target_recall: float | None = None

    def predict(self, probabilities: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.index is None or not len(probabilities):
            return probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=int)
        others = probabilities.copy()
        others[:, self.index] = -np.inf
        return np.where(probabilities[:, self.index] >= self.threshold, self.index, others.argmax(axis=1))

    def describe(self) -> str:
        if self.index is None:
            return "the most likely class"
        return f"{self.label} when P({self.label}) >= {self.threshold:.4f} (target recall {self.target_recall:g})"


ARGMAX = Decision()


def threshold_for(scores: np.ndarray, positive: np.ndarray, recall: float) -> float:
    """The largest threshold at which at least `recall` of the positives score >= it."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, dtype=bool)])[::-1]
    if not len(ranked):
        raise InputError("--target-recall: the class has no training or validation images to choose a threshold on")
    needed = min(len(ranked), max(1, math.ceil(recall * len(ranked) - 1e-9)))
    return float(ranked[needed - 1])


def at_threshold(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    """Recall and precision of `scores >= threshold` for the positives, and how many images."""
    positive = np.asarray(positive, dtype=bool)
    chosen = np.asarray(scores) >= threshold
    hits = int((chosen & positive).sum())
    return {
        "recall": hits / int(positive.sum()) if positive.any() else None,
        "precision": hits / int(chosen.sum()) if chosen.any() else None,
        "images": int(len(positive)),
        "positives": int(positive.sum()),
    }


def curve(scores: np.ndarray, positive: np.ndarray, points: int = 200) -> dict:
    """A precision-recall curve, thinned to at most `points` thresholds (for the report)."""
    from sklearn.metrics import precision_recall_curve

    positive = np.asarray(positive, dtype=bool)
    if not positive.any() or positive.all():
        return {"recall": [], "precision": []}
    precision, recall, _ = precision_recall_curve(positive, scores)
    keep = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).round().astype(int))
    return {
        "recall": [round(float(v), 4) for v in recall[keep]],
        "precision": [round(float(v), 4) for v in precision[keep]],
    }


def choose(text: str, labels: list[str], probabilities: np.ndarray, y: np.ndarray) -> tuple[Decision, dict]:
    """The Decision for --target-recall `text` from out-of-fold probabilities of images with
    labels y, and its record (the point and curve it was chosen on)."""
    label, recall = parse_target(text)
    index = labels.index(label)
    positive = np.asarray(y) == index
    scores = np.asarray(probabilities)[:, index]
    threshold = threshold_for(scores, positive, recall)
    decision = Decision(label, index, threshold, recall)
    record = {**asdict(decision), "rule": decision.describe(), "out_of_fold": at_threshold(scores, positive, threshold),
              "out_of_fold_curve": curve(scores, positive)}  # fmt: skip
    if len(labels) > 2:
        record["note"] = (
            f"{label} against the rest: {label} when its probability reaches the threshold, else the most likely other class"
        )
    return decision, record


def write(folder: Path, record: dict) -> None:
    write_atomically(folder / DECISION, json.dumps(record, indent=2) + "\n")


def read(folder: Path, labels: list[str]) -> Decision:
    """The Decision stored beside a model (decision.json), or argmax when there is none."""
    path = Path(folder) / DECISION
    if not path.is_file():
        return ARGMAX
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        decision = Decision(
            record["label"], int(record["index"]), float(record["threshold"]), float(record["target_recall"])
        )
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise InputError(
            f"{path}: damaged, not a decision file ({type(error).__name__}: {error}); {runfolder.DAMAGED}"
        ) from None
    if decision.index >= len(labels) or labels[decision.index] != decision.label:
        raise InputError(
            f"{path}: names class {decision.label!r} at {decision.index}, which labels.txt does not; retrain"
        )
    return decision
