"""Real training on real (generated) images, on the CPU: the run folder, evaluate and predict."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from scripts import publish
from scripts.steps import Context
from tests.conftest import CONCRETE, ROOT, run_module, train_args
from trainer import cells, runfolder
from trainer.errors import InputError

RUN_FILES = {
    "model.keras",
    "labels.txt",
    "config.json",
    "decided.json",
    "split.csv",
    "history.csv",
    "metrics.json",
}
FAST = ["--backbone", "tiny", "--weights", "none", "--image-size", "64", "--batch-size", "8"]


@pytest.fixture(scope="module")
def trained_run(demo_dir, tmp_path_factory):
    from trainer.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "run"
    args = [
        "train",
        "--folder",
        demo_dir / "Images",
        "--file",
        "training_data.csv",
        *FAST,
        "--epochs",
        "3",
        "--output",
        run_dir,
    ]
    assert main([str(a) for a in args]) == 0
    return run_dir


def test_run_folder_holds_every_artifact(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= RUN_FILES
    assert [p.name for p in trained_run.glob("*.keras")] == ["model.keras"], "one copy of the model, not two"
    assert not list(trained_run.parent.glob(".*partial*")), "partial folder left behind"
    assert (trained_run / "labels.txt").read_text() == "CD\nUD\n"
    config = json.loads((trained_run / "config.json").read_text())
    decided = json.loads((trained_run / "decided.json").read_text())
    assert config["backbone"] == "tiny" and config["weights"] == "none" and config["image_size"] == 64
    assert (decided["backbone"], decided["weights"], decided["labels"]) == ("tiny", "none", ["CD", "UD"])
    with (trained_run / "split.csv").open() as handle:
        split = list(csv.DictReader(handle))
    assert {row["Split"] for row in split} == {"train", "validation", "test"}
    assert len(split) == 24 and all(len(row["Sha256"]) == 64 for row in split)
    history = (trained_run / "history.csv").read_text().splitlines()
    assert history[0].split(",") == ["phase", "epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert history[1].startswith("train,1,")
    assert 2 <= len(history) <= 4


def test_metrics_are_complete_and_consistent(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class"]) == {"CD", "UD"}
    for values in metrics["per_class"].values():
        assert set(values) == {"precision", "recall", "f1", "support"}
    matrix = metrics["confusion_matrix"]
    assert sum(map(sum, matrix)) == metrics["count"] == 2  # 10% of 12 images per class rounds to one each
    assert metrics["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / metrics["count"])
    assert metrics["log_loss"] > 0
    assert metrics["data"]["rows_read"] == 24


def test_evaluate_on_the_runs_own_test_split_matches_training(cli, trained_run):
    code, out, err = cli("evaluate", "--model", trained_run)
    assert code == 0, err
    metrics = json.loads(out)
    saved = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == saved["confusion_matrix"]
    assert metrics["log_loss"] == pytest.approx(saved["log_loss"], abs=1e-4)


def test_evaluate_on_a_folder_and_unknown_labels(cli, trained_run, demo_dir, tmp_path):
    code, out, err = cli(
        "evaluate", "--model", trained_run, "--folder", demo_dir / "Images", "--output", tmp_path / "m.json"
    )
    assert code == 0, err
    assert json.loads(out)["count"] == 24
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 24
    (tmp_path / "XX").mkdir()
    for source in sorted((demo_dir / "Images" / "CD").iterdir())[:2]:
        (tmp_path / "XX" / source.name).write_bytes(source.read_bytes()[:-1] + b"\xd9")
    code, _, err = cli("evaluate", "--model", trained_run, "--folder", tmp_path)
    assert code == 2
    assert "label(s) 'XX' were never seen in training; this model knows CD, UD" in err


def test_predict_writes_imagepath_predictedlabel_score(cli, trained_run, demo_dir, tmp_path):
    images = demo_dir / "Images"
    one = sorted((images / "UD").iterdir())[0]
    out_csv = tmp_path / "predictions.csv"
    code, _, err = cli("predict", "--model", trained_run, images / "CD", one, "--output", out_csv)
    assert code == 0, err
    with out_csv.open() as handle:
        rows = list(cells.read_dicts(handle))
    assert list(rows[0]) == ["ImagePath", "PredictedLabel", "Score", "Error"]
    assert len(rows) == 13
    assert rows[-1]["ImagePath"] == str(one)
    assert all(row["PredictedLabel"] in ("CD", "UD") and 0.5 <= float(row["Score"]) <= 1.0 for row in rows)
    code, out, _ = cli("predict", "--model", trained_run / "model.keras", images / "training_data.csv")
    assert code == 0
    assert len(out.strip().splitlines()) == 1 + 24


def test_a_folder_published_with_the_second_keras_file_still_predicts_and_evaluates(
    cli, trained_run, demo_dir, tmp_path
):
    """Runs before issue 41 left the model twice (model.keras and <model name>.keras, the same
    bytes) and published both, published.json naming each: such a folder still serves predict
    and evaluate, from model.keras, and its other copy too."""
    old_run = tmp_path / "runs" / "old"
    shutil.copytree(trained_run, old_run)
    shutil.copyfile(old_run / "model.keras", old_run / "ud-cd-classifier.keras")
    folder = tmp_path / "published" / "ud-cd-classifier"
    folder.parent.mkdir()
    published = publish.publish(Context(root=tmp_path, echo=lambda message: None), run=str(old_run), to=str(folder))
    assert published.status == "changed"
    assert "ud-cd-classifier.keras" in json.loads((folder / "published.json").read_text())["files"]
    images = demo_dir / "Images"
    for model in (folder, folder / "ud-cd-classifier.keras"):
        code, out, err = cli("predict", "--model", model, images / "training_data.csv")
        assert code == 0, err
        assert len(out.strip().splitlines()) == 1 + 24
    code, out, err = cli("evaluate", "--model", folder)
    assert code == 0, err
    scored, trained = json.loads(out), json.loads((trained_run / "metrics.json").read_text())
    assert (scored["count"], scored["accuracy"]) == (trained["count"], trained["accuracy"])


def test_predict_writes_a_row_for_a_bad_file_and_goes_on(cli, trained_run, demo_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = sorted((demo_dir / "Images" / "UD").iterdir())[:2]
    code, _, err = cli("predict", "--model", trained_run, good[0], bad, good[1], "--output", tmp_path / "p.csv")
    assert code == 1
    assert "WARNING: 1 of 3 images could not be read; their rows name the error" in err
    with (tmp_path / "p.csv").open() as handle:
        rows = list(cells.read_dicts(handle))
    assert [row["ImagePath"] for row in rows] == [str(good[0]), str(bad), str(good[1])]
    assert rows[1]["PredictedLabel"] == "" and rows[1]["Error"] == "not an image Pillow can read"
    assert rows[0]["PredictedLabel"] in ("CD", "UD") and rows[2]["Error"] == ""


def test_local_weights_file_freezes_the_backbone(cli, demo_dir, tmp_path):
    from trainer.model import build_backbone

    weights = tmp_path / "tiny.weights.h5"
    build_backbone("tiny", 64, None).save_weights(weights)
    run_dir = tmp_path / "run"
    code, _, err = cli(*train_args(demo_dir / "Images", weights=weights, image_size=64, output=run_dir))
    assert code == 0, err
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["mode"] == "bottleneck" and manifest["feature_cache"]["dimensions"] == 128
    assert json.loads((run_dir / "decided.json").read_text())["weights"] == str(weights)


def test_weights_that_do_not_fit_leave_nothing_behind(cli, demo_dir, tmp_path):
    weights = tmp_path / "garbage.weights.h5"
    weights.write_bytes(b"not hdf5")
    code, _, err = cli(*train_args(demo_dir / "Images", weights=weights, image_size=64, output=tmp_path / "run"))
    assert code == 2
    assert f"--weights: {weights} does not fit backbone tiny at 64px" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.weights.h5"]


def test_auto_weights_offline_falls_back_loudly(cli, demo_dir, tmp_path, monkeypatch):
    from trainer import model

    def no_download(name, image_size, weights):
        if weights == "imagenet":
            raise Exception("URL fetch failure on https://example/x.h5: None -- [Errno -2] Name or service not known")
        return original(name, image_size, weights)

    original = model.build_backbone
    monkeypatch.setattr(model, "build_backbone", no_download)
    backbone, used = model.load_backbone("mobilenet_v2", 64, "auto")
    assert used == "none"
    with pytest.raises(InputError, match="could not get ImageNet weights for mobilenet_v2 .*Name or service not known"):
        model.load_backbone("mobilenet_v2", 64, "imagenet")


@pytest.mark.slow
@pytest.mark.extended  # tests/features/test_bottleneck.py's accuracy test runs `--train` in a subprocess too
def test_original_invocation_in_a_subprocess(demo_dir, tmp_path):
    """`--train --folder --file` as the ML.NET app took it, run as a real process."""
    result = run_module(
        "--train",
        "--folder",
        demo_dir / "Images",
        "--file",
        "training_data.csv",
        *FAST,
        "--epochs",
        "2",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = [path for path in (tmp_path / "runs").iterdir() if path.is_dir()]
    assert result.stdout.strip() == str(run_dir)
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.skipif(not CONCRETE.is_dir(), reason="datasets/concrete is not here")
def test_concrete_dataset_as_the_issue_runs_it(tmp_path):
    """In CI: tests/features/test_bottleneck.py::test_accuracy_on_the_concrete_photos_does_not_regress runs seed 0 as `--train` on this listing and holds these counts."""
    # The original app's command line: `--train --folder ... --file ...`.
    args = train_args(CONCRETE, image_size=64, epochs=3, output=tmp_path / "run")
    result = run_module("--train", *args[1:])
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["rows_read"] == 600
    with (tmp_path / "run" / "split.csv").open(newline="") as handle:
        assert Counter(row["Label"] for row in csv.DictReader(handle)) == {"CD": 200, "UD": 200}
    assert {p.name for p in (tmp_path / "run").iterdir()} >= RUN_FILES
    assert metrics["count"] == 40 and metrics["data"]["problems"]["duplicate rows"]["count"] == 200


def test_imagenet_weights_are_cached_on_drive_when_it_is_mounted(tmp_path, monkeypatch):
    from trainer import places
    from trainer.config import TrainConfig

    monkeypatch.setattr(places, "DRIVE", tmp_path / "no-drive")
    assert places.weights_cache(TrainConfig()) is None
    assert places.workspace(TrainConfig()) == Path("workspace")
    (tmp_path / "MyDrive").mkdir()
    monkeypatch.setattr(places, "DRIVE", tmp_path / "MyDrive")
    # Beside the published MyDrive/ud-cd-classifier/, which publishing swaps whole, not inside it.
    assert places.weights_cache(TrainConfig()) == tmp_path / "MyDrive" / "ud-cd-classifier-workspace" / "keras"
    assert places.workspace(TrainConfig()) == tmp_path / "MyDrive" / "ud-cd-classifier-workspace"
    assert places.weights_cache(TrainConfig(weights_cache=str(tmp_path / "mine"))) == tmp_path / "mine"


def test_a_failed_diagnostic_never_costs_the_model(cli, demo_dir, tmp_path, monkeypatch):
    """Each diagnostic made to fail (TRAINER_FAIL_DIAGNOSTIC): the run folder keeps its model,
    metrics and the rest, manifest.json says what failed, and the exit code is 3."""
    from trainer.errors import EXIT_DIAGNOSTICS

    runs = {}
    for failing in ("audit,heatmaps,exports", "report"):
        monkeypatch.setenv("TRAINER_FAIL_DIAGNOSTIC", failing)
        output = tmp_path / failing.replace(",", "-")
        code, out, err = cli(*train_args(demo_dir / "Images", output=output, audit=True, export="onnx"))
        assert code == EXIT_DIAGNOSTICS, err
        assert out.strip() == str(output)  # printed once the model landed
        assert f"the model is complete in {output}, but {failing.replace(',', ', ')} failed" in err.splitlines()[-1]
        runs[failing] = output
        assert {path.name for path in output.iterdir()} >= RUN_FILES
        assert not [path for path in output.iterdir() if path.name.startswith(".")]
    states = json.loads((runs["audit,heatmaps,exports"] / "manifest.json").read_text())["diagnostics"]
    assert {name: list(state)[0] if isinstance(state, dict) else state for name, state in states.items()} == {
        "compare": "skipped", "search": "skipped", "audit": "failed", "heatmaps": "failed", "exports": "failed", "report": "ok"
    }  # fmt: skip
    assert "injected failure" in states["exports"]["failed"]
    page = (runs["audit,heatmaps,exports"] / "report.html").read_text()
    assert "these diagnostics failed" in page and not (runs["audit,heatmaps,exports"] / "audit.csv").exists()
    report_failed = runs["report"]
    assert not (report_failed / "report.html").exists() and (report_failed / "model.onnx").is_file()
    assert (report_failed / "audit.csv").is_file() and (report_failed / "heatmaps.png").is_file()


@pytest.mark.slow
@pytest.mark.extended
def test_the_same_command_finishes_the_diagnostics_a_kill_left_pending(demo_dir, tmp_path):
    """In CI: tests/features/test_pooling.py::test_a_run_pooled_otherwise_trains_exports_and_predicts[avgmax-True] (the same kill, rerun and refusal) and tests/setup/test_train_step.py::test_a_crash_after_the_model_landed_still_publishes_it (nothing trains again).

    Killed during the diagnostics (SIGSEGV here, as a native library's crash), then run again
    as it was: the run folder is not refused, its pending diagnostics run, nothing trains."""
    run = tmp_path / "run"
    args = train_args(demo_dir / "Images", output=run, workspace=tmp_path / "ws", audit=True, image_size=48)
    killed = subprocess.run([sys.executable, "-m", "trainer", *args], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TRAINER_FAIL_DIAGNOSTIC": "audit:crash"})  # fmt: skip
    assert killed.returncode == -11 and killed.stdout.strip() == str(run)
    again = run_module(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "finishing its diagnostics: audit, heatmaps, exports, report" in again.stderr and "Epoch" not in again.stderr
    states = json.loads((run / "manifest.json").read_text())["diagnostics"]
    assert states == {
        "compare": "skipped",
        "search": "skipped",
        "audit": "ok",
        "heatmaps": "ok",
        "exports": "ok",
        "report": "ok",
    }
    other = run_module(*train_args(demo_dir / "Images", output=run, workspace=tmp_path / "ws", epochs=2))
    assert other.returncode == 2 and "already exists and is not empty" in other.stderr  # another run's options


@pytest.mark.slow
def test_a_retrain_with_corrections_reuses_every_feature_and_redoes_the_audit_and_threshold(cli, tmp_path):
    """60 real photos with ImageNet features, --target-recall and the audit: then the same run
    with two images relabelled and one dropped featurizes nothing (every view from the cache),
    keeps the same test photos, and audits and chooses its threshold on the corrected labels.
    Both runs in this process, whose TensorFlow is loaded already."""
    import shutil

    images = tmp_path / "Images"
    for label in ("CD", "UD"):
        (images / label).mkdir(parents=True)
        for photo in sorted((CONCRETE / label).glob("*.jpg"))[:30]:
            shutil.copy(photo, images / label / photo.name)
    options = dict(backbone="efficientnet_lite0", weights="imagenet", image_size=224, epochs=10, audit=True,
                   feature_augment="flips", target_recall="CD=0.9", export="none", workspace=tmp_path / "ws")  # fmt: skip
    code, _, err = cli(*train_args(images, csv=None, output=tmp_path / "first", **options))
    assert code == 0, err
    split = list(csv.DictReader((tmp_path / "first" / "split.csv").open()))
    train = [row for row in split if row["Split"] == "train"]
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(f"ImagePath,Label\n{train[0]['ImagePath']},UD\n{train[1]['ImagePath']},UD\n"
                     f"{train[-1]['ImagePath']},drop\n")  # fmt: skip
    code, _, err = cli(*train_args(images, csv=None, output=tmp_path / "second", corrections=fixes, **options))
    assert code == 0, err
    manifest = json.loads((tmp_path / "second" / "manifest.json").read_text())
    assert {view: counts["featurized"] for view, counts in manifest["feature_cache"]["views"].items()} == dict.fromkeys(
        manifest["feature_cache"]["views"], 0
    )
    assert manifest["diagnostics"]["audit"] == "ok" and manifest["data"]["corrections"]["relabelled"] == 2
    after = {row["ImagePath"]: row for row in csv.DictReader((tmp_path / "second" / "split.csv").open())}
    assert {p for p, r in after.items() if r["Split"] == "test"} == {
        r["ImagePath"] for r in split if r["Split"] == "test"
    }
    audited = {row["ImagePath"]: row["Label"] for row in runfolder.read_audit(tmp_path / "second" / "audit.csv")}
    assert all(after[path]["Label"] == label for path, label in audited.items())  # the corrected labels
    point = json.loads((tmp_path / "second" / "decision.json").read_text())
    assert point["out_of_fold"]["images"] == sum(r["Split"] != "test" for r in after.values())
