"""Many classes: every picture and message keeps a fixed size whatever their number."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_module


def test_the_confusion_matrix_of_200_classes_shows_the_most_confused_and_stays_quick(tmp_path):
    from trainer.diagnostics.pictures import SHOWN_CLASSES, confusion_matrix, most_confused

    labels = [f"class-{number:03d}" for number in range(200)]
    counts = np.eye(200, dtype=int)
    counts[5, 7] = counts[9, 5] = 2  # two confusions: classes 5, 7 and 9 are the most involved
    chosen = most_confused(counts)
    assert len(chosen) == SHOWN_CLASSES and {5, 7, 9} <= set(chosen.tolist())
    started = time.perf_counter()
    confusion_matrix(counts.tolist(), labels, tmp_path / "cm.png")
    assert time.perf_counter() - started < 20  # one text per cell of 200 x 200 took 141 s
    with Image.open(tmp_path / "cm.png") as image:
        assert max(image.size) < 2000


def test_500_classes_of_one_image_are_refused_in_one_short_line(tmp_path):
    folder = tmp_path / "many"
    for number in range(500):
        (folder / f"c{number:03d}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (number % 256, number // 256, 7)).save(folder / f"c{number:03d}" / "a.png")
    result = run_module("train", "--folder", folder, "--output", tmp_path / "run")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("trainer: error: need at least two classes with 3+ usable images each") and len(line) < 600
    assert "and 490 more" in line


@pytest.mark.slow
@pytest.mark.extended  # 90 s on 2 cores: the promise is measured here, the picture above in CI
def test_200_classes_of_3_images_train_whole_within_2_5_gb(tmp_path):
    rng = np.random.default_rng(0)
    for number in range(200):
        folder = tmp_path / "data" / f"class-{number:03d}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 255, (8, 8, 3))
        for index in range(3):
            pixels = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 20, (64, 64, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{index}.jpg")
    result = run_module("train", "--folder", tmp_path / "data", "--image-size", "64", "--output", tmp_path / "run",
                        "--workspace", tmp_path / "ws", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert max(stage["peak_mb"] for stage in stages.values()) < 2500, stages
