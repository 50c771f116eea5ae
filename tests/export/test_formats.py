"""trainer/export/formats.py and trainer/export/runtimes.py: the exports, and the parity check that runs each
one (SavedModel, TFLite, TFLite int8, ONNX Runtime, the TensorFlow C library) against Keras."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IN_CI

LEGS = {"SavedModel", "TFLite", "TFLite int8", "ONNX Runtime", "TensorFlow C library"}


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
    assert capi.endswith(" " + metadata.version("tensorflow")), capi  # the C library of the installed TensorFlow
    if IN_CI:  # there, `invoke setup` has installed the C library where the loader finds it
        assert capi.startswith("/usr/local/lib/libtensorflow.so.2 "), capi
    assert exports["serving"]["input"] == {"name": "image", "dtype": "float32", "shape": [None, 48, 48, 3]}
    assert exports["serving"]["output"]["name"] == "probabilities"
    for name in ("saved_model/saved_model.pb", "model.tflite", "model_int8.tflite", "model.onnx"):
        assert (run_dir / name).stat().st_size > 0
    assert (run_dir / "model_int8.tflite").stat().st_size < (run_dir / "model.tflite").stat().st_size


def test_every_format_is_benchmarked_for_accuracy_and_latency(run_dir):
    """As yolo benchmark does: each format's test accuracy and ms per image at batch 1 and 32."""
    from trainer import cells

    benchmark = json.loads((run_dir / "exports.json").read_text())["benchmark"]
    entries = {entry["format"]: entry for entry in benchmark["formats"]}
    assert set(entries) == {"Keras"} | LEGS, entries
    test = [row for row in cells.read_dicts((run_dir / "predictions.csv").open()) if row["Split"] == "test"]
    assert benchmark["images"] == len(test) and benchmark["batches"] == [1, 32]
    keras = sum(row["PredictedLabel"] == row["Label"] for row in test) / len(test)
    assert entries["Keras"]["accuracy"] == pytest.approx(keras, abs=1e-4)  # the same images, the same rule
    for name, entry in entries.items():
        assert "error" not in entry, entry
        assert set(entry["ms_per_image"]) == {"1", "32"} and all(v > 0 for v in entry["ms_per_image"].values()), name
        if name != "TFLite int8":  # float32 runtimes within 1e-4 of Keras: at most a borderline image apart
            assert abs(entry["accuracy"] - keras) <= 1 / len(test) + 1e-9, name
    report = (run_dir / "report.html").read_text()
    assert "Each format on this machine" in report and "ms/image, batch 32" in report


def test_export_rewrites_and_checks_every_export(run_dir, tmp_path, cli):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for name in ("model.onnx", "model.tflite", "exports.json"):
        (copy / name).unlink()
    code, _, err = cli("export", copy)
    assert code == 0, err
    assert {leg["name"] for leg in json.loads((copy / "exports.json").read_text())["legs"]} == LEGS
    assert (copy / "model.onnx").is_file() and (copy / "model.tflite").is_file()


def test_export_exits_non_zero_naming_the_leg_that_cannot_run(run_dir, tmp_path, cli, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    monkeypatch.setenv("TRAINER_TF_C_LIBRARY", str(tmp_path / "no-such-libtensorflow.so.2"))
    code, _, err = cli("export", copy)
    assert code == 1
    last = err.strip().splitlines()[-1]
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
    from trainer.export.formats import export_run, write_saved_model

    copy, model = _copy_with_shifted_model(run_dir, tmp_path)
    write_saved_model(model, copy / "saved_model")
    with pytest.raises(CheckFailed) as failure:
        export_run(copy, ("saved_model",), check=True, write=False)
    assert "SavedModel differs by" in str(failure.value)
    assert "TensorFlow C library differs by" in str(failure.value)


def test_an_int8_model_that_drifts_is_a_warning_not_a_failure(run_dir, tmp_path):
    """Quantization is lossy by design: a drifting int8 model is reported, the float legs decide."""
    from trainer.export.formats import export_run, write_saved_model, write_tflite

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
