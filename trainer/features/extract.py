"""Features of rows of images from a pretrained backbone: the one entry point that training,
--backbone auto and the label audit all call.

    extractor = load_extractor("efficientnet_lite0", 224, "auto")
    features, record = extract(extractor, [(rows, ("id",))], workspace)

(trainer.features.poolings featurizes every pooling of one backbone in one pass.)

Every image goes through the frozen backbone once per view: what the workspace's cache
(trainer.features.cache) already has for the extractor's key is read from it, the rest is
featurized (trainer.features.runtime: ONNX Runtime on a CPU, else TensorFlow), each image decoded
once for all the views it lacks, and stored as it goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import device
from trainer.data.pipeline import make_dataset
from trainer.errors import CheckFailed, counted, os_error_sentence
from trainer.features.cache import SHARD_SECONDS, FeatureCache, cache_key
from trainer.features.runtime import featurizer, tensorflow_runner
from trainer.features.views import view_of
from trainer.model import cut_backbone, feature_extractor, load_backbone
from trainer.pooling import pooled
from trainer.progress import progress

log = logging.getLogger("trainer")


@dataclass
class Extractor:
    """A backbone as a feature extractor: pixels in, pooled features out."""

    name: str
    image_size: int
    weights: str  # the weights actually used: imagenet, none or a file
    feature_layer: str | None
    backbone: object  # the Keras backbone, pooled (trainer.model builds the classifier on it)
    model: object  # the Keras feature extractor: the backbone's preprocessing, then the backbone
    pooling: str = "avg"  # how the last feature map is pooled (trainer.pooling)

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def width(self) -> int:
        return int(self.model.output_shape[-1])

    def key(self) -> str:
        """The cache key: backbone, size, weights, layer, the policy's compute dtype, pooling."""
        import keras

        policy = keras.mixed_precision.global_policy()
        return cache_key(self.name, self.image_size, self.weights, self.feature_layer, policy, self.pooling)

    def folder(self, workspace: Path) -> Path:
        return Path(workspace) / "features" / self.key()


def load_extractor(name: str, image_size: int, weights: str, feature_layer: str | None = None,
                   pooling: str = "avg") -> Extractor:  # fmt: skip
    """The backbone with the weights asked for (trainer.model.load_backbone says what `auto`
    becomes), cut at `feature_layer` when given, its feature map pooled by `pooling`
    (trainer.pooling), as an Extractor. Build it under a distribution strategy's scope when the
    model trains under one."""

    backbone, used = load_backbone(name, image_size, weights)
    backbone = pooled(cut_backbone(backbone, feature_layer) if feature_layer else backbone, pooling)
    return Extractor(name, image_size, used, feature_layer, backbone, feature_extractor(backbone, name), pooling)


def extract(extractor: Extractor, parts: list[tuple[list, tuple[str, ...]]], workspace: Path, *,
            batch_size: int | None = None, jit_compile: bool = False, out: np.ndarray | None = None,
            cache: FeatureCache | None = None) -> tuple[np.ndarray, dict]:  # fmt: skip
    """The features of each part's rows (trainer.data.rows.Row, with sha256) seen in each of its
    views, part after part and view after view, into `out` (made when not given); and what the
    cache did: its key, per view how many images it had and how many went through the backbone,
    the runtime that ran it (None when nothing was featurized) and the seconds it all took.
    batch_size: images per call, by default what suits the device (trainer.device). Features that
    are not finite (a half-precision overflow) are an error naming the policy."""
    started = time.perf_counter()
    if batch_size is None:
        batch_size = device.featurize_batch_size(32, device.visible_devices(), device.onednn()[0])
    jobs, rows = parts_jobs(parts)
    if out is None:
        out = np.empty((rows, extractor.width), dtype=np.float32)
    counts: dict = {}
    folder = extractor.folder(workspace)
    runtime = fill(extractor.model, jobs, out, extractor.image_size, batch_size, folder, jit_compile, counts, cache)
    check_finite(extractor.name, out)
    record = {"key": folder.name, "dimensions": extractor.width, "views": counts, "runtime": runtime,
              "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    return out, record


def check_finite(name: str, features: np.ndarray) -> None:
    """CheckFailed naming the policy when some features are not finite (a half-precision overflow)."""
    import keras

    bad = sum(int((~np.isfinite(features[i : i + 8192]).all(axis=1)).sum()) for i in range(0, len(features), 8192))
    if bad:
        policy = keras.mixed_precision.global_policy().name
        raise CheckFailed(
            f"{name}: the features of {counted(bad, 'image view')} are not finite under {policy}; "
            "rerun with --mixed-precision off"
        )


def parts_jobs(parts: list[tuple[list, tuple[str, ...]]]) -> tuple[list[tuple[str, str, str, int]], int]:
    """Every (sha256, path, view, position) of parts' rows, part after part and view after view,
    and how many rows that makes."""
    jobs, start = [], 0
    for part_rows, views in parts:
        jobs += wanted(part_rows, views, start)
        start += len(part_rows) * len(views)
    return jobs, start


def featurize(feature_model, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """Run images through the frozen feature extractor in batches, with a progress bar."""
    run = tensorflow_runner(feature_model, image_size)
    batches = featurize_batches(run, paths, image_size, batch_size)
    return np.concatenate([views[0] for views in batches]).astype(np.float32)


def featurize_batches(run, paths: list[str], image_size: int, batch_size: int, views: tuple[str, ...] = ("id",)):
    """For each batch of paths, in order, its features seen in each of `views` (a list, one
    array per view). Each image is decoded once for all its views: the views are flips and
    transposes of the decoded pixels. `run`: images -> features (trainer.features.runtime), while
    tf.data decodes the next batches on its own threads."""
    dataset = make_dataset(paths, None, image_size, batch_size)
    batches = (len(paths) + batch_size - 1) // batch_size
    seen = "" if views == ("id",) else f" ({len(views)} views)" if len(views) > 1 else f" ({views[0]})"
    for images in progress(dataset, total=batches, desc=f"featurize{seen}"):
        pixels = images.numpy()
        yield [run(view_of(pixels, view)) for view in views]


def cached_features(
    feature_model,
    rows,
    image_size: int,
    batch_size: int,
    folder: Path,
    jit_compile: bool = False,
    views: tuple[str, ...] = ("id",),
    counts: dict | None = None,
    out: np.ndarray | None = None,
    cache: FeatureCache | None = None,
) -> np.ndarray:
    """Features for rows (in order) seen in each of `views`, view after view, into `out` (made
    when not given: [len(rows) * len(views), D] float32): from the cache where present,
    featurized and stored where not (see fill)."""
    if out is None:
        out = np.empty((len(rows) * len(views), int(feature_model.output_shape[-1])), dtype=np.float32)
    fill(feature_model, wanted(rows, views), out, image_size, batch_size, folder, jit_compile, counts, cache)
    return out


def wanted(rows, views: tuple[str, ...], start: int = 0) -> list[tuple[str, str, str, int]]:
    """(sha256, path, view, position) for rows seen in each view, view after view from `start`."""
    return [
        (row.sha256, str(row.path), view, start + number * len(rows) + offset)
        for number, view in enumerate(views)
        for offset, row in enumerate(rows)
    ]


def _tallied(tallies: dict[str, tuple[int, int]]) -> str:
    """'400 reused, 0 to featurize; the 7 other views (h, v, ...) 320 reused, 0 to featurize
    each': one line for the image and every flip or turn of it, not one line a view."""
    said = [f"{reused} reused, {lacking} to featurize" for reused, lacking in tallies.values()]
    views = [view for view in tallies if view != "id"]
    if "id" in tallies and len(set(said[1:])) == 1 and len(views) > 1:
        return f"{said[0]}; the {len(views)} other views ({', '.join(views)}) {said[1]} each"
    return "; ".join(text if view == "id" else f"{text} as {view}" for view, text in zip(tallies, said, strict=True))


class Stopped(Exception):
    """Featurizing stopped when asked to (a search's budget), what it had done stored."""


def fill(feature_model, wanted: list[tuple[str, str, str, int]], out: np.ndarray, image_size: int,
         batch_size: int, folder: Path, jit_compile: bool = False, counts: dict | None = None,
         cache: FeatureCache | None = None, stop: Callable[[], bool] | None = None) -> str | None:  # fmt: skip
    """Write the features of each (sha256, path, view, position) into out[position]: from the
    cache where present, else featurized and stored. An image missing several views is decoded
    once for all of them. A view other than the image itself is stored as "sha256:view".
    `cache`: a FeatureCache to share between calls, so its index is read once a run. `counts`,
    when given, gets {view: {"reused": n, "featurized": m}} (distinct images). Returns the
    runtime that featurized (trainer.features.runtime), or None when the cache had everything.
    `stop`: asked between batches; when it says so, what was featurized is stored and Stopped raised."""
    cache = cache or FeatureCache(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)  # where the shards will go: featurizing has begun
    except OSError as error:
        cache.refused = os_error_sentence(error, folder, where="--workspace")
        log.warning("WARNING: no feature cache this run (%s); the features are computed and kept in memory",
                    cache.refused)  # fmt: skip
    positions: dict[str, list[int]] = {}
    source: dict[str, tuple[str, str, str]] = {}
    for sha256, path, view, position in wanted:
        key = sha256 if view == "id" else f"{sha256}:{view}"
        positions.setdefault(key, []).append(position)
        source.setdefault(key, (sha256, path, view))
    keys = list(positions)
    absent = cache.read(keys, out, np.array([positions[key][0] for key in keys], dtype=np.int64))
    missing = {key for key, gone in zip(keys, absent, strict=True) if gone}
    tallies = {}
    for view in dict.fromkeys(source[key][2] for key in keys):
        of_view = [key for key in keys if source[key][2] == view]
        lacking = sum(key in missing for key in of_view)
        tallies[view] = (len(of_view) - lacking, lacking)
        if counts is not None:
            counts[view] = {"reused": len(of_view) - lacking, "featurized": lacking}
    if tallies:
        log.info("feature cache %s: %s", folder, _tallied(tallies))
    # Each image with the views it lacks; images lacking the same views go through together.
    lacks: dict[str, tuple[str, list[str]]] = {}
    for key in keys:
        if key in missing:
            sha256, path, _ = source[key]
            lacks.setdefault(sha256, (path, []))[1].append(key)
    groups: dict[tuple[str, ...], list[tuple[str, list[str]]]] = {}
    for path, image_keys in lacks.values():
        groups.setdefault(tuple(source[key][2] for key in image_keys), []).append((path, image_keys))
    runtime = None
    if groups:
        run = featurizer(feature_model, image_size, folder, jit_compile)
        runtime = run.runtime
        for views, images in groups.items():
            _featurize_into(cache, out, images, positions, run, image_size, batch_size, views, stop)
    for key in keys:
        for position in positions[key][1:]:
            out[position] = out[positions[key][0]]
    return runtime


def _featurize_into(cache: FeatureCache, out: np.ndarray, images: list[tuple[str, list[str]]], positions: dict,
                    run, image_size: int, batch_size: int, views: tuple[str, ...], stop=None) -> None:  # fmt: skip
    """Featurize images (path, its key in each of `views`) into out at their keys' first
    positions, storing a shard every SHARD_SECONDS and at the end."""
    done, last = 0, time.monotonic()
    pending_keys: list[str] = []
    batches = featurize_batches(run, [path for path, _ in images], image_size, batch_size, views)
    for features in batches:
        batch = images[done : done + len(features[0])]
        for number in range(len(views)):
            places = [positions[image_keys[number]][0] for _, image_keys in batch]
            out[places] = features[number]
            pending_keys += [image_keys[number] for _, image_keys in batch]
        done += len(batch)
        stopping = stop is not None and done < len(images) and stop()
        if time.monotonic() - last >= SHARD_SECONDS or done >= len(images) or stopping:
            cache.store(pending_keys, out[[positions[key][0] for key in pending_keys]])
            pending_keys, last = [], time.monotonic()
        if stopping:
            raise Stopped(f"stopped after {counted(done, 'image')} of {len(images)}; they are in the cache")
