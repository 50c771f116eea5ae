"""--pooling (trainer/pooling.py): each pooling against numpy, saved and loaded in safe mode, every
pooling from one backbone pass into each pooling's own cache (trainer/features/poolings.py), the
average-pooled keys as they were, and a run trained, exported and predicted with a pooling that
is not the average (the audit still on average pooling, the heatmaps skipped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import CONCRETE, ROOT, run_module, train_args
from trainer.config import POOLINGS
from trainer.errors import InputError
from trainer.features.cache import cache_key
from trainer.pooling import all_poolings, columns, feature_map, generalized_mean_layer, pooled

TOLERANCE = 1e-5


def _numpy_pooled(maps: np.ndarray, pooling: str) -> np.ndarray:
    """maps [n, h, w, k] pooled by the formulas trainer/pooling.py states."""
    maps = maps.astype(np.float64)
    average, maximum = maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))
    mean_of_cubes = (np.maximum(maps, 1e-6) ** 3).mean(axis=(1, 2))
    return {"avg": average, "max": maximum, "gem": mean_of_cubes ** (1 / 3),
            "avgmax": np.concatenate([average, maximum], axis=1)}[pooling]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    """The tiny backbone (random weights), its feature maps of eight random images, and those images."""
    import keras

    from trainer.model import build_backbone

    backbone = build_backbone("tiny", 48, None)
    images = np.random.default_rng(0).uniform(-1, 1, (8, 48, 48, 3)).astype(np.float32)
    maps = np.asarray(keras.Model(backbone.input, feature_map(backbone))(images))
    assert maps.shape == (8, 3, 3, 128) and (maps > 0).mean() > 0.2  # a map worth pooling
    return backbone, images, maps


@pytest.mark.parametrize("pooling", POOLINGS)
def test_each_pooling_is_its_formula_over_the_same_layers(tiny, pooling):
    backbone, images, maps = tiny
    model = pooled(backbone, pooling)
    assert (model is backbone) == (pooling == "avg")  # the default builds what it always did
    assert {id(w) for w in model.weights} == {id(w) for w in backbone.weights}  # the same weights
    got = np.asarray(model(images))
    np.testing.assert_allclose(got, _numpy_pooled(maps, pooling), rtol=TOLERANCE, atol=TOLERANCE)
    assert got.shape[1] == 128 * (2 if pooling == "avgmax" else 1)


def test_all_poolings_is_avg_max_and_gem_side_by_side(tiny):
    backbone, images, maps = tiny
    together = np.asarray(all_poolings(backbone)(images))
    assert together.shape == (8, 3 * 128)
    for pooling in POOLINGS:
        np.testing.assert_allclose(together[:, columns(pooling, 128)], _numpy_pooled(maps, pooling),
                                   rtol=TOLERANCE, atol=TOLERANCE)  # fmt: skip


def test_generalized_mean_floors_negatives_and_stays_finite_in_half_precision():
    """p=3 of a map with negative values (a swish backbone's) is the formula with them floored;
    under mixed_float16 a map whose cubes overflow float16 (values near 50: 125,000 > 65,504)
    still pools to the float32 answer, since the layer computes in float32."""
    layer = generalized_mean_layer()
    rng = np.random.default_rng(1)
    signed = rng.normal(0, 2, (4, 5, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(layer()(signed)), _numpy_pooled(signed, "gem"), rtol=TOLERANCE)
    large = rng.uniform(30, 60, (4, 5, 5, 16)).astype(np.float16)
    half = np.asarray(layer(dtype="mixed_float16")(large))
    assert half.dtype == np.float16 and np.isfinite(half).all()
    np.testing.assert_allclose(half.astype(np.float64), _numpy_pooled(large, "gem"), rtol=2e-3)


@pytest.mark.parametrize("pooling", ["max", "gem", "avgmax"])
def test_a_model_with_each_pooling_saves_and_loads_in_safe_mode(tiny, pooling, tmp_path):
    from trainer.model import make_model
    from trainer.predict import load_keras

    backbone, images, _ = tiny
    model = make_model(pooled(backbone, pooling), "tiny", 2, False, 0.2)
    model.save(tmp_path / "model.keras")
    loaded = load_keras(tmp_path / "model.keras")  # safe_mode=True, as every load in the trainer
    np.testing.assert_allclose(np.asarray(loaded(images * 127 + 128)), np.asarray(model(images * 127 + 128)),
                               rtol=TOLERANCE, atol=1e-6)  # fmt: skip
    assert loaded.layers[2].layers[-1].name == f"pooling_{pooling}"


def test_a_gem_model_trained_in_half_precision_is_saved_as_its_float32_copy(tiny):
    """trainer.model.float32_copy rebuilds the model from its configuration: the registered layer
    comes back computing in float32, with the half-precision model's answers."""
    import keras

    from trainer.model import build_backbone, float32_copy, make_model

    images = tiny[1] * 127 + 128
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = make_model(pooled(build_backbone("tiny", 48, None), "gem"), "tiny", 2, False, 0.2)
        answers = np.asarray(half(images), dtype=np.float64)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    copy = float32_copy(half)
    assert copy.layers[2].layers[-1].name == "pooling_gem" and copy.layers[2].layers[-1].compute_dtype == "float32"
    np.testing.assert_allclose(np.asarray(copy(images)), answers, atol=2e-3)


def test_a_feature_layer_is_pooled_as_asked_and_a_vector_cannot_be(tiny):
    """--feature-layer with --pooling: the cut's map is pooled the chosen way; a backbone that
    ends in a vector (no map to pool) is a one-line error naming --pooling."""
    import keras

    from trainer.model import cut_backbone

    backbone, images, _ = tiny
    layer = [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.MaxPooling2D)][-2]
    maps = np.asarray(keras.Model(backbone.input, backbone.get_layer(layer).output)(images))
    cut = pooled(cut_backbone(backbone, layer), "max")
    np.testing.assert_allclose(np.asarray(cut(images)), _numpy_pooled(maps, "max"), rtol=TOLERANCE)
    inputs = keras.Input((4,))
    flat = keras.Model(inputs, keras.layers.Dense(3, name="dense_end")(inputs), name="flat")
    assert pooled(flat, "avg") is flat
    with pytest.raises(InputError, match=r"^--pooling: flat ends in dense_end \(Dense\), not a feature map"):
        pooled(flat, "gem")


def test_the_average_pooled_keys_are_the_keys_existing_caches_have():
    """Written before --pooling existed (trainer/features/cache.py at 2c4f8f5): every cache on
    disk today stays valid."""
    assert cache_key("efficientnet_lite0", 224, "imagenet") == "efficientnet_lite0-224-9ab616da361e"
    assert cache_key("efficientnet_lite0", 224, "imagenet", policy="mixed_float16") == (
        "efficientnet_lite0-224-float16-badfcd3989e6"
    )
    assert cache_key("vgg16", 64, "imagenet", "block4_pool", pooling="avg") == "vgg16-64-22c081fc97ba"
    keys = {pooling: cache_key("efficientnet_lite0", 224, "imagenet", pooling=pooling) for pooling in POOLINGS}
    assert len(set(keys.values())) == 4 and keys["max"].startswith("efficientnet_lite0-224-max-")


@pytest.fixture(scope="module")
def photos():
    """Six real photos of each class."""
    from trainer.data.rows import load_rows
    from trainer.data.validate import validate

    rows = validate(*load_rows(CONCRETE, "training_data.csv"))
    return [row for row in rows if row.label == "CD"][:6] + [row for row in rows if row.label == "UD"][:6]


def _shards(workspace, key):
    return sorted((workspace / "features" / key).glob("shard-*.npz"))


def test_every_pooling_from_one_pass_into_each_poolings_own_cache(photos, tiny_weights, tmp_path):
    from trainer.features.extract import extract, load_extractor
    from trainer.features.poolings import extract_poolings

    parts = [(photos, ("id",)), (photos[:3], ("h", "v"))]  # 12 images, 3 of them flipped two ways too
    workspace, weights = tmp_path / "workspace", str(tiny_weights)
    features, record = extract_poolings("tiny", 48, weights, parts, workspace)
    assert record["views"] == {"id": {"reused": 0, "featurized": 12}, "h": {"reused": 0, "featurized": 3},
                               "v": {"reused": 0, "featurized": 3}}  # fmt: skip
    assert record["runtime"] is not None and record["reused"] == dict.fromkeys(POOLINGS, 0)
    assert {pooling: array.shape for pooling, array in features.items()} == {
        "avg": (18, 128), "max": (18, 128), "gem": (18, 128), "avgmax": (18, 256)}  # fmt: skip
    again, second = extract_poolings("tiny", 48, weights, parts, workspace)
    assert second["views"]["id"] == {"reused": 12, "featurized": 0} and second["runtime"] is None
    assert second["reused"] == dict.fromkeys(POOLINGS, 18)
    for pooling in POOLINGS:
        np.testing.assert_array_equal(again[pooling], features[pooling])
        # `train --pooling P` finds them under its own key and featurizes nothing.
        extractor = load_extractor("tiny", 48, weights, pooling=pooling)
        assert extractor.key() == record["keys"][pooling]
        own, seen = extract(extractor, parts, workspace)
        assert seen["views"]["id"] == {"reused": 12, "featurized": 0}
        np.testing.assert_array_equal(own, features[pooling])
    # And what a run with --pooling max computes itself is what the one pass stored.
    alone, _ = extract(load_extractor("tiny", 48, weights, pooling="max"), parts, tmp_path / "elsewhere")
    np.testing.assert_allclose(alone, features["max"], rtol=TOLERANCE, atol=TOLERANCE)
    assert np.abs(features["max"] - features["avg"]).max() > 0.1  # different poolings, really


def test_an_image_every_requested_cache_holds_is_not_featurized(photos, tiny_weights, tmp_path):
    from trainer.features.extract import extract, load_extractor
    from trainer.features.poolings import extract_poolings

    workspace, weights, parts = tmp_path / "workspace", str(tiny_weights), [(photos, ("id",))]
    extractor = load_extractor("tiny", 48, weights, pooling="max")
    extract(extractor, parts, workspace)  # a run with --pooling max stored these
    before = _shards(workspace, extractor.key())
    _, record = extract_poolings("tiny", 48, weights, parts, workspace, poolings=("max",))
    assert record["views"]["id"] == {"reused": 12, "featurized": 0} and record["runtime"] is None
    _, record = extract_poolings("tiny", 48, weights, parts, workspace, poolings=("max", "gem"))
    assert record["views"]["id"] == {"reused": 0, "featurized": 12} and record["reused"] == {"max": 12, "gem": 0}
    assert _shards(workspace, extractor.key()) == before  # max had them all: nothing stored twice
    assert len(_shards(workspace, record["keys"]["gem"])) == 1
    with pytest.raises(InputError, match="poolings: \\['median'\\]; choose from avg, max, gem, avgmax"):
        extract_poolings("tiny", 48, weights, parts, workspace, poolings=("median",))


@pytest.mark.slow
@pytest.mark.parametrize(("pooling", "killed"), [("gem", False), ("avgmax", True)])
def test_a_run_pooled_otherwise_trains_exports_and_predicts(demo_dir, tiny_weights, tmp_path, pooling, killed, cli):
    """The whole run in its own process, as users run it: bottleneck mode on the pooled backbone
    (avgmax: killed as the audit starts and run again, so the diagnostics finish from the run
    folder), ONNX and TFLite exports checked against Keras, predict loading model.keras in safe
    mode in a fresh process; the audit on the run's backbone average-pooled, the heatmaps skipped."""
    run = tmp_path / "run"
    args = train_args(demo_dir / "Images", weights=tiny_weights, epochs=2, pooling=pooling, audit=True,
                      export="onnx,tflite", workspace=tmp_path / "ws", output=run)  # fmt: skip
    if killed:
        crash = {**os.environ, "PYTHONPATH": str(ROOT), "TRAINER_FAIL_DIAGNOSTIC": "audit:crash"}
        first = subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, env=crash)
        assert first.returncode == -11 and first.stdout.strip() == str(run), first.stderr[-2000:]
        # Another request (one epoch more) does not finish this run's diagnostics: the folder is refused.
        other = run_module(*train_args(demo_dir / "Images", weights=tiny_weights, epochs=3, pooling=pooling, audit=True,
                                       export="onnx,tflite", workspace=tmp_path / "ws", output=run))  # fmt: skip
        assert other.returncode == 2 and "already exists and is not empty" in other.stderr, other.stderr[-2000:]
    trained = run_module(*args)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert ("finishing its diagnostics: audit, heatmaps, exports, report" in trained.stderr) == killed
    assert ("Epoch" in trained.stderr) is not killed  # finishing the diagnostics trains nothing
    manifest = json.loads((run / "manifest.json").read_text())
    diagnostics = manifest["diagnostics"]
    assert diagnostics["audit"] == "ok" and diagnostics["exports"] == "ok", diagnostics
    assert diagnostics["heatmaps"] == {"skipped": f"class maps need average pooling; this model is pooled by "
                                       f"{'generalized mean (p=3)' if pooling == 'gem' else 'average and maximum'} "
                                       f"(--pooling {pooling})"}  # fmt: skip
    assert manifest["audit"]["features"].startswith("the run's backbone, average-pooled")
    keys = sorted(path.name for path in (tmp_path / "ws" / "features").iterdir())
    assert keys == sorted([cache_key("tiny", 48, str(tiny_weights)), manifest["feature_cache_key"]])
    assert manifest["feature_cache_key"].startswith(f"tiny-48-{pooling}-")
    exports = json.loads((run / "exports.json").read_text())
    legs = {leg["name"]: leg for leg in exports["legs"]}
    assert exports["ok"] is True and {"TFLite", "ONNX Runtime"} <= set(legs), legs
    assert all(leg["ok"] and leg["max_difference"] <= leg["tolerance"] for leg in legs.values() if leg["enforced"])
    predicted = run_module("predict", "--model", run, "--output", tmp_path / "p.csv", demo_dir / "Images" / "CD")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 12
    code, _, err = cli("explain", "--model", run, "--output", tmp_path / "maps", demo_dir / "Images" / "CD")
    assert code == 2 and "class maps need average pooling (--pooling avg)" in err
