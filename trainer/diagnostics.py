"""What is drawn and checked about a model, after the model has landed: the label audit, the
heatmaps, the exports and the report. None of them can cost the model.

`train.main` first writes the run folder's core (the model, labels, config, split, history,
metrics, predictions, the manifest) whole, under a partial name renamed into place, and prints
its path; only then does `run` take each diagnostic in turn. Each one's outcome is recorded in
manifest.json's `diagnostics` as it ends: "ok", "skipped" or {"failed": the one-line reason}.
A diagnostic still "pending" was under way when the process died (a crash in a native library
cannot be caught), and its partial files never carry their real names: the exports are written
into a hidden folder and moved in when done, the audit's lists and the report are written
whole. A failure is a warning; the run then exits with EXIT_DIAGNOSTICS (3): the model is good,
something about it is missing, and `invoke train` publishes the run and says what failed.

TRAINER_FAIL_DIAGNOSTIC=NAME[:crash] makes that diagnostic raise (or, with :crash, kill the
process with SIGSEGV) when it starts: the tests rehearse each failure with it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from trainer import runfolder
from trainer.atomic import link_or_copy, remove

log = logging.getLogger("trainer")

NAMES = ("audit", "heatmaps", "exports", "report")
EXIT_DIAGNOSTICS = 3
INJECT = "TRAINER_FAIL_DIAGNOSTIC"


class DiagnosticsFailed(Exception):
    """The run folder is complete and its model good, but some diagnostics failed (exit 3)."""

    def __init__(self, run_dir: Path, failed: dict[str, str]):
        self.run_dir, self.failed = run_dir, failed
        reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        super().__init__(
            f"the model is complete in {run_dir}, but {', '.join(failed)} failed ({reasons}); "
            f"see {runfolder.MANIFEST}'s diagnostics"
        )


class Skipped(Exception):
    """A diagnostic that does not apply to this model (recorded as {"skipped": reason})."""


def _injected(name: str) -> None:
    wanted = os.environ.get(INJECT, "")
    for item in filter(None, (part.strip() for part in wanted.split(","))):
        target, _, how = item.partition(":")
        if target == name:
            if how == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            raise RuntimeError(f"{INJECT}={item}: injected failure")


def pending(wanted: dict[str, bool]) -> dict[str, str]:
    """The manifest's `diagnostics` before any has run: "pending" or "skipped" (not asked for)."""
    return {name: "pending" if wanted.get(name) else "skipped" for name in NAMES}


def run(run_dir: Path, manifest: dict, steps: dict[str, Callable[[], dict | None]]) -> dict[str, str]:
    """Run each step that manifest["diagnostics"] has pending, in NAMES order, recording its
    outcome in manifest.json after each. A step returns None or a dict to merge into the
    manifest (the audit's summary). Returns {name: reason} of the failed ones."""
    failed: dict[str, str] = {}
    for name in NAMES:
        if manifest["diagnostics"].get(name) != "pending":
            continue
        try:
            _injected(name)
            extra = steps[name]()
        except Skipped as reason:
            log.warning("WARNING: no %s: %s", name, reason)
            manifest["diagnostics"][name] = {"skipped": str(reason)}
        except (Exception, MemoryError) as error:  # noqa: BLE001 - any failure here spares the model
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            log.warning("WARNING: %s failed (%s); the model and the rest of the run folder are kept", name, reason)
            manifest["diagnostics"][name] = {"failed": reason}
            failed[name] = reason
        else:
            manifest.update(extra or {})
            manifest["diagnostics"][name] = "ok"
        runfolder.write_json(run_dir / runfolder.MANIFEST, manifest)
    return failed


EXPORT_INPUTS = (
    runfolder.MODEL,
    runfolder.LABELS,
    runfolder.SPLIT,
    runfolder.CONFIG,
    runfolder.DECISION,
)  # the last two when there


def exports_into(run_dir: Path, formats: tuple[str, ...], benchmark: bool = False) -> None:
    """export_run in a hidden folder beside the run's files, the results moved in when it is
    done: an export killed halfway leaves nothing under a real name."""
    from trainer.errors import CheckFailed
    from trainer.export import export_run

    staging = run_dir / ".exports.partial"
    remove(staging)
    staging.mkdir()
    try:
        for name in EXPORT_INPUTS:
            if (run_dir / name).is_file() or name not in (runfolder.CONFIG, runfolder.DECISION):
                link_or_copy(run_dir / name, staging / name)
        error = None
        try:
            export_run(staging, formats, benchmark=benchmark)
        except CheckFailed as failure:  # exports.json is written; the files are moved in all the same
            error = str(failure).replace(str(staging), str(run_dir))
        for made in sorted(staging.iterdir()):
            if made.name not in EXPORT_INPUTS:
                target = run_dir / made.name
                remove(target)
                os.replace(made, target)
        if error:
            raise CheckFailed(error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
