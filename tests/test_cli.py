"""The command layer: exit codes, one-line messages, help text for every command."""

from __future__ import annotations

import pytest

from tests.conftest import train_args
from trainer.cli import get_args_parser


def test_every_command_has_help_text():
    parser = get_args_parser()
    commands = parser._subparsers._group_actions[0]
    helps = {action.dest: action.help for action in commands._choices_actions}
    assert set(helps) == {
        "train",
        "tune",
        "evaluate",
        "predict",
        "explain",
        "audit",
        "cache",
        "export",
        "report",
        "demo-data",
    }
    assert all(helps.values())
    for name, subparser in commands.choices.items():
        for action in subparser._actions:
            if action.dest != "help" and action.option_strings and action.dest not in ("batch_size", "seed"):
                assert action.help, f"{name} {action.option_strings} has no help"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "--epochs must be at least 1 (got 0)"),
        (["train", "--image-size", "7"], "--image-size must be in [32, 1024] (got 7)"),
        (["train", "--batch-size", "-4"], "--batch-size must be at least 1 (got -4)"),
        (
            ["train", "--backbone", "vgg99"],
            "--backbone must be one of efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, resnet50_v2",
        ),
        (
            ["train", "--backbone", "inception_v3", "--image-size", "64"],
            "--image-size must be at least 75 for inception_v3",
        ),
        (
            ["train", "--weights", "missing.h5"],
            "--weights: 'missing.h5' is not auto, imagenet, none or an existing weights file",
        ),
        (["train", "--weights", "imagenet", "--backbone", "tiny"], "backbone tiny has no ImageNet weights"),
        (["train", "--test-fraction", "0.7"], "--test-fraction must be in (0, 0.5) (got 0.7)"),
        (["train", "--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
        (["train", "--folder", "/nonexistent/images"], "--folder: /nonexistent/images does not exist"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (["predict", "--model", "/nonexistent/run", "x.jpg"], "--model: /nonexistent/run/model.keras not found"),
        (["evaluate", "--model", "/nonexistent/run"], "--model: /nonexistent/run/model.keras not found"),
        (["demo-data", "/tmp/unused-demo", "--per-class", "2"], "--per-class must be at least 3"),
        (["train", "--optimizer", "rmsprop"], "--optimizer must be adam or sgd (got 'rmsprop')"),
        (
            ["train", "--lr-schedule", "step"],
            "--lr-schedule must be none, exponential, polynomial or cosine (got 'step')",
        ),
        (["train", "--decay-rate", "1.5"], "--decay-rate must be in (0, 1] (got 1.5)"),
        (["train", "--decay-epochs", "0"], "--decay-epochs must be positive (got 0.0)"),
        (
            ["train", "--end-learning-rate", "0.5"],
            "--end-learning-rate must be between 0 and --learning-rate (got 0.5)",
        ),
        (["train", "--early-stopping-metric", "auc"], "--early-stopping-metric must be loss or accuracy (got 'auc')"),
        (["train", "--min-delta", "-1"], "--min-delta must be 0 or more (got -1.0)"),
        (["train", "--class-weights", "heavy"], "--class-weights must be auto, balanced or none (got 'heavy')"),
        (["train", "--fine-tune-layers", "-2"], "--fine-tune-layers must be 0 or more (got -2)"),
        (["train", "--fine-tune-epochs", "0"], "--fine-tune-epochs must be at least 1 (got 0)"),
        (["train", "--fine-tune-learning-rate", "0"], "--fine-tune-learning-rate must be positive (got 0.0)"),
        (["train", "--fine-tune-layers", "3", "--weights", "none"], "--fine-tune-layers needs pretrained weights"),
        (
            ["train", "--mixed-precision", "fp8"],
            "--mixed-precision must be auto, on, off, float16 or bfloat16 (got 'fp8')",
        ),
        (["train", "--xla", "yes"], "--xla must be auto, on or off (got 'yes')"),
        (["train", "--patience", "-1"], "--patience must be 0 or more (got -1)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2
    assert message in err
    assert err.startswith("trainer: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def test_bad_csv_through_the_command(cli, demo_dir):
    (demo_dir / "bad.csv").write_text("Path,Class\nx.jpg,CD\n")
    code, _, err = cli("train", "--folder", demo_dir, "--file", "bad.csv", "--backbone", "tiny", "--epochs", "1")
    assert code == 2
    assert "bad.csv: no ImagePath and Label column (found 'Path', 'Class')" in err
    (demo_dir / "bad.csv").unlink()


def test_strict_refuses_the_duplicate_rows(cli, demo_dir, tmp_path):
    csv = demo_dir / "Images" / "training_data.csv"
    doubled = tmp_path / "doubled.csv"
    lines = csv.read_text().splitlines()
    doubled.write_text("\n".join(lines + lines[1:4]) + "\n")
    (demo_dir / "Images" / "doubled.csv").write_text(doubled.read_text())
    try:
        code, _, err = cli(
            "train",
            "--folder",
            demo_dir / "Images",
            "--file",
            "doubled.csv",
            "--strict",
            "--backbone",
            "tiny",
            "--epochs",
            "1",
            "--output",
            tmp_path / "run",
        )
    finally:
        (demo_dir / "Images" / "doubled.csv").unlink()
    assert code == 2
    assert "--strict: 3 unusable rows: duplicate rows: 3" in err
    assert not (tmp_path / "run").exists()


def test_a_jpeg_cut_inside_its_headers_is_a_dropped_row_not_a_traceback(cli, demo_dir, tmp_path):
    """A half-copied file from a Drive folder: the first third of a small JPEG, which ends
    inside its header segments (Pillow's Image.open raised OSError: Truncated File Read)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    photo = sorted((data / "Images" / "CD").glob("*.jpg"))[0]
    content = photo.read_bytes()
    photo.write_bytes(content[: content.index(b"\xff\xda") // 2])  # halfway to the scan's start
    code, out, err = cli(*train_args(data / "Images", output=tmp_path / "run", export="none"))
    assert code == 0, err
    assert "unreadable or corrupt images: 1 (line" in err
    assert "corrupt or truncated image (OSError: Truncated File Read)" in err
    assert "Traceback" not in err
    code, out, err = cli(*train_args(data / "Images", output=tmp_path / "strict", export="none"), "--strict")
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("trainer: error: --strict: 1 unusable row: unreadable or corrupt images: 1 (line")
    )
    assert not (tmp_path / "strict").exists()


def test_output_folder_that_exists_is_not_overwritten(cli, demo_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.keras").write_text("a good model")
    code, _, err = cli("train", "--folder", demo_dir / "Images", "--file", "training_data.csv", "--output", taken)
    assert code == 2
    assert f"--output: {taken} already exists and is not empty" in err
    assert (taken / "model.keras").read_text() == "a good model"


def test_demo_data_is_deterministic_and_idempotent(cli, tmp_path):
    code, out, _ = cli("demo-data", tmp_path / "a", "--per-class", "4", "--seed", "3", "--image-size", "48")
    assert code == 0 and out.strip().endswith("training_data.csv")
    cli("demo-data", tmp_path / "b", "--per-class", "4", "--seed", "3", "--image-size", "48")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files_a) == 8
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    mtime = (tmp_path / "a" / rel).stat().st_mtime_ns
    assert cli("demo-data", tmp_path / "a", "--per-class", "4", "--seed", "3", "--image-size", "48")[0] == 0
    assert (tmp_path / "a" / rel).stat().st_mtime_ns == mtime
    code, _, err = cli("demo-data", tmp_path / "a", "--per-class", "5")
    assert code == 2 and "holds demo data made with other settings" in err
    csv_lines = (tmp_path / "a" / "Images" / "training_data.csv").read_text().splitlines()
    assert csv_lines[0] == "ImagePath,Label"
    assert csv_lines[1] == "../Images/CD/demo-cd-0001.jpg,CD"


def test_unknown_feature_layer_names_some_real_ones(cli, demo_dir, tmp_path):
    code, _, err = cli(*train_args(demo_dir / "Images", feature_layer="block9_pool", output=tmp_path / "r"))
    assert code == 2
    assert "--feature-layer: tiny has no layer 'block9_pool'; e.g. " in err
    assert not (tmp_path / "r").exists()


def test_validation_file_with_an_unseen_label(cli, demo_dir, tmp_path):
    images = demo_dir / "Images"
    (images / "val.csv").write_text("ImagePath,Label\n../Images/CD/demo-cd-0001.jpg,XX\n")
    try:
        code, _, err = cli(
            "train",
            "--folder",
            images,
            "--file",
            "training_data.csv",
            "--validation-file",
            "val.csv",
            "--backbone",
            "tiny",
            "--weights",
            "none",
            "--image-size",
            "48",
            "--output",
            tmp_path / "r",
        )
    finally:
        (images / "val.csv").unlink()
    assert code == 2
    assert "--validation-file: label(s) 'XX' have no training images" in err


def test_mlnet_architecture_names_are_accepted():
    from trainer.config import TrainConfig

    assert TrainConfig(backbone="ResnetV250", weights="none").check().backbone == "resnet50_v2"
    assert TrainConfig(backbone="mobilenetv2", weights="none").check().backbone == "mobilenet_v2"
