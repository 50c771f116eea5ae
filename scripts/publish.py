"""publish: a run's artifacts copied to the Drive folder (a local folder off Colab).

    TO/            the published run: every artifact plus published.json
    TO.previous/   what was published before it

TO is `MyDrive/NAME` when Drive is mounted, `published/NAME` in the bundle elsewhere, or `--to`;
NAME is the run's model name (its --model-name: `ud-cd-classifier` for the shipped photos, the
source's name for other data, see scripts/dataset.dataset_name), so each dataset's model has its
own folder, unless invoke.yaml's publish.folder names one for all. The copy goes to a hidden temporary folder beside it, every file's
SHA-256 is checked against the run, and only then does it take the published name, so an
interruption never leaves a partial model where a good one was. Where the filesystem can
(Linux's renameat2 RENAME_EXCHANGE: ext4, xfs, tmpfs), the new folder and the old one swap
names in one step, so TO always holds a whole model; elsewhere (Drive's FUSE mount) two renames
follow each other, and a run killed between them leaves the old model whole under .previous for
the rerun to replace.

TO's parent must exist: publishing never creates MyDrive (or a folder where an unmounted Drive
would be), it says to mount it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from scripts.check import drive_folder, in_colab
from scripts.steps import Context, Result, StepFailed, StepRefused, changed, ok
from trainer import record, runfolder
from trainer.atomic import partial_folder, remove_leftovers, sha256_of
from trainer.config import TrainConfig
from trainer.errors import InputError
from trainer.names import model_problem, shown

RECORD = "published.json"


def latest_run(runs_dir: Path) -> Path:
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and runfolder.is_run(p)] if runs_dir.is_dir() else []
    if not runs:
        raise StepFailed(f"no trained run in {runs_dir}", "run `invoke train` first, or pass --run RUN_DIR")
    return max(runs, key=lambda p: (p / runfolder.MODEL).stat().st_mtime)


def default_destination(ctx: Context, folder: str, local_folder: str) -> Path:
    """MyDrive/<folder> when Drive is mounted; off Colab <bundle>/<local_folder>/<folder>; on
    Colab without Drive, an error that says how to mount it."""
    mounted = drive_folder()
    if mounted is not None:
        return mounted / folder
    if in_colab():
        raise StepFailed(
            "Google Drive is not mounted", "run the notebook's first cell (drive.mount), or pass --to a folder"
        )
    return ctx.root / local_folder / folder


def published_folder(settings: dict, model: str) -> Path | None:
    """Where `invoke publish` puts the model `model`, from invoke.yaml's publish section
    (INVOKE_PUBLISH_* over it): its `to`, else its `folder` (or the model's name) under MyDrive,
    or under its local_folder off Colab; None on Colab without Drive, where that is not known."""
    if settings.get("to"):
        return Path(settings["to"])
    try:
        return default_destination(
            Context(), settings.get("folder") or model, settings.get("local_folder") or "published"
        )
    except StepFailed:
        return None


def model_name(run_dir: Path) -> str:
    """The name the run's model was saved under (config.json's model_name)."""
    try:
        name = json.loads((run_dir / runfolder.CONFIG).read_text()).get("model_name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and not model_problem(name) else TrainConfig().model_name


def _refuse_a_folder_of_the_users(current: Path, run_dir: Path) -> None:
    """Publishing swaps the folder aside and later deletes what it swapped: never a folder of the
    user's own (their images, say) that happens to have the model's name."""
    if current.is_dir() and not (current / RECORD).is_file() and any(current.iterdir()):
        raise StepRefused(
            f"{current} exists and is not a published model (no {RECORD} in it)",
            f"the run stays in {run_dir}; pass --name (or --to) for another folder, or move that one",
        )


def is_published(current: Path, run_files: dict[str, str], run_dir: Path) -> bool:
    """The record names the run's files, and each is there with the run's size."""
    try:
        record = json.loads((current / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if record.get("files") != run_files:
        return False
    try:
        return all((current / name).stat().st_size == (run_dir / name).stat().st_size for name in run_files)
    except OSError:
        return False


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD
    }


def publish(
    ctx: Context,
    run: str | None = None,
    to: str | None = None,
    runs_dir: str = "runs",
    folder: str | None = None,
    local_folder: str | None = None,
) -> Result:
    """`to`, or else `folder` (default: the run's model name) under MyDrive (or under
    local_folder off Colab)."""
    if folder and model_problem(folder):
        raise StepRefused(f"--name must be a folder name, and {shown(folder)} {model_problem(folder)}",
                          "give a plain name (--to takes a path)")  # fmt: skip
    run_dir = Path(run) if run else latest_run(ctx.root / runs_dir)
    if not runfolder.is_run(run_dir):
        raise StepRefused(f"--run: {run_dir} has no model.keras", "pass a run folder written by `invoke train`")
    current = Path(to) if to else default_destination(ctx, folder or model_name(run_dir), local_folder)
    previous = current.with_name(f"{current.name}.previous")
    destination = current.parent
    source_hashes = hashes(run_dir)
    if is_published(current, source_hashes, run_dir):
        return ok(f"{run_dir.name} is already published in {current}")
    _refuse_a_folder_of_the_users(current, run_dir)
    if ctx.dry_run:
        return ctx.would(f"copy {run_dir} to {current}")
    if not to and drive_folder() is None:
        (ctx.root / local_folder).mkdir(exist_ok=True)  # the bundle's own folder for models
    if not destination.is_dir():
        what = "is not a folder" if destination.exists() else "does not exist (is Google Drive mounted?)"
        raise StepFailed(
            f"{destination} {what}",
            f"mount Drive or create that folder; the run stays in {run_dir}; then rerun `invoke publish`",
        )
    try:
        remove_leftovers(destination, f".{current.name}.partial-", f".{current.name}.old-", f".{previous.name}.old-")
        with partial_folder(current, replace=True, keep_as=previous) as partial:
            _copy_verified(run_dir, partial, source_hashes, destination)
    except OSError as error:
        raise StepFailed(
            f"cannot write to {destination} ({error.strerror or error})",
            f"the run stays in {run_dir}; fix the folder and rerun `invoke publish`",
        ) from None
    remember_published(current, run_dir)
    return changed(
        f"{run_dir.name} -> {current}" + (f" (the one before is kept as {previous.name})" if previous.exists() else "")
    )


def _copy_verified(run_dir: Path, partial: Path, source_hashes: dict[str, str], destination: Path) -> None:
    """The run's files into the partial folder, each checked against its hash, then the record
    of what was published (published.json)."""
    for source in sorted(run_dir.rglob("*")):
        target = partial / source.relative_to(run_dir)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    copied = hashes(partial)
    if copied != source_hashes:
        bad = sorted(name for name in source_hashes if copied.get(name) != source_hashes[name])
        raise StepFailed(f"the copy in {destination} differs from the run: {', '.join(bad)}", "rerun `invoke publish`")
    record = {"run": str(run_dir.resolve()), "published": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": source_hashes}
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def remember_published(current: Path, run_dir: Path) -> None:
    """The dataset's record says what its published model was trained from (the run's request,
    which `invoke train` compares); a record that cannot be written costs the publish nothing."""
    manifest, metrics = (
        runfolder.read_json(run_dir / runfolder.MANIFEST),
        runfolder.read_json(run_dir / runfolder.METRICS),
    )
    with contextlib.suppress(OSError, InputError):
        record.update_info(record.beside(current), {"published": {
            "folder": str(current), "run": run_dir.name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "request_key": manifest.get("request_key"), "request": manifest.get("request"),
            "test_accuracy": metrics.get("accuracy"),
        }})  # fmt: skip
