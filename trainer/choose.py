"""--backbone auto: the backbone chosen from the bottleneck cache.

Each candidate featurizes a sample of the images the run learns from (train and validation, at
most RANKING_IMAGES, the same per class; never the test split), into the same cache the run then
trains from, so the chosen backbone's features are not made twice. Each is scored by 5-fold
cross-validated accuracy of a logistic-regression head on those features (log-loss breaks ties),
which is the head the run goes on to train, so the score measures what is chosen for. The sample
is the images with the smallest SHA-256 per class and the folds are fixed, so the ranking depends
on the images the split leaves for training, and on nothing else --seed sets. With 3 or 4 candidates, choosing costs less than twice featurizing
the whole set with the slowest one alone. A candidate without pretrained weights here is not
ranked: random features say nothing about the backbone.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from trainer.errors import InputError

log = logging.getLogger("trainer")

# On a CPU the EfficientNet-Lites, the backbones with ImageNet weights offline (TensorFlow runs
# them at about 72, 47 and 34 images/s on two cores); a GPU can afford Keras's downloadable
# ones too, ML.NET's ResNet-v2-50 and Inception-v3 among them.
CPU_CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
GPU_CANDIDATES = (*CPU_CANDIDATES, "mobilenet_v2", "efficientnet_b0", "resnet50_v2", "inception_v3")
RANKING_IMAGES = 200


def sample(rows, labels: list[str], size: int = RANKING_IMAGES) -> list:
    """At most `size` rows, the same number per class where the classes allow: the smallest
    SHA-256 of each, which is a fixed pseudo-random choice."""
    by_label = {
        label: sorted((row for row in rows if row.label == label), key=lambda row: row.sha256) for label in labels
    }
    share = max(1, size // max(1, len(labels)))
    return [row for label in labels for row in by_label[label][:share]]


def candidates(text: str | None, accelerated: bool) -> list[tuple[str, str]]:
    """(backbone, weights) pairs: --candidates NAME[=WEIGHTS_FILE],... or the device's default."""
    from trainer.model import BACKBONES, canonical_backbone

    if not text:
        return [(name, "auto") for name in (GPU_CANDIDATES if accelerated else CPU_CANDIDATES)]
    chosen = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        name, _, weights = part.partition("=")
        name = canonical_backbone(name.strip())
        if name not in BACKBONES:
            raise InputError(f"--candidates: {name!r} is not a backbone; use some of {', '.join(BACKBONES)}")
        chosen.append((name, weights.strip() or "auto"))
    if not chosen:
        raise InputError("--candidates: name at least one backbone")
    return chosen


def rank(session, loaded, pairs: list[tuple[str, str]]) -> list[dict]:
    """Featurize the training images with each candidate (through the cache) and score it;
    best first. Each entry: backbone, weights, cv_accuracy, cv_log_loss, images, featurize_seconds."""
    import keras

    from trainer import device
    from trainer.audit import out_of_fold
    from trainer.evaluate import log_loss
    from trainer.features import cache_key, cached_features
    from trainer.model import feature_extractor, load_backbone

    config = session.config
    rows = sample(loaded.parts["train"] + loaded.parts["validation"], loaded.labels)
    labels = np.array([loaded.labels.index(row.label) for row in rows])
    batch = device.featurize_batch_size(session.batch_size, device.visible_devices(), session.onednn)
    ranking = []
    for name, weights in pairs:
        with session.strategy.scope():
            backbone, used = load_backbone(name, config.image_size, weights)
        if used == "none":
            log.info("--backbone auto: %s has no pretrained weights here; not ranked", name)
            continue
        key = cache_key(name, config.image_size, used, None, keras.mixed_precision.global_policy())
        started = time.perf_counter()
        features = cached_features(
            feature_extractor(backbone, name), rows, config.image_size, batch,
            session.workspace / "features" / key, jit_compile=session.policy.xla,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        probabilities = out_of_fold(features, labels, len(loaded.labels), seed=0)
        ranking.append({
            "backbone": name, "weights": used,
            "cv_accuracy": round(float((probabilities.argmax(axis=1) == labels).mean()), 4),
            "cv_log_loss": round(log_loss(labels, probabilities), 4),
            "images": len(rows),
            "featurize_seconds": round(seconds, 2),
        })  # fmt: skip
        log.info("--backbone auto: %s (%s) cross-validated accuracy %.3f, log-loss %.3f",
                 name, used, ranking[-1]["cv_accuracy"], ranking[-1]["cv_log_loss"])  # fmt: skip
    if not ranking:
        raise InputError("--backbone auto: no candidate has pretrained weights here; name one with --backbone")
    return sorted(ranking, key=lambda entry: (-entry["cv_accuracy"], entry["cv_log_loss"]))


def choose(session, loaded) -> dict:
    """Rank the candidates and set the config's backbone and weights to the best; returns what
    config.json and the manifest record: the ranking and how long choosing took."""
    from trainer import device

    config = session.config
    if config.feature_layer:
        raise InputError("--feature-layer names one backbone's layer; it cannot go with --backbone auto")
    accelerated = any(d.kind in ("GPU", "TPU") for d in device.visible_devices())
    started = time.perf_counter()
    ranking = rank(session, loaded, candidates(config.candidates, accelerated))
    config.backbone, config.weights = ranking[0]["backbone"], ranking[0]["weights"]
    log.info("--backbone auto: chose %s", config.backbone)
    return {"ranking": ranking, "seconds": round(time.perf_counter() - started, 2)}
