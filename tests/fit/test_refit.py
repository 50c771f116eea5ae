"""--head-refit trains the epochs the first fit chose and keeps the last; a phase rerun from its
checkpoint keeps the epochs it chose the first time. Real Keras on the CPU, tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import train_args
from trainer import runfolder
from trainer.config import TrainConfig

REFIT_SAYS = "--head-refit: the head trained again"


def _datasets(seed: int = 0) -> dict:
    """Two Gaussian classes to train on, and a validation set with the labels swapped, so that
    the validation loss rises from the first epoch on and early stopping always chooses it."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    return {
        "train": tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        "validation": tf.data.Dataset.from_tensor_slices((x, 1 - y)).batch(16),
    }


def _phase(tmp_path: Path, early_stopping: bool):
    """A small classifier trained as a phase of the trainer is (compile_and_fit, checkpoints in
    tmp_path), with a learning rate that makes each epoch count; returns (phase, weights)."""
    import keras
    import tensorflow as tf

    from trainer.fit.loop import compile_and_fit

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    config = TrainConfig(epochs=6, patience=2, learning_rate=0.1, lr_schedule="none")
    phase = compile_and_fit(model, tf.distribute.get_strategy(), config, _datasets(), phase="probe", epochs=6,
                            steps=4, checkpoint_root=tmp_path, weights=None, early_stopping=early_stopping)  # fmt: skip
    return phase, model.get_weights()


def test_a_phase_without_early_stopping_trains_every_epoch_and_keeps_the_last(tmp_path):
    stopped, _ = _phase(tmp_path / "stopped", early_stopping=True)
    assert stopped.kept_epochs == 1 and len(stopped.history["loss"]) == 3  # best at 1, patience 2
    phase, weights = _phase(tmp_path / "every", early_stopping=False)
    assert len(phase.history["loss"]) == 6 and phase.kept_epochs == 6
    assert not [key for key in phase.history if key.startswith("val_")]
    assert phase.history["loss"][-1] < phase.history["loss"][0]
    # The finished phase's checkpoint, read again, is the same model and the same count.
    again, weights_again = _phase(tmp_path / "every", early_stopping=False)
    assert again.kept_epochs == 6 and again.resumed_from == 6
    for before, after in zip(weights, weights_again, strict=True):
        np.testing.assert_array_equal(before, after)


def test_an_early_stopped_phase_rerun_from_its_checkpoint_keeps_the_epoch_it_chose(tmp_path):
    """A run killed after the head finished (during the refit, say) reruns the head from its
    checkpoint: the refit must then train the same epochs, not the count plus where it resumed."""
    first, weights = _phase(tmp_path, early_stopping=True)
    again, weights_again = _phase(tmp_path, early_stopping=True)
    assert again.resumed_from == len(first.history["loss"]) == 3
    assert again.kept_epochs == first.kept_epochs == 1
    for before, after in zip(weights, weights_again, strict=True):
        np.testing.assert_array_equal(before, after)


def test_the_refit_trains_the_epochs_the_head_chose_and_shows_no_validation_figures(cli, demo_dir, tiny_weights,
                                                                                   tmp_path):  # fmt: skip
    """The first fit stops past its best epoch (a high learning rate, patience 1); the refit then
    trains that many epochs on training and validation images, with no early stopping, no
    weights restored and no val_ figure printed or recorded for it."""
    run = tmp_path / "run"
    args = train_args(demo_dir / "Images", weights=tiny_weights, epochs=12, patience=1, learning_rate=0.3,
                      lr_schedule="none", workspace=tmp_path / "ws", output=run)  # fmt: skip
    code, _, err = cli(*args, "--head-refit")
    assert code == 0, err
    history = runfolder.read_history(run / runfolder.HISTORY)
    head = [row for row in history if row["phase"] == "head"]
    refit = [row for row in history if row["phase"] == "head_refit"]
    chosen = 1 + int(np.argmin([row["val_loss"] for row in head]))
    assert chosen < len(head) < 12, "the first fit must stop early, past its best epoch, for this test to mean it"
    assert [row["epoch"] for row in refit] == list(range(1, chosen + 1))
    assert all(set(row) == {"phase", "epoch", "loss", "accuracy"} for row in refit), refit
    assert f"for the {chosen} epoch(s) chosen" in err
    before, after = err.split(REFIT_SAYS, 1)
    assert "Restoring model weights" in before and "val_loss" in before  # what the head's fit prints, seen here
    assert "Restoring model weights" not in after and "val_" not in after, after
