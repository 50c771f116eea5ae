"""The data step's Google Drive source through gdown, both Colab's 5.2.2 and 6.x, against the
stand-in Drive (tests/drive_stand_in.py): the production URL, gdown's real Drive code, no
network beyond 127.0.0.1.

gdown 6 removed `fuzzy=`, `--id` and the md5 arguments, and raises DownloadError where 5.x
returned None; each case runs in a process of its own with one of the two on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GDOWN_6, ROOT, images_zip

FILE_ID = "1AbCdEfGhIjKlMnOpQrStUvWxYz0_concrete"
STEP = """
import json, sys
from pathlib import Path
import gdown
from scripts.dataset import dataset
from scripts.steps import Context, StepFailed
try:
    result = dataset(Context(root=Path(sys.argv[1]), echo=lambda m: None), source=sys.argv[2], data_dir="data")
    outcome = {"status": result.status, "detail": result.detail}
except StepFailed as error:
    outcome = {"status": "failed", "detail": str(error)}
print(json.dumps({**outcome, "gdown": gdown.__version__}))
"""


@pytest.fixture(params=["5.2.2", GDOWN_6])
def gdown_path(request) -> list[str]:
    """What goes first on PYTHONPATH: nothing for the pinned 5.2.2, gdown 6's folder for 6.x."""
    return [] if request.param == "5.2.2" else [str(request.getfixturevalue("gdown_6"))]


def data_step(root: Path, source: str, gdown_path: list[str], environment: dict[str, str]) -> dict:
    env = {**os.environ, **environment, "PYTHONPATH": os.pathsep.join([*gdown_path, str(ROOT)]), "HOME": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", STEP, str(root), source], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("large", [True, False], ids=["confirmation page", "redirect"])
def test_a_shared_drive_file_is_fetched_once_by_either_gdown(drive, gdown_path, large, tmp_path):
    body = images_zip(tmp_path / "Images.zip").read_bytes()
    shared = drive.share(FILE_ID, "Images.zip", body, large=large)
    link = f"https://drive.google.com/file/d/{FILE_ID}/view?usp=sharing"
    first = data_step(tmp_path, link, gdown_path, drive.environment())
    assert first["gdown"] == ("5.2.2" if not gdown_path else GDOWN_6)
    assert first["status"] == "changed", first
    assert "6 images (CD 3, UD 3)" in first["detail"]
    assert (tmp_path / "data" / "downloads" / f"{FILE_ID}.zip").read_bytes() == body
    assert shared.hits == 1 and "drive.google.com" in drive.tunnels
    again = data_step(tmp_path, link, gdown_path, drive.environment())
    assert again["status"] == "ok" and shared.hits == 1


@pytest.mark.parametrize(
    "access, message",
    [
        ("private", f"Google Drive refused file {FILE_ID} (not shared with 'Anyone with the link'); share it"),
        ("quota", f"Google Drive refused file {FILE_ID}: its download quota is used up for now; retry in a day"),
    ],
)
def test_a_refused_drive_file_is_one_line_and_keeps_the_dataset(drive, gdown_path, access, message, tmp_path):
    good = images_zip(tmp_path / "good.zip")
    assert data_step(tmp_path, str(good), gdown_path, drive.environment())["status"] == "changed"
    record = (tmp_path / "data" / "dataset.json").read_bytes()
    drive.share(FILE_ID, "Images.zip", b"never sent", access=access)
    refused = data_step(tmp_path, FILE_ID, gdown_path, drive.environment())
    assert refused["status"] == "failed" and refused["detail"].startswith(message), refused
    assert "\n" not in refused["detail"]
    assert (tmp_path / "data" / "dataset.json").read_bytes() == record
    assert data_step(tmp_path, str(good), gdown_path, drive.environment())["status"] == "ok"


def test_drive_out_of_reach_is_one_line(gdown_path, tmp_path):
    # A proxy port that nothing listens on: requests' connection error, whichever gdown.
    closed = {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": ""}
    failed = data_step(tmp_path, FILE_ID, gdown_path, closed)
    assert failed["status"] == "failed"
    assert failed["detail"].startswith(f"Google Drive download of {FILE_ID} failed (")
    assert "Connection refused" in failed["detail"]
    assert failed["detail"].endswith("check the network; retry") and "\n" not in failed["detail"]
    assert not (tmp_path / "data" / "downloads").exists() or not any((tmp_path / "data" / "downloads").iterdir())
