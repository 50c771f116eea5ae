"""The model formats, run: each takes float32 pixels [n, size, size, 3] (0-255) and gives
softmax probabilities [n, classes], in labels.txt order.

    saved_model_forward  a SavedModel's serving_default signature, in Python
    tflite_forward       a .tflite file on one TensorFlow Lite interpreter
    onnx_forward         a .onnx file in ONNX Runtime
    run_c_api            a SavedModel through the TensorFlow C library, in a child process that
                         never imports TensorFlow's Python package (trainer/export/capi.py)

The export table's runners (trainer/exports.py) are the run_* functions: each runs a file on a
batch of images and measures it (Measured), in this process or, for the C library, in its own.
The exports' parity check and benchmark (trainer.export.formats, .benchmark) and prediction from
any format (trainer.predict) all run models through here.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.errors import InputError
from trainer.export.capi import seconds_per_image


def saved_model_forward(folder: Path):
    """serving_default as a function, with the image size it takes and its number of outputs."""
    import tensorflow as tf

    signatures = tf.saved_model.load(str(folder)).signatures
    if "serving_default" not in signatures:
        raise InputError(f"--model: {folder} has no serving_default signature")
    serve = signatures["serving_default"]
    spec = serve.structured_input_signature[1]
    if list(spec) != ["image"]:
        raise InputError(f"--model: {folder}'s serving signature takes {', '.join(spec)}, not image")

    def forward(images: np.ndarray) -> np.ndarray:
        return serve(image=tf.constant(images))["probabilities"].numpy()

    return forward, int(spec["image"].shape[1]), int(serve.structured_outputs["probabilities"].shape[-1])


def tensorflow_ops(path: Path) -> list[str]:
    """The custom operations a .tflite file carries (TensorFlow's own, "Flex...", among them):
    what TensorFlow Lite's builtin operations are not. Read from the flatbuffer, nothing run;
    a file that is no TFLite model has none (loading it says so)."""
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
        codes = [model.OperatorCodes(index) for index in range(model.OperatorCodesLength())]
        return sorted({code.CustomCode().decode("utf-8", "replace") for code in codes if code.CustomCode()})
    except Exception:  # noqa: BLE001 - not a flatbuffer of this schema: tflite_forward refuses it in one line
        return []


def runs_a_graph(path: Path) -> bool:
    """Whether running `path` runs operations stored in it that can reach the machine (read and
    write files): a SavedModel's TensorFlow graph, a TFLite file with TensorFlow or custom
    operations. Keras (safe mode), ONNX Runtime and TFLite's builtin operations cannot."""
    path = Path(path)
    if path.is_dir() or path.name == "saved_model.pb":
        return True
    return path.suffix == ".tflite" and bool(tensorflow_ops(path))


def tflite_forward(path: Path):
    """A function from float32 pixels [n, size, size, 3] to probabilities, on one interpreter."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice about LiteRT
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count())
    source = interpreter.get_input_details()[0]["index"]
    result = interpreter.get_output_details()[0]["index"]
    shape: list[tuple] = [()]

    def forward(images: np.ndarray) -> np.ndarray:
        if shape[0] != images.shape:
            interpreter.resize_tensor_input(source, images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(source, np.ascontiguousarray(images, dtype=np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(result).copy()

    forward.interpreter = interpreter
    return forward


def onnx_forward(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"image": images})[0]

    return forward


def run_c_api(saved_model: Path, images: np.ndarray, timed: tuple[int, ...] = ()) -> tuple[np.ndarray, str]:
    """In a child process that loads libtensorflow.so.2 and never imports TensorFlow's Python.
    Returns the probabilities and the child's report: the library and its version, then, with
    `timed` batch sizes, a line "seconds per image 1=... 32=..." (read_timings)."""
    input_name, output_name = serving_tensors(saved_model)
    with tempfile.TemporaryDirectory(prefix="capi-") as folder:
        source, result = Path(folder) / "images.npy", Path(folder) / "probabilities.npy"
        np.save(source, images)
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        completed = subprocess.run(
            [sys.executable, "-m", "trainer.export.capi", str(saved_model.resolve()), str(source), str(result)]
            + ["--input-op", input_name.split(":")[0], "--output-op", output_name.split(":")[0]]
            + (["--time", ",".join(map(str, timed))] if timed else []),
            capture_output=True,
            text=True,
            env=environment,
            cwd=Path(__file__).resolve().parents[2],  # the bundle, where `trainer` is a package
            check=False,
        )
        if completed.returncode != 0:
            lines = [line for line in completed.stderr.splitlines() if "error" in line.lower()] or ["no output"]
            raise RuntimeError(lines[-1])
        return np.load(result), completed.stdout.strip()


def read_timings(report: str) -> dict[int, float]:
    """{batch size: seconds per image} from run_c_api's report."""
    for line in report.splitlines():
        if line.startswith("seconds per image "):
            return {int(k): float(v) for k, v in (item.split("=") for item in line.split()[3:])}
    return {}


def serving_tensors(saved_model: Path) -> tuple[str, str]:
    """The graph tensor names behind serving_default's image input and probabilities output,
    which is what a C-API caller feeds and fetches."""
    from tensorflow.core.protobuf import saved_model_pb2

    message = saved_model_pb2.SavedModel()
    message.ParseFromString((saved_model / "saved_model.pb").read_bytes())
    signature = message.meta_graphs[0].signature_def["serving_default"]
    return signature.inputs["image"].name, signature.outputs["probabilities"].name


# ---------------------------------------------------------------------------------------------
# The export table's runners: (path, images, batches) -> Measured


@dataclass
class Measured:
    """A runtime on a batch of images: their probabilities, the median seconds per image at each
    batch size asked for, and what ran them when that is worth saying (the C library's file and
    version)."""

    probabilities: np.ndarray
    seconds_per_image: dict[int, float]
    detail: str = ""


def measured(forward: Callable, images: np.ndarray, batches: tuple[int, ...] = ()) -> Measured:
    """An in-process runtime's forward function on `images`, 32 at a time, then timed at each of
    `batches` (trainer.export.capi.seconds_per_image: after one untimed call)."""
    probabilities = np.concatenate([np.asarray(forward(images[i : i + 32])) for i in range(0, len(images), 32)])
    return Measured(probabilities, {size: seconds_per_image(forward, images, size) for size in batches})


def run_saved_model(path: Path, images: np.ndarray, batches: tuple[int, ...] = ()) -> Measured:
    return measured(saved_model_forward(path)[0], images, batches)


def run_tflite(path: Path, images: np.ndarray, batches: tuple[int, ...] = ()) -> Measured:
    return measured(tflite_forward(path), images, batches)


def run_onnx(path: Path, images: np.ndarray, batches: tuple[int, ...] = ()) -> Measured:
    return measured(onnx_forward(path), images, batches)


def run_c_library(path: Path, images: np.ndarray, batches: tuple[int, ...] = ()) -> Measured:
    """The SavedModel at `path` through the TensorFlow C library, in its child process, which
    times itself (its session loaded once)."""
    probabilities, report = run_c_api(path, images, batches)
    library = "\n".join(line for line in report.splitlines() if not line.startswith("seconds per image "))
    return Measured(probabilities, read_timings(report), library)


def resolve(reference: str) -> Callable:
    """An export row's writer or runner, "module:function" (trainer/exports.py), imported now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
