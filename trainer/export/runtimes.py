"""The model formats, run: each takes float32 pixels [n, size, size, 3] (0-255) and gives
softmax probabilities [n, classes], in labels.txt order.

    saved_model_forward  a SavedModel's serving_default signature, in Python
    tflite_forward       a .tflite file on one TensorFlow Lite interpreter
    onnx_forward         a .onnx file in ONNX Runtime
    run_c_api            a SavedModel through the TensorFlow C library, in a child process that
                         never imports TensorFlow's Python package (trainer/export/capi.py)

The exports' parity check (trainer.export.formats) and prediction from any format (trainer.predict)
both run models through here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from trainer.errors import InputError


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
