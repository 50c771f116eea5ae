"""trainer/choose.py: --backbone auto ranks candidates by a head's cross-validated accuracy on
their cached features. Offline only EfficientNet-Lite0 has ImageNet weights, so the others get
local random weights: the ranking must put the ImageNet backbone first, whatever the seed. The
two random backbones' places between them are noise (their accuracies differ by less than the
standard error of an accuracy on 200 images), so only the first place is held to every seed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CONCRETE, run_module


def test_candidates_by_device_and_by_name():
    from trainer.choose import CPU_CANDIDATES, candidates

    assert [name for name, _ in candidates(None, accelerated=False)] == list(CPU_CANDIDATES)
    assert candidates("efficientnet_lite0, ResnetV250=w.h5", False) == [
        ("efficientnet_lite0", "auto"),
        ("resnet50_v2", "w.h5"),
    ]


def test_unknown_candidates_are_refused_before_any_work(cli):
    code, _, err = cli("train", "--folder", "x", "--backbone", "auto", "--candidates", "efficientnet_lite0,vgg99")
    assert code == 2 and err.strip().startswith("trainer: error: --candidates: 'vgg99' is not a backbone")


@pytest.mark.slow
@pytest.mark.skipif(not CONCRETE.is_dir(), reason="datasets/concrete is not here")
def test_the_imagenet_backbone_ranks_first_on_every_seed_and_choosing_is_cheap(tmp_path):
    import keras

    from trainer.model import build_backbone

    weights = {}
    keras.utils.set_random_seed(0)  # the random candidates' weights, the same every run (unseeded, one in a few drew a
    # mobilenet_v2 whose random features edged out ImageNet's on 200 photos)
    for name in ("mobilenet_v2", "tiny"):
        weights[name] = tmp_path / f"{name}.weights.h5"
        build_backbone(name, 160, None).save_weights(weights[name])
    candidates = f"efficientnet_lite0,mobilenet_v2={weights['mobilenet_v2']},tiny={weights['tiny']}"
    orders = []
    for seed in (0, 1, 2):
        run = tmp_path / f"run{seed}"
        result = run_module(
            "train", "--folder", CONCRETE, "--file", "training_data.csv", "--backbone", "auto",
            "--candidates", candidates, "--image-size", "160", "--seed", seed, "--feature-augment", "none",
            "--no-audit", "--export", "none", "--workspace", tmp_path / f"ws{seed}", "--output", run,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        config = json.loads((run / "config.json").read_text())
        ranking = config["backbone_ranking"]
        orders.append(ranking[0]["backbone"])
        print(f"seed {seed}:", [(e["backbone"], e["cv_accuracy"], e["featurize_seconds"]) for e in ranking])
        assert config["backbone"] == "efficientnet_lite0" and ranking[0]["weights"] == "imagenet"
        # What choosing cost, against featurizing all 400 photos with the slowest candidate alone
        # (the seconds per image it measured while ranking, times 400), in the same process.
        chosen = json.loads((run / "manifest.json").read_text())["backbone_auto"]
        slowest = max(entry["featurize_seconds"] / entry["images"] for entry in ranking) * 400
        assert chosen["seconds"] < 2 * slowest, (chosen["seconds"], slowest)
        assert "Backbone chosen (--backbone auto)" in (run / "report.html").read_text()
    assert orders == ["efficientnet_lite0"] * 3
