"""The run's last lines, for a person (trainer/result.py's summary): the model, each class's
recall and misses, the report, the labels to check and what reviews them."""

import json
from pathlib import Path

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
