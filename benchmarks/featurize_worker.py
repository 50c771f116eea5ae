"""One side of the batched-vs-single figure, in a process of its own, so that each side runs
TensorFlow configured as it would be in real use (TensorFlow reads its oneDNN switch once, at
import, so two configurations cannot share a process).

    python benchmarks/featurize_worker.py batched|single BACKBONE IMAGE_SIZE WEIGHTS PATHS_FILE

batched: the trainer's featurization, as `python -m trainer train` sets it up (its oneDNN choice,
its batch size). single: ML.NET's way, each image decoded and run through the backbone alone,
with TensorFlow's defaults. The worker builds the model, makes one untimed pass, prints "ready",
then answers each "run" line on stdin with the seconds one pass over the images took.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    mode, backbone_name, size, weights, paths_file = argv[0], argv[1], int(argv[2]), argv[3], argv[4]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from trainer import device

    onednn = device.onednn()[0] if mode == "batched" else None  # single: the environment as given
    import tensorflow as tf

    from trainer.features import featurize
    from trainer.images import load_image
    from trainer.model import build_backbone, feature_extractor

    paths = Path(paths_file).read_text(encoding="utf-8").splitlines()
    extractor = feature_extractor(build_backbone(backbone_name, size, weights), backbone_name)
    if mode == "batched":
        per_call = device.featurize_batch_size(32, device.visible_devices(), onednn)

        def one_pass() -> None:
            featurize(extractor, paths, size, per_call)
    else:
        spec = tf.TensorSpec([None, size, size, 3], tf.float32)
        run = tf.function(lambda images: extractor(images, training=False), input_signature=[spec])

        def one_pass() -> None:
            for path in paths:
                run(load_image(path, size)[None].astype("float32")).numpy()

    one_pass()
    print("ready", per_call if mode == "batched" else 1, flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        started = time.perf_counter()
        one_pass()
        print(f"{time.perf_counter() - started:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
