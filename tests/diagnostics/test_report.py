"""What a run leaves for people: pictures, report.html (in a real headless browser) and
TensorBoard logs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IN_CI, run_module
from trainer import cells


def test_a_run_leaves_its_pictures_and_they_are_real_pngs(run_dir):
    from PIL import Image

    expected = {"learning_curves.png": (1000, 400), "confusion_matrix.png": (500, 400)}
    for name, size in expected.items():
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.size == size, name
            assert len(np.unique(np.asarray(image.convert("L")))) > 20, f"{name} is nearly blank"
    count = json.loads((run_dir / "metrics.json").read_text())["count"]
    columns = min(4, count)
    with Image.open(run_dir / "worst_test_images.png") as image:
        # A 48 px title, then one 300 x 348 px cell per test image (its file name, label and
        # prediction above it), up to 4 columns.
        assert image.format == "PNG" and image.size == (300 * columns, 48 + 348 * -(-count // columns))
        assert len(np.unique(np.asarray(image.convert("L")))) > 20, "the sheet has no photos"


def _scalars(events: Path, tag: str) -> list[tuple[int, float, str]]:
    import tensorflow as tf

    found = []
    for record in tf.data.TFRecordDataset(str(events)):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.tag == tag:
                number = float(tf.make_ndarray(value.tensor))
                found.append((event.step, number, value.metadata.plugin_data.plugin_name))
    return found


def test_tensorboard_logs_hold_one_scalar_per_epoch(run_dir):
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    for split, prefix in (("train", ""), ("validation", "val_")):
        (events,) = (run_dir / "logs" / split).glob("events.out.tfevents.*")
        found = _scalars(events, "epoch_loss")
        assert [(step, plugin) for step, _, plugin in found] == [
            (step, "scalars") for step in range(1, len(history) + 1)
        ]
        assert [value for _, value, _ in found] == pytest.approx(
            [float(row[prefix + "loss"]) for row in history], abs=1e-5
        )


def test_tensorboard_logs_need_no_tensorboard_package(tmp_path, monkeypatch):
    """TensorFlow 2.21 does not install tensorboard; its tf.summary.scalar then raises."""
    import sys

    from trainer.runwriter import write_tensorboard

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    write_tensorboard([{"loss": 0.5, "val_loss": 0.75}, {"loss": 0.25, "val_loss": 0.5}], tmp_path)
    (events,) = (tmp_path / "validation").glob("events.out.tfevents.*")
    assert _scalars(events, "epoch_loss") == [(1, 0.75, "scalars"), (2, 0.5, "scalars")]  # exact in float32


def test_the_report_is_self_contained_and_says_what_the_run_did(run_dir):
    page = (run_dir / "report.html").read_text()
    assert run_dir.name in page and "partial" not in page
    assert not re.search(r"""(src|href)=['"](?!data:)""", page), "the page must not load anything from elsewhere"
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 4  # curves, confusion, worst, heatmaps
    for fact in ("ROC AUC", "weighted f1", "tensorflow", "cpu_count", "duplicate", "missing", "TensorFlow C library"):
        assert fact in page or fact in page.lower(), fact


def test_the_label_audit_is_in_the_run_and_its_report(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    split = (run_dir / "split.csv").read_text().splitlines()[1:]
    assert manifest["audit"]["images"] == len(split) and set(manifest["audit"]["flagged"]) == {
        "label", "near-duplicate", "outlier"
    }  # fmt: skip
    audit = (run_dir / "audit.csv").read_text().splitlines()
    assert audit[0] == "ImagePath,Label,SuggestedLabel,Score,Reason,Group"
    assert len(audit) - 1 == sum(manifest["audit"]["flagged"].values())
    page = (run_dir / "report.html").read_text()
    assert "Labels to check" in page and f"{len(audit) - 1} images to look at" in page
    # Nothing to compare with: a run of its own (invoke train compares with the published model).
    assert manifest["diagnostics"] == {
        "compare": "skipped",
        "search": "skipped",
        "audit": "ok",
        "heatmaps": "ok",
        "exports": "ok",
        "report": "ok",
    }


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _images_in_a_browser(report: Path, tmp_path: Path) -> list:
    """[alt, complete, naturalWidth, naturalHeight] of each image of the page, as a real headless
    chromium loaded it."""
    browser = _chromium()
    if browser is None:
        if IN_CI:
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("no chromium here")
    # A copy of the page with a probe that lists each image's load state once the page loaded.
    probe = (
        "<script>window.addEventListener('load', () => { const p = document.createElement('pre');"
        " p.id = 'probe'; p.textContent = JSON.stringify(Array.from(document.images).map("
        "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])); document.body.appendChild(p); });</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(report.read_text().replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=10000"]
        + [page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
    assert found, result.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def _pictures_and_thumbnails_load(run: Path, tmp_path: Path) -> None:
    from trainer.diagnostics.report import PICTURES

    images = _images_in_a_browser(run / "report.html", tmp_path)
    pictures, thumbnails = images[: len(PICTURES)], images[len(PICTURES) :]
    assert [alt for alt, *_ in pictures] == list(PICTURES.values())
    for alt, complete, width, height in pictures:
        assert complete and width > 100 and height > 100, alt
    flagged = len((run / "audit.csv").read_text().splitlines()) - 1
    assert len(thumbnails) == min(flagged, 500)  # the review form's, one per image the audit lists
    for alt, complete, width, height in thumbnails:
        assert complete and 0 < max(width, height) <= 192, alt


def test_every_picture_loads_in_a_real_headless_browser(run_dir, tmp_path):
    _pictures_and_thumbnails_load(run_dir, tmp_path)


def test_the_main_jobs_report_shows_where_it_looks_and_the_labels_to_check(tmp_path):
    """The README's main job (a default run on the 400 concrete photos): .ci/run names its
    published folder in TRAINER_MAIN_JOB_RUN before it runs the tests."""
    folder = os.environ.get("TRAINER_MAIN_JOB_RUN")
    if not folder:
        if IN_CI:
            pytest.fail("TRAINER_MAIN_JOB_RUN is not set; .ci/run sets it after the README's main job")
        pytest.skip("TRAINER_MAIN_JOB_RUN is not set (the README's main job's run folder)")
    run = Path(folder)
    page = (run / "report.html").read_text()
    assert "<h2>Labels to check</h2>" in page and "Where the model looks" in page
    audit = (run / "audit.csv").read_text().splitlines()
    assert audit[0] == "ImagePath,Label,SuggestedLabel,Score,Reason,Group" and len(audit) > 1
    _pictures_and_thumbnails_load(run, tmp_path)


def test_report_rebuilds_the_page_and_pictures(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("report.html", "learning_curves.png", "confusion_matrix.png", "worst_test_images.png"):
        (copy / name).unlink()
    result = run_module("report", copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(copy / "report.html")
    assert "<title>ud-cd-classifier: tiny classifier (copy)</title>" in (copy / "report.html").read_text()
    assert (copy / "confusion_matrix.png").stat().st_size > 1000


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    result = run_module("report", tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"trainer: error: {tmp_path}: no metrics.json; pass a run folder written by 'trainer train'"
    )


def _tables(page: str) -> list[list[list[str]]]:
    """Each <table>'s rows, each row's cells (th and td alike)."""
    return [
        [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
        for table in re.findall(r"<table>(.*?)</table>", page, re.S)
    ]


def test_the_report_is_one_an_inspector_can_act_on(run_dir, tmp_path):
    """Every table's rows as wide as its header; settings as the run used them (1e-05, not
    0.0000); the wrong test images by name, label, prediction and score, with predictions.csv
    named; a class name the pictures' font cannot draw said so, without a matplotlib warning."""
    page = (run_dir / "report.html").read_text()
    for table in _tables(page):
        assert len({len(row) for row in table}) == 1, table[:2]
    config = json.loads((run_dir / "config.json").read_text())
    settings = dict(row for row in next(t for t in _tables(page) if t[0] == ["setting", "value"])[1:])
    assert settings["end_learning_rate"] == repr(config["end_learning_rate"]) and "e-" in settings["end_learning_rate"]
    assert "<code>predictions.csv</code>" in page
    wrong = [row for row in cells.read_dicts((run_dir / "predictions.csv").open())
             if row["Split"] == "test" and row["Label"] != row["PredictedLabel"]]  # fmt: skip
    if wrong:
        named = next(t for t in _tables(page) if t[0] == ["image", "label", "predicted", "score", "P(label)"])
        assert {row[0] for row in named[1:]} <= {row["ImagePath"] for row in wrong} and len(named) > 1
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["labels"] = ["écaillé 剥落", metrics["labels"][1]]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    result = run_module("report", copy)
    assert result.returncode == 0 and "Glyph" not in result.stderr and "missing from" not in result.stderr, (
        result.stderr
    )
    assert "has no glyphs for some characters of écaillé 剥落" in (copy / "report.html").read_text()
