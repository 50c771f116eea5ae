"""--backbone auto: the backbone chosen from the bottleneck cache.

Each candidate featurizes a sample of the images the run learns from (train and validation, at
most RANKING_IMAGES, the same per class; never the test split), into the same cache the run then
trains from, so the chosen backbone's features are not made twice. Each is scored by 5-fold
cross-validated accuracy of a head on those features (log-loss breaks ties): trainer.head's
converged head, with the run's --head-c and class weights, which is the objective the run's own
head is trained on, solved to the end, so the score measures what is chosen for. The sample is
the images with the smallest SHA-256 per class and the folds are fixed, so the ranking depends on
the images the split leaves for training, and on nothing else --seed sets. With 3 or 4
candidates, choosing costs less than twice featurizing the whole set with the slowest one alone. A candidate without pretrained weights here is not
ranked: random features say nothing about the backbone.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from trainer import device
from trainer.config import parse_candidates
from trainer.errors import InputError
from trainer.features.extract import extract, load_extractor
from trainer.head import converged_out_of_fold
from trainer.metrics import log_loss

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
    return parse_candidates(text) or [(name, "auto") for name in (GPU_CANDIDATES if accelerated else CPU_CANDIDATES)]


def rank(session, data, pairs: list[tuple[str, str]]) -> list[dict]:
    """Featurize a sample of the training images with each candidate (through the cache) and
    score it; best first. Each entry: backbone, weights, cv_accuracy, cv_log_loss, images,
    featurize_seconds."""
    config = session.config
    rows = sample(data.parts["train"] + data.parts["validation"], data.labels)
    labels = np.array([data.labels.index(row.label) for row in rows])
    ranking = []
    for name, weights in pairs:
        with session.strategy.scope():
            extractor = load_extractor(name, config.image_size, weights)
        if not extractor.pretrained:
            log.info("--backbone auto: %s has no pretrained weights here; not ranked", name)
            continue
        features, record = extract(extractor, [(rows, ("id",))], session.workspace,
                                   batch_size=session.featurize_batch_size, jit_compile=session.policy.xla)  # fmt: skip
        probabilities = converged_out_of_fold(features, labels, len(data.labels), config, seed=0)
        ranking.append({
            "backbone": name, "weights": extractor.weights,
            "cv_accuracy": round(float((probabilities.argmax(axis=1) == labels).mean()), 4),
            "cv_log_loss": round(log_loss(labels, probabilities), 4),
            "images": len(rows),
            "featurize_seconds": record["seconds"],
        })  # fmt: skip
        log.info("--backbone auto: %s (%s) cross-validated accuracy %.3f, log-loss %.3f",
                 name, extractor.weights, ranking[-1]["cv_accuracy"], ranking[-1]["cv_log_loss"])  # fmt: skip
    if not ranking:
        raise InputError("--backbone auto: no candidate has pretrained weights here; name one with --backbone")
    return sorted(ranking, key=lambda entry: (-entry["cv_accuracy"], entry["cv_log_loss"]))


def choose(session, data) -> tuple[str, str, dict]:
    """Rank the candidates: (the best one's backbone, its weights, what decided.json and the
    manifest record: the ranking and how long choosing took). The run's config is not changed."""
    config = session.config
    if config.feature_layer:
        raise InputError("--feature-layer names one backbone's layer; it cannot go with --backbone auto")
    accelerated = any(d.kind in ("GPU", "TPU") for d in device.visible_devices())
    started = time.perf_counter()
    ranking = rank(session, data, candidates(config.candidates, accelerated))
    log.info("--backbone auto: chose %s", ranking[0]["backbone"])
    record = {"ranking": ranking, "seconds": round(time.perf_counter() - started, 2)}
    return ranking[0]["backbone"], ranking[0]["weights"], record
