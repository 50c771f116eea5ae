"""The run's last lines, for a person (trainer/result.py's summary): the model, each class's
recall and misses, the report, the labels to check and what reviews them."""

import json
from pathlib import Path

import pytest

from trainer import result


def _run_folder(tmp_path, target=None, flagged=None):
    folder = tmp_path / "run"
    folder.mkdir()
    per_class = {"CD": {"recall": 0.8, "support": 20}, "UD": {"recall": 0.95, "support": 20}}
    files = {
        "metrics.json": {"accuracy": 0.875, "count": 40, "per_class": per_class, "labels": ["CD", "UD"]},
        "manifest.json": {"audit": {"flagged": flagged or {}}, "diagnostics": {}},
        "config.json": {"model_name": "ud-cd-classifier", "target_recall": target},
        "decided.json": {"backbone": "efficientnet_lite0"},
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "report.html").write_text("<html></html>")
    return folder


def test_the_summary_names_the_model_its_misses_the_report_and_the_labels_to_check(tmp_path):
    folder = _run_folder(tmp_path, flagged={"label": 23, "near-duplicate": 2})
    answer = result.answer(folder, "done")
    lines = result.summary(answer, folder=tmp_path / "published", review="the form")
    assert lines[0] == ("ud-cd-classifier: test accuracy 0.875 on 40 images; "
                        "CD recall 0.80 (4 of 20 missed), UD recall 0.95 (1 of 20 missed)")  # fmt: skip
    assert lines[1] == f"  model:   {tmp_path / 'published' / Path(answer['model']).name}"
    assert lines[2] == f"  report:  {tmp_path / 'published' / 'report.html'}"
    assert lines[3] == "  review:  25 labels to check: the form"


def test_a_recall_target_is_named_beside_its_class_and_one_label_is_singular(tmp_path):
    folder = _run_folder(tmp_path, target="CD=0.95", flagged={"label": 1})
    lines = result.summary(result.answer(folder, "done"))
    assert "CD recall 0.80 (4 of 20 missed; target 0.95), UD recall 0.95 (1 of 20 missed)" in lines[0]
    assert lines[-1] == "  review:  1 label to check"
    assert str(folder) in lines[1]


def _report_folder(tmp_path, labels, confusion, point=None, audit=None):
    folder = tmp_path / "20261207-101010-efficientnet_lite0"
    folder.mkdir(parents=True)
    per_class = {label: {"precision": 1.0, "recall": row[i] / sum(row), "f1": 1.0, "support": sum(row)}
                 for i, (label, row) in enumerate(zip(labels, confusion, strict=True))}  # fmt: skip
    metrics = {"accuracy": 0.875, "count": 40, "log_loss": 0.3, "labels": labels, "per_class": per_class,
               "confusion_matrix": confusion, "training_seconds": 9.0}  # fmt: skip
    files = {"metrics.json": metrics, "manifest.json": {"audit": audit or {}},
             "config.json": {"model_name": "ud-cd-classifier", "backbone": "efficientnet_lite0"}}  # fmt: skip
    if point:
        files["decision.json"] = point
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return folder


def test_the_report_is_headed_by_the_model_and_what_it_misses_in_words(tmp_path):
    from trainer.diagnostics import report

    folder = _report_folder(tmp_path, ["CD", "<b>UD"], [[16, 4], [1, 19]])
    page = report.render(folder, folder.name)
    top = page[page.index("<body>") : page.index("<h2>Metrics")]
    assert "<h1>ud-cd-classifier</h1>" in top and folder.name in top
    assert (
        "It misses <b>4 of the 20</b> images labelled <b>CD</b> (recall 0.80), calling them <b>&lt;b&gt;UD</b>." in top
    )
    assert "It misses <b>1 of the 20</b> images labelled <b>&lt;b&gt;UD</b> (recall 0.95), calling it <b>CD</b>." in top
    # No recall target and no audit estimate: the option is named for the class missed most.
    assert "<code>--target-recall CD=0.95</code>" in top


def test_the_report_says_where_a_recall_target_puts_the_threshold(tmp_path):
    from trainer.diagnostics import report

    estimate = [{"label": "CD", "target": 0.95, "threshold": 0.31, "recall": 0.95, "precision": 0.8, "called": 171,
                 "images": 360}]  # fmt: skip
    folder = _report_folder(tmp_path, ["CD", "UD"], [[16, 4], [1, 19]], audit={"recall_targets": estimate})
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "comparison": "the model before <0.9>"}))
    top = report.render(folder, folder.name).split("<h2>Metrics")[0]
    assert "<b>Before and after</b> (the section below): the model before &lt;0.9&gt;." in top
    assert "an estimate" in top and "<td>0.310</td><td>0.950</td><td>0.800</td><td>171 of 360</td>" in top
    point = {"label": "CD", "target_recall": 0.95, "rule": "CD when P(CD) >= 0.3100 (target recall 0.95)",
             "out_of_fold": {"recall": 0.953, "precision": 0.81}}  # fmt: skip
    folder = _report_folder(tmp_path / "b", ["CD", "UD"], [[19, 1], [5, 15]], point=point)
    top = report.render(folder, folder.name).split("<h2>Metrics")[0]
    assert "deciding <b>CD when P(CD) &gt;= 0.3100 (target recall 0.95)</b>" in top
    assert "<b>--target-recall CD=0.95</b>: out of fold on the training and validation images, recall 0.953" in top
    assert "an estimate" not in top


def _tested(folder, rows):
    """A run folder's split.csv and predictions.csv for test photos (name, sha, label, predicted)."""
    folder.mkdir(parents=True)
    split = ["ImagePath,Label,Split,Sha256"] + [f"{folder}/{name},{label},test,{sha}" for name, sha, label, _ in rows]
    predictions = ["ImagePath,Label,Split,PredictedLabel,Score,P(CD),P(UD)"] + [
        f"{folder}/{name},{label},test,{predicted},0.9,0.9,0.1" for name, _, label, predicted in rows
    ]
    (folder / "split.csv").write_text("\n".join(split) + "\n")
    (folder / "predictions.csv").write_text("\n".join(predictions) + "\n")
    return folder


def test_before_and_after_on_the_photos_tested_in_both_names_the_gain_a_relabel_buys(tmp_path):
    from trainer.diagnostics import compare

    # Four photos in both test splits (by content, under other paths), one only before, one only now.
    # Photo b was relabelled CD -> UD; both models call it UD, and agree on everything else.
    before = _tested(tmp_path / "before", [("a.jpg", "1", "CD", "CD"), ("b.jpg", "2", "CD", "UD"),
                                           ("c.jpg", "3", "UD", "UD"), ("d.jpg", "4", "UD", "CD"),
                                           ("e.jpg", "5", "UD", "UD")])  # fmt: skip
    now = _tested(tmp_path / "now", [("A.jpg", "1", "CD", "CD"), ("B.jpg", "2", "UD", "UD"),
                                     ("C.jpg", "3", "UD", "UD"), ("D.jpg", "4", "UD", "CD"),
                                     ("F.jpg", "6", "CD", "CD")])  # fmt: skip
    comparison = compare.compare(before, now)
    assert (comparison["photos"], comparison["only_before"], comparison["only_now"]) == (4, 1, 1)
    assert comparison["changed"] == [{"path": f"{now}/B.jpg", "before": "CD", "after": "UD"}]
    # The same predictions: against the labels now both score 0.75, against the labels before both 0.5.
    assert comparison["scores"] == {"labels now": {"before": 0.75, "now": 0.75},
                                    "labels before": {"before": 0.5, "now": 0.5}}  # fmt: skip
    line = compare.tells(comparison)
    assert line == ("on the 4 test photos both were tested on, the model before 0.750, this one 0.750 (against the "
                    "labels before: 0.500 and 0.500); 1 label changed among them, which moves the score by itself")  # fmt: skip
    (now / "comparison.json").write_text(json.dumps(comparison))
    page = compare.section(now)
    assert "<td>labels now</td><td>0.750</td><td>0.750</td>" in page and "<td>CD</td><td>UD</td>" in page


def test_a_folder_with_nothing_to_compare_is_skipped_in_one_line(tmp_path):
    from trainer.diagnostics import compare
    from trainer.errors import InputError

    now = _tested(tmp_path / "now", [("a.jpg", "1", "CD", "CD")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as refused:
        compare.compare(tmp_path / "empty", now)
    assert str(refused.value) == f"{tmp_path / 'empty'}: no split.csv to compare with"


def test_the_recall_estimate_puts_each_target_where_that_share_of_the_class_scores_at_least_it():
    import numpy as np

    from trainer.diagnostics.audit import recall_targets

    # Ten CD images scoring 0.1 .. 1.0 for CD, ten UD images scoring 0.05 .. 0.5 for CD.
    cd = np.linspace(0.1, 1.0, 10)
    ud = np.linspace(0.05, 0.5, 10)
    p_cd = np.concatenate([cd, ud])
    probabilities = np.stack([p_cd, 1 - p_cd], axis=1)
    given = np.array([0] * 10 + [1] * 10)
    estimates = {(e["label"], e["target"]): e for e in recall_targets(probabilities, given, ["CD", "UD"])}
    at = estimates[("CD", 0.9)]
    # 9 of the 10 CD images score at least 0.2; so do the UD images from 0.2 up (0.2, 0.25, ..., 0.5: 7).
    assert at["threshold"] == 0.2 and at["recall"] == 0.9 and at["called"] == 16 and at["images"] == 20
    assert abs(at["precision"] - 9 / 16) < 1e-9
    assert estimates[("CD", 0.99)]["recall"] == 1.0 and estimates[("CD", 0.99)]["called"] == 19  # all but UD 0.05
    assert len(recall_targets(np.full((4, 4), 0.25), np.arange(4), list("abcd"))) == 0  # past three classes: none
