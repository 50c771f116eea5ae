"""Per-epoch checkpoints that make a rerun of the same command resume after a disconnect.

    <folder>/state.json         epoch, history so far, early-stopping state   (written last)
    <folder>/last.weights.h5    the model after that epoch
    <folder>/best.weights.h5    the best weights early stopping has seen

Each file is written under a temporary name and renamed; state.json goes last, so it never
names an epoch whose weights are not on disk. Keras's BackupAndRestore keeps neither the
history nor the early-stopping state, so a resumed run would forget its best epoch.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import keras

from trainer.atomic import replacing, write_atomically

log = logging.getLogger("trainer")


class Checkpoints(keras.callbacks.Callback):
    """every: seconds between checkpoints; 0 writes one after every epoch. The head on cached
    features runs epochs in milliseconds, where a checkpoint each epoch would cost more than
    the training it protects; it checkpoints every 30 s and when the phase ends."""

    def __init__(self, folder: Path, stopper: keras.callbacks.EarlyStopping, every: float = 0.0):
        super().__init__()
        self.folder = folder
        self.stopper = stopper
        self.every = every
        self.history: dict[str, list[float]] = {}
        self.stopped = False
        self._saved_stopper: dict | None = None
        self._last_save = time.monotonic()
        self._best_unsaved = False

    # Before fit -------------------------------------------------------------------------------

    def restore(self, model, steps_per_epoch: int) -> int:
        """Load the last checkpoint into model; return the epoch to start from (0 if none)."""
        state_path = self.folder / "state.json"
        if not state_path.is_file():
            return 0
        try:
            state = json.loads(state_path.read_text())
            with warnings.catch_warnings():
                # The optimizer's moments are not in the checkpoint; Keras says so for each one.
                warnings.simplefilter("ignore", UserWarning)
                model.load_weights(self.folder / "last.weights.h5")
        except (OSError, ValueError) as error:
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
        best = self.folder / "best.weights.h5"
        if best.is_file():
            model.load_weights(best)

    # During fit -------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        # Runs after EarlyStopping's own on_train_begin (it comes first in the callback list),
        # which resets its state: put back what the interrupted run had.
        if self._saved_stopper:
            self.stopper.wait = self._saved_stopper["wait"]
            self.stopper.best = self._saved_stopper["best"]
            self.stopper.best_epoch = self._saved_stopper["best_epoch"]
            best = self.folder / "best.weights.h5"
            if best.is_file():
                current = self.model.get_weights()
                self.model.load_weights(best)
                self.stopper.best_weights = self.model.get_weights()
                self.model.set_weights(current)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.stopper.best_epoch == epoch and self.stopper.best_weights is not None:
            self._best_unsaved = True
        if time.monotonic() - self._last_save >= self.every:
            self._save(epoch)

    def _save(self, epoch: int) -> None:
        self._last_save = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save_weights(self.model, "last.weights.h5")
        if self._best_unsaved:
            current = self.model.get_weights()
            self.model.set_weights(self.stopper.best_weights)
            self._save_weights(self.model, "best.weights.h5")
            self.model.set_weights(current)
            self._best_unsaved = False
        state = {
            "epoch": epoch + 1,
            "history": self.history,
            "stopper": {
                "wait": self.stopper.wait,
                "best": _plain(self.stopper.best),
                "best_epoch": self.stopper.best_epoch,
            },
        }
        self._write_state(state)

    def on_train_end(self, logs=None):
        epochs_done = len(next(iter(self.history.values()), []))
        state_path = self.folder / "state.json"
        saved = json.loads(state_path.read_text())["epoch"] if state_path.is_file() else 0
        if epochs_done and saved < epochs_done:
            # EarlyStopping has already restored the best weights here; "last" is then the
            # best, which is what a rerun of a finished phase loads.
            self._save(epochs_done - 1)
        if self.stopper.stopped_epoch:
            state = json.loads((self.folder / "state.json").read_text())
            state["stopped"] = True
            self._write_state(state)

    def _save_weights(self, model, name: str) -> None:
        with replacing(self.folder / name, suffix=".weights.h5") as temporary:
            model.save_weights(temporary)

    def _write_state(self, state: dict) -> None:
        write_atomically(self.folder / "state.json", json.dumps(state))


def _plain(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
