"""trainer/diagnostics/explain.py: class activation maps, exact for these models, and where they point."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.conftest import run_module, train_args
from trainer.backbones import BACKBONES

# Every backbone the trainer offers; the big ones take a few seconds each to build, so they run
# with the slow tests.
QUICK = ("tiny", "efficientnet_lite0")
EVERY_BACKBONE = [name if name in QUICK else pytest.param(name, marks=pytest.mark.slow) for name in BACKBONES]


@pytest.mark.parametrize("backbone", EVERY_BACKBONE)
def test_the_maps_mean_is_the_logit(backbone):
    """softmax(mean of each class's map + bias) is the model's output: the maps decompose it."""
    from trainer.diagnostics.explain import ClassMaps
    from trainer.head import make_head
    from trainer.model import build_backbone, make_model

    rng = np.random.default_rng(0)
    bb = build_backbone(backbone, 96, None)
    head = make_head(rng.random((20, bb.output_shape[-1]), dtype=np.float32), 3, 0.2, 0.02)
    model = make_model(bb, backbone, 3, True, 0.2, head)
    dense = model.get_layer("probabilities")
    kernel, _ = dense.get_weights()
    dense.set_weights([rng.normal(0, 0.1, kernel.shape).astype(np.float32), np.array([0.3, -0.2, 0.1], np.float32)])
    maps = ClassMaps(model)(rng.uniform(0, 255, (4, 96, 96, 3)).astype(np.float32))
    logits = maps.logits.mean(axis=(1, 2)) + maps.bias
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), maps.probabilities, atol=1e-6)
    assert maps.logits.shape[:3] == (4, *bb.get_layer(index=-1).input.shape[1:3])


def test_explain_writes_a_heatmap_per_image_and_a_csv(run_dir, tmp_path, cli):
    images = sorted((run_dir.parent / "Images" / "CD").glob("*.jpg"))[:2]
    code, out, err = cli("explain", "--model", run_dir, *images, "--output", tmp_path / "maps")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "ImagePath,PredictedLabel,Score,Heatmap" and len(lines) == 3
    for line, image in zip(lines[1:], images, strict=True):
        path, label, score, heatmap = line.split(",")
        assert path == str(image) and label in ("CD", "UD") and 0.5 <= float(score) <= 1
        with Image.open(heatmap) as picture, Image.open(image) as photo:
            # The photo under a white band captioned with its file name, the class and the score.
            assert picture.format == "PNG"
            assert picture.size == (max(photo.width, 240), photo.height + 44)
            band = np.asarray(picture.convert("L"))[:44]
            assert (band < 128).any() and np.median(band) == 255


def test_explain_refuses_a_model_it_cannot_split(run_dir, tmp_path):
    result = run_module("explain", "--model", run_dir / "model.tflite", run_dir.parent / "Images")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("trainer: error: --model: ") and "not a Keras model" in result.stderr


def _crack_mass_ratio(run, folder, radius: int = 8) -> float:
    """Median over the cracked images: the heatmap's mass within `radius` pixels of a crack the
    generator drew, over that neighbourhood's share of the image."""
    from trainer.data.images import load_image
    from trainer.diagnostics.explain import ClassMaps, upsampled

    cracked, images = run.labels.index("CD"), sorted((folder / "Images" / "CD").glob("*.jpg"))
    # Every image in one batch: one pass through the model (one at a time took 11 s of the 15).
    maps = ClassMaps(run.model)(np.stack([load_image(image, run.image_size) for image in images]).astype(np.float32))
    ratios = []
    for index, image in enumerate(images):
        with Image.open(folder / "cracks" / "CD" / image.name.replace(".jpg", ".png")) as mask:
            near = np.asarray(mask.filter(ImageFilter.MinFilter(2 * radius + 1))) < 128
        heat = upsampled(maps.evidence(index, cracked), near.shape[::-1])
        ratios.append(heat[near].sum() / heat.sum() / near.mean() if heat.sum() > 0 else 0.0)
    return float(np.median(ratios))


@pytest.mark.slow
def test_the_heatmap_points_at_the_cracks_and_random_features_do_not(cli, tmp_path):
    """Synthetic photos whose generator recorded each crack: with ImageNet features the evidence
    for CD lies at least twice as densely near the cracks as the neighbourhood's share of the
    image; a model on a random backbone's features (as accurate on this easy set) does not.
    Both train in this process, whose TensorFlow is loaded already."""
    from trainer.data.demo import make_demo_data
    from trainer.model import build_backbone
    from trainer.predict import load_run

    make_demo_data(tmp_path / "demo", per_class=40, seed=5)
    random_weights = tmp_path / "random.weights.h5"
    build_backbone("efficientnet_lite0", 224, None).save_weights(random_weights)
    ratios = {}
    for name, weights in (("imagenet", "imagenet"), ("random", random_weights)):
        args = train_args(
            tmp_path / "demo" / "Images", backbone="efficientnet_lite0", weights=weights, image_size=224, epochs=50
        )
        code, _, err = cli(*args, "--export", "none", "--output", tmp_path / name)
        assert code == 0, err
        ratios[name] = _crack_mass_ratio(load_run(tmp_path / name), tmp_path / "demo")
    print("heatmap mass near the cracks over their area share (median):", ratios)
    assert ratios["imagenet"] >= 2.0
    assert ratios["random"] < 2.0
