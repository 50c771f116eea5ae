from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
CONCRETE = ROOT / "datasets" / "concrete" / "Images"  # the shipped photos
IN_CI = os.environ.get("TRAINER_CI") == "1"  # CI fails where a missing tool would skip a test
GDOWN_6 = "6.5.1"  # the newest gdown; Colab's 5.2.2 is the pinned one


INVOKE = [sys.executable, "-m", "invoke"]


def bundle_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "bundle dir"  # a space, to keep the quoting honest
    copy.mkdir()
    for name in ("tasks.py", "invoke.yaml", "requirements.txt", "requirements-dev.txt", "supported.txt"):
        shutil.copy2(ROOT / name, copy / name)
    for folder in ("scripts", "trainer", "colab", ".ci", "datasets", "docs"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def documented_options(root: Path) -> str:
    """The option table in root's docs/trainer.md (trainer.config.reference() renders it)."""
    text = (root / "docs" / "trainer.md").read_text(encoding="utf-8")
    return text.split("<!-- options: begin -->\n", 1)[1].split("<!-- options: end -->", 1)[0]


def invoke(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*INVOKE, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900
    )


def snapshot(*folders: Path) -> dict:
    state = {}
    for folder in folders:
        if not folder.exists():
            state[str(folder)] = None
            continue
        for path in [folder, *folder.rglob("*")]:
            info = path.lstat()
            state[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return state


@pytest.fixture()
def trainer_log(monkeypatch) -> list:
    """The records the trainer's logger emits during a test, at INFO and above (the logger may not
    propagate to pytest's caplog: the CLI sets it up that way)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("trainer")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "level", logging.INFO)
    yield records
    logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path_factory, monkeypatch):
    """Each test runs in a folder of its own, so default paths (runs/, workspace/) land there."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A small demo dataset shared by the tests that only read it: 12 images per class, 64 px."""
    from trainer.data.demo import make_demo_data

    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_data(out, per_class=12, seed=1, image_size=64)
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights file for the tiny backbone (any image size: it ends in global pooling), so that
    a run is in bottleneck mode without downloading anything."""
    from trainer.model import build_backbone

    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    build_backbone("tiny", 48, None).save_weights(path)
    return path


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
    """`train` on an image folder with a small, fast model (tiny, no weights, 48 px, 1 epoch,
    no feature augmentation, no label audit): options override those or add flags (image_size=64
    -> --image-size 64; True -> the bare flag, False -> --no-flag). No export benchmark unless asked."""
    settings = {"backbone": "tiny", "weights": "none", "image_size": 48, "epochs": 1, "feature_augment": "none"}
    settings["audit"] = False  # it featurizes with EfficientNet-Lite0 when the run has no pretrained features
    settings["export_benchmark"] = False  # timing every format is the run_dir fixture's to prove, not every test's
    settings.update(options)
    args = ["train", "--folder", str(folder)] + (["--file", csv] if csv else [])
    for key, value in settings.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
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
def drive_server(tmp_path_factory):
    """The stand-in for Google Drive (tests/drive_stand_in.py), one per session."""
    from tests.drive_stand_in import start

    if shutil.which("openssl") is None:
        if IN_CI:
            pytest.fail("openssl is needed for the stand-in Drive's certificate")
        pytest.skip("openssl is needed for the stand-in Drive's certificate")
    drive, httpd = start(tmp_path_factory.mktemp("drive"))
    yield drive
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def drive(drive_server):
    """The stand-in Drive with no files shared yet."""
    drive_server.files.clear()
    drive_server.tunnels.clear()
    return drive_server


@pytest.fixture(scope="session")
def gdown_6(tmp_path_factory) -> Path:
    """A folder holding gdown 6.x alone (its dependencies are gdown 5's), to put first on
    PYTHONPATH: the data step runs against both majors."""
    target = tmp_path_factory.mktemp("gdown6")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"gdown=={GDOWN_6}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        message = f"could not install gdown {GDOWN_6} from the package index: {result.stderr.strip()[-300:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return target


def images_zip(path: Path, per_class: int = 3, with_csv: bool = True) -> Path:
    """An archive in the original Images.zip layout: Images/CD, Images/UD, the CSV inside Images/."""
    from PIL import Image

    lines = ["ImagePath,Label"]
    with zipfile.ZipFile(path, "w") as handle:
        for label_index, label in enumerate(("CD", "UD")):
            for i in range(per_class):
                image = path.parent / "tmp.png"
                Image.new("RGB", (8, 8), (label_index * 90, i * 20, 0)).save(image)
                handle.write(image, f"Images/{label}/{i}.png")
                lines.append(f"../Images/{label}/{i}.png,{label}")
        if with_csv:
            handle.writestr("Images/training_data.csv", "\n".join(lines) + "\n")
    (path.parent / "tmp.png").unlink()
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    data = data or {}
    with tarfile.open(path, "w:gz") as handle:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            handle.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def tar_member(name: str, kind=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, demo_dir) -> Path:
    """One real run on the demo data, with every export, shared by the tests of what a run
    leaves (report, evaluate, predict, export); a duplicated row and a missing file give the
    report drops to show. Tests copy it before they change anything."""
    out = tmp_path_factory.mktemp("report") / "run"
    images = out.parent / "Images"
    shutil.copytree(demo_dir / "Images", images)
    lines = (images / "training_data.csv").read_text().splitlines()
    lines += [lines[1], "CD/not-there.jpg,CD"]
    (images / "training_data.csv").write_text("\n".join(lines) + "\n")
    result = run_module(
        *train_args(images, epochs=3, output=out, workspace=out.parent / "ws", audit=True, export_benchmark=True)
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture()
def finished_run(request) -> Path:
    """A finished run folder, with every export, to read or copy: in CI the README's main job's
    published one (TRAINER_MAIN_JOB_RUN, the default model on the 400 photos, trained already),
    so that the slow tests build no run_dir of their own; elsewhere run_dir."""
    folder = os.environ.get("TRAINER_MAIN_JOB_RUN")
    return Path(folder) if folder else request.getfixturevalue("run_dir")
