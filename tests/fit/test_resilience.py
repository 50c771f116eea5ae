"""Resume after a killed process, two workers on 127.0.0.1, and deterministic reruns: real
processes, real training on the CPU."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_module, train_args
from tests.faults import generator


def _start(args: list, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", *map(str, args)],
        cwd=cwd or Path.cwd(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _epoch_in(workspace: Path) -> int:
    for state in workspace.glob("checkpoints/*/*/state.json"):
        try:
            return json.loads(state.read_text())["epoch"]
        except (OSError, ValueError):
            return 0
    return 0


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_epoch(demo_dir, tmp_path):
    workspace = tmp_path / "ws"
    args = train_args(
        demo_dir / "Images", batch_size=4, epochs=12, patience=50, workspace=workspace, output=tmp_path / "run"
    )
    # A random point: after a random number of finished epochs, a random fraction into the next.
    rng = generator("training")
    after_epochs, extra = rng.randint(1, 5), rng.uniform(0.0, 1.5)
    process = _start(args)
    deadline = time.time() + 240
    while _epoch_in(workspace) < after_epochs and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(extra)
    assert process.poll() is None, "training ended before it could be killed: " + process.stderr.read()
    killed_at = _epoch_in(workspace)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run").exists(), "a killed run must not leave a run folder"

    rerun = run_module(*args)
    assert rerun.returncode == 0, rerun.stderr
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[1]) for line in history] == list(range(1, 13))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["resumed_from_epoch"]["train"] >= killed_at
    # A fresh process chooses oneDNN before TensorFlow is imported, and records it.
    if platform.machine() == "x86_64" and "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        assert manifest["policy"]["onednn"] is True
    assert not list(workspace.glob("checkpoints/*")), "checkpoints are removed once the run folder is written"


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@pytest.mark.slow
def test_two_workers_on_localhost_train_and_the_model_evaluates(demo_dir, tmp_path, cli):
    workers = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    args = train_args(demo_dir / "Images", batch_size=4, epochs=2, workspace=tmp_path / "ws", output=tmp_path / "run")
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(_start(args, env={"TF_CONFIG": tf_config}, cwd=tmp_path))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    assert "strategy multi_worker (2 replicas)" in outputs[0][1]
    assert "worker done; the chief writes the run folder" in outputs[1][1]
    code, evaluated, err = cli("evaluate", "--model", tmp_path / "run")  # in this process: TensorFlow is loaded
    assert code == 0, err
    assert json.loads(evaluated)["count"] == 2


@pytest.mark.slow
# -m extended: in CI, tests/features/test_bottleneck.py's accuracy test trains with --deterministic
# and holds its five seeds to their recorded accuracies, run after run
@pytest.mark.extended
def test_deterministic_runs_give_identical_metrics(demo_dir, tmp_path):
    metrics = []
    for name in ("a", "b"):
        result = run_module(
            *train_args(
                demo_dir / "Images",
                batch_size=4,
                epochs=3,
                deterministic=True,
                seed=7,
                workspace=tmp_path / f"ws-{name}",
                output=tmp_path / name,
            )
        )
        assert result.returncode == 0, result.stderr
        saved = json.loads((tmp_path / name / "metrics.json").read_text())
        metrics.append({key: saved[key] for key in ("accuracy", "log_loss", "confusion_matrix", "validation")})
    assert metrics[0] == metrics[1]
    history = [(tmp_path / name / "history.csv").read_text() for name in ("a", "b")]
    assert history[0] == history[1]


def test_two_runs_in_one_workspace_keep_their_checkpoints_apart(tmp_path, trainer_log):
    """A second run of the same command while the first trains: the first holds its checkpoint
    folder, so the second keeps its own (FOLDER-PID) and never resumes from one being written.
    The lock goes with the process that held it."""
    import subprocess
    import sys

    from trainer.fit.session import claim

    folder = tmp_path / "ws" / "checkpoints" / "abc"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from trainer.fit.session import claim; "
         f"claim(Path({str(folder)!r})); print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        second = claim(folder)
        assert second == folder.with_name(f"abc-{os.getpid()}")
        assert any(f"another run (pid {holder.pid})" in record.getMessage() for record in trainer_log)
    finally:
        holder.kill()
        holder.wait()
    import trainer.fit.session as session

    session._claimed.clear()  # this process may claim again once the holder is gone
    assert claim(folder) == folder
