"""Training, from a validated image list to a complete run folder.

load_data  -> rows validated and split
fit        -> a model trained with early stopping on the validation split
main       -> evaluation on the test split and the run folder, written whole or not at all
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import data
from trainer.config import TrainConfig, save_config
from trainer.errors import InputError
from trainer.evaluate import classification_metrics, summary_line, write_metrics
from trainer.predict import log_report

log = logging.getLogger("trainer")


@dataclass
class Data:
    labels: list[str]
    parts: dict[str, list[data.Row]]
    report: data.Report


def load_data(config: TrainConfig) -> Data:
    rows, report = data.load_rows(config.folder, config.file)
    log.info("read %d rows from %s", report.rows_read, config.file or config.folder)
    rows = data.validate(rows, report, strict=config.strict)
    log_report(report)
    labels = sorted({row.label for row in rows})
    parts = data.split(rows, config.validation_fraction, config.test_fraction, config.seed)
    for name in data.SPLITS:
        counts = Counter(row.label for row in parts[name])
        log.info("%-10s %4d images: %s", name, len(parts[name]), ", ".join(f"{k} {counts[k]}" for k in labels))
    return Data(labels, parts, report)


def _run_dir(config: TrainConfig) -> Path:
    if config.output:
        run_dir = Path(config.output)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise InputError(f"--output: {run_dir} already exists and is not empty; choose a new folder")
        return run_dir
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{config.backbone}"
    run_dir = Path(config.runs_dir) / stem
    suffix = 2
    while run_dir.exists():
        run_dir = Path(config.runs_dir) / f"{stem}-{suffix}"
        suffix += 1
    return run_dir


def _datasets(config: TrainConfig, loaded: Data):
    from trainer.pipeline import fits_in_memory, make_dataset

    index = {label: i for i, label in enumerate(loaded.labels)}
    cache = fits_in_memory(sum(map(len, loaded.parts.values())), config.image_size, config.cache_megabytes)
    datasets = {}
    for name, rows in loaded.parts.items():
        datasets[name] = make_dataset(
            [str(row.path) for row in rows],
            [index[row.label] for row in rows],
            config.image_size,
            config.batch_size,
            shuffle=name == "train",
            seed=config.seed,
            cache=cache and name != "test",
        )
    return datasets


def fit(config: TrainConfig, loaded: Data, datasets: dict):
    """Build the model, train it with early stopping, and return it with its history."""
    import keras

    from trainer.model import load_backbone, make_model

    keras.utils.set_random_seed(config.seed)
    backbone, weights_used = load_backbone(config.backbone, config.image_size, config.weights)
    pretrained = weights_used != "none"
    model = make_model(backbone, config.backbone, len(loaded.labels), pretrained, config.dropout)
    log.info(
        "%s, weights %s: %s, %s trainable parameters",
        config.backbone,
        weights_used,
        "backbone frozen, training the head" if pretrained else "training the whole network",
        f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,}",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True, verbose=1
    )
    # Keras prints its epoch lines on stdout; stdout is kept for the run folder's path.
    with contextlib.redirect_stdout(sys.stderr):
        history = model.fit(
            datasets["train"],
            validation_data=datasets["validation"],
            epochs=config.epochs,
            callbacks=[stopper],
            verbose=1 if sys.stderr.isatty() else 2,
        )
    return model, history.history, weights_used


def _write_history(history: dict, path: Path) -> None:
    keys = list(history)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch", *keys])
        for epoch in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([epoch + 1, *(f"{history[key][epoch]:.6f}" for key in keys)])


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def main(config: TrainConfig) -> Path:
    """Train and evaluate; return the run folder. Everything is written to a hidden staging
    folder beside the run folder and renamed at the end, so a run folder is always complete."""
    config.check()
    run_dir = _run_dir(config)
    loaded = load_data(config)
    datasets = _datasets(config, loaded)
    started = time.time()
    model, history, weights_used = fit(config, loaded, datasets)
    seconds = time.time() - started

    index = {label: i for i, label in enumerate(loaded.labels)}
    metrics = {}
    for name in ("test", "validation"):
        rows = loaded.parts[name]
        probabilities = model.predict(datasets[name], verbose=0)
        metrics[name] = classification_metrics(
            np.array([index[row.label] for row in rows]), probabilities, loaded.labels
        )
    log.info("test: %s", summary_line(metrics["test"]))

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.partial-", dir=run_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a run folder is for sharing
    try:
        model.save(staging / "model.keras")
        _link_or_copy(staging / "model.keras", staging / f"{config.model_name}.keras")
        (staging / "labels.txt").write_text("\n".join(loaded.labels) + "\n", encoding="utf-8")
        save_config(
            config,
            staging / "config.json",
            weights_used=weights_used,
            labels=loaded.labels,
            folder_resolved=str(Path(config.folder).resolve()),
        )
        data.write_split(loaded.parts, staging / "split.csv")
        _write_history(history, staging / "history.csv")
        write_metrics(
            {
                **metrics["test"],
                "validation": metrics["validation"],
                "epochs_run": len(history.get("loss", [])),
                "training_seconds": round(seconds, 2),
                "data": loaded.report.to_dict(),
            },
            staging / "metrics.json",
        )
        if run_dir.exists():
            run_dir.rmdir()  # an empty folder the user named with --output
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("run folder: %s", run_dir)
    return run_dir
