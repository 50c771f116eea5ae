"""Exports other runtimes load, each checked against Keras on the same test images.

    saved_model/        TF Serving, TensorFlow.NET, ML.NET (through the C library)
    model.tflite        TensorFlow Lite, float32, with TFLite metadata (labels, normalization) that
                        MediaPipe Tasks and ML Kit read (trainer/tflite_metadata.py)
    model_int8.tflite   TensorFlow Lite, dynamic-range quantized (int8 weights, float input/output)
    model.onnx          ONNX Runtime, ML.NET's ApplyOnnxModel (converted by Keras's exporter,
                        which drives tf2onnx)

Every file has one input and one output (the serving signature, also in the README):

    input  "image"          float32 [batch, size, size, 3], RGB pixel values 0-255, resized
                            to the model's size; normalization is inside the model
    output "probabilities"  float32 [batch, classes], softmax, in labels.txt order

The parity check runs up to five test images through Keras and then through every export (the
SavedModel twice: in Python, and through the TensorFlow C library via ctypes in a separate
process) and compares the probabilities. exports.json records each leg.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer import runfolder, runtimes
from trainer.atomic import partial_folder, replacing, write_atomically
from trainer.errors import CheckFailed, InputError
from trainer.predict import load_run

log = logging.getLogger("trainer")

FORMATS = ("saved_model", "tflite", "onnx")
FLOAT_TOLERANCE = 1e-4  # float32 runtimes: the same arithmetic, different kernels
QUANTIZED_TOLERANCE = 0.1  # int8 weights move probabilities; a conversion bug moves them much more
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


def parse_formats(text: str) -> tuple[str, ...]:
    if text == "all":
        return FORMATS
    if text == "none":
        return ()
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in FORMATS]
    if unknown or not chosen:
        raise InputError(f"--export: {text!r}; use all, none, or a comma list of {', '.join(FORMATS)}")
    return chosen


# ---------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _quiet():
    """The converters print pages of progress, some of it from C++ straight to file descriptor
    2; send both Python's and the descriptors' output to a scratch file while they run."""
    with tempfile.TemporaryFile() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("tf2onnx").setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(scratch.fileno(), 1)
        os.dup2(scratch.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


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
    with partial_folder(destination, replace=True) as partial, _quiet():
        archive.write_out(str(partial), verbose=False)


def write_tflite(saved_model: Path, destination: Path, quantize: bool) -> None:
    """Convert, then add TFLite metadata (trainer.tflite_metadata) from the run folder the file
    goes into: its labels.txt packed in, so MediaPipe Tasks and ML Kit load the file alone."""
    import tensorflow as tf

    from trainer import tflite_metadata

    with _quiet():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights
        flat = converter.convert()
    run_dir = destination.parent
    labels = runfolder.read_labels([run_dir / runfolder.LABELS], destination)
    config = runfolder.read_json(run_dir / runfolder.CONFIG)
    with _quiet():
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

    from trainer import decision

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
        with _quiet():
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


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# The check


def check_images(run_dir: Path, count: int = CHECK_IMAGES) -> list[str]:
    """Up to `count` test images of the run (then validation, then training ones), still on disk."""
    from trainer import data

    split = run_dir / runfolder.SPLIT
    if not split.is_file():
        raise InputError(f"{run_dir}: no split.csv, so no test images to check the exports with")
    parts = data.read_split(split)
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


@dataclass(frozen=True)
class Runtime:
    """One export and the runtime that checks it: the single place a leg is spelled out."""

    name: str
    file: str
    format: str  # the --formats word that selects it
    tolerance: float
    enforced: bool  # False: a disagreement is a warning (quantization is lossy by design)
    write: Callable  # (model, destination, saved_model_source) -> None
    load: Callable  # path -> forward (images -> probabilities)

    def run(self, path: Path, images: np.ndarray) -> np.ndarray:
        return self.load(path)(images)


# The functions are called through lambdas so that they are looked up when a leg runs.
RUNTIMES = (
    Runtime(
        "SavedModel", "saved_model", "saved_model", FLOAT_TOLERANCE, True,
        lambda model, path, source: write_saved_model(model, path), lambda path: runtimes.saved_model_forward(path)[0],
    ),
    Runtime(
        "TFLite", "model.tflite", "tflite", FLOAT_TOLERANCE, True,
        lambda model, path, source: write_tflite(source, path, False), runtimes.tflite_forward,
    ),
    Runtime(
        "TFLite int8", "model_int8.tflite", "tflite", QUANTIZED_TOLERANCE, False,
        lambda model, path, source: write_tflite(source, path, True), runtimes.tflite_forward,
    ),
    Runtime(
        "ONNX Runtime", "model.onnx", "onnx", FLOAT_TOLERANCE, True,
        lambda model, path, source: write_onnx(model, path, model_metadata(path.parent)),
        runtimes.onnx_forward,
    ),
)  # fmt: skip


def export_run(run_dir: str | Path, formats: tuple[str, ...] = FORMATS, check: bool = True, write: bool = True,
               benchmark: bool = False) -> dict:  # fmt: skip
    """(Re)write the run's exports and check them; writes and returns exports.json's content.
    write=False checks the exports already in the folder (after copying them, say); benchmark:
    each format's test accuracy and latency too (benchmark_exports).
    Raises CheckFailed when any leg disagrees or fails, after writing exports.json."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.model is None:
        raise InputError(f"{run_dir}: pass a run folder (with model.keras) to export from")
    chosen = [runtime for runtime in RUNTIMES if runtime.format in formats]
    if write:
        written, legs = write_exports(run.model, run_dir, chosen)
    else:
        for runtime in chosen:
            if not (run_dir / runtime.file).exists():
                raise InputError(f"{run_dir / runtime.file}: not found; run 'python -m trainer export {run_dir}'")
        written, legs = chosen, []
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
        images = np.concatenate([batch.numpy() for batch in _pixels(result["images"], run.image_size)])
        reference = run.model.predict(images, verbose=0).astype(np.float64)
        legs += check_exports(run_dir, written, images, reference)
        result["keras"] = reference.round(6).tolist()
    result["legs"] = [asdict(leg) for leg in legs]
    if benchmark:
        result["benchmark"] = benchmark_exports(run_dir, run, written)
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


def write_exports(model, run_dir: Path, chosen: list[Runtime]) -> tuple[list[Runtime], list[Leg]]:
    """Write each chosen export: (those written, a failed leg for each that could not be)."""
    written, failed = [], []
    # TFLite converts from a SavedModel: the run's own, or one in a scratch folder.
    with tempfile.TemporaryDirectory(prefix=".export-") as scratch:
        formats = {runtime.format for runtime in chosen}
        source = run_dir / "saved_model" if "saved_model" in formats else Path(scratch) / "saved_model"
        source_error = None
        if "saved_model" not in formats and "tflite" in formats:
            try:
                write_saved_model(model, source)
            except Exception as error:  # noqa: BLE001 - reported as the TFLite legs' failure
                source_error = error
        for runtime in chosen:
            try:
                if source_error is not None and runtime.format == "tflite":
                    raise source_error
                runtime.write(model, run_dir / runtime.file, source)
            except Exception as error:  # noqa: BLE001 - every failure becomes a failed leg, reported
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                detail = f"export failed: {type(error).__name__}: {first}"
                failed.append(Leg(runtime.name, runtime.file, runtime.tolerance, detail=detail))
                log.error("export %s failed: %s", runtime.file, first)
            else:
                written.append(runtime)
    return written, failed


def check_exports(run_dir: Path, written: list[Runtime], images: np.ndarray, reference: np.ndarray) -> list[Leg]:
    """Each written export run on `images` and compared with Keras's `reference` probabilities;
    the SavedModel also through the TensorFlow C library."""
    legs = []
    for runtime in written:
        try:
            with _quiet():
                values = runtime.run(run_dir / runtime.file, images)
            leg = compare(runtime.name, runtime.file, reference, values, runtime.tolerance)
        except Exception as error:  # noqa: BLE001
            legs.append(Leg(runtime.name, runtime.file, runtime.tolerance, detail=f"could not run: {error}"))
            continue
        leg.enforced = runtime.enforced
        if not leg.enforced and not leg.ok:
            # Quantization is lossy by design: how much it costs depends on the model (deep nets
            # with random weights lose everything), so it is reported and warned about; the
            # float legs are the parity check.
            log.warning("WARNING: %s differs from Keras by up to %.2f in probability; quantization costs this "
                        "model accuracy, so prefer model.tflite", runtime.file, leg.max_difference)  # fmt: skip
        legs.append(leg)
    if any(runtime.format == "saved_model" for runtime in written):
        try:
            values, library = runtimes.run_c_api(run_dir / "saved_model", images)
            leg = compare("TensorFlow C library", "saved_model", reference, values, FLOAT_TOLERANCE)
            leg.detail = library
        except Exception as error:  # noqa: BLE001
            leg = Leg("TensorFlow C library", "saved_model", FLOAT_TOLERANCE, detail=f"could not run: {error}")
        legs.append(leg)
    return legs


BENCHMARK_IMAGES = 200  # test images at most: an accuracy to about +-0.03, and cheap at 56,000 images
LATENCY_BATCHES = (1, 32)


def benchmark_images(run_dir: Path, count: int = BENCHMARK_IMAGES) -> tuple[list[str], list[str]]:
    """Up to `count` test images of the run's split.csv, round-robin over the labels (so each
    class is in), in a fixed order: (paths, labels)."""
    from trainer import data

    by_label: dict[str, list] = {}
    for row in data.read_split(run_dir / runfolder.SPLIT)["test"]:
        by_label.setdefault(row.label, []).append(row)
    rows = []
    while len(rows) < count and any(by_label.values()):
        for label in sorted(by_label):
            if by_label[label] and len(rows) < count:
                rows.append(by_label[label].pop(0))
    return [str(row.path) for row in rows], [row.label for row in rows]


def benchmark_exports(run_dir: Path, run, written: list[Runtime]) -> dict:
    """As `yolo benchmark` does for its formats: each format's test accuracy (the run's decision
    rule applied, on at most BENCHMARK_IMAGES test images) and median seconds per image at
    batch 1 and 32 on this machine, after one untimed call. Keras runs predict_on_batch; the C
    library runs in its child process, its session loaded once."""
    from trainer.capi import seconds_per_image

    paths, labels = benchmark_images(run_dir)
    index = {label: i for i, label in enumerate(run.labels)}
    y = np.array([index[label] for label in labels if label in index])
    if not len(paths) or len(y) != len(paths):
        return {"images": 0, "formats": [], "note": "no test images with the model's labels"}
    images = np.concatenate([batch.numpy() for batch in _pixels(paths, run.image_size)])
    loaders = [("Keras", runfolder.MODEL, lambda: run.model.predict_on_batch)]
    loaders += [(runtime.name, runtime.file, lambda runtime=runtime: runtime.load(run_dir / runtime.file))
                for runtime in written]  # fmt: skip
    entries = []
    for name, file, load in loaders:
        try:
            with _quiet():
                forward = load()
                probabilities = np.concatenate([np.asarray(forward(images[i : i + 32])) for i in range(0, len(y), 32)])
                latency = {size: seconds_per_image(forward, images, size) for size in LATENCY_BATCHES}
        except Exception as error:  # noqa: BLE001 - one format's failure is its row, not the run's
            entries.append({"format": name, "file": file, "error": f"{type(error).__name__}: {str(error)[:200]}"})
            continue
        entries.append(_benchmark_entry(name, file, run, probabilities, y, latency))
    if any(runtime.format == "saved_model" for runtime in written):
        try:
            values, report = runtimes.run_c_api(run_dir / "saved_model", images, LATENCY_BATCHES)
            entries.append(_benchmark_entry("TensorFlow C library", "saved_model", run, values, y,
                                            runtimes.read_timings(report)))  # fmt: skip
        except Exception as error:  # noqa: BLE001
            entries.append({"format": "TensorFlow C library", "file": "saved_model", "error": str(error)[:200]})
    for entry in entries:
        if "error" not in entry:
            log.info("export benchmark %-21s accuracy %.3f on %d test images, %.1f ms/image at batch 1, %.1f at 32",
                     entry["format"], entry["accuracy"], len(y), entry["ms_per_image"]["1"],
                     entry["ms_per_image"]["32"])  # fmt: skip
    return {"images": int(len(y)), "batches": list(LATENCY_BATCHES), "formats": entries}


def _benchmark_entry(name: str, file: str, run, probabilities: np.ndarray, y: np.ndarray, latency: dict) -> dict:
    return {
        "format": name,
        "file": file,
        "accuracy": round(float((run.decision.predict(probabilities) == y).mean()), 4),
        "ms_per_image": {str(size): round(seconds * 1000, 3) for size, seconds in latency.items()},
    }


def _difference(leg: Leg) -> str:
    top = "" if leg.top_class_agrees else ", another top class"
    return f"differs by {leg.max_difference:.2e} (tolerance {leg.tolerance:g}){top}"


def _pixels(paths: list[str], image_size: int):
    from trainer.pipeline import make_dataset

    return make_dataset(paths, None, image_size, len(paths))
