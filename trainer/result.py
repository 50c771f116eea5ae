"""The trainer's answer to whoever ran it: `python -m trainer train --result FILE` writes what
the run did to FILE as JSON, whole (temporary name, renamed), once when the model has landed and
again when the run ends, so that a caller (`invoke train`) reads the outcome as data rather than
from the trainer's output. The printed run folder stays, for people and shell scripts.

    state          "model" (the model is complete; diagnostics under way) or "done"
    run_dir        the run folder
    model          the model file, <run_dir>/<model-name>.keras
    model_name     the model's name (its published folder's)
    figures        the test split's accuracy, images, log-loss, ROC AUC, each class's recall
    decided        what the run decided (decided.json): the backbone, weights, classes, the rule
    decisions      what the decisions in force changed (relabelled, dropped, kept, skipped), or null
    diagnostics    each diagnostic's outcome: ok, skipped, pending, {"failed": reason}
    report         report.html, once written
    labels_to_check  how many images the audit lists
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer import runfolder
from trainer.atomic import write_atomically


def write(path: str | Path | None, run_dir: Path, state: str) -> None:
    """The result of the run in `run_dir`, from its files, to `path` (nothing when None)."""
    if path is None:
        return
    metrics = runfolder.read_json(run_dir / runfolder.METRICS)
    manifest = runfolder.read_json(run_dir / runfolder.MANIFEST)
    config = runfolder.read_json(run_dir / runfolder.CONFIG)
    name = config.get("model_name", "")
    audit = manifest.get("audit") or {}
    content = {
        "state": state,
        "run_dir": str(run_dir),
        "model": str(run_dir / f"{name}.keras"),
        "model_name": name,
        "figures": {
            "accuracy": metrics.get("accuracy"),
            "images": metrics.get("count"),
            "log_loss": metrics.get("log_loss"),
            "roc_auc": metrics.get("roc_auc"),
            "recall": {label: values["recall"] for label, values in metrics.get("per_class", {}).items()},
        },
        "decided": runfolder.read_json(run_dir / runfolder.DECIDED),
        "decisions": (manifest.get("data") or {}).get("corrections"),
        "diagnostics": manifest.get("diagnostics", {}),
        "report": str(run_dir / runfolder.REPORT) if (run_dir / runfolder.REPORT).is_file() else None,
        "labels_to_check": sum((audit.get("flagged") or {}).values()) if audit else None,
    }
    write_atomically(Path(path), json.dumps(content, indent=2) + "\n")


def read(path: Path) -> dict | None:
    """What a run answered, or None when it wrote nothing (it ended before its model landed)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and "run_dir" in content else None
