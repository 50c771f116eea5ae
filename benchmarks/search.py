"""Does the search beat the options as given? ACCURACY.md's nested table.

    python -m benchmarks.search [--data concrete|digits] [--seeds 20] [--trials 24] [--output FILE]

For each seed (which sets the split, so every seed is tested on its own photos) a search
(trainer/tune.py) sees that seed's training and validation images alone: a fixed number of fast
trials (the options as given, then the same random draw of the fast grid at every seed, so the
table takes an hour rather than seven), no budget, no deployed stage. Its choice and the options
as given are then each trained the deployed way (trainer.head.deployed_fold_scores: the views,
early stopping on a tenth, the refit) on every training and validation image and scored on the
seed's test photos; with the converged head (the fast trials' own), so are the choice, the options
as given and the trial with the best mean (what a search without the rule would have chosen). Reported: the accuracies per seed, their means and standard deviations, the
paired difference with its standard error, what was chosen how often, and the seconds the search
and each training took. One workspace is shared, so every image is featurized once a feature set.

The data: the shipped concrete photos (400, CD and UD), or scikit-learn's handwritten digits
(all ten classes, PER_CLASS scans each, drawn at 64 px).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.inspector import digits
from trainer.config import TrainConfig
from trainer.data.load import load_data
from trainer.tune import Budget, Search, described

ROOT = Path(__file__).resolve().parent.parent
CONCRETE = ROOT / "datasets" / "concrete" / "Images"
PER_CLASS = 100


def dataset(name: str, scratch: Path, per_class: int = PER_CLASS) -> dict:
    """The trainer options that name the data."""
    if name == "concrete":
        return {"folder": str(CONCRETE), "file": "training_data.csv"}
    digits(scratch / "digits", per_class, 0.0, 0)
    return {"folder": str(scratch / "digits" / "Images"), "file": "labels.csv"}


def one_seed(options: dict, seed: int, trials: int, workspace: Path, scratch: Path) -> dict:
    config = TrainConfig(**options, seed=seed, workspace=str(workspace), record="none").check()
    data = load_data(config)
    started = time.monotonic()
    search = Search(config, data, workspace, scratch / f"search-{seed}.json", Budget(1e9))
    rng = np.random.default_rng(0)  # the same draw at every seed
    rest = search.fast[1:]
    search.fast = [search.fast[0], *(rest[i] for i in sorted(rng.choice(len(rest), trials - 1, replace=False)))]
    search.planned["fast"] = len(search.fast)
    search.run(deployed_stage=False)
    searched = time.monotonic() - started
    chosen = search.state["chosen"]
    fast = search.state["test"]  # the converged head's test scores, which search.run measured
    scores = search.test_scores("deployed")
    # What chasing the best mean would have given: the fast trial with the best score, on the
    # same test photos with the same (converged) head as the choice's figure beside it.
    best = max(search.state["trials"], key=lambda trial: trial["mean"])
    chasing = fast.get("chosen")
    if best["options"] != chosen["options"]:
        search.state["chosen"] = {**chosen, "options": best["options"]}
        chasing = search.test_scores("fast").get("chosen")
        search.state["chosen"] = chosen
    return {
        "seed": seed,
        "chosen": described(chosen["options"], search.base),
        "given": scores.get("given"),
        "searched": scores.get("chosen"),
        "fast_given": fast.get("given"),
        "fast_searched": fast.get("chosen"),
        "best_mean": described(best["options"], search.base),
        "chasing": chasing,
        "search_seconds": round(searched, 1),
        "train_seconds": scores["seconds"],
        "test_photos": len(search.test),
        "trials": len(search.state["trials"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("concrete", "digits"), default="concrete")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=24, help="fast trials per seed (default 24)")
    parser.add_argument(
        "--per-class", type=int, default=PER_CLASS, help=f"digits: scans per class (default {PER_CLASS})"
    )
    parser.add_argument("--candidates", default=None, help="as the trainer's --candidates (default: Lite0, 1, 2)")
    parser.add_argument("--workspace", default=None, help="feature cache to share (default: a temporary one)")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    quiet_logging()

    with tempfile.TemporaryDirectory(prefix="search-bench-") as scratch:
        scratch = Path(scratch)
        workspace = Path(args.workspace) if args.workspace else scratch / "workspace"
        options = dataset(args.data, scratch, args.per_class)
        if args.candidates:
            options["candidates"] = args.candidates
        results = []
        for seed in range(args.seeds):
            results.append(one_seed(options, seed, args.trials, workspace, scratch))
            print(json.dumps(results[-1]), flush=True)
    summary = summarize(results)
    print(json.dumps(summary, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps({"seeds": results, "summary": summary}, indent=1) + "\n")
    return 0


def quiet_logging() -> None:
    """The trainer's log lines on stderr, as a run prints them."""
    import logging

    log = logging.getLogger("trainer")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def summarize(results: list[dict]) -> dict:
    given = [r["given"] for r in results]
    searched = [r["searched"] for r in results]
    chasing = [r["chasing"] for r in results]
    fast_given = [r["fast_given"] for r in results]
    differences = [s - g for s, g in zip(searched, given, strict=True)]
    chased = [c - g for c, g in zip(chasing, fast_given, strict=True)]
    spread = lambda values: statistics.stdev(values) if len(values) > 1 else 0.0  # noqa: E731
    return {
        "seeds": len(results),
        "given": [round(statistics.mean(given), 4), round(spread(given), 4)],
        "searched": [round(statistics.mean(searched), 4), round(spread(searched), 4)],
        "difference": [round(statistics.mean(differences), 4), round(spread(differences) / len(results) ** 0.5, 4)],
        "fast_given": [round(statistics.mean(fast_given), 4), round(spread(fast_given), 4)],
        "fast_searched": [
            round(statistics.mean(r["fast_searched"] for r in results), 4),
            round(spread([r["fast_searched"] for r in results]), 4),
        ],  # fmt: skip
        "chasing": [round(statistics.mean(chasing), 4), round(spread(chasing), 4)],
        "chasing_difference": [round(statistics.mean(chased), 4), round(spread(chased) / len(results) ** 0.5, 4)],
        "best_mean": Counter(r["best_mean"] for r in results).most_common(),
        "chosen": Counter(r["chosen"] for r in results).most_common(),
        "search_seconds": round(statistics.median(r["search_seconds"] for r in results), 1),
        "train_seconds": {
            which: round(statistics.median(r["train_seconds"][which] for r in results), 1)
            for which in ("given", "chosen")
        },  # fmt: skip
    }


if __name__ == "__main__":
    sys.exit(main())
