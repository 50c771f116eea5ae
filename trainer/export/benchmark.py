"""The export benchmark, as `yolo benchmark` reports its formats: each export's test accuracy
(the run's decision rule applied) and its latency at batch 1 and 32 on the machine that trained:
exports.json's `benchmark`, and a table in the report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainer import runfolder
from trainer.data.pipeline import decoded
from trainer.data.split import read_split
from trainer.export.runtimes import measured, resolve
from trainer.quiet import quiet

log = logging.getLogger("trainer")

BENCHMARK_IMAGES = 200  # test images at most: an accuracy to about +-0.03, and cheap at 56,000 images
LATENCY_BATCHES = (1, 32)


def benchmark_images(run_dir: Path, count: int = BENCHMARK_IMAGES) -> tuple[list[str], list[str]]:
    """Up to `count` test images of the run's split.csv, round-robin over the labels (so each
    class is in), in a fixed order: (paths, labels)."""
    by_label: dict[str, list] = {}
    for row in read_split(run_dir / runfolder.SPLIT)["test"]:
        by_label.setdefault(row.label, []).append(row)
    rows = []
    while len(rows) < count and any(by_label.values()):
        for label in sorted(by_label):
            if by_label[label] and len(rows) < count:
                rows.append(by_label[label].pop(0))
    return [str(row.path) for row in rows], [row.label for row in rows]


def benchmark_exports(run_dir: Path, run, rows: list) -> dict:
    """As `yolo benchmark` does for its formats: each format's test accuracy (the run's decision
    rule applied, on at most BENCHMARK_IMAGES test images) and median seconds per image at
    batch 1 and 32 on this machine, after one untimed call: Keras (predict_on_batch), then each
    of `rows` (trainer/exports.py) through its runner, which measures itself (the C library runs
    in its child process, its session loaded once)."""
    paths, labels = benchmark_images(run_dir)
    index = {label: i for i, label in enumerate(run.labels)}
    y = np.array([index[label] for label in labels if label in index])
    if not len(paths) or len(y) != len(paths):
        return {"images": 0, "formats": [], "note": "no test images with the model's labels"}
    images = decoded(paths, run.image_size)
    runners = [("Keras", runfolder.MODEL, lambda: measured(run.model.predict_on_batch, images, LATENCY_BATCHES))]
    runners += [(row.name, row.file, lambda row=row: resolve(row.runner)(run_dir / row.file, images, LATENCY_BATCHES))
                for row in rows]  # fmt: skip
    entries = []
    for name, file, measure in runners:
        try:
            with quiet():
                ran = measure()
        except Exception as error:  # noqa: BLE001 - one format's failure is its row, not the run's
            entries.append({"format": name, "file": file, "error": f"{type(error).__name__}: {str(error)[:200]}"})
            continue
        entries.append(_benchmark_entry(name, file, run, ran.probabilities, y, ran.seconds_per_image))
    for entry in entries:
        if "error" not in entry:
            log.info("export benchmark %-21s accuracy %.3f on %d test images, %.1f ms/image at batch 1, %.1f at 32",
                     entry["format"], entry["accuracy"], len(y), entry["ms_per_image"]["1"],
                     entry["ms_per_image"]["32"])  # fmt: skip
    return {"images": int(len(y)), "batches": list(LATENCY_BATCHES), "formats": entries}


def _benchmark_entry(name: str, file: str, run, probabilities: np.ndarray, y: np.ndarray, latency: dict) -> dict:
    return {
        "format": name,
        "file": file,
        "accuracy": round(float((run.decision.predict(probabilities) == y).mean()), 4),
        "ms_per_image": {str(size): round(seconds * 1000, 3) for size, seconds in latency.items()},
    }
