"""The run's features, held once: one float32 array of every image, then the training images'
other views, in memory or, when that would not fit, in a memory-mapped temporary file; and the
feature datasets the head trains on, which gather batches from it by index."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass

import numpy as np

from trainer.data.pipeline import distributable, prefetched
from trainer.data.rows import SPLITS
from trainer.memory import available_bytes

log = logging.getLogger("trainer")

STORE_SHARE = 0.5  # a feature store larger than this share of the memory available goes to a file


@dataclass
class Features:
    """Every feature row a run uses, held once in one float32 array: first every image (train,
    validation, test, in that order), then the training images seen in each other
    --feature-augment view, view after view. Splits are slices of it and the head's training
    set is a list of row indices, so nothing is copied to make either."""

    store: np.ndarray
    sizes: dict[str, int]  # images per split
    views: int  # views of each training image, the image itself included
    rows: object = None  # Rows over the store, once the head's datasets gather from it

    def keep_images_only(self) -> None:
        """Keep each image's own row (what the label audit reads) and let the rest of the store
        go: the other views, and the head's datasets' hold on it."""
        if self.rows is not None:
            self.rows.release()
            self.rows = None
        images = np.array(self.every(), dtype=np.float32)
        self.store, self.views = images, 1

    def release(self) -> None:
        if self.rows is not None:
            self.rows.release()
        self.store = None

    def start(self, name: str) -> int:
        """The split's first row in the store."""
        return sum(self.sizes[other] for other in SPLITS[: SPLITS.index(name)])

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


class Rows:
    """The array feature batches are gathered from, by reference: tf.data's traced functions
    outlive the datasets that made them (measured: the store was still alive at the label
    audit, held by their closures), so `release` lets the array go while they live on."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __call__(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[index])  # a plain array, from a memory-mapped store too

    def release(self) -> None:
        self.array = None


def gathered(rows: Rows, indices: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | None = None):
    """Batches of (rows.array[indices], labels): the rows are gathered by numpy a batch at a
    time, so the features stay where they are (one array) and a shuffle moves indices, not rows.
    A tf.constant of the store would copy it (measured: a 1 GB array took 2 GB more as a
    constant), and shuffling rows holds a buffer as large as the dataset. seed: shuffle each
    epoch with it; None keeps the order."""
    import tensorflow as tf

    width = rows.array.shape[1]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.asarray(indices, dtype=np.int64), np.asarray(labels, dtype=np.int32))
    )
    if seed is not None:
        dataset = dataset.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)

    def fetch(index, label):
        values = tf.numpy_function(rows, [index], tf.float32, stateful=False)
        values.set_shape((None, width))
        return values, label

    return dataset.batch(batch_size).map(fetch)


def feature_datasets(rows: Rows, splits: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int,
                     seed: int) -> dict:  # fmt: skip
    """Batches of cached features per split, gathered from `rows` (see gathered): splits maps
    each split to (row indices into rows.array, labels); "train" lists every view of every
    training image, shuffled each epoch, and `train_eval` is added: the training images alone,
    in order (for --metrics-on-train)."""
    out = {}
    for name in SPLITS:
        indices, labels = splits[name]
        out[name] = distributable(
            prefetched(gathered(rows, indices, labels, batch_size, seed if name == "train" else None))
        )
    indices, labels = splits["train_eval"]
    out["train_eval"] = gathered(rows, indices, labels, batch_size)
    return out
