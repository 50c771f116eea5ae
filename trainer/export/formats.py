"""Exports other runtimes load, each checked against Keras on the same test images.

    saved_model/        TF Serving, TensorFlow.NET, ML.NET (through the C library)
    model.tflite        TensorFlow Lite, float32, with TFLite metadata (labels, normalization) that
                        MediaPipe Tasks and ML Kit read (trainer/export/tflite_metadata.py)
    model_int8.tflite   TensorFlow Lite, dynamic-range quantized (int8 weights, float input/output)
    model.onnx          ONNX Runtime, ML.NET's ApplyOnnxModel (converted by Keras's exporter,
                        which drives tf2onnx)

Every file has one input and one output (the serving signature, also in the README):

    input  "image"          float32 [batch, size, size, 3], RGB pixel values 0-255, resized
                            to the model's size; normalization is inside the model
    output "probabilities"  float32 [batch, classes], softmax, in labels.txt order

The formats are the rows of trainer/exports.py (this module holds their writers). The parity
check runs up to five test images through Keras and then through every row (the SavedModel
twice: in Python, and through the TensorFlow C library via ctypes in a separate process) and
compares the probabilities. exports.json records each leg.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer import decision, exports, runfolder
from trainer.atomic import link_or_copy, partial_folder, remove, replacing, write_atomically
from trainer.data.pipeline import decoded
from trainer.data.split import read_split
from trainer.errors import CheckFailed, InputError
from trainer.export import tflite_metadata
from trainer.export.benchmark import benchmark_exports
from trainer.export.runtimes import resolve, runs_a_graph
from trainer.exports import ExportFormat
from trainer.predict import load_run
from trainer.quiet import quiet

log = logging.getLogger("trainer")

CHECK_IMAGES = 5


@dataclass
class Leg:
    name: str
    file: str
    tolerance: float
    max_difference: float | None = None
    top_class_agrees: bool | None = None
    ok: bool = False
    detail: str = ""
    enforced: bool = True  # False: reported and warned about, but no failure (the int8 model)


# ---------------------------------------------------------------------------------------------
# Writing


def write_saved_model(model, destination: Path) -> None:
    """A SavedModel whose serving_default signature is image -> probabilities."""
    import keras
    import tensorflow as tf

    size = model.input_shape[1:3]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {"probabilities": model(image, training=False)},
        input_signature=[tf.TensorSpec([None, *size, 3], tf.float32, name="image")],
    )
    with partial_folder(destination, replace=True) as partial, quiet():
        archive.write_out(str(partial), verbose=False)


def write_tflite(saved_model: Path, destination: Path, quantize: bool) -> None:
    """Convert, then add TFLite metadata (trainer.export.tflite_metadata) from the run folder the file
    goes into: its labels.txt packed in, so MediaPipe Tasks and ML Kit load the file alone."""
    import tensorflow as tf

    with quiet():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights
        flat = converter.convert()
    run_dir = destination.parent
    labels = runfolder.read_labels([run_dir / runfolder.LABELS], destination)
    config = runfolder.read_json(run_dir / runfolder.CONFIG)
    with quiet():
        size = int(tf.lite.Interpreter(model_content=flat).get_input_details()[0]["shape"][1])
    described = (f"{config.get('backbone', 'image')} classifier of {', '.join(labels)}"
                 f"{', int8 weights' if quantize else ''}, trained by the trainer bundle")  # fmt: skip
    metadata = tflite_metadata.model_metadata(config.get("model_name", destination.stem), described,
                                              runfolder.LABELS, size)  # fmt: skip
    try:
        flat = tflite_metadata.attach(flat, metadata, {runfolder.LABELS: ("\n".join(labels) + "\n").encode()})
    except (ValueError, IndexError, struct.error) as error:  # a converter's layout we do not know
        log.warning("WARNING: %s written without TFLite metadata (%s: %s): TensorFlow Lite loads it, MediaPipe "
                    "Tasks will not", destination.name, type(error).__name__, error)  # fmt: skip
    write_atomically(destination, flat)


def model_metadata(run_dir: Path) -> dict[str, str]:
    """What a file's own metadata should say of the run (ONNX metadata_props): the labels in
    output order, the input's convention and, with --target-recall, the decision rule."""
    import json

    found = {
        "labels": json.dumps(runfolder.read_labels([run_dir / runfolder.LABELS], run_dir)),
        "input": "image: float32 [batch, size, size, 3], RGB 0-255; normalization is inside the model",
    }
    point = runfolder.read_json(run_dir / decision.DECISION)
    if point:
        keys = ("label", "index", "threshold", "target_recall", "rule")
        found["decision"] = json.dumps({key: point[key] for key in keys})
    return found


def write_onnx(model, destination: Path, metadata: dict[str, str] | None = None) -> None:
    """Keras's own ONNX exporter; the output is then named "probabilities" like the others, and
    `metadata` goes into the model's metadata_props."""
    import onnx

    # Keras's exporter refuses a loaded model that has never been called ("It must be called at
    # least once before export"); the SavedModel export, when it runs first, calls it.
    model(np.zeros((1, *model.input_shape[1:]), dtype=np.float32))
    with replacing(destination, suffix=".onnx") as temporary:
        with quiet():
            model.export(str(temporary), format="onnx", verbose=False)
        graph = onnx.load(str(temporary))
        old = graph.graph.output[0].name
        for node in graph.graph.node:
            node.output[:] = ["probabilities" if name == old else name for name in node.output]
        graph.graph.output[0].name = "probabilities"
        if metadata:
            onnx.helper.set_model_props(graph, metadata)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(temporary))


# The table's writers (trainer/exports.py): (model, destination, saved_model) -> None, where
# saved_model() gives a SavedModel of the model to convert from.


def saved_model_file(model, destination: Path, saved_model: Callable[[], Path]) -> None:
    write_saved_model(model, destination)


def tflite_file(model, destination: Path, saved_model: Callable[[], Path]) -> None:
    write_tflite(saved_model(), destination, quantize=False)


def tflite_int8_file(model, destination: Path, saved_model: Callable[[], Path]) -> None:
    write_tflite(saved_model(), destination, quantize=True)


def onnx_file(model, destination: Path, saved_model: Callable[[], Path]) -> None:
    write_onnx(model, destination, model_metadata(destination.parent))


# ---------------------------------------------------------------------------------------------
# The check


def check_images(run_dir: Path, count: int = CHECK_IMAGES) -> list[str]:
    """Up to `count` test images of the run (then validation, then training ones), still on disk."""

    split = run_dir / runfolder.SPLIT
    if not split.is_file():
        raise InputError(f"{run_dir}: no split.csv, so no test images to check the exports with")
    parts = read_split(split)
    rows = [row for name in ("test", "validation", "train") for row in parts[name] if row.path.is_file()]
    if not rows:
        raise InputError(f"{split}: none of the listed images is on disk; the exports cannot be checked")
    # Round-robin over the labels, so that every class is checked when there are few.
    by_label: dict[str, list] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    chosen = []
    while len(chosen) < min(count, len(rows)):
        for queue in by_label.values():
            if queue and len(chosen) < count:
                chosen.append(str(queue.pop(0).path))
    return chosen


def compare(name: str, file: str, reference: np.ndarray, values: np.ndarray, tolerance: float) -> Leg:
    difference = float(np.abs(values.astype(np.float64) - reference).max())
    same_top = values.argmax(axis=1) == reference.argmax(axis=1)
    # Where Keras's two best classes are closer than the tolerance, either top class is within it.
    ordered = np.sort(reference, axis=1)
    close_call = ordered[:, -1] - ordered[:, -2] <= 2 * tolerance if reference.shape[1] > 1 else same_top
    agrees = bool(np.all(same_top | close_call))
    ok = difference <= tolerance and agrees
    return Leg(name, file, tolerance, difference, agrees, ok)


EXPORT_INPUTS = (runfolder.MODEL, runfolder.LABELS, runfolder.SPLIT, runfolder.CONFIG, runfolder.DECIDED,
                 runfolder.DECISION)  # fmt: skip
OPTIONAL_INPUTS = (runfolder.CONFIG, runfolder.DECIDED, runfolder.DECISION)


def graphs_in(run_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """The exports of these formats in run_dir whose check would run a graph stored in them (a
    SavedModel, a .tflite file with TensorFlow operations: trainer.export.runtimes.runs_a_graph)."""
    files = dict.fromkeys(row.file for row in exports.FORMATS if row.word in formats)
    return [run_dir / name for name in files if (run_dir / name).exists() and runs_a_graph(run_dir / name)]


def export_run(run_dir: str | Path, formats: tuple[str, ...] | None = None, check: bool = True,
               write: bool = True, benchmark: bool = False) -> dict:  # fmt: skip
    """(Re)write a run's exports and check them against Keras; returns exports.json's content
    (written too). formats: --export's words (None: every one). What is written goes to a
    hidden folder beside the run's files and is moved in when done, so an export killed halfway
    leaves nothing under a real name. write=False checks the exports already in the folder
    (after copying them, say); benchmark: each format's test accuracy and latency too
    (trainer.export.benchmark). Raises CheckFailed when any leg disagrees or fails, after
    writing exports.json and moving in what was written. The after-training diagnostic and
    `python -m trainer export` both call this."""
    run_dir = Path(run_dir)
    formats = exports.export_words() if formats is None else formats
    if not write:
        return _export_in(run_dir, formats, check, False, benchmark)
    staging = run_dir / ".exports.partial"
    remove(staging)
    staging.mkdir()
    try:
        for name in EXPORT_INPUTS:
            if (run_dir / name).is_file() or name not in OPTIONAL_INPUTS:
                link_or_copy(run_dir / name, staging / name)
        error = None
        try:
            result = _export_in(staging, formats, check, True, benchmark)
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
    return result


def _export_in(run_dir: Path, formats: tuple[str, ...], check: bool, write: bool, benchmark: bool) -> dict:
    run = load_run(run_dir, quiet=True)
    if run.model is None:
        raise InputError(f"{run_dir}: pass a run folder (with model.keras) to export from")
    chosen = [row for row in exports.FORMATS if row.word in formats]
    if write:
        ready, legs = write_exports(run.model, run_dir, chosen)
    else:
        for row in chosen:
            if not (run_dir / row.file).exists():
                raise InputError(f"{run_dir / row.file}: not found; run 'python -m trainer export {run_dir}'")
        ready, legs = chosen, []
    result = {
        "serving": {
            "input": {"name": "image", "dtype": "float32", "shape": [None, run.image_size, run.image_size, 3]},
            "input_range": "RGB pixel values 0-255",
            "output": {"name": "probabilities", "dtype": "float32", "shape": [None, len(run.labels)]},
            "labels": run.labels,
        },
        "checked": check,
    }
    if run.decision.index is not None:
        result["decision"] = {
            "rule": run.decision.describe(),
            "model.onnx": "metadata_props 'decision' (with 'labels')",
            "saved_model, model.tflite": "decision.json beside them in the run folder (TFLite metadata has one global "
            "score threshold, not one per class)",
        }
    if check:
        result["images"] = check_images(run_dir)
        images = decoded(result["images"], run.image_size)
        reference = run.model.predict(images, verbose=0).astype(np.float64)
        legs += check_exports(run_dir, ready, images, reference)
        result["keras"] = reference.round(6).tolist()
    result["legs"] = [asdict(leg) for leg in legs]
    if benchmark:
        result["benchmark"] = benchmark_exports(run_dir, run, ready)
    failed = [leg for leg in legs if leg.detail.startswith("export") or (check and leg.enforced and not leg.ok)]
    result["ok"] = not failed
    runfolder.write_json(run_dir / runfolder.EXPORTS, result)
    for leg in legs:
        if leg.max_difference is not None:
            log.info("export check %-21s max |difference| %.2e (tolerance %g), top class %s%s", leg.name,
                     leg.max_difference, leg.tolerance, "agrees" if leg.top_class_agrees else "DIFFERS",
                     f" [{leg.detail}]" if leg.detail else "")  # fmt: skip
    if failed:
        reasons = [
            f"{leg.name} " + (_difference(leg) if leg.max_difference is not None else leg.detail) for leg in failed
        ]
        raise CheckFailed(f"export check failed: {'; '.join(reasons)} (details in {run_dir / runfolder.EXPORTS})")
    return result


def write_exports(model, run_dir: Path, chosen: list[ExportFormat]) -> tuple[list[ExportFormat], list[Leg]]:
    """Write each chosen export: (the rows to check, a failed leg for each that could not be
    written). A row that writes nothing is checked when the file it runs is there."""
    written, failed = [], []
    with tempfile.TemporaryDirectory(prefix=".export-") as scratch:
        saved_model = _saved_model_source(model, run_dir / exports.SAVED_MODEL, Path(scratch) / exports.SAVED_MODEL)
        for row in chosen:
            if row.writer is None:
                continue
            started = time.perf_counter()
            try:
                resolve(row.writer)(model, run_dir / row.file, saved_model)
            except Exception as error:  # noqa: BLE001 - every failure becomes a failed leg, reported
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                detail = f"export failed: {type(error).__name__}: {first}"
                failed.append(Leg(row.name, row.file, row.tolerance, detail=detail))
                log.error("export %s failed: %s", row.file, first)
            else:
                written.append(row)
                log.info("exports: %s written (%s, %.0f s)", row.file, row.name, time.perf_counter() - started)
    ready = [row for row in chosen if row in written or (row.writer is None and (run_dir / row.file).exists())]
    return ready, failed


def _saved_model_source(model, own: Path, scratch: Path) -> Callable[[], Path]:
    """What a converter reads (TFLite converts from a SavedModel): `own` when this export has
    written it, else one written once into `scratch`; a failure to write that one is raised to
    every converter that asks."""
    failed: list[Exception] = []

    def source() -> Path:
        if own.is_dir():
            return own
        if not scratch.is_dir() and not failed:
            try:
                write_saved_model(model, scratch)
            except Exception as error:  # noqa: BLE001 - the converters' failure, each reported as its leg
                failed.append(error)
        if failed:
            raise failed[0]
        return scratch

    return source


def check_exports(run_dir: Path, rows: list[ExportFormat], images: np.ndarray, reference: np.ndarray) -> list[Leg]:
    """Each row's runtime on `images`, compared with Keras's `reference` probabilities."""
    legs = []
    for row in rows:
        try:
            with quiet():
                ran = resolve(row.runner)(run_dir / row.file, images)
            leg = compare(row.name, row.file, reference, ran.probabilities, row.tolerance)
        except Exception as error:  # noqa: BLE001
            legs.append(Leg(row.name, row.file, row.tolerance, detail=f"could not run: {error}"))
            continue
        leg.enforced, leg.detail = row.enforced, ran.detail
        if not leg.enforced and not leg.ok:
            # Quantization is lossy by design: how much it costs depends on the model (deep nets
            # with random weights lose everything), so it is reported and warned about; the
            # float legs are the parity check.
            log.warning("WARNING: %s differs from Keras by up to %.2f in probability; quantization costs this "
                        "model accuracy, so prefer model.tflite", row.file, leg.max_difference)  # fmt: skip
        legs.append(leg)
    return legs


def _difference(leg: Leg) -> str:
    top = "" if leg.top_class_agrees else ", another top class"
    return f"differs by {leg.max_difference:.2e} (tolerance {leg.tolerance:g}){top}"
