"""Running the diagnostics (trainer.diagnostics.table) after the model has landed, none of them
at its cost.

`trainer.train.main` first writes the run folder's core (the model, labels, config, split,
history, metrics, predictions, the manifest) whole, under a partial name renamed into place, and
prints its path; only then does `run` take each diagnostic in turn, the report last. Each one's
outcome is recorded in manifest.json's `diagnostics` as it ends: "ok", "skipped" or {"failed":
the one-line reason}. A diagnostic still "pending" was under way when the process died (a crash
in a native library cannot be caught), and its partial files never carry their real names: the
exports are written into a hidden folder and moved in when done, the audit's lists and the report
are written whole. A failure is a warning; the run then exits with EXIT_DIAGNOSTICS (3): the
model is good, something about it is missing, and `invoke train` publishes the run and says what
failed.

TRAINER_FAIL_DIAGNOSTIC=NAME[:crash] makes that diagnostic raise (or, with :crash, kill the
process with SIGSEGV) when it starts: the tests rehearse each failure with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from trainer import places, runfolder
from trainer.config import TrainConfig
from trainer.data.load import load_data
from trainer.diagnostics import report, table
from trainer.diagnostics.audit import average_pooled_features
from trainer.diagnostics.table import REPORT, Finished, Skipped
from trainer.errors import CheckFailed, InputError, is_machine_error, os_error_sentence
from trainer.fingerprint import training_request

log = logging.getLogger("trainer")

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


def _injected(name: str) -> None:
    wanted = os.environ.get(INJECT, "")
    for item in filter(None, (part.strip() for part in wanted.split(","))):
        target, _, how = item.partition(":")
        if target == name:
            if how == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            raise RuntimeError(f"{INJECT}={item}: injected failure")


def _report(finished: Finished) -> None:
    report.build(finished.run_dir)


def _doing(name: str, run_dir: Path) -> str:
    return f"writing {run_dir / runfolder.REPORT}" if name == REPORT else table.by_name(name).doing


def _tells(name: str, run_dir: Path) -> str:
    if name == REPORT:
        return str(run_dir / runfolder.REPORT)
    tells = table.by_name(name).tells
    return tells(run_dir) if tells is not None else "ok"


def run(finished: Finished, manifest: dict, only: tuple[str, ...] | None = None, stage=None) -> dict[str, str]:
    """Run each diagnostic that manifest["diagnostics"] has pending (or each of `only`, whatever
    its state), in the table's order and the report last, recording its outcome in
    manifest.json after each. `stage`: a trainer.stages.Stages that times each one. Returns
    {name: reason} of the failed ones."""
    steps = {row.name: row.run for row in table.DIAGNOSTICS} | {REPORT: _report}
    failed: dict[str, str] = {}
    states = manifest.setdefault("diagnostics", {})
    for name in table.names():
        if (only is None and states.get(name) != "pending") or (only is not None and name not in only):
            continue
        started = time.perf_counter()
        log.info("%s: %s", name, _doing(name, finished.run_dir))
        try:
            with stage(name) if stage is not None else contextlib.nullcontext():
                _injected(name)
                extra = steps[name](finished)
        except Skipped as reason:
            log.warning("WARNING: no %s: %s", name, reason)
            states[name] = {"skipped": str(reason)}
        except (Exception, MemoryError) as error:  # noqa: BLE001 - any failure here spares the model
            if is_machine_error(error):
                reason = os_error_sentence(error, where="the run folder's disk")
            else:
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            log.warning("WARNING: %s failed (%s); the model and the rest of the run folder are kept", name, reason)
            states[name] = {"failed": reason}
            failed[name] = reason
        else:
            manifest.update(extra or {})
            states[name] = "ok"
        try:
            runfolder.write_json(finished.run_dir / runfolder.MANIFEST, manifest)
        except OSError as error:  # the outcome is still said here, and in the exit code
            log.warning("WARNING: manifest.json not updated (%s)", os_error_sentence(error, finished.run_dir))
        if states[name] == "ok":  # told once the manifest holds what the diagnostic found
            log.info("%s: done in %.0f s: %s", name, time.perf_counter() - started, _tells(name, finished.run_dir))
    return failed


def redo(run_dir, names: tuple[str, ...], **settings) -> None:
    """Run these diagnostics again on a finished run folder, whatever their state (`python -m
    trainer export` and `report`), recording each outcome in its manifest.json. `settings`:
    Finished's (formats, check, write, benchmark). Raises InputError for a folder that is not a
    run, CheckFailed naming what failed."""
    run_dir = Path(run_dir)
    for needed in (runfolder.METRICS, runfolder.MODEL):
        if not (run_dir / needed).is_file():
            raise InputError(f"{run_dir}: no {needed}; pass a run folder written by 'trainer train'")
    config = TrainConfig.from_run(runfolder.read_json(run_dir / runfolder.CONFIG))
    manifest = runfolder.read_json(run_dir / runfolder.MANIFEST)
    finished = Finished(run_dir, config, places.workspace(config), **settings)
    if "report" in names and not (run_dir / runfolder.REPORT).is_file() and names != ("report",):
        names = tuple(name for name in names if name != REPORT)  # a run without a report gets none here
    failed = run(finished, manifest, only=names)
    if failed:
        raise CheckFailed("; ".join(failed.values()))


def finish(config: TrainConfig, run_dir: Path, workspace: Path) -> dict[str, str] | None:
    """The same `train` command rerun on a run folder whose diagnostics did not finish (the
    process was killed during them): run the ones still pending and return {name: reason} of
    those that failed. None when run_dir holds no such run: nothing pending, or a run trained
    from other data or options (the caller then refuses the folder as it is)."""
    manifest = runfolder.read_json(run_dir / runfolder.MANIFEST)
    pending = [name for name, state in manifest.get("diagnostics", {}).items() if state == "pending"]
    if not pending or not runfolder.is_run(run_dir):
        return None
    data = load_data(config)
    request = training_request(config, data.files, data.listed)
    if manifest.get("request") != request:
        return None
    log.info("%s holds this run's model; finishing its diagnostics: %s", run_dir, ", ".join(pending))
    decided = runfolder.read_json(run_dir / runfolder.DECIDED)
    features = None
    if config.audit:
        # The run's backbone's features of each image, average-pooled as the audit's always are,
        # from the workspace's cache (the run stored them, unless its --pooling is another).
        features = average_pooled_features(data.rows(), workspace, decided, config)
    finished = Finished(run_dir, config, workspace, data, None, features, config.export_benchmark)
    return run(finished, manifest)
