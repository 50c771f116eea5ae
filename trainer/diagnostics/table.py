"""The diagnostics, one row each: what is drawn and checked about a model after it has landed.

    name       its key in manifest.json's `diagnostics`
    title      how the report names it: its section's heading, and its line when it failed
    applies    whether the run's options ask for it (else it is recorded "skipped")
    run        the function: Finished -> None, or a dict to merge into the manifest
    shows      a function giving the files it leaves in the run folder
    section    its section of report.html, under its title: a function from the run folder to
               HTML (trainer.diagnostics.sections), or None
    picture    or a picture it draws, (file, caption), shown among the report's pictures
    doing      what the terminal says while it runs ("audit: checking each label ...")
    tells      what it says when done, from the run folder ("23 labels to check: CD 21, UD 2")

To add a diagnostic, add a row here with its function and its section; trainer.diagnostics.runner
runs every row that applies after the run folder's core has landed, in this order, and the
report (trainer.diagnostics.report) shows each row's section under its title, in this order, and
names the ones that failed. The stand-alone commands that redo a diagnostic on a run folder
(`python -m trainer export`, `report`) go through the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer import runfolder
from trainer.config import TrainConfig, parse_formats
from trainer.diagnostics import compare, searched
from trainer.diagnostics.audit import audit_data, average_pooled_features
from trainer.diagnostics.explain import heatmap_sheet
from trainer.diagnostics.sections import audit_section, exports_section
from trainer.errors import InputError, counted
from trainer.export.formats import export_run
from trainer.exports import export_files
from trainer.pooling import NAMES, custom_objects


class Skipped(Exception):
    """A diagnostic that does not apply to this model (recorded as {"skipped": reason})."""


@dataclass
class Finished:
    """What a diagnostic gets: a run folder whose core has landed, and what the run still holds
    (its data, its model, each image's own features for the audit). Made from a run folder alone
    (`from_run_dir`), the model and the data are read back from it when asked for."""

    run_dir: Path
    config: TrainConfig
    workspace: Path
    data: object = None  # trainer.data.load.Data
    model: object = None  # the Keras model
    features: object = None  # each image's own features, in the data's order (numpy), or None
    benchmark: bool = False  # the export benchmark (export --benchmark, or the run's option)
    formats: tuple[str, ...] = field(default_factory=tuple)  # the exports: --export's, unless given
    check: bool = True  # the exports' parity check
    write: bool = True  # the exports written; False: the ones in the folder checked

    def keras_model(self):
        if self.model is None:
            import keras

            self.model = keras.models.load_model(self.run_dir / runfolder.MODEL, compile=False, safe_mode=True,
                                                 custom_objects=custom_objects())  # fmt: skip
        return self.model


def _audit(finished: Finished) -> dict:
    features = finished.features
    if features is None and finished.config.pooling != "avg":
        # The run's own features are pooled otherwise; the audit's are the same backbone's, averaged.
        decided = runfolder.read_json(finished.run_dir / runfolder.DECIDED)
        features = average_pooled_features(finished.data.rows(), finished.workspace, decided, finished.config)
    summary = audit_data(finished.data, features, finished.workspace,
                         finished.run_dir / runfolder.AUDIT, finished.config)  # fmt: skip
    return {"audit": summary}


def _heatmaps(finished: Finished) -> None:
    if finished.config.pooling != "avg":
        raise Skipped(f"class maps need average pooling; this model is pooled by {NAMES[finished.config.pooling]} "
                      f"(--pooling {finished.config.pooling})")  # fmt: skip
    test = runfolder.read_predictions(finished.run_dir / runfolder.PREDICTIONS)
    labels = runfolder.read_labels([finished.run_dir / runfolder.LABELS], finished.run_dir)
    try:
        heatmap_sheet(finished.keras_model(), test, labels, finished.config.image_size,
                      finished.run_dir / runfolder.HEATMAPS)  # fmt: skip
    except InputError as error:  # a model these maps cannot split: the run is good without them
        raise Skipped(str(error)) from None


def _compare(finished: Finished) -> dict:
    try:
        comparison = compare.compare(Path(finished.config.compare_with), finished.run_dir)
    except InputError as error:  # a folder with nothing to compare: the run is good without it
        raise Skipped(str(error)) from None
    except (KeyError, ValueError) as error:  # files from elsewhere that are not a run's
        raise Skipped(
            f"{finished.config.compare_with}: not a run folder's split.csv and predictions.csv ({error})"
        ) from None
    runfolder.write_json(finished.run_dir / compare.COMPARISON, comparison)
    return {"comparison": compare.tells(comparison)}


def _search(finished: Finished) -> dict:
    try:
        state = searched.copy(Path(finished.config.search), finished.run_dir)
    except InputError as error:  # the record's search moved or was damaged: the run is good without it
        raise Skipped(str(error)) from None
    return {"search": searched.tells(state)}


def _exports(finished: Finished) -> None:
    export_run(finished.run_dir, finished.formats or parse_formats(finished.config.export), finished.check,
               finished.write, finished.benchmark)  # fmt: skip


@dataclass(frozen=True)
class Diagnostic:
    name: str
    title: str
    applies: Callable[[TrainConfig], bool]
    run: Callable[[Finished], dict | None]
    shows: Callable[[], tuple[str, ...]]
    section: Callable[[Path], str] | None = None
    picture: tuple[str, str] | None = None
    doing: str = ""
    tells: Callable[[Path], str] | None = None


def _labels_to_check(run_dir: Path) -> str:
    rows = runfolder.read_audit(run_dir / runfolder.AUDIT)
    by_label = Counter(row["Label"] for row in rows)
    counts = ", ".join(f"{label} {count}" for label, count in sorted(by_label.items()))
    return f"{counted(len(rows), 'image')} to look at ({counts}) in {runfolder.AUDIT}" if rows else "nothing to check"


HEATMAPS_CAPTION = "Where the model looks: the evidence for the predicted class (class activation maps)"
DIAGNOSTICS = (
    Diagnostic("compare", "Before and after", lambda config: config.compare_with is not None, _compare,
               lambda: (compare.COMPARISON,), section=compare.section,
               doing="scoring the model it replaces and this one on the test photos both were tested on",
               tells=lambda run_dir: runfolder.read_json(run_dir / runfolder.MANIFEST).get("comparison", "")),
    Diagnostic("search", "The search that chose the options", lambda config: config.search is not None, _search,
               lambda: (searched.SEARCH,), section=searched.section,
               doing="copying the search that chose this run's options, with every trial it scored",
               tells=lambda run_dir: runfolder.read_json(run_dir / runfolder.MANIFEST).get("search", "")),
    Diagnostic("audit", "Labels to check", lambda config: config.audit, _audit,
               lambda: (runfolder.AUDIT, runfolder.AUDIT_FULL), section=audit_section,
               doing="checking every label against heads that never saw it (out-of-fold, on the cached features)",
               tells=_labels_to_check),
    Diagnostic("heatmaps", "Where the model looks", lambda config: True, _heatmaps, lambda: (runfolder.HEATMAPS,),
               picture=(runfolder.HEATMAPS, HEATMAPS_CAPTION), doing="drawing where the model looks on test images",
               tells=lambda run_dir: runfolder.HEATMAPS),
    # Its files are the export table's (trainer/exports.py), whatever rows it holds when asked.
    Diagnostic("exports", "Exports", lambda config: bool(parse_formats(config.export)), _exports,
               lambda: (runfolder.EXPORTS, *export_files()), section=exports_section,
               doing="writing each format and checking it against the Keras model", tells=lambda run_dir: runfolder.EXPORTS),
)  # fmt: skip
# The report is drawn last, from the files the rows above left: trainer.diagnostics.runner.
REPORT = "report"


def names() -> tuple[str, ...]:
    """Every diagnostic's name in the order they run, the report last."""
    return (*(row.name for row in DIAGNOSTICS), REPORT)


def by_name(name: str) -> Diagnostic:
    return next(row for row in DIAGNOSTICS if row.name == name)


def pending(config: TrainConfig) -> dict[str, str]:
    """The manifest's `diagnostics` before any has run: "pending", or "skipped" (not asked for)."""
    states = {row.name: "pending" if row.applies(config) else "skipped" for row in DIAGNOSTICS}
    return {**states, REPORT: "pending"}
