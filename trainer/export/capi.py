"""Run a SavedModel through the TensorFlow C library, as ML.NET and TensorFlow.NET do.

    python -m trainer.export.capi SAVED_MODEL INPUT.npy OUTPUT.npy --input-op OP --output-op OP [--time 1,32]

This process never imports TensorFlow's Python package: it loads libtensorflow.so.2 (the one
`invoke libtensorflow` installs) through ctypes, calls TF_LoadSessionFromSavedModel with the
`serve` tag and TF_SessionRun, and writes the output tensor as .npy. The exporter runs it in a
subprocess, so the C library and the Python package never share a process.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

TF_FLOAT = 1


def find_library() -> Path | None:
    """TRAINER_TF_C_LIBRARY, else libtensorflow.so.2 where the loader finds it (ldconfig), else in
    the prefixes `invoke libtensorflow` uses, else the pip wheel's own C API library."""
    explicit = os.environ.get("TRAINER_TF_C_LIBRARY")
    if explicit:
        return Path(explicit)
    found = ctypes.util.find_library("tensorflow")
    candidates = [Path(found)] if found and "/" in found else []
    if found and not candidates:
        for folder in ("/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu"):
            candidates.append(Path(folder) / found)
    candidates += [Path.home() / ".local/lib/libtensorflow.so.2", Path("/usr/local/lib/libtensorflow.so.2")]
    spec = importlib.util.find_spec("tensorflow")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location) / "libtensorflow_cc.so.2")
    return next((candidate for candidate in candidates if candidate.is_file()), None)


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def _bind(lib) -> None:
    c = ctypes
    signatures = {
        "TF_Version": (c.c_char_p, []),
        "TF_NewStatus": (c.c_void_p, []),
        "TF_DeleteStatus": (None, [c.c_void_p]),
        "TF_GetCode": (c.c_int, [c.c_void_p]),
        "TF_Message": (c.c_char_p, [c.c_void_p]),
        "TF_NewGraph": (c.c_void_p, []),
        "TF_DeleteGraph": (None, [c.c_void_p]),
        "TF_NewSessionOptions": (c.c_void_p, []),
        "TF_DeleteSessionOptions": (None, [c.c_void_p]),
        "TF_LoadSessionFromSavedModel": (
            c.c_void_p,
            [c.c_void_p, c.c_void_p, c.c_char_p, c.POINTER(c.c_char_p), c.c_int, c.c_void_p, c.c_void_p, c.c_void_p],
        ),
        "TF_GraphOperationByName": (c.c_void_p, [c.c_void_p, c.c_char_p]),
        "TF_AllocateTensor": (c.c_void_p, [c.c_int, c.POINTER(c.c_int64), c.c_int, c.c_size_t]),
        "TF_TensorData": (c.c_void_p, [c.c_void_p]),
        "TF_TensorByteSize": (c.c_size_t, [c.c_void_p]),
        "TF_TensorType": (c.c_int, [c.c_void_p]),
        "TF_NumDims": (c.c_int, [c.c_void_p]),
        "TF_Dim": (c.c_int64, [c.c_void_p, c.c_int]),
        "TF_DeleteTensor": (None, [c.c_void_p]),
        "TF_SessionRun": (
            None,
            [c.c_void_p, c.c_void_p, c.c_void_p, c.c_void_p, c.c_int, c.c_void_p, c.c_void_p, c.c_int]
            + [c.c_void_p, c.c_int, c.c_void_p, c.c_void_p],
        ),
        "TF_CloseSession": (None, [c.c_void_p, c.c_void_p]),
        "TF_DeleteSession": (None, [c.c_void_p, c.c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


class CApiError(RuntimeError):
    pass


def run_saved_model(library: Path, saved_model: Path, images: np.ndarray, input_op: str, output_op: str,
                    timed: tuple[int, ...] = ()) -> tuple[np.ndarray, dict[int, float]]:  # fmt: skip
    """images: float32 [n, height, width, 3]; returns the output tensor as float32, and for each
    batch size in `timed` the median seconds per image of TF_SessionRun on a batch of that size
    (the first images, repeated when there are fewer), on the session already loaded."""
    lib = ctypes.CDLL(str(library))
    _bind(lib)
    status = lib.TF_NewStatus()

    def check(what: str) -> None:
        if lib.TF_GetCode(status) != 0:
            raise CApiError(f"{what}: {lib.TF_Message(status).decode(errors='replace')}")

    graph = lib.TF_NewGraph()
    options = lib.TF_NewSessionOptions()
    tags = (ctypes.c_char_p * 1)(b"serve")
    session = lib.TF_LoadSessionFromSavedModel(options, None, str(saved_model).encode(), tags, 1, graph, None, status)
    check(f"TF_LoadSessionFromSavedModel({saved_model})")
    operations = []
    for name in (input_op, output_op):
        operation = lib.TF_GraphOperationByName(graph, name.encode())
        if not operation:
            raise CApiError(f"{saved_model}: the graph has no operation {name!r}")
        operations.append(operation)

    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        dims = (ctypes.c_int64 * batch.ndim)(*batch.shape)
        tensor = lib.TF_AllocateTensor(TF_FLOAT, dims, batch.ndim, batch.nbytes)
        ctypes.memmove(lib.TF_TensorData(tensor), batch.ctypes.data, batch.nbytes)
        inputs = (_Output * 1)(_Output(operations[0], 0))
        outputs = (_Output * 1)(_Output(operations[1], 0))
        input_values = (ctypes.c_void_p * 1)(tensor)
        output_values = (ctypes.c_void_p * 1)()
        lib.TF_SessionRun(session, None, inputs, input_values, 1, outputs, output_values, 1, None, 0, None, status)
        lib.TF_DeleteTensor(tensor)
        check("TF_SessionRun")
        result = output_values[0]
        if lib.TF_TensorType(result) != TF_FLOAT:
            raise CApiError(f"{output_op}: output is not float32")
        shape = [lib.TF_Dim(result, i) for i in range(lib.TF_NumDims(result))]
        values = np.frombuffer(ctypes.string_at(lib.TF_TensorData(result), lib.TF_TensorByteSize(result)), np.float32)
        values = values.reshape(shape).copy()
        lib.TF_DeleteTensor(result)
        return values

    values = run(images)
    timings = {size: seconds_per_image(run, images, size) for size in timed}
    lib.TF_CloseSession(session, status)
    lib.TF_DeleteSession(session, status)
    lib.TF_DeleteSessionOptions(options)
    lib.TF_DeleteGraph(graph)
    lib.TF_DeleteStatus(status)
    return values, timings


def seconds_per_image(forward, images: np.ndarray, size: int, budget: float = 1.0, most: int = 20) -> float:
    """The median seconds per image of forward() on a batch of `size` images (the first ones,
    repeated when there are fewer), after one untimed call: up to `most` calls or `budget` s."""
    import time

    batch = np.resize(images, (size, *images.shape[1:])).astype(np.float32)
    forward(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < most and (len(times) < 3 or time.perf_counter() - started < budget):
        before = time.perf_counter()
        forward(batch)
        times.append(time.perf_counter() - before)
    return float(np.median(times)) / size


def library_version(library: Path) -> str:
    lib = ctypes.CDLL(str(library))
    lib.TF_Version.restype = ctypes.c_char_p
    return lib.TF_Version().decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export.capi", description=__doc__.splitlines()[0])
    parser.add_argument("saved_model")
    parser.add_argument("input", help=".npy of float32 images [n, height, width, 3]")
    parser.add_argument("output", help=".npy to write the output tensor to")
    parser.add_argument("--input-op", default="serving_default_image")
    parser.add_argument("--output-op", required=True)
    parser.add_argument("--time", default="", help="batch sizes to time, comma-separated (e.g. 1,32)")
    args = parser.parse_args(argv)
    library = find_library()
    if library is None:
        print("trainer.export.capi: error: no libtensorflow.so.2 found; run 'invoke libtensorflow'", file=sys.stderr)
        return 2
    try:
        timed = tuple(int(size) for size in args.time.split(",") if size.strip())
        values, timings = run_saved_model(
            library, Path(args.saved_model), np.load(args.input), args.input_op, args.output_op, timed
        )
    except (CApiError, OSError) as error:
        print(f"trainer.export.capi: error: {error}", file=sys.stderr)
        return 1
    np.save(args.output, values)
    print(f"{library} {library_version(library)}")
    if timed:
        print("seconds per image " + " ".join(f"{size}={seconds:.6g}" for size, seconds in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
