"""Training, from a validated image list to a complete run folder.

    load_data        rows validated and split (or an explicit validation CSV)
    start_session    seeds, the GPU policy, the distribution strategy, checkpoint places
    featurize        pretrained weights: every image's features, computed once and cached
    train_head       the classifier trained on the cached features
    fine_tune        optionally, the top of the backbone trained on images at a low rate
    train_images     no pretrained weights: the whole network trained on images
    evaluate_splits  metrics on the held-out splits
    main             the phases in order, and the run folder written whole or not at all

Every phase checkpoints each epoch (trainer.resume), so rerunning the same command after a
disconnect resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer import data, decision, diagnostics, multiworker, pipeline, runfolder
from trainer.atomic import link_or_copy, partial_folder
from trainer.config import TrainConfig, save_config
from trainer.errors import CheckFailed, InputError
from trainer.evaluate import classification_metrics, log_loss, summary_line, write_metrics
from trainer.export import parse_formats
from trainer.fingerprint import remember, request_key, stat_cache, training_request
from trainer.predict import log_report
from trainer.stages import Stages

log = logging.getLogger("trainer")
DRIVE = Path("/content/drive/MyDrive")


@dataclass
class Data:
    labels: list[str]
    parts: dict[str, list[data.Row]]
    report: data.Report
    files: dict = field(default_factory=dict)  # every listed file's FileState, as validation read it
    listed: tuple = ((), None)  # (rows, validation rows) as listed, before validation: the digest's input

    def y(self, name: str) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[row.label] for row in self.parts[name]], dtype=np.int32)

    def paths(self, name: str) -> list[str]:
        return [str(row.path) for row in self.parts[name]]

    def labels_by_split(self) -> dict[str, np.ndarray]:
        return {name: self.y(name) for name in data.SPLITS}

    def paths_by_split(self) -> dict[str, list[str]]:
        return {name: self.paths(name) for name in data.SPLITS}

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
    rows, report = data.load_rows(config.folder, config.file, config.label_folder, config.merge_labels)
    log.info("read %d rows from %s", report.rows_read, config.file or config.folder)
    listed = (list(rows), None)
    if config.validation_file:
        validation_rows, validation_report = data.load_rows(
            config.folder, config.validation_file, config.label_folder, config.merge_labels
        )
        listed = (listed[0], list(validation_rows))
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
        report.files.update(validation_report.files)
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
    return Data(labels, parts, report, report.files, listed)


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
        return Phase(multiworker.fit(model, strategy, config, train, validation, epochs=epochs, weights=weights))

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


def _predict(model, dataset) -> np.ndarray:
    return model.predict(dataset, verbose=0)


def _validation_loss(model, dataset, labels: np.ndarray) -> float:
    """The log-loss metrics.json reports, for the fine-tuning guard."""
    return log_loss(labels, _predict(model, dataset))


@dataclass
class Session:
    """What every phase shares: the options, the device's decisions and where checkpoints go."""

    config: TrainConfig
    strategy: object
    policy: object  # trainer.device.Policy
    onednn: bool
    batch_size: int  # global: per replica times replicas
    jit_compile: bool  # XLA for Keras's training step; Keras turns it off under a strategy
    workspace: Path
    checkpoint_root: Path
    class_weights: dict[int, float] | None

    def fit(self, model, datasets: dict, *, phase: str, epochs: int, images: int, learning_rate=None) -> Phase:
        steps = math.ceil(images / self.batch_size)
        return _compile_and_fit(
            model,
            self.strategy,
            self.config,
            datasets,
            phase=phase,
            epochs=epochs,
            steps=steps,
            checkpoint_root=self.checkpoint_root,
            weights=self.class_weights,
            jit_compile=self.jit_compile,
            learning_rate=learning_rate,
        )


def start_session(config: TrainConfig, loaded: Data, workspace: Path, options: dict) -> Session:
    """Seeds, determinism, the GPU policy and the distribution strategy, decided once; `options`
    are the request's compared options, which key the checkpoints."""
    import keras
    import tensorflow as tf

    from trainer import device

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
    checkpoint_root = workspace / "checkpoints" / _resume_key(options, loaded.fingerprint())
    if not device.is_chief():
        kind, index = device.task()
        checkpoint_root = checkpoint_root.with_name(f"{checkpoint_root.name}-{kind}{index}")
    return Session(
        config,
        multi_worker or device.make_strategy(policy),
        policy,
        onednn,
        device.global_batch_size(config.batch_size, policy),
        policy.xla and policy.replicas == 1,
        workspace,
        checkpoint_root,
        class_weights(config, loaded.y("train"), len(loaded.labels)),
    )


@dataclass
class Features:
    """Every feature row a run uses, held once in one float32 array: first every image (train,
    validation, test, in that order), then the training images seen in each other
    --feature-augment view, view after view. Splits are slices of it and the head's training
    set is a list of row indices, so nothing is copied to make either."""

    store: np.ndarray
    sizes: dict[str, int]  # images per split
    views: int  # views of each training image, the image itself included
    rows: object = None  # pipeline.Rows over the store, once the head's datasets gather from it

    def release(self) -> None:
        """Let the store go (the label audit runs on a copy of each image's own row)."""
        if self.rows is not None:
            self.rows.release()
        self.store = None

    def start(self, name: str) -> int:
        """The split's first row in the store."""
        return sum(self.sizes[other] for other in data.SPLITS[: data.SPLITS.index(name)])

    def split(self, name: str) -> np.ndarray:
        return self.store[self.start(name) : self.start(name) + self.sizes[name]]

    def every(self) -> np.ndarray:
        """Each image once, in split order (what the label audit reads)."""
        return self.store[: sum(self.sizes.values())]

    def train_indices(self) -> np.ndarray:
        """Every view of every training image: the identity rows, then the other views' rows."""
        images = sum(self.sizes.values())
        return np.concatenate([np.arange(self.sizes["train"]), np.arange(images, len(self.store))])

    def train_parts(self) -> list[np.ndarray]:
        return [self.split("train"), self.store[sum(self.sizes.values()) :]]

    @property
    def dimensions(self) -> int:
        return int(self.store.shape[1])


STORE_SHARE = 0.5  # a feature store larger than this share of the memory available goes to a file


def available_bytes() -> int | None:
    """The memory this process may still take: MemAvailable, or what the cgroup's limit leaves
    when that is less (a container); None where neither can be read."""
    found = []
    with contextlib.suppress(OSError, ValueError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        found.append(int(next(line for line in lines if line.startswith("MemAvailable:")).split()[1]) * 1024)
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    return min(found) if found else None


def feature_store(rows: int, width: int) -> np.ndarray:
    """An empty float32 [rows, width] store: in memory, or, when it would take more than
    STORE_SHARE of the memory available, in an unlinked temporary file mapped into memory (local
    disk under TMPDIR, never the workspace, which may be Drive), so the kernel pages it out
    rather than the run dying: slower, but it finishes, and the file goes with the store."""
    size, available = rows * width * 4, available_bytes()
    if available is None or size <= STORE_SHARE * available:
        return np.empty((rows, width), dtype=np.float32)
    log.info("the features take %.1f GB, more than half of the %.1f GB of memory available: kept in a "
             "memory-mapped file under %s", size / 1e9, available / 1e9, tempfile.gettempdir())  # fmt: skip
    with tempfile.TemporaryFile(prefix="features-") as handle:  # the mapping outlives the descriptor
        handle.truncate(max(size, 1))
        return np.memmap(handle, dtype=np.float32, mode="r+", shape=(rows, width))


def featurize(session: Session, backbone, weights_used: str, loaded: Data):
    """Every image's pooled features, from the cache where it has them, into one array
    (Features), and what the cache did: its key, per view how many images it had and how many
    went through the backbone, the runtime that ran it (trainer.featurizer; None when nothing
    was featurized), and the seconds it all took."""
    import keras

    from trainer import device
    from trainer.features import VIEWS, cache_key, fill, wanted
    from trainer.model import feature_extractor

    config, started = session.config, time.perf_counter()
    policy_name = keras.mixed_precision.global_policy()
    key = cache_key(config.backbone, config.image_size, weights_used, config.feature_layer, policy_name)
    extractor = feature_extractor(backbone, config.backbone)
    batch = device.featurize_batch_size(session.batch_size, device.visible_devices(), session.onednn)
    views = VIEWS[config.feature_augment]
    rows = [row for name in data.SPLITS for row in loaded.parts[name]]
    train = loaded.parts["train"]
    store = feature_store(len(rows) + len(train) * (len(views) - 1), int(extractor.output_shape[-1]))
    folder, counts = session.workspace / "features" / key, {}
    # Every image itself, then the training images' other views: one pass, so that a training
    # image is decoded once for all its views.
    jobs = wanted(rows, ("id",)) + wanted(train, views[1:], start=len(rows))
    runtime = fill(extractor, jobs, store, config.image_size, batch, folder, session.policy.xla, counts)
    bad = sum(int((~np.isfinite(store[i : i + 8192]).all(axis=1)).sum()) for i in range(0, len(store), 8192))
    if bad:
        raise CheckFailed(
            f"{config.backbone}: the features of {bad} image view(s) are not finite under "
            f"{policy_name.name}; rerun with --mixed-precision off"
        )
    features = Features(store, {name: len(loaded.parts[name]) for name in data.SPLITS}, len(views))
    log.info(
        "%s, weights %s: bottleneck mode, training the head on %d-dimensional features%s",
        config.backbone,
        weights_used,
        features.dimensions,
        f" of {len(views)} views of each training image ({config.feature_augment})" if len(views) > 1 else "",
    )
    seconds = round(time.perf_counter() - started, 2)
    record = {"key": key, "dimensions": features.dimensions, "views": counts, "runtime": runtime, "seconds": seconds}
    return features, record


def train_head(session: Session, loaded: Data, features: Features):
    """The classifier alone on cached features: (head, its datasets, the phase)."""
    from trainer.model import make_head

    config = session.config
    sizes = features.sizes
    splits = {name: (features.start(name) + np.arange(sizes[name]), loaded.y(name)) for name in data.SPLITS}
    splits["train_eval"] = splits["train"]
    splits["train"] = (features.train_indices(), np.tile(loaded.y("train"), features.views))
    features.rows = pipeline.Rows(features.store)
    datasets = pipeline.feature_datasets(features.rows, splits, session.batch_size, config.seed)
    with session.strategy.scope():
        head = make_head(features.train_parts(), len(loaded.labels), config.dropout, config.head_c, sizes["train"])
    phase = session.fit(head, datasets, phase="head", epochs=config.epochs, images=len(splits["train"][0]))
    return head, datasets, phase


def _figure(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _best_epochs(config: TrainConfig, phase: Phase) -> int:
    """The epochs the deployed head kept: early stopping restores the best epoch's weights."""
    values = phase.history.get("val_" + config.early_stopping_metric) or []
    if not values:
        return config.epochs
    best = int(np.argmin(values) if config.early_stopping_metric == "loss" else np.argmax(values))
    return phase.resumed_from + best + 1


def out_of_fold_head(session: Session, features: Features, y: dict[str, np.ndarray], classes: int, epochs: int,
                     limit: int = decision.OUT_OF_FOLD_IMAGES) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Probabilities [n, classes] of the training and validation images (at most `limit`, the same
    share of each class), each from a head trained the deployed head's way (make_head: its L2,
    dropout and standardization; every view of each training image; the class weights, batch
    size, optimizer and `epochs`) on the other folds; and the images' labels."""
    import keras

    from trainer.audit import fold_splitter
    from trainer.model import make_head

    config, sizes = session.config, features.sizes
    images = sum(sizes.values())
    # Each candidate image's rows in the store: its own, then (training images) its other views.
    own = np.concatenate([features.start("train") + np.arange(sizes["train"]),
                          features.start("validation") + np.arange(sizes["validation"])])  # fmt: skip
    labels = np.concatenate([y["train"], y["validation"]])
    views = [[images + view * sizes["train"] + i for view in range(features.views - 1)] if i < sizes["train"] else []
             for i in range(len(own))]  # fmt: skip
    chosen = np.arange(len(own))
    if len(own) > limit:
        rng = np.random.default_rng(config.seed)
        chosen = np.sort(np.concatenate([
            rng.choice(members, max(1, round(limit * len(members) / len(own))), replace=False)
            for members in (np.flatnonzero(labels == c) for c in range(classes)) if len(members)
        ]))  # fmt: skip
    splitter = fold_splitter(labels[chosen], classes, decision.FOLDS, config.seed)
    probabilities = np.zeros((len(chosen), classes))
    for fold, (fit_at, held_at) in enumerate(splitter.split(np.zeros(len(chosen)), labels[chosen])):
        fit = chosen[fit_at]
        rows = np.concatenate([own[fit], np.array([row for i in fit for row in views[i]], dtype=np.int64)])
        x = np.asarray(features.store[rows], dtype=np.float32)
        targets = np.concatenate([labels[fit], np.array([labels[i] for i in fit for _ in views[i]], dtype=np.int64)])
        keras.utils.set_random_seed(config.seed + fold)
        steps = math.ceil(len(x) / session.batch_size)
        with session.strategy.scope():
            head = make_head([x], classes, config.dropout, config.head_c, len(fit))
            head.compile(
                make_optimizer(config, steps, epochs), "sparse_categorical_crossentropy", steps_per_execution=steps
            )
        head.fit(x, targets, batch_size=session.batch_size, epochs=epochs, class_weight=session.class_weights,
                 shuffle=True, verbose=0)  # fmt: skip
        held = chosen[held_at]
        probabilities[held_at] = head.predict(np.asarray(features.store[own[held]]), batch_size=1024, verbose=0)
    return probabilities, labels[chosen]


def operating_point(session: Session, loaded: Data, trained: Trained):
    """--target-recall: the threshold chosen on the deployed head's out-of-fold probabilities."""
    config = session.config
    if trained.features is None or "head" not in trained.phases or config.fine_tune_layers:
        raise InputError("--target-recall needs bottleneck mode without --fine-tune-layers")
    epochs = _best_epochs(config, trained.phases["head"])
    started = time.perf_counter()
    y = {name: loaded.y(name) for name in ("train", "validation")}
    probabilities, labels = out_of_fold_head(session, trained.features, y, len(loaded.labels), epochs)
    rule, record = decision.choose(config.target_recall, loaded.labels, probabilities, labels)
    record.update(epochs=epochs, folds=decision.FOLDS, seconds=round(time.perf_counter() - started, 2))
    return rule, record


def fine_tune(session: Session, model, backbone, loaded: Data):
    """The top of the backbone trained on images at a low rate, kept only if it lowered the
    validation loss: (the image datasets, the phase, before/after/kept for the manifest)."""
    from trainer.model import unfreeze_top

    config = session.config
    images = pipeline.image_datasets(loaded.paths_by_split(), loaded.labels_by_split(), config, session.batch_size)
    before = _validation_loss(model, images["validation"], loaded.y("validation"))
    head_only = model.get_weights()
    with session.strategy.scope():
        unfrozen = unfreeze_top(backbone, config.fine_tune_layers)
    log.info("fine-tuning the top %d backbone layers at learning rate %g", unfrozen, config.fine_tune_learning_rate)
    phase = session.fit(
        model,
        images,
        phase="fine_tune",
        epochs=config.fine_tune_epochs,
        images=len(loaded.parts["train"]),
        learning_rate=config.fine_tune_learning_rate,
    )
    after = _validation_loss(model, images["validation"], loaded.y("validation"))
    # Fine-tuning a few hundred images can make the model worse; early stopping only picks the
    # best of its own epochs, so the model before it is one more candidate.
    if not after < before:
        model.set_weights(head_only)
        log.info("fine-tuning did not lower the validation loss (%.4f -> %.4f): kept the model before it",
                 before, after)  # fmt: skip
    outcome = {"validation_loss_before": round(before, 6), "validation_loss_after": round(after, 6)}
    return images, phase, {**outcome, "kept": bool(after < before), "layers": unfrozen}


def train_images(session: Session, backbone, loaded: Data):
    """No pretrained weights: the whole network trained on images: (model, datasets, phase)."""
    from trainer.model import make_model

    config = session.config
    images = pipeline.image_datasets(loaded.paths_by_split(), loaded.labels_by_split(), config, session.batch_size)
    with session.strategy.scope():
        model = make_model(backbone, config.backbone, len(loaded.labels), False, config.dropout)
    parameters = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    log.info("%s, weights none: training the whole network, %s trainable parameters", config.backbone,
             f"{parameters:,}")  # fmt: skip
    phase = session.fit(model, images, phase="train", epochs=config.epochs, images=len(loaded.parts["train"]))
    return model, images, phase


def evaluate_splits(config: TrainConfig, loaded: Data, predictor, datasets: dict, decision=None):
    """Metrics and probabilities on test and validation (and train, --metrics-on-train), each
    image's label decided by `decision` (trainer.decision; the most likely class by default)."""
    metrics, probabilities = {}, {}
    for name in ("test", "validation", "train") if config.metrics_on_train else ("test", "validation"):
        probabilities[name] = _predict(predictor, datasets["train_eval" if name == "train" else name])
        predicted = None if decision is None else decision.predict(probabilities[name])
        metrics[name] = classification_metrics(loaded.y(name), probabilities[name], loaded.labels, predicted)
    log.info("test: %s", summary_line(metrics["test"]))
    if config.metrics_on_train:
        log.info("train: %s", summary_line(metrics["train"]))
    return metrics, probabilities


@dataclass
class Trained:
    """What training leaves for evaluation and the run folder."""

    model: object  # pixels in, probabilities out: what is saved and exported
    predictor: object  # what evaluation runs: the head on cached features, or the model
    datasets: dict
    phases: dict[str, Phase]
    weights_used: str
    seconds: float
    features: Features | None = None
    cache: dict | None = None  # what the feature cache did (featurize's record)
    extra: dict = field(default_factory=dict)  # for the manifest: fine_tune, backbone_auto


def train_model(session: Session, loaded: Data, stage: Stages) -> Trained:
    """The backbone (chosen, with --backbone auto), then bottleneck mode (featurize, the head,
    optionally fine-tuning) or the whole network on images; a model trained under a
    mixed-precision policy comes back as its float32 copy."""
    import keras

    from trainer.choose import choose
    from trainer.model import cut_backbone, float32_copy, load_backbone, make_model

    config, started, phases, extra = session.config, time.time(), {}, {}
    head = features = cache = None
    if config.backbone == "auto":
        extra["backbone_auto"] = choose(session, loaded)  # sets config.backbone
    with session.strategy.scope():
        backbone, weights_used = load_backbone(config.backbone, config.image_size, config.weights)
        backbone = cut_backbone(backbone, config.feature_layer) if config.feature_layer else backbone
    if weights_used == "none" and config.target_recall:
        raise InputError(
            f"--target-recall: {config.backbone} has no pretrained weights here, so the whole network would train; "
            "the threshold is chosen on the head's out-of-fold probabilities, so name a backbone with weights"
        )
    if weights_used != "none":
        with stage("featurize"):
            features, cache = featurize(session, backbone, weights_used, loaded)
        with stage("head"):
            head, datasets, phases["head"] = train_head(session, loaded, features)
            with session.strategy.scope():
                model = make_model(backbone, config.backbone, len(loaded.labels), True, config.dropout, head)
        if config.fine_tune_layers:
            with stage("fine_tune"):
                datasets, phases["fine_tune"], extra["fine_tune"] = fine_tune(session, model, backbone, loaded)
    else:
        with stage("train"):
            model, datasets, phases["train"] = train_images(session, backbone, loaded)
    seconds = time.time() - started
    if session.policy.mixed_precision:
        # What is evaluated, saved and exported computes in float32 (see model.float32_copy).
        keras.mixed_precision.set_global_policy("float32")
        model, head = float32_copy(model), None if head is None else float32_copy(head)
    predictor = head if head is not None and not config.fine_tune_layers else model
    return Trained(model, predictor, datasets, phases, weights_used, seconds, features, cache, extra)


def main(config: TrainConfig) -> Path:
    """Train and evaluate; return the run folder. The model and what describes it are written to
    a hidden partial folder renamed into place, so a run folder always holds a complete model;
    its path is printed then, and the diagnostics follow (trainer.diagnostics), none of which
    can cost the model. Raises DiagnosticsFailed after the run when one of them failed."""
    config.check()
    stage = Stages()
    run_dir, workspace, cache_dir = _run_dir(config), default_workspace(config), weights_cache_dir(config)
    if cache_dir is not None:
        # Keras reads KERAS_HOME when it downloads: ImageNet weights on Drive survive a reset.
        os.environ["KERAS_HOME"] = str(cache_dir)
    with stage("validate"):
        loaded = load_data(config)
    with stage("digest"):
        # What this run is from, by the hashes validation took as it read each file; recorded as
        # invoke's stat cache too, so that its next decision reads no image.
        request = training_request(config, loaded.files, loaded.listed)
        remember(loaded.files, stat_cache(config))

    from trainer import device

    if config.target_recall:
        decision.check_label(config.target_recall, loaded.labels)
    session = start_session(config, loaded, workspace, request["options"])
    trained = train_model(session, loaded, stage)
    rule, point = decision.ARGMAX, None
    if config.target_recall:
        with stage("operating_point"):
            rule, point = operating_point(session, loaded, trained)
    with stage("evaluate"):
        metrics, probabilities = evaluate_splits(config, loaded, trained.predictor, trained.datasets, rule)
    if point is not None:
        test_scores = probabilities["test"][:, rule.index]
        point["test"] = decision.at_threshold(test_scores, loaded.y("test") == rule.index, rule.threshold)
        point["test_curve"] = decision.curve(test_scores, loaded.y("test") == rule.index)
        log.info("operating point: %s; out of fold recall %.3f, precision %.3f; test recall %s, precision %s",
                 rule.describe(), point["out_of_fold"]["recall"], point["out_of_fold"]["precision"] or 0.0,
                 _figure(point["test"]["recall"]), _figure(point["test"]["precision"]))  # fmt: skip
    if not device.is_chief():
        shutil.rmtree(session.checkpoint_root, ignore_errors=True)
        log.info("worker done; the chief writes the run folder")
        return run_dir
    manifest = _manifest(config, loaded, session.policy, trained.weights_used, trained.cache, loaded.fingerprint(),
                         trained.seconds, trained.phases)  # fmt: skip
    manifest.update(request=request, request_key=request_key(request), **trained.extra)
    formats = parse_formats(config.export)
    manifest["stages"] = stage.record
    manifest["diagnostics"] = diagnostics.pending({"audit": config.audit, "heatmaps": True, "exports": bool(formats),
                                                   "report": True})  # fmt: skip
    # The audit reads each image's own features only; the head's datasets and every other view go.
    model, features = trained.model, trained.features
    audit_features = None if features is None or not config.audit else features.every().copy()
    if features is not None:
        features.release()
    features = trained.features = trained.datasets = None
    history = _join_history(trained.phases)
    with stage("write"):
        _write_run(run_dir, config, model, loaded, (metrics, probabilities), history, manifest, trained.weights_used,
                   (rule, point))  # fmt: skip
    print(run_dir, flush=True)  # the model is complete: `invoke train` publishes it whatever follows
    log.info("run folder: %s", run_dir)
    steps = _diagnostic_steps(run_dir, config, model, loaded, audit_features, workspace, formats)
    failed = diagnostics.run(run_dir, manifest, {name: _timed(stage, name, step) for name, step in steps.items()})
    shutil.rmtree(session.checkpoint_root, ignore_errors=True)
    if failed:
        raise diagnostics.DiagnosticsFailed(run_dir, failed)
    return run_dir


def _timed(stage: Stages, name: str, step):
    def timed():
        with stage(name):
            return step()

    return timed


def _diagnostic_steps(run_dir: Path, config: TrainConfig, model, loaded: Data, audit_features, workspace: Path,
                      formats: tuple[str, ...]) -> dict:  # fmt: skip
    """What trainer.diagnostics runs after the model has landed, by name."""
    from trainer import report

    def audit() -> dict:
        from trainer.audit import audit_splits, write_lists

        rows, findings, summary = audit_splits(
            loaded.parts, loaded.labels, audit_features, workspace, config.seed, loaded.report.thumbnails
        )
        write_lists(run_dir / runfolder.AUDIT, rows, findings, loaded.labels)
        return {"audit": summary}

    def heatmaps() -> None:
        from trainer.explain import heatmap_sheet

        test = runfolder.read_predictions(run_dir / runfolder.PREDICTIONS)
        try:
            heatmap_sheet(model, test, loaded.labels, config.image_size, run_dir / runfolder.HEATMAPS)
        except InputError as error:  # a model these maps cannot split: the run is good without them
            raise diagnostics.Skipped(str(error)) from None

    return {
        "audit": audit,
        "heatmaps": heatmaps,
        "exports": lambda: diagnostics.exports_into(run_dir, formats, config.export_benchmark),
        "report": lambda: report.build(run_dir) and None,
    }


def _resume_key(options: dict, fingerprint: str) -> str:
    """The same command on the same data gives the same key, wherever its files are: the
    fingerprint's compared options (no places; a weights file by its content) but --export,
    which does not change training."""
    kept = {name: value for name, value in options.items() if name != "export"}
    return hashlib.sha256(json.dumps([kept, fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _join_history(phases: dict[str, Phase]) -> list[dict]:
    rows = []
    for phase, result in phases.items():
        keys = list(result.history)
        for index in range(len(result.history[keys[0]]) if keys else 0):
            rows.append({"phase": phase, "epoch": index + 1, **{key: result.history[key][index] for key in keys}})
    return rows


def _manifest(config, loaded, policy, weights_used, cache, fingerprint, seconds, phases) -> dict:
    import platform

    from trainer import device
    from trainer.fingerprint import stack

    onednn, onednn_reason = device.onednn()
    return {
        "versions": stack(),
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
        # bottleneck: the head on cached features (then fine-tuning, if asked); whole: no
        # pretrained weights, the whole network on images.
        "mode": "whole" if cache is None else "bottleneck",
        "feature_cache_key": None if cache is None else cache["key"],
        "feature_cache": cache,
        "training_seconds": round(seconds, 2),
        "resumed_from_epoch": {name: phase.resumed_from for name, phase in phases.items() if phase.resumed_from},
    }


def _write_tensorboard(history: list[dict], folder: Path) -> None:
    """TensorBoard scalars from the history, laid out as Keras's callback lays them out
    (logs/train, logs/validation, epoch_loss and epoch_accuracy): `tensorboard --logdir RUN/logs`.
    Written with TensorFlow's own summary op and the scalars plugin's metadata, as
    tf.summary.scalar does, but without the tensorboard package, which TensorFlow 2.21 no longer
    installs with it (a runtime without it still gets its logs)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    scalar = summary_pb2.SummaryMetadata()
    scalar.plugin_data.plugin_name = "scalars"
    writers = {"train": "", "validation": "val_"}
    for split, prefix in writers.items():
        writer = tf.summary.create_file_writer(str(folder / split))
        with writer.as_default():
            for step, row in enumerate(history, start=1):
                for metric in ("loss", "accuracy"):
                    if prefix + metric in row:
                        value = tf.constant(float(row[prefix + metric]), dtype=tf.float32)
                        tf.summary.write(f"epoch_{metric}", value, step=step, metadata=scalar)
        writer.close()


def _write_run(
    run_dir: Path,
    config,
    model,
    loaded: Data,
    results: tuple,
    history: list[dict],
    manifest: dict,
    weights_used: str,
    operating: tuple = (None, None),
) -> None:
    """The run folder's core, written whole or not at all: the model and everything that says
    what it is and how it scored. results: the metrics and probabilities by split; operating:
    the decision rule and its record (decision.json), with --target-recall."""
    metrics, probabilities = results
    rule, point = operating
    with partial_folder(run_dir) as partial:
        if point is not None:
            decision.write(partial, point)
        model.save(partial / runfolder.MODEL)
        link_or_copy(partial / runfolder.MODEL, partial / f"{config.model_name}.keras")
        runfolder.write_labels(partial / runfolder.LABELS, loaded.labels)
        save_config(
            config,
            partial / runfolder.CONFIG,
            weights_used=weights_used,
            labels=loaded.labels,
            **({"backbone_ranking": manifest["backbone_auto"]["ranking"]} if "backbone_auto" in manifest else {}),
            folder_resolved=str(Path(config.folder).resolve()),
        )
        data.write_split(loaded.parts, partial / runfolder.SPLIT)
        runfolder.write_history(partial / runfolder.HISTORY, history)
        runfolder.write_json(partial / runfolder.MANIFEST, manifest)
        write_metrics(
            {
                **metrics["test"],
                **{name: metrics[name] for name in ("validation", "train") if name in metrics},
                "epochs_run": {row["phase"]: row["epoch"] for row in history},
                "training_seconds": manifest["training_seconds"],
                "data": loaded.report.to_dict(),
            },
            partial / runfolder.METRICS,
        )
        runfolder.write_predictions(
            partial / runfolder.PREDICTIONS,
            loaded.labels,
            {
                name: (loaded.paths(name), [row.label for row in loaded.parts[name]], p)
                for name, p in probabilities.items()
            },
            None if rule is None else rule.predict,
        )
        _write_tensorboard(history, partial / "logs")
