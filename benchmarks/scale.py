"""The scale figure: the real default run on generated datasets of 5,600 and 56,000 images.

    python -m benchmarks --only scale [--report PATH]        (not run by CI: about an hour)
    python -m benchmarks.scale --images 5600 56000 [--keep DIR] [--trainer-root TREE]

Each dataset has SDNET2018's shape: surfaces D, P, W with classes CD/UD, CP/UP, CW/UW, about
15% cracked, 256 px JPEGs, plus planted near-duplicates (a re-encoded, a resized and a cropped
copy of a photo, filed under the other label) to check the audit's precision as the number of
pairs grows. Each goes through `python -m trainer train --image-size 64` with every other option
at its default (eight dihedral views, the audit, every export), then `invoke train`'s decision
twice (the second on an unchanged dataset) and `invoke publish`.

Per stage: seconds, seconds per image, and the peak resident memory. The trainer's memory is
sampled from outside every 0.1 s (VmRSS of the process), and stages are cut at the lines the
trainer logs, so the same measure applies to a tree of older code (--trainer-root); the
trainer's own manifest.json `stages` (seconds and VmHWM per stage) is reported beside it when
the run wrote one. Goals: each stage's per-image cost at the larger size at most 1.5x the
smaller's; the larger run's peak under 6 GB; the rerun decision under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SURFACES = {"D": ("CD", "UD"), "P": ("CP", "UP"), "W": ("CW", "UW")}
CRACKED_SHARE = 0.15
PLANTED = 20  # photos each given three copies under the other label
# Where each stage ends, as the trainer logs it (the same lines before and after issue 24).
MARKS = [
    ("digest", re.compile(r"^read \d+ rows from")),
    ("validate", re.compile(r"^(feature cache|--backbone auto)")),
    ("featurize", re.compile(r"bottleneck mode, training the head")),
    ("head+evaluate", re.compile(r"^test: ")),
    ("write", re.compile(r"^run folder: ")),
]


def _surface_image(job: tuple[int, int, str, str, str]) -> None:
    import numpy as np

    from trainer.data.demo import make_image

    seed, size, surface, label, path = job
    rng = np.random.default_rng(seed)
    image = make_image(rng, "CD" if label.startswith("C") else "UD", size)
    # Surfaces differ in brightness and grain, as deck, pavement and wall photos do.
    gain = {"D": 1.0, "P": 0.8, "W": 1.15}[surface]
    pixels = np.clip(np.asarray(image, dtype=np.float32) * gain, 0, 255).astype(np.uint8)
    from PIL import Image

    Image.fromarray(pixels).save(path, quality=88)


def make_dataset(folder: Path, images: int, seed: int = 0, size: int = 256) -> Path:
    """SDNET2018's layout with `images` photos (made once; a marker says it is whole)."""
    marker = folder / "dataset.json"
    wanted = {"images": images, "seed": seed, "size": size, "planted": PLANTED}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder / "SDNET2018"
    shutil.rmtree(folder, ignore_errors=True)
    root = folder / "SDNET2018"
    jobs = []
    per_surface = images // len(SURFACES)
    for number, (surface, (cracked, uncracked)) in enumerate(SURFACES.items()):
        for label in (cracked, uncracked):
            (root / surface / label).mkdir(parents=True)
        for index in range(per_surface):
            label = cracked if index < round(per_surface * CRACKED_SHARE) else uncracked
            path = root / surface / label / f"{surface}{index:06d}.jpg"
            jobs.append((seed * 10_000_000 + number * 1_000_000 + index, size, surface, label, str(path)))
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_surface_image, jobs, chunksize=256))
    _plant_near_duplicates(root)
    marker.write_text(json.dumps(wanted) + "\n")
    return root


def _plant_near_duplicates(root: Path) -> None:
    """PLANTED photos of D/CD, each copied three ways into D/UD: re-encoded at quality 60,
    resized to 200 px, and cropped by 8 px."""
    from PIL import Image

    for index, source in enumerate(sorted((root / "D" / "CD").iterdir())[:PLANTED]):
        with Image.open(source) as photo:
            photo.save(root / "D" / "UD" / f"copy-{index}-reencoded.jpg", quality=60)
            photo.resize((200, 200)).save(root / "D" / "UD" / f"copy-{index}-resized.jpg", quality=88)
            photo.crop((8, 8, 256, 256)).save(root / "D" / "UD" / f"copy-{index}-cropped.jpg", quality=88)


class Sampler:
    """The resident memory of a process, sampled on a thread; `peak(start, end)` of a window."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every, self.samples = pid, every, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            rss = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), None)
            if rss is not None:
                self.samples.append((time.perf_counter(), rss / 1024))
            time.sleep(self.every)

    def peak(self, start: float, end: float) -> float:
        inside = [mb for at, mb in self.samples if start <= at <= end]
        return round(max(inside, default=0.0), 1)


def run_trainer(folder: Path, workspace: Path, output: Path, trainer_root: Path, log_path: Path) -> dict:
    """`python -m trainer train` at 64 px, all else default; stages from its log lines."""
    command = [sys.executable, "-m", "trainer", "train", "--folder", str(folder), "--image-size", "64"]
    command += ["--workspace", str(workspace), "--output", str(output)]
    environment = {**os.environ, "PYTHONPATH": str(trainer_root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=trainer_root, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    sampler = Sampler(process.pid)
    cuts, lines = [], []
    with log_path.open("w") as log_file:
        for line in process.stderr:
            log_file.write(line)
            lines.append(line)
            for name, pattern in MARKS:
                if pattern.search(line.strip()) and name not in [cut[0] for cut in cuts]:
                    cuts.append((name, time.perf_counter()))
    process.wait()
    ended = time.perf_counter()
    stages, previous = {}, started
    for name, at in cuts:
        stages[name] = {"seconds": round(at - previous, 2), "peak_mb": sampler.peak(previous, at)}
        previous = at
    stages["diagnostics" if (output / "manifest.json").is_file() else "after"] = {
        "seconds": round(ended - previous, 2),
        "peak_mb": sampler.peak(previous, ended),
    }
    manifest = json.loads((output / "manifest.json").read_text()) if (output / "manifest.json").is_file() else {}
    return {
        "returncode": process.returncode,
        "seconds": round(ended - started, 2),
        "peak_mb": sampler.peak(started, ended),
        "stages": stages,
        "manifest_stages": manifest.get("stages"),
        "diagnostics": manifest.get("diagnostics"),
        "audit": manifest.get("audit"),
        "last_lines": [line.rstrip() for line in lines[-3:]],
    }


def decision_seconds(folder: Path, trainer_root: Path) -> float:
    """`invoke train`'s decision (the training request, which reads the data), in a new process."""
    code = (
        "import sys, time; from pathlib import Path; started = time.perf_counter();"
        "from scripts import training; training.request_of(['--folder', sys.argv[1], '--image-size', '64'], Path('.'));"
        "print(time.perf_counter() - started)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=trainer_root, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(trainer_root)})  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1:])
    return round(float(result.stdout.strip().splitlines()[-1]), 3)


def publish_seconds(run: Path, destination: Path, trainer_root: Path) -> float:
    shutil.rmtree(destination.parent, ignore_errors=True)
    destination.parent.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invoke", "publish", "--run", str(run), "--to", str(destination)],
                   cwd=trainer_root, check=True, capture_output=True)  # fmt: skip
    return round(time.perf_counter() - started, 2)


def planted_found(audit_csv: Path) -> dict:
    """How many of the planted copies the audit grouped with their original, and how many other
    near-duplicate images it listed."""
    from trainer import runfolder

    if not audit_csv.is_file():
        return {}
    rows = [row for row in runfolder.read_audit(audit_csv) if row["Reason"].startswith("near-duplicate")]
    copies = {row["ImagePath"] for row in rows if Path(row["ImagePath"]).name.startswith("copy-")}
    originals = {f"D{index:06d}.jpg" for index in range(PLANTED)}
    others = [row for row in rows if not Path(row["ImagePath"]).name.startswith("copy-")
              and Path(row["ImagePath"]).name not in originals]  # fmt: skip
    return {"planted_copies": 3 * PLANTED, "copies_found": len(copies), "other_images_listed": len(others)}


def measure(images: int, scratch: Path, trainer_root: Path) -> dict:
    folder = make_dataset(scratch / f"data-{images}", images)
    workspace, output = scratch / f"ws-{images}", scratch / f"run-{images}"
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    print(f"scale: {images} images, training ...", file=sys.stderr, flush=True)
    result = run_trainer(folder, workspace, output, trainer_root, scratch / f"train-{images}.log")
    result["images"] = sum(1 for _ in folder.rglob("*.jpg"))
    result["decision_seconds"] = [decision_seconds(folder, trainer_root) for _ in range(2)]
    if (output / "model.keras").is_file():
        result["publish_seconds"] = publish_seconds(output, scratch / f"published-{images}" / "model", trainer_root)
        result["near_duplicates"] = planted_found(output / "audit-full.csv") or planted_found(output / "audit.csv")
    return result


def table(results: list[dict]) -> str:
    lines = []
    small, large = results[0], results[-1]
    names = list(dict.fromkeys(name for result in results for name in result["stages"]))
    lines.append(
        f"{'stage':<16}" + "".join(f"{str(r['images']) + ' images':>30}" for r in results) + "  per-image ratio"
    )
    for name in names:
        cells = []
        for result in results:
            stage = result["stages"].get(name)
            cells.append(f"{stage['seconds']:>8.1f} s {1000 * stage['seconds'] / result['images']:>6.2f} ms {stage['peak_mb']:>6.0f} MB"
                         if stage else f"{'-':>30}")  # fmt: skip
        ratio = ""
        if name in small["stages"] and name in large["stages"] and len(results) > 1:
            ratio = (large["stages"][name]["seconds"] / large["images"]) / (
                small["stages"][name]["seconds"] / small["images"]
            )
            ratio = f"{ratio:.2f}x"
        lines.append(f"{name:<16}" + "".join(f"{cell:>30}" for cell in cells) + f"  {ratio}")
    for result in results:
        lines.append(f"{result['images']} images: exit {result['returncode']}, {result['seconds']} s, peak {result['peak_mb']} MB, "
                     f"decision {result.get('decision_seconds')} s, publish {result.get('publish_seconds')} s, "
                     f"near-duplicates {result.get('near_duplicates')}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[5600, 56000])
    parser.add_argument("--keep", default=str(Path.home() / ".cache" / "ud-cd-scale"),
                        help="datasets, runs and logs (datasets are reused across runs)")  # fmt: skip
    parser.add_argument("--trainer-root", default=str(ROOT), help="the tree whose trainer runs (default this one)")
    parser.add_argument("--report", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    scratch = Path(args.keep)
    scratch.mkdir(parents=True, exist_ok=True)
    results = [measure(images, scratch, Path(args.trainer_root).resolve()) for images in args.images]
    print(table(results))
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
