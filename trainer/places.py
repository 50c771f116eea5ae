"""Where a run's things go: the run folder, the workspace (feature cache and checkpoints), the
cache of downloaded ImageNet weights, and the dataset's record (its review decisions). On Colab,
with Drive mounted, all but the run folder live on Drive, so a reset runtime finds them again."""

from __future__ import annotations

import time
from pathlib import Path

from trainer.config import TrainConfig
from trainer.errors import InputError

DRIVE = Path("/content/drive/MyDrive")
PUBLISHED = Path("published")  # where models are published off Drive (invoke.yaml's publish.local_folder)
NO_RECORD = "none"


def drive_workspace(config: TrainConfig) -> Path:
    """MyDrive/<model name>-workspace: beside the published MyDrive/<model name>/, not inside
    it, since publishing swaps that folder whole."""
    return DRIVE / f"{config.model_name}-workspace"


def workspace(config: TrainConfig) -> Path:
    """--workspace, else MyDrive/<model name>-workspace with Drive mounted, else ./workspace."""
    place = Path(config.workspace) if config.workspace else drive_workspace(config) if DRIVE.is_dir() else None
    return _folder(place or Path("workspace"), "--workspace")


def _folder(path: Path, option: str) -> Path:
    if path.exists() and not path.is_dir():
        raise InputError(f"{option}: {path} is a file, not a folder; give a folder (it is made when missing)")
    return path


def weights_cache(config: TrainConfig) -> Path | None:
    """Where Keras should keep downloaded ImageNet weights: --weights-cache, else on Drive when
    it is mounted, else None (Keras's own ~/.keras)."""
    if config.weights_cache:
        return Path(config.weights_cache)
    return drive_workspace(config) / "keras" if DRIVE.is_dir() else None


def run_folder(config: TrainConfig) -> Path:
    """--output, which must not hold anything yet, or a new <runs-dir>/<time>-<backbone>."""
    if config.output:
        run_dir = Path(config.output)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise InputError(f"--output: {run_dir} already exists and is not empty; choose a new folder")
        return run_dir
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{config.backbone}"
    run_dir = _folder(Path(config.runs_dir), "--runs-dir") / stem
    suffix = 2
    while run_dir.exists():
        run_dir = Path(config.runs_dir) / f"{stem}-{suffix}"
        suffix += 1
    return run_dir


def record(config: TrainConfig) -> Path | None:
    """The dataset's record (trainer/record.py): --record, else beside where the model is
    published: MyDrive/<model name>-record with Drive mounted, else published/<model name>-record;
    None with --record none."""
    if config.record == NO_RECORD:
        return None
    if config.record:
        return _folder(Path(config.record), "--record")
    return _folder((DRIVE if DRIVE.is_dir() else PUBLISHED) / f"{config.model_name}-record", "--record")
