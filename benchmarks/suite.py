"""The benchmark suite: each figure measured side by side, on one machine, in one run.

    invoke bench [--quick] [--report PATH]
    python -m benchmarks [--quick] [--report PATH] [--only NAME ...] [--repeat N]

Each figure times our way and its baseline alternately, several times, and reports the ratio of
the medians with each side's spread (min-max). Speed-ups are baseline / ours; the featurization
figure is a throughput share (ours / the backbone alone); the setup figure is a cost ratio
(setup / invoke --list). Exit code 1 when a goal is missed, except with --quick, whose small
sizes and single repetitions only show that the suite works.

Data: the shipped concrete photos (datasets/concrete), else the synthetic demo data. Weights: a local file
of random weights for the backbone (the cost of a forward pass does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCRETE = ROOT / "datasets" / "concrete" / "Images"
USER_ONEDNN: str | None = None  # TF_ENABLE_ONEDNN_OPTS as the suite found it, before the trainer's choice


@dataclass
class Sizes:
    backbone: str
    image_size: int
    images: int  # for the in-process figures
    one_at_a_time: int  # images for the batched-vs-single figure
    epochs: int  # for the whole-train figures
    repeat: int
    repeat_train: int  # the whole-train figures are the slow ones
    rerun_images: tuple[int, int]  # the warm-rerun figure's synthetic datasets: a small one, the measured one


FULL = Sizes("resnet50_v2", 224, 400, 96, 20, 5, 3, (400, 2000))
QUICK = Sizes("mobilenet_v2", 96, 96, 16, 3, 1, 1, (40, 80))
DEFAULT_BACKBONE = "efficientnet_lite0"  # the trainer's default, with its ImageNet weights


@dataclass
class Figure:
    name: str
    goal: str  # ">= 50" or "<= 2"
    ratio: float
    ours: dict
    baseline: dict
    note: str = ""
    met: bool = field(init=False)

    def __post_init__(self) -> None:
        sign, value = self.goal.split()
        self.met = self.ratio >= float(value) if sign == ">=" else self.ratio <= float(value)


def spread(samples: list[float]) -> dict:
    return {
        "median": round(statistics.median(samples), 4),
        "min": round(min(samples), 4),
        "max": round(max(samples), 4),
        "n": len(samples),
    }


def speedup(name: str, goal: str, ours: list[float], baseline: list[float], note: str = "") -> Figure:
    """A figure whose ratio is how many times faster ours is: baseline median / our median."""
    return Figure(
        name,
        goal,
        statistics.median(baseline) / statistics.median(ours),
        {"seconds": spread(ours)},
        {"seconds": spread(baseline)},
        note,
    )


def alternate(repeat: int, ours: Callable[[], float], baseline: Callable[[], float]) -> tuple[list, list]:
    """Time both sides in turns, so drift on a shared machine hits both alike."""
    mine, theirs = [], []
    for _ in range(repeat):
        theirs.append(baseline())
        mine.append(ours())
    return mine, theirs


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The setting every in-process figure shares


class Bench:
    def __init__(self, sizes: Sizes, scratch: Path):
        self.sizes = sizes
        self.scratch = scratch
        if CONCRETE.is_dir():
            self.folder, self.dataset = CONCRETE, "concrete (datasets/concrete, 400 images, 256 px JPEG)"
        else:
            from trainer.data.demo import make_demo_data

            make_demo_data(scratch / "demo", per_class=60, seed=0, image_size=160)
            self.folder, self.dataset = scratch / "demo" / "Images", "synthetic demo data (120 images, 160 px)"
        from trainer.data.rows import load_rows
        from trainer.data.validate import validate

        rows, report = load_rows(self.folder, None)
        self.rows = validate(rows, report)
        self.paths = [str(row.path) for row in self.rows][: sizes.images]
        self._models: dict[str, tuple] = {}

    @property
    def weights(self) -> Path:
        path = self.scratch / f"{self.sizes.backbone}-{self.sizes.image_size}.weights.h5"
        if not path.is_file():
            from trainer.model import build_backbone

            build_backbone(self.sizes.backbone, self.sizes.image_size, None).save_weights(path)
        return path

    def models(self, backbone_name: str | None = None):
        """(backbone, feature extractor, the extractor as a tf.function): the suite's backbone
        with the local weights, or another one with random weights."""
        backbone_name = backbone_name or self.sizes.backbone
        if backbone_name not in self._models:
            import tensorflow as tf

            from trainer.model import build_backbone, feature_extractor

            weights = str(self.weights) if backbone_name == self.sizes.backbone else None
            backbone = build_backbone(backbone_name, self.sizes.image_size, weights)
            extractor = feature_extractor(backbone, backbone_name)
            run = tf.function(lambda images: extractor(images, training=False), reduce_retracing=True)
            self._models[backbone_name] = backbone, extractor, run
        return self._models[backbone_name]

    def demo(self, images: int) -> Path:
        """A synthetic dataset of `images` 256 px JPEGs (half each class), made once."""
        from trainer.data.demo import make_demo_data

        folder = self.scratch / f"demo-{images}"
        make_demo_data(folder, per_class=images // 2, seed=0, image_size=256)
        return folder / "Images"


# ---------------------------------------------------------------------------------------------
# The figures


def head_epoch(bench: Bench) -> Figure:
    """One epoch of the head on cached features vs one epoch of the same model through the
    frozen backbone, on the same training images, batch size 32; decoded images are cached in
    memory for the latter, so it is the backbone's cost, not JPEG decoding."""
    import keras
    import numpy as np

    from trainer.data.pipeline import make_dataset
    from trainer.features.extract import featurize
    from trainer.head import make_head
    from trainer.model import make_model

    backbone, extractor, _ = bench.models()
    paths = bench.paths
    labels = np.array([row.label == bench.rows[0].label for row in bench.rows][: len(paths)], dtype=np.int32)
    features = featurize(extractor, paths, bench.sizes.image_size, 32)
    head = make_head(features, 2, 0.2)
    head.compile(keras.optimizers.Adam(0.001), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model = make_model(backbone, bench.sizes.backbone, 2, True, 0.2, head)
    model.compile(keras.optimizers.Adam(0.001), "sparse_categorical_crossentropy", metrics=["accuracy"])
    import tensorflow as tf

    feature_data = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(len(labels), seed=0).batch(32)
    image_data = make_dataset(paths, labels, bench.sizes.image_size, 32, shuffle=True, cache=True)
    model.fit(image_data, epochs=1, verbose=0)  # warm: fills the image cache, traces
    head.fit(feature_data, epochs=1, verbose=0)
    mine, theirs = alternate(
        bench.sizes.repeat,
        lambda: timed(lambda: head.fit(feature_data, epochs=1, verbose=0)),
        lambda: timed(lambda: model.fit(image_data, epochs=1, verbose=0)),
    )
    return speedup(
        "head epoch on cached features vs an epoch through the frozen backbone",
        ">= 50",
        mine,
        theirs,
        f"{len(paths)} images, batch 32, {bench.sizes.backbone} at {bench.sizes.image_size} px",
    )


def featurization_throughput(bench: Bench) -> list[Figure]:
    """The trainer's featurization of training images (files in, features out, all eight
    default views, through the runtime it chooses) vs TensorFlow running the backbone alone on
    a ready in-memory batch as the trainer configures it (oneDNN, its batch size), in forward
    passes per second, each side in its own process, passes alternating. For the default
    backbone with its ImageNet weights (goal 1.5x) and for the suite's (random weights)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("TRAINER_FEATURIZER", None)
    figures = []
    size = bench.sizes.image_size
    # The suite's backbone is the heavier one: fewer images keep its figure within minutes.
    for backbone_name, weights, goal, paths in (
        (DEFAULT_BACKBONE, "imagenet", ">= 1.5", bench.paths),
        (bench.sizes.backbone, str(bench.weights), ">= 0.9", bench.paths[: bench.sizes.one_at_a_time]),
    ):
        ours = Worker(bench, "pipeline", paths, environment, backbone_name, weights)
        alone = Worker(bench, "backbone", paths, environment, backbone_name, weights)
        # For the default backbone, the pipeline as it was too: TensorFlow, a decode per view.
        before = Worker(bench, "before", paths, environment, backbone_name, weights) if goal == ">= 1.5" else None
        old: list[float] = []
        try:

            def baselines(before=before, alone=alone, old=old) -> float:
                if before is not None:
                    old.append(before())
                return alone()

            mine, theirs = alternate(bench.sizes.repeat, ours, baselines)
        finally:
            for worker in (ours, alone, before):
                if worker is not None:
                    worker.close()
        ours_rate, alone_rate = ours.passes / statistics.median(mine), alone.passes / statistics.median(theirs)
        if old:
            figures.append(speedup(f"featurization, eight views, vs the same pipeline before (TensorFlow, a decode "
                                   f"per view), {backbone_name}", ">= 1.0", mine, old,
                                   f"{len(paths)} images x 8 views at {size} px, through {ours.runtime}"))  # fmt: skip
        figures.append(
            Figure(
                f"featurization, files in and eight views out, vs the backbone alone in TensorFlow (forward "
                f"passes/s), {backbone_name}",
                goal,
                ours_rate / alone_rate,
                {"forward_passes_per_second": round(ours_rate, 2), "runtime": ours.runtime, "seconds": spread(mine)},
                {
                    "forward_passes_per_second": round(alone_rate, 2),
                    "runtime": "tensorflow",
                    "seconds": spread(theirs),
                },  # fmt: skip
                f"{len(paths)} images x 8 views at {size} px ({ours.passes} forward passes) through {ours.runtime}, "
                f"vs {alone.passes // alone.per_call} batches of {alone.per_call} on one in-memory batch",
            )
        )
    return figures


class Worker:
    """A featurize_worker.py process: built and warmed once, then one timed pass per call."""

    def __init__(self, bench: Bench, mode: str, paths: list[str], environment: dict, backbone: str | None = None,
                 weights: str | None = None):  # fmt: skip
        backbone, weights = backbone or bench.sizes.backbone, weights or str(bench.weights)
        listing = bench.scratch / f"{mode}-paths.txt"
        listing.write_text("\n".join(paths), encoding="utf-8")
        self.log = bench.scratch / f"{mode}-{backbone}-worker.log"
        command = [sys.executable, str(ROOT / "benchmarks" / "featurize_worker.py"), mode, backbone]
        command += [str(bench.sizes.image_size), weights, str(listing)]
        with self.log.open("w") as log_file:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True, env=environment
            )
        _, per_call, passes, self.runtime = self._answer("ready").split()
        self.per_call, self.passes = int(per_call), int(passes)

    def _answer(self, expected: str = "") -> str:
        line = self.process.stdout.readline()
        if not line.startswith(expected):
            self.process.kill()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"featurize_worker.py failed: {tail}")
        return line

    def __call__(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return float(self._answer())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def batched_vs_single(bench: Bench) -> Figure:
    """The trainer's featurization vs decoding and featurizing one image at a time, as ML.NET's
    ImageClassificationTrainer does. Each side is a process of its own, configured as in real
    use: ours as `python -m trainer train` (oneDNN on x86-64, its batch size), ML.NET's way with
    TensorFlow's defaults. The passes alternate, one process waiting while the other runs."""
    paths = bench.paths[: bench.sizes.one_at_a_time]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    defaults = {key: value for key, value in environment.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    if USER_ONEDNN is not None:
        defaults["TF_ENABLE_ONEDNN_OPTS"] = USER_ONEDNN
    ours, single = Worker(bench, "batched", paths, environment), Worker(bench, "single", paths, defaults)
    try:
        mine, theirs = alternate(bench.sizes.repeat, ours, single)
    finally:
        ours.close()
        single.close()
    from trainer import device

    return speedup(
        "batched featurization vs one image at a time",
        ">= 1.3",
        mine,
        theirs,
        f"{len(paths)} images; ours {ours.per_call} per call, {device.onednn()[1]}; "
        f"one at a time with TensorFlow's defaults (TF_ENABLE_ONEDNN_OPTS "
        f"{'=' + USER_ONEDNN if USER_ONEDNN is not None else 'unset'})",
    )


def naive_check(path: Path) -> None:
    """What a validation loop does without this tool: read, hash, open, decode in full (the
    decode is what catches a truncated file)."""
    import hashlib
    import io

    from PIL import Image

    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def parallel_validation(bench: Bench) -> Figure:
    """trainer.data.validate (a forked process per CPU, or a thread per CPU where forking is not
    safe, images in chunks, JPEGs entropy-decoded at a reduced DCT scale) vs a plain
    single-threaded Pillow loop that reads, hashes and fully decodes each file. Both catch the
    same defects; files are in the page cache for both. Measured in a process without
    TensorFlow (benchmarks/validation_worker.py), as the trainer validates before importing it.
    The note gives the share that parallelism alone brings: our per-image check in a plain loop."""
    repeat = max(5, bench.sizes.repeat)
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.validation_worker", str(bench.folder), str(repeat)],
        cwd=ROOT, env=environment, capture_output=True, text=True,
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(f"validation_worker failed: {completed.stderr.strip().splitlines()[-1:]}")
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    single, mine = statistics.median(found["single"]), statistics.median(found["ours"])
    how, workers = found["plan"]
    return speedup(
        "parallel image validation vs a single-threaded Pillow loop",
        ">= 1.6",
        found["ours"],
        found["loop"],
        f"{found['images']} images, {os.cpu_count()} cores, on {workers} {how}; parallelism alone (our check "
        f"in a plain loop, {single:.3f} s): {single / mine:.2f}x; the machine's ceiling in the same rounds "
        f"(pure Python on {workers} processes vs one): {found['ceiling']:.2f}x",
    )


def _python(*args: str, cwd: Path) -> float:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {completed.stderr.strip().splitlines()[-1:]}")
    return seconds


def _train(bench: Bench, folder: Path, workspace: Path, output: str, *options: str) -> float:
    """`python -m trainer train` in a new process, every epoch run, no exports: seconds."""
    epochs = str(bench.sizes.epochs)
    return _python(
        *("-m", "trainer", "train", "--folder", str(folder), "--epochs", epochs, "--patience", epochs),
        *("--export", "none", "--workspace", str(workspace), "--output", str(bench.scratch / output), *options),
        cwd=bench.scratch,
    )


def whole_train(bench: Bench) -> Figure:
    """The whole `train` (bottleneck mode, cold cache) vs the naive Keras way, each a new
    process, with the suite's backbone and local weights on the 400 photos."""
    sizes = bench.sizes
    weights = str(bench.weights)
    model = ("--backbone", sizes.backbone, "--weights", weights, "--image-size", str(sizes.image_size))
    cold, naive = [], []
    for index in range(sizes.repeat_train):
        log(f"  whole train, repetition {index + 1}: the naive Keras way")
        naive.append(
            _python(
                str(ROOT / "benchmarks" / "naive_keras.py"),
                str(bench.folder),
                *model,
                "--epochs",
                str(sizes.epochs),
                cwd=bench.scratch,
            )
        )
        log(f"  whole train, repetition {index + 1}: ours, cold cache")
        workspace = bench.scratch / f"ws{index}"
        shutil.rmtree(workspace, ignore_errors=True)
        # The baseline trains on the images as they are, so ours does too: no dihedral views.
        cold.append(_train(bench, bench.folder, workspace, f"cold{index}", *model, "--feature-augment", "none"))
        shutil.rmtree(bench.scratch / f"cold{index}", ignore_errors=True)
    return speedup(
        f"the whole train in bottleneck mode, {sizes.epochs} epochs, vs the naive Keras way",
        ">= 10",
        cold,
        naive,
        f"{sizes.backbone} at {sizes.image_size} px, {sizes.epochs} epochs, exports off, each run a new process",
    )


def warm_rerun(bench: Bench) -> Figure:
    """A second identical `train` (every feature from the cache) vs the first, with the default
    backbone and its ImageNet weights on a synthetic dataset large enough that featurizing, not
    starting TensorFlow, is what a cold run pays for. The same runs on a smaller dataset give
    each side's cost per image (the slope between the two sizes), which does not depend on the
    dataset's size, and its fixed cost. Both runs use the trainer's defaults, as a user's rerun
    does: the cold run featurizes each training image's eight dihedral views, about 6.6 times
    the featurizing of the images alone (BENCHMARKS.md also gives the figure without them)."""
    small, large = bench.sizes.rerun_images
    seconds: dict[tuple[int, str], list[float]] = {(n, side): [] for n in (small, large) for side in ("cold", "warm")}
    for index in range(bench.sizes.repeat_train):
        for images in (small, large):
            folder = bench.demo(images)
            workspace = bench.scratch / f"rerun-ws-{images}-{index}"
            shutil.rmtree(workspace, ignore_errors=True)
            for side in ("cold", "warm"):
                log(f"  warm rerun, repetition {index + 1}: {images} images, {side}")
                output = f"rerun-{images}-{side}-{index}"
                seconds[images, side].append(_train(bench, folder, workspace, output, "--file", "training_data.csv"))
                shutil.rmtree(bench.scratch / output, ignore_errors=True)
            shutil.rmtree(workspace, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    per_image = {side: (median[large, side] - median[small, side]) / (large - small) for side in ("cold", "warm")}
    fixed = {side: median[small, side] - per_image[side] * small for side in ("cold", "warm")}
    # Between two small datasets the warm slope is within the noise, and can come out negative.
    per_image_ratio = (
        f"{per_image['cold'] / per_image['warm']:.0f}x" if per_image["warm"] > 0 else "warm slope in the noise"
    )
    figure = speedup(
        f"a second identical train (warm bottleneck cache) vs the first, {large} images",
        ">= 5",
        seconds[large, "warm"],
        seconds[large, "cold"],
        f"{DEFAULT_BACKBONE} (ImageNet weights) at 224 px on {large} synthetic 256 px JPEGs, {bench.sizes.epochs} "
        f"epochs, the trainer's defaults (dihedral views), exports off, each run a new process; per image (slope from {small} to {large} images): cold "
        f"{per_image['cold'] * 1000:.1f} ms, warm {per_image['warm'] * 1000:.2f} ms ({per_image_ratio}); "
        f"fixed cost: cold {fixed['cold']:.1f} s, warm {fixed['warm']:.1f} s",
    )
    figure.ours["per_image_seconds"], figure.baseline["per_image_seconds"] = per_image["warm"], per_image["cold"]
    figure.ours["fixed_seconds"], figure.baseline["fixed_seconds"] = fixed["warm"], fixed["cold"]
    figure.ours[f"seconds_at_{small}"], figure.baseline[f"seconds_at_{small}"] = (
        spread(seconds[small, "warm"]),
        spread(seconds[small, "cold"]),
    )
    return figure


def setup_rerun(bench: Bench) -> Figure:
    """`invoke setup` where it already ran vs `invoke --list` (invoke's own start-up)."""
    invoke = [sys.executable, "-m", "invoke"]
    report = str(bench.scratch / "setup-report.json")

    def run(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run([*invoke, *args], cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - started

    run("setup", "--report", report)  # the premise: setup has already run here
    repeat = max(5, bench.sizes.repeat * 2)
    mine, theirs = alternate(repeat, lambda: run("setup", "--report", report), lambda: run("--list"))
    return Figure(
        "invoke setup where it already ran vs invoke --list",
        "<= 2",
        statistics.median(mine) / statistics.median(theirs),
        {"seconds": spread(mine)},
        {"seconds": spread(theirs)},
    )


FIGURES: dict[str, Callable[[Bench], Figure | list[Figure]]] = {
    "head_epoch": head_epoch,
    "featurization": featurization_throughput,
    "batched": batched_vs_single,
    "train": whole_train,
    "rerun": warm_rerun,
    "validation": parallel_validation,
    "setup": setup_rerun,
}


# ---------------------------------------------------------------------------------------------


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    from importlib import metadata

    from trainer import device

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": metadata.version("tensorflow"),
        "gpu": bool(shutil.which("nvidia-smi")),
        "onednn": device.onednn()[1],
    }


def table(figures: list[Figure]) -> str:
    lines = [f"{'figure':<88} {'ratio':>8} {'goal':>7}  met", "-" * 110]
    for figure in figures:
        lines.append(f"{figure.name:<88} {figure.ratio:>7.2f}x {figure.goal:>7}  {'yes' if figure.met else 'NO'}")
        ours, theirs = figure.ours["seconds"], figure.baseline["seconds"]
        lines.append(
            f"    ours {ours['median']:.3f} s ({ours['min']:.3f}-{ours['max']:.3f}, n={ours['n']}); "
            f"baseline {theirs['median']:.3f} s ({theirs['min']:.3f}-{theirs['max']:.3f}, n={theirs['n']})"
            + (f"; {figure.note}" if figure.note else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition: shows the suite works")
    parser.add_argument("--report", help="also write the results as JSON to this file")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(FIGURES) + ["scale"], help="run only these figures (scale: only when named)"
    )
    parser.add_argument("--skip", nargs="+", choices=sorted(FIGURES), default=[], help="run every figure but these")
    parser.add_argument(
        "--repeat", type=int, help="repetitions per figure (default 5, the whole train 3; 1 with --quick)"
    )
    args = parser.parse_args(argv)
    if args.only and "scale" in args.only:
        # The scale figure is its own program (an hour of training): benchmarks/scale.py.
        from benchmarks import scale

        if len(args.only) > 1:
            parser.error("--only scale runs alone")
        return scale.main(["--report", args.report] if args.report else [])
    sizes = QUICK if args.quick else FULL
    if args.repeat:
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        sizes = Sizes(**{**asdict(sizes), "repeat": args.repeat, "repeat_train": min(args.repeat, sizes.repeat_train)})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    global USER_ONEDNN
    USER_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    from trainer import device

    # The in-process figures and the trainer processes run TensorFlow as `python -m trainer` does.
    log(f"TensorFlow: {device.onednn()[1]}")
    figures: list[Figure] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        bench = Bench(sizes, Path(scratch))
        log(f"data: {bench.dataset}; backbone {sizes.backbone} at {sizes.image_size} px, random local weights")
        for name in [name for name in args.only or FIGURES if name not in args.skip]:
            log(f"measuring {name} ...")
            result = FIGURES[name](bench)
            figures += result if isinstance(result, list) else [result]
    print(table(figures))
    document = {
        "figures": [asdict(figure) for figure in figures],
        "machine": machine(),
        "quick": args.quick,
        "data": bench.dataset,
        "backbone": sizes.backbone,
        "image_size": sizes.image_size,
        "seconds": round(time.time() - started, 1),
    }
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    missed = [figure.name for figure in figures if not figure.met]
    if missed and not args.quick:
        print(f"goal missed: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0
