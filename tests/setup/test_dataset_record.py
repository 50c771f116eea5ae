"""The dataset's record as a user meets it through `invoke`: a review's decisions are trained with
by every later plain `invoke train` (after a runtime reset too), never silently undone, kept
apart per dataset, and cleared by one explicit command (issue 39's story, with real invoke and
trainer processes on a small dataset)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.conftest import bundle_copy, invoke

pytestmark = pytest.mark.slow


def _manifest(published):
    return json.loads((published / "manifest.json").read_text())


def test_a_review_survives_the_plain_command_a_reset_and_another_dataset_until_it_is_cleared(demo_dir, tmp_path):
    copy = bundle_copy(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    drive = tmp_path / "MyDrive"  # where models are published: Drive's stand-in
    drive.mkdir()
    env = {
        "INVOKE_PUBLISH_LOCAL_FOLDER": str(drive),
        "INVOKE_TRAIN_EXTRA": "--export none --batch-size 8 --no-audit",
        "INVOKE_TRAIN_EPOCHS": "1",
    }
    train = ["train", "--folder", str(data / "Images"), "--file", "training_data.csv", "--backbone", "tiny",
             "--weights", "none", "--image-size", "48"]  # fmt: skip
    published, record = drive / "ud-cd-classifier", drive / "ud-cd-classifier-record"
    first = invoke(copy, *train, env=env)
    assert first.returncode == 0, first.stderr
    assert "train: no decision in force from the dataset's record" in first.stderr
    # It ends with what a person reads: the model's figures, its file and its report where published.
    headline, model_line, report_line = first.stderr.strip().splitlines()[-3:]
    assert headline.startswith("ud-cd-classifier: test accuracy ") and " CD recall " in headline, first.stderr
    assert (model_line, report_line) == (
        f"  model:   {published / 'model.keras'}",
        f"  report:  {published / 'report.html'}",
    )

    # A review: one photo relabelled, one dropped, one kept (as the form downloads them).
    split = list(csv.DictReader((published / "split.csv").open()))
    chosen = [row for row in split if row["Split"] == "train"][:3]
    other = {"CD": "UD", "UD": "CD"}
    review = tmp_path / "corrections.csv"
    review.write_text(
        "ImagePath,Label,Sha256,Opinion\n"
        f"{chosen[0]['ImagePath']},{other[chosen[0]['Label']]},{chosen[0]['Sha256']},label:{other[chosen[0]['Label']]}\n"
        f"{chosen[1]['ImagePath']},drop,{chosen[1]['Sha256']},outlier:{chosen[1]['Label']}\n"
        f"{chosen[2]['ImagePath']},keep,{chosen[2]['Sha256']},label:{other[chosen[2]['Label']]}\n"
    )
    corrected = invoke(copy, *train, "--corrections", str(review), env=env)
    assert corrected.returncode == 0, corrected.stderr
    assert "train: training, since the review decisions in force changed" in corrected.stderr
    # Before and after, on the photos both models were tested on (the relabelled photo is a training one).
    assert "test photos both were tested on, the model before " in corrected.stderr, corrected.stderr
    assert (published / "comparison.json").is_file() and "label changed" not in corrected.stderr
    applied = _manifest(published)["data"]["corrections"]
    assert (applied["relabelled"], applied["dropped"], applied["kept"]) == (1, 1, 1)
    model = (published / "model.keras").read_bytes()

    # The plain command again: the review is in force, and the corrected model stays published;
    # deciding that imported neither TensorFlow nor Keras.
    plain = invoke(copy, *train, env={**env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert plain.returncode == 0, plain.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in plain.stderr.splitlines() if line.startswith("import time:")
    }
    assert "invoke" in imported and not {name for name in imported if name.split(".")[0] in ("tensorflow", "keras")}
    assert f"train: 3 decisions in force (1 relabel, 1 drop, 1 keep) from the dataset's record {record}" in (
        plain.stderr
    )
    assert f"train: ok (the model in {published} was trained from this data, these decisions" in plain.stderr
    assert (published / "model.keras").read_bytes() == model

    # The decisions set aside, then the same file given again while its model is the published
    # one: nothing to train, and its decisions join the record all the same.
    assert invoke(copy, "decisions", "--clear", env=env).returncode == 0
    kept = invoke(copy, *train, "--corrections", str(review), env=env)
    assert kept.returncode == 0 and "train: ok" in kept.stderr, kept.stderr
    assert "3 decision(s) of" in kept.stderr and "added to the dataset's record" in kept.stderr

    # A runtime reset (runs/ and the machine's stat cache gone; Drive kept): still the corrected model.
    shutil.rmtree(copy / "runs")
    reset = invoke(copy, *train, env=env)
    assert reset.returncode == 0 and "train: ok" in reset.stderr, reset.stderr
    assert (published / "model.keras").read_bytes() == model

    # Another dataset under its own name: its own model and record; this one's decisions stay here.
    others = tmp_path / "others" / "Images"  # its CSV writes ../Images/...
    shutil.copytree(data / "Images", others)
    lines = (others / "training_data.csv").read_text().splitlines()
    (others / "training_data.csv").write_text("\n".join(lines[:-2]) + "\n")
    second = invoke(copy, *[str(others) if word == str(data / "Images") else word for word in train],
                    "--name", "second", env=env)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert f"no decision in force from the dataset's record {drive / 'second-record'}" in second.stderr
    assert _manifest(drive / "second")["data"]["corrections"] is None
    assert (published / "model.keras").read_bytes() == model

    # One explicit command sets the decisions aside; the next run trains without them, and says so.
    cleared = invoke(copy, "decisions", "--clear", env=env)
    assert cleared.returncode == 0 and "set 3 decision(s) aside" in cleared.stderr, cleared.stderr
    without = invoke(copy, *train, env=env)
    assert without.returncode == 0, without.stderr
    assert "no review decision is in force any more" in without.stderr
    assert _manifest(published)["data"]["corrections"] is None
    assert (drive / "ud-cd-classifier.previous" / "model.keras").read_bytes() == model
    forced = invoke(copy, *train, "--force", env=env)  # --force trains what is already there
    assert forced.returncode == 0 and "train: ok" not in forced.stderr, forced.stderr
    assert "publish: changed" in forced.stderr
