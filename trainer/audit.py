"""The label audit: which images to look at before trusting the labels.

From pretrained features (the bottleneck cache's), in seconds rather than a retraining:

- unlikely labels: out-of-fold class probabilities from k logistic-regression heads (each image
  is scored by a head that never saw it); how many labels are wrong is estimated as confident
  learning does (Northcutt et al. 2021): the confident joint counts, per given class, the images
  whose probability for another class reaches that class's average self-confidence, calibrated
  to the class sizes. Of each class, that many images with the lowest probability for their
  given label are flagged (pruning by noise rate), so the cut follows the data, not a threshold;
- near-duplicates: pairs of images under different labels or in different splits that are the
  same picture in other bytes (identical bytes were merged before): re-encoded, resized or
  slightly cropped. Pooled CNN features alone cannot tell them: measured on the concrete photos,
  such copies score 0.89-0.93 cosine while distinct photos of the same surface reach 0.925, and
  on the synthetic set a JPEG re-encode drops to 0.41. A 16 x 16 luminance thumbnail (mean
  removed, unit length; the "tiny image" descriptor) keeps the layout they share: a pair counts
  when its thumbnails correlate at 0.9 or more, or at 0.75 or more with features at 0.85 or more.
  On both sets that caught every re-encode, resize and 8-pixel crop, and no distinct pair;
- outliers: images far from all others (their mean cosine distance to the 5 nearest
  neighbours is more than 3.5 robust standard deviations above the median).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAME_LAYOUT, SIMILAR_LAYOUT, SIMILAR_FEATURES = 0.9, 0.75, 0.85  # see near-duplicates above
THUMBNAIL = 16
OUTLIER_Z = 3.5
NEIGHBOURS = 5


@dataclass
class Finding:
    index: int  # into the rows audited
    suggested: int  # the class the audit suggests (the given one, for duplicates and outliers)
    score: float  # label: 1 - P(given label); near-duplicate: thumbnail correlation; outlier: robust z
    reason: str


def out_of_fold(features: np.ndarray, labels: np.ndarray, classes: int, folds: int = 5, seed: int = 0) -> np.ndarray:
    """[n, classes]: each image's probabilities from a head trained on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probabilities = np.zeros((len(labels), classes))
    smallest = int(np.bincount(labels, minlength=classes)[np.bincount(labels, minlength=classes) > 0].min())
    splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    for train, held_out in splitter.split(features, labels):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.02, max_iter=2000))
        head.fit(features[train], labels[train])
        probabilities[np.ix_(held_out, head.classes_)] = head.predict_proba(features[held_out])
    return probabilities


def estimated_errors(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per given class, how many of its labels are likely wrong: the off-diagonal of the
    confident joint, calibrated so that each row sums to the class's size."""
    classes = probabilities.shape[1]
    thresholds = np.array(
        [probabilities[labels == c, c].mean() if (labels == c).any() else 1.0 for c in range(classes)]
    )
    joint = np.zeros((classes, classes))
    above = probabilities >= thresholds
    for index, given in enumerate(labels):
        candidates = np.flatnonzero(above[index])
        if len(candidates):
            joint[given, candidates[np.argmax(probabilities[index, candidates])]] += 1
    sizes = np.bincount(labels, minlength=classes)
    totals = joint.sum(axis=1, keepdims=True)
    calibrated = np.divide(joint * sizes[:, None], totals, out=np.zeros_like(joint), where=totals > 0)
    return np.rint(calibrated.sum(axis=1) - np.diag(calibrated)).astype(int)


def unlikely_labels(probabilities: np.ndarray, labels: np.ndarray) -> list[Finding]:
    findings = []
    for given, count in enumerate(estimated_errors(probabilities, labels)):
        members = np.flatnonzero(labels == given)
        suspects = members[np.argsort(probabilities[members, given], kind="stable")][:count]
        for index in suspects:
            others = probabilities[index].copy()
            others[given] = -1
            if others.max() > probabilities[index, given]:  # another class is likelier than the given one
                findings.append(
                    Finding(int(index), int(others.argmax()), float(1 - probabilities[index, given]), "label")
                )
    return findings


def _unit(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(axis=0)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def thumbnails(paths) -> np.ndarray:
    """[n, 256]: each image as a 16 x 16 luminance thumbnail, mean removed, unit length."""
    from PIL import Image, ImageOps

    out = np.zeros((len(paths), THUMBNAIL * THUMBNAIL))
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            image.draft("L", (4 * THUMBNAIL, 4 * THUMBNAIL))
            small = ImageOps.exif_transpose(image).convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
        vector = np.asarray(small, dtype=np.float64).ravel()
        out[index] = vector - vector.mean()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def near_duplicates(features: np.ndarray, small: np.ndarray, labels: np.ndarray, groups: list[str]) -> list[Finding]:
    """Pairs under different labels or in different splits (`groups`), both images flagged;
    `small`: thumbnails()."""
    unit = _unit(features)
    layout, content = small @ small.T, unit @ unit.T
    same = (layout >= SAME_LAYOUT) | ((layout >= SIMILAR_LAYOUT) & (content >= SIMILAR_FEATURES))
    np.fill_diagonal(same, False)
    findings = []
    for a, b in zip(*np.nonzero(np.triu(same)), strict=True):
        if labels[a] != labels[b] or groups[a] != groups[b]:
            for index, other in ((a, b), (b, a)):
                findings.append(
                    Finding(int(index), int(labels[index]), float(layout[a, b]), f"near-duplicate of #{other}")
                )
    return findings


def outliers(features: np.ndarray, labels: np.ndarray) -> list[Finding]:
    if len(features) <= NEIGHBOURS:
        return []
    unit = _unit(features)
    distance = 1 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    nearest = np.sort(distance, axis=1)[:, :NEIGHBOURS].mean(axis=1)
    median = np.median(nearest)
    spread = 1.4826 * np.median(np.abs(nearest - median)) or 1e-12
    z = (nearest - median) / spread
    return [Finding(int(i), int(labels[i]), float(z[i]), "outlier") for i in np.flatnonzero(z > OUTLIER_Z)]


def audit(features: np.ndarray, small: np.ndarray | None, labels, classes: int, groups: list[str], seed: int = 0):
    """Every finding, the unlikely labels first (least likely first), then near-duplicates (when
    thumbnails are given), then outliers."""
    labels = np.asarray(labels)
    probabilities = out_of_fold(features, labels, classes, seed=seed)
    found = sorted(unlikely_labels(probabilities, labels), key=lambda finding: -finding.score)
    duplicates = [] if small is None else near_duplicates(features, small, labels, groups)
    return found + duplicates + outliers(features, labels)


DEFAULT_BACKBONE, DEFAULT_SIZE = "efficientnet_lite0", 224  # the one with offline ImageNet weights


def pretrained_features(
    rows, workspace, backbone: str = DEFAULT_BACKBONE, image_size: int = DEFAULT_SIZE
) -> np.ndarray:
    """ImageNet features of `rows` from the bottleneck cache in `workspace`, made where missing."""
    from pathlib import Path

    import keras

    from trainer import device
    from trainer.features import cache_key, cached_features
    from trainer.model import feature_extractor, load_backbone

    model, weights = load_backbone(backbone, image_size, "imagenet")
    key = cache_key(backbone, image_size, weights, None, keras.mixed_precision.global_policy())
    batch = device.featurize_batch_size(32, device.visible_devices(), device.onednn()[0])
    return cached_features(
        feature_extractor(model, backbone), rows, image_size, batch, Path(workspace) / "features" / key
    )


def records(findings: list[Finding], rows, labels: list[str]) -> list[dict]:
    """audit.csv's rows: ImagePath, Label, SuggestedLabel, Score, Reason."""
    out = []
    for finding in findings:
        row, reason = rows[finding.index], finding.reason
        if reason.startswith("near-duplicate of #"):
            reason = f"near-duplicate of {rows[int(reason.rsplit('#', 1)[1])].path}"
        out.append({"ImagePath": str(row.path), "Label": row.label, "SuggestedLabel": labels[finding.suggested],
                    "Score": f"{finding.score:.4f}", "Reason": reason})  # fmt: skip
    return out


def audit_splits(parts: dict, labels: list[str], features: dict | None, workspace, seed: int = 0):
    """The audit of a run's images, all splits together (a near-duplicate across splits leaks):
    (rows, findings, summary for the manifest). `features`: the run's own pretrained features
    by split, or None to use the default pretrained backbone's."""
    names = [name for name in parts if parts[name]]
    rows = [row for name in names for row in parts[name]]
    groups = [name for name in names for _ in parts[name]]
    if features is None:
        vectors = pretrained_features(rows, workspace)
        source = f"{DEFAULT_BACKBONE} at {DEFAULT_SIZE} px, ImageNet weights"
    else:
        vectors, source = np.concatenate([features[name] for name in names]), "the run's own features"
    given = np.array([labels.index(row.label) for row in rows])
    findings = audit(vectors, thumbnails([row.path for row in rows]), given, len(labels), groups, seed)
    kinds = {kind: sum(f.reason.startswith(kind) for f in findings) for kind in ("label", "near-duplicate", "outlier")}
    return rows, findings, {"features": source, "images": len(rows), "flagged": kinds}
