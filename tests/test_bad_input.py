"""Bad input refused: one clear line, the right exit code, nothing written where it should not
be. Real invoke and trainer processes on a copy of the bundle."""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, bundle_copy, invoke, snapshot

# A folder name no shell could take literally: spaces, both quotes, unicode, command
# substitution in both spellings, a command separator and a glob.
WEIRD = "we ird 'q' \"d\" ünï ✓ $(touch PWNED) `touch PWNED2`; touch PWNED3 *"


def _one_line_error(result: subprocess.CompletedProcess, code: int, *parts: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


YAML_CASES = [
    ("train:\n", "train:\n  epoch: 50", "invoke.yaml: train.epoch is not a setting (did you mean epochs?)"),
    ("train:\n", "train:\n  epochs: ten", "invoke.yaml: train.epochs must be a whole number (got 'ten')"),
    ("train:\n", "train:\n  epochs: 0", "invoke.yaml: train.epochs must be at least 1 (got 0)"),
    ("  require_gpu: false", "  require_gpu: maybe", "invoke.yaml: check.require_gpu must be yes or no (got 'maybe')"),
    ("  demo_per_class: 60", "  demo_per_class: [60]", "invoke.yaml: data.demo_per_class must be a whole number"),
    ("publish:", "publsh:", "invoke.yaml: 'publsh' is not a section (did you mean publish?)"),
    ("train:\n", "train:\n  epochs: [50", "invoke.yaml line "),
]


@pytest.mark.parametrize("before, after, message", YAML_CASES)
def test_invoke_yaml_with_unknown_keys_or_wrong_types_is_one_line_and_exit_2(tmp_path, before, after, message):
    copy = bundle_copy(tmp_path)
    text = (copy / "invoke.yaml").read_text()
    assert before in text
    (copy / "invoke.yaml").write_text(text.replace(before, after, 1))
    state = snapshot(copy)
    for task in ("setup", "data", "train"):
        _one_line_error(invoke(copy, task), 2, message)
    assert snapshot(copy) == state, "a refused setting must not let any step run"


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("INVOKE_TRAIN_EPOCHS", "ten", "INVOKE_TRAIN_EPOCHS must be a whole number (got 'ten')"),
        ("INVOKE_TRAIN_BATCH_SIZE", "-4", "INVOKE_TRAIN_BATCH_SIZE must be at least 1 (got '-4')"),
        ("INVOKE_TRAIN_EPOCH", "3", "INVOKE_TRAIN_EPOCH is not a setting (did you mean INVOKE_TRAIN_EPOCHS?)"),
        ("INVOKE_CHECK_REQUIRE_GPU", "sure", "INVOKE_CHECK_REQUIRE_GPU must be yes or no (got 'sure')"),
        ("INVOKE_SETUP_LOCK_WAIT", "soon", "INVOKE_SETUP_LOCK_WAIT must be a number (got 'soon')"),
    ],
)
def test_environment_settings_of_the_wrong_type_are_one_line_and_exit_2(tmp_path, variable, value, message):
    copy = bundle_copy(tmp_path)
    state = snapshot(copy)
    _one_line_error(invoke(copy, "setup", env={variable: value}), 2, message)
    assert snapshot(copy) == state


def test_a_yes_no_variable_means_what_it_says(tmp_path):
    """Invoke alone reads any non-empty string as True: INVOKE_CHECK_REQUIRE_GPU=false would
    demand a GPU."""
    copy = bundle_copy(tmp_path)
    assert invoke(copy, "check", env={"INVOKE_CHECK_REQUIRE_GPU": "false"}).returncode == 0
    if shutil.which("nvidia-smi") is None:
        demanded = invoke(copy, "check", env={"INVOKE_CHECK_REQUIRE_GPU": "yes"})
        assert demanded.returncode == 1 and "no GPU" in demanded.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs must be at least 1 (got 0)"),
        (["--image-size", "7"], "--image-size must be in [32, 1024] (got 7)"),
        (["--epochs", "-3"], "--epochs must be at least 1 (got -3)"),
    ],
)
def test_out_of_range_flags_through_invoke_train_exit_2_and_leave_no_run(tmp_path, demo_dir, flags, message):
    copy = bundle_copy(tmp_path)
    result = invoke(copy, "train", "--folder", str(demo_dir / "Images"), "--file", "training_data.csv", *flags)
    assert result.returncode == 2, result.stderr
    # Checked once, by invoke, with the trainer's own words, before anything runs.
    assert result.stderr.strip().splitlines()[-1] == f"train: {message}"
    assert not (copy / "runs").exists() and not (copy / "published").exists()


def test_negative_batch_size_through_the_trainer_is_one_line(tmp_path, demo_dir):
    extra = {"INVOKE_TRAIN_EXTRA": "--batch-size -4"}
    result = invoke(bundle_copy(tmp_path), "train", "--folder", str(demo_dir / "Images"), env=extra)
    assert result.returncode == 2 and result.stderr.strip() == "train: --batch-size must be at least 1 (got -4)"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None, reason="the libtensorflow step verifies with gcc")
def test_paths_with_spaces_quotes_unicode_and_shell_metacharacters_work_and_run_nothing(tmp_path, demo_dir):
    weird = tmp_path / WEIRD
    weird.mkdir()
    copy = bundle_copy(weird)  # the bundle itself lives under the weird name too
    # The dataset: an image renamed with the same characters, listed in the CSV (quoted by csv).
    source = weird / "src"
    shutil.copytree(demo_dir, source)
    images = source / "Images"
    odd = images / "CD" / 'a b\'c "d" ü $(touch PWNED4); x.jpg'
    first = sorted((images / "CD").glob("*.jpg"))[0]
    first.rename(odd)
    listing = images / "training_data.csv"
    rows = list(csv.reader(listing.read_text().splitlines()))
    rows = [[path.replace(first.name, odd.name), label] for path, label in rows]
    with listing.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    archive = weird / "Images $(x).zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(images.rglob("*")):
            handle.write(path, path.relative_to(source))
    env = {
        "INVOKE_DATA_DIR": str(weird / "data"),
        "INVOKE_APT_PACKAGES": "",
        # Every character but the two the loader splits LD_LIBRARY_PATH at, which the step refuses
        # without ldconfig (test_a_prefix_the_loader_cannot_search_is_refused...).
        "INVOKE_LIBTENSORFLOW_PREFIX": str(tmp_path / WEIRD.replace(";", "") / "prefix"),
        "INVOKE_LIBTENSORFLOW_LDCONFIG": "no",
        "INVOKE_LIBTENSORFLOW_ENV_FILE": str(weird / "libtensorflow $(y).env"),
        "INVOKE_SETUP_REPORT": str(weird / "report.json"),
        "INVOKE_TRAIN_EXTRA": "--export none --batch-size 4 --workspace " + shlex.quote(str(weird / "ws")),
        "INVOKE_PUBLISH_TO": str(weird / "drive"),
    }
    setup = invoke(copy, "setup", "--source", str(archive), env=env)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert (weird / "report.json").is_file()
    trained = invoke(
        copy, "train", "--backbone", "tiny", "--weights", "none", "--image-size", "48", "--epochs", "1",
        "--output", str(weird / "run"), env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (weird / "drive" / "model.keras").is_file()
    assert "a b'c" in (weird / "run" / "split.csv").read_text()  # the odd image was used
    # The trainer's own commands, with every path option under the weird name.
    module = [sys.executable, "-m", "trainer"]
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (
        ["evaluate", "--model", weird / "run", "--output", weird / "metrics $(z).json"],
        ["predict", "--model", weird / "drive", odd, "--output", weird / "p; q.csv"],
        ["report", weird / "run"],
    ):
        done = subprocess.run([*module, *map(str, argv)], cwd=weird, env=environ, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert (weird / "metrics $(z).json").is_file() and (weird / "p; q.csv").is_file()
    # The env file is sourced by a real shell: the prefix is a name, never a command.
    (weird / "hello.c").write_text(
        '#include <stdio.h>\n#include <tensorflow/c/c_api.h>\nint main(void) { printf("%s\\n", TF_Version()); }\n'
    )
    built = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1" && gcc hello.c -o hello -ltensorflow && ./hello',
            "-",
            weird / "libtensorflow $(y).env",
        ],
        cwd=weird,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == (copy / "requirements.txt").read_text().split("tensorflow==")[1].split()[0]
    executed = [p for p in [*tmp_path.rglob("PWNED*"), *Path.cwd().rglob("PWNED*"), *ROOT.glob("PWNED*")]]
    assert executed == [], f"a path was executed as a command: {executed}"


def test_animated_image_is_a_warning_and_its_first_frame_is_used(tmp_path, cli):
    from trainer.data.images import load_image
    from trainer.data.rows import load_rows
    from trainer.data.validate import validate

    images = tmp_path / "Images"
    for shift, label in enumerate(("CD", "UD")):
        (images / label).mkdir(parents=True)
        for index in range(3):
            Image.new("RGB", (40, 30), (40 * index, 100 * shift, 0)).save(images / label / f"{index}.png")
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    frames[0].save(images / "CD" / "moving.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rows, report = load_rows(images, None)
    kept = validate(rows, report)
    assert len(kept) == 7
    assert any(note.startswith("WARNING: 1 animated image, e.g. CD/moving.gif (3 frames)") for note in report.notes)
    assert tuple(load_image(images / "CD" / "moving.gif", 8)[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "--epoch", "5"), "invoke: train has no option --epoch (did you mean --epochs?)"),
        (("train", "--lr", "0.1"), "invoke: train has no option --lr (did you mean --learning-rate?)"),
        (("setup", "--sourc", "demo"), "invoke: setup has no option --sourc (did you mean --source?)"),
        (("data", "-z"), "invoke: data has no option -z; see `invoke --help data`"),
        (("data", "--dry-run", "publish", "--too", "x"), "invoke: publish has no option --too (did you mean --to?)"),
    ],
)
def test_an_unknown_invoke_flag_names_the_nearest_and_exits_2(tmp_path, args, message):
    copy = bundle_copy(tmp_path)
    state = snapshot(copy)
    _one_line_error(invoke(copy, *args), 2, message)
    assert snapshot(copy) == state


@pytest.mark.parametrize(
    "args, message",
    [
        (("--epoch", "5"), "unrecognized arguments: --epoch 5 (did you mean --epochs?)"),
        (("--lr", "0.1"), "unrecognized arguments: --lr 0.1 (did you mean --learning-rate?)"),
        (("--lr-sched", "cosine"), "unrecognized arguments: --lr-sched cosine (did you mean --lr-schedule?)"),
    ],
)
def test_trainer_options_are_taken_exactly_as_written(tmp_path, args, message):
    """No option is guessed from a prefix (argparse's default would run --epoch 5 as --epochs 5)."""
    result = subprocess.run([sys.executable, "-m", "trainer", "train", "--folder", str(tmp_path), *args],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    _one_line_error(result, 2, message)
