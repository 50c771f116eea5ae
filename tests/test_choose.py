"""trainer/choose.py: --backbone auto ranks candidates by a head's cross-validated accuracy on
their cached features. Offline, EfficientNet-Lite0, Lite1 and Lite2 have ImageNet weights: the
CPU's default candidates. On 200 concrete photos their accuracies lie within about 0.05 of each
other (0.77-0.83 at 160 px over two splits), under two standard errors, so which one wins is not
held to a split; that all three are ranked, in order, and recorded is."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CONCRETE


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
@pytest.mark.extended
@pytest.mark.skipif(not CONCRETE.is_dir(), reason="datasets/concrete is not here")
def test_three_imagenet_backbones_are_ranked_and_recorded_and_choosing_is_cheap(cli, tmp_path):
    """Both runs in this process, whose TensorFlow is loaded already. -m extended: in CI, the
    search's tests (tests/test_tune.py, tests/test_tune_stops.py) featurize a candidate through
    the cache and score it with the same converged head on cached features; the ranking's own
    order, record and cost are held here."""
    from trainer.choose import CPU_CANDIDATES

    rankings = []
    for attempt in (0, 1):  # the second run finds every candidate's features in the cache
        run = tmp_path / f"run{attempt}"
        code, _, err = cli(
            "train", "--folder", CONCRETE, "--file", "training_data.csv", "--backbone", "auto",
            "--image-size", "160", "--feature-augment", "none", "--no-audit", "--export", "none",
            "--workspace", tmp_path / "ws", "--output", run,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads((run / "config.json").read_text())["backbone"] == "auto"  # as asked
        decided = json.loads((run / "decided.json").read_text())
        ranking = decided["backbone_ranking"]
        print(
            f"run {attempt}:",
            [(e["backbone"], e["cv_accuracy"], e["cv_log_loss"], e["featurize_seconds"]) for e in ranking],
        )
        assert sorted(entry["backbone"] for entry in ranking) == sorted(CPU_CANDIDATES)
        assert all(entry["weights"] == "imagenet" and entry["images"] == 200 for entry in ranking)
        assert ranking == sorted(ranking, key=lambda entry: (-entry["cv_accuracy"], entry["cv_log_loss"]))
        assert (decided["backbone"], decided["weights"]) == (ranking[0]["backbone"], "imagenet")
        report = (run / "report.html").read_text()
        assert "Backbone chosen (--backbone auto)" in report and all(name in report for name in CPU_CANDIDATES)
        rankings.append([(e["backbone"], e["cv_accuracy"], e["cv_log_loss"]) for e in ranking])
        chosen = json.loads((run / "manifest.json").read_text())["backbone_auto"]
        if attempt == 0:
            # What choosing cost, against featurizing all 400 photos with the slowest candidate
            # alone (the seconds per image it measured while ranking, times 400), in one process.
            slowest = max(entry["featurize_seconds"] / entry["images"] for entry in ranking) * 400
            assert chosen["seconds"] < 2 * slowest, (chosen["seconds"], slowest)
            cold = chosen["seconds"]
        else:
            assert chosen["seconds"] < cold / 3, (chosen["seconds"], cold)
    assert rankings[0] == rankings[1]
