"""tf.data input pipelines of images: parallel decode and resize, in-memory cache, shuffle, batch,
augmentation, prefetch. (The head's feature datasets gather from the feature store:
trainer.features.store.)"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from trainer.data.images import load_image
from trainer.data.rows import SPLITS

PARALLEL = os.cpu_count() or 2  # decoding threads
SHUFFLE_WINDOW = 1024  # decoded images an epoch reshuffles among when they are cached in memory


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | None,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = False,
    augment=None,
):
    """Batches of (pixels float32 0-255, label) or, without labels, pixels alone.

    Decoding runs in Pillow on parallel threads (Pillow releases the GIL while it decodes).
    Without the cache the paths are shuffled before decoding; with it the decoded images are
    cached in a random order, so every epoch after the first reads memory and each reshuffles
    within SHUFFLE_WINDOW images.
    """
    import tensorflow as tf

    def decode(path):
        image = tf.numpy_function(lambda p: load_image(p.decode(), image_size), [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image

    paths = list(paths)
    if shuffle and cache:
        # The cache keeps the first epoch's order, so that order is made random once; each
        # epoch then reshuffles within a window of decoded images, not the whole set.
        order = np.random.default_rng(seed).permutation(len(paths))
        paths = [paths[i] for i in order]
        labels = None if labels is None else np.asarray(labels)[order]
    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(paths)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, dtype=np.int32)))
    if shuffle and not cache:
        # Shuffled as paths, before decoding: the buffer holds names, not images (44,800 decoded
        # 224 px images would be 6.7 GB of buffer).
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if labels is None:
        dataset = dataset.map(decode, num_parallel_calls=PARALLEL, deterministic=True)
    else:
        dataset = dataset.map(
            lambda path, label: (decode(path), label), num_parallel_calls=PARALLEL, deterministic=True
        )
    if cache:
        dataset = dataset.cache()
    if shuffle and cache:
        dataset = dataset.shuffle(min(len(paths), SHUFFLE_WINDOW), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if labels is None:
        dataset = dataset.map(lambda images: tf.cast(images, tf.float32))
    else:
        dataset = dataset.map(lambda images, label: (tf.cast(images, tf.float32), label))
    if augment is not None:
        dataset = dataset.map(
            lambda images, label: (augment(images, training=True), label), num_parallel_calls=PARALLEL
        )
    return prefetched(dataset)


def decoded(paths: Sequence[str], image_size: int) -> np.ndarray:
    """The images as a model takes them (float32 pixels 0-255), decoded in parallel, in one array."""
    if not len(paths):
        return np.zeros((0, image_size, image_size, 3), dtype=np.float32)
    return np.concatenate([batch.numpy() for batch in make_dataset(paths, None, image_size, 64)])


def prefetched(dataset):
    """Two batches ahead, with fixed parallelism and buffers instead of tf.data's autotuner.
    With the autotuner on, dropping an iterator sometimes waited 2.2 s for it (measured on 2
    cores with the CPU busy in the model: 1 pass in 3 over 64 images took 5.1 s instead of
    2.9). Decoding is a few milliseconds an image against tens for a backbone, so one thread
    per core and two batches ahead keep up."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def augmentation(seed: int):
    """Random transposes and flips (a crack has no up, left or diagonal: together they give the
    eight symmetries of the square, as --feature-augment dihedral does for cached features),
    small rotations and zooms, and contrast, on batches of 0-255 pixels. Applied in the input
    pipeline, so the saved model has none of it."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            _random_transpose_layer()(seed=seed + 4),
            layers.RandomFlip("horizontal_and_vertical", seed=seed),
            layers.RandomRotation(0.08, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
            layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 3),
        ],
        name="augmentation",
    )


def _random_transpose_layer():
    """The layer class, made when augmentation is used (TensorFlow is imported only then)."""
    import keras
    import tensorflow as tf

    class RandomTranspose(keras.layers.Layer):
        """Transposes each square image of a batch with probability 1/2 (in training only)."""

        def __init__(self, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=True):
            if not training:
                return images
            chosen = keras.random.uniform((tf.shape(images)[0], 1, 1, 1), seed=self.generator) < 0.5
            return tf.where(chosen, tf.transpose(images, (0, 2, 1, 3)), images)

        def get_config(self):
            return {**super().get_config(), "seed": self.seed}

    return RandomTranspose


def fits_in_memory(count: int, image_size: int, megabytes: int) -> bool:
    return count * image_size * image_size * 3 <= megabytes * 1024 * 1024


def image_datasets(paths: dict[str, list[str]], labels: dict[str, np.ndarray], config, batch_size: int) -> dict:
    """Batches of decoded images per split (augmented for training when config.augment), plus
    `train_eval`; held in memory when they fit in config.cache_megabytes."""
    total = sum(map(len, paths.values()))
    cache = fits_in_memory(total, config.image_size, config.cache_megabytes)
    out = {}
    for name in SPLITS:
        out[name] = distributable(
            make_dataset(
                paths[name],
                labels[name],
                config.image_size,
                batch_size,
                shuffle=name == "train",
                seed=config.seed,
                cache=cache and name != "test",
                augment=augmentation(config.seed) if config.augment and name == "train" else None,
            )
        )
    out["train_eval"] = make_dataset(paths["train"], labels["train"], config.image_size, batch_size)
    return out


def distributable(dataset):
    """Shard by element, not by file: the pipelines start from in-memory lists."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
