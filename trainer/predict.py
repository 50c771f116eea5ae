"""Predict labels for images with a trained run: ImagePath,PredictedLabel,Score."""

from __future__ import annotations

import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import cells, decision, runfolder
from trainer.atomic import replacing, sha256_of
from trainer.data.images import load_image
from trainer.data.layout import is_image_name, special_kind, walk_files
from trainer.data.pipeline import PARALLEL, make_dataset, prefetched
from trainer.data.rows import read_csv_rows
from trainer.data.split import learnt_from
from trainer.errors import ImageError, InputError, counted
from trainer.export import runtimes
from trainer.pooling import custom_objects
from trainer.progress import progress

log = logging.getLogger("trainer")


@dataclass
class Run:
    """A model to predict with, whatever format it was loaded from. forward: float32 pixels
    [n, size, size, 3] (0-255) -> probabilities [n, classes]."""

    path: Path
    forward: object
    labels: list[str]
    image_size: int
    model: object = None  # the Keras model, when loaded from a run folder or a .keras file
    decision: object = decision.ARGMAX  # the rule from probabilities to a label (decision.json beside it)

    def predict(self, paths: list[str], batch_size: int = 32) -> np.ndarray:

        if not paths:
            return np.zeros((0, len(self.labels)))
        dataset = make_dataset(paths, None, self.image_size, batch_size)
        return np.concatenate([np.asarray(self.forward(batch.numpy())) for batch in dataset])


TRUST_GRAPH = (
    "which can read and write files on this machine; pass --trust-graph if you or this bundle made it, "
    "or give the run folder or its model.keras (Keras loads it in safe mode)"
)


def load_run(location: str | Path, quiet: bool = False, trust_graph: bool = False) -> Run:
    """A run folder (model.keras + labels.txt), a .keras file, a SavedModel folder or a .tflite
    file, with labels.txt beside the file, or in or beside the SavedModel folder; with the
    operating point of decision.json in the run folder, when the run chose one (said in one
    line unless quiet). A run folder's model.keras comes first, loaded in Keras's safe mode; a
    SavedModel, or a .tflite file carrying TensorFlow operations, is a graph that runs as it is
    written, so only with trust_graph (RELIABILITY.md's trust model). A published folder's files
    are checked against published.json's hashes: a damaged one is refused in one line."""
    location = Path(location)
    _check_published(location if location.is_dir() else location.parent)
    run = _load(location, trust_graph)
    run.decision = decision.read(run.path, run.labels)
    if run.decision is not decision.ARGMAX and not quiet:
        log.info("deciding %s (%s)", run.decision.describe(), run.path / decision.DECISION)
    return run


def _load(location: Path, trust_graph: bool) -> Run:
    if location.is_dir() and not (location / runfolder.MODEL).is_file() and (location / "saved_model.pb").is_file():
        if not trust_graph:
            raise InputError(f"--model: {location} is a SavedModel: predicting runs the TensorFlow graph stored in it, "
                             f"{TRUST_GRAPH}")  # fmt: skip
        return _load_saved_model(location)
    if location.suffix == ".tflite":
        if not trust_graph and location.is_file() and runtimes.runs_a_graph(location):
            ops = ", ".join(runtimes.tensorflow_ops(location)[:3])
            raise InputError(f"--model: {location} carries TensorFlow operations ({ops}) that run as they are written, "
                             f"{TRUST_GRAPH}")  # fmt: skip
        return _load_tflite(location)
    run_dir = location.parent if location.suffix == ".keras" else location
    model_path = location if location.suffix == ".keras" else location / runfolder.MODEL
    if not model_path.is_file():
        raise InputError(
            f"--model: {model_path} not found; pass a run folder, a .keras file, a SavedModel folder or a .tflite file"
        )
    if not (run_dir / runfolder.LABELS).is_file():
        raise InputError(f"--model: {run_dir / runfolder.LABELS} not found; the run folder is incomplete")
    model = load_keras(model_path)
    labels = runfolder.read_labels([run_dir / runfolder.LABELS], model_path)
    _check_outputs(labels, model.output_shape[-1], run_dir / runfolder.LABELS)
    return Run(run_dir, lambda images: model.predict(images, verbose=0), labels, int(model.input_shape[1]), model)


def load_keras(path: Path):
    """A .keras file as a model; a damaged or cut-short one is one line naming it (Keras says
    "File not found" of a truncated file that is there)."""
    import keras

    try:
        # Safe mode (Keras's default, said here so that no change of default can lift it): a
        # Lambda layer's code in a .keras file from elsewhere is refused, never run.
        return keras.models.load_model(path, compile=False, safe_mode=True, custom_objects=custom_objects())
    except (ValueError, OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
        if "arbitrary code" in str(error) or "safe_mode" in str(error):
            raise InputError(
                f"{path}: refused by Keras's safe mode: it holds code (a Lambda layer's function) that would run as it "
                "loads; a model from elsewhere must be plain layers: train it here"
            ) from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise InputError(
            f"{path}: not a readable Keras model, damaged or cut short ({reason}); {runfolder.DAMAGED}"
        ) from None


def _check_published(folder: Path) -> None:
    """A published folder (published.json beside the files) holds each file with the hash it was
    published with; a file that differs is damage (or a change by someone else), refused. The
    hashes prove nothing against whoever can write the folder: they catch damage, not intent."""
    record = runfolder.read_json(folder / "published.json") if (folder / "published.json").is_file() else {}
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    for name in (runfolder.MODEL, runfolder.LABELS, decision.DECISION):
        if name in files and (folder / name).is_file() and sha256_of(folder / name) != files[name]:
            raise InputError(f"{folder / name}: damaged, it differs from what was published (published.json); "
                             f"publish the run again, or use {folder.name}.previous")  # fmt: skip


def _check_outputs(labels: list[str], outputs: int, labels_path: Path) -> None:
    if outputs != len(labels):
        raise InputError(f"{labels_path}: {len(labels)} labels for a model with {outputs} outputs")


def _load_saved_model(folder: Path) -> Run:
    labels = runfolder.read_labels([folder / runfolder.LABELS, folder.parent / runfolder.LABELS], folder)
    forward, size, outputs = runtimes.saved_model_forward(folder)
    _check_outputs(labels, outputs, folder)
    return Run(folder.parent, forward, labels, size)


def _load_tflite(path: Path) -> Run:
    if not path.is_file():
        raise InputError(f"--model: {path} not found")
    labels = runfolder.read_labels([path.with_name(runfolder.LABELS)], path)
    try:
        forward = runtimes.tflite_forward(path)
    except ValueError as error:
        raise InputError(f"--model: {path} is not a TensorFlow Lite model ({str(error).splitlines()[0]})") from None
    interpreter = forward.interpreter
    size = int(interpreter.get_input_details()[0]["shape_signature"][1])
    _check_outputs(labels, int(interpreter.get_output_details()[0]["shape"][-1]), path)
    return Run(path.parent, forward, labels, size)


def collect_images(inputs: list[str], allow_outside: bool = False) -> list[Path]:
    """Image files as given, every image under a folder, or the ImagePath column of a CSV: the
    files and folders given are the user's own choice; a CSV's rows, like a folder's links, stay
    inside its folder unless allow_outside (a CSV from elsewhere must not read other files)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files, skipped = walk_files(path, contained=not allow_outside)  # the rule for folders (trainer.data.layout)
            for item in skipped:
                log.warning("WARNING: skipped %s", item)
            found = [path.joinpath(*parts) for parts in files if is_image_name(parts[-1])]
            if not found:
                raise InputError(f"{path}: no images in this folder")
            paths += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            rows, _ = read_csv_rows(path, path.parent, allow_outside)
            paths += [row.path for row in rows]
        elif path.is_file() or special_kind(path) is not None:
            paths.append(path)  # a pipe or device is a row with its error, never opened
        else:
            raise InputError(f"{path}: no such file or folder")
    return paths


def predict_images(run: Run, inputs: list[str], output: str | None, batch_size: int = 32,
                   allow_outside: bool = False) -> dict:  # fmt: skip
    """Classify every image into ImagePath,PredictedLabel,Score,Error rows, a batch at a time:
    decoding runs ahead on parallel threads, each batch's rows are written (and flushed) as it
    is predicted, and memory holds one batch whatever the number of images. A file that cannot
    be read is a row with its Error and no prediction, not the end of the job. Each cell is safe
    to open in a spreadsheet (trainer/cells.py). With --output the CSV is written under a hidden
    partial name and renamed when every row is in. Returns {"images", "errors"}."""
    paths = collect_images(inputs, allow_outside)
    counts = {"images": len(paths), "errors": 0}
    if output:
        with replacing(Path(output)) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
            counts["errors"] = _stream(run, paths, batch_size, handle)
    else:
        counts["errors"] = _stream(run, paths, batch_size, sys.stdout)
    if counts["errors"]:
        log.warning("WARNING: %d of %s could not be read; their rows name the error", counts["errors"],
                    counted(len(paths), "image"))  # fmt: skip
    _say_seen(run, paths)
    return counts


def _say_seen(run: Run, paths: list[Path]) -> None:
    """A note when some images are ones the model trained or validated on (same content, by
    hash): their predictions show what it learnt, not how it does on new photos."""
    learnt = learnt_from(run.path / runfolder.SPLIT)
    if not learnt:
        return
    where = []
    for path in paths:
        try:
            where.append(learnt.get(sha256_of(path)))
        except OSError:
            where.append(None)
    seen = {name: where.count(name) for name in ("train", "validation")}
    if any(seen.values()):
        log.warning(
            "note: %d of the %s given %s the model was trained on (%d) or validated on (%d): its predictions "
            "there are no test of it",
            sum(seen.values()), counted(len(paths), "image"), "is one" if sum(seen.values()) == 1 else "are ones",
            seen["train"], seen["validation"],
        )  # fmt: skip


def _stream(run: Run, paths: list[Path], batch_size: int, handle) -> int:

    handle.write(cells.line(["ImagePath", "PredictedLabel", "Score", "Error"]))
    errors = 0
    batches = (len(paths) + batch_size - 1) // batch_size
    start = 0
    for images, problems in progress(_decoded(paths, run.image_size, batch_size), total=batches, desc="predict"):
        good = [index for index, problem in enumerate(problems) if not problem]
        probabilities = np.asarray(run.forward(images[good])) if good else np.zeros((0, len(run.labels)))
        scores = dict(zip(good, probabilities, strict=True))
        decided = dict(zip(good, run.decision.predict(probabilities), strict=True))
        for index, problem in enumerate(problems):
            path = str(paths[start + index])
            if problem:
                errors += 1
                handle.write(cells.line([path, "", "", problem]))
            else:
                label = int(decided[index])
                handle.write(cells.line([path, run.labels[label], f"{float(scores[index][label]):.6f}", ""]))
        handle.flush()
        start += len(problems)
    return errors


def _decoded(paths: list[Path], image_size: int, batch_size: int):
    """Batches of (float32 pixels, per image "" or the reason it could not be read)."""
    import tensorflow as tf

    blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)

    def decode(path: bytes):
        try:
            return load_image(path.decode(), image_size), np.bytes_(b"")
        except ImageError as error:
            return blank, np.bytes_(str(error).split(": ", 1)[-1].encode())

    def load(path):
        image, problem = tf.numpy_function(decode, [path], (tf.uint8, tf.string), stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, problem

    dataset = tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
    dataset = prefetched(dataset.map(load, num_parallel_calls=PARALLEL, deterministic=True).batch(batch_size))
    for images, problems in dataset:
        yield images.numpy().astype(np.float32), [problem.decode() for problem in problems.numpy()]
