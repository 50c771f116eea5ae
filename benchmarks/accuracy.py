"""Accuracy on the shipped concrete photos, seed by seed: the table in ACCURACY.md.

    python -m benchmarks.accuracy [--seeds 0 1 2 3 4] [--variants head,fine_tune_8] [--output table.md]

Each variant is `python -m trainer train` on datasets/concrete with the same flags and a seed
(the seed sets the split too, so every seed is tested on its own 40 images); one workspace is
shared, so the features are computed once. Reported per variant: test accuracy, balanced
accuracy (the mean of the per-class recalls) and log-loss, mean and standard deviation over the
seeds, the median time of a run, and the first run's time (the first run of a backbone and
size featurizes the photos; later ones find the features in the workspace).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCRETE = ROOT / "datasets" / "concrete" / "Images"
# name -> (what it is, trainer flags). The first is the trainer's defaults; the others take one
# lever away or add one.
VARIANTS = {
    "head": ("bottleneck head: dihedral feature views, L2 (C 0.02), the defaults", []),
    "head_refit": (
        "the defaults, then the head trained again on training and validation images (--head-refit)",
        ["--head-refit"],
    ),
    "head_plain": (
        "bottleneck head without the dihedral views (--feature-augment none)",
        ["--feature-augment", "none"],
    ),
    "head_before": (
        "bottleneck head as before this change: no views, no L2 (--feature-augment none --head-c 0)",
        ["--feature-augment", "none", "--head-c", "0"],
    ),
    "lite1": (
        "the defaults with EfficientNet-Lite1 (--backbone efficientnet_lite1), 224 px",
        ["--backbone", "efficientnet_lite1"],
    ),
    "lite1_240": (
        "the defaults with EfficientNet-Lite1 at its native 240 px",
        ["--backbone", "efficientnet_lite1", "--image-size", "240"],
    ),
    "lite2": (
        "the defaults with EfficientNet-Lite2 (--backbone efficientnet_lite2), 224 px",
        ["--backbone", "efficientnet_lite2"],
    ),
    "lite2_260": (
        "the defaults with EfficientNet-Lite2 at its native 260 px",
        ["--backbone", "efficientnet_lite2", "--image-size", "260"],
    ),
    "fine_tune_8": (
        "head, then the top 8 backbone layers fine-tuned (learning rate 1e-4, 10 epochs, augmentation)",
        ["--fine-tune-layers", "8", "--fine-tune-learning-rate", "1e-4", "--fine-tune-epochs", "10"],
    ),
    "fine_tune_30": (
        "head, then the top 30 backbone layers fine-tuned (learning rate 1e-5, 10 epochs, augmentation)",
        ["--fine-tune-layers", "30", "--fine-tune-learning-rate", "1e-5", "--fine-tune-epochs", "10"],
    ),
}


def run(variant: str, seed: int, workspace: Path, scratch: Path, extra: list[str]) -> dict:
    output = scratch / f"{variant}-{seed}"
    command = [sys.executable, "-m", "trainer", "train", "--folder", str(CONCRETE), "--file", "training_data.csv"]
    command += ["--seed", str(seed), "--export", "none", "--workspace", str(workspace), "--output", str(output)]
    started = time.perf_counter()
    result = subprocess.run(
        command + VARIANTS[variant][1] + extra,
        cwd=scratch,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed}: {result.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    fine_tune = json.loads((output / "manifest.json").read_text()).get("fine_tune")
    return {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["macro_avg"]["recall"],
        "log_loss": metrics["log_loss"],
        "seconds": time.perf_counter() - started,
        **({"fine_tune_kept": fine_tune["kept"]} if fine_tune else {}),
    }


def summary(results: list[dict], key: str) -> str:
    values = [result[key] for result in results]
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--output", help="also write the table (Markdown) here")
    parser.add_argument("--json", help="also write every seed's figures here")
    parser.add_argument("extra", nargs="*", help="more trainer flags for every variant, after --")
    args = parser.parse_args(argv)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    lines = [
        "| variant | test accuracy | balanced accuracy | log-loss | seconds per run | first run (featurizes) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    every = {}
    with tempfile.TemporaryDirectory(prefix="accuracy-") as folder:
        scratch = Path(folder)
        for variant in variants:
            results = []
            for seed in args.seeds:
                results.append(run(variant, seed, scratch / "workspace", scratch, args.extra))
                print(f"{variant} seed {seed}: {results[-1]}", file=sys.stderr, flush=True)
            every[variant] = results
            seconds = statistics.median(result["seconds"] for result in results)
            kept = [result["fine_tune_kept"] for result in results if "fine_tune_kept" in result]
            note = f" (fine-tuning kept for {sum(kept)} of {len(kept)} seeds)" if kept else ""
            lines.append(
                f"| {VARIANTS[variant][0]}{note} | {summary(results, 'accuracy')} | "
                f"{summary(results, 'balanced_accuracy')} | {summary(results, 'log_loss')} | {seconds:.0f} | "
                f"{results[0]['seconds']:.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "results": every}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
