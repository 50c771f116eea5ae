"""Which runtime runs the frozen feature extractor's forward pass.

On a CPU, ONNX Runtime runs EfficientNet-Lite0 about 1.6-1.9 times as fast as TensorFlow does
(BENCHMARKS.md), and the bundle already installs it for the export check. So where featurizing
would run on a CPU in float32, the extractor is converted to ONNX once per feature-cache key
(Keras's own exporter, tf2onnx underneath) and kept beside the features as
`extractor-<versions>.onnx`, the converter's versions in its name, so a rerun converts nothing.
TensorFlow stays the runtime on a GPU (XLA and mixed precision are TensorFlow's), under a
mixed-precision policy (the cache key says the features were computed in half precision, and
they must be), with XLA on, and wherever the conversion or ONNX Runtime refuses the graph: then
one line says so and TensorFlow featurizes, never a failed run.

The two runtimes' features agree to about 1e-5 of a feature scale of 6
(tests/features/test_runtime.py holds them to 1e-4), below what float32 summation order moves between
two TensorFlow builds, so they share one cache key: a cache written by either serves both.

TRAINER_FEATURIZER=tensorflow (or onnxruntime) overrides the choice; `auto`, the default,
chooses as above.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from trainer.atomic import replacing
from trainer.errors import is_machine_error, os_error_sentence
from trainer.quiet import quiet

log = logging.getLogger("trainer")

CONVERTER = ("tensorflow", "keras", "tf2onnx", "onnx")  # whose versions name a converted extractor


def tensorflow_runner(feature_model, image_size: int, jit_compile: bool = False):
    """images (N, S, S, 3) float32 -> features, through one traced TensorFlow graph per model
    (a new tf.function per call would trace again each time: a second or more for a large
    backbone); jit_compile runs it through XLA."""
    import tensorflow as tf

    run = getattr(feature_model, "_trainer_featurize", None)
    if run is None or getattr(run, "_trainer_jit", None) != jit_compile:
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
        run = tf.function(
            lambda images: feature_model(images, training=False), input_signature=[spec], jit_compile=jit_compile
        )
        run._trainer_jit = jit_compile
        feature_model._trainer_featurize = run

    def forward(images: np.ndarray) -> np.ndarray:
        return run(images).numpy()

    forward.runtime = "tensorflow"
    return forward


def converted_name() -> str:
    versions = []
    for name in CONVERTER:
        try:
            versions.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name}=none")
    return f"extractor-{hashlib.sha256(','.join(versions).encode()).hexdigest()[:12]}.onnx"


def convert(feature_model, folder: Path) -> Path:
    """The extractor as ONNX in `folder`, converted when not there yet (written under a
    temporary name and renamed, so a killed conversion leaves nothing under the real name)."""

    path = folder / converted_name()
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    # Keras's exporter refuses a model that has never been called.
    feature_model(np.zeros((1, *feature_model.input_shape[1:]), dtype=np.float32))
    with replacing(path, suffix=".onnx") as temporary, quiet():
        feature_model.export(str(temporary), format="onnx", verbose=False)
    return path


def onnx_runner(path: Path, width: int):
    """images -> features through an ONNX Runtime session on the CPU. Checked once on a blank
    image, so a graph ONNX Runtime cannot run is found before any image is."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # Every CPU this process may use: ONNX Runtime's default is the physical cores, one on a
    # two-vCPU cloud machine whose vCPUs are one core's two threads.
    options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shape = session.get_inputs()[0].shape

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(images, dtype=np.float32)})[0]

    out = forward(np.zeros((1, *[int(side) for side in shape[1:]]), dtype=np.float32))
    if out.shape != (1, width):
        raise ValueError(f"the converted extractor gives {out.shape[1:]} features, not {width}")
    forward.runtime = "onnxruntime"
    return forward


def why_not_onnx(jit_compile: bool) -> str | None:
    """Why featurizing stays with TensorFlow here, or None when ONNX Runtime may take it."""
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "a GPU"
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        return f"{keras.mixed_precision.global_policy().name} features"
    if jit_compile:
        return "XLA"
    for package in ("onnxruntime", "tf2onnx", "onnx"):
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            return f"{package} is not installed"
    return None


def featurizer(feature_model, image_size: int, folder: Path, jit_compile: bool = False):
    """The forward pass to featurize with (see the module's text), with `.runtime` naming it."""
    choice = os.environ.get("TRAINER_FEATURIZER", "auto").strip().lower() or "auto"
    if choice not in ("auto", "tensorflow", "onnxruntime"):
        log.warning("WARNING: TRAINER_FEATURIZER=%s is not auto, tensorflow or onnxruntime: auto", choice)
        choice = "auto"
    reason = "TRAINER_FEATURIZER=tensorflow" if choice == "tensorflow" else why_not_onnx(jit_compile)
    if reason is not None and not (choice == "onnxruntime" and "installed" not in reason):
        log.info("featurizing with TensorFlow (%s)", reason)
        return tensorflow_runner(feature_model, image_size, jit_compile)
    cached = getattr(feature_model, "_trainer_onnx", None)
    if cached is not None:
        return cached
    try:
        runner = onnx_runner(convert(feature_model, folder), int(feature_model.output_shape[-1]))
    except Exception as error:  # a refused graph costs the speed, never the run
        if is_machine_error(error):
            why = os_error_sentence(error, folder / converted_name(), where="--workspace")
        else:
            why = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
        log.warning("WARNING: ONNX Runtime cannot run the converted extractor (%s): featurizing with TensorFlow",
                    why)  # fmt: skip
        with contextlib.suppress(OSError):
            (folder / converted_name()).unlink()
        return tensorflow_runner(feature_model, image_size, jit_compile)
    log.info("featurizing with ONNX Runtime on the CPU (the extractor converted once: %s)", folder / converted_name())
    feature_model._trainer_onnx = runner
    return runner
