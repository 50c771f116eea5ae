"""Predict labels for images with a trained run: ImagePath,PredictedLabel,Score."""

from __future__ import annotations

import csv
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import data
from trainer.errors import InputError
from trainer.images import is_image_file

log = logging.getLogger("trainer")


@dataclass
class Run:
    path: Path
    model: object
    labels: list[str]
    image_size: int

    def predict(self, paths: list[str], batch_size: int = 32) -> np.ndarray:
        from trainer.pipeline import make_dataset

        if not paths:
            return np.zeros((0, len(self.labels)))
        dataset = make_dataset(paths, None, self.image_size, batch_size)
        return self.model.predict(dataset, verbose=0)


def load_run(location: str | Path) -> Run:
    """A run folder (model.keras + labels.txt) or a .keras file with labels.txt beside it."""
    location = Path(location)
    run_dir = location.parent if location.suffix == ".keras" else location
    model_path = location if location.suffix == ".keras" else location / "model.keras"
    labels_path = run_dir / "labels.txt"
    if not model_path.is_file():
        raise InputError(f"--model: {model_path} not found; pass a run folder written by 'trainer train'")
    if not labels_path.is_file():
        raise InputError(f"--model: {labels_path} not found; the run folder is incomplete")
    import keras

    model = keras.models.load_model(model_path, compile=False)
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if model.output_shape[-1] != len(labels):
        raise InputError(f"{labels_path}: {len(labels)} labels for a model with {model.output_shape[-1]} outputs")
    return Run(run_dir, model, labels, int(model.input_shape[1]))


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files as given, every image under a folder, or the ImagePath column of a CSV."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise InputError(f"{path}: no images in this folder")
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            rows, _ = data.read_csv_rows(path, path.parent)
            paths += [row.path for row in rows]
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return paths


def log_report(report: data.Report) -> None:
    for line in report.lines():
        log.warning("WARNING: %s", line)
    for note in report.notes:
        log.info("%s", note)


def predict_images(
    run: Run, inputs: list[str], output: str | None, batch_size: int = 32
) -> list[tuple[str, str, float]]:
    from trainer.images import inspect_image

    paths = collect_images(inputs)
    for path in paths:
        inspect_image(path)  # one clear error for a bad file, before any prediction
    probabilities = run.predict([str(p) for p in paths], batch_size)
    results = [
        (str(path), run.labels[int(p.argmax())], float(p.max())) for path, p in zip(paths, probabilities, strict=True)
    ]
    if output:
        destination = Path(output)
        temporary = destination.with_name(f".{destination.name}.partial")
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            _write_rows(handle, results)
        temporary.replace(destination)
    else:
        _write_rows(sys.stdout, results)
    return results


def _write_rows(handle, results) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(["ImagePath", "PredictedLabel", "Score"])
    for path, label, score in results:
        writer.writerow([path, label, f"{score:.6f}"])


def read_config(run: Run) -> dict:
    path = run.path / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}
