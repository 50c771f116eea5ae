"""The label audit: which images to look at before trusting the labels.

From pretrained features (the bottleneck cache's), in seconds rather than a retraining:

- unlikely labels: out-of-fold class probabilities from k logistic-regression heads (each image
  is scored by a head that never saw it), averaged over three fold splits (up to 5,000 images)
  and blended with the votes of each image's nearest images (see REPEATS); how many labels are
  wrong is estimated as confident learning does (Northcutt et al. 2021): the confident joint counts, per given class, the images
  whose probability for another class reaches that class's average self-confidence, calibrated
  to the class sizes. Of each class, that many images with the lowest probability for their
  given label are flagged (pruning by noise rate), so the cut follows the data, not a threshold;
- near-duplicates: groups of images, under different labels or in different splits, that are
  the same picture in other bytes (identical bytes were merged before): re-encoded, resized or
  slightly cropped. The pairs are found by trainer.data.groups's rule, from the 16 x 16
  thumbnails validation kept, the same rule by which the split keeps such a group in one split:
  so a group listed here spans labels, not splits. (Images a review drops after the split move
  the others' neighbours, which can join a pair the split did not; none was seen.) Pairs that
  match are joined into groups;
- outliers: images far from all others (their mean cosine distance to the 5 nearest
  neighbours is more than 3.5 robust standard deviations above the median), and images of one
  flat tone (their 16 x 16 thumbnail's grey levels spread less than FLAT): a file whose bytes
  decode without error to no picture, as a JPEG whose quantization table was zeroed decodes to
  flat grey. Validation cannot see those (the file is a valid image), and at 60 images the
  feature distance cannot single one out, so this test does not depend on the set's size.

audit.csv lists at most SHOWN findings of each kind, the likeliest first; when a kind has more,
audit-full.csv beside it has them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import decision, runfolder
from trainer.config import TrainConfig
from trainer.data.groups import THUMBNAIL, near_duplicate_pairs, unit_thumbnails
from trainer.features.extract import extract, load_extractor
from trainer.head import FOLDS, converged_out_of_fold, fold_splitter, standardized
from trainer.neighbours import groups as components
from trainer.neighbours import nearest, unit_rows
from trainer.progress import progress_bar

VOTERS = 10  # nearest images whose labels vote on each image's
OUTLIER_Z = 3.5
NEIGHBOURS = 5
FLAT = 0.5  # grey levels: a thumbnail whose standard deviation is below this holds no picture
# Unlikely labels: the held-out heads' probabilities, averaged over REPEATS fold splits, blended
# half and half with the votes of each image's 10 nearest images. On 600 real photos of 10
# classes (scikit-learn's handwritten digits, 64 px, EfficientNet-Lite0 features) with 10% of
# the labels flipped, seeds 0-2: one split of heads alone listed 79-83 for 60 flipped (recall
# 0.83-0.92, precision 0.62-0.66); three splits with the votes listed 65-70 (recall 0.82-0.88,
# precision 0.74-0.82). The best any cut could do with the heads' ranking alone was 0.78-0.85.
# Past REPEAT_UP_TO images one split is kept: the heads are steadier there, and each repeat costs
# as much as the first (at 5,658 photos of 6 classes, three splits took about 100 s of the audit).
REPEATS, REPEAT_UP_TO, VOTE_WEIGHT = 3, 5_000, 0.5
SHOWN = 500  # findings of each kind in audit.csv (all of them in audit-full.csv)
KINDS = ("label", "near-duplicate", "outlier")


@dataclass
class Finding:
    index: int  # into the rows audited
    suggested: int  # the class the audit suggests (the given one, for duplicates and outliers)
    score: float  # label: 1 - P(given label); near-duplicate: thumbnail correlation; outlier: robust z
    reason: str
    group: int = 0  # near-duplicates: the group's number (1, 2, ...), 0 otherwise
    size: int = 0  # near-duplicates: how many images the group holds


def repeated_out_of_fold(features: np.ndarray, labels: np.ndarray, classes: int, config=None,
                         seed: int = 0) -> np.ndarray:  # fmt: skip
    """trainer.head's converged out-of-fold heads (the run's --head-c and class weights; the
    defaults without a config) averaged over REPEATS different fold splits (one split past
    REPEAT_UP_TO images)."""
    config = config or TrainConfig()
    repeats = REPEATS if len(labels) <= REPEAT_UP_TO else 1
    scaled = standardized(features)
    folds = fold_splitter(labels, classes, FOLDS, seed).get_n_splits()
    with progress_bar(total=repeats * folds, desc="audit: held-out heads") as bar:
        return np.mean(
            [converged_out_of_fold(features, labels, classes, config, seed=seed + 1000 * r, scaled=scaled,
                                   on_fold=lambda: bar.update(1))
             for r in range(repeats)],
            axis=0,
        )  # fmt: skip


def neighbour_votes(neighbours: np.ndarray, similarity: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """[n, classes]: how the labels of each image's nearest images vote, weighted by similarity
    squared and smoothed (0.1 of a vote per class), so that an image among others of one label
    leans to it whatever the heads say."""
    weights = np.where(neighbours >= 0, np.maximum(similarity, 0).astype(np.float64) ** 2, 0.0)
    votes = np.zeros((len(labels), classes))
    rows = np.arange(len(labels))
    for column in range(neighbours.shape[1]):
        np.add.at(votes, (rows, labels[np.maximum(neighbours[:, column], 0)]), weights[:, column])
    return (votes + 0.1) / (votes.sum(axis=1, keepdims=True) + 0.1 * classes)


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
    """Rows centred on the mean and scaled to unit length (float32, blockwise)."""
    return unit_rows(features)


def luminance(path) -> np.ndarray:
    """[256]: the image as a 16 x 16 luminance thumbnail, grey levels as float32."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.draft("L", (4 * THUMBNAIL, 4 * THUMBNAIL))
        small = ImageOps.exif_transpose(image).convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel()


def thumbnails(paths) -> np.ndarray:
    """[n, 256]: each image as a 16 x 16 luminance thumbnail, mean removed, unit length (float32)."""
    out = np.zeros((len(paths), THUMBNAIL * THUMBNAIL), dtype=np.float32)
    for index, path in enumerate(paths):
        vector = luminance(path)
        out[index] = vector - vector.mean()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def tonal_spread(rows, known: dict[str, bytes] | None) -> np.ndarray:
    """[n]: each image's 16 x 16 luminance thumbnail's standard deviation in grey levels, from
    validation's thumbnails where it has them (the rest are read again)."""
    known = known or {}
    size = THUMBNAIL * THUMBNAIL
    out = np.zeros(len(rows), dtype=np.float32)
    for index, row in enumerate(rows):
        raw = known.get(row.sha256, b"")
        if len(raw) == size:
            out[index] = np.frombuffer(raw, dtype=np.uint8).astype(np.float32).std()
            continue
        try:
            out[index] = luminance(row.path).std()
        except (OSError, ValueError):
            out[index] = np.inf  # unreadable is validation's finding, not this one's
    return out


def flat_pictures(spread: np.ndarray, labels: np.ndarray) -> list[Finding]:
    """Images of one flat tone: no picture to learn from, whatever the label says."""
    return [Finding(int(i), int(labels[i]), float(FLAT - spread[i]), "outlier: one flat tone, no picture")
            for i in np.flatnonzero(spread < FLAT)]  # fmt: skip


def thumbnails_of(rows, known: dict[str, bytes] | None) -> np.ndarray:
    """thumbnails() for rows, from the 8-bit thumbnails validation made as it decoded each file
    (trainer.data.report.Report.thumbnails, by sha256) where it has them; only the rest are read again."""
    known = known or {}
    out = unit_thumbnails([known.get(row.sha256, b"") for row in rows])
    missing = [index for index, row in enumerate(rows) if len(known.get(row.sha256, b"")) != THUMBNAIL * THUMBNAIL]
    if missing:
        out[missing] = thumbnails([rows[index].path for index in missing])
    return out


def near_duplicates(small: np.ndarray, labels: np.ndarray, groups: list[str], hashes=None,
                    seed: int = 0) -> list[Finding]:  # fmt: skip
    """Groups of the same picture (trainer.data.groups's pairs, joined) whose members carry
    different labels or sit in different splits (`groups`): every member flagged, scored by its
    best match, and named as a near-duplicate of the group's first other member; `small`:
    thumbnails(); `hashes`: each image's content hash, as the split gave them."""
    labels = np.asarray(labels)
    linked, layout = near_duplicate_pairs(np.ascontiguousarray(small, dtype=np.float32), hashes, seed)
    if not len(linked):
        return []
    group = components(len(labels), linked)
    best = np.zeros(len(labels), dtype=np.float32)
    np.maximum.at(best, linked[:, 0], layout)
    np.maximum.at(best, linked[:, 1], layout)
    members: dict[int, list[int]] = {}
    for index in np.unique(linked):
        members.setdefault(int(group[index]), []).append(int(index))
    findings, number = [], 0
    for _, indices in sorted(members.items()):
        if len({int(labels[i]) for i in indices}) == 1 and len({groups[i] for i in indices}) == 1:
            continue
        number += 1
        for index in indices:
            other = next(i for i in indices if i != index)
            findings.append(Finding(index, int(labels[index]), float(best[index]), f"near-duplicate of #{other}",
                                    group=number, size=len(indices)))  # fmt: skip
    return findings


def outliers(features: np.ndarray, labels: np.ndarray, seed: int = 0, similarity=None) -> list[Finding]:
    """`similarity`: each image's similarities to its nearest others, most similar first, when
    the caller has them."""
    if len(features) <= NEIGHBOURS:
        return []
    if similarity is None:
        _, similarity = nearest(_unit(features), NEIGHBOURS, seed)
    nearest_distance = (1 - similarity[:, :NEIGHBOURS].astype(np.float64)).mean(axis=1)
    median = np.median(nearest_distance)
    spread = 1.4826 * np.median(np.abs(nearest_distance - median)) or 1e-12
    z = (nearest_distance - median) / spread
    return [Finding(int(i), int(labels[i]), float(z[i]), "outlier") for i in np.flatnonzero(z > OUTLIER_Z)]


def audit(features: np.ndarray, small: np.ndarray | None, labels, classes: int, groups: list[str], seed: int = 0,
          config=None, spread: np.ndarray | None = None, hashes=None, kept: dict | None = None):  # fmt: skip
    """Every finding, the unlikely labels first (least likely first), then near-duplicates (when
    thumbnails are given; `hashes`: the images' content hashes), then outliers (flat pictures
    first, when `spread`, tonal_spread(), is given). The features' neighbour table is found once
    for the votes and the outliers.
    `config`: the run's options, whose head options the held-out heads follow (defaults: None).
    `kept`: a dict that gets the held-out heads' probabilities as "heads" (recall_targets reads them)."""
    labels = np.asarray(labels)
    unit = _unit(features)
    indices, similarity = nearest(unit, max(VOTERS, NEIGHBOURS), seed)
    heads = repeated_out_of_fold(features, labels, classes, config, seed)
    if kept is not None:
        kept["heads"] = heads
    probabilities = (1 - VOTE_WEIGHT) * heads + VOTE_WEIGHT * neighbour_votes(indices, similarity, labels, classes)
    found = sorted(unlikely_labels(probabilities, labels), key=lambda finding: -finding.score)
    duplicates = [] if small is None else near_duplicates(small, labels, groups, hashes, seed)
    flat = [] if spread is None else flat_pictures(spread, labels)
    distant = [f for f in outliers(features, labels, seed, similarity) if f.index not in {g.index for g in flat}]
    return found + duplicates + flat + distant


DEFAULT_BACKBONE, DEFAULT_SIZE = "efficientnet_lite0", 224  # the one with offline ImageNet weights


def pretrained_features(
    rows, workspace, backbone: str = DEFAULT_BACKBONE, image_size: int = DEFAULT_SIZE
) -> np.ndarray:
    """ImageNet features of `rows` from the bottleneck cache in `workspace`, made where missing."""
    extractor = load_extractor(backbone, image_size, "imagenet")
    features, _ = extract(extractor, [(rows, ("id",))], workspace)
    return features


def average_pooled_features(rows, workspace, decided: dict, config: TrainConfig) -> np.ndarray | None:
    """The run's backbone's features of `rows`, average-pooled whatever the run's --pooling (the
    audit's rules were measured on average pooling), through the cache in `workspace` (a run
    with --pooling avg stored them; a search over poolings did too). `decided`: the run's
    decided.json (the backbone and weights it used). None for a run without pretrained weights."""
    if decided.get("weights", "none") == "none":
        return None
    extractor = load_extractor(decided["backbone"], config.image_size, decided["weights"], config.feature_layer,
                               pooling="avg")  # fmt: skip
    features, _ = extract(extractor, [(rows, ("id",))], workspace)
    return features


def records(findings: list[Finding], rows, labels: list[str]) -> list[dict]:
    """audit.csv's rows: ImagePath, Label, SuggestedLabel, Score, Reason, Group."""
    out = []
    for finding in findings:
        row, reason = rows[finding.index], finding.reason
        if reason.startswith("near-duplicate of #"):
            reason = f"near-duplicate of {rows[int(reason.rsplit('#', 1)[1])].path}"
            if finding.size > 2:
                reason += f" (one of {finding.size})"
        out.append({"ImagePath": str(row.path), "Label": row.label, "SuggestedLabel": labels[finding.suggested],
                    "Score": f"{finding.score:.4f}", "Reason": reason,
                    "Group": finding.group or ""})  # fmt: skip
    return out


def kind_of(finding: Finding) -> str:
    return next(kind for kind in KINDS if finding.reason.startswith(kind))


def shown(findings: list[Finding], limit: int = SHOWN) -> list[Finding]:
    """At most `limit` findings of each kind, in their order (the likeliest first; a
    near-duplicate group is kept whole or left out whole, by its best score)."""
    out, taken = [], dict.fromkeys(KINDS, 0)
    duplicates = sorted((f for f in findings if kind_of(f) == "near-duplicate"), key=lambda f: (-f.score, f.group))
    best_groups, count = [], 0
    for group in dict.fromkeys(f.group for f in duplicates):
        size = sum(f.group == group for f in duplicates)
        if count + size > limit and best_groups:
            break
        best_groups.append(group)
        count += size
    for finding in findings:
        kind = kind_of(finding)
        if kind == "near-duplicate":
            if finding.group in best_groups:
                out.append(finding)
        elif taken[kind] < limit:
            out.append(finding)
            taken[kind] += 1
    return out


def write_lists(path, rows, findings: list[Finding], labels: list[str]):
    """audit.csv at `path` (at most SHOWN of each kind) and, when that left some out, the whole
    list beside it as <name>-full.csv (runfolder.AUDIT_FULL in a run folder); returns the
    files written."""
    path = Path(path)
    listed = shown(findings)
    runfolder.write_audit(path, records(listed, rows, labels))
    if len(listed) == len(findings):
        return [path]
    full = path.with_name(f"{path.stem}-full{path.suffix}")
    runfolder.write_audit(full, records(findings, rows, labels))
    return [path, full]


def audit_data(data, features: np.ndarray | None, workspace, output, config=None) -> dict:
    """The audit of a dataset (trainer.data.load.Data), all its parts together (a near-duplicate
    across splits leaks): audit.csv (and audit-full.csv) written to `output`; returns the summary
    for the manifest. `features`: the run's own pretrained features, one row per image in the
    parts' order, or None for the default pretrained backbone's (through the cache in
    `workspace`). `config`: the options whose head options and seed it follows. The diagnostic
    after training and `python -m trainer audit` both call this."""
    config = config or TrainConfig()
    names = [name for name in data.parts if data.parts[name]]
    rows = [row for name in names for row in data.parts[name]]
    groups = [name for name in names for _ in data.parts[name]]
    if features is None:
        vectors = pretrained_features(rows, workspace)
        source = f"{DEFAULT_BACKBONE} at {DEFAULT_SIZE} px, ImageNet weights"
    elif config.pooling == "avg":
        vectors, source = features, "the run's own features"
    else:
        vectors, source = features, "the run's backbone, average-pooled (the model's own pooling is not the audit's)"
    index = {label: number for number, label in enumerate(data.labels)}
    given = np.array([index[row.label] for row in rows])
    kept: dict = {}
    findings = audit(vectors, thumbnails_of(rows, data.report.thumbnails), given, len(data.labels), groups,
                     config.seed, config, tonal_spread(rows, data.report.thumbnails),
                     [row.sha256 for row in rows], kept)  # fmt: skip
    write_lists(output, rows, findings, data.labels)
    kinds = {kind: sum(kind_of(f) == kind for f in findings) for kind in KINDS}
    duplicate_groups = len({f.group for f in findings if kind_of(f) == "near-duplicate"})
    fitted = np.array([group != "test" for group in groups])  # the estimate never looks at the test split
    return {"features": source, "images": len(rows), "flagged": kinds, "near_duplicate_groups": duplicate_groups,
            "listed": {kind: sum(kind_of(f) == kind for f in shown(findings)) for kind in KINDS},
            "recall_targets": recall_targets(kept["heads"][fitted], given[fitted], data.labels)}  # fmt: skip


RECALL_TARGETS, TARGETED_UP_TO = (0.9, 0.95, 0.99), 3  # the recalls estimated, for up to this many classes


def recall_targets(probabilities: np.ndarray, given: np.ndarray, labels: list[str]) -> list[dict]:
    """Where --target-recall would put each class's threshold and what it would cost, estimated
    from held-out heads' probabilities of the training and validation images (the report's top):
    for each target, the threshold on P(class), the recall and precision there, and how many
    images it calls the class. None past TARGETED_UP_TO classes (a table per class would bury the
    page; the report names the option instead)."""
    if len(labels) > TARGETED_UP_TO or not len(given):
        return []
    out = []
    for index, label in enumerate(labels):
        positive, scores = given == index, probabilities[:, index]
        if not positive.any():
            continue
        for target in RECALL_TARGETS:
            threshold = decision.threshold_for(scores, positive, target)
            at = decision.at_threshold(scores, positive, threshold)
            out.append({"label": label, "target": target, "threshold": round(threshold, 4), "recall": at["recall"],
                        "precision": at["precision"], "called": int((scores >= threshold).sum()),
                        "images": int(len(given))})  # fmt: skip
    return out
