"""Odd files in a dataset: named pipes, sockets and broken links are skipped with a warning and
never opened (reading a pipe blocks forever); links to files and folders inside the folder are
followed, a loop or a second link to one folder is skipped with a warning, and a link that leaves
the folder is skipped unless --allow-outside-folder. One rule (trainer.data.layout.walk_files)
for the trainer's class folders, predict's folders and the data step's copy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

from tests.conftest import ROOT

VALIDATE = """
import sys
from trainer.data.report import log_report
from trainer.data.rows import load_rows
from trainer.data.validate import validate
import logging
logging.basicConfig(level=logging.INFO, format="%(message)s")
rows, report = load_rows(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
rows = validate(rows, report)
log_report(report)
print(len(rows), sorted({row.label for row in rows}))
"""


def _validate(*args) -> subprocess.CompletedProcess:
    """Load and validate in a child, with a timeout: a pipe that is opened hangs it."""
    return subprocess.run([sys.executable, "-c", VALIDATE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip


def _odd_folder(demo_dir, tmp_path):
    images = tmp_path / "Images"
    shutil.copytree(demo_dir / "Images", images)
    os.mkfifo(images / "CD" / "zz-pipe.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(images / "UD" / "zz-socket.png"))
    (images / "UD" / "zz-broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    from trainer.data.demo import make_demo_data

    make_demo_data(tmp_path / "outside", per_class=12, seed=9, image_size=64)  # other photos
    (images / "UD2").symlink_to(tmp_path / "outside" / "Images" / "UD", target_is_directory=True)  # linked
    (images / "CD" / "loop").symlink_to(images, target_is_directory=True)  # a link back up the tree
    return images, server


def test_pipes_sockets_broken_links_and_loops_in_class_folders_are_skipped_with_a_warning(demo_dir, tmp_path):
    from trainer.data.layout import LEAVES, walk_files

    images, server = _odd_folder(demo_dir, tmp_path)
    try:
        result = _validate(images)
        _, skipped = walk_files(images)
        followed, _ = walk_files(images, contained=False)  # --allow-outside-folder
    finally:
        server.close()
    assert sorted(skipped) == sorted(f"{images}/{name}" for name in (
        "CD/loop (a link to a folder already listed)", "CD/zz-pipe.jpg (a named pipe)",
        "UD/zz-broken.jpg (a broken link)", "UD/zz-socket.png (a socket)", f"UD2 ({LEAVES})"))  # fmt: skip
    assert sum(1 for parts in followed if parts[0] == "UD2") == 12  # the photos the link leaves for
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(maxsplit=1) == ["24", "['CD', 'UD']\n"]  # 12 a class; the linked one's left out
    warning = next(line for line in result.stderr.splitlines() if line.startswith("WARNING: skipped"))
    assert warning.startswith("WARNING: skipped: not a regular file, or a folder already listed: 5 (")
    assert warning.endswith("; and 2 more)")  # three examples, then the count of the rest
    assert "CD/zz-pipe.jpg (a named pipe)" in warning


def test_a_pipe_listed_in_the_csv_is_a_dropped_row_never_opened(demo_dir, tmp_path):
    images = tmp_path / "Images"
    shutil.copytree(demo_dir / "Images", images)
    os.mkfifo(images / "CD" / "pipe.jpg")
    with (images / "training_data.csv").open("a") as handle:
        handle.write("CD/pipe.jpg,CD\n")
    result = _validate(images, "training_data.csv")
    assert result.returncode == 0, result.stderr
    assert "CD/pipe.jpg (a named pipe, not an image file; skipped, never opened)" in result.stderr


def test_predict_and_the_data_step_take_the_same_rule(cli, run_dir, demo_dir, tmp_path):
    images, server = _odd_folder(demo_dir, tmp_path)
    try:
        code, out, err = cli("predict", "--model", run_dir, images / "CD")
        assert code == 0, err
        assert "WARNING: skipped" in err and "zz-pipe.jpg (a named pipe)" in err
        assert len(out.strip().splitlines()) == 1 + 12
        from scripts.dataset import copy_folder
        from scripts.steps import Context

        said = []
        copy_folder(images, tmp_path / "copy", Context(echo=said.append))
    finally:
        server.close()
    assert sum(1 for path in (tmp_path / "copy").rglob("*") if path.is_file()) == 25  # 24 images and the CSV
    assert any("zz-pipe.jpg (a named pipe)" in line for line in said)
