"""trainer/features/runtime.py: the extractor's forward pass through ONNX Runtime on a CPU (converted
once per cache key), TensorFlow where that cannot or must not run, and each image decoded once
for all its views (trainer.features.extract.fill)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.conftest import CONCRETE
from trainer.data.rows import load_rows
from trainer.data.validate import validate
from trainer.features import extract as features
from trainer.features import runtime as featurizer
from trainer.features.views import VIEWS
from trainer.model import build_backbone, feature_extractor

TOLERANCE = 1e-4  # the runtimes' features, absolute (a feature scale of about 6 for Lite0)


@pytest.fixture(scope="module")
def photos():
    """Six real photos of each class."""
    rows = validate(*load_rows(CONCRETE, "training_data.csv"))
    return [row for row in rows if row.label == "CD"][:6] + [row for row in rows if row.label == "UD"][:6]


def _fill(extractor, rows, folder, views=("id",)):
    out = np.empty((len(rows) * len(views), int(extractor.output_shape[-1])), dtype=np.float32)
    runtime = features.fill(extractor, features.wanted(rows, views), out, 224, 8, folder)
    return runtime, out


def test_onnx_runtime_features_match_tensorflows_and_may_share_the_cache(photos, tmp_path, monkeypatch):
    """EfficientNet-Lite0 with its ImageNet weights on real photos, every dihedral view: the two
    runtimes agree within TOLERANCE, so a cache written by either serves both."""
    extractor = feature_extractor(build_backbone("efficientnet_lite0", 224, "imagenet"), "efficientnet_lite0")
    views = VIEWS["dihedral"]
    monkeypatch.setenv("TRAINER_FEATURIZER", "tensorflow")
    runtime, by_tensorflow = _fill(extractor, photos, tmp_path / "tf", views)
    assert runtime == "tensorflow"
    monkeypatch.setenv("TRAINER_FEATURIZER", "auto")  # a CPU in float32: ONNX Runtime
    runtime, by_onnx = _fill(extractor, photos, tmp_path / "onnx", views)
    assert runtime == "onnxruntime"
    assert [path.name for path in (tmp_path / "onnx").glob("*.onnx")] == [featurizer.converted_name()]
    difference = float(np.abs(by_onnx - by_tensorflow).max())
    print(f"largest difference {difference:.2e} of a largest feature {float(np.abs(by_tensorflow).max()):.2f}")
    assert difference <= TOLERANCE
    # The views differ from each other (so they were computed, not copied).
    assert np.abs(by_onnx[: len(photos)] - by_onnx[len(photos) : 2 * len(photos)]).max() > 100 * TOLERANCE


def test_each_image_is_decoded_once_for_all_its_views(photos, tmp_path, monkeypatch):
    from trainer.data import pipeline

    decoded = []
    real = pipeline.load_image
    monkeypatch.setattr(pipeline, "load_image", lambda path, size: decoded.append(path) or real(path, size))
    extractor = feature_extractor(build_backbone("tiny", 48, None), "tiny")
    out = np.empty((len(photos) * 8, int(extractor.output_shape[-1])), dtype=np.float32)
    counts = {}
    features.fill(extractor, features.wanted(photos, VIEWS["dihedral"]), out, 48, 4, tmp_path, counts=counts)
    assert sorted(decoded) == sorted(str(row.path) for row in photos)
    assert counts == {view: {"reused": 0, "featurized": len(photos)} for view in VIEWS["dihedral"]}
    # A second run reads them all from the cache: nothing decoded, no runtime chosen.
    decoded.clear()
    again = np.empty_like(out)
    wanted = features.wanted(photos, VIEWS["dihedral"])
    assert features.fill(extractor, wanted, again, 48, 4, tmp_path) is None and decoded == []
    np.testing.assert_array_equal(again, out)


def test_the_conversion_is_kept_beside_the_features_and_reused(tmp_path, monkeypatch):
    extractor = feature_extractor(build_backbone("tiny", 48, None), "tiny")
    first = featurizer.featurizer(extractor, 48, tmp_path)
    assert first.runtime == "onnxruntime" and (tmp_path / featurizer.converted_name()).is_file()
    # Another process (a new model object) finds the file and converts nothing.
    other = feature_extractor(build_backbone("tiny", 48, None), "tiny")
    monkeypatch.setattr(type(other), "export", lambda *args, **options: pytest.fail("converted again"))
    assert featurizer.featurizer(other, 48, tmp_path).runtime == "onnxruntime"


def test_a_refused_conversion_falls_back_to_tensorflow_in_one_line(tmp_path, monkeypatch, trainer_log):
    extractor = feature_extractor(build_backbone("tiny", 48, None), "tiny")

    def refused(model, folder):
        raise ValueError("Unsupported ONNX opset: a made-up refusal\nand its second line")

    monkeypatch.setattr(featurizer, "convert", refused)
    run = featurizer.featurizer(extractor, 48, tmp_path)
    assert run.runtime == "tensorflow"
    warned = [record.getMessage() for record in trainer_log if record.levelno == logging.WARNING]
    assert warned == [
        "WARNING: ONNX Runtime cannot run the converted extractor (ValueError: Unsupported ONNX opset: a made-up "
        "refusal): featurizing with TensorFlow"
    ]
    assert run(np.zeros((2, 48, 48, 3), dtype=np.float32)).shape == (2, int(extractor.output_shape[-1]))


@pytest.mark.parametrize(
    "setting, policy, jit, expected",
    [
        ("auto", "float32", False, "onnxruntime"),
        ("auto", "mixed_bfloat16", False, "tensorflow"),  # half-precision features under their own key
        ("auto", "float32", True, "tensorflow"),  # XLA is TensorFlow's
        ("tensorflow", "float32", False, "tensorflow"),
        ("onnxruntime", "mixed_float16", False, "onnxruntime"),  # forced
    ],
)
def test_which_runtime_featurizes(setting, policy, jit, expected, tmp_path, monkeypatch):
    import keras

    monkeypatch.setenv("TRAINER_FEATURIZER", setting)
    extractor = feature_extractor(build_backbone("tiny", 48, None), "tiny")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        assert featurizer.featurizer(extractor, 48, tmp_path, jit_compile=jit).runtime == expected
    finally:
        keras.mixed_precision.set_global_policy(previous)
