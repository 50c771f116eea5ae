"""The guard against a quadratic step coming back: the label audit and the head's preparation on
30,000 x 1,280 generated features, in a process of their own, under a memory bound.

At 30,000 images a single N x N float32 matrix is 3.6 GB, and the audit's old similarity
matrices peaked near 27 GB; linear work on these features stays within a few hundred MB of
them. The bound is on the growth of the resident peak past the generated inputs (VmHWM, reset
after generating them), so the test measures the code under test, not the generator."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

IMAGES, DIMENSIONS = 30_000, 1_280
GROWTH_BOUND_MB = 1_500  # linear: 0.2 GB measured (1.4 GB before the heads stopped copying folds); one N x N float32 matrix alone: 3,433 MB
SECONDS_BOUND = 240  # about 25 s measured on two cores; a blockwise N^2 search took minutes

PROBE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from trainer import stages
    from trainer.diagnostics import audit
    from trainer.head import feature_statistics

    images, dimensions = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, images)
    features = np.empty((images, dimensions), dtype=np.float32)
    centres = rng.normal(0, 1, (40, dimensions)).astype(np.float32)
    for start in range(0, images, 4096):
        block = slice(start, start + 4096)
        noise = rng.standard_normal((len(labels[block]), dimensions), dtype=np.float32)
        features[block] = np.maximum(centres[rng.integers(0, 40, len(noise))] + noise, 0)
    features[:, :8] += labels[:, None] * 1.5
    features[7] = features[3] * 1.0001  # a near-duplicate pair under different labels
    labels[7] = 1 - labels[3]
    small = rng.standard_normal((images, 256), dtype=np.float32)
    small[7] = small[3]
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    record = stages.Stages()
    with record("audit"):
        findings = audit.audit(features, small, labels, 2, ["train"] * images)
    with record("head preparation"):
        mean, scale = feature_statistics(features)
    near = sorted(f.index for f in findings if f.reason.startswith("near-duplicate"))
    print(json.dumps({"stages": record.record, "near_duplicates": near, "inputs_mb": stages.resident_megabytes(),
                      "scale_finite": bool(np.isfinite(scale).all())}))
    """
)


def test_the_audit_and_the_head_preparation_stay_linear_at_30000_images():
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(IMAGES), str(DIMENSIONS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    inputs = report["inputs_mb"]
    for name, stage in report["stages"].items():
        assert stage["peak_is_own"], "this check needs /proc/self/clear_refs (Linux)"
        assert stage["peak_mb"] - inputs < GROWTH_BOUND_MB, (
            f"{name}: peak {stage['peak_mb']} MB over inputs {inputs} MB"
        )
        assert stage["seconds"] < SECONDS_BOUND, f"{name}: {stage['seconds']} s"
    assert report["near_duplicates"] == [3, 7]
    assert report["scale_finite"]


GROUPING_IMAGES = 100_000
GROUPING_GROWTH_BOUND_MB = 1_000  # one N x N float32 matrix of 100,000 thumbnails alone: 38,147 MB
GROUPING_SECONDS_BOUND = 300

GROUPING_PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from trainer import stages
    from trainer.data.groups import split_keys
    from trainer.data.rows import Row
    from trainer.data.split import split

    images = int(sys.argv[1])
    rng = np.random.default_rng(0)
    layouts = rng.normal(0, 1, (400, 256))
    # Each image one of 400 layouts (smooth surfaces look alike) under its own noise; the last
    # 1,000 are copies of the first 1,000 with a re-encode's noise (correlation about 0.96).
    pixels = layouts[rng.integers(0, 400, images)] + rng.normal(0, 1.2, (images, 256))
    pixels[-1000:] = pixels[:1000] + rng.normal(0, 0.3, (1000, 256))
    pixels = np.clip(128 + 24 * pixels, 0, 255).astype(np.uint8)
    rows = [Row(0, f"{i}.jpg", Path(f"/d/{i}.jpg"), "CD" if i % 7 else "UD", f"{i:064x}") for i in range(images)]
    thumbnails = {row.sha256: pixels[i].tobytes() for i, row in enumerate(rows)}
    del pixels
    inputs = stages.resident_megabytes()
    record = stages.Stages()
    with record("near-duplicate groups"):
        keys = split_keys(rows, thumbnails, None, 0)
    with record("split"):
        parts = split(rows, 0.1, 0.1, 0, keys)
    found = [i for i in range(1000) if keys[i] == keys[images - 1000 + i]]
    where = {row.sha256: name for name, part in parts.items() for row in part}
    apart = sum(where[rows[i].sha256] != where[rows[images - 1000 + i].sha256] for i in found)
    grouped = len(keys) - len(set(keys))
    print(json.dumps({"stages": record.record, "inputs_mb": inputs, "copies_found": len(found), "copies_apart": apart,
                      "images_joined": grouped}))
    """
)


@pytest.mark.slow
@pytest.mark.extended  # not in CI: python -m pytest -m extended tests/test_scale.py
def test_the_near_duplicate_grouping_stays_linear_at_100000_thumbnails():
    """The split's near-duplicate search and the grouped split of 100,000 thumbnails, in a process
    of its own: the growth of the resident peak past the inputs, and the seconds, bounded; the
    planted copies found and kept with their originals."""
    result = subprocess.run([sys.executable, "-c", GROUPING_PROBE, str(GROUPING_IMAGES)], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    for name, stage in report["stages"].items():
        assert stage["peak_is_own"], "this check needs /proc/self/clear_refs (Linux)"
        assert stage["peak_mb"] - report["inputs_mb"] < GROUPING_GROWTH_BOUND_MB, (name, stage)
        assert stage["seconds"] < GROUPING_SECONDS_BOUND, (name, stage)
    assert report["copies_found"] >= 990 and report["copies_apart"] == 0
    assert report["images_joined"] <= 1_050  # the copies, and hardly any distinct image
