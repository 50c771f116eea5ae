"""RELIABILITY.md's trust model, held: names from elsewhere meet one rule at the input
(trainer/names.py), paths stay inside the data, inputs have limits, and what a folder from
elsewhere holds runs only where it cannot reach the machine (Keras's safe mode) unless the user
opts in by name (--trust-graph)."""

from __future__ import annotations

import json
import shutil
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trainer import names
from trainer.errors import InputError

HOSTILE = ["<img src=x onerror=alert(1)>", '"><script>alert(1)</script>', "</textarea>", "javascript:alert(1)",
           "$\\frac{$", "a$b$c", '=HYPERLINK("http://x/?"&A2,"click")', "+1+1", "@SUM(2+2)", "-1", "+1",
           "ünï cødé 裂缝", "x" * 100]  # fmt: skip
REFUSED = ["first\nsecond", "a\u2028b", "a\u0085b", "tab\tinside", "\x00", "keep", "DROP", " Keep ", "y" * 101,
           "z" * 100_000, "", "   "]  # fmt: skip


def _expected_problem(name: str) -> bool:
    return (
        not name.strip()
        or len(name) > names.MAX_LENGTH
        or any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name)
        or name.strip().casefold() in names.RESERVED
    )


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=string.printable), st.sampled_from(HOSTILE + REFUSED)))
def test_the_class_name_rule_is_one_rule_and_its_refusal_one_short_line(name):
    problem = names.class_problem(name)
    assert (problem is not None) == _expected_problem(name)
    if problem is None:
        assert names.check_class(name, "here") == name
    else:
        with pytest.raises(InputError) as error:
            names.check_class(name, "data.csv line 7")
        said = str(error.value)
        assert said.startswith("data.csv line 7: class name ") and said.endswith("; rename it")
        assert "\n" not in said and len(said) < 300  # a 100,000-character name makes a short line


def test_hostile_names_that_pass_the_rule_and_ones_that_do_not():
    assert all(names.class_problem(name) is None for name in HOSTILE)
    assert all(names.class_problem(name) is not None for name in REFUSED)
    for bad in ("..", ".", ".hidden", "a/b", "a\\b", "../../x", "/etc"):
        assert names.model_problem(bad) is not None, bad
    assert names.model_problem("cracks-2026") is None and names.model_problem("keep") is None


def _images(folder: Path, labels: dict[str, str]) -> Path:
    """A CSV `ImagePath,Label` over small generated photos, one file a row; `labels`: file -> label."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(labels):
        Image.new("RGB", (8, 8), (index * 20 % 255, 40, 90)).save(folder / name)
    with (folder / "data.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImagePath", "Label"])
        writer.writerows(labels.items())
    return folder


@pytest.mark.parametrize("label", ["first\nsecond", "a\u2028b", "keep", "Drop", "w" * 101])
def test_a_bad_label_in_a_csv_is_one_line_naming_the_row(label, tmp_path):
    from trainer.data.rows import load_rows

    folder = _images(tmp_path / "Images", {"0.png": "CD", "1.png": "CD", "2.png": label})
    with pytest.raises(InputError) as error:
        load_rows(folder, "data.csv")
    assert str(error.value).startswith(f"{folder / 'data.csv'} line 4: class name ")
    assert "\n" not in str(error.value)


def test_a_class_folder_with_a_line_break_and_a_merge_into_a_review_word_are_refused(tmp_path):
    from trainer.config import parse_merge
    from trainer.data.rows import load_rows

    folder = tmp_path / "Images"
    for label in ("CD", "two\nlines"):
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / label / "0.png")
    with pytest.raises(InputError) as error:
        load_rows(folder, None)
    assert str(error.value) == (f"--folder {folder}: class name 'two\\nlines' holds the control character U+000A (a "
                                "line break or the like); rename it")  # fmt: skip
    with pytest.raises(InputError, match="--merge-labels: class name 'drop' is one of the review's words"):
        parse_merge("drop=CD+UD")


def test_labels_txt_is_read_exactly_as_it_is_written(tmp_path):
    from trainer import runfolder

    path = tmp_path / "labels.txt"
    hostile = [name for name in HOSTILE if names.class_problem(name) is None] + [" spaced "]
    runfolder.write_labels(path, hostile)
    assert runfolder.read_labels([path], path) == hostile
    path.write_bytes(b"CD\r\nUD\r\n")  # written on Windows
    assert runfolder.read_labels([path], path) == ["CD", "UD"]
    path.write_text("first\u2028second\nUD\n", encoding="utf-8")  # what splitlines() split in two
    with pytest.raises(InputError, match=r"labels.txt line 1: damaged, the name holds the control character U\+2028"):
        runfolder.read_labels([path], path)


def test_rows_outside_the_image_folder_are_refused_without_saying_whether_the_file_exists(tmp_path):
    from trainer.data.rows import load_rows

    folder = _images(tmp_path / "data" / "Images", {"0.png": "CD", "1.png": "UD"})
    secret = tmp_path / "private.png"
    Image.new("RGB", (8, 8)).save(secret)
    said = []
    for outside in (str(secret), str(tmp_path / "missing.png"), "../../private.png"):
        csv = folder / "data.csv"
        csv.write_text(f"ImagePath,Label\n0.png,CD\n{outside},UD\n")
        with pytest.raises(InputError) as error:
            load_rows(folder, "data.csv")
        said.append(str(error.value).replace(names.shown(outside, 120), "PATH"))
    assert said[0] == said[1] == said[2], said
    assert "is outside the image folder" in said[0] and "--allow-outside-folder" in said[0]
    rows, _ = load_rows(folder, "data.csv", allow_outside=True)  # the user says so
    assert len(rows) == 2
    # The seed's own layout stays inside: ../Images/... from Images/training_data.csv, and an
    # absolute path inside the folder.
    (folder / "data.csv").write_text(f"ImagePath,Label\n../Images/0.png,CD\n{folder / '1.png'},UD\n")
    assert [row.label for row in load_rows(folder, "data.csv")[0]] == ["CD", "UD"]
    # A link inside the folder that leads out of it is outside too.
    (folder / "link.png").symlink_to(secret)
    (folder / "data.csv").write_text("ImagePath,Label\n0.png,CD\nlink.png,UD\n")
    with pytest.raises(InputError, match="link.png' is outside the image folder"):
        load_rows(folder, "data.csv")


def test_inputs_over_their_limits_are_refused_before_they_are_read(tmp_path, monkeypatch):
    from trainer.data import corrections, rows

    folder = _images(tmp_path / "Images", {f"{i}.png": "CD" if i % 2 else "UD" for i in range(6)})
    monkeypatch.setattr(rows, "MAX_CSV_BYTES", 40)
    with pytest.raises(InputError, match=r"data.csv: 0 MB, over the 0 MB a CSV of image paths may be"):
        rows.load_rows(folder, "data.csv")
    monkeypatch.setattr(rows, "MAX_CSV_BYTES", 1 << 20)
    monkeypatch.setattr(rows, "MAX_ROWS", 5)
    with pytest.raises(InputError, match="data.csv: 6 rows, over the 5 a dataset may list"):
        rows.load_rows(folder, "data.csv")
    big = tmp_path / "corrections.csv"
    big.write_text("ImagePath,Label\n" + "0.png,CD\n" * 10)
    monkeypatch.setattr(corrections, "MAX_BYTES", 50)
    with pytest.raises(InputError, match="over the 0 MB a corrections file may be"):
        corrections.read_corrections(big)


def test_model_names_are_folder_names_in_both_layers(tmp_path):
    from tests.conftest import bundle_copy, invoke
    from trainer.config import TrainConfig

    for bad in ("..", "../x", "a/b", ".hidden"):
        with pytest.raises(InputError, match="--model-name must be a folder name"):
            TrainConfig(model_name=bad).check()
    copy = bundle_copy(tmp_path)
    refused = invoke(copy, "publish", "--name", "../../x", "--dry-run")
    assert refused.returncode == 2
    assert "publish failed: --name must be a folder name, and '../../x' holds a path separator" in refused.stderr
    bad_setting = invoke(copy, "--list", env={"INVOKE_PUBLISH_FOLDER": ".."})
    assert bad_setting.returncode == 2 and "INVOKE_PUBLISH_FOLDER must be a folder name" in bad_setting.stderr


def test_a_keras_model_with_code_in_it_is_refused_by_safe_mode(cli, run_dir, tmp_path):
    import keras

    inputs = keras.Input((48, 48, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=(1, 2))[:, :2])(inputs)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    keras.Model(inputs, outputs).save(folder / "model.keras")
    shutil.copy(run_dir / "labels.txt", folder / "labels.txt")
    image = next((run_dir.parent / "Images" / "CD").glob("*.jpg"))
    code, _, err = cli("predict", "--model", folder, image)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "model.keras: refused by Keras's safe mode: it holds code (a Lambda layer's function)" in err


def _writing_saved_model(folder: Path, written: Path) -> None:
    """A SavedModel whose serving function writes a file as it predicts: what a folder from
    elsewhere can hold."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 48, 48, 3], tf.float32, name="image")])
        def serve(self, image):
            tf.io.write_file(str(written), "the graph ran")
            return {"probabilities": tf.nn.softmax(tf.reduce_mean(image, axis=[1, 2])[:, :2])}

    model = Model()
    tf.saved_model.save(model, str(folder), signatures={"serving_default": model.serve})


def test_a_saved_model_runs_its_graph_only_with_trust_graph(cli, run_dir, tmp_path):
    folder, written = tmp_path / "elsewhere", tmp_path / "written.txt"
    _writing_saved_model(folder, written)
    shutil.copy(run_dir / "labels.txt", folder / "labels.txt")
    image = next((run_dir.parent / "Images" / "CD").glob("*.jpg"))
    code, out, err = cli("predict", "--model", folder, image)
    assert code == 2 and not written.exists()
    assert err.strip().count("\n") == 0 and "runs the TensorFlow graph stored in it" in err and "--trust-graph" in err
    code, out, err = cli("predict", "--model", folder, "--trust-graph", image)
    assert code == 0 and written.read_text() == "the graph ran"  # the threat was real: opting in runs it


def test_check_only_runs_a_stored_graph_only_with_trust_graph(cli, run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    code, _, err = cli("export", copy, "--check-only", "--formats", "saved_model")
    assert code == 2 and "--check-only would run the TensorFlow graph stored in" in err and "--trust-graph" in err
    from trainer.export.runtimes import runs_a_graph, tensorflow_ops

    assert tensorflow_ops(copy / "model.tflite") == [] and not runs_a_graph(copy / "model.tflite")
    assert runs_a_graph(copy / "saved_model")


def test_a_published_file_that_differs_from_its_record_is_refused(cli, run_dir, tmp_path):
    from scripts.publish import hashes

    published = tmp_path / "published" / "cracks"
    shutil.copytree(run_dir, published)
    (published / "published.json").write_text(json.dumps({"files": hashes(published)}))
    (published / "labels.txt").write_text("UD\nCD\n")  # someone swapped the classes
    image = next((run_dir.parent / "Images" / "CD").glob("*.jpg"))
    code, _, err = cli("predict", "--model", published, image)
    assert code == 2 and "labels.txt: damaged, it differs from what was published (published.json)" in err
