"""trainer/predict.py: labelling images with a run or any one of its model files."""

from __future__ import annotations

import json
import shutil

import numpy as np

from tests.conftest import run_module


def test_predict_gives_the_same_labels_from_every_format(run_dir, tmp_path):
    for name in ("model.tflite", "model_int8.tflite"):
        shutil.copy(run_dir / name, tmp_path / name)
    shutil.copy(run_dir / "labels.txt", tmp_path / "labels.txt")
    images = json.loads((run_dir / "exports.json").read_text())["images"]
    outputs = {}
    for model in (run_dir, run_dir / "model.keras", run_dir / "saved_model", tmp_path / "model.tflite"):
        trust = ["--trust-graph"] if model.name == "saved_model" else []  # a graph runs: the user vouches for it
        result = run_module("predict", "--model", model, *trust, *images)
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


def test_a_damaged_artifact_is_one_line_naming_it_and_what_to_do(cli, run_dir, tmp_path):
    """model.keras cut short, labels.txt that is not text, config.json and decision.json cut
    short: each is exit 2 and one line naming the file, never a traceback."""
    image = json.loads((run_dir / "exports.json").read_text())["images"][0]
    for name, damage in (
        ("model.keras", lambda data: data[: len(data) // 2]),
        ("labels.txt", lambda data: b"\xff\xfe\x00garbage"),
        ("decision.json", lambda data: b'{"label": "CD", "ind'),
        ("config.json", lambda data: data[:40]),
    ):
        copy = tmp_path / name.replace(".", "-")
        shutil.copytree(run_dir, copy)
        path = copy / name
        path.write_bytes(damage(path.read_bytes() if path.is_file() else b"{}"))
        command = ("evaluate", "--model", copy, "--folder", copy.parent) if name == "config.json" else (
            "predict", "--model", copy, image)  # fmt: skip
        code, _, err = cli(*command)
        assert code == 2, (name, err)
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"trainer: error: {path}: ") and "damaged" in line and "previous" in line, line
