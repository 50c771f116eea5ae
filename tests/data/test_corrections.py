"""trainer/data/corrections.py: --corrections matched by hash, by path as the data's CSV writes
paths, or by a moved file's content; applied after the split; what they change (not a keep) is
part of the training request."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from trainer import record
from trainer.config import TrainConfig
from trainer.data import corrections
from trainer.data.report import Report
from trainer.data.rows import load_rows
from trainer.data.split import split
from trainer.data.validate import validate
from trainer.errors import InputError


def _dataset(folder, per_class: int = 4):
    for label in ("CD", "UD"):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * i, 100 if label == "CD" else 200, 7)).save(folder / label / f"{i}.png")
    rows = validate(load_rows(folder, None)[0], Report())
    return split(rows, 0.25, 0.25, 0)


def _applied(parts, file, images):
    """--corrections FILE alone (no record), as the trainer applies it."""
    rows = [row for part in parts.values() for row in part]
    chosen = record.gather(None, str(file), rows, [images]).chosen
    return corrections.apply(parts, chosen, f"--corrections {file}")


def _write(path, *lines: str):
    path.write_text("\n".join(["ImagePath,Label,Sha256", *lines]) + "\n")
    return path


def test_lines_match_by_hash_by_path_as_written_and_by_a_moved_files_content(tmp_path):
    images = tmp_path / "data" / "Images"
    parts = _dataset(images, per_class=6)
    rows = {row.path.name + row.label: row for part in parts.values() for row in part}
    moved = tmp_path / "elsewhere" / "copy-of-ud-1.png"
    moved.parent.mkdir()
    shutil.copy(images / "UD" / "1.png", moved)
    file = _write(
        tmp_path / "data" / "fixes.csv",
        f"anything/at/all.png,UD,{rows['0.pngCD'].sha256}",  # by content hash, whatever the path says
        "Images/CD/1.png,drop,",  # relative to the corrections file's folder
        "..\\\\Images\\\\CD\\\\2.png,UD,",  # Windows separators, as the original CSV writes them
        f"{moved},CD,",  # a copy elsewhere, matched by its content
        "UD/2.png,UD,",  # relative to the image folder, and no change at all
    )
    corrected, summary = _applied(parts, file, images)
    after = {row.path.name + "@" + str(row.path.parent.name): row.label for part in corrected.values() for row in part}
    assert after["0.png@CD"] == "UD" and after["2.png@CD"] == "UD" and after["1.png@UD"] == "CD"
    assert "1.png@CD" not in after
    assert (summary["relabelled"], summary["dropped"], summary["kept"]) == (3, 1, 1)
    assert summary["classes"] == {"CD": {"dropped": 1, "in": 1, "out": 2}, "UD": {"in": 2, "out": 1}}
    for name in parts:  # every image stays in its split; only the dropped one leaves
        before = {row.path for row in parts[name]} - {images / "CD" / "1.png"}
        assert {row.path for row in corrected[name]} == before


def test_a_line_naming_no_image_or_a_class_left_too_small_is_one_clear_error(tmp_path):
    images = tmp_path / "Images"
    parts = _dataset(images)
    file = _write(tmp_path / "fixes.csv", "CD/0.png,UD,", "CD/nope.png,UD,")
    with pytest.raises(InputError, match=r"fixes.csv line 3: CD/nope.png names no image of this dataset"):
        _applied(parts, file, images)
    file = _write(tmp_path / "fixes.csv", "CD/0.png,cracked-badly,")
    with pytest.raises(InputError, match=r"leaves 'cracked-badly' \(1\) with fewer than 3 images"):
        _applied(parts, file, images)
    (tmp_path / "bad.csv").write_text("path,label\nCD/0.png,UD\n")
    with pytest.raises(InputError, match=r"the header must be ImagePath,Label\[,Sha256\] \(found 'path', 'label'\)"):
        corrections.read_corrections(tmp_path / "bad.csv")


def test_the_training_request_follows_what_the_decisions_change_not_their_file(tmp_path):
    from trainer.fingerprint import training_request, what_changed

    images = tmp_path / "Images"
    _dataset(images)
    first = _write(tmp_path / "a.csv", "CD/0.png,UD,")
    same = tmp_path / "b" / "a.csv"
    same.parent.mkdir()
    shutil.copy(first, same)
    base = TrainConfig(folder=str(images), runs_dir=str(tmp_path / "runs"), record="none")
    plain = training_request(base)
    with_first = training_request(TrainConfig(**{**base.to_dict(), "corrections": str(first)}))
    with_same = training_request(TrainConfig(**{**base.to_dict(), "corrections": str(same)}))
    assert with_first == with_same and with_first != plain
    assert what_changed(plain, with_first) == ["the review decisions in force changed"]
    _write(same, "CD/0.png,drop,")
    with_other = training_request(TrainConfig(**{**base.to_dict(), "corrections": str(same)}))
    assert what_changed(with_first, with_other) == ["the review decisions in force changed"]
    # A keep, or a "relabel" to the label an image has, changes no model: the request is the plain one.
    _write(same, "CD/0.png,keep,", "CD/1.png,CD,")
    assert training_request(TrainConfig(**{**base.to_dict(), "corrections": str(same)})) == plain


def test_train_with_a_missing_corrections_file_is_one_line_and_exit_2(cli, tmp_path):
    code, _, err = cli("train", "--folder", tmp_path, "--corrections", tmp_path / "none.csv")
    assert code == 2 and err.strip().count("\n") == 0
    assert "--corrections: " in err and "none.csv' is not a file" in err


def test_the_usable_count_said_is_the_images_split_after_the_decisions(tmp_path, trainer_log):
    """A drop leaves one image fewer in the splits, and the count the run says is theirs: the
    400 usable images once said after a drop while the splits summed to 399."""
    from trainer.data.load import load_data

    images = tmp_path / "Images"
    _dataset(images, per_class=6)
    file = _write(tmp_path / "fixes.csv", "CD/0.png,drop,", "CD/1.png,UD,")
    config = TrainConfig(folder=str(images), corrections=str(file), record="none", runs_dir=str(tmp_path / "runs"))
    data = load_data(config)
    assert sum(len(part) for part in data.parts.values()) == 11
    lines = [entry.getMessage() for entry in trainer_log]
    assert f"2 decisions in force (1 relabel, 1 drop) from {file}: 1 relabelled, 1 dropped" in "\n".join(lines)
    said = [line for line in lines if "usable image" in line]
    assert said == ["11 usable images after the decisions in force: CD 4, UD 7"]
    assert said[0] in data.report.notes and "12 usable images" not in " ".join(data.report.notes)
