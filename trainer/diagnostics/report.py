"""report.html: one self-contained page per run, from the files the run folder keeps.

    predictions.csv   every evaluated image: label, prediction, score, each class's probability
    history.csv       one row per epoch and phase
    metrics.json      test metrics, validation (and train) metrics, the data report
    config.json, manifest.json
    and each diagnostic's files (trainer.diagnostics.table): its row's section, under its
    title, or its picture among the pictures

`python -m trainer report RUN_DIR` redraws the pictures and rewrites the page; it needs no
TensorFlow. The pictures are PNG files beside the page and embedded in it as data: URLs, so the
page can be mailed or downloaded alone.
"""

from __future__ import annotations

import csv
import html
import json
import time
from pathlib import Path

from trainer import decision, runfolder
from trainer.atomic import write_atomically
from trainer.diagnostics import pictures, sections, table
from trainer.errors import InputError, counted
from trainer.runfolder import read_json

RUN_PICTURES = {
    "learning_curves.png": "Learning curves",
    "confusion_matrix.png": "Confusion matrix",
    "worst_test_images.png": "Worst-classified test images",
}
# Every picture of the page, in its order: the run's own (draw_pictures), then the one each
# diagnostic draws (its row's `picture`).
PICTURES = {**RUN_PICTURES, **dict(row.picture for row in table.DIAGNOSTICS if row.picture)}
OPERATING_POINT = "operating_point.png"


def draw_pictures(run_dir: Path) -> list[Path]:
    metrics = read_json(run_dir / runfolder.METRICS)
    drawn = [
        pictures.learning_curves(runfolder.read_history(run_dir / runfolder.HISTORY), run_dir / "learning_curves.png")
    ]
    if metrics.get("confusion_matrix"):
        drawn.append(
            pictures.confusion_matrix(metrics["confusion_matrix"], metrics["labels"], run_dir / "confusion_matrix.png")
        )
    point = read_json(run_dir / decision.DECISION)
    if point:
        drawn.append(pictures.operating_point(point, run_dir / OPERATING_POINT))
    drawn.append(
        pictures.worst_images(
            runfolder.read_predictions(run_dir / runfolder.PREDICTIONS), run_dir / "worst_test_images.png"
        )
    )
    return drawn


def build(run_dir: str | Path, name: str | None = None) -> Path:
    """Redraw the pictures and write report.html; returns the page's path. name: the run's
    name in the title, when the folder is still being written under a partial name."""
    run_dir = Path(run_dir)
    if not (run_dir / runfolder.METRICS).is_file():
        raise InputError(f"{run_dir}: no metrics.json; pass a run folder written by 'trainer train'")
    draw_pictures(run_dir)
    page = render(run_dir, name or run_dir.name)
    destination = run_dir / runfolder.REPORT
    write_atomically(destination, page)
    return destination


# ---------------------------------------------------------------------------------------------
# The page


def _as_set(value):
    """A setting as the run used it: 1e-05 stays 1e-05 (a metric's 4 decimals would show 0.0000)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return value


def _settings_table(settings: dict) -> str:
    return sections.table([[key, _as_set(value)] for key, value in settings.items()], ["setting", "value"])


def _worst_section(run_dir: Path, shown: int = 16) -> str:
    """The test images the model got wrong, by name, as the worst-images picture shows them."""
    predictions = runfolder.read_predictions(run_dir / runfolder.PREDICTIONS)
    wrong = sorted((p for p in predictions if p["label"] != p["predicted"]), key=lambda p: p["true_probability"])
    pointer = (
        f"<p>Every test image's label, prediction and per-class probabilities are in "
        f"<code>{runfolder.PREDICTIONS}</code> (its Split column says which split each row is from).</p>"
    )
    if not predictions:
        return pointer
    if not wrong:
        return f"<p>Every one of the {len(predictions)} test images is classified right.</p>" + pointer
    rows = [[p["path"], p["label"], p["predicted"], f"{p['score']:.3f}", f"{p['true_probability']:.3f}"]
            for p in wrong[:shown]]  # fmt: skip
    more = f" (the {shown} with the lowest probability for their label)" if len(wrong) > shown else ""
    return (
        f"<p>{len(wrong)} of {len(predictions)} test images are classified wrong{more}:</p>"
        + sections.table(rows, ["image", "label", "predicted", "score", "P(label)"])
        + pointer
    )


def _glyphs_note(labels: list[str]) -> str:
    """Class names the pictures' font cannot draw: said, since they show as boxes there."""
    missing = [label for label in labels if not pictures.drawable(label)]
    if not missing:
        return ""
    return (
        f"<p><small>The pictures' font ({html.escape(pictures.FONT_NAME)}) has no glyphs for some characters of "
        f"{html.escape(', '.join(missing[:10]))}: they show as boxes in the pictures; the tables here show "
        "them right.</small></p>"
    )


def _metrics_section(name: str, metrics: dict) -> str:
    if not metrics:
        return ""
    summary = [
        ["images", metrics["count"]],
        ["accuracy", metrics["accuracy"]],
        ["log-loss", metrics["log_loss"]],
        ["ROC AUC", metrics.get("roc_auc")],
        *[[key.replace("_", " "), value] for key, value in metrics.items() if key.startswith("top_")],
        *[[f"macro {key}", value] for key, value in metrics.get("macro_avg", {}).items()],
        *[[f"weighted {key}", value] for key, value in metrics.get("weighted_avg", {}).items()],
    ]
    per_class = [
        [label, v["precision"], v["recall"], v["f1"], v["support"]] for label, v in metrics.get("per_class", {}).items()
    ]
    return (
        f"<h3>{html.escape(name)}</h3><div class='row'>{sections.table(summary)}"
        f"{sections.table(per_class, ['class', 'precision', 'recall', 'F1', 'images'])}</div>"
    )


def _data_section(metrics: dict, split_counts: dict) -> str:
    report = metrics.get("data", {})
    problems = [
        [kind, value["count"], "; ".join(value["examples"])] for kind, value in report.get("problems", {}).items()
    ]
    parts = [f"<p>{sections.number(report.get('rows_read'))} rows read.</p>"]
    if split_counts:
        labels = sorted({label for counts in split_counts.values() for label in counts})
        parts.append(
            sections.table(
                [[split, sum(c.values()), *(c.get(label, 0) for label in labels)] for split, c in split_counts.items()],
                ["split", "images", *labels],
            )
        )
    parts.append(
        sections.table(problems, ["dropped or changed", "rows", "examples"]) if problems else "<p>No rows dropped.</p>"
    )
    parts += [f"<p>{html.escape(note)}</p>" for note in report.get("notes", [])]
    return "".join(parts)


def _split_counts(run_dir: Path) -> dict:
    path = run_dir / runfolder.SPLIT
    counts: dict[str, dict[str, int]] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            for record in csv.DictReader(handle):
                split = counts.setdefault(record["Split"], {})
                split[record["Label"]] = split.get(record["Label"], 0) + 1
    return counts


def _ranking_section(ranking: list[dict] | None) -> str:
    """--backbone auto: the candidates as they were ranked."""
    if not ranking:
        return ""
    rows = [
        [entry["backbone"], entry["weights"], entry["cv_accuracy"], entry["cv_log_loss"], entry["featurize_seconds"]]
        for entry in ranking
    ]
    return (
        "<h2>Backbone chosen (--backbone auto)</h2><p>Each candidate featurized the training images once; a "
        "head's 5-fold cross-validated accuracy on those features ranked them, the best first.</p>"
        + sections.table(rows, ["backbone", "weights", "CV accuracy", "CV log-loss", "featurize s"])
    )


def _operating_section(run_dir: Path) -> str:
    """--target-recall: the rule, where it was chosen and what it gave on the test split."""
    point = read_json(run_dir / decision.DECISION)
    if not point:
        return ""
    rows = []
    for key, where in (("out_of_fold", "training and validation images, out of fold (chosen here)"),
                       ("test", "test split")):  # fmt: skip
        at = point.get(key) or {}
        rows.append([where, at.get("images", "-"), at.get("positives", "-"),
                     "-" if at.get("recall") is None else sections.figure(at["recall"], ".3f"),
                     "-" if at.get("precision") is None else sections.figure(at["precision"], ".3f")])  # fmt: skip
    note = f"<p>{html.escape(point['note'])}</p>" if point.get("note") else ""
    return (
        "<h2>Operating point (--target-recall)</h2>"
        f"<p>The model decides <b>{html.escape(point['rule'])}</b>. The threshold is the largest at which "
        f"{sections.number(point['target_recall'], 'g')} of the {html.escape(point['label'])} images score at least "
        f"it, on probabilities each from a head that did not see the image ({sections.number(point.get('folds'))} "
        f"folds, {sections.number(point.get('epochs'))} epochs, as the deployed head trained). evaluate and predict "
        f"apply it (decision.json).</p>{note}"
        + sections.table(rows, ["where", "images", f"{html.escape(point['label'])} images", "recall", "precision"])
        + sections.picture(run_dir / OPERATING_POINT, f"Precision and recall of {point['label']}, and the chosen point")
    )


def _corrections_section(corrections: dict | None) -> str:
    """What the review decisions in force changed, when the run had any (trainer/record.py)."""
    if not corrections:
        return ""
    rows = [[label, tally.get("in", 0), tally.get("out", 0), tally.get("dropped", 0)]
            for label, tally in corrections["classes"].items()]  # fmt: skip
    new = f" New classes: {html.escape(', '.join(corrections['new_classes']))}." if corrections["new_classes"] else ""
    where = " and ".join(
        f"<code>{html.escape(str(place))}</code>"
        for place in (corrections.get("record"), corrections.get("file"))
        if place
    )
    skipped = corrections.get("skipped")
    skipped = (f" {html.escape(counted(skipped, 'decision names an image', 'decisions name images'))} no longer in "
               f"the data and {'was' if skipped == 1 else 'were'} skipped." if skipped else "")  # fmt: skip
    return (
        f"<h3>Review decisions applied</h3><p>{html.escape(counted(corrections['relabelled'], 'image'))} relabelled, "
        f"{sections.number(corrections['dropped'])} dropped and {sections.number(corrections.get('kept', 0))} kept as "
        f"they were, by the decisions in {where or 'force'} (this run's "
        f"copy: <code>{runfolder.CORRECTIONS}</code>), after the split, so the test split is the same photos as "
        f"without them.{skipped}{new}</p>"
        + sections.table(rows, ["class", "relabelled to it", "relabelled from it", "dropped"])
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 1.5em 1em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 14px; }
th { background: #f2f2f2; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; }
code { background: #f4f4f4; padding: 1px 4px; }
table.review img { max-width: 192px; max-height: 192px; }
.review-controls { margin: 0.5em 0; display: flex; flex-wrap: wrap; gap: 0.5em; align-items: center; }
.review-controls input[type=number] { width: 4em; }
"""


def _diagnostics_note(manifest: dict) -> str:
    """A warning line for each diagnostic (trainer.diagnostics.table) that failed or never
    finished; the model itself is fine."""
    states = manifest.get("diagnostics", {})
    titles = {row.name: row.title for row in table.DIAGNOSTICS} | {table.REPORT: "the report"}
    failed = {name: state["failed"] for name, state in states.items() if isinstance(state, dict) and "failed" in state}
    items = [f"<li><b>{html.escape(titles.get(name, name))}</b> ({html.escape(name)}): {html.escape(reason)}</li>"
             for name, reason in failed.items()]  # fmt: skip
    items += [f"<li><b>{html.escape(titles.get(name, name))}</b> ({html.escape(name)}): never finished</li>"
              for name, state in states.items() if state == "pending" and name != table.REPORT]  # fmt: skip
    if not items:
        return ""
    return f"<p><b>Warning:</b> the model is complete, but these diagnostics failed or never finished:</p><ul>{''.join(items)}</ul>"


def _diagnostic_sections(run_dir: Path) -> list[str]:
    """Each diagnostic's section (its row's `section`), under its title, in the table's order."""
    parts = []
    for row in table.DIAGNOSTICS:
        if row.section is not None:
            parts += [f"<h2>{html.escape(row.title)}</h2>", row.section(run_dir)]
    return parts


def missed_by_class(metrics: dict) -> list[str]:
    """What the model gets wrong on the test images, in an inspector's words: for each class it
    misses, how many of its images and what it took them for (metrics.json's confusion matrix)."""
    labels, confusion = metrics.get("labels", []), metrics.get("confusion_matrix") or []
    said = []
    for row, (label, counts) in enumerate(zip(labels, confusion, strict=False)):
        total, missed = sum(counts), sum(counts) - counts[row]
        if not total:
            continue
        taken = sorted(((count, other) for column, (other, count) in enumerate(zip(labels, counts, strict=False))
                        if column != row and count), reverse=True)  # fmt: skip
        if len(taken) == 1:
            as_what = f"calling {'it' if missed == 1 else 'them'} <b>{html.escape(taken[0][1])}</b>"
        else:
            as_what = "calling " + ", ".join(f"{count} <b>{html.escape(other)}</b>" for count, other in taken[:3])
            as_what += " and others" if len(taken) > 3 else ""
        said.append(
            f"misses <b>{missed or 'none'} of the {total}</b> images labelled <b>{html.escape(label)}</b> (recall "
            f"{(total - missed) / total:.2f})" + (f", {as_what}" if missed else "")
        )
    return said


def recall_target_note(run_dir: Path, point: dict, metrics: dict) -> str:
    """Where a recall target puts the threshold and what it costs: the operating point's own
    out-of-fold figures when --target-recall was set; else the audit's estimate from the
    out-of-fold probabilities it has (manifest.json's audit.recall_targets), said as an estimate."""
    if point:
        at = point.get("out_of_fold") or {}
        return (
            f"<p>The threshold was chosen for <b>--target-recall {html.escape(point['label'])}="
            f"{sections.number(point['target_recall'], 'g')}</b>: out of fold on the training and validation images, "
            f"recall {sections.number(at.get('recall'), '.3f')} at precision {sections.number(at.get('precision'), '.3f')} "
            "(the operating point's section below has the test split's).</p>"
        )
    estimates = (read_json(run_dir / runfolder.MANIFEST).get("audit") or {}).get("recall_targets") or []
    labels = metrics.get("labels", [])
    if not estimates:
        recalls = {label: values.get("recall", 1.0) for label, values in metrics.get("per_class", {}).items()}
        example = html.escape(min(labels, key=lambda label: recalls.get(label, 1.0))) if labels else "CLASS"
        return (f"<p>When missing one class costs more than a false alarm, train with <code>--target-recall "
                f"{example}=0.95</code>: the threshold is then chosen for that recall.</p>")  # fmt: skip
    rows = [
        [entry["label"], sections.figure(entry["target"], "g"), sections.figure(entry["threshold"], ".3f"),
         sections.figure(entry["recall"], ".3f"), sections.figure(entry["precision"], ".3f"),
         f"{sections.figure(entry['called'])} of {sections.figure(entry['images'])}"]
        for entry in estimates
    ]  # fmt: skip
    return (
        "<p><b>Where a recall target would put the threshold</b> (an estimate: the label audit's out-of-fold "
        "probabilities on the training and validation images, not the deployed model's; <code>--target-recall "
        "CLASS=RECALL</code> chooses it for the model):</p>"
        + sections.table(
            rows, ["class", "target recall", "threshold on P(class)", "recall", "precision", "images called the class"]
        )  # fmt: skip
    )


def _header(run_dir: Path, name: str, metrics: dict, config: dict) -> str:
    """The page's top: the model's name, the run, the headline figures, and what the model gets
    wrong at the decision in force, with where a recall target would put the threshold."""
    asked = read_json(run_dir / runfolder.CONFIG)
    model = asked.get("model_name") or name
    point = read_json(run_dir / decision.DECISION)
    headline = (
        f"Test accuracy <b>{sections.number(metrics['accuracy'], '.3f')}</b> on "
        f"{sections.number(metrics['count'])} images"
        + (f", ROC AUC {sections.number(metrics['roc_auc'], '.3f')}" if metrics.get("roc_auc") is not None else "")
        + f"; classes {html.escape(', '.join(metrics.get('labels', [])))}; {html.escape(str(config.get('backbone', '?')))}, "
        f"weights {html.escape(str(config.get('weights_used', '?')))}; trained in "
        f"{sections.number(metrics.get('training_seconds'))} s."
    )
    rule = html.escape(point["rule"]) if point else "the most likely class"
    wrong = "".join(f"<li>It {line}.</li>" for line in missed_by_class(metrics))
    return (
        f"<h1>{html.escape(model)}</h1><p><small>Run <code>{html.escape(name)}</code></small></p><p>{headline}</p>"
        + (
            f"<h2>What it gets wrong</h2><p>On the {sections.number(metrics['count'])} test images, deciding "
            f"<b>{rule}</b>:</p><ul>{wrong}</ul>"
            if wrong
            else ""
        )  # fmt: skip
        + recall_target_note(run_dir, point, metrics)
        + _compared_note(read_json(run_dir / runfolder.MANIFEST).get("comparison"))
    )


def _compared_note(line) -> str:
    """The before-and-after line (trainer/diagnostics/compare.py) at the top, when the run replaced
    a model: a retrain's score beside the one it replaced, on the same photos."""
    if not isinstance(line, str) or not line:
        return ""
    return f"<p><b>Before and after</b> (the section below): {html.escape(line)}.</p>"


def render(run_dir: Path, name: str) -> str:
    metrics = read_json(run_dir / runfolder.METRICS)
    config = runfolder.read_settings(run_dir)
    asked, decided = read_json(run_dir / runfolder.CONFIG), read_json(run_dir / runfolder.DECIDED)
    manifest = read_json(run_dir / runfolder.MANIFEST)
    title = f"{asked.get('model_name') or name}: {config.get('backbone', '?')} classifier ({name})"
    page = [
        _header(run_dir, name, metrics, config),
        _diagnostics_note(manifest),
        _ranking_section(config.get("backbone_ranking")),
        _operating_section(run_dir),
        "<h2>Metrics</h2>",
        _metrics_section("test", metrics),
        _metrics_section(
            "validation (the deployed head also trained on these: --head-refit)"
            if "head_refit" in metrics.get("epochs_run", {})
            else "validation",
            metrics.get("validation", {}),
        ),
        _metrics_section("train", metrics.get("train", {})),
        "<h2>Pictures</h2>",
        _glyphs_note(metrics.get("labels", [])),
        *(sections.picture(run_dir / name, caption) for name, caption in PICTURES.items()),
        "<h3>Wrong test images</h3>",
        _worst_section(run_dir),
        "<h2>Data</h2>",
        _data_section(metrics, _split_counts(run_dir)),
        _corrections_section(manifest.get("data", {}).get("corrections")),
        *_diagnostic_sections(run_dir),
        "<h2>Configuration</h2>",
        _settings_table(asked),
        "<h3>Decided by the run</h3>" if decided else "",
        _settings_table(decided) if decided else "",
        "<h2>Versions and hardware</h2>",
        sections.table(
            [[name, version] for name, version in manifest.get("versions", {}).items()], ["package", "version"]
        ),
        sections.table(
            [[key, _as_set(value)] for key, value in manifest.get("hardware", {}).items()]
            + [[f"policy {key}", _as_set(value)] for key, value in manifest.get("policy", {}).items()],
            ["machine", "value"],
        ),
        f"<p><small>Written {time.strftime('%Y-%m-%d %H:%M:%S')} by <code>python -m trainer report</code>.</small></p>",
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(section for section in page if section)
        + "</body></html>\n"
    )
