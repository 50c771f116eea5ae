"""The trainer's answer to whoever ran it: `python -m trainer train --result FILE` writes what
the run did to FILE as JSON, whole (temporary name, renamed), once when the model has landed and
again when the run ends, so that a caller (`invoke train`) reads the outcome as data rather than
from the trainer's output. The printed run folder stays, for people and shell scripts.

    state          "model" (the model is complete; diagnostics under way) or "done"
    run_dir        the run folder
    model          the model file, <run_dir>/model.keras
    model_name     the model's name (its published folder's)
    figures        the test split's accuracy, images, log-loss, ROC AUC, each class's recall
    decided        what the run decided (decided.json): the backbone, weights, classes, the rule
    decisions      what the decisions in force changed (relabelled, dropped, kept, skipped), or null
    diagnostics    each diagnostic's outcome: ok, skipped, pending, {"failed": reason}
    report         report.html, once written
    labels_to_check  how many images the audit lists
    comparison     this model against the one it replaces, in a line (trainer/diagnostics/compare.py)
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer import runfolder
from trainer.atomic import write_atomically
from trainer.errors import counted


def write(path: str | Path | None, run_dir: Path, state: str) -> None:
    """The result of the run in `run_dir`, from its files, to `path` (nothing when None)."""
    if path is not None:
        write_atomically(Path(path), json.dumps(answer(run_dir, state), indent=2) + "\n")


def answer(run_dir: Path, state: str) -> dict:
    """What the run in `run_dir` did, from its files (the fields above)."""
    metrics = runfolder.read_json(run_dir / runfolder.METRICS)
    manifest = runfolder.read_json(run_dir / runfolder.MANIFEST)
    config = runfolder.read_json(run_dir / runfolder.CONFIG)
    name = config.get("model_name", "")
    audit, per_class = manifest.get("audit") or {}, metrics.get("per_class", {})
    return {
        "state": state,
        "run_dir": str(run_dir),
        "model": str(run_dir / runfolder.MODEL),
        "model_name": name,
        "figures": {
            "accuracy": metrics.get("accuracy"),
            "images": metrics.get("count"),
            "log_loss": metrics.get("log_loss"),
            "roc_auc": metrics.get("roc_auc"),
            "recall": {label: values["recall"] for label, values in per_class.items()},
            "missed": {label: [missed(values), values.get("support", 0)] for label, values in per_class.items()},
            "target_recall": config.get("target_recall") or None,
        },
        "decided": runfolder.read_json(run_dir / runfolder.DECIDED),
        "decisions": (manifest.get("data") or {}).get("corrections"),
        "diagnostics": manifest.get("diagnostics", {}),
        "report": str(run_dir / runfolder.REPORT) if (run_dir / runfolder.REPORT).is_file() else None,
        "labels_to_check": sum((audit.get("flagged") or {}).values()) if audit else None,
        "comparison": manifest.get("comparison"),
    }


def missed(values: dict) -> int:
    """How many of a class's test images the model missed at the decision in force (metrics.json's
    per-class recall and support)."""
    return round(values.get("support", 0) * (1 - values.get("recall", 0.0)))


def summary(content: dict, folder: Path | None = None, review: str = "") -> list[str]:
    """The lines that end a run, for a person: the model's name and headline figures with each
    class's recall and misses, the model's file, the report, and how many labels to check with
    `review` (what reviews them). `folder`: where the run's files are now (its published folder),
    instead of the run folder."""
    where = Path(folder or content["run_dir"])
    figures = content.get("figures") or {}
    target = figures.get("target_recall") or ""
    recalls = []
    for label, (count, support) in (figures.get("missed") or {}).items():
        goal = f"; target {target.split('=', 1)[1]}" if target.split("=", 1)[0] == label else ""
        recall = figures.get("recall", {}).get(label, 0.0)
        recalls.append(f"{label} recall {recall:.2f} ({count} of {support} missed{goal})")
    accuracy = figures.get("accuracy")
    headline = (f"test accuracy {accuracy:.3f} on {counted(figures.get('images') or 0, 'image')}"
                if accuracy is not None else "no test figures")  # fmt: skip
    lines = [f"{content.get('model_name') or where.name}: {headline}" + (f"; {', '.join(recalls)}" if recalls else "")]
    lines.append(f"  model:   {where / Path(content['model']).name}")
    if content.get("report"):
        lines.append(f"  report:  {where / Path(content['report']).name}")
    if content.get("comparison"):
        lines.append(f"  before:  {content['comparison']}")
    count = content.get("labels_to_check")
    if count:
        lines.append(f"  review:  {counted(count, 'label')} to check" + (f": {review}" if review else ""))
    return lines


def read(path: Path) -> dict | None:
    """What a run answered, or None when it wrote nothing (it ended before its model landed)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and "run_dir" in content else None
