"""Training on images rather than cached features: the top of a pretrained backbone fine-tuned
after the head, or, without pretrained weights, the whole network."""

from __future__ import annotations

import logging

import numpy as np

from trainer.data.pipeline import image_datasets
from trainer.metrics import log_loss
from trainer.model import make_model, unfreeze_top

log = logging.getLogger("trainer")


def fine_tune(session, model, backbone, data):
    """The top of the backbone trained on images at a low rate, kept only if it lowered the
    validation loss: (the image datasets, the phase, before/after/kept for the manifest)."""

    config = session.config
    images = image_datasets(data.paths_by_split(), data.labels_by_split(), config, session.batch_size)
    before = log_loss(data.y("validation"), model.predict(images["validation"], verbose=0))
    head_only = model.get_weights()
    with session.strategy.scope():
        unfrozen = unfreeze_top(backbone, config.fine_tune_layers)
    log.info("fine-tuning the top %d backbone layers at learning rate %g", unfrozen, config.fine_tune_learning_rate)
    phase = session.fit(
        model,
        images,
        phase="fine_tune",
        epochs=config.fine_tune_epochs,
        images=len(data.parts["train"]),
        learning_rate=config.fine_tune_learning_rate,
    )
    after = log_loss(data.y("validation"), model.predict(images["validation"], verbose=0))
    # Fine-tuning a few hundred images can make the model worse; early stopping only picks the
    # best of its own epochs, so the model before it is one more candidate.
    if not after < before:
        model.set_weights(head_only)
        log.info("fine-tuning did not lower the validation loss (%.4f -> %.4f): kept the model before it",
                 before, after)  # fmt: skip
    outcome = {"validation_loss_before": round(before, 6), "validation_loss_after": round(after, 6)}
    return images, phase, {**outcome, "kept": bool(after < before), "layers": unfrozen}


def train_whole(session, backbone, backbone_name: str, data):
    """No pretrained weights: the whole network trained on images: (model, datasets, phase)."""

    config = session.config
    images = image_datasets(data.paths_by_split(), data.labels_by_split(), config, session.batch_size)
    with session.strategy.scope():
        model = make_model(backbone, backbone_name, len(data.labels), False, config.dropout)
    parameters = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    log.info("%s, weights none: training the whole network, %s trainable parameters", backbone_name,
             f"{parameters:,}")  # fmt: skip
    phase = session.fit(model, images, phase="train", epochs=config.epochs, images=len(data.parts["train"]))
    return model, images, phase
