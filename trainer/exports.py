"""The export formats, one row each: plain data (no TensorFlow, no numpy), so that the options can
check `--export` against it before anything heavy is imported, as trainer/backbones.py does for
the networks. trainer/export/ writes, checks and benchmarks every row; the report shows each.

    name       the runtime, as exports.json's legs, the benchmark and the report name it
    word       the --export (and `export --formats`) word that selects it; rows may share one
    file       in the run folder: what it writes, or, for a row that writes nothing, what it reads
    tolerance  the largest |p - p_keras| the parity check accepts
    enforced   False: a disagreement is reported and warned about, but is no failure
    writer     "module:function", called (model, destination, saved_model) where saved_model()
               gives a SavedModel of the model to convert from; None for a row that runs another
               row's file
    runner     "module:function", called (path, images, batches) -> trainer.export.runtimes.Measured:
               the probabilities of float32 pixels [n, size, size, 3] (0-255), and the median
               seconds per image at each of `batches` (the benchmark's; none for the parity check)

The functions are named rather than imported so that this table stays below every stage; they
are imported when a row is written or run (trainer.export.runtimes.resolve).
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_TOLERANCE = 1e-4  # float32 runtimes: the same arithmetic, different kernels
QUANTIZED_TOLERANCE = 0.1  # int8 weights move probabilities; a conversion bug moves them much more
SAVED_MODEL = "saved_model"  # the SavedModel's folder: TFLite converts from it, the C library runs it


@dataclass(frozen=True)
class ExportFormat:
    name: str
    word: str
    file: str
    tolerance: float
    enforced: bool
    writer: str | None
    runner: str


WRITE = "trainer.export.formats:"
RUN = "trainer.export.runtimes:"
FORMATS = (
    ExportFormat("SavedModel", "saved_model", SAVED_MODEL, FLOAT_TOLERANCE, True,
                 WRITE + "saved_model_file", RUN + "run_saved_model"),
    ExportFormat("TFLite", "tflite", "model.tflite", FLOAT_TOLERANCE, True, WRITE + "tflite_file", RUN + "run_tflite"),
    # Quantization is lossy by design, so the int8 model's drift is a warning, not a failure.
    ExportFormat("TFLite int8", "tflite", "model_int8.tflite", QUANTIZED_TOLERANCE, False,
                 WRITE + "tflite_int8_file", RUN + "run_tflite"),
    ExportFormat("ONNX Runtime", "onnx", "model.onnx", FLOAT_TOLERANCE, True, WRITE + "onnx_file", RUN + "run_onnx"),
    # The SavedModel again, through the TensorFlow C library in a process of its own, as ML.NET
    # and TensorFlow.NET load it: it writes nothing, and is timed inside its process.
    ExportFormat("TensorFlow C library", "saved_model", SAVED_MODEL, FLOAT_TOLERANCE, True, None,
                 RUN + "run_c_library"),
)  # fmt: skip


def export_words() -> tuple[str, ...]:
    """Every --export word, each once, in the table's order."""
    return tuple(dict.fromkeys(row.word for row in FORMATS))


def export_files() -> tuple[str, ...]:
    """Every file the exports leave in a run folder, each once."""
    return tuple(dict.fromkeys(row.file for row in FORMATS))
