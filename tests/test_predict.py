"""trainer/predict.py: labelling images with a run or any one of its model files."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np

from tests.conftest import run_module
from trainer import cells


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


def test_predicts_csv_opens_safely_in_a_spreadsheet_and_reads_back_the_paths_given(cli, run_dir, tmp_path):
    """The paths given to predict are user text: files named like formulas are written with the
    spreadsheet's escape (trainer/cells.py), a file that cannot be read too, and read back as named."""
    image = json.loads((run_dir / "exports.json").read_text())["images"][0]
    names = ['=HYPERLINK("http:x?"&A2,"click").jpg', "+1+1.jpg", "@SUM(2+2).jpg", "-rf.jpg", "'quoted.jpg",
             'say "hi", then.jpg', "line\rbreak.jpg"]  # fmt: skip
    for name in names:
        shutil.copy(image, name)  # into this test's own working folder
    Path("=bad.jpg").write_bytes(b"not an image")
    out = tmp_path / "out.csv"
    code, _, err = cli("predict", "--model", run_dir, *(f"./{name}" for name in [*names, "=bad.jpg"]), "--output", out)
    assert code == 1, err  # the unreadable file
    text = out.read_bytes().decode("utf-8")
    written = [cell for record in csv.reader(io.StringIO(text, newline="")) for cell in record]
    assert not [cell for cell in written if cell.startswith(cells.FORMULA) and not cells.is_number(cell)]
    rows = list(cells.read_dicts(io.StringIO(text, newline="")))
    assert [row["ImagePath"] for row in rows] == [*names, "=bad.jpg"]
    assert all(row["PredictedLabel"] in ("CD", "UD") for row in rows[:-1])
    assert rows[-1]["Error"] and not rows[-1]["PredictedLabel"]
