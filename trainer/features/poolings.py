"""Every pooling of one backbone's feature map from one pass over the images, each into its own
cache: what a search over --pooling needs (trainer.pooling says what each pooling is).

    features, record = extract_poolings("efficientnet_lite0", 224, "auto", [(rows, ("id",))], workspace)
    features["max"]        # [rows, 1280], as extract(load_extractor(..., pooling="max"), ...) gives

The backbone runs once as trainer.pooling.all_poolings ([avg | max | gem] side by side) for the
images some requested pooling's cache lacks; each pooling's columns go to the cache folder
load_extractor(..., pooling=P).key() names (avgmax: the avg and max columns, under its own key),
so a later `python -m trainer train --pooling max` reads them. The all-poolings model's ONNX
conversion sits in a folder of its own under WORKSPACE/features.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from trainer import device
from trainer.config import POOLINGS
from trainer.errors import InputError
from trainer.features.cache import FeatureCache, cache_key
from trainer.features.extract import check_finite, fill, parts_jobs
from trainer.model import cut_backbone, feature_extractor, load_backbone
from trainer.pooling import all_poolings, columns

READ_KEYS = 8192  # keys read from one pooling's cache at a time, through a buffer that size


class PooledCaches:
    """Several poolings' caches behind the one cache fill() reads and stores through: a key is
    present when every pooling's cache has it; each cache fills its own columns of the row, and
    stores only the keys it lacked."""

    def __init__(self, caches: dict[str, tuple[FeatureCache, slice]]):
        self.caches = caches
        self.lacking: dict[str, set[str]] = {pooling: set() for pooling in caches}
        self._refused = ""

    @property
    def refused(self) -> str:
        return self._refused

    @refused.setter
    def refused(self, reason: str) -> None:
        self._refused = reason
        for cache, _ in self.caches.values():
            cache.refused = reason

    def read(self, keys: list[str], out: np.ndarray, positions: np.ndarray) -> np.ndarray:
        absent = np.zeros(len(keys), dtype=bool)
        for pooling, (cache, where) in self.caches.items():
            for start in range(0, len(keys), READ_KEYS):
                chunk = keys[start : start + READ_KEYS]
                block = np.empty((len(chunk), where.stop - where.start), dtype=np.float32)
                missing = cache.read(chunk, block, np.arange(len(chunk)))
                out[positions[start : start + len(chunk)][~missing], where] = block[~missing]
                self.lacking[pooling].update(key for key, gone in zip(chunk, missing, strict=True) if gone)
                absent[start : start + len(chunk)] |= missing
        return absent

    def store(self, keys: list[str], features: np.ndarray) -> None:
        for pooling, (cache, where) in self.caches.items():
            wanted = [number for number, key in enumerate(keys) if key in self.lacking[pooling]]
            if wanted:
                cache.store([keys[number] for number in wanted], features[wanted, where])

    def reused(self, keys: int) -> dict[str, int]:
        """Of `keys` distinct image views asked for, how many each pooling's cache had."""
        return {pooling: keys - len(lacking) for pooling, lacking in self.lacking.items()}


def extract_poolings(name: str, image_size: int, weights: str, parts: list[tuple[list, tuple[str, ...]]],
                     workspace: Path, poolings: tuple[str, ...] = POOLINGS, batch_size: int | None = None,
                     jit_compile: bool = False, *, feature_layer: str | None = None,
                     stop=None) -> tuple[dict[str, np.ndarray], dict]:  # fmt: skip
    """Each pooling's features of the parts' rows (as extract() lays them out: part after part,
    view after view), with one backbone pass for the images some pooling's cache lacks; the
    arrays are views into one [rows, 3 x width] array. The record: each pooling's cache key and
    width, how many image views each cache had (`reused`), the pass's counts per view as
    extract's ({"reused": in every cache, "featurized": n}), the runtime (None: nothing
    featurized) and the seconds it all took. `stop`: as fill's (it ends the pass with
    trainer.features.extract.Stopped, what was featurized stored)."""
    import keras

    started = time.perf_counter()
    unknown = [pooling for pooling in poolings if pooling not in POOLINGS]
    if unknown or not poolings:
        raise InputError(f"poolings: {unknown or 'none'}; choose from {', '.join(POOLINGS)}")
    if batch_size is None:
        batch_size = device.featurize_batch_size(32, device.visible_devices(), device.onednn()[0])
    backbone, used = load_backbone(name, image_size, weights)
    backbone = cut_backbone(backbone, feature_layer) if feature_layer else backbone
    width, policy = int(backbone.output_shape[-1]), keras.mixed_precision.global_policy()
    keys = {pooling: cache_key(name, image_size, used, feature_layer, policy, pooling) for pooling in poolings}
    root = Path(workspace) / "features"
    caches = PooledCaches({pooling: (FeatureCache(root / keys[pooling]), columns(pooling, width))
                           for pooling in poolings})  # fmt: skip
    model = feature_extractor(all_poolings(backbone), name)
    jobs, rows = parts_jobs(parts)
    out = np.zeros((rows, 3 * width), dtype=np.float32)
    counts: dict = {}
    folder = root / cache_key(name, image_size, used, feature_layer, policy, "all")
    runtime = fill(model, jobs, out, image_size, batch_size, folder, jit_compile, counts, caches, stop)
    features = {pooling: out[:, columns(pooling, width)] for pooling in poolings}
    for pooling, array in features.items():
        check_finite(f"{name} ({pooling} pooling)", array)
    distinct = len({(sha256, view) for sha256, _, view, _ in jobs})
    record = {"keys": keys, "weights": used, "dimensions": {pooling: features[pooling].shape[1] for pooling in poolings},
              "reused": caches.reused(distinct), "views": counts, "runtime": runtime,
              "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    return features, record
