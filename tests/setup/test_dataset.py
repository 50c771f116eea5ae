"""The data step: every source kind, checksums, counts, and the manifest `invoke train` reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from scripts import dataset
from scripts.steps import Context, StepFailed
from tests.conftest import images_zip


def quiet(root: Path, dry_run: bool = False) -> Context:
    return Context(root=root, dry_run=dry_run, echo=lambda message: None)


@pytest.mark.parametrize(
    "source, kind, value",
    [
        ("demo", "demo", "demo"),
        (
            "https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz012345/view?usp=sharing",
            "gdrive",
            "1AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        ),
        ("https://drive.google.com/open?id=1AbCdEfGhIjKlMnOpQrStUvWxYz0", "gdrive", "1AbCdEfGhIjKlMnOpQrStUvWxYz0"),
        ("https://drive.google.com/uc?export=download&id=1AbCdEfGhIjKl", "gdrive", "1AbCdEfGhIjKl"),
        ("1AbCdEfGhIjKlMnOpQrStUvWxYz012345", "gdrive", "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
        ("gdrive:1AbCdEfGhIjKlMnOpQrStUvWxYz012345", "gdrive", "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
        ("https://example.org/Images.zip", "url", "https://example.org/Images.zip"),
        ("/content/drive/MyDrive/Images.zip", "local", "/content/drive/MyDrive/Images.zip"),
        ("Images.zip", "local", "Images.zip"),
    ],
)
def test_source_kinds(source, kind, value):
    assert dataset.source_kind(source) == (kind, value)


def test_demo_source_then_a_rerun_does_nothing(tmp_path):
    result = dataset.dataset(quiet(tmp_path), source="demo", demo_per_class=4)
    assert result.status == "changed"
    manifest = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert manifest["counts"] == {"CD": 4, "UD": 4}
    assert manifest["file"] == "training_data.csv"
    assert Path(manifest["folder"], manifest["file"]).is_file()
    again = dataset.dataset(quiet(tmp_path), source="demo", demo_per_class=4)
    assert (again.status, again.detail) == ("ok", result.detail)


def test_dry_run_writes_nothing(tmp_path):
    result = dataset.dataset(quiet(tmp_path, dry_run=True), source="demo")
    assert result.detail.startswith("would fetch demo source")
    assert list(tmp_path.iterdir()) == []


def test_local_zip_in_the_original_layout(tmp_path):
    archive = images_zip(tmp_path / "Images.zip")
    result = dataset.dataset(quiet(tmp_path), source=str(archive), expect="CD=3,UD=3")
    assert result.status == "changed"
    manifest = dataset.read_manifest(tmp_path / "data")
    assert Path(manifest["folder"]).name == "Images" and manifest["file"] == "training_data.csv"
    with pytest.raises(StepFailed, match=r"image counts differ: CD 3 \(expected 200\), UD 3 \(expected 200\)"):
        dataset.dataset(quiet(tmp_path), source=str(archive), expect="CD=200,UD=200")


def test_local_folder_without_csv_is_copied(tmp_path):
    source = tmp_path / "drive" / "photos"
    for label in ("CD", "UD"):
        (source / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(source / label / f"{i}.jpg")
    result = dataset.dataset(quiet(tmp_path), source=str(source))
    manifest = dataset.read_manifest(tmp_path / "data")
    assert result.status == "changed" and manifest["file"] is None and manifest["counts"] == {"CD": 3, "UD": 3}
    assert not Path(manifest["folder"]).is_relative_to(source)


def test_missing_local_source(tmp_path):
    with pytest.raises(StepFailed, match="--source: .*nope.zip does not exist; check the path; is Drive mounted"):
        dataset.dataset(quiet(tmp_path), source=str(tmp_path / "nope.zip"))


def test_url_source_with_checksum(http_server, tmp_path):
    body = images_zip(tmp_path / "src.zip").read_bytes()
    route = http_server.serve("/Images.zip", body)
    digest = hashlib.sha256(body).hexdigest()
    result = dataset.dataset(quiet(tmp_path), source=http_server.url("/Images.zip"), sha256=digest)
    assert result.status == "changed" and route.hits == 1
    assert dataset.dataset(quiet(tmp_path), source=http_server.url("/Images.zip"), sha256=digest).status == "ok"
    assert route.hits == 1


def test_url_source_with_wrong_checksum_is_fetched_once_more_then_fails(http_server, tmp_path):
    route = http_server.serve("/Images.zip", images_zip(tmp_path / "src.zip").read_bytes())
    with pytest.raises(StepFailed, match="does not match --sha256 twice"):
        dataset.dataset(quiet(tmp_path), source=http_server.url("/Images.zip"), sha256="0" * 64)
    assert route.hits == 2
    assert list((tmp_path / "data" / "downloads").iterdir()) == []
    assert dataset.read_manifest(tmp_path / "data") is None


def test_corrupted_download_is_detected_and_fetched_again(http_server, tmp_path):
    body = images_zip(tmp_path / "src.zip").read_bytes()
    route = http_server.serve("/Images.zip", body)
    digest = hashlib.sha256(body).hexdigest()
    downloads = tmp_path / "data" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "Images.zip").write_bytes(body[:-10] + b"corrupted!")
    assert dataset.dataset(quiet(tmp_path), source=http_server.url("/Images.zip"), sha256=digest).status == "changed"
    assert route.hits == 1
    assert (downloads / "Images.zip").read_bytes() == body


def test_bad_expect_option(tmp_path):
    with pytest.raises(StepFailed, match="--expect: 'CD:200' is not LABEL=COUNT"):
        dataset.dataset(quiet(tmp_path), source="demo", expect="CD:200")


def test_the_shipped_concrete_photos_are_the_default_source(tmp_path):
    result = dataset.dataset(quiet(tmp_path))
    assert result.status == "changed"
    manifest = dataset.read_manifest(tmp_path / "data")
    assert manifest["source"] == "concrete" and manifest["counts"] == {"CD": 200, "UD": 200}
    assert manifest["file"] == "training_data.csv" and manifest["folder"].endswith("dataset/Images")
    rows = (Path(manifest["folder"]) / "training_data.csv").read_text().splitlines()
    assert len(rows) == 601  # the original CSV, duplicate rows and all
    assert dataset.dataset(quiet(tmp_path)).status == "ok"


def test_a_local_zip_replaced_in_place_is_unpacked_again(tmp_path):
    archive = images_zip(tmp_path / "Images.zip", per_class=3)
    assert dataset.dataset(quiet(tmp_path), source=str(archive)).status == "changed"
    assert dataset.dataset(quiet(tmp_path), source=str(archive)).status == "ok"
    images_zip(tmp_path / "Images.zip", per_class=4)  # a new version under the same name
    result = dataset.dataset(quiet(tmp_path), source=str(archive))
    assert result.status == "changed" and "8 images (CD 4, UD 4)" in result.detail


def _classes(folder: Path, counts: dict[str, int]) -> Path:
    for label, count in counts.items():
        (folder / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)).save(folder / label / f"{i}.jpg")
    return folder


def test_a_source_the_trainer_would_refuse_keeps_the_previous_dataset(tmp_path):
    """The data step reads a new source by the trainer's rules before it replaces data/: one
    class, a CSV without an ImagePath column, or classes other than --expect's are refused with
    what was found (StepRefused: exit code 2), and the previous dataset stays recorded."""
    from scripts.steps import StepRefused

    good = _classes(tmp_path / "good", {"CD": 3, "UD": 3})
    assert dataset.dataset(quiet(tmp_path), source=str(good)).status == "changed"
    before = (tmp_path / "data" / dataset.MANIFEST).read_text()
    one = _classes(tmp_path / "one", {"CD": 30})
    with pytest.raises(StepRefused, match=r"one: the trainer needs at least two classes of 3\+ images; classes found "
                                          r"in class folders: CD \(30\); the previous dataset is kept"):  # fmt: skip
        dataset.dataset(quiet(tmp_path), source=str(one))
    columns = _classes(tmp_path / "columns", {"CD": 3, "UD": 3})
    (columns / "training_data.csv").write_text("path,Label\nCD/0.jpg,CD\n")
    with pytest.raises(
        StepRefused, match=r"columns: .*training_data.csv: no ImagePath column \(found 'path', 'Label'\)"
    ):
        dataset.dataset(quiet(tmp_path), source=str(columns))
    digits = _classes(tmp_path / "digits", {str(d): 3 for d in range(10)})
    with pytest.raises(StepRefused, match=r"CD 0 \(expected 3\), UD 0 \(expected 3\); classes found: 0 3, 1 3, "):
        dataset.dataset(quiet(tmp_path), source=str(digits), expect="CD=3,UD=3")
    assert (tmp_path / "data" / dataset.MANIFEST).read_text() == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dataset", dataset.MANIFEST]  # nothing partial


@pytest.mark.parametrize(
    "source, name",
    [
        ("concrete", "ud-cd-classifier"),
        ("demo", "demo-classifier"),
        ("/content/drive/MyDrive/Images.zip", "images-classifier"),
        ("my photos/", "my-photos-classifier"),
        ("https://example.org/data/flowers.tar.gz?download=1", "flowers-classifier"),
        ("1AbCdEfGhIjKlMnOpQrStUvWxYz012345", "drive-1AbCdEfG-classifier"),
    ],
)
def test_each_dataset_names_its_model(source, name):
    assert dataset.dataset_name(source) == name
