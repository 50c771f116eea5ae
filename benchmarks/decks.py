"""Cracked-deck recall on the shipped concrete photos with one deck photo held out at a time:
ACCURACY.md's figure for what a split by deck cannot give.

    python -m benchmarks.decks [--workspace DIR] [--seeds 20] [--json decks.json]

The photos are 256 px crops of larger deck photos (`7004-112.jpg` is crop 112 of photo 7004),
and photo 7001 holds all 200 uncracked crops and 33 cracked ones, so a split that keeps each
deck photo whole cannot be stratified (the trainer refuses `--group-pattern '(\\d+)-'` there).
Instead, each deck photo with more than two cracked crops is held out in turn: a head trained
on every other photo's crops classifies the held-out deck's cracked crops, and its CD recall is
the share of them called CD (for 7001, only its cracked crops are held out: without its
uncracked crops no uncracked image would be left to train on). The same head on the trainer's own random
splits (seeds 0 to --seeds - 1, 10% test) gives the figure to compare it with.

The features are the trainer's: EfficientNet-Lite0's ImageNet features at 224 px from the
workspace's cache (featurized on the first run), each training image in the eight dihedral
views. The head is a probe: a logistic regression at C 0.02 (the trainer's --head-c default) on
the head's standardization (trainer.head.standardized), solved to convergence as the audit's
heads are, rather than the deployed Keras head; it stands for it, it is not it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from trainer.data.rows import load_rows
from trainer.data.split import split
from trainer.data.validate import validate
from trainer.features.extract import extract, load_extractor
from trainer.features.views import VIEWS
from trainer.head import standardized

ROOT = Path(__file__).resolve().parent.parent
CONCRETE = ROOT / "datasets" / "concrete" / "Images"


def deck_of(row) -> str:
    return row.path.name.split("-")[0]


def features_in_views(rows, workspace: Path) -> np.ndarray:
    """[views, n, d]: each row's features in each dihedral view (the trainer's cache)."""
    views = VIEWS["dihedral"]
    extractor = load_extractor("efficientnet_lite0", 224, "imagenet")
    features, _ = extract(extractor, [(rows, views)], workspace)
    return features.reshape(len(views), len(rows), -1)


def cd_recall(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, c: float) -> tuple:
    """(CD crops called CD, CD crops) among `test`, by a head trained on `train` in every view."""
    from sklearn.linear_model import LogisticRegression

    views, _, width = features.shape
    fit = features[:, train].reshape(views * len(train), width)
    scaled = standardized(np.concatenate([fit, features[0, test]]))
    head = LogisticRegression(C=c, max_iter=3000).fit(scaled[: len(fit)], np.tile(labels[train], views))
    called = head.predict(scaled[len(fit) :])
    cracked = labels[test] == 0
    return int((called[cracked] == 0).sum()), int(cracked.sum())


def held_out_decks(rows, features, labels, c: float) -> dict:
    """Each deck photo with more than two cracked crops held out in turn: its cracked crops are
    classified by a head trained without any crop of that photo, or, where that would leave a
    class untrained (7001 holds every uncracked crop), without its cracked crops only."""
    decks = np.array([deck_of(row) for row in rows])
    cracked = Counter(deck for deck, label in zip(decks, labels, strict=True) if label == 0)
    out = {}
    for deck in sorted(d for d, count in cracked.items() if count > 2):
        whole = decks == deck
        apart = whole if (labels[~whole] == 1).any() else whole & (labels == 0)
        hits, total = cd_recall(features, labels, np.flatnonzero(~apart), np.flatnonzero(whole & (labels == 0)), c)
        out[deck] = {"cd_crops": total, "called_cd": hits, "recall": round(hits / total, 3),
                     "trained_without_the_whole_photo": bool((apart == whole).all())}  # fmt: skip
    hits = sum(deck["called_cd"] for deck in out.values())
    total = sum(deck["cd_crops"] for deck in out.values())
    return {"decks": out, "weighted_recall": round(hits / total, 3), "cd_crops": total,
            "crops_per_deck": dict(sorted(Counter(decks.tolist()).items()))}  # fmt: skip


def random_splits(rows, features, labels, c: float, seeds: int) -> dict:
    """The same head on the trainer's random splits: CD recall on each seed's test split."""
    index = {row.sha256: i for i, row in enumerate(rows)}
    recalls, hits_all, total_all = [], 0, 0
    for seed in range(seeds):
        parts = split(rows, 0.1, 0.1, seed)
        train = np.array([index[row.sha256] for name in ("train", "validation") for row in parts[name]])
        test = np.array([index[row.sha256] for row in parts["test"]])
        hits, total = cd_recall(features, labels, train, test, c)
        recalls.append(hits / total)
        hits_all, total_all = hits_all + hits, total_all + total
    return {"seeds": seeds, "mean_recall": round(statistics.mean(recalls), 3),
            "stdev": round(statistics.stdev(recalls), 3) if seeds > 1 else 0.0,
            "pooled_recall": round(hits_all / total_all, 3), "called_cd": hits_all, "cd_photos": total_all}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decks", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace", help="the feature cache (default: ./workspace)")
    parser.add_argument("--seeds", type=int, default=20, help="random splits to compare with (default 20)")
    parser.add_argument("--c", type=float, default=0.02, help="the probe's C (default 0.02: the trainer's --head-c)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    rows, report = load_rows(CONCRETE, "training_data.csv")
    rows = validate(rows, report)
    labels = np.array([("CD", "UD").index(row.label) for row in rows])
    features = features_in_views(rows, Path(args.workspace))
    c = args.c
    result = {"held_out_decks": held_out_decks(rows, features, labels, c),
              "random_splits": random_splits(rows, features, labels, c, args.seeds), "head_c": c}  # fmt: skip
    decks = result["held_out_decks"]
    for deck, figures in decks["decks"].items():
        apart = "" if figures["trained_without_the_whole_photo"] else " (its uncracked crops trained)"
        print(f"deck {deck}: {figures['called_cd']} of {figures['cd_crops']} cracked crops called CD "
              f"(recall {figures['recall']:.3f}){apart}")  # fmt: skip
    print(f"weighted over those decks: {decks['weighted_recall']:.3f} of {decks['cd_crops']} crops; crops per "
          f"photo: {decks['crops_per_deck']}")  # fmt: skip
    spread = result["random_splits"]
    print(f"random splits, seeds 0-{args.seeds - 1}: CD recall {spread['mean_recall']:.3f} ± {spread['stdev']:.3f} "
          f"(pooled: {spread['called_cd']} of {spread['cd_photos']}, {spread['pooled_recall']:.3f})")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
