"""publish: a run's artifacts copied to the Drive folder (a local folder off Colab).

    TO/<model name>/            the published run: every artifact plus published.json
    TO/<model name>.previous/   what was published before it

The copy goes to a hidden temporary folder, every file's SHA-256 is checked against the run,
and only then is it renamed into place, so an interruption never leaves a partial model where a
good one was; the previous version is kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from scripts.archives import sha256_of
from scripts.check import drive_folder, in_colab
from scripts.steps import Context, Result, StepFailed, changed, ok

RECORD = "published.json"


def latest_run(runs_dir: Path) -> Path:
    runs = [p for p in runs_dir.iterdir() if p.is_dir() and (p / "model.keras").is_file()] if runs_dir.is_dir() else []
    if not runs:
        raise StepFailed(f"no trained run in {runs_dir}", "run `invoke train` first, or pass --run RUN_DIR")
    return max(runs, key=lambda p: (p / "model.keras").stat().st_mtime)


def default_destination(ctx: Context, drive_subfolder: str, local_folder: str) -> Path:
    """The folder in Drive when Drive is mounted; off Colab a local folder; on Colab without
    Drive, an error that says how to mount it."""
    mounted = drive_folder()
    if mounted is not None:
        return mounted / drive_subfolder
    if in_colab():
        raise StepFailed(
            "Google Drive is not mounted", "run the notebook's first cell (drive.mount), or pass --to a folder"
        )
    return ctx.root / local_folder


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD
    }


def publish(
    ctx: Context,
    run: str | None = None,
    to: str | None = None,
    runs_dir: str = "runs",
    model_name: str = "ud-cd-classifier",
    drive_subfolder: str = "ud-cd-classifier",
    local_folder: str = "published",
) -> Result:
    run_dir = Path(run) if run else latest_run(ctx.root / runs_dir)
    if not (run_dir / "model.keras").is_file():
        raise StepFailed(f"--run: {run_dir} has no model.keras", "pass a run folder written by `invoke train`")
    destination = Path(to) if to else default_destination(ctx, drive_subfolder, local_folder)
    current = destination / model_name
    previous = destination / f"{model_name}.previous"
    try:
        record = json.loads((current / RECORD).read_text())
    except (OSError, ValueError):
        record = None
    source_hashes = hashes(run_dir)
    if record and record.get("files") == source_hashes:
        return ok(f"{run_dir.name} is already published in {current}")
    if ctx.dry_run:
        return ctx.would(f"copy {run_dir} to {current}")
    try:
        destination.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_name}.partial-", dir=destination))
    except OSError as error:
        raise StepFailed(
            f"cannot write to {destination} ({error.strerror})",
            f"the run stays in {run_dir}; fix the folder and rerun `invoke publish`",
        ) from None
    try:
        staging.chmod(0o755)
        for source in sorted(run_dir.rglob("*")):
            target = staging / source.relative_to(run_dir)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        copied = hashes(staging)
        if copied != source_hashes:
            bad = sorted(name for name in source_hashes if copied.get(name) != source_hashes[name])
            raise StepFailed(
                f"the copy in {destination} differs from the run: {', '.join(bad)}", "rerun `invoke publish`"
            )
        (staging / RECORD).write_text(
            json.dumps(
                {
                    "run": str(run_dir.resolve()),
                    "published": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "files": source_hashes,
                },
                indent=2,
            )
            + "\n"
        )
        if current.exists():
            shutil.rmtree(previous, ignore_errors=True)
            current.rename(previous)
        staging.rename(current)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise StepFailed(
            f"publishing to {destination} failed ({error.strerror or error})",
            f"the run stays in {run_dir}; fix the folder and rerun `invoke publish`",
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return changed(
        f"{run_dir.name} -> {current}" + (f" (previous kept in {previous.name})" if previous.exists() else "")
    )
