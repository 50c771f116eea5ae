"""--target-recall CLASS=R: the operating point chosen on the deployed head's out-of-fold
probabilities, stored with the model and applied by evaluate, predict and the metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import run_module
from trainer import cells, decision
from trainer.config import parse_target
from trainer.errors import InputError


@pytest.mark.parametrize(
    "text, message",
    [
        ("CD", "'CD' is not CLASS=RECALL"),
        ("=0.9", "is not CLASS=RECALL"),
        ("CD=high", "'high' is not a number"),
        ("CD=0", "a recall must be in (0, 1], got 0"),
        ("CD=1.5", "a recall must be in (0, 1], got 1.5"),
        ("CD=nan", "a recall must be in (0, 1]"),
    ],
)
def test_a_bad_target_is_one_line_naming_the_option(text, message):
    with pytest.raises(InputError) as refused:
        parse_target(text)
    assert str(refused.value).startswith("--target-recall: ") and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_threshold_is_the_largest_that_reaches_the_recall():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    positive = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1, 1], dtype=bool)  # 7 positives
    for recall, expected in ((1.0, 0.05), (0.85, 0.1), (0.7, 0.3), (0.5, 0.5), (0.01, 0.9)):
        threshold = decision.threshold_for(scores, positive, recall)
        assert threshold == expected
        at = decision.at_threshold(scores, positive, threshold)
        assert at["recall"] >= recall and at["positives"] == 7
        higher = scores[scores > threshold]
        if len(higher):  # any higher threshold misses the target
            assert decision.at_threshold(scores, positive, higher.min())["recall"] < recall


def test_with_more_classes_the_class_goes_against_the_rest():
    rule = decision.Decision("b", 1, 0.2, 0.9)
    probabilities = np.array([[0.7, 0.25, 0.05], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    assert rule.predict(probabilities).tolist() == [1, 0, 2, 1]
    assert decision.ARGMAX.predict(probabilities).tolist() == [0, 0, 2, 1]
    _, record = decision.choose("b=0.5", ["a", "b", "c"], probabilities, np.array([1, 1, 2, 1]))
    assert "b against the rest" in record["note"]


def test_a_stored_decision_that_does_not_fit_the_labels_is_refused(tmp_path):
    decision.write(tmp_path, {"label": "CD", "index": 0, "threshold": 0.2, "target_recall": 0.95})
    assert decision.read(tmp_path, ["CD", "UD"]) == decision.Decision("CD", 0, 0.2, 0.95)
    with pytest.raises(InputError, match="names class 'CD' at 0, which labels.txt does not; retrain"):
        decision.read(tmp_path, ["UD", "CD"])
    (tmp_path / decision.DECISION).write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="not a decision file"):
        decision.read(tmp_path, ["CD", "UD"])
    assert decision.read(tmp_path / "elsewhere", ["CD", "UD"]) is decision.ARGMAX


def test_bad_settings_are_refused_before_any_work(cli, demo_dir):
    folder = demo_dir / "Images"
    code, _, err = cli("train", "--folder", folder, "--target-recall", "CD=1.2", "--output", demo_dir / "x")
    assert code == 2 and err.strip() == "trainer: error: --target-recall: a recall must be in (0, 1], got 1.2"
    code, _, err = cli("train", "--folder", folder, "--target-recall", "CD=0.9", "--fine-tune-layers", "4")
    assert code == 2 and "needs bottleneck mode" in err
    code, _, err = cli("train", "--folder", folder, "--target-recall", "XD=0.9", "--output", demo_dir / "y")
    assert code == 2 and "no class 'XD' in this data; the classes are CD, UD" in err
    assert "featuriz" not in err and not (demo_dir / "y").exists()


@pytest.mark.slow
def test_on_held_out_images_the_recall_lands_near_the_target(cli, tmp_path):
    """2,000 generated photos with 15% of each class's labels flipped, so that the most likely
    class misses about one CD image in six and a recall of 0.95 needs a lower threshold. The
    test split (30%: 300 CD images) measures the recall the rule gives to about +-0.013. Train,
    predict and evaluate run in this process, whose TensorFlow is loaded already."""
    made = run_module("demo-data", tmp_path / "demo", "--per-class", "1000", "--image-size", "64")
    assert made.returncode == 0, made.stderr
    images = tmp_path / "demo" / "Images"
    rows = list(csv.reader((images / "training_data.csv").open()))
    rng = np.random.default_rng(0)
    for row in rows[1:]:
        if rng.random() < 0.15:
            row[1] = {"CD": "UD", "UD": "CD"}[row[1]]
    with (images / "noisy.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    run = tmp_path / "run"
    code, _, err = cli(
        "train", "--folder", images, "--file", "noisy.csv", "--image-size", "64", "--feature-augment", "none",
        "--test-fraction", "0.3", "--target-recall", "CD=0.95", "--no-audit", "--export", "onnx",
        "--no-export-benchmark", "--workspace", tmp_path / "ws", "--output", run,
    )  # fmt: skip
    assert code == 0, err[-3000:]
    point = json.loads((run / decision.DECISION).read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    test, chosen_on = point["test"], point["out_of_fold"]
    print("out of fold:", chosen_on, "test:", test, "threshold", point["threshold"])
    assert chosen_on["images"] == 1400 and chosen_on["recall"] >= 0.95
    assert test["positives"] >= 280 and abs(test["recall"] - 0.95) <= 0.04, test
    assert metrics["per_class"]["CD"]["recall"] == pytest.approx(test["recall"])  # the metrics follow the rule
    # The most likely class alone would have missed far more: the threshold did the work.
    predictions = list(cells.read_dicts((run / "predictions.csv").open()))
    test_rows = [row for row in predictions if row["Split"] == "test"]
    argmax_recall = np.mean([float(r["P(CD)"]) > float(r["P(UD)"]) for r in test_rows if r["Label"] == "CD"])
    assert argmax_recall < 0.90, argmax_recall
    assert all((row["PredictedLabel"] == "CD") == (float(row["P(CD)"]) >= point["threshold"]) for row in test_rows)
    # predict and evaluate apply it; the report shows it; the ONNX file carries it.
    cracked = [row["ImagePath"] for row in test_rows if float(row["P(CD)"]) >= point["threshold"]][:5]
    code, _, err = cli("predict", "--model", run, "--output", tmp_path / "predicted.csv", *cracked)
    assert code == 0, err
    predicted = list(cells.read_dicts((tmp_path / "predicted.csv").open()))
    assert [row["PredictedLabel"] for row in predicted] == ["CD"] * len(cracked)
    code, _, err = cli("evaluate", "--model", run, "--output", tmp_path / "evaluated.json")
    assert code == 0, err
    evaluated = json.loads((tmp_path / "evaluated.json").read_text())
    assert evaluated["per_class"]["CD"]["recall"] == pytest.approx(test["recall"])
    report = (run / "report.html").read_text()
    assert "Operating point (--target-recall)" in report and (run / "operating_point.png").stat().st_size > 0
    import onnx

    properties = {entry.key: entry.value for entry in onnx.load(str(run / "model.onnx")).metadata_props}
    assert json.loads(properties["decision"])["threshold"] == point["threshold"]
    assert json.loads(properties["labels"]) == ["CD", "UD"]
