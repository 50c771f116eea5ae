"""The head: the classifier trained on cached features, and every out-of-fold head. One module,
so that whatever trains a head on features reads the same options: --head-c (the L2 strength, as
scikit-learn's C), --dropout, --class-weights, and for the deployed recipe the optimizer, its
schedule, --batch-size and every --feature-augment view.

Two ways to train a head, from the same options:

- the deployed recipe (Keras: make_head's standardization, dropout and L2, the optimizer and
  schedule, every view of each training image, early stopping; with --head-refit a new head
  then trains that many epochs on the training and validation images): `train_head`, and
  `deployed_out_of_fold`, which the operating point (--target-recall) uses, since a threshold
  must be read on the probabilities of the head that will apply it;
- the converged head (scikit-learn's LogisticRegression at C = --head-c, with the run's class
  weights, on the same standardization): the objective the deployed head's L2 is scaled to, solved
  to the end. `converged_out_of_fold` gives it; the label audit (3 x 5 heads) and --backbone auto
  (5 heads per candidate) use it, since they need many heads and rank images or backbones rather
  than read a threshold, and a converged head takes a second where a Keras one takes tens.
  It fits each image's own features, not its views: the audit runs after the views are let go.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from trainer.config import TrainConfig
from trainer.data.rows import SPLITS
from trainer.features.store import Rows, feature_datasets
from trainer.fit.loop import class_weights, make_optimizer

log = logging.getLogger("trainer")

OUT_OF_FOLD_IMAGES = 5000  # at most, stratified: a threshold's recall to about +-0.01 at 0.95
FOLDS = 5


def feature_statistics(train_features, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per feature for (x - mean) * scale, from the training features: an array,
    or a list of arrays that together are the training rows (each image's views are stored
    apart). Computed a block at a time in float64, so memory stays at one block whatever the
    number of rows (a float64 copy of 358,400 rows of 1,280 would be 3.7 GB).

    A feature that never varies on the training images carries no information and gets scale
    0; otherwise std is floored at 1% of the median std. Without that, a feature that is zero
    on every training image is multiplied by 1e7 (1 / Keras's epsilon), and the slightest
    difference in it, such as int8 quantization's, swamps the prediction."""
    parts = [train_features] if isinstance(train_features, np.ndarray) else list(train_features)
    width = parts[0].shape[1]
    count, total = 0, np.zeros(width)
    for part in parts:
        for start in range(0, len(part), chunk):
            block = np.asarray(part[start : start + chunk], dtype=np.float64)
            count, total = count + len(block), total + block.sum(axis=0)
    mean = total / max(count, 1)
    squares = np.zeros(width)
    for part in parts:
        for start in range(0, len(part), chunk):
            squares += np.square(np.asarray(part[start : start + chunk], dtype=np.float64) - mean).sum(axis=0)
    std = np.sqrt(squares / max(count, 1))
    varying = std > 0
    floor = 0.01 * float(np.median(std[varying])) if varying.any() else 1.0
    scale = np.where(varying, 1.0 / np.maximum(std, floor), 0.0)
    return mean, scale


def standardization(train_features):
    """(x - mean) / std per feature (feature_statistics), as a Rescaling layer with constant
    scale and offset (constants export to every format; Normalization's captured statistics
    become extra inputs in ONNX)."""
    from keras import layers

    mean, scale = feature_statistics(train_features)
    return layers.Rescaling(scale=scale.tolist(), offset=(-mean * scale).tolist(), name="feature_norm")


def l2_penalty(c: float, train_images: int):
    """The classifier's L2 penalty as scikit-learn's LogisticRegression(C) sets it: its
    objective C * sum(loss) + ||w||^2 / 2 is, per image, mean(loss) + ||w||^2 / (2 C n). None
    when c is 0 (no penalty)."""
    import keras

    return keras.regularizers.L2(1.0 / (2.0 * c * max(train_images, 1))) if c else None


def make_head(train_features, num_classes: int, dropout: float, head_c: float = 0.0, train_images: int | None = None):
    """The classifier alone, trained on cached features: the same layers make_model ends with.
    Pooled features range over orders of magnitude (ReLU activations); standardizing them with
    the training set's statistics lets one learning rate suit every backbone, and one L2
    strength (head_c, scikit-learn's C) suit every feature size. train_features: an array or a
    list of arrays (feature_statistics); train_images: how many images the features come from,
    when each appears in several views."""
    import keras
    from keras import layers

    parts = [train_features] if isinstance(train_features, np.ndarray) else list(train_features)
    inputs = keras.Input(shape=(parts[0].shape[1],), name="features")
    x = layers.Dropout(dropout, name="dropout")(standardization(parts)(inputs))
    outputs = layers.Dense(
        num_classes,
        activation="softmax",
        name="probabilities",
        dtype="float32",
        kernel_regularizer=l2_penalty(head_c, train_images or sum(map(len, parts))),
    )(x)
    return keras.Model(inputs, outputs, name="head")


def train_head(session, data, features):
    """The classifier alone on cached features: (head, its datasets, the phase). `data`:
    trainer.data.load.Data; `features`: trainer.features.store.Features."""

    config = session.config
    sizes = features.sizes
    splits = {name: (features.start(name) + np.arange(sizes[name]), data.y(name)) for name in SPLITS}
    splits["train_eval"] = splits["train"]
    splits["train"] = (features.train_indices(), np.tile(data.y("train"), features.views))
    features.rows = Rows(features.store)
    datasets = feature_datasets(features.rows, splits, session.batch_size, config.seed)
    with session.strategy.scope():
        head = make_head(features.train_parts(), len(data.labels), config.dropout, config.head_c, sizes["train"])
    phase = session.fit(head, datasets, phase="head", epochs=config.epochs, images=len(splits["train"][0]))
    if config.head_refit and sizes["validation"] and not config.fine_tune_layers:
        # (Fine-tuning keeps the validation images apart: its guard judges it on them.)
        head, phase.refit = refit_head(session, data, features, splits, phase.kept_epochs)
    return head, datasets, phase


def refit_head(session, data, features, splits: dict, epochs: int):
    """--head-refit: a new head, made and trained the same way, on the training and the
    validation images (each validation image's own features repeated once a view, so that it
    weighs as a training image does) for exactly the epochs early stopping chose on the
    validation split, keeping the last: nothing is left to choose on, since the validation images
    are training images now, so the phase has no early stopping and records no validation
    figures. Returns (head, phase)."""
    config, sizes = session.config, features.sizes
    validation = features.start("validation") + np.arange(sizes["validation"])
    indices = np.concatenate([splits["train"][0], np.tile(validation, features.views)])
    labels = np.concatenate([splits["train"][1], np.tile(data.y("validation"), features.views)])
    datasets = feature_datasets(features.rows, {**splits, "train": (indices, labels)}, session.batch_size, config.seed)
    log.info("--head-refit: the head trained again on the training and validation images for the %d epoch(s) "
             "chosen, the last kept (no validation figures: its validation images are training images)", epochs)  # fmt: skip
    with session.strategy.scope():
        head = make_head([*features.train_parts(), features.split("validation")], len(data.labels), config.dropout,
                         config.head_c, sizes["train"] + sizes["validation"])  # fmt: skip
    phase = session.fit(head, datasets, phase="head_refit", epochs=epochs, images=len(indices), early_stopping=False)
    return head, phase


# ---------------------------------------------------------------------------------------------
# Out of fold: each image's probabilities from a head that never saw it


def fold_splitter(labels: np.ndarray, classes: int, folds: int, seed: int):
    """Stratified folds, shuffled by `seed`: `folds` of them, fewer when the smallest class present
    has fewer images, and at least 2."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=classes)
    smallest = int(counts[counts > 0].min())
    return StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)


def standardized(features: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The features standardized as the head standardizes them (feature_statistics), into one
    float64 array (what the solver wants), a block at a time."""
    mean, scale = feature_statistics(features, chunk)
    out = np.empty(features.shape, dtype=np.float64)
    for start in range(0, len(features), chunk):
        block = out[start : start + chunk]
        np.subtract(features[start : start + chunk], mean, out=block)
        block *= scale
    return out


def converged_out_of_fold(features: np.ndarray, labels: np.ndarray, classes: int, config: TrainConfig,
                          folds: int = FOLDS, seed: int = 0, scaled: np.ndarray | None = None,
                          on_fold: Callable[[], None] | None = None, splits=None) -> np.ndarray:  # fmt: skip
    """[n, classes]: each image's probabilities from a converged head (LogisticRegression at
    C = --head-c, none at 0, with the run's class weights) trained on the other folds (`splits`:
    (train, held-out) index pairs to use instead of stratified folds; the held-out images of a
    pair that covers only some images get probabilities, the rest stay 0).

    The features are standardized once (`scaled`, when the caller has them), and each fold's
    head gives the held-out images a sample weight of 0 rather than a copy of the rest: the same
    objective, one copy of the features instead of three a fold (measured at 30,000 x 1,280:
    1.55 GB over the inputs before). `on_fold` is called as each fold's head is done (a progress bar)."""
    from sklearn.linear_model import LogisticRegression

    scaled = standardized(features) if scaled is None else scaled
    weights_by_class = class_weights(config, labels, classes, quiet=True)
    per_image = np.array([weights_by_class[c] for c in labels]) if weights_by_class else np.ones(len(labels))
    probabilities = np.zeros((len(labels), classes))
    if splits is None:
        splits = fold_splitter(labels, classes, folds, seed).split(np.zeros(len(labels)), labels)
    for train, held_out in splits:
        weights = np.zeros(len(labels))
        weights[train] = per_image[train]
        solver = (
            LogisticRegression(C=config.head_c, max_iter=2000)
            if config.head_c
            else LogisticRegression(penalty=None, max_iter=2000)
        )
        head = solver.fit(scaled, labels, sample_weight=weights)
        probabilities[np.ix_(held_out, head.classes_)] = head.predict_proba(scaled[held_out])
        if on_fold is not None:
            on_fold()
    return probabilities


def deployed_out_of_fold(session, features, y: dict[str, np.ndarray], classes: int, epochs: int,
                         limit: int = OUT_OF_FOLD_IMAGES) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Probabilities [n, classes] of the training and validation images (at most `limit`, the same
    share of each class), each from a head trained the deployed head's way (make_head: its L2,
    dropout and standardization; every view of each training image; the class weights, batch
    size, optimizer and `epochs`) on the other folds; and the images' labels."""
    import keras

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
    splitter = fold_splitter(labels[chosen], classes, FOLDS, config.seed)
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


def deployed_fold_scores(guard: Callable[[int], None] | None, config: TrainConfig, own: np.ndarray, views: np.ndarray,
                         labels: np.ndarray, classes: int, splits, batch_size: int) -> list[float]:  # fmt: skip
    """Each (train, held-out) pair's accuracy on its held-out images, from a head trained the
    deployed way on its training images: make_head (standardization, --dropout, --head-c's L2),
    the optimizer and schedule, --batch-size, the class weights, every view of each training
    image (`views`: [V, n, D], the other views of each image in `own`'s order, V may be 0), early
    stopping at --patience on a tenth of the training images held apart (stratified), and with
    --head-refit a new head trained that many epochs on all of them. `own`: [n, D] each image's
    own features; the held-out indices may include images without views (a test split).
    `guard(folds done)`, when given, is called before each fold (it may raise to stop)."""
    import keras
    from sklearn.model_selection import train_test_split

    scores = []
    for number, (train, held_out) in enumerate(splits):
        if guard is not None:
            guard(number)
        keras.utils.set_random_seed(config.seed + number)
        fit, stop = train_test_split(train, test_size=0.1, stratify=labels[train], random_state=config.seed + number)
        head, epochs = _deployed_head(config, own, views, labels, classes, fit, batch_size, stop=stop)
        if config.head_refit:
            head, _ = _deployed_head(config, own, views, labels, classes, train, batch_size, epochs=epochs)
        predicted = head.predict(own[held_out], batch_size=1024, verbose=0).argmax(axis=1)
        scores.append(float((predicted == labels[held_out]).mean()))
    return scores


def _deployed_head(config: TrainConfig, own, views, labels, classes: int, images: np.ndarray, batch_size: int, *,
                   stop: np.ndarray | None = None, epochs: int | None = None):  # fmt: skip
    """A head trained the deployed way on `images` (each with its views): early-stopped on
    `stop`'s own features, or for exactly `epochs`. Returns (head, the epochs it kept)."""
    import keras

    x = np.concatenate([own[images], *(view[images] for view in views)])
    y = np.tile(labels[images], 1 + len(views))
    weights_by_class = class_weights(config, labels[images], classes, quiet=True)
    epochs_run = epochs or config.epochs
    steps = math.ceil(len(x) / batch_size)
    head = make_head([x], classes, config.dropout, config.head_c, len(images))
    head.compile(
        make_optimizer(config, steps, epochs_run), "sparse_categorical_crossentropy", steps_per_execution=steps
    )
    callbacks, validation = [], None
    if stop is not None:
        validation = (own[stop], labels[stop])
        callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                   min_delta=config.min_delta, restore_best_weights=True)]  # fmt: skip
    history = head.fit(x, y, batch_size=batch_size, epochs=epochs_run, class_weight=weights_by_class, shuffle=True,
                       validation_data=validation, callbacks=callbacks, verbose=0)  # fmt: skip
    if stop is None:
        return head, epochs_run
    losses = history.history["val_loss"]
    return head, int(np.argmin(losses)) + 1
