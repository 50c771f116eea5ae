"""Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group (Colab's
"interrupt execution" does the same), here with os.killpg on a group started apart. Every layer
stops cleanly: one line saying what was interrupted, exit code 130, no traceback, and the same
command run again finishes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import INVOKE, bundle_copy

pytestmark = pytest.mark.slow


def _interrupted(argv: list, cwd: Path, env: dict, ready) -> subprocess.CompletedProcess:
    """Run argv in a process group of its own, send the group SIGINT once ready() holds, and
    wait for it to end."""
    process = subprocess.Popen([str(a) for a in argv], cwd=cwd, env={**os.environ, **env}, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the command ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_ctrl_c_during_invoke_train_stops_both_layers_in_one_line_each_and_the_rerun_resumes(demo_dir, tmp_path):
    copy = bundle_copy(tmp_path)
    workspace = tmp_path / "ws"
    train = [*INVOKE, "train", "--folder", demo_dir / "Images", "--file", "training_data.csv", "--backbone", "tiny",
             "--weights", "none", "--image-size", "48", "--epochs", "40", "--patience", "40", "--no-publish"]  # fmt: skip
    env = {"INVOKE_TRAIN_EXTRA": f"--export none --no-audit --workspace {workspace}"}
    checkpointed = lambda: any(workspace.glob("checkpoints/*/train/state.json"))  # noqa: E731
    result = _interrupted(train, copy, env, checkpointed)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ("train: interrupted; training resumes from its last checkpoint and keeps the features "
                         "already cached; rerun `invoke train` to finish")  # fmt: skip
    assert "trainer: interrupted; nothing half-written is kept, and the same command resumes" in lines
    assert not list((copy / "runs").glob("*/model.keras"))
    rerun = subprocess.run([str(a) for a in train], cwd=copy, env={**os.environ, **env}, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from epoch" in rerun.stderr


def test_ctrl_c_during_invoke_publish_keeps_the_published_model_and_says_so(finished_run, tmp_path):
    copy = bundle_copy(tmp_path)
    big = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(big)], check=True)
    (big / "padding.bin").write_bytes(os.urandom(1 << 20) * 400)  # 400 MB, so the copy takes a while
    drive = tmp_path / "drive"
    drive.mkdir()
    publish = [*INVOKE, "publish", "--run", big, "--to", drive / "models"]
    partial = lambda: any(drive.glob(".models.partial-*/padding.bin"))  # noqa: E731
    result = _interrupted(publish, copy, {}, partial)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "publish: interrupted; the published model is still the one before it, whole; rerun `invoke publish` to finish"
    )
    assert sorted(path.name for path in drive.iterdir()) == []  # nothing was published, nothing half-copied
