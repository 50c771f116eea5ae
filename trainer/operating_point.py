"""--target-recall CLASS=R: the operating point chosen on the deployed head's out-of-fold
probabilities over the training and validation images (trainer.head), and what it gave on the
test split. The rule itself, and decision.json, are trainer.decision's."""

from __future__ import annotations

import logging
import time

import numpy as np

from trainer import decision
from trainer.errors import InputError
from trainer.head import FOLDS, deployed_out_of_fold

log = logging.getLogger("trainer")


def choose(session, data, features, head_phase) -> tuple[decision.Decision, dict]:
    """The threshold for --target-recall, and its record (decision.json), from heads trained as
    the deployed one was, for the epochs early stopping kept. `features`: the run's
    trainer.features.store.Features; `head_phase`: the deployed head's trainer.fit.loop.Phase."""
    config = session.config
    if features is None or head_phase is None or config.fine_tune_layers:
        raise InputError("--target-recall needs bottleneck mode without --fine-tune-layers")
    epochs = head_phase.kept_epochs
    started = time.perf_counter()
    y = {name: data.y(name) for name in ("train", "validation")}
    probabilities, labels = deployed_out_of_fold(session, features, y, len(data.labels), epochs)
    rule, record = decision.choose(config.target_recall, data.labels, probabilities, labels)
    record.update(epochs=epochs, folds=FOLDS, seconds=round(time.perf_counter() - started, 2))
    return rule, record


def on_test(rule: decision.Decision, record: dict, test_probabilities: np.ndarray, y_test: np.ndarray) -> dict:
    """The record with what the rule gave on the test split: the point and the curve."""
    scores, positive = test_probabilities[:, rule.index], y_test == rule.index
    record["test"] = decision.at_threshold(scores, positive, rule.threshold)
    record["test_curve"] = decision.curve(scores, positive)
    log.info("operating point: %s; out of fold recall %.3f, precision %.3f; test recall %s, precision %s",
             rule.describe(), record["out_of_fold"]["recall"], record["out_of_fold"]["precision"] or 0.0,
             _figure(record["test"]["recall"]), _figure(record["test"]["precision"]))  # fmt: skip
    return record


def _figure(value) -> str:
    return "-" if value is None else f"{value:.3f}"
