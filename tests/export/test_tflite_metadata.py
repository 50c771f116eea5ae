"""trainer/export/tflite_metadata.py: model.tflite carries TFLite metadata (an RGB input normalized with
mean 0 and std 1, labels.txt packed in), so that MediaPipe Tasks' ImageClassifier loads the file
as it is. MediaPipe runs in a side environment (it cannot be a dependency: its absl-py~=2.3
clashes with Colab's 1.4.0)."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

from trainer import cells
from trainer.export import tflite_metadata

MEDIAPIPE = "mediapipe==1.2.3"

CLASSIFY = """
import json, sys
import mediapipe as mp
from mediapipe.tasks import python as tasks
from mediapipe.tasks.python import vision
options = vision.ImageClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=sys.argv[1]), max_results=-1)
found = {}
with vision.ImageClassifier.create_from_options(options) as classifier:
    for path in sys.argv[2:]:
        categories = classifier.classify(mp.Image.create_from_file(path)).classifications[0].categories
        found[path] = {category.category_name: category.score for category in categories}
print(json.dumps(found))
"""


def _string(data: bytes, at: int) -> str:
    target = tflite_metadata._target(data, at)
    return data[target + 4 : target + 4 + tflite_metadata._u32(data, target)].decode()


def test_both_tflite_files_carry_metadata_and_their_labels(run_dir):
    labels = (run_dir / "labels.txt").read_bytes()
    for name in ("model.tflite", "model_int8.tflite"):
        model = (run_dir / name).read_bytes()
        metadata = tflite_metadata.read_metadata(model)
        assert metadata is not None and metadata[4:8] == b"M001", name
        root = tflite_metadata._fields(metadata, tflite_metadata._u32(metadata, 0))
        assert _string(metadata, root[0]) == json.loads((run_dir / "config.json").read_text())["model_name"]
        assert _string(metadata, root[7]) == "1.0.0"
        assert tflite_metadata.associated_files(model) == {"labels.txt": labels}, name


def test_attaching_twice_replaces_the_metadata_and_keeps_the_model(run_dir):
    import tensorflow as tf

    model = (run_dir / "model.tflite").read_bytes()
    other = tflite_metadata.model_metadata("other", "a second description", "labels.txt", 48)
    again = tflite_metadata.attach(model, other, {"labels.txt": b"a\nb\n"})
    assert tflite_metadata.read_metadata(again) == other
    assert tflite_metadata.associated_files(again) == {"labels.txt": b"a\nb\n"}
    images = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
    outputs = []
    for content in (model, again):
        interpreter = tf.lite.Interpreter(model_content=content)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    with pytest.raises(ValueError, match="not a TensorFlow Lite flatbuffer"):
        tflite_metadata.attach(b"\0" * 64, other, {})


@pytest.fixture(scope="module")
def mediapipe_python(tmp_path_factory) -> Path:
    """A side environment with MediaPipe Tasks (TRAINER_MEDIAPIPE_VENV reuses one)."""
    reuse = os.environ.get("TRAINER_MEDIAPIPE_VENV")
    folder = Path(reuse) if reuse else tmp_path_factory.mktemp("mediapipe") / "venv"
    python = folder / "bin" / "python"
    if not python.is_file():
        venv.create(folder, with_pip=True)
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", MEDIAPIPE], capture_output=True, text=True
        )
        assert installed.returncode == 0, installed.stderr[-2000:]
    return python


def _classify(python: Path, model: Path, paths: list[str]) -> dict:
    completed = subprocess.run([str(python), "-c", CLASSIFY, str(model), *paths], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mediapipe_tasks_classifies_the_test_photos_from_the_tflite_file_alone(
    finished_run, mediapipe_python, tmp_path
):
    """Given pixels at the model's size, MediaPipe agrees with Keras to float precision (the
    metadata's normalization is right); from the JPEG files it resizes them itself, so the
    probabilities move by its resampling (the README's model: median 0.006, at most 0.09). In CI
    the model is the README's main job's (conftest.finished_run)."""
    run_dir = finished_run
    import keras
    from PIL import Image

    from trainer.data.images import load_image

    model_file = tmp_path / "alone" / "model.tflite"  # nothing beside it: no labels.txt, no config
    model_file.parent.mkdir()
    model_file.write_bytes((run_dir / "model.tflite").read_bytes())
    labels = (run_dir / "labels.txt").read_text().split()
    test = [row for row in cells.read_dicts((run_dir / "predictions.csv").open()) if row["Split"] == "test"]
    size = json.loads((run_dir / "config.json").read_text())["image_size"]
    pixels = np.stack([load_image(row["ImagePath"], size) for row in test])
    exact = []
    for number, image in enumerate(pixels):
        exact.append(str(tmp_path / f"{number}.png"))
        Image.fromarray(image).save(exact[-1])
    keras_model = keras.models.load_model(run_dir / "model.keras", compile=False)
    reference = keras_model.predict(pixels.astype(np.float32), verbose=0)
    found = _classify(mediapipe_python, model_file, exact)
    assert all(set(scores) == set(labels) for scores in found.values())  # the names came from the file
    mediapipe = np.array([[found[path][label] for label in labels] for path in exact])
    np.testing.assert_allclose(mediapipe, reference, atol=1e-4)
    from_jpeg = _classify(mediapipe_python, model_file, [row["ImagePath"] for row in test])
    moved = np.array([abs(from_jpeg[row["ImagePath"]][label] - float(row[f"P({label})"])) for row in test
                      for label in labels])  # fmt: skip
    print(f"from the JPEG files: median {np.median(moved):.4f}, max {moved.max():.4f} over {len(test)} photos")
    assert np.median(moved) < 0.05 and moved.max() < 0.3  # resampling moves them; a wrong input would not be this close


def test_a_model_the_metadata_writer_cannot_read_is_written_without_it(run_dir, tmp_path, monkeypatch, trainer_log):
    import shutil

    from trainer.export import formats as export

    def refuses(model, metadata, files):
        raise ValueError("an unknown layout")

    for name in ("labels.txt", "config.json"):
        shutil.copy(run_dir / name, tmp_path / name)
    monkeypatch.setattr(tflite_metadata, "attach", refuses)
    export.write_tflite(run_dir / "saved_model", tmp_path / "model.tflite", quantize=False)
    assert tflite_metadata.read_metadata((tmp_path / "model.tflite").read_bytes()) is None
    assert [record.getMessage() for record in trainer_log] == [
        "WARNING: model.tflite written without TFLite metadata (ValueError: an unknown layout): TensorFlow Lite "
        "loads it, MediaPipe Tasks will not"
    ]
