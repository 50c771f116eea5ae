"""Training under MultiWorkerMirroredStrategy, where Keras 3's fit does not run
(keras-team/keras#20585): strategy.run per batch, gradients all-reduced across workers, early
stopping on the validation loss or accuracy."""

from __future__ import annotations

import logging

from trainer.config import TrainConfig

log = logging.getLogger("trainer")


def fit(model, strategy, config: TrainConfig, train, validation, *, epochs: int, weights) -> tuple[dict, int]:
    """Several workers train with this loop: gradients all-reduced every batch, early stopping on
    the validation loss or accuracy, the best epoch's weights restored; validation None (the
    refit): `epochs` epochs, the last kept. Returns (history, the epochs the weights it ends with
    were trained for). It keeps no per-epoch checkpoints."""
    run_epoch = epoch_runner(model, strategy, weights, config.batch_size * strategy.num_replicas_in_sync)
    train_dist = strategy.experimental_distribute_dataset(train)
    validation_dist = None if validation is None else strategy.experimental_distribute_dataset(validation)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    sign = 1.0 if config.early_stopping_metric == "loss" else -1.0
    best, best_weights, best_epoch, wait = float("inf"), None, 0, 0
    for epoch in range(epochs):
        loss, accuracy = run_epoch(train_dist, True)
        figures = {"loss": loss, "accuracy": accuracy}
        if validation_dist is not None:
            figures["val_loss"], figures["val_accuracy"] = run_epoch(validation_dist, False)
        for key, value in figures.items():
            history.setdefault(key, []).append(value)
        log.info(
            "epoch %d/%d - %s", epoch + 1, epochs, " - ".join(f"{key} {value:.4f}" for key, value in figures.items())
        )
        if validation_dist is None:
            continue
        score = sign * figures["val_" + config.early_stopping_metric]
        if score < best - config.min_delta:
            best, best_weights, best_epoch, wait = score, model.get_weights(), epoch, 0
        else:
            wait += 1
            if wait > config.patience:
                log.info("epoch %d: early stopping", epoch + 1)
                break
    if best_weights is None:
        return history, len(history["loss"])
    model.set_weights(best_weights)
    return history, best_epoch + 1


def epoch_runner(model, strategy, weights: dict[int, float] | None, global_batch: int):
    """run_epoch(distributed dataset, training) -> (mean loss, accuracy): strategy.run per batch,
    the sums reduced across replicas and workers; training applies class-weighted gradients."""
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
        predicted = tf.argmax(probabilities, 1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
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

    return run_epoch
