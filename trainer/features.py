"""The bottleneck cache: every image goes through the frozen backbone once; its pooled features
are stored on disk and reused by every later run with the same key.

    WORKSPACE/features/<key>/shard-<digest>.npz     arrays: sha256 (N,), features (N, D)

The key covers what changes the features: backbone, image size, weights (a file's hash, or
"imagenet"), and the preprocessing version. Within a key, features are found by each image
file's content hash, so renamed or moved images still hit, and a new or edited image alone is
featurized. Shards are zip files with CRCs: a damaged shard fails to load, is deleted, and its
images are featurized again. Features are stored every SHARD_SECONDS (and at the end), so a run
killed halfway through a large dataset keeps most of what it computed; a shard is written under a
temporary name and renamed, so a kill never leaves half of one under its real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from trainer.atomic import replacing
from trainer.progress import progress

log = logging.getLogger("trainer")

# Bump when the decoding or resizing of images changes: old features would no longer match.
PREPROCESSING = "pil-exif-rgb-bilinear-v1"
SHARD_SECONDS = 30.0


def weights_identity(weights: str) -> str:
    if weights in ("imagenet", "none"):
        return weights
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "file-" + digest.hexdigest()[:16]


def cache_key(
    backbone: str, image_size: int, weights: str, feature_layer: str | None = None, policy: object = "float32"
) -> str:
    """The cache folder's name. Features computed in float16 or bfloat16 differ from float32
    ones (by up to about 1e-2 of their scale: tests/test_bottleneck.py measures it), so the
    compute dtype is part of the key, and a head never trains on a mix of the two. A float32
    key is the same as before the dtype was added, so earlier caches stay valid."""
    compute = getattr(policy, "compute_dtype", None) or str(policy).removeprefix("mixed_")
    parts = [backbone, image_size, weights_identity(weights), feature_layer, PREPROCESSING]
    if compute != "float32":
        parts.append(compute)
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    return f"{backbone}-{image_size}-" + ("" if compute == "float32" else f"{compute}-") + digest


class FeatureCache:
    def __init__(self, folder: Path):
        self.folder = folder

    def load(self) -> dict[str, np.ndarray]:
        """sha256 -> feature vector for every readable shard; damaged shards are removed."""
        found: dict[str, np.ndarray] = {}
        if not self.folder.is_dir():
            return found
        for leftover in self.folder.glob(".shard-*.partial-*.npz"):  # from a killed run
            if not _alive(leftover.name.rsplit("-", 1)[-1].removesuffix(".npz")):
                leftover.unlink(missing_ok=True)
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    hashes, features = data["sha256"], data["features"]
                    if len(hashes) != len(features) or features.ndim != 2:
                        raise ValueError("arrays of different lengths")
                    found.update(zip(hashes.tolist(), features, strict=True))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
                log.warning(
                    "WARNING: damaged feature cache shard %s (%s): removed, its images are featurized again",
                    shard.name,
                    error,
                )
                shard.unlink(missing_ok=True)
        return found

    def add(self, hashes: list[str], features: np.ndarray) -> Path:
        """Write one shard, atomically: a temporary name, then a rename."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()[:16]
        target = self.folder / f"shard-{digest}.npz"
        # Named by process: runs sharing a cache on Drive may store the same shard at once.
        with replacing(target, suffix=".npz", unique=True) as temporary:
            np.savez(temporary, sha256=np.array(hashes), features=features.astype(np.float32))
        return target


def _alive(pid: str) -> bool:
    """Is the process that named a temporary shard still running (another run sharing the cache)?"""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# Copies of a photo that keep its label where the subject has no up, down, left or right (a
# crack in a deck seen from above): for --feature-augment. A view's name says what is done to
# the image, in order: t transposes it, v flips its rows, h flips its columns.
VIEWS = {
    "none": ("id",),
    "flips": ("id", "h", "v", "vh"),
    "dihedral": ("id", "h", "v", "vh", "t", "th", "tv", "tvh"),
}


def view_of(images, view: str):
    """A batch of images (N, H, W, C) seen as `view`."""
    import tensorflow as tf

    for step in view if view != "id" else "":
        if step == "t":
            images = tf.transpose(images, (0, 2, 1, 3))
        elif step == "v":
            images = tf.reverse(images, axis=[1])
        elif step == "h":
            images = tf.reverse(images, axis=[2])
        else:
            raise ValueError(f"unknown view step {step!r} in {view!r}")
    return images


def featurize(feature_model, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """Run images through the frozen feature extractor in batches, with a progress bar."""
    return np.concatenate(list(featurize_batches(feature_model, paths, image_size, batch_size))).astype(np.float32)


def featurize_batches(
    feature_model, paths: list[str], image_size: int, batch_size: int, jit_compile: bool = False, view: str = "id"
):
    """The features of paths (seen as `view`), one batch at a time, in order; jit_compile runs
    them through XLA."""
    import tensorflow as tf

    from trainer.pipeline import make_dataset

    dataset = make_dataset(paths, None, image_size, batch_size)
    if view != "id":
        dataset = dataset.map(lambda images: view_of(images, view))
    # One graph per model, traced once for any batch size: a new tf.function per call would
    # trace again every time (a second or more for a large backbone).
    run = getattr(feature_model, "_trainer_featurize", None)
    if run is None:
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
        run = tf.function(
            lambda images: feature_model(images, training=False), input_signature=[spec], jit_compile=jit_compile
        )
        feature_model._trainer_featurize = run
    batches = (len(paths) + batch_size - 1) // batch_size
    for images in progress(dataset, total=batches, desc="featurize" if view == "id" else f"featurize ({view})"):
        yield run(images).numpy()


def cached_features(
    feature_model,
    rows,
    image_size: int,
    batch_size: int,
    folder: Path,
    jit_compile: bool = False,
    views: tuple[str, ...] = ("id",),
    counts: dict | None = None,
) -> np.ndarray:
    """Features for rows (in order) seen in each of `views`, view after view: from the cache
    where present, featurized and stored where not. The cache is read once for all the views.
    A view other than the image itself is stored as "sha256:view". `counts`, when given, gets
    {view: {"reused": n, "featurized": m}} (distinct images) for the run's manifest."""
    cache = FeatureCache(folder)
    known = cache.load()
    folder.mkdir(parents=True, exist_ok=True)  # where the shards will go: featurizing has begun
    every = []
    for view in views:
        identity = {row.sha256: row.sha256 if view == "id" else f"{row.sha256}:{view}" for row in rows}
        missing = sorted({key: str(row.path) for row in rows if (key := identity[row.sha256]) not in known}.items())
        seen_as = "" if view == "id" else f" (seen as {view})"
        log.info("feature cache %s: %d images%s reused, %d to featurize", folder, len(identity) - len(missing), seen_as,
                 len(missing))  # fmt: skip
        if counts is not None:
            counts[view] = {"reused": len(identity) - len(missing), "featurized": len(missing)}
        if missing:
            _featurize_into(cache, known, missing, feature_model, image_size, batch_size, jit_compile, view)
        every.append(np.stack([known[identity[row.sha256]] for row in rows]))
    return np.concatenate(every)


def _featurize_into(cache, known: dict, missing: list[tuple[str, str]], feature_model, image_size: int,
                    batch_size: int, jit_compile: bool, view: str) -> None:  # fmt: skip
    """Featurize the missing (key, path) pairs, storing a shard every SHARD_SECONDS and at the end."""
    hashes = [key for key, _ in missing]
    pending: list[np.ndarray] = []
    stored, last = 0, time.monotonic()
    batches = featurize_batches(
        feature_model, [path for _, path in missing], image_size, batch_size, jit_compile=jit_compile, view=view
    )
    for number, features in enumerate(batches, start=1):
        pending.append(features)
        if time.monotonic() - last >= SHARD_SECONDS or number * batch_size >= len(missing):
            chunk = np.concatenate(pending).astype(np.float32)
            cache.add(hashes[stored : stored + len(chunk)], chunk)
            known.update(zip(hashes[stored : stored + len(chunk)], chunk, strict=True))
            stored, pending, last = stored + len(chunk), [], time.monotonic()
