"""Training, from a validated image list to a complete run folder.

    load_data     rows validated and split (or an explicit validation CSV)
    train_head    pretrained weights: features cached once, the head trained on them
    fine_tune     optionally, the top of the backbone trained on images at a low rate
    train_images  no pretrained weights: the whole network trained on images
    main          evaluation, and the run folder written whole or not at all

Every phase checkpoints each epoch (trainer.resume), so rerunning the same command after a
disconnect resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer import data
from trainer.atomic import link_or_copy, staged_folder
from trainer.config import TrainConfig, save_config
from trainer.errors import CheckFailed, InputError
from trainer.evaluate import classification_metrics, log_loss, summary_line, write_metrics
from trainer.fingerprint import request_key, training_request
from trainer.predict import log_report

log = logging.getLogger("trainer")
DRIVE = Path("/content/drive/MyDrive")


@dataclass
class Data:
    labels: list[str]
    parts: dict[str, list[data.Row]]
    report: data.Report

    def y(self, name: str) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[row.label] for row in self.parts[name]], dtype=np.int32)

    def paths(self, name: str) -> list[str]:
        return [str(row.path) for row in self.parts[name]]

    def fingerprint(self) -> str:
        """One hash of every image's content, label and split: what the run was trained on."""
        digest = hashlib.sha256()
        for name in data.SPLITS:
            for row in sorted(self.parts[name], key=lambda row: row.sha256):
                digest.update(f"{name},{row.label},{row.sha256}\n".encode())
        return digest.hexdigest()


@dataclass
class Phase:
    """What one call to fit returns: the model's history and the weights actually used."""

    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from: int = 0


def load_data(config: TrainConfig) -> Data:
    rows, report = data.load_rows(config.folder, config.file)
    log.info("read %d rows from %s", report.rows_read, config.file or config.folder)
    if config.validation_file:
        validation_rows, validation_report = data.load_rows(config.folder, config.validation_file)
        validation_rows = data.validate(
            validation_rows, validation_report, strict=config.strict, min_class_size=1, allow_one_class=True
        )
        log_report(validation_report)
        held_out = {row.sha256 for row in validation_rows}
        rows = data.validate(rows, report, strict=config.strict, min_class_size=2)
        before = len(rows)
        rows = [row for row in rows if row.sha256 not in held_out]
        if len(rows) < before:
            log.warning(
                "WARNING: %d training image(s) also in --validation-file: kept for validation only", before - len(rows)
            )
        parts = data.split(rows, 0.0, config.test_fraction, config.seed)
        parts["validation"] = validation_rows
    else:
        rows = data.validate(rows, report, strict=config.strict)
        parts = data.split(rows, config.validation_fraction, config.test_fraction, config.seed)
    log_report(report)
    labels = sorted({row.label for name in data.SPLITS for row in parts[name]})
    unknown = sorted({row.label for row in parts["validation"]} - {row.label for row in parts["train"]})
    if unknown:
        raise InputError(f"--validation-file: label(s) {', '.join(map(repr, unknown))} have no training images")
    for name in data.SPLITS:
        counts = Counter(row.label for row in parts[name])
        log.info("%-10s %4d images: %s", name, len(parts[name]), ", ".join(f"{k} {counts[k]}" for k in labels))
    return Data(labels, parts, report)


def drive_workspace(config: TrainConfig) -> Path:
    """MyDrive/<model name>-workspace: beside the published MyDrive/<model name>/, not inside
    it, since publishing swaps that folder whole."""
    return DRIVE / f"{config.model_name}-workspace"


def default_workspace(config: TrainConfig) -> Path:
    if config.workspace:
        return Path(config.workspace)
    return drive_workspace(config) if DRIVE.is_dir() else Path("workspace")


def weights_cache_dir(config: TrainConfig) -> Path | None:
    """Where Keras should keep downloaded ImageNet weights: --weights-cache, else on Drive when
    it is mounted, else None (Keras's own ~/.keras)."""
    if config.weights_cache:
        return Path(config.weights_cache)
    return drive_workspace(config) / "keras" if DRIVE.is_dir() else None


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


def class_weights(config: TrainConfig, y_train: np.ndarray, num_classes: int) -> dict[int, float] | None:
    """Balanced weights n / (k * n_c); with auto, only when the largest class has 1.5x the smallest."""
    counts = np.bincount(y_train, minlength=num_classes).astype(float)
    if config.class_weights == "none" or counts.min() == 0:
        return None
    if config.class_weights == "auto" and counts.max() < 1.5 * counts.min():
        return None
    weights = counts.sum() / (num_classes * counts)
    log.info("class weights: %s", ", ".join(f"{i}: {w:.2f}" for i, w in enumerate(weights)))
    return {i: float(w) for i, w in enumerate(weights)}


def make_optimizer(config: TrainConfig, steps_per_epoch: int, epochs: int, learning_rate: float | None = None):
    import keras

    rate = learning_rate or config.learning_rate
    schedules = keras.optimizers.schedules
    decay_steps = max(1, int(config.decay_epochs * steps_per_epoch))
    if config.lr_schedule == "exponential" and learning_rate is None:
        rate = schedules.ExponentialDecay(rate, decay_steps, config.decay_rate, staircase=True)
    elif config.lr_schedule == "polynomial" and learning_rate is None:
        rate = schedules.PolynomialDecay(rate, decay_steps, config.end_learning_rate, power=1.0)
    elif config.lr_schedule == "cosine" and learning_rate is None:
        total = max(1, epochs * steps_per_epoch)
        rate = schedules.CosineDecay(rate, total, alpha=config.end_learning_rate / config.learning_rate)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate)
    return keras.optimizers.Adam(rate)


def _fit(
    model,
    config: TrainConfig,
    train,
    validation,
    *,
    epochs: int,
    steps: int,
    checkpoint: Path,
    weights: dict | None,
    checkpoint_every: float = 0.0,
) -> Phase:
    """fit with early stopping and checkpoints (each epoch, or every checkpoint_every seconds);
    resumes from a checkpoint if present."""
    import keras
    import tensorflow as tf

    from trainer.resume import Checkpoints

    strategy = model.distribute_strategy
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return _fit_multi_worker(model, strategy, config, train, validation, epochs=epochs, weights=weights)

    monitor = "val_" + config.early_stopping_metric
    stopper = keras.callbacks.EarlyStopping(
        monitor=monitor,
        mode="min" if config.early_stopping_metric == "loss" else "max",
        min_delta=config.min_delta,
        patience=config.patience,
        restore_best_weights=True,
        verbose=1,
    )
    checkpoints = Checkpoints(checkpoint, stopper, checkpoint_every)
    initial_epoch = checkpoints.restore(model, steps)
    if initial_epoch >= epochs or checkpoints.stopped:
        log.info("phase already finished at epoch %d (checkpoint in %s)", initial_epoch, checkpoint)
        checkpoints.restore_best(model)
        return Phase(checkpoints.history, initial_epoch)
    # Keras prints its epoch lines on stdout; stdout is kept for the run folder's path.
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=weights,
            callbacks=[stopper, checkpoints],
            verbose=1 if sys.stderr.isatty() else 2,
        )
    return Phase(checkpoints.history, initial_epoch)


def _compile_and_fit(
    model,
    strategy,
    config: TrainConfig,
    datasets: dict,
    *,
    phase: str,
    epochs: int,
    steps: int,
    checkpoint_root: Path,
    weights: dict | None,
    jit_compile: bool = False,
    learning_rate: float | None = None,
) -> Phase:
    """One training phase: compile under the strategy, then _fit on the train and validation sets.

    The head on cached features runs a whole epoch per call into the graph (steps_per_execution)
    and checkpoints every 30 s: its epochs take milliseconds, so per-step and per-epoch overhead
    would be most of its cost. jit_compile: XLA for the training step (the GPU policy's choice;
    Keras's own default turns it off on CPU-only machines, so a forced policy must say so)."""
    head = phase == "head"
    with strategy.scope():
        model.compile(
            make_optimizer(config, steps, epochs, learning_rate),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=steps if head else 1,
            jit_compile=jit_compile,
        )
    return _fit(
        model,
        config,
        datasets["train"],
        datasets["validation"],
        epochs=epochs,
        steps=steps,
        checkpoint=checkpoint_root / phase,
        weights=weights,
        checkpoint_every=30.0 if head else 0.0,
    )


def _fit_multi_worker(model, strategy, config: TrainConfig, train, validation, *, epochs: int, weights) -> Phase:
    """Keras 3's fit does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
    several workers train with this loop: strategy.run per batch, gradients all-reduced, early
    stopping on the validation loss or accuracy. It keeps no per-epoch checkpoints."""
    import keras
    import tensorflow as tf

    class_weight = tf.constant([weights[i] for i in sorted(weights)] if weights else [1.0] * model.output_shape[-1])

    def replica_step(images, labels, training: bool):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=training)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            weighted = per_example * tf.gather(class_weight, labels) if training else per_example
            loss = tf.nn.compute_average_loss(weighted, global_batch_size=global_batch)
        if training:
            gradients = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(probabilities, 1, output_type=tf.int32), labels), tf.float32)
        )
        return tf.reduce_sum(per_example), correct, tf.cast(tf.size(labels), tf.float32)

    @tf.function
    def step(batch, training: bool):
        totals = strategy.run(replica_step, args=(*batch, training))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in totals]

    def run_epoch(dataset, training: bool) -> tuple[float, float]:
        loss = correct = count = 0.0
        for batch in dataset:
            batch_loss, batch_correct, batch_count = step(batch, training)
            loss, correct, count = loss + float(batch_loss), correct + float(batch_correct), count + float(batch_count)
        return loss / max(count, 1.0), correct / max(count, 1.0)

    global_batch = config.batch_size * strategy.num_replicas_in_sync
    train_dist = strategy.experimental_distribute_dataset(train)
    validation_dist = strategy.experimental_distribute_dataset(validation)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    sign = 1.0 if config.early_stopping_metric == "loss" else -1.0
    best, best_weights, wait = float("inf"), None, 0
    for epoch in range(epochs):
        loss, accuracy = run_epoch(train_dist, True)
        val_loss, val_accuracy = run_epoch(validation_dist, False)
        for key, value in zip(history, (loss, accuracy, val_loss, val_accuracy), strict=True):
            history[key].append(value)
        log.info(
            "epoch %d/%d - loss %.4f - accuracy %.4f - val_loss %.4f - val_accuracy %.4f",
            epoch + 1,
            epochs,
            loss,
            accuracy,
            val_loss,
            val_accuracy,
        )
        score = sign * (val_loss if config.early_stopping_metric == "loss" else val_accuracy)
        if score < best - config.min_delta:
            best, best_weights, wait = score, model.get_weights(), 0
        else:
            wait += 1
            if wait > config.patience:
                log.info("epoch %d: early stopping", epoch + 1)
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return Phase(history, 0)


def _feature_datasets(
    features: dict[str, np.ndarray], loaded: Data, batch_size: int, seed: int, augmented: np.ndarray | None = None
):
    """tf.data over cached features; `augmented` stacks the training images' features seen in
    every --feature-augment view (the identity first), which the head trains on."""
    import tensorflow as tf

    from trainer.pipeline import prefetched

    out = {}
    for name in data.SPLITS:
        values, labels = features[name], loaded.y(name)
        if name == "train" and augmented is not None:
            values, labels = augmented, np.tile(labels, len(augmented) // len(labels))
        dataset = tf.data.Dataset.from_tensor_slices((values, labels))
        if name == "train":
            dataset = dataset.shuffle(len(values), seed=seed, reshuffle_each_iteration=True)
        out[name] = _distributable(prefetched(dataset.batch(batch_size)))
    out["train_eval"] = tf.data.Dataset.from_tensor_slices((features["train"], loaded.y("train"))).batch(batch_size)
    return out


def _image_datasets(config: TrainConfig, loaded: Data, batch_size: int, augment: bool):
    from trainer.pipeline import augmentation, fits_in_memory, make_dataset

    total = sum(map(len, loaded.parts.values()))
    cache = fits_in_memory(total, config.image_size, config.cache_megabytes)
    out = {}
    for name in data.SPLITS:
        out[name] = _distributable(
            make_dataset(
                loaded.paths(name),
                loaded.y(name),
                config.image_size,
                batch_size,
                shuffle=name == "train",
                seed=config.seed,
                cache=cache and name != "test",
                augment=augmentation(config.seed) if augment and name == "train" else None,
            )
        )
    # The training images in order, unaugmented: for --metrics-on-train.
    out["train_eval"] = make_dataset(loaded.paths("train"), loaded.y("train"), config.image_size, batch_size)
    return out


def _distributable(dataset):
    """Shard by element, not by file: the pipelines start from in-memory lists."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _predict(model, dataset) -> np.ndarray:
    return model.predict(dataset, verbose=0)


def _validation_loss(model, dataset, labels: np.ndarray) -> float:
    """The log-loss metrics.json reports, for the fine-tuning guard."""
    return log_loss(labels, _predict(model, dataset))


def main(config: TrainConfig) -> Path:
    """Train and evaluate; return the run folder. Everything is written to a hidden staging
    folder beside the run folder and renamed at the end, so a run folder is always complete."""
    config.check()
    request = training_request(config)  # before anything else reads the data: what this run is from
    run_dir = _run_dir(config)
    workspace = default_workspace(config)
    cache_dir = weights_cache_dir(config)
    if cache_dir is not None:
        # Keras reads KERAS_HOME when it downloads: ImageNet weights on Drive survive a reset.
        os.environ["KERAS_HOME"] = str(cache_dir)
    loaded = load_data(config)

    import keras
    import tensorflow as tf

    from trainer import device
    from trainer.model import (
        cut_backbone,
        feature_extractor,
        float32_copy,
        load_backbone,
        make_head,
        make_model,
        unfreeze_top,
    )

    workers = device.workers_from_tf_config()
    # Collective ops must be configured before TensorFlow runs anything else.
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else None
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = device.decide(device.visible_devices(), config.mixed_precision, config.xla, workers)
    onednn, onednn_reason = device.onednn()
    log.info("%s; %s", policy.describe(), onednn_reason)
    if policy.mixed_precision:
        keras.mixed_precision.set_global_policy(policy.mixed_precision)
    tf.config.optimizer.set_jit(policy.xla)
    strategy = multi_worker or device.make_strategy(policy)
    # Keras turns XLA off under a distribution strategy; one device follows the policy.
    jit_compile = policy.xla and policy.replicas == 1
    batch_size = device.global_batch_size(config.batch_size, policy)
    fingerprint = loaded.fingerprint()
    checkpoint_root = workspace / "checkpoints" / _resume_key(config, fingerprint)
    if not device.is_chief():
        kind, index = device.task()
        checkpoint_root = checkpoint_root.with_name(f"{checkpoint_root.name}-{kind}{index}")
    weights = class_weights(config, loaded.y("train"), len(loaded.labels))
    started = time.time()
    phases: dict[str, Phase] = {}
    cache_key = None
    fine_tune_outcome = None

    with strategy.scope():
        backbone, weights_used = load_backbone(config.backbone, config.image_size, config.weights)
        if config.feature_layer:
            backbone = cut_backbone(backbone, config.feature_layer)
    pretrained = weights_used != "none"
    if pretrained:
        from trainer.features import VIEWS, cached_features
        from trainer.features import cache_key as make_cache_key

        cache_key = make_cache_key(
            config.backbone,
            config.image_size,
            weights_used,
            config.feature_layer,
            keras.mixed_precision.global_policy(),
        )
        extractor = feature_extractor(backbone, config.backbone)
        every_row = [row for name in data.SPLITS for row in loaded.parts[name]]
        featurize_batch = device.featurize_batch_size(batch_size, device.visible_devices(), onednn)

        def featurized(rows, views: tuple[str, ...] = ("id",)) -> np.ndarray:
            vectors = cached_features(
                extractor,
                rows,
                config.image_size,
                featurize_batch,
                workspace / "features" / cache_key,
                jit_compile=policy.xla,
                views=views,
            )
            if not np.isfinite(vectors).all():
                bad = int((~np.isfinite(vectors).all(axis=1)).sum())
                raise CheckFailed(
                    f"{config.backbone}: the features of {bad} image(s) are not finite under "
                    f"{keras.mixed_precision.global_policy().name}; rerun with --mixed-precision off"
                )
            return vectors

        vectors = featurized(every_row)
        features, start = {}, 0
        for name in data.SPLITS:
            features[name] = vectors[start : start + len(loaded.parts[name])]
            start += len(loaded.parts[name])
        views = VIEWS[config.feature_augment]
        augmented = None
        if len(views) > 1:
            augmented = np.concatenate([features["train"], featurized(loaded.parts["train"], views[1:])])
        log.info(
            "%s, weights %s: bottleneck mode, training the head on %d-dimensional features%s",
            config.backbone,
            weights_used,
            features["train"].shape[1],
            f" of {len(views)} views of each training image ({config.feature_augment})" if len(views) > 1 else "",
        )
        datasets = _feature_datasets(features, loaded, batch_size, config.seed, augmented)
        train_features = features["train"] if augmented is None else augmented
        steps = math.ceil(len(train_features) / batch_size)
        with strategy.scope():
            head = make_head(train_features, len(loaded.labels), config.dropout, config.head_c, len(features["train"]))
        phases["head"] = _compile_and_fit(
            head,
            strategy,
            config,
            datasets,
            phase="head",
            epochs=config.epochs,
            steps=steps,
            checkpoint_root=checkpoint_root,
            weights=weights,
            jit_compile=jit_compile,
        )
        with strategy.scope():
            model = make_model(backbone, config.backbone, len(loaded.labels), True, config.dropout, head)
        if config.fine_tune_layers:
            images = _image_datasets(config, loaded, batch_size, config.augment)
            before = _validation_loss(model, images["validation"], loaded.y("validation"))
            head_only = model.get_weights()
            with strategy.scope():
                unfrozen = unfreeze_top(backbone, config.fine_tune_layers)
            log.info(
                "fine-tuning the top %d backbone layers at learning rate %g", unfrozen, config.fine_tune_learning_rate
            )
            phases["fine_tune"] = _compile_and_fit(
                model,
                strategy,
                config,
                images,
                phase="fine_tune",
                epochs=config.fine_tune_epochs,
                steps=math.ceil(len(loaded.parts["train"]) / batch_size),
                checkpoint_root=checkpoint_root,
                weights=weights,
                jit_compile=jit_compile,
                learning_rate=config.fine_tune_learning_rate,
            )
            after = _validation_loss(model, images["validation"], loaded.y("validation"))
            fine_tune_outcome = {"validation_loss_before": round(before, 6), "validation_loss_after": round(after, 6)}
            # Fine-tuning a few hundred images can make the model worse; early stopping only picks
            # the best of its own epochs, so the model before it is one more candidate.
            if not after < before:
                model.set_weights(head_only)
                log.info("fine-tuning did not lower the validation loss (%.4f -> %.4f): kept the model before it",
                         before, after)  # fmt: skip
            fine_tune_outcome["kept"] = bool(after < before)
    else:
        images = _image_datasets(config, loaded, batch_size, config.augment)
        steps = math.ceil(len(loaded.parts["train"]) / batch_size)
        with strategy.scope():
            model = make_model(backbone, config.backbone, len(loaded.labels), False, config.dropout)
        log.info(
            "%s, weights none: training the whole network, %s trainable parameters",
            config.backbone,
            f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,}",
        )
        phases["train"] = _compile_and_fit(
            model,
            strategy,
            config,
            images,
            phase="train",
            epochs=config.epochs,
            steps=steps,
            checkpoint_root=checkpoint_root,
            weights=weights,
            jit_compile=jit_compile,
        )
    seconds = time.time() - started
    if policy.mixed_precision:
        # What is evaluated, saved and exported computes in float32 (see model.float32_copy).
        keras.mixed_precision.set_global_policy("float32")
        model = float32_copy(model)
        if pretrained:
            head = float32_copy(head)
    if pretrained and not config.fine_tune_layers:
        evaluate_on = {name: (head, datasets[name]) for name in ("test", "validation", "train_eval")}
    else:
        evaluate_on = {name: (model, images[name]) for name in ("test", "validation", "train_eval")}

    metrics, probabilities = {}, {}
    for name in ("test", "validation", "train") if config.metrics_on_train else ("test", "validation"):
        predictor, dataset = evaluate_on["train_eval" if name == "train" else name]
        probabilities[name] = _predict(predictor, dataset)
        metrics[name] = classification_metrics(loaded.y(name), probabilities[name], loaded.labels)
    log.info("test: %s", summary_line(metrics["test"]))
    if config.metrics_on_train:
        log.info("train: %s", summary_line(metrics["train"]))

    if not device.is_chief():
        shutil.rmtree(checkpoint_root, ignore_errors=True)
        log.info("worker done; the chief writes the run folder")
        return run_dir
    history = _join_history(phases)
    manifest = _manifest(config, loaded, policy, weights_used, cache_key, fingerprint, seconds, phases)
    manifest.update(request=request, request_key=request_key(request))
    if fine_tune_outcome is not None:
        manifest["fine_tune"] = fine_tune_outcome
    export_error = _write_run(run_dir, config, model, loaded, metrics, probabilities, history, manifest, weights_used)
    shutil.rmtree(checkpoint_root, ignore_errors=True)
    log.info("run folder: %s", run_dir)
    if export_error:
        raise CheckFailed(f"{export_error}; the run folder is complete otherwise")
    return run_dir


def _resume_key(config: TrainConfig, fingerprint: str) -> str:
    """The same command on the same data gives the same key, whatever its output folder."""
    options = {
        k: v
        for k, v in config.to_dict().items()
        if k not in ("output", "runs_dir", "workspace", "weights_cache", "export")
    }
    return hashlib.sha256(json.dumps([options, fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _join_history(phases: dict[str, Phase]) -> list[dict]:
    rows = []
    for phase, result in phases.items():
        keys = list(result.history)
        for index in range(len(result.history[keys[0]]) if keys else 0):
            rows.append({"phase": phase, "epoch": index + 1, **{key: result.history[key][index] for key in keys}})
    return rows


def _manifest(config, loaded, policy, weights_used, cache_key, fingerprint, seconds, phases) -> dict:
    import platform
    from importlib import metadata

    versions = {}
    for name in ("tensorflow", "keras", "numpy", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    from trainer import device

    onednn, onednn_reason = device.onednn()
    return {
        "versions": versions,
        "hardware": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "devices": [f"{d.kind}:{d.name}" if d.name else d.kind for d in device.visible_devices()],
        },
        "policy": {
            "strategy": policy.strategy,
            "replicas": policy.replicas,
            "mixed_precision": policy.mixed_precision,
            "xla": policy.xla,
            "reasons": policy.reasons,
            "onednn": onednn,
            "onednn_reason": onednn_reason,
        },
        "data": {
            "fingerprint": fingerprint,
            "images": {name: len(loaded.parts[name]) for name in data.SPLITS},
            "hashes": "split.csv lists every image's SHA-256",
        },
        "weights_used": weights_used,
        "feature_cache_key": cache_key,
        "training_seconds": round(seconds, 2),
        "resumed_from_epoch": {name: phase.resumed_from for name, phase in phases.items() if phase.resumed_from},
    }


def _write_history(history: list[dict], path: Path) -> None:
    keys = sorted({key for row in history for key in row if key not in ("phase", "epoch")})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["phase", "epoch", *keys])
        for row in history:
            writer.writerow([row["phase"], row["epoch"], *(f"{row[key]:.6f}" if key in row else "" for key in keys)])


def _write_tensorboard(history: list[dict], folder: Path) -> None:
    """TensorBoard scalars from the history, laid out as Keras's callback lays them out
    (logs/train, logs/validation, epoch_loss and epoch_accuracy): `tensorboard --logdir RUN/logs`."""
    import tensorflow as tf

    writers = {"train": "", "validation": "val_"}
    for split, prefix in writers.items():
        writer = tf.summary.create_file_writer(str(folder / split))
        with writer.as_default():
            for step, row in enumerate(history, start=1):
                for metric in ("loss", "accuracy"):
                    if prefix + metric in row:
                        tf.summary.scalar(f"epoch_{metric}", row[prefix + metric], step=step)
        writer.close()


def _write_run(
    run_dir: Path,
    config,
    model,
    loaded: Data,
    metrics: dict,
    probabilities: dict,
    history: list[dict],
    manifest: dict,
    weights_used: str,
) -> str | None:
    """Everything the run leaves, written whole or not at all. Returns the export check's
    message when an export disagrees: the run folder is still written, since the model is good."""
    from trainer import report
    from trainer.export import export_run, parse_formats

    export_error = None
    with staged_folder(run_dir) as staging:
        model.save(staging / "model.keras")
        link_or_copy(staging / "model.keras", staging / f"{config.model_name}.keras")
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
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        write_metrics(
            {
                **metrics["test"],
                **{name: metrics[name] for name in ("validation", "train") if name in metrics},
                "epochs_run": {row["phase"]: row["epoch"] for row in history},
                "training_seconds": manifest["training_seconds"],
                "data": loaded.report.to_dict(),
            },
            staging / "metrics.json",
        )
        report.write_predictions(
            staging / "predictions.csv",
            loaded.labels,
            {
                name: (loaded.paths(name), [row.label for row in loaded.parts[name]], p)
                for name, p in probabilities.items()
            },
        )
        _write_tensorboard(history, staging / "logs")
        formats = parse_formats(config.export)
        if formats:
            try:
                export_run(staging, formats)
            except CheckFailed as error:
                export_error = str(error).replace(str(staging), str(run_dir))
        report.build(staging, run_dir.name)
    return export_error
