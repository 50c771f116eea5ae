"""The dataset's record (trainer/record.py) from invoke's side: where it lives for a model, what
`invoke train` writes into it, what `invoke decisions` shows and clears, and the notebook's
review cell.

It lives beside the model's published folder: on Colab that is on Drive, so it outlives a
runtime reset. Where no published folder is known (Colab with Drive not mounted), it lives in
the bundle's published/ folder, which a reset wipes, and the tasks say so.
"""

from __future__ import annotations

import html
from pathlib import Path

from scripts.dataset import dataset_name, model_of, read_manifest
from scripts.publish import published_folder
from trainer import record
from trainer.errors import counted

ROOT = Path(__file__).resolve().parent.parent


def record_folder(published: Path | None, model: str, local_folder: Path, say) -> Path:
    """The model's record: beside its published folder, else (Drive not mounted on Colab) in
    the bundle's local folder, said to be lost at a reset."""
    if published is not None:
        return record.beside(published)
    local = local_folder / f"{model}{record.SUFFIX}"
    say(f"Google Drive is not mounted, so the dataset's record (your review decisions) is kept in {local}, which a "
        "runtime reset wipes; mount Drive (the notebook's first cell) to keep it")  # fmt: skip
    return local


def summary(folder: Path) -> list[str]:
    """What `invoke decisions` shows: where the record is, the dataset's facts, what its
    published model was trained from, and its decisions (the latest about each image)."""
    info = record.read_info(folder)
    decisions = sorted(record.latest(record.read_decisions(folder)).values(), key=lambda d: (d.decided, d.file, d.line))
    lines = [f"the dataset's record: {folder}" + ("" if folder.is_dir() else " (empty: nothing decided yet)")]
    if info.get("source"):
        lines.append(f"  data: {info['source']} (unpacked in {info.get('folder')})")
    published = info.get("published") or {}
    if published:
        lines.append(f"  published: {published.get('run')} in {published.get('folder')}, {published.get('when')}, "
                     f"test accuracy {published.get('test_accuracy')}")  # fmt: skip
    kinds = [decision.kind for decision in decisions]
    counts = ", ".join(counted(kinds.count(kind), kind) for kind in ("relabel", "drop", "keep") if kinds.count(kind))
    lines.append(f"  decisions: {counted(len(decisions), 'image')}" + (f" ({counts})" if counts else ""))
    for decision in decisions[-10:]:
        lines.append(f"    {decision.decided[:19]}  {decision.label:<10} {decision.written}")
    if len(decisions) > 10:
        lines.append(f"    ... and {len(decisions) - 10} earlier (`invoke decisions --export FILE` writes them all)")
    aside = sorted(path.name for path in folder.glob("cleared-*")) if folder.is_dir() else []
    if aside:
        lines.append(f"  set aside by --clear: {', '.join(aside)} (move its files into decisions/ to restore them)")
    return lines


def clear(folder: Path) -> tuple[int, Path | None]:
    """Set the record's decisions aside (trainer/record.clear)."""
    return record.clear(folder)


def export(folder: Path, target: Path) -> int:
    """The latest decision about each image, as a corrections file (`--corrections` reads it)."""
    return record.export(folder, target)


# ---------------------------------------------------------------------------------------------
# colab.ipynb's review cell


def model_name(source: str, name: str = "") -> str:
    """The model's name as the job cell's `invoke setup --source SOURCE train --name NAME` gives
    it (scripts/training.train_config): NAME, else invoke.yaml's train.model_name (or
    INVOKE_TRAIN_MODEL_NAME), else the name kept for the dataset the data step fetched from
    SOURCE (an earlier --name), else the data's own (scripts/dataset.dataset_name)."""
    if name:
        return name
    settings = invoke_settings()
    configured = (settings.get("train") or {}).get("model_name")
    if configured:
        return configured
    manifest = read_manifest(ROOT / ((settings.get("data") or {}).get("dir") or "data"))
    if manifest is not None and manifest.get("source") == source:
        return model_of(manifest)
    return dataset_name(source)


def invoke_settings() -> dict:
    """invoke.yaml's sections with INVOKE_* over them, as the tasks read them."""
    from invoke import Config  # the notebook kernel has invoke once the job cell has run

    config = Config(project_location=str(ROOT))
    config.load_project()
    config.load_shell_env()
    return {section: dict(config.get(section) or {}) for section in ("data", "train", "publish")}


def review_cell(source: str, name: str = "") -> None:
    """The review form of this dataset's published model in the notebook, with the decisions
    its record holds; "Save to Drive" adds the new ones to the record."""
    from google.colab import output
    from IPython.display import HTML, display

    from trainer.diagnostics import review

    model = model_name(source, name)
    published = published_folder(invoke_settings()["publish"], model)
    if published is None:
        raise RuntimeError("Google Drive is not mounted: run the first cell, then the job cell, then this one")
    folder = record.beside(published)
    info = record.read_info(folder)
    if info.get("source") and info["source"] != source:
        said = f"{model}'s record says its data came from {info['source']}, not {source}"
        display(HTML(f"<p><b>Note:</b> {html.escape(said)}.</p>"))
    output.register_callback(review.SAVE_CALLBACK, lambda text: review.save_to_record(folder, text))
    display(HTML(review.published_form(published, folder)))
