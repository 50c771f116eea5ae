"""What a run leaves behind: metrics, pictures, report.html, TensorBoard logs, and exports that
agree with Keras through five runtimes, the TensorFlow C library included."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IN_CI, ROOT, run_module, train_args
from trainer.evaluate import classification_metrics, roc_auc, top_k_accuracy

LEGS = {"SavedModel", "TFLite", "TFLite int8", "ONNX Runtime", "TensorFlow C library"}


# --- metrics ----------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo_dir) -> Path:
    """The demo data with a duplicated row and a missing file, so the report has drops to show."""
    out = tmp_path_factory.mktemp("report") / "run"
    images = out.parent / "Images"
    shutil.copytree(demo_dir / "Images", images)
    lines = (images / "training_data.csv").read_text().splitlines()
    lines += [lines[1], "CD/not-there.jpg,CD"]
    (images / "training_data.csv").write_text("\n".join(lines) + "\n")
    result = run_module(*train_args(images, epochs=3, output=out, workspace=out.parent / "ws"))
    assert result.returncode == 0, result.stderr
    return out


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
        # A 48 px title, then one 300 x 330 px cell per test image, up to 4 columns.
        assert image.format == "PNG" and image.size == (300 * columns, 48 + 330 * -(-count // columns))
        assert len(np.unique(np.asarray(image.convert("L")))) > 20, "the sheet has no photos"


def test_metrics_cover_auc_averages_and_validation(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for part in (metrics, metrics["validation"]):
        assert 0.0 <= part["roc_auc"] <= 1.0
        assert set(part["weighted_avg"]) == {"precision", "recall", "f1"}
    rows = (run_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "ImagePath,Label,Split,PredictedLabel,Score,P(CD),P(UD)"
    assert sum(",test," in row for row in rows) == metrics["count"]


def test_tensorboard_logs_hold_one_scalar_per_epoch(run_dir):
    import tensorflow as tf

    history_rows = len((run_dir / "history.csv").read_text().splitlines()) - 1
    for split in ("train", "validation"):
        (events,) = (run_dir / "logs" / split).glob("events.out.tfevents.*")
        steps = []
        for record in tf.data.TFRecordDataset(str(events)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            steps += [event.step for value in event.summary.value if value.tag == "epoch_loss"]
        assert steps == list(range(1, history_rows + 1)), split


def test_the_report_is_self_contained_and_says_what_the_run_did(run_dir):
    page = (run_dir / "report.html").read_text()
    assert run_dir.name in page and "partial" not in page
    assert not re.search(r"""(src|href)=['"](?!data:)""", page), "the page must not load anything from elsewhere"
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 3
    for fact in ("ROC AUC", "weighted f1", "tensorflow", "cpu_count", "duplicate", "missing", "TensorFlow C library"):
        assert fact in page or fact in page.lower(), fact


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_every_picture_loads_in_a_real_headless_browser(run_dir, tmp_path):
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
    page.write_text((run_dir / "report.html").read_text().replace("</body>", probe + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "--virtual-time-budget=10000"]
        + [page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
    assert found, result.stderr[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert [alt for alt, *_ in images] == ["Learning curves", "Confusion matrix", "Worst-classified test images"]
    for alt, complete, width, height in images:
        assert complete and width > 100 and height > 100, alt


def test_report_rebuilds_the_page_and_pictures(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for name in ("report.html", "learning_curves.png", "confusion_matrix.png", "worst_test_images.png"):
        (copy / name).unlink()
    result = run_module("report", copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(copy / "report.html")
    assert "copy: tiny classifier" in (copy / "report.html").read_text()
    assert (copy / "confusion_matrix.png").stat().st_size > 1000


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    result = run_module("report", tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"trainer: error: {tmp_path}: no metrics.json; pass a run folder written by 'trainer train'"
    )


# --- exports ----------------------------------------------------------------------------------


def test_every_export_agrees_with_keras_through_five_runtimes(run_dir):
    exports = json.loads((run_dir / "exports.json").read_text())
    assert exports["ok"] is True
    legs = {leg["name"]: leg for leg in exports["legs"]}
    assert set(legs) == LEGS
    for name, leg in legs.items():
        assert leg["enforced"] == (name != "TFLite int8"), name
        if leg["enforced"]:
            assert leg["ok"] and leg["top_class_agrees"], name
            assert leg["max_difference"] <= leg["tolerance"], name
    assert 0 <= legs["TFLite int8"]["max_difference"] <= 1
    assert legs["TFLite int8"]["tolerance"] == 0.1 and legs["ONNX Runtime"]["tolerance"] == 1e-4
    labels = {Path(path).parent.name for path in exports["images"]}
    assert len(exports["images"]) == 5 and labels == {"CD", "UD"}
    capi = legs["TensorFlow C library"]["detail"]
    assert capi.endswith(" 2.20.0"), capi
    if IN_CI:  # there, `invoke setup` has installed the C library where the loader finds it
        assert capi.startswith("/usr/local/lib/libtensorflow.so.2 "), capi
    assert exports["serving"]["input"] == {"name": "image", "dtype": "float32", "shape": [None, 48, 48, 3]}
    assert exports["serving"]["output"]["name"] == "probabilities"
    for name in ("saved_model/saved_model.pb", "model.tflite", "model_int8.tflite", "model.onnx"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / "model_int8.tflite").stat().st_size < (run_dir / "model.tflite").stat().st_size


def test_predict_gives_the_same_labels_from_every_format(run_dir, tmp_path):
    for name in ("model.tflite", "model_int8.tflite"):
        shutil.copy(run_dir / name, tmp_path / name)
    shutil.copy(run_dir / "labels.txt", tmp_path / "labels.txt")
    images = json.loads((run_dir / "exports.json").read_text())["images"]
    outputs = {}
    for model in (run_dir, run_dir / "model.keras", run_dir / "saved_model", tmp_path / "model.tflite"):
        result = run_module("predict", "--model", model, *images)
        assert result.returncode == 0, result.stderr
        outputs[model] = [line.split(",") for line in result.stdout.splitlines()[1:]]
    reference = outputs[run_dir]
    assert len(reference) == 5
    for model, rows in outputs.items():
        assert [row[:2] for row in rows] == [row[:2] for row in reference], model
        assert np.allclose([float(r[2]) for r in rows], [float(r[2]) for r in reference], atol=1e-4), model


def test_predict_refuses_a_tflite_file_that_is_not_one(run_dir, tmp_path):
    bogus = tmp_path / "model.tflite"
    bogus.write_text("not a model")
    shutil.copy(run_dir / "labels.txt", tmp_path / "labels.txt")
    result = run_module("predict", "--model", bogus, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"trainer: error: --model: {bogus} is not a TensorFlow Lite model")
    assert len(result.stderr.strip().splitlines()) == 1


def test_export_rewrites_and_checks_every_export(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("model.onnx", "model.tflite", "exports.json"):
        (copy / name).unlink()
    result = run_module("export", copy)
    assert result.returncode == 0, result.stderr
    assert {leg["name"] for leg in json.loads((copy / "exports.json").read_text())["legs"]} == LEGS
    assert (copy / "model.onnx").is_file() and (copy / "model.tflite").is_file()


def test_export_exits_non_zero_naming_the_leg_that_cannot_run(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    missing = tmp_path / "no-such-libtensorflow.so.2"
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "export", str(copy)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TRAINER_TF_C_LIBRARY": str(missing)},
        timeout=600,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trainer: error: export check failed: TensorFlow C library could not run")
    assert json.loads((copy / "exports.json").read_text())["ok"] is False


def _copy_with_shifted_model(run_dir: Path, tmp_path: Path):
    """A copy of the run, and its model with the classifier's bias shifted: another model."""
    import keras

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    model = keras.models.load_model(copy / "model.keras", compile=False)
    classifier = model.get_layer("probabilities")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel, bias + np.array([3.0, -3.0], dtype=bias.dtype)])
    return copy, model


def test_export_detects_an_export_that_computes_something_else(run_dir, tmp_path):
    """A SavedModel from another model in place of the run's: both SavedModel legs disagree."""
    from trainer.errors import CheckFailed
    from trainer.export import export_run, write_saved_model

    copy, model = _copy_with_shifted_model(run_dir, tmp_path)
    write_saved_model(model, copy / "saved_model")
    with pytest.raises(CheckFailed) as failure:
        export_run(copy, ("saved_model",), check=True, write=False)
    assert "SavedModel differs by" in str(failure.value)
    assert "TensorFlow C library differs by" in str(failure.value)


def test_an_int8_model_that_drifts_is_a_warning_not_a_failure(run_dir, tmp_path):
    """Quantization is lossy by design: a drifting int8 model is reported, the float legs decide."""
    from trainer.export import export_run, write_saved_model, write_tflite

    copy, model = _copy_with_shifted_model(run_dir, tmp_path)
    write_saved_model(model, tmp_path / "other")
    write_tflite(tmp_path / "other", copy / "model_int8.tflite", quantize=True)
    result = export_run(copy, ("tflite",), check=True, write=False)
    legs = {leg["name"]: leg for leg in result["legs"]}
    assert result["ok"] is True
    assert legs["TFLite int8"]["ok"] is False and legs["TFLite int8"]["max_difference"] > 0.1
    assert legs["TFLite"]["ok"] is True


def test_export_options_are_checked(cli, demo_dir):
    code, _, err = cli("train", "--folder", demo_dir / "Images", "--export", "pdf")
    assert code == 2
    assert err.strip() == "trainer: error: --export: 'pdf'; use all, none, or a comma list of saved_model, tflite, onnx"
