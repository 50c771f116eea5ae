"""Safe extraction and downloads, against real archives and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from scripts.archives import download, extract
from scripts.steps import StepFailed
from tests.conftest import make_tar, make_zip, tar_member


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_zip_extracts_into_the_target(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", {"Images/CD/a.jpg": b"a", "Images/training_data.csv": b"x"})
    target = extract(archive, tmp_path / "out")
    assert (target / "Images/CD/a.jpg").read_bytes() == b"a"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../evil.txt", "climbs out with '..'"),
        ("Images/../../evil.txt", "climbs out with '..'"),
        ("/tmp/evil.txt", "has an absolute path"),
        ("C:\\evil.txt", "has an absolute path"),
    ],
)
def test_zip_with_unsafe_member_is_refused_whole(tmp_path, name, reason):
    (tmp_path / "box").mkdir()
    archive = make_zip(tmp_path / "box" / "bad.zip", {"Images/ok.jpg": b"fine", name: b"evil"})
    before = snapshot(tmp_path)
    with pytest.raises(StepFailed, match=reason) as error:
        extract(archive, tmp_path / "box" / "out")
    assert "nothing was extracted" in str(error.value)
    assert snapshot(tmp_path) == before


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("zeros.bin", b"\0" * (50 * 1024 * 1024))
    with pytest.raises(StepFailed, match="a zip bomb"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "member, reason",
    [
        (tar_member("lib/escape.so", tarfile.SYMTYPE, "../../../etc/passwd"), "links outside the target"),
        (tar_member("lib/abs.so", tarfile.SYMTYPE, "/etc/passwd"), "links outside the target"),
        (tar_member("lib/hard", tarfile.LNKTYPE, "lib/real.so"), "is a hard link"),
        (tar_member("dev/null", tarfile.CHRTYPE), "is a device or fifo"),
        (tar_member("dev/sda", tarfile.BLKTYPE), "is a device or fifo"),
        (tar_member("pipe", tarfile.FIFOTYPE), "is a device or fifo"),
        (tar_member("../up.txt"), "climbs out"),
        (tar_member("/abs.txt"), "has an absolute path"),
    ],
)
def test_tar_with_unsafe_member_is_refused_whole(tmp_path, member, reason):
    (tmp_path / "box").mkdir()
    archive = make_tar(
        tmp_path / "box" / "bad.tar.gz",
        [tar_member("lib/real.so"), member],
        {"lib/real.so": b"ELF", "../up.txt": b"x", "/abs.txt": b"x"},
    )
    before = snapshot(tmp_path)
    with pytest.raises(StepFailed, match=reason):
        extract(archive, tmp_path / "box" / "out")
    assert snapshot(tmp_path) == before


def test_gzip_bomb_in_a_tar_is_refused(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 200 * 1024 * 1024
        handle.addfile(info, io.BytesIO(b"\0" * info.size))
    assert archive.stat().st_size < 1024 * 1024
    with pytest.raises(StepFailed, match=r"expands \d+x \(a decompression bomb\)"):
        extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]


def test_zip_device_file_is_refused(tmp_path):
    archive = tmp_path / "dev.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("Images/null")
        info.create_system = 3
        info.external_attr = (0o020666) << 16  # a character device
        handle.writestr(info, b"")
    with pytest.raises(StepFailed, match="is a special file"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_larger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    archive = make_zip(tmp_path / "big.zip", {"Images/a.jpg": b"a" * 5000})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(StepFailed, match=r"needs 0.0 MiB to unpack, 0.0 MiB free in .*nothing was extracted"):
        extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.zip"]


def test_tar_keeps_relative_library_symlinks(tmp_path):
    members = [
        tar_member("lib/libtensorflow.so.2.18.0"),
        tar_member("lib/libtensorflow.so.2", tarfile.SYMTYPE, "libtensorflow.so.2.18.0"),
        tar_member("lib/libtensorflow.so", tarfile.SYMTYPE, "libtensorflow.so.2"),
    ]
    archive = make_tar(tmp_path / "lib.tar.gz", members, {"lib/libtensorflow.so.2.18.0": b"ELF"})
    target = extract(archive, tmp_path / "out")
    assert os.readlink(target / "lib/libtensorflow.so") == "libtensorflow.so.2"
    assert (target / "lib/libtensorflow.so").read_bytes() == b"ELF"


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"plain text")
    with pytest.raises(StepFailed, match="neither a zip nor a tar archive"):
        extract(tmp_path / "x.zip", tmp_path / "out")


def test_download_good_file(http_server, tmp_path):
    body = os.urandom(3 * 1024 * 1024 + 17)
    http_server.serve("/data.zip", body)
    path = download(http_server.url("/data.zip"), tmp_path / "data.zip")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(body).digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.zip"]


def test_download_truncated_transfer_leaves_nothing(http_server, tmp_path):
    http_server.serve("/cut.zip", b"x" * 100_000, truncate_to=40_000)
    with pytest.raises(StepFailed, match="transfer cut short"):
        download(http_server.url("/cut.zip"), tmp_path / "cut.zip")
    assert list(tmp_path.iterdir()) == []


def test_download_404(http_server, tmp_path):
    with pytest.raises(StepFailed, match="HTTP 404 Not Found.*check the URL"):
        download(http_server.url("/missing.zip"), tmp_path / "missing.zip")
    assert list(tmp_path.iterdir()) == []


def test_download_refused_connection(tmp_path):
    with pytest.raises(StepFailed, match="download failed .*check the network"):
        download("http://127.0.0.1:9/nothing.zip", tmp_path / "n.zip", timeout=5)


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("Images/escape")
        info.create_system = 3
        info.external_attr = (0o120777) << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(StepFailed, match="is a symbolic link"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
