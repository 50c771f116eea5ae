"""An export format is one row of trainer/exports.py with its writer and runner: a row added here
(the model saved again as a .keras file, run through Keras) is seen everywhere the formats are:
--export and its help, `python -m trainer export`, exports.json's legs, the benchmark, the report
and the exports diagnostic's files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from tests.conftest import ROOT
from trainer.export.runtimes import measured
from trainer.exports import FLOAT_TOLERANCE, ExportFormat

ROW = ExportFormat("Keras again", "keras_again", "model_again.keras", FLOAT_TOLERANCE, True,
                   f"{__name__}:write_again", f"{__name__}:run_again")  # fmt: skip


def write_again(model, destination, saved_model) -> None:
    model.save(destination)


def run_again(path, images, batches=()):
    import keras

    return measured(keras.models.load_model(path, compile=False).predict_on_batch, images, batches)


# The help texts are made when the options and the commands are defined, so the row goes in first.
HELP = f"""
from trainer import exports
from {__name__} import ROW
exports.FORMATS += (ROW,)
from trainer.cli import main
for command in ("train", "export"):
    try:
        main([command, "--help"])
    except SystemExit:
        pass
"""


def test_a_format_added_as_one_row_is_named_in_the_help_texts():
    result = subprocess.run([sys.executable, "-c", HELP], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps the help at spaces
    assert "--export EXPORT all, none, or a comma list of saved_model, tflite, onnx, keras_again;" in text
    assert "--formats FORMATS all, or a comma list of saved_model, tflite, onnx, keras_again (default all)" in text


def test_a_format_added_as_one_row_is_written_checked_benchmarked_and_reported(run_dir, tmp_path, monkeypatch, cli):
    from trainer import exports
    from trainer.config import TrainConfig, parse_formats
    from trainer.diagnostics.table import by_name

    monkeypatch.setattr(exports, "FORMATS", (*exports.FORMATS, ROW))
    assert TrainConfig(export="onnx,keras_again").check().export == "onnx,keras_again"
    assert parse_formats("all") == ("saved_model", "tflite", "onnx", "keras_again")
    assert "model_again.keras" in by_name("exports").shows()
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)

    code, out, err = cli("export", copy, "--formats", "keras_again", "--benchmark")
    assert code == 0, err
    assert (copy / "model_again.keras").is_file()
    result = json.loads((copy / "exports.json").read_text())
    (leg,) = result["legs"]
    assert (leg["name"], leg["file"], leg["ok"], leg["enforced"]) == ("Keras again", "model_again.keras", True, True)
    assert leg["max_difference"] <= FLOAT_TOLERANCE
    entries = result["benchmark"]["formats"]
    assert [entry["format"] for entry in entries] == ["Keras", "Keras again"]
    assert entries[1]["accuracy"] == entries[0]["accuracy"] and set(entries[1]["ms_per_image"]) == {"1", "32"}
    page = (copy / "report.html").read_text()
    rows = re.findall(r"<tr><td>Keras again</td><td>model_again.keras</td>", page)
    assert len(rows) == 2, "a row in the parity check's table and one in the benchmark's"
