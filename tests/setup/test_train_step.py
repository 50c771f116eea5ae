"""`invoke train` as an idempotent step: it trains nothing when the published model was trained
from the same data, options, stack and code, decides that without importing TensorFlow, and
says what changed when it does train."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from scripts import training
from tests.conftest import bundle_copy, invoke
from trainer.config import TrainConfig
from trainer.fingerprint import request_key, training_request, what_changed


def test_the_request_follows_content_labels_and_options_not_places(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    config = TrainConfig(folder=str(data / "Images"), file="training_data.csv")
    first = training_request(config)
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    elsewhere = TrainConfig(folder=str(moved / "Images"), file="training_data.csv", output="x", workspace="w")
    assert training_request(elsewhere) == first  # places are not what a model is trained from
    assert what_changed(first, training_request(TrainConfig(**{**config.to_dict(), "epochs": 7}))) == [
        "--epochs 50 -> 7"
    ]
    photo = next((data / "Images" / "UD").glob("*.jpg"))
    photo.write_bytes(photo.read_bytes() + b"\0")  # one byte more: another image
    assert what_changed(first, training_request(config)) == ["the data changed"]
    csv = data / "Images" / "training_data.csv"
    csv.write_text(csv.read_text().replace(",UD\n", ",CD\n", 1))
    assert "the data changed" in what_changed(first, training_request(config))
    assert what_changed(None, first) == ["no record of what the published model was trained from"]
    assert len(request_key(first)) == 16 and request_key(first) == request_key(json.loads(json.dumps(first)))


def test_the_stat_cache_reads_only_what_changed_and_never_trusts_a_changed_file(demo_dir, tmp_path, monkeypatch):
    from trainer import fingerprint

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    config = TrainConfig(folder=str(data / "Images"), file="training_data.csv", runs_dir=str(tmp_path / "runs"))
    first = fingerprint.data_digest(config)
    assert fingerprint.stat_cache(config).is_file()
    read = []
    real = fingerprint.sha256_of
    monkeypatch.setattr(fingerprint, "sha256_of", lambda path: read.append(path) or real(path))
    assert fingerprint.data_digest(config) == first and read == []  # an unchanged dataset: no image read
    photo = sorted((data / "Images" / "UD").glob("*.jpg"))[0]
    before = photo.stat()
    content = bytearray(photo.read_bytes())
    content[-3] ^= 0xFF  # another image of the same size and modification time
    photo.write_bytes(bytes(content))
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert fingerprint.data_digest(config) != first and read == [photo]  # the change time gave it away


def _published(folder: Path, request: dict, model: bytes = b"a model") -> Path:
    from scripts.archives import sha256_of

    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(model)
    (folder / "manifest.json").write_text(json.dumps({"request": request}))
    files = {name: sha256_of(folder / name) for name in ("model.keras", "manifest.json")}
    (folder / "published.json").write_text(json.dumps({"files": files}))
    return folder


def test_decide_ok_publish_or_train(tmp_path):
    request = {"data": "d1", "options": {"epochs": 5}, "stack": {"tensorflow": "2.20.0"}, "code": "c1"}
    published = _published(tmp_path / "MyDrive" / "ud-cd-classifier", request)
    runs = tmp_path / "runs"
    assert training.decide(request, published, runs).action == "ok"
    other = {**request, "options": {"epochs": 6}}
    decision = training.decide(other, published, runs)
    assert (decision.action, decision.reasons) == ("train", ["--epochs 5 -> 6"])
    # A run finished but never published (Drive was not mounted, say) is published, not retrained.
    finished = _published(runs / "20261130-120000-tiny", other)
    assert training.decide(other, published, runs) == training.Decision("publish", finished)
    # A damaged published copy is not trusted.
    (published / "model.keras").write_bytes(b"a model, damaged")
    assert training.decide(request, published, tmp_path / "no-runs").action == "train"


@pytest.mark.slow
@pytest.mark.extended  # tests/setup/test_dataset_record.py walks the same reruns, a reset and --force
def test_rerun_trains_nothing_a_change_retrains_and_keeps_the_previous_model(demo_dir, tmp_path):
    copy = bundle_copy(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    published = drive / "ud-cd-classifier"
    env = {
        "INVOKE_PUBLISH_TO": str(published),
        "INVOKE_TRAIN_EXTRA": "--export none --batch-size 8",
        "INVOKE_TRAIN_EPOCHS": "1",
    }
    train = ["train", "--folder", str(data / "Images"), "--file", "training_data.csv", "--backbone", "tiny"]
    train += ["--weights", "none", "--image-size", "48"]
    first = invoke(copy, *train, env=env)
    assert first.returncode == 0, first.stderr
    assert "train: training, since no model is published yet" in first.stderr
    model = (published / "model.keras").read_bytes()

    again = invoke(copy, *train, env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert again.returncode == 0, again.stderr
    assert f"train: ok (the model in {published} was trained from this data" in again.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time:")
    }
    assert "invoke" in imported and not {name for name in imported if name.split(".")[0] in ("tensorflow", "keras")}
    assert (published / "model.keras").read_bytes() == model
    assert len([run for run in (copy / "runs").iterdir() if run.is_dir()]) == 1
    assert not (drive / "ud-cd-classifier.previous").exists()

    changed = invoke(copy, *train, env={**env, "INVOKE_TRAIN_EPOCHS": "2"})
    assert changed.returncode == 0, changed.stderr
    assert "train: training, since --epochs 1 -> 2" in changed.stderr
    assert (drive / "ud-cd-classifier.previous" / "model.keras").read_bytes() == model
    assert json.loads((published / "manifest.json").read_text())["request"]["options"]["epochs"] == 2

    # After a reset the runs are gone; the published model is found on Drive.
    shutil.rmtree(copy / "runs")
    reset = invoke(copy, *train, env={**env, "INVOKE_TRAIN_EPOCHS": "2"})
    assert reset.returncode == 0 and "train: ok" in reset.stderr, reset.stderr
    forced = invoke(copy, *train, "--force", env={**env, "INVOKE_TRAIN_EPOCHS": "2"})
    assert forced.returncode == 0 and "train: ok" not in forced.stderr, forced.stderr
    assert os.path.isdir(copy / "runs")


@pytest.mark.slow
def test_a_crash_after_the_model_landed_still_publishes_it(demo_dir, tmp_path):
    """The trainer killed by SIGSEGV in a diagnostic (as OpenBLAS once killed the audit at 24,000
    images): `invoke train` publishes the model it had printed, fails with one line that says
    what never finished, and the published manifest says so too. The same command run again
    finishes the diagnostics on that run folder, trains nothing, and publishes it whole."""
    copy = bundle_copy(tmp_path)
    published = tmp_path / "MyDrive" / "ud-cd-classifier"
    published.parent.mkdir()
    env = {"INVOKE_PUBLISH_TO": str(published), "TRAINER_FAIL_DIAGNOSTIC": "heatmaps:crash"}
    train = ["train", "--folder", str(demo_dir / "Images"), "--file", "training_data.csv", "--backbone", "tiny"]
    result = invoke(
        copy, *train, "--weights", "none", "--image-size", "48", "--epochs", "1", "--export", "none", env=env
    )
    assert result.returncode == 128 + 11
    last = result.stderr.strip().splitlines()[-1]
    assert (
        "is complete and was published, but the trainer ended with signal SIGSEGV: heatmaps, report never finished"
        in last
    )
    assert (published / "model.keras").is_file() and (published / "metrics.json").is_file()
    states = json.loads((published / "manifest.json").read_text())["diagnostics"]
    assert states == {
        "compare": "skipped",
        "search": "skipped",
        "audit": "ok",
        "heatmaps": "pending",
        "exports": "skipped",
        "report": "pending",
    }
    env.pop("TRAINER_FAIL_DIAGNOSTIC")
    again = invoke(
        copy, *train, "--weights", "none", "--image-size", "48", "--epochs", "1", "--export", "none", env=env
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "finishing its diagnostics" in again.stderr and "Epoch" not in again.stderr  # nothing trained again
    states = json.loads((published / "manifest.json").read_text())["diagnostics"]
    assert states == {
        "compare": "skipped", "search": "skipped", "audit": "ok", "heatmaps": "ok", "exports": "skipped", "report": "ok"
    }  # fmt: skip
    assert (published / "report.html").is_file() and (published / "heatmaps.png").is_file()


def test_the_trainers_digest_is_invokes_and_lists_nothing_again(demo_dir, tmp_path, monkeypatch):
    """The trainer digests the rows load_data listed and the hashes validation took: the same
    record `invoke train` computes on its own, with or without --validation-file."""
    from trainer.data import rows as data_module
    from trainer.data.load import load_data

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    csv = data / "Images" / "training_data.csv"
    header, *lines = csv.read_text().splitlines()
    (data / "Images" / "held.csv").write_text("\n".join([header, *lines[::4]]) + "\n")
    for extra in ({}, {"validation_file": "held.csv"}):
        config = TrainConfig(
            folder=str(data / "Images"), file="training_data.csv", runs_dir=str(tmp_path / "r"), **extra
        )
        invokes = training_request(config)["data"]
        loaded = load_data(config)
        with monkeypatch.context() as patch:
            patch.setattr(data_module, "load_rows", lambda *a: pytest.fail("the listing was read again"))
            assert training_request(config, loaded.files, loaded.listed)["data"] == invokes


def test_a_moved_runtime_retrains_and_names_what_moved(demo_dir):
    """pins keeps a runtime's own versions within supported.txt's ranges, so the request holds
    the exact versions this run would use: a model from another image is trained again."""
    config = TrainConfig(folder=str(demo_dir / "Images"), file="training_data.csv")
    now = training_request(config)
    assert {"tensorflow", "keras", "protobuf", "h5py", "python"} <= set(now["stack"])
    older = {**now, "stack": {**now["stack"], "tensorflow": "2.20.0-other", "h5py": "3.16.0-other"}}
    assert what_changed(older, now) == [
        f"h5py 3.16.0-other -> {now['stack']['h5py']}",
        f"tensorflow 2.20.0-other -> {now['stack']['tensorflow']}",
    ]


def test_a_name_given_once_is_the_datasets_until_another_dataset_comes(tmp_path):
    """`invoke train --name cracks-2026` on the data step's dataset: the next plain `invoke
    train` (and `invoke decisions`) mean that model and its record; a new dataset starts over."""
    from scripts.dataset import dataset, model_of, read_manifest, remember_model
    from scripts.steps import Context

    data = tmp_path / "data"
    data.mkdir()
    manifest = {"source": "my.zip", "name": "my-classifier", "folder": str(tmp_path), "file": None, "counts": {}}
    (data / "dataset.json").write_text(json.dumps(manifest))
    assert training.train_config({}, {}, read_manifest(data), None).model_name == "my-classifier"
    remember_model(data, "cracks-2026")
    assert training.train_config({}, {}, read_manifest(data), None).model_name == "cracks-2026"
    assert training.train_config({}, {}, read_manifest(data), "other").model_name == "other"
    dataset(Context(root=tmp_path, echo=lambda message: None), source="demo", data_dir="data", demo_per_class=3)
    assert model_of(read_manifest(data)) == "demo-classifier"
