"""Per-epoch checkpoints that make a rerun of the same command resume after a disconnect.

    <folder>/state.json         epoch, history so far, early-stopping state   (written last)
    <folder>/last.weights.npz   the model after that epoch
    <folder>/best.weights.npz   the best weights early stopping has seen (a phase with it)

Each file is written under a temporary name and renamed; state.json goes last, so it never
names an epoch whose weights are not on disk. Keras's BackupAndRestore keeps neither the
history nor the early-stopping state, so a resumed run would forget its best epoch.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np

from trainer.atomic import write_atomically
from trainer.errors import os_error_sentence

log = logging.getLogger("trainer")


class Checkpoints(keras.callbacks.Callback):
    """every: seconds between checkpoints; 0 writes one after every epoch. The head on cached
    features runs epochs in milliseconds, where a checkpoint each epoch would cost more than
    the training it protects; it checkpoints every 30 s and when the phase ends. stopper: the
    phase's early stopping, or None for a phase that trains its epochs and keeps the last."""

    def __init__(self, folder: Path, stopper: keras.callbacks.EarlyStopping | None, every: float = 0.0):
        super().__init__()
        self.folder = folder
        self.stopper = stopper
        self.every = every
        self.history: dict[str, list[float]] = {}
        self.stopped = False
        self._saved_stopper: dict | None = None
        self._last_save = time.monotonic()
        self._best_unsaved = False
        self.refused = ""  # why checkpoints stopped, once a write was refused

    # Before fit -------------------------------------------------------------------------------

    def restore(self, model, steps_per_epoch: int) -> int:
        """Load the last checkpoint into model; return the epoch to start from (0 if none)."""
        state_path = self.folder / "state.json"
        if not state_path.is_file():
            return 0
        try:
            state = json.loads(state_path.read_text())
            _load_weights(model, self.folder / LAST)
        except (OSError, ValueError, KeyError) as error:
            log.warning("WARNING: checkpoint in %s is unreadable (%s): starting this phase over", self.folder, error)
            return 0
        epoch = int(state["epoch"])
        self.history = state["history"]
        self.stopped = bool(state.get("stopped"))
        self._saved_stopper = state.get("stopper")
        if model.optimizer is not None:
            # The learning-rate schedule counts optimizer steps: continue the count.
            model.optimizer.build(model.trainable_variables)
            model.optimizer.iterations.assign(epoch * steps_per_epoch)
        log.info("resuming from epoch %d (checkpoint in %s)", epoch, self.folder)
        return epoch

    def restore_best(self, model) -> None:
        best = self.folder / BEST
        if self.stopper is not None and best.is_file():
            _load_weights(model, best)

    def kept_epochs(self) -> int:
        """How many epochs the model's weights were trained for: early stopping's best epoch
        (after fit, or as a finished phase's checkpoint recorded it), else every epoch run."""
        run = len(next(iter(self.history.values()), []))
        if self.stopper is None:
            return run
        if self.stopper.best_weights is not None:
            return self.stopper.best_epoch + 1
        if self._saved_stopper and self._saved_stopper.get("best_epoch") is not None:
            return int(self._saved_stopper["best_epoch"]) + 1
        return run

    # During fit -------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        # Runs after EarlyStopping's own on_train_begin (it comes first in the callback list),
        # which resets its state: put back what the interrupted run had.
        if self._saved_stopper and self.stopper is not None:
            self.stopper.wait = self._saved_stopper["wait"]
            self.stopper.best = self._saved_stopper["best"]
            self.stopper.best_epoch = self._saved_stopper["best_epoch"]
            best = self.folder / BEST
            if best.is_file():
                current = self.model.get_weights()
                _load_weights(self.model, best)
                self.stopper.best_weights = self.model.get_weights()
                self.model.set_weights(current)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.stopper is not None and self.stopper.best_epoch == epoch and self.stopper.best_weights is not None:
            self._best_unsaved = True
        if time.monotonic() - self._last_save >= self.every:
            self._save(epoch)

    def _save(self, epoch: int) -> None:
        """A checkpoint is worth having, not worth the run: a write the machine refuses (a full
        disk, a read-only workspace) is said once, and the run goes on without checkpoints."""
        self._last_save = time.monotonic()
        if self.refused:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(self.folder / LAST, _weights_bytes(self.model.get_weights()))
            if self._best_unsaved:
                write_atomically(self.folder / BEST, _weights_bytes(self.stopper.best_weights))
                self._best_unsaved = False
            self._write_state(self._state(epoch))
        except OSError as error:
            self.refused = os_error_sentence(error, self.folder, where="--workspace")
            log.warning("WARNING: checkpoints stop here (%s); training goes on, but a run interrupted from now on "
                        "starts this phase over", self.refused)  # fmt: skip

    def _state(self, epoch: int) -> dict:
        stopper = self.stopper
        return {
            "epoch": epoch + 1,
            "history": self.history,
            "stopper": None
            if stopper is None
            else {"wait": stopper.wait, "best": _plain(stopper.best), "best_epoch": stopper.best_epoch},
        }

    def on_train_end(self, logs=None):
        if self.refused:
            return
        epochs_done = len(next(iter(self.history.values()), []))
        state_path = self.folder / "state.json"
        saved = json.loads(state_path.read_text())["epoch"] if state_path.is_file() else 0
        if epochs_done and saved < epochs_done:
            # EarlyStopping (when the phase has it) has already restored the best weights
            # here; "last" is then the best, which is what a rerun of a finished phase loads.
            self._save(epochs_done - 1)
        if self.stopper is not None and self.stopper.stopped_epoch and not self.refused:
            state = json.loads((self.folder / "state.json").read_text())
            state["stopped"] = True
            try:
                self._write_state(state)
            except OSError as error:
                log.warning("WARNING: %s", os_error_sentence(error, self.folder, where="--workspace"))

    def _write_state(self, state: dict) -> None:
        write_atomically(self.folder / "state.json", json.dumps(state))


LAST, BEST = "last.weights.npz", "best.weights.npz"


def _weights_bytes(weights: list) -> bytes:
    """The model's weights as one .npz, made in memory and written by the caller with a plain
    write: the checkpoint is never written through h5py, whose file handles crash the process
    (a segmentation fault, seen twice) when a write fails with the disk full."""
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(weight) for weight in weights])
    return buffer.getvalue()


def _load_weights(model, path: Path) -> None:
    """A checkpoint's weights into the model; ValueError when they do not fit it."""
    with np.load(path, allow_pickle=False) as stored:
        weights = [stored[f"arr_{index}"] for index in range(len(stored.files))]
    expected = [tuple(weight.shape) for weight in model.get_weights()]
    if [weight.shape for weight in weights] != expected:
        raise ValueError(f"{path.name} holds {len(weights)} weights that do not fit this model")
    model.set_weights(weights)


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
