"""What keeping near-duplicates in one split does to a score: ACCURACY.md's digits figures.

    python -m benchmarks.near_duplicates [--seeds 0 1 2 ...] [--folder DIR] [--json FILE]

The data: scikit-learn's handwritten digits 1, 2 and 3 (542 scans of 8 x 8 pixels, drawn at
64 px as PNG files, as a user's zip of digits would hold them), which has natural
near-duplicates: scans of one digit written alike. Each seed is `python -m trainer train
--folder DIGITS --seed N --export none` with the trainer's defaults (the audit included), and
the figures per seed are the test accuracy, the size of the test split, and how many of the
near-duplicate groups the audit lists span two splits (from audit.csv's Group column and
split.csv). Run it with the code before and after a change to the split (PYTHONPATH) to compare.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from trainer.runfolder import read_audit

ROOT = Path(__file__).resolve().parent.parent
DIGITS = (1, 2, 3)


def make_digits(folder: Path) -> Path:
    """folder/<digit>/<index>.png for every scan of DIGITS (nothing when already there)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if folder.is_dir() and any(folder.iterdir()):
        return folder
    scans = load_digits()
    for digit in DIGITS:
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(scans.target == digit):
            pixels = (255 - scans.images[index] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR).convert("RGB").save(
                folder / str(digit) / f"{index}.png"
            )
    return folder


def spanning_groups(run: Path) -> tuple[int, int, int]:
    """(near-duplicate groups the audit lists, how many of them span two splits, how many the
    test split and another)."""
    with (run / "split.csv").open(newline="", encoding="utf-8") as handle:
        where = {record["ImagePath"]: record["Split"] for record in csv.DictReader(handle)}
    groups: dict[str, set[str]] = {}
    full = run / "audit-full.csv"
    for record in read_audit(full if full.is_file() else run / "audit.csv"):
        if record["Reason"].startswith("near-duplicate"):
            groups.setdefault(record["Group"], set()).add(where[record["ImagePath"]])
    spanning = [splits for splits in groups.values() if len(splits) > 1]
    return len(groups), len(spanning), sum("test" in splits for splits in spanning)


def run(folder: Path, seed: int, scratch: Path, workspace: Path) -> dict:
    output = scratch / f"seed-{seed}"
    command = [sys.executable, "-m", "trainer", "train", "--folder", str(folder), "--seed", str(seed),
               "--export", "none", "--workspace", str(workspace), "--output", str(output),
               "--record", "none"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"seed {seed}: {result.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    listed, spanning, with_test = spanning_groups(output)
    kept = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "near-duplicate group" in line]
    return {"seed": seed, "accuracy": metrics["accuracy"], "test_images": metrics["count"],
            "audit_groups": listed, "spanning_splits": spanning, "spanning_test": with_test,
            "kept_together": kept[:1]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.near_duplicates",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--folder", help="where the digits are made (default: a temporary folder)")
    parser.add_argument("--workspace", help="the feature cache (default: a temporary folder)")
    parser.add_argument("--json", help="write every seed's figures here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="near-duplicates-") as temporary:
        scratch = Path(temporary)
        folder = make_digits(Path(args.folder) if args.folder else scratch / "digits")
        results = []
        for seed in args.seeds:
            results.append(run(folder, seed, scratch, Path(args.workspace) if args.workspace else scratch / "ws"))
            print(json.dumps(results[-1]), flush=True)
    accuracies = [result["accuracy"] for result in results]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    print(f"test accuracy {statistics.mean(accuracies):.3f} ± {spread:.3f} over {len(results)} seeds; "
          f"perfect on {sum(a == 1.0 for a in accuracies)}; audit groups spanning two splits: "
          f"{sum(r['spanning_splits'] for r in results)} of {sum(r['audit_groups'] for r in results)}, the test "
          f"split and another: {sum(r['spanning_test'] for r in results)}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
