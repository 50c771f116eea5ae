"""train as an idempotent step: before training, find a model already trained from the same
data, options, stack and code (trainer/fingerprint.py), published or finished in runs/.

Deciding reads every image file and a few JSON files; it never imports TensorFlow, so a rerun
after a Colab reset costs seconds, not a retraining.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
from dataclasses import dataclass, field
from pathlib import Path

from scripts.steps import died_of
from trainer import runfolder
from trainer.atomic import sha256_of

RECORD = "published.json"


@dataclass
class Decision:
    action: str  # "ok" (published already), "publish" (a finished run), "finish" (its diagnostics), or "train"
    where: Path | None = None
    reasons: list[str] = field(default_factory=list)


def request_of(trainer_args: list[str], cwd: Path):
    """(config, request) for `python -m trainer train ARGS` run in cwd, or None when the options
    are not valid: the trainer then runs and says why."""
    from trainer.cli import train_config
    from trainer.errors import InputError
    from trainer.fingerprint import training_request

    try:
        with contextlib.chdir(cwd):  # relative paths mean what they mean to the trainer
            config = train_config(trainer_args)
            return config, training_request(config)
    except InputError:
        return None


def landed_run(stdout: str, cwd: Path) -> Path | None:
    """The run folder the trainer printed once its model was complete (its last line of
    output), if that folder holds a model: after a failed diagnostic, or a crash after the
    model landed, the run is still worth publishing."""
    lines = stdout.strip().splitlines()
    if not lines:
        return None
    folder = Path(lines[-1])
    folder = folder if folder.is_absolute() else cwd / folder
    return folder if runfolder.is_run(folder) else None


LOWER_MEMORY = "--batch-size 16, --feature-augment none, --image-size 160 or --cache-megabytes 512"


def failure(returncode: int) -> str:
    """One line for a trainer that ended without a model. Exiting by itself, it has said why
    above; killed by a signal, it could not, so this says which, and for SIGKILL (what the
    kernel's out-of-memory killer sends, and Colab's when a runtime runs out of RAM) the peak the
    trainer reached, the limit the machine sets, and the options that take less memory."""
    if returncode > 0:
        return f"the trainer stopped ({died_of(returncode)}); its own message above says why"
    if returncode == -signal.SIGKILL:
        from trainer.memory import gigabytes, tightest

        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        limit = tightest()
        machine = (
            ""
            if limit is None
            else f"; this machine allows {gigabytes(limit.limit_bytes or limit.available_bytes)} ({limit.source})"
        )
        return (
            f"the trainer was killed ({died_of(returncode)}), most likely for running out of memory: its resident "
            f"memory peaked at {gigabytes(peak)} (shared libraries included){machine}. Rerun with less, e.g. {LOWER_MEMORY} (invoke train --batch-size 16); "
            "the features already cached are kept"
        )
    if returncode in (-signal.SIGINT, -signal.SIGTERM):
        return f"the trainer was stopped ({died_of(returncode)}); rerun the same command to resume"
    return f"the trainer died ({died_of(returncode)}) without a message; rerun the same command to resume"


def exit_code(returncode: int) -> int:
    """The task's exit code for the trainer's: its own, or 128 + the signal that killed it."""
    return returncode if returncode > 0 else 128 - returncode


def diagnostics_outcome(run_dir: Path, returncode: int, published: bool = True) -> str:
    """One line for a run whose model landed but whose trainer did not exit 0."""
    try:
        states = json.loads((run_dir / runfolder.MANIFEST).read_text()).get("diagnostics", {})
    except (OSError, ValueError):
        states = {}
    failed = [name for name, state in states.items() if isinstance(state, dict) and "failed" in state]
    unfinished = [name for name, state in states.items() if state == "pending"]
    how = died_of(returncode)
    parts = [
        f"{', '.join(failed)} failed" if failed else "",
        f"{', '.join(unfinished)} never finished" if unfinished else "",
    ]
    said = "; ".join(part for part in parts if part) or "something after the model failed"
    return (
        f"the model in {run_dir} is complete{' and was published' if published else ''}, but the trainer ended "
        f"with {how}: {said} "
        f"(see {runfolder.MANIFEST}'s diagnostics, and the trainer's message above)"
    )


def recorded_request(folder: Path) -> dict | None:
    try:
        return json.loads((folder / runfolder.MANIFEST).read_text()).get("request")
    except (OSError, ValueError, AttributeError):
        return None


def published_whole(folder: Path) -> bool:
    """Every file published.json lists is there with its recorded SHA-256."""
    try:
        files = json.loads((folder / RECORD).read_text())["files"]
        return all(sha256_of(folder / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def pending_diagnostics(run: Path) -> list[str]:
    """The diagnostics a run's manifest still has pending: its trainer was killed during them."""
    try:
        states = json.loads((run / runfolder.MANIFEST).read_text()).get("diagnostics", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name, state in states.items() if state == "pending"]


def finished_run(runs_dir: Path, request: dict) -> Path | None:
    """The newest complete run in runs_dir trained from this request."""
    runs = [p for p in runs_dir.iterdir() if runfolder.is_run(p)] if runs_dir.is_dir() else []
    for run in sorted(runs, key=lambda p: (p / runfolder.MODEL).stat().st_mtime, reverse=True):
        if recorded_request(run) == request:
            return run
    return None


def decide(request: dict, published: Path | None, runs_dir: Path) -> Decision:
    from trainer.fingerprint import what_changed

    run = finished_run(runs_dir, request)
    if published is not None and recorded_request(published) == request and published_whole(published):
        if pending_diagnostics(published) and run is not None and pending_diagnostics(run):
            return Decision("finish", run)  # the published run's trainer was killed during them
        return Decision("ok", published)
    if run is not None:
        return Decision("finish" if pending_diagnostics(run) else "publish", run)
    if published is None or not (published / RECORD).is_file():
        return Decision("train", published, ["no model is published yet"])
    return Decision("train", published, what_changed(recorded_request(published), request))
