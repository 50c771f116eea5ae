"""The fit loop every phase shares: compile under the strategy, fit with early stopping and a
checkpoint each epoch (or every 30 s for a head on features), resume from the checkpoint when
there is one; and the options that shape it: the optimizer with its learning-rate schedule, and
class weights. A phase without a validation set (the refit, whose validation images are training
images) has no early stopping: it trains the epochs it is given and keeps the last.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.fit import multiworker

log = logging.getLogger("trainer")


@dataclass
class Phase:
    """What one call to fit returns: the model's history (every epoch, from the phase's first,
    also after a resumption), the epoch it resumed from, and how many epochs the weights it ends
    with were trained for: the best epoch early stopping restored, or the last without it."""

    history: dict[str, list[float]] = field(default_factory=dict)
    resumed_from: int = 0
    kept_epochs: int = 0
    refit: Phase | None = None  # --head-refit: the head trained again on training and validation images


def class_weights(config: TrainConfig, y_train: np.ndarray, num_classes: int, quiet: bool = False):
    """Balanced weights n / (k * n_c) as {class: weight}, or None; with auto, only when the
    largest class has 1.5x the smallest."""
    counts = np.bincount(y_train, minlength=num_classes).astype(float)
    if config.class_weights == "none" or counts.min() == 0:
        return None
    if config.class_weights == "auto" and counts.max() < 1.5 * counts.min():
        return None
    weights = counts.sum() / (num_classes * counts)
    if not quiet:
        log.info("class weights: %s", ", ".join(f"{i}: {w:.2f}" for i, w in enumerate(weights)))
    return {i: float(w) for i, w in enumerate(weights)}


def make_optimizer(config: TrainConfig, steps_per_epoch: int, epochs: int, learning_rate: float | None = None):
    """--optimizer at --learning-rate with --lr-schedule; a phase's own learning_rate (fine-tuning)
    is constant."""
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


def fit(
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
    """fit with early stopping on `validation` and checkpoints (each epoch, or every
    checkpoint_every seconds); resumes from a checkpoint if present. validation None: no early
    stopping and no validation figures; the model trains `epochs` and keeps the last."""
    import tensorflow as tf

    from trainer.fit.resume import Checkpoints  # here, not above: it subclasses a Keras callback

    strategy = model.distribute_strategy
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        history, kept = multiworker.fit(model, strategy, config, train, validation, epochs=epochs, weights=weights)
        return Phase(history, kept_epochs=kept)

    stopper = None if validation is None else make_stopper(config)
    checkpoints = Checkpoints(checkpoint, stopper, checkpoint_every)
    initial_epoch = checkpoints.restore(model, steps)
    if initial_epoch >= epochs or checkpoints.stopped:
        log.info("phase already finished at epoch %d (checkpoint in %s)", initial_epoch, checkpoint)
        checkpoints.restore_best(model)
        return Phase(checkpoints.history, initial_epoch, checkpoints.kept_epochs())
    # Keras prints its epoch lines on stdout; stdout is kept for the run folder's path.
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=weights,
            callbacks=[stopper, checkpoints] if stopper else [checkpoints],
            verbose=1 if sys.stderr.isatty() else 2,
        )
    return Phase(checkpoints.history, initial_epoch, checkpoints.kept_epochs())


def make_stopper(config: TrainConfig):
    """Keras's early stopping on the validation split's --early-stopping-metric, restoring the
    best epoch's weights."""
    import keras

    return keras.callbacks.EarlyStopping(
        monitor="val_" + config.early_stopping_metric,
        mode="min" if config.early_stopping_metric == "loss" else "max",
        min_delta=config.min_delta,
        patience=config.patience,
        restore_best_weights=True,
        verbose=1,
    )


def compile_and_fit(
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
    early_stopping: bool = True,
) -> Phase:
    """One training phase: compile under the strategy, then fit on the train set, with early
    stopping on the validation set; without early_stopping, `epochs` on the train set alone.

    A head on cached features (the head, and its refit) runs a whole epoch per call into the
    graph (steps_per_execution) and checkpoints every 30 s: its epochs take milliseconds, so
    per-step and per-epoch overhead would be most of its cost. jit_compile: XLA for the training
    step (the GPU policy's choice; Keras's own default turns it off on CPU-only machines, so a
    forced policy must say so)."""
    head = phase in ("head", "head_refit")
    with strategy.scope():
        model.compile(
            make_optimizer(config, steps, epochs, learning_rate),
            "sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=steps if head else 1,
            jit_compile=jit_compile,
        )
    return fit(
        model,
        config,
        datasets["train"],
        datasets["validation"] if early_stopping else None,
        epochs=epochs,
        steps=steps,
        checkpoint=checkpoint_root / phase,
        weights=weights,
        checkpoint_every=30.0 if head else 0.0,
    )
