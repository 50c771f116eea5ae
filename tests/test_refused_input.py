"""A refused input costs nothing: each step that takes a source checks the new one (fetches,
unpacks, counts, verifies it beside the old state) before it drops its record of the old state,
so a typo or a bad file leaves the previous dataset, C library and published model recorded
and in place, and the next run finds them `ok`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from scripts import dataset, publish
from scripts.libtensorflow import _header_closure, _wheel_dir, libtensorflow, pinned_version
from scripts.steps import Context, StepFailed, StepRefused
from tests.conftest import ROOT, bundle_copy, images_zip, invoke, make_tar, make_zip, tar_member


def quiet(root: Path) -> Context:
    return Context(root=root, echo=lambda message: None)


def state_of(*paths: Path) -> dict:
    """Every file and link under paths: size and modification time, and the bytes of records
    (JSON) and small files. Folders count by their entries only: a folder's own time changes
    when a partial folder comes and goes beside what it holds."""
    state = {}
    for path in paths:
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            info = item.lstat()
            if item.is_dir() and not item.is_symlink():
                continue
            state[str(item)] = (info.st_mode, info.st_size, info.st_mtime_ns)
            if item.suffix == ".json" or item.name.endswith(".env"):
                state[f"{item} bytes"] = item.read_bytes()
    return state


# -- the data step ------------------------------------------------------------------------------


def _refused_sources(tmp_path: Path, http_server) -> dict[str, tuple[dict, str]]:
    """name -> (dataset() options, the start of the one-line refusal)."""
    good = images_zip(tmp_path / "other.zip", per_class=4)
    text = tmp_path / "notes.txt"
    text.write_text("not an archive\n")
    no_images = tmp_path / "empty-folder"
    (no_images / "docs").mkdir(parents=True)
    (no_images / "docs" / "readme.txt").write_text("no images here\n")
    http_server.serve("/gone.zip", b"", status=404)
    return {
        "zip with a '..' member": (
            {"source": str(make_zip(tmp_path / "evil.zip", {"Images/CD/a.png": b"x", "../../evil.sh": b"rm"}))},
            f"{tmp_path / 'evil.zip'}: refused, member '../../evil.sh' climbs out with '..'",
        ),
        "tar with a link out": (
            {"source": str(make_tar(tmp_path / "evil.tar.gz", [tar_member("Images/x", tarfile.SYMTYPE, "/etc")]))},
            f"{tmp_path / 'evil.tar.gz'}: refused, member 'Images/x' links outside the target",
        ),
        "missing path": (
            {"source": str(tmp_path / "Imagse.zip")},
            f"--source: {tmp_path / 'Imagse.zip'} does not exist",
        ),
        "not an archive": ({"source": str(text)}, f"{text}: neither a zip nor a tar archive"),
        "no images": ({"source": str(no_images)}, f"no images found in {no_images}"),
        "checksum differs": ({"source": str(good), "sha256": "0" * 64}, f"--source: {good} does not match --sha256"),
        "counts differ": (
            {"source": str(good), "expect": "CD=200,UD=200"},
            "image counts differ: CD 4 (expected 200), UD 4 (expected 200)",
        ),
        "HTTP 404": ({"source": http_server.url("/gone.zip")}, f"{http_server.url('/gone.zip')}: HTTP 404"),
    }


REFUSALS = [
    "zip with a '..' member",
    "tar with a link out",
    "missing path",
    "not an archive",
    "no images",
    "checksum differs",
    "counts differ",
    "HTTP 404",
]


@pytest.mark.parametrize("refusal", REFUSALS)
def test_a_refused_data_source_leaves_the_dataset_recorded_and_in_place(refusal, http_server, tmp_path):
    first = images_zip(tmp_path / "Images.zip")
    assert dataset.dataset(quiet(tmp_path), source=str(first)).status == "changed"
    data = tmp_path / "data"
    before = state_of(data)
    options, message = _refused_sources(tmp_path, http_server)[refusal]
    with pytest.raises(StepRefused) as refused:  # exit code 2 under invoke
        dataset.dataset(quiet(tmp_path), **options)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)
    assert state_of(data) == before
    assert dataset.dataset(quiet(tmp_path), source=str(first)).status == "ok"


def test_a_refused_source_through_invoke_then_setup_finds_the_data_ok(tmp_path):
    """The measured case: `invoke data --source evil.zip` used to drop the good dataset's record,
    and the next run rebuilt it (`changed`)."""
    copy = bundle_copy(tmp_path)
    env = {"INVOKE_DATA_DIR": str(tmp_path / "data"), "INVOKE_DATA_SOURCE": str(images_zip(tmp_path / "Images.zip"))}
    assert invoke(copy, "data", env=env).returncode == 0
    before = state_of(tmp_path / "data")
    evil = make_zip(tmp_path / "evil.zip", {"Images/CD/a.png": b"x", "../evil.sh": b"rm -rf ~"})
    refused = invoke(copy, "data", "--source", str(evil), env=env)
    assert refused.returncode == 2  # the user's input refused
    assert refused.stderr.strip().splitlines()[-1].startswith(f"data failed: {evil}: refused, member '../evil.sh'")
    assert state_of(tmp_path / "data") == before
    again = invoke(copy, "data", env=env)
    assert again.returncode == 0 and "data: ok (6 images" in again.stderr
    assert not (tmp_path / "evil.sh").exists()


# -- the C library ------------------------------------------------------------------------------

VERSION = pinned_version(Context(root=ROOT))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """The pinned C library installed from the wheel into a scratch prefix: (prefix, env file)."""
    if shutil.which("gcc") is None:
        pytest.skip("the libtensorflow step verifies with gcc")
    folder = tmp_path_factory.mktemp("libtensorflow")
    prefix, env_file = folder / "prefix", folder / "libtensorflow.env"
    result = libtensorflow(quiet(ROOT), prefix=str(prefix), ldconfig="no", env_file=str(env_file))
    assert result.status == "changed", result.detail
    return prefix, env_file


def other_version_tarball(path: Path, version: str = "2.18.0") -> Path:
    """An official-looking tarball whose library reports another TensorFlow version: the real C
    API headers, and a stub libtensorflow.so.2 that defines TF_Version()."""
    gathered = path.parent / f"other-version-{version}"
    include = _wheel_dir(VERSION) / "include"
    for header in _header_closure(include):
        target = gathered / "include" / header.relative_to(include)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(header, target)
    (gathered / "lib").mkdir()
    stub = gathered / "stub.c"
    stub.write_text(f'const char* TF_Version(void) {{ return "{version}"; }}\n')
    library = gathered / "lib" / f"libtensorflow.so.{version}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libtensorflow.so.2", stub, "-o", library], check=True)
    stub.unlink()
    (gathered / "lib" / "libtensorflow.so.2").symlink_to(f"libtensorflow.so.{version}")
    (gathered / "lib" / "libtensorflow.so").symlink_to("libtensorflow.so.2")
    with tarfile.open(path, "w:gz") as handle:
        for item in sorted(gathered.rglob("*")):
            handle.add(item, arcname=str(item.relative_to(gathered)), recursive=False)
    return path


@pytest.mark.slow  # the module's first install copies the wheel's 1 GB library
@pytest.mark.parametrize(
    "refusal",
    [
        "missing tarball",
        "unsafe tarball",
        "no C API inside",
        "another version",
        "URL without sha256",
        "URL checksum differs",
    ],
)
def test_a_refused_c_library_source_leaves_the_installed_one_recorded_and_in_place(
    refusal, installed, http_server, tmp_path
):
    prefix, env_file = installed
    body = b"\x1f\x8b not really a tarball"
    http_server.serve("/libtensorflow.tar.gz", body)
    url = http_server.url("/libtensorflow.tar.gz")
    sources = {
        "missing tarball": ({"source": str(tmp_path / "libtensorflow-cpu.tar.gz")}, "--source: "),
        "unsafe tarball": (
            {"source": str(make_tar(tmp_path / "evil.tar.gz", [tar_member("../../etc/ld.so.preload")]))},
            f"{tmp_path / 'evil.tar.gz'}: refused, member '../../etc/ld.so.preload' climbs out",
        ),
        "no C API inside": (
            {"source": str(make_tar(tmp_path / "empty.tar.gz", [tar_member("README")], {"README": b"hi"}))},
            f"{tmp_path / 'empty.tar.gz'}: no include/tensorflow/c/c_api.h or lib/libtensorflow.so.2 inside",
        ),
        "another version": (
            {"source": str(other_version_tarball(tmp_path / "libtensorflow-cpu-linux-x86_64-2.18.0.tar.gz"))},
            f"the C library reports TF_Version() '2.18.0', not {VERSION}",
        ),
        "URL without sha256": ({"source": url}, "a libtensorflow URL needs --sha256"),
        "URL checksum differs": (
            {"source": url, "sha256": hashlib.sha256(b"something else").hexdigest()},
            f"{url}: the download does not match --sha256 twice",
        ),
    }
    options, message = sources[refusal]
    before = state_of(prefix, env_file)
    with pytest.raises(StepFailed) as refused:
        libtensorflow(quiet(ROOT), prefix=str(prefix), ldconfig="no", env_file=str(env_file), **options)
    assert str(refused.value).startswith(message), str(refused.value)
    after = state_of(prefix, env_file)
    downloaded = {key for key in set(after) - set(before) if "/share/libtensorflow/" in key}
    assert {key: after[key] for key in after if key not in downloaded} == before  # only a fetched file is new
    again = libtensorflow(quiet(ROOT), prefix=str(prefix), ldconfig="no", env_file=str(env_file))
    assert again.status == "ok", again.detail


# -- publish -------------------------------------------------------------------------------------


def _run(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.keras").write_text(text)
    (folder / "labels.txt").write_text("CD\nUD\n")
    return folder


def test_a_refused_run_leaves_the_published_model_recorded_and_in_place(tmp_path):
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    ctx = quiet(tmp_path)
    to = str(drive / "ud-cd-classifier")
    assert publish.publish(ctx, run=str(_run(tmp_path / "runs" / "a", "model A")), to=to).status == "changed"
    assert publish.publish(ctx, run=str(_run(tmp_path / "runs" / "b", "model B")), to=to).status == "changed"
    before = state_of(drive)
    empty = tmp_path / "runs" / "c"
    empty.mkdir()
    for run, message in (
        (tmp_path / "runs" / "typo", f"--run: {tmp_path / 'runs' / 'typo'} has no model.keras"),
        (empty, f"--run: {empty} has no model.keras"),
    ):
        with pytest.raises(StepFailed, match="^" + message):
            publish.publish(ctx, run=str(run), to=to)
        assert state_of(drive) == before
    assert publish.publish(ctx, run=str(tmp_path / "runs" / "b"), to=to).status == "ok"


def test_a_refused_train_setting_leaves_the_published_model_in_place(tmp_path):
    copy = bundle_copy(tmp_path)
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    assert (
        publish.publish(
            quiet(copy), run=str(_run(tmp_path / "run", "a good model")), to=str(drive / "ud-cd-classifier")
        ).status
        == "changed"
    )
    env = {"INVOKE_PUBLISH_TO": str(drive / "ud-cd-classifier"), "INVOKE_DATA_DIR": str(tmp_path / "data")}
    before = state_of(drive)
    refused = invoke(copy, "train", "--folder", str(tmp_path), "--epochs", "0", env=env)
    assert refused.returncode == 2
    assert "--epochs must be at least 1 (got 0)" in refused.stderr
    assert state_of(drive) == before
    assert json.loads((drive / "ud-cd-classifier" / "published.json").read_text())["run"] == str(tmp_path / "run")
