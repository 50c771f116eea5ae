"""train as an idempotent step: the options built and checked once, the decision whether to
train, the trainer run on them, and its answer read.

`invoke train` makes one TrainConfig (train_config: the trainer's defaults, invoke.yaml's train
section with INVOKE_TRAIN_* over it, train.extra's flags, the task's flags) and hands it to
`python -m trainer train --config FILE --result FILE`; the trainer answers in the result file
(trainer/result.py). Before that, the decision finds a model already trained from the same
data, decisions in force, options, stack and code (trainer/fingerprint.py), published or
finished in runs/; deciding reads every image file (through a stat cache) and a few JSON files
and never imports TensorFlow, so a rerun after a Colab reset costs seconds, not a retraining.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from scripts.dataset import model_of
from scripts.decisions import record_folder
from scripts.kinds import KINDS, check_value
from scripts.steps import communicate, died_of
from trainer import record, runfolder, searchfile
from trainer import result as run_result
from trainer.atomic import sha256_of, write_atomically
from trainer.config import TrainConfig, flag, options
from trainer.errors import InputError
from trainer.fingerprint import decisions_in_force, listing, training_request, what_changed
from trainer.flags import parse_flags
from trainer.memory import gigabytes, tightest
from trainer.names import check_model

RECORD = "published.json"


@dataclass
class Decision:
    action: str  # "ok" (published already), "publish" (a finished run), "finish" (its diagnostics), or "train"
    where: Path | None = None
    reasons: list[str] = field(default_factory=list)


class NoData(Exception):
    """No --folder, and the data step has fetched nothing yet."""


def train_config(conf: dict, flags: dict, manifest: dict | None, name: str | None) -> TrainConfig:
    """`invoke train`'s options, checked once: the trainer's defaults, under invoke.yaml's train
    section (INVOKE_TRAIN_* over it, as invoke merges them), under train.extra's flags, under
    the task's flags; the image folder, CSV and model name from the data step's manifest when not
    given. SettingError or InputError naming the setting at fault; NoData when there is no
    folder at all. Run it where the trainer runs: relative paths are checked from there."""
    values = {}
    for option in options():
        where = f"invoke.yaml's train.{option.name} (or INVOKE_TRAIN_{option.name.upper()})"
        value = "" if conf.get(option.name) is None else check_value(where, KINDS[option.type], conf[option.name])
        if value != "":
            values[option.name] = value
    values.update(parse_flags(shlex.split(conf.get("extra") or ""), "invoke.yaml's train.extra"))
    for option in options():
        if flags.get(option.name) is not None:  # its type here; its range in TrainConfig.check, as the trainer says it
            value = check_value(flag(option.name), KINDS[option.type], flags[option.name])
            if value != "":
                values[option.name] = value
    if name:
        check_model(name, "--name")
    values["model_name"] = name or values.get("model_name")
    if "folder" not in values:
        if manifest is None:
            raise NoData("no dataset yet; run `invoke data` (or `invoke setup`) first, or pass --folder")
        values["folder"], values["file"] = manifest["folder"], values.get("file") or manifest.get("file")
        values["model_name"] = values["model_name"] or model_of(manifest)
    if not values["model_name"]:
        del values["model_name"]
    return TrainConfig(**values).check()


def remember_dataset(config: TrainConfig, manifest: dict | None) -> None:
    """The record's facts about the dataset (its name, its source as the data step fetched it,
    where it was unpacked), written when they change; a record that cannot be written costs the
    training nothing (the decisions in it are still read)."""
    if not config.record or config.record == "none":
        return
    folder = Path(config.record)
    facts = {"name": config.model_name, "folder": config.folder, "file": config.file}
    if manifest is not None and manifest.get("folder") == config.folder:
        facts["source"] = manifest.get("source")
    with contextlib.suppress(OSError, InputError):
        if {key: record.read_info(folder).get(key) for key in facts} != facts:
            record.update_info(folder, facts)


def as_flags(config: TrainConfig) -> str:
    """The options that differ from the trainer's defaults, as `python -m trainer train` flags:
    what a person reads (the trainer itself gets the file)."""
    words = []
    for option in options():
        value = getattr(config, option.name)
        if value == option.default:
            continue
        if option.type == "bool":
            words.append(flag(option.name) if value else "--no-" + flag(option.name)[2:])
        else:
            words += [flag(option.name), str(value)]
    return shlex.join(words)


def explicit(conf: dict, flags: dict) -> set[str]:
    """The options the user set for `invoke train` (invoke.yaml's train section, INVOKE_TRAIN_*,
    train.extra, the task's flags): each wins over a search's choice."""
    named = {option.name for option in options() if conf.get(option.name) not in (None, "")}
    named |= set(parse_flags(shlex.split(conf.get("extra") or ""), "invoke.yaml's train.extra"))
    return named | {name for name, value in flags.items() if value is not None}


def with_search(config: TrainConfig, chosen_by_user: set[str], say) -> TrainConfig:
    """The options with what the dataset's search chose (the record's search.json, written by
    `invoke tune`) for each option the user did not set, and that search named for the report;
    the options as they were when there is no search, or it cannot be read (which is said)."""
    if config.search or not config.record or config.record == "none":
        return config
    path = Path(config.record) / searchfile.STATE
    try:
        state = searchfile.read(path)
        if state is None or not state.get("chosen"):
            return config
        when = state["chosen"].get("when", "")
        values, said = searchfile.applied(config.to_dict(), chosen_by_user, state, f"the search of {when}")
        for line in said:
            say(f"train: {line}")
        return TrainConfig(**{**values, "search": str(path)}).check() if "not taken" not in " ".join(said) else config
    except InputError as error:
        say(f"train: WARNING: {error}; training without the search's choice")
        return config


def run_tuner(config: TrainConfig, budget: str, root: Path) -> int:
    """`python -m trainer tune` on these options, handed over as a file; its exit code."""
    folder = root / config.runs_dir
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".invoke-tune-", dir=folder) as scratch:
        options_file = Path(scratch) / "options.json"
        write_atomically(options_file, json.dumps(config.to_dict(), indent=2) + "\n")
        command = [sys.executable, "-m", "trainer", "tune", "--config", str(options_file), "--budget", str(budget)]
        process = subprocess.Popen(command, cwd=root)
        communicate(process)
        return process.returncode


def with_record(config: TrainConfig, published: Path | None, local_folder: Path, say) -> TrainConfig:
    """The options with the dataset's record beside the published model (scripts/decisions.py)."""
    folder = record_folder(published, config.model_name, local_folder, lambda message: say(f"train: {message}"))
    return replace(config, record=str(folder))


def comparing(config: TrainConfig, published: Path | None) -> TrainConfig:
    """The options with the published model (the one this run replaces) to compare with, unless
    the user named another (trainer/diagnostics/compare.py)."""
    if config.compare_with is not None or published is None or not runfolder.is_run(published):
        return config
    return replace(config, compare_with=str(published))


def finishing(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The options that finish the diagnostics of a run killed during them: its folder as --output."""
    return replace(config, output=str(run_dir))


def request_of(config: TrainConfig, root: Path, settle: bool = False):
    """(request, decisions in force) for these options, computed in `root` as the trainer will
    (relative paths mean what they mean to it), or None when the data or decisions are not
    usable: the trainer then runs and says why, as it would. settle: a legacy corrections file
    is taken into the record first (trainer/record.settle_legacy), as a run that writes does."""
    try:
        with contextlib.chdir(root):
            if settle and record_of(config) is not None:
                with contextlib.suppress(OSError):
                    record.settle_legacy(record_of(config))
            listed, files = listing(config)  # once: a 56,000-image folder on Drive is slow to list
            return training_request(config, files, listed), decisions_in_force(config, files, listed)
    except InputError:
        return None


def record_of(config: TrainConfig) -> Path | None:
    """The dataset's record these options name (invoke always names one; --record none: None)."""
    return None if config.record in (None, "none") else Path(config.record)


def keep_corrections(config: TrainConfig, decisions: record.InForce, root: Path) -> str:
    """--corrections FILE's decisions added to the dataset's record when no training follows
    (the published model, or a finished run, was trained with them): as training adds them, so
    that the next plain run has them too. Returns what to say ("" when nothing was added)."""
    try:
        with contextlib.chdir(root):
            added = record.keep_given(record_of(config), decisions)
    except OSError as error:
        return f"WARNING: {error.strerror or error} writing the dataset's record {config.record}: a later run will " \
               f"not have --corrections {config.corrections} unless it is given again"  # fmt: skip
    return f"{len(added)} decision(s) of {config.corrections} added to the dataset's record" if added else ""


def run_trainer(config: TrainConfig, root: Path) -> tuple[int, dict | None]:
    """`python -m trainer train` on these options, handed over as a file; its exit code and its
    answer (trainer/result.py), None when it wrote none (it ended before its model landed)."""
    folder = root / config.runs_dir
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".invoke-train-", dir=folder) as scratch:
        options, answer = Path(scratch) / "options.json", Path(scratch) / "result.json"
        write_atomically(options, json.dumps(config.to_dict(), indent=2) + "\n")
        command = [sys.executable, "-m", "trainer", "train", "--config", str(options), "--result", str(answer)]
        process = subprocess.Popen(command, cwd=root)
        communicate(process)
        return process.returncode, run_result.read(answer)


def landed_run(answer: dict | None, root: Path) -> Path | None:
    """The run folder the trainer answered with, if it holds a model: after a failed diagnostic,
    or a crash after the model landed, the run is still worth publishing."""
    if answer is None:
        return None
    folder = Path(answer["run_dir"])
    folder = folder if folder.is_absolute() else root / folder
    return folder if runfolder.is_run(folder) else None


def told(folder: Path, colab: bool) -> list[str]:
    """The lines that end `invoke train`, about the model in `folder` (its published folder, or
    the run folder with --no-publish): trainer/result.py's summary, with the review's way in."""
    if not (folder / runfolder.METRICS).is_file():
        return []
    answer = run_result.answer(folder, "done")
    review = ("run the notebook's review cell, then the job cell again" if colab else
              f"open {folder / runfolder.REPORT} and use its review form, then invoke train --corrections "
              "corrections.csv")  # fmt: skip
    return run_result.summary(answer, review=review)


LOWER_MEMORY = "--batch-size 16, --feature-augment none, --image-size 160 or --cache-megabytes 512"


def failure(returncode: int) -> str:
    """One line for a trainer that ended without a model. Exiting by itself, it has said why
    above; killed by a signal, it could not, so this says which, and for SIGKILL (what the
    kernel's out-of-memory killer sends, and Colab's when a runtime runs out of RAM) the peak the
    trainer reached, the limit the machine sets, and the options that take less memory."""
    if returncode > 0:
        return f"the trainer stopped ({died_of(returncode)}); its own message above says why"
    if returncode == -signal.SIGKILL:
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
