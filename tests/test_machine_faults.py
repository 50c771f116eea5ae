"""The machine refuses: a full disk, a read-only workspace, a file where a folder should be. Made
for real on small tmpfs mounts (root only; skipped where mounting is not allowed). Each refusal
is one line with no traceback; what is worth keeping is kept; the rerun finishes once the cause
is gone."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from tests.conftest import run_module, train_args


@pytest.fixture()
def tmpfs(tmp_path):
    """make(name, size) -> a folder with a tmpfs of that size mounted on it; unmounted after."""
    mounted = []

    def make(name: str, size: str = "4m"):
        folder = tmp_path / name
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                capture_output=True, text=True)  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder) -> object:
    """Fill the file system under folder to the last byte; returns the filler, to delete."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


def _train(images, workspace, output, **options):
    args = train_args(images, weights=options.pop("weights"), epochs=2, workspace=workspace, output=output, **options)
    return run_module(*args)


def _clean(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_a_full_workspace_costs_the_cache_and_the_checkpoints_not_the_run(tmpfs, demo_dir, tiny_weights, tmp_path):
    workspace = tmpfs("ws")
    filler = fill(workspace)
    result = _train(demo_dir / "Images", workspace, tmp_path / "run", weights=tiny_weights)
    _clean(result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no space left on device writing" in result.stderr and "give --workspace on a larger disk" in result.stderr
    assert "features are no longer stored in the cache" in result.stderr or "no feature cache this run" in result.stderr
    assert "checkpoints stop here" in result.stderr
    assert (tmp_path / "run" / "model.keras").is_file()
    filler.unlink()
    again = _train(demo_dir / "Images", workspace, tmp_path / "again", weights=tiny_weights)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "WARNING" not in again.stderr


@pytest.mark.slow
def test_a_full_run_folder_disk_is_one_line_and_the_rerun_reuses_the_work(tmpfs, demo_dir, tiny_weights, tmp_path):
    output = tmpfs("out")
    filler = fill(output)
    result = _train(demo_dir / "Images", tmp_path / "ws", output / "run", weights=tiny_weights)
    _clean(result.stderr)
    assert result.returncode == 4, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"trainer: error: no space left on device writing {output / 'run'}: free space, or give --output "
                    "or --runs-dir on a larger disk")  # fmt: skip
    assert sorted(path.name for path in output.iterdir()) == ["filler"]  # nothing partial
    filler.unlink()
    again = _train(demo_dir / "Images", tmp_path / "ws", output / "run", weights=tiny_weights)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "phase already finished" in again.stderr  # the checkpoint the refused run left
    manifest = json.loads((output / "run" / "manifest.json").read_text())
    assert manifest["feature_cache"]["views"]["id"]["featurized"] == 0  # every feature from the cache


@pytest.mark.slow
def test_a_read_only_workspace_with_a_complete_cache_trains_and_says_so(tmpfs, demo_dir, tiny_weights, tmp_path):
    workspace = tmpfs("ws")
    first = _train(demo_dir / "Images", workspace, tmp_path / "first", weights=tiny_weights)
    assert first.returncode == 0, first.stderr[-2000:]
    subprocess.run(["mount", "-o", "remount,ro", str(workspace)], check=True)
    result = _train(demo_dir / "Images", workspace, tmp_path / "run", weights=tiny_weights, seed=7)
    _clean(result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "read-only file system" in result.stderr and "checkpoints stop here" in result.stderr
    assert (tmp_path / "run" / "model.keras").is_file()


def test_a_workspace_that_is_a_file_is_one_line(cli, demo_dir, tmp_path):
    (tmp_path / "ws").write_text("not a folder")
    code, _, err = cli(*train_args(demo_dir / "Images", workspace=tmp_path / "ws", output=tmp_path / "run"))
    assert code == 2
    assert (
        err.strip()
        == f"trainer: error: --workspace: {tmp_path / 'ws'} is a file, not a folder; give a folder (it is made when missing)"
    )
    assert not (tmp_path / "run").exists()


def test_every_errno_a_user_can_act_on_reads_as_a_sentence():
    from trainer.errors import CAUSES, os_error_sentence

    for number in CAUSES:
        sentence = os_error_sentence(OSError(number, os.strerror(number)), "/data/x", where="--workspace")
        assert "/data/x: " in sentence and "Errno" not in sentence, sentence
    assert os_error_sentence(OSError(errno.ENOSPC, "No space left"), "/w/f", where="--workspace") == (
        "no space left on device writing /w/f: free space, or give --workspace on a larger disk"
    )
