"""trainer/evaluate.py: the metrics, from labels and probabilities and from a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.metrics import classification_metrics, roc_auc, top_k_accuracy


def test_roc_auc_counts_pairs_and_ties_count_half():
    # 3 positives x 2 negatives = 6 pairs; ordered right: (0.9>0.2, 0.9>0.5, 0.5=0.5 half, 0.5>0.2, 0.1<both).
    assert roc_auc(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.5, 0.1, 0.5, 0.2])) == pytest.approx(3.5 / 6)
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([1, 1]), np.array([0.3, 0.4])) is None


def test_top_k_and_weighted_averages():
    probabilities = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]])
    y = np.array([1, 0, 0, 3])
    assert top_k_accuracy(y, probabilities, 1) == 0.5
    assert top_k_accuracy(y, probabilities, 2) == 0.75  # the second row's 0 is last
    metrics = classification_metrics(y, probabilities, ["a", "b", "c", "d"])
    assert "top_3_accuracy" in metrics and "top_5_accuracy" not in metrics
    # a: precision 1/2 recall 1/2 support 2; b: 0, 0, 1; d: 1, 1, 1; c has no support.
    assert metrics["weighted_avg"]["recall"] == pytest.approx((0.5 * 2 + 0 + 1) / 4)
    assert metrics["macro_avg"]["recall"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    two = classification_metrics(np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.4, 0.6], [0.7, 0.3]]), ["CD", "UD"])
    assert two["roc_auc"] == pytest.approx(1.0) and "top_3_accuracy" not in two


# --- one real run on the demo data --------------------------------------------------------------


def test_metrics_cover_auc_averages_and_validation(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for part in (metrics, metrics["validation"]):
        assert 0.0 <= part["roc_auc"] <= 1.0
        assert set(part["weighted_avg"]) == {"precision", "recall", "f1"}
    rows = (run_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "ImagePath,Label,Split,PredictedLabel,Score,P(CD),P(UD)"
    assert sum(",test," in row for row in rows) == metrics["count"]


def test_evaluating_on_images_the_model_has_seen_says_so_and_scores_the_new_ones_apart(cli, run_dir, tmp_path):
    """evaluate --folder on the training folder: by content hash it finds the images the run
    trained or validated on (copies under other names too), warns, and scores the test images
    (the only unseen ones) apart; predict notes the same."""
    import csv

    images = run_dir.parent / "Images"
    split = list(csv.DictReader((run_dir / "split.csv").open()))
    learnt = {name: sum(row["Split"] == name for row in split) for name in ("train", "validation", "test")}
    code, out, err = cli("evaluate", "--model", run_dir, "--folder", images, "--file", "training_data.csv")
    assert code == 0, err
    seen = json.loads(out)["seen"]
    assert (seen["train"], seen["validation"], seen["unseen"]) == (
        learnt["train"],
        learnt["validation"],
        learnt["test"],
    )
    assert seen["unseen_metrics"]["count"] == learnt["test"]
    warning = next(line for line in err.splitlines() if "flatters" in line)
    assert warning.startswith(f"WARNING: {learnt['train'] + learnt['validation']} of these {len(split)} images are ")
    assert f"on the {learnt['test']} it has not seen: accuracy " in warning
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(Path(next(row["ImagePath"] for row in split if row["Split"] == "train")).read_bytes())
    code, out, err = cli("predict", "--model", run_dir, copy)
    assert code == 0, err
    assert "note: 1 of the 1 image given is one the model was trained on (1) or validated on (0)" in err
    code, out, err = cli("evaluate", "--model", run_dir)  # its own test split: nothing to say
    assert code == 0 and "flatters" not in err and "seen" not in json.loads(out)
