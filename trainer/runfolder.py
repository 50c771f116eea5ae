"""Every file a run leaves, by name, with its reader and writer: train writes them, evaluate,
predict, report, export and the setup steps read them. Standard library only, so that the setup
steps can ask what a run holds without importing the trainer's stack.

    model.keras          the trained model
    labels.txt           class names in the model's output order
    config.json          every option, as the run was asked
    decided.json         what the run decided: the backbone and weights used, the classes, ...
    split.csv            ImagePath,Label,Split,Sha256 for every image used
    history.csv          loss and accuracy per epoch and phase
    manifest.json        versions, hardware, policy, data fingerprint, what it was trained from
    metrics.json         test and validation metrics, and the data report
    predictions.csv      every test and validation image's prediction
    decision.json        the operating point, with --target-recall (trainer/decision.py)
    exports.json         the exports' parity check
    heatmaps.png         where the model looks: class activation maps over test images
    audit.csv            labels to check: unlikely labels, near-duplicates, outliers (the first
                         500 of each kind; audit-full.csv has them all when there are more)
    report.html          the page that shows it all
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trainer import cells
from trainer.atomic import replacing, write_atomically
from trainer.errors import InputError
from trainer.names import text_problem

MODEL = "model.keras"
LABELS = "labels.txt"
CONFIG = "config.json"
CORRECTIONS = "corrections.csv"  # --corrections, as the run applied them
DECIDED = "decided.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
EXPORTS = "exports.json"
DECISION = "decision.json"
REPORT = "report.html"
HEATMAPS = "heatmaps.png"
AUDIT = "audit.csv"
AUDIT_FULL = "audit-full.csv"


# What to do about a damaged file in a run folder.
DAMAGED = "train again, or use the copy of the run kept beside the published one (<name>.previous)"


def is_run(folder: Path) -> bool:
    """A finished run folder: one with a model in it."""
    return (folder / MODEL).is_file()


def read_json(path: Path) -> dict:
    """A run's JSON file, or {} when it is not there (an older run, exports turned off)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: damaged, not valid JSON ({error}); {DAMAGED}") from None


def read_settings(run_dir: Path) -> dict:
    """What a run was asked (config.json) with what it decided (decided.json) over it: the
    backbone trained, the weights used (also as weights_used, the older runs' name), the labels.
    Runs from before decided.json kept both in config.json."""
    settings = read_json(run_dir / CONFIG)
    decided = read_json(run_dir / DECIDED)
    settings.update(decided)
    if "weights" in decided:
        settings["weights_used"] = decided["weights"]
    return settings


def write_json(path: Path, content: dict) -> None:
    """Whole or not at all: `evaluate --output` writes where the user says, not into a partial folder."""
    write_atomically(path, json.dumps(content, indent=2) + "\n")


def read_labels(candidates: list[Path], model_path: Path) -> list[str]:
    """The first labels.txt of the candidates that exists; it must name at least one class."""
    for path in candidates:
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}: damaged, not UTF-8 text; {DAMAGED}") from None
            return _labels_in(text, path)
    raise InputError(f"--model: no {LABELS} beside {model_path}; copy the run's {LABELS} there")


def _labels_in(text: str, path: Path) -> list[str]:
    """labels.txt's names exactly as write_labels wrote them: one a line, split at "\n" alone (a
    name holds no line break of any kind: trainer/names.py), a Windows line end forgiven."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    labels = [line.removesuffix("\r") for line in lines]
    if not labels:
        raise InputError(f"{path}: no labels in this file; {DAMAGED}")
    for number, label in enumerate(labels, start=1):
        problem = text_problem(label)
        if problem is not None:
            raise InputError(f"{path} line {number}: damaged, the name {problem}; {DAMAGED}")
    return labels


def write_labels(path: Path, labels: list[str]) -> None:
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            row = {"phase": record.pop("phase"), "epoch": int(record.pop("epoch"))}
            row.update({key: float(value) for key, value in record.items() if value not in ("", None)})
            rows.append(row)
    return rows


def write_history(path: Path, history: list[dict]) -> None:
    keys = sorted({key for row in history for key in row if key not in ("phase", "epoch")})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["phase", "epoch", *keys])
        for row in history:
            writer.writerow([row["phase"], row["epoch"], *(f"{row[key]:.6f}" if key in row else "" for key in keys)])


AUDIT_COLUMNS = ["ImagePath", "Label", "SuggestedLabel", "Score", "Reason", "Group"]


def write_audit(path: Path, records: list[dict]) -> None:
    with replacing(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        handle.write(cells.line(AUDIT_COLUMNS))
        handle.writelines(cells.line(record.get(column, "") for column in AUDIT_COLUMNS) for record in records)


def read_audit(path: Path) -> list[dict]:
    """audit.csv's rows as dicts (ImagePath, Label, SuggestedLabel, Score, Reason), each cell as
    it was before the spreadsheet's escape (trainer/cells.py); [] without one."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(cells.read_dicts(handle))


def read_predictions(path: Path, split: str = "test") -> list[dict]:
    """One split's rows of predictions.csv: path, label, predicted, score, true_probability."""
    if not path.is_file():
        return []
    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        for record in cells.read_dicts(handle):
            if record["Split"] != split:
                continue
            out.append(
                {
                    "path": record["ImagePath"],
                    "label": record["Label"],
                    "predicted": record["PredictedLabel"],
                    "score": float(record["Score"]),
                    "true_probability": float(record.get(f"P({record['Label']})") or 0.0),
                }
            )
    return out


def write_predictions(path: Path, labels: list[str], parts: dict[str, tuple[list, list, object]], decide=None) -> None:
    """parts: split name -> (image paths, true labels, probabilities [n, classes]); decide:
    probabilities -> each row's class index (the stored decision rule), argmax by default."""
    with replacing(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        handle.write(
            cells.line(["ImagePath", "Label", "Split", "PredictedLabel", "Score", *(f"P({label})" for label in labels)])
        )
        for split, (paths, true_labels, probabilities) in parts.items():
            decided = decide(probabilities) if decide is not None and len(probabilities) else None
            for number, (image, label, p) in enumerate(zip(paths, true_labels, probabilities, strict=True)):
                best = int(p.argmax()) if decided is None else int(decided[number])
                handle.write(
                    cells.line([image, label, split, labels[best], f"{p[best]:.6f}", *(f"{v:.6f}" for v in p)])
                )
