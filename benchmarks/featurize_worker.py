"""One side of a featurization figure, in a process of its own, so that each side runs
TensorFlow configured as it would be in real use (TensorFlow reads its oneDNN switch once, at
import, so two configurations cannot share a process).

    python benchmarks/featurize_worker.py MODE BACKBONE IMAGE_SIZE WEIGHTS PATHS_FILE

MODE:
    pipeline  the trainer's featurization of training images: files in, features out, every
              default view (--feature-augment dihedral), through the runtime the trainer
              chooses (trainer.features.runtime) at its batch size
    backbone  TensorFlow running the backbone alone on one ready in-memory batch, as the trainer
              configures it (its oneDNN choice, its batch size), as many forward passes as the
              pipeline makes
    before    the pipeline as it was before the ONNX Runtime change: TensorFlow, and each view
              decoding its images again
    batched   the trainer's featurization of the images alone (one view)
    single    ML.NET's way: each image decoded and run through the backbone alone, with
              TensorFlow's defaults

WEIGHTS is a weights file, `imagenet` or `none`. The worker builds the model, makes one untimed
pass, prints "ready PER_CALL FORWARD_PASSES RUNTIME", then answers each "run" line on stdin with
the seconds one pass took.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def one_pass_of(mode: str, backbone_name: str, size: int, weights: str, paths: list[str]) -> tuple:
    """The featurization `mode` measures, as a function that runs one pass over `paths`, and the
    batch size, passes and runtime it reports."""
    from trainer import device

    onednn = device.onednn()[0] if mode != "single" else None  # single: the environment as given
    import numpy as np
    import tensorflow as tf

    from trainer.data.images import load_image
    from trainer.features.extract import featurize_batches
    from trainer.features.runtime import featurizer, tensorflow_runner
    from trainer.features.views import VIEWS
    from trainer.model import build_backbone, feature_extractor

    backbone = build_backbone(backbone_name, size, None if weights == "none" else weights)
    extractor = feature_extractor(backbone, backbone_name)
    per_call = device.featurize_batch_size(32, device.visible_devices(), onednn) if mode != "single" else 1
    views = VIEWS["dihedral"] if mode in ("pipeline", "backbone", "before") else ("id",)
    passes = len(paths) * len(views)
    runtime = "tensorflow"
    if mode in ("pipeline", "batched"):
        run = featurizer(extractor, size, Path(tempfile.mkdtemp(prefix="featurize-worker-")))
        runtime = run.runtime

        def one_pass() -> None:
            for _ in featurize_batches(run, paths, size, per_call, views):
                pass
    elif mode == "before":
        run = tensorflow_runner(extractor, size)

        def one_pass() -> None:
            for view in views:
                for _ in featurize_batches(run, paths, size, per_call, (view,)):
                    pass
    elif mode == "backbone":
        run = tensorflow_runner(extractor, size)
        batch = np.random.default_rng(0).uniform(0, 255, (per_call, size, size, 3)).astype(np.float32)
        batches = -(-passes // per_call)
        passes = batches * per_call

        def one_pass() -> None:
            for _ in range(batches):
                run(batch)
    else:
        spec = tf.TensorSpec([None, size, size, 3], tf.float32)
        traced = tf.function(lambda images: extractor(images, training=False), input_signature=[spec])

        def one_pass() -> None:
            for path in paths:
                traced(load_image(path, size)[None].astype("float32")).numpy()

    return one_pass, per_call, passes, runtime


def main(argv: list[str]) -> int:
    mode, backbone_name, size, weights, paths_file = argv[0], argv[1], int(argv[2]), argv[3], argv[4]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    paths = Path(paths_file).read_text(encoding="utf-8").splitlines()
    one_pass, per_call, passes, runtime = one_pass_of(mode, backbone_name, size, weights, paths)
    one_pass()
    print("ready", per_call, passes, runtime, flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        started = time.perf_counter()
        one_pass()
        print(f"{time.perf_counter() - started:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
