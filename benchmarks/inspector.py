"""A simulated inspector: the review loop (audit -> corrections -> retrain) measured on real
images with labels flipped at random, where the truth is known.

The images are scikit-learn's handwritten digits (10 classes, 8 x 8 scans drawn at 64 px, built
offline as the audit's tests build them); a share of them get another class's label at random.
One run trains on that, its audit lists the labels to check, and two inspectors act on the list:

    knowing      reviews every listed image and relabels the ones whose label is wrong to the
                 truth, keeping the rest (a person who can tell the classes apart)
    blind        accepts every relabel suggestion, right or wrong, and looks at nothing else
    confident    accepts the suggestions scored 0.8 or more, unseen (the form's bulk acceptance
                 with every direction ticked at its starting score, and nothing else)

Each retrains with its corrections.csv (`--corrections`). Reported: the held-out test images'
accuracy against the true labels before and after, how many images each reviewed and changed,
and the retrain's seconds beside the first run's (the features come from the cache).

    python -m benchmarks.inspector [--flip 0.1] [--per-class 60] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trainer import cells, runfolder
from trainer.diagnostics.review import CONFIDENT  # the form's default threshold

ROOT = Path(__file__).resolve().parent.parent


def digits(folder: Path, per_class: int, flip: float, seed: int) -> dict[str, str]:
    """The images under folder/Images/<true class>/, a CSV whose labels are flipped for a
    `flip` share of them, and the truth by path."""
    from PIL import Image
    from sklearn.datasets import load_digits

    scans = load_digits()
    rng = np.random.default_rng(seed)
    truth, rows = {}, []
    for digit in range(10):
        (folder / "Images" / str(digit)).mkdir(parents=True)
        for index in rng.permutation(np.flatnonzero(scans.target == digit))[:per_class]:
            pixels = (255 - scans.images[index] * 255 / 16).astype(np.uint8)
            path = folder / "Images" / str(digit) / f"{index}.png"
            Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR).convert("RGB").save(path)
            truth[str(path)] = str(digit)
            rows.append([f"{digit}/{index}.png", str(digit)])
    for row in rows:
        if rng.random() < flip:
            row[1] = str(rng.choice([d for d in range(10) if str(d) != row[1]]))
    with (folder / "Images" / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["ImagePath", "Label"], *rows])
    return truth


def train(folder: Path, output: Path, workspace: Path, corrections: Path | None = None) -> float:
    command = [sys.executable, "-m", "trainer", "train", "--folder", str(folder / "Images"), "--file", "labels.csv",
               "--export", "none", "--workspace", str(workspace), "--output", str(output)]  # fmt: skip
    if corrections:
        command += ["--corrections", str(corrections)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])
    return time.perf_counter() - started


def clean_accuracy(run: Path, truth: dict[str, str]) -> float:
    """The test split's predictions against the true labels (not the flipped ones)."""
    with (run / "predictions.csv").open(newline="") as handle:
        test = [row for row in cells.read_dicts(handle) if row["Split"] == "test"]
    return float(np.mean([truth[row["ImagePath"]] == row["PredictedLabel"] for row in test]))


def inspect(run: Path, truth: dict[str, str], who: str) -> tuple[Path, dict]:
    """corrections.csv from the run's audit, as one inspector decides; and what they did."""
    listed = [row for row in runfolder.read_audit(run / "audit.csv") if row["Reason"].startswith("label")]
    decided = []
    for row in listed:
        if who == "knowing" and row["Label"] != truth[row["ImagePath"]]:
            decided.append([row["ImagePath"], truth[row["ImagePath"]]])
        elif who == "blind" or (who == "confident" and float(row["Score"]) >= CONFIDENT):
            decided.append([row["ImagePath"], row["SuggestedLabel"]])
    path = run.parent / f"corrections-{who}.csv"
    with path.open("w", newline="") as handle:
        handle.writelines(cells.line(row) for row in [["ImagePath", "Label"], *decided])
    fixed = sum(label == truth[image] for image, label in decided)
    wrong_before = sum(row["Label"] != truth[row["ImagePath"]] for row in listed)
    return path, {"reviewed": len(listed) if who != "confident" else 0, "changed": len(decided), "right_after": fixed,
                  "listed_wrong": wrong_before}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flip", type=float, default=0.1, help="share of labels flipped (default 0.1)")
    parser.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        truth = digits(folder, args.per_class, args.flip, args.seed)
        flipped = sum(1 for row in csv.DictReader((folder / "Images" / "labels.csv").open())
                      if truth[str(folder / "Images" / row["ImagePath"])] != row["Label"])  # fmt: skip
        workspace = folder / "workspace"
        first = train(folder, folder / "first", workspace)
        figures = {"images": len(truth), "flipped": flipped, "first": {
            "seconds": round(first, 1), "clean_test_accuracy": clean_accuracy(folder / "first", truth)}}  # fmt: skip
        for name in ("knowing", "blind", "confident"):
            corrections, did = inspect(folder / "first", truth, name)
            seconds = train(folder, folder / name, workspace, corrections)
            manifest = json.loads((folder / name / "manifest.json").read_text())
            featurized = sum(
                view["featurized"] for view in (manifest.get("feature_cache") or {}).get("views", {}).values()
            )
            figures[name] = {**did, "seconds": round(seconds, 1), "featurized_again": featurized,
                             "clean_test_accuracy": clean_accuracy(folder / name, truth)}  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
