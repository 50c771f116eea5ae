"""Before and after: this run's model against the one it replaces, on the photos that were test
photos in both, so that a gain a label correction buys is not read as a better model.

Both runs' files say everything needed and no model is loaded: each run's split.csv names its
images by content hash and gives the label it was scored against, and predictions.csv holds what
its model decided for each test image (at the decision in force). The photos compared are the
test photos of both runs (by content); each model is scored against this run's labels and
against the previous run's, and the photos whose label changed between the two are named.

    comparison.json   previous    the folder compared with
                      photos      test photos in both; only_before, only_now: in one run's test split
                      changed     the photos in both whose label changed: path, before, after
                      scores      {"labels now": {"before": accuracy, "now": accuracy},
                                   "labels before": {...}}, on the photos in both
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

from trainer import runfolder
from trainer.diagnostics.sections import figure, table
from trainer.errors import InputError, counted

COMPARISON = "comparison.json"
NAMED = 50  # changed photos named in comparison.json and the report


def _test_photos(run_dir: Path) -> dict[str, tuple[str, str, str]]:
    """sha -> (path, label, predicted) of a run's test photos."""
    split_path, predictions_path = run_dir / runfolder.SPLIT, run_dir / runfolder.PREDICTIONS
    for needed in (split_path, predictions_path):
        if not needed.is_file():
            raise InputError(f"{run_dir}: no {needed.name} to compare with")
    with split_path.open(newline="", encoding="utf-8") as handle:
        sha = {row["ImagePath"]: row.get("Sha256", "") for row in csv.DictReader(handle) if row["Split"] == "test"}
    out = {}
    for row in runfolder.read_predictions(predictions_path):
        digest = sha.get(row["path"])
        if digest:
            out[digest] = (row["path"], row["label"], row["predicted"])
    return out


def _accuracy(predicted: list[str], labels: list[str]) -> float | None:
    return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels) if labels else None


def compare(previous: Path, run_dir: Path) -> dict:
    """comparison.json's content (the module's docstring) for `run_dir` against `previous`."""
    before, now = _test_photos(Path(previous)), _test_photos(run_dir)
    common = [digest for digest in now if digest in before]
    changed = [
        {"path": now[digest][0], "before": before[digest][1], "after": now[digest][1]}
        for digest in common
        if before[digest][1] != now[digest][1]
    ]
    scores = {}
    for which, labelled in (("labels now", now), ("labels before", before)):
        truth = [labelled[digest][1] for digest in common]
        scores[which] = {
            "before": _accuracy([before[digest][2] for digest in common], truth),
            "now": _accuracy([now[digest][2] for digest in common], truth),
        }
    return {
        "previous": str(previous),
        "photos": len(common),
        "only_before": len(before) - len(common),
        "only_now": len(now) - len(common),
        "changed": changed[:NAMED],
        "changed_count": len(changed),
        "scores": scores,
    }


def tells(comparison: dict) -> str:
    """One line: both models on the photos in both, against this run's labels, and the labels changed."""
    scores = comparison["scores"]["labels now"]
    if not comparison["photos"]:
        return "no test photo in common with the model before"
    changed, earlier = comparison["changed_count"], comparison["scores"]["labels before"]
    return (
        f"on the {counted(comparison['photos'], 'test photo')} both were tested on, the model before "
        f"{scores['before']:.3f}, this one {scores['now']:.3f}"
        + (f" (against the labels before: {earlier['before']:.3f} and {earlier['now']:.3f}); "
           f"{counted(changed, 'label')} changed among them, which moves the score by itself" if changed else "")
    )  # fmt: skip


def section(run_dir: Path) -> str:
    """The report's "Before and after" section, from comparison.json."""
    comparison = runfolder.read_json(run_dir / COMPARISON)
    if not comparison:
        return "<p>No comparison in this run.</p>"
    scores = comparison.get("scores", {})
    rows = [[which, figure(values.get("before"), ".3f"), figure(values.get("now"), ".3f")]
            for which, values in scores.items()]  # fmt: skip
    changed = comparison.get("changed") or []
    names = [[item.get("path"), item.get("before"), item.get("after")] for item in changed]
    said = (
        f"<p>The model before (<code>{html.escape(str(comparison.get('previous')))}</code>) and this one on the "
        f"{html.escape(figure(comparison.get('photos')))} photos that were test photos in both (by content; "
        f"{html.escape(figure(comparison.get('only_before')))} were tested only before and "
        f"{html.escape(figure(comparison.get('only_now')))} only now), each scored against this run's labels and "
        "against the labels the model before was scored on. A gain that the changed labels alone explain is not "
        "a better model.</p>"
    )
    return (
        said
        + table(rows, ["scored against", "model before", "this model"])
        + (
            f"<p>{html.escape(figure(comparison.get('changed_count')))} of those photos changed label:</p>"
            + table(names, ["image", "label before", "label now"])
            if names
            else "<p>No label changed among them.</p>"
        )
    )
