"""trainer/record.py: the dataset's record. Decisions accumulate across reviews (the latest about
an image wins, a keep is remembered with the audit's opinion), decisions about images no longer in
the data are skipped and counted, a legacy <model>-corrections.csv is taken in once, nothing is
half-written when a writer is killed, and two writers at once (two Colab sessions on one Drive,
no lock between them) lose no decision."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests import faults
from tests.conftest import ROOT
from trainer import record
from trainer.data.corrections import Correction, parse_corrections
from trainer.data.report import Report
from trainer.data.rows import load_rows
from trainer.data.validate import validate
from trainer.errors import InputError


def _rows(folder: Path, per_class: int = 4):
    for label in ("CD", "UD"):
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (30 * i, 90 if label == "CD" else 180, 5)).save(folder / label / f"{i}.png")
    return validate(load_rows(folder, None)[0], Report())


def _decision(row, label: str, opinion: str = "", decided: str = "") -> Correction:
    return Correction(0, str(row.path), label, row.sha256, opinion, decided)


def test_decisions_accumulate_and_the_latest_about_an_image_wins(tmp_path):
    rows = _rows(tmp_path / "Images")
    by_name = {f"{row.label}/{row.path.name}": row for row in rows}
    folder = tmp_path / "cracks-record"
    first = record.add(folder, [_decision(by_name["CD/0.png"], "UD", "label:UD"),
                                _decision(by_name["CD/1.png"], "keep", "label:UD")])  # fmt: skip
    assert len(first) == 2 and len(list((folder / record.DECISIONS).glob("*.csv"))) == 1
    # A later review changes its mind about one image (relabels it back) and drops another; the
    # earlier file stays as it was.
    second = record.add(folder, [_decision(by_name["CD/0.png"], "CD", "label:UD"),
                                 _decision(by_name["UD/2.png"], "drop", "outlier:UD")])  # fmt: skip
    assert len(second) == 2 and len(list((folder / record.DECISIONS).glob("*.csv"))) == 2
    latest = record.latest(record.read_decisions(folder))
    assert {Path(d.written).name + d.label for d in latest.values()} == {"0.pngCD", "1.pngkeep", "2.pngdrop"}
    # Adding what the record already says adds nothing (the same file given twice); a keep under
    # another opinion of the audit's is news.
    assert record.add(folder, [_decision(by_name["UD/2.png"], "drop", "outlier:UD")]) == []
    assert len(record.add(folder, [_decision(by_name["CD/1.png"], "keep", "label:CD")])) == 1
    in_force = record.in_force(record.read_decisions(folder), rows, [tmp_path / "Images"], str(folder))
    assert in_force.changes() == [(by_name["UD/2.png"].sha256, "drop")]  # keeps change no model
    assert in_force.described() == (f"3 decisions in force (1 drop, 2 keeps) from the dataset's record {folder}")


def test_decisions_about_images_no_longer_in_the_data_are_skipped_and_counted(tmp_path):
    rows = _rows(tmp_path / "Images")
    folder = tmp_path / "cracks-record"
    record.add(folder, [_decision(rows[0], "UD" if rows[0].label == "CD" else "CD"),
                        Correction(0, "/gone/photo.jpg", "drop", "f" * 64)])  # fmt: skip
    in_force = record.in_force(record.read_decisions(folder), rows[1:], [tmp_path / "Images"], str(folder))
    assert in_force.chosen == {} and in_force.skipped == 2
    assert in_force.described().endswith("; 2 name images no longer in the data (skipped)")
    # An explicit --corrections file stays strict: a line naming no image is an error.
    strict = tmp_path / "fixes.csv"
    strict.write_text("ImagePath,Label\n/gone/photo.jpg,drop\n")
    with pytest.raises(InputError, match="fixes.csv line 2: /gone/photo.jpg names no image of this dataset"):
        record.gather(folder, str(strict), rows, [tmp_path / "Images"])


def test_an_explicit_file_is_the_latest_and_joins_the_record_when_kept(tmp_path):
    images = tmp_path / "Images"
    rows = _rows(images)
    folder = tmp_path / "cracks-record"
    cd0 = next(row for row in rows if row.label == "CD")
    record.add(folder, [_decision(cd0, "drop", decided="2026-01-01T00:00:00.000000Z")])
    given = tmp_path / "fixes.csv"
    given.write_text("ImagePath,Label\nCD/0.png,UD\n")
    in_force = record.gather(folder, str(given), rows, [images])
    assert [d.label for d in in_force.chosen.values()] == ["UD"]
    assert len(record.read_decisions(folder)) == 1  # gathering only reads (invoke's decision, a dry run)
    record.keep_given(folder, in_force)  # what training does once the file applied cleanly
    assert [d.label for d in record.latest(record.read_decisions(folder)).values()] == ["UD"]
    assert record.keep_given(folder, record.gather(folder, str(given), rows, [images])) == []  # nothing new twice
    assert len(list((folder / record.DECISIONS).glob("*.csv"))) == 2


def test_a_legacy_corrections_file_is_read_and_taken_in_once_by_a_run_that_writes(tmp_path):
    rows = _rows(tmp_path / "Images")
    legacy = tmp_path / "cracks-corrections.csv"  # what the review cell saved before the record
    legacy.write_text(f"ImagePath,Label,Sha256\nCD/0.png,UD,{rows[0].sha256}\n")
    folder = tmp_path / "cracks-record"
    decisions = record.read_decisions(folder)  # a reader that only looks (a dry run, invoke decisions)
    assert [(d.label, d.sha256) for d in decisions] == [("UD", rows[0].sha256)] and legacy.exists()
    same = [(d.written, d.label, d.sha256, d.decided) for d in decisions]
    taken = record.read_decisions(folder, settle=True)  # a run that writes takes it in
    assert [(d.written, d.label, d.sha256, d.decided) for d in taken] == same
    assert not legacy.exists() and len(list((folder / record.DECISIONS).glob("*.csv"))) == 1
    assert [(d.written, d.label, d.sha256, d.decided) for d in record.read_decisions(folder)] == same  # once


def test_clear_sets_the_decisions_aside_whole(tmp_path):
    rows = _rows(tmp_path / "Images")
    folder = tmp_path / "cracks-record"
    record.add(folder, [_decision(rows[0], "drop")])
    count, aside = record.clear(folder)
    assert count == 1 and aside.name.startswith("cleared-") and record.read_decisions(folder) == []
    assert len(list(aside.glob("*.csv"))) == 1
    assert record.clear(folder) == (0, None)
    assert len(record.add(folder, [_decision(rows[0], "drop")])) == 1  # a new decision after a clear


def test_a_damaged_decisions_file_is_one_line_naming_it(tmp_path):
    folder = tmp_path / "cracks-record"
    (folder / record.DECISIONS).mkdir(parents=True)
    damaged = folder / record.DECISIONS / "2026-x.csv"
    damaged.write_text("ImagePath,Label\n,UD\n")
    with pytest.raises(InputError) as error:
        record.read_decisions(folder)
    assert str(error.value).count("\n") == 0 and str(damaged) in str(error.value)
    assert "fix that file or move it out of" in str(error.value)
    damaged.write_bytes(b"\xff\xfe\x00broken")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        record.read_decisions(folder)


def test_record_json_is_merged_on_write(tmp_path):
    folder = tmp_path / "cracks-record"
    record.update_info(folder, {"name": "cracks", "source": "/content/drive/MyDrive/cracks.zip"})
    record.update_info(folder, {"published": {"run": "20261206-1"}})
    assert record.read_info(folder) == {"name": "cracks", "source": "/content/drive/MyDrive/cracks.zip",
                                        "published": {"run": "20261206-1"}}  # fmt: skip
    (folder / record.INFO).write_text("{broken")
    with pytest.raises(InputError, match="is damaged .*delete it \\(it holds no decision\\)"):
        record.read_info(folder)


WRITER = """
import sys
from trainer import record
from trainer.data.corrections import Correction
folder, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(count):
    record.add(__import__("pathlib").Path(folder), [Correction(0, f"{who}/{i}.jpg", "drop", f"{who:0>4}{i:060d}")])
"""


def test_two_writers_at_once_lose_no_decision(tmp_path):
    """Two processes (two Colab sessions on one Drive) each add 40 reviews to one record at the
    same time, with no lock between them: every decision is there afterwards."""
    folder = tmp_path / "cracks-record"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), who, "40"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        for who in ("a", "b")
    ]
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0]
    latest = record.latest(record.read_decisions(folder))
    assert {decision.written for decision in latest.values()} == {f"{who}/{i}.jpg" for who in "ab" for i in range(40)}


def test_a_writer_killed_at_random_points_leaves_whole_files_only(tmp_path):
    """SIGKILL at a random point of a writer adding reviews: the record reads, every decision in
    it is whole, and hidden temporary files are never read as decisions."""
    random = faults.generator("record writer")
    folder = tmp_path / "cracks-record"
    for attempt in range(6):
        outcome = faults.run([sys.executable, "-c", WRITER, str(folder), f"w{attempt}", "200"], ROOT,
                             {"PYTHONPATH": str(ROOT)}, tmp_path / "logs", kill_after=random.uniform(0.3, 1.5))  # fmt: skip
        assert outcome.returncode in (None, 0), outcome.stderr
        decisions = record.read_decisions(folder)
        assert all(decision.label == "drop" and len(decision.sha256) == 64 for decision in decisions)
    for path in (folder / record.DECISIONS).glob("*.csv"):
        assert parse_corrections(path.read_text(), path)  # every visible file is a whole one


def test_the_review_form_lists_a_kept_photo_again_only_when_the_audits_opinion_changed(tmp_path):
    from trainer.diagnostics import review

    rows = [
        {"ImagePath": "/d/CD/1.jpg", "Label": "CD", "SuggestedLabel": "UD", "Score": "0.9", "Reason": "label", "Group": ""},
        {"ImagePath": "/d/CD/2.jpg", "Label": "CD", "SuggestedLabel": "UD", "Score": "0.8", "Reason": "label", "Group": ""},
        {"ImagePath": "/d/UD/3.jpg", "Label": "UD", "SuggestedLabel": "UD", "Score": "0.7", "Reason": "outlier",
         "Group": ""},
    ]  # fmt: skip
    sha = {"/d/CD/1.jpg": "a" * 64, "/d/CD/2.jpg": "b" * 64, "/d/UD/3.jpg": "c" * 64}
    earlier = {
        "a" * 64: Correction(0, "/d/CD/1.jpg", "keep", "a" * 64, "label:UD", "2026-12-01T10:00:00.000000Z"),
        "b" * 64: Correction(0, "/d/CD/2.jpg", "keep", "b" * 64, "near-duplicate:CD", "2026-12-01T10:00:00.000000Z"),
    }
    listed, left_out = review.listed_again(rows, sha, earlier)
    assert [row["ImagePath"] for row in listed] == ["/d/CD/2.jpg", "/d/UD/3.jpg"] and left_out == 1
    page = review.form(rows, ["CD", "UD"], sha, earlier=earlier, where="The dataset's record (cracks-record) holds")
    assert "1 photo kept earlier is not listed again" in page
    assert "The dataset&#x27;s record (cracks-record) holds 2 earlier decisions (2 kept)" in page
    assert "kept 2026-12-01, when the audit said near-duplicate:CD" in page  # the earlier decision, shown
    assert "data-path='/d/CD/1.jpg'" not in page and "data-path='/d/CD/2.jpg'" in page


def test_save_to_drive_adds_to_the_record_and_never_overwrites_it(tmp_path):
    from trainer.diagnostics import review

    folder = tmp_path / "drive" / "cracks-record"
    refused = review.save_to_record(folder, "path,label\nCD/1.jpg,UD\n")  # the page shows the answer
    assert refused.startswith("not saved: Save to Drive: the form's decisions: the header must be ImagePath,Label")
    assert not folder.exists()
    said = review.save_to_record(folder, f"ImagePath,Label,Sha256,Opinion\n/d/CD/1.jpg,UD,{'a' * 64},label:UD\n")
    assert said.startswith(f"1 decision added to the dataset's record {folder}")
    said = review.save_to_record(folder, f"ImagePath,Label,Sha256,Opinion\n/d/CD/2.jpg,drop,{'b' * 64},label:UD\n"
                                         f"/d/CD/1.jpg,UD,{'a' * 64},label:UD\n")  # fmt: skip
    assert said.startswith("1 decision added") and "(1 it held already)" in said
    assert {d.written: d.label for d in record.latest(record.read_decisions(folder)).values()} == {
        "/d/CD/1.jpg": "UD", "/d/CD/2.jpg": "drop"}  # fmt: skip


def test_invoke_decisions_shows_the_record_and_clear_sets_it_aside(tmp_path):
    from tests.conftest import bundle_copy, invoke

    copy = bundle_copy(tmp_path)
    published = tmp_path / "models" / "cracks"
    folder = record.beside(published)
    record.add(folder, [Correction(0, "/d/CD/1.jpg", "UD", "a" * 64, "label:UD")])
    record.update_info(folder, {"source": "cracks.zip", "folder": "/d"})
    env = {"INVOKE_PUBLISH_TO": str(published)}
    shown = invoke(copy, "decisions", "--name", "cracks", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"the dataset's record: {folder}" in shown.stdout and "decisions: 1 image (1 relabel)" in shown.stdout
    assert "data: cracks.zip (unpacked in /d)" in shown.stdout
    exported = tmp_path / "all.csv"
    assert invoke(copy, "decisions", "--name", "cracks", "--export", str(exported), env=env).returncode == 0
    assert exported.read_text().splitlines()[1].startswith("/d/CD/1.jpg,UD,")
    cleared = invoke(copy, "decisions", "--name", "cracks", "--clear", env=env)
    assert cleared.returncode == 0 and "set 1 decision(s) aside in" in cleared.stderr
    assert "decisions: 0 images" in cleared.stdout and "set aside by --clear: cleared-" in cleared.stdout
    time.sleep(0.01)
    assert json.loads((folder / record.INFO).read_text())["source"] == "cracks.zip"  # the facts stay


def test_a_keep_confirms_an_earlier_relabel_rather_than_undoing_it(tmp_path):
    """The form shows a relabelled photo under its new label; keeping it says that label is
    right. The relabel stays in force, and the keep is remembered for the next review."""
    rows = _rows(tmp_path / "Images")
    photo = next(row for row in rows if row.label == "CD")
    folder = tmp_path / "cracks-record"
    record.add(folder, [_decision(photo, "UD", "label:UD", "2026-12-01T10:00:00.000000Z")])
    record.add(folder, [_decision(photo, "keep", "outlier:UD", "2026-12-02T10:00:00.000000Z")])
    in_force = record.in_force(record.read_decisions(folder), rows, [tmp_path / "Images"], str(folder))
    assert in_force.changes() == [(photo.sha256, "UD")]
    assert [d.kind for d in in_force.decisions()] == ["relabel", "keep"]  # what a run keeps, and reads back
    assert record.latest(record.read_decisions(folder))[photo.sha256].opinion == "outlier:UD"  # the form hides it
    # A relabel back to the photo's own class undoes it.
    record.add(folder, [_decision(photo, "CD", "label:CD", "2026-12-03T10:00:00.000000Z")])
    assert record.in_force(record.read_decisions(folder), rows, [tmp_path / "Images"]).changes() == []


def test_a_hash_that_names_no_image_is_skipped_even_where_another_photo_has_its_path(tmp_path):
    """A new version of a zip reuses file names: a decision made about the old photo at
    CD/0.png (by its content hash) is not applied to the new photo there."""
    rows = _rows(tmp_path / "Images")
    at_that_path = next(row for row in rows if row.path.name == "0.png" and row.label == "CD")
    old_photo = Correction(0, str(at_that_path.path), "drop", "0" * 64, decided="2026-12-01T10:00:00.000000Z")
    in_force = record.in_force([old_photo], rows, [tmp_path / "Images"])
    assert in_force.chosen == {} and in_force.skipped == 1
    no_hash = Correction(0, str(at_that_path.path), "drop", "", decided="2026-12-01T10:00:00.000000Z")
    assert list(record.in_force([no_hash], rows, [tmp_path / "Images"]).chosen) == [at_that_path.path]


def test_a_corrections_file_the_run_refuses_leaves_the_record_as_it_was(tmp_path):
    from trainer.config import TrainConfig
    from trainer.data.load import load_data

    images = tmp_path / "Images"
    _rows(images, per_class=6)
    folder = tmp_path / "cracks-record"
    bad = tmp_path / "bad.csv"
    bad.write_text("ImagePath,Label\n" + "".join(f"CD/{i}.png,drop\n" for i in range(4)))
    config = TrainConfig(folder=str(images), corrections=str(bad), record=str(folder), runs_dir=str(tmp_path / "r"))
    with pytest.raises(InputError) as error:
        load_data(config)
    assert "leaves 'CD' (2) with fewer than 3 images" in str(error.value) and "--corrections" in str(error.value)
    assert record.read_decisions(folder) == []  # nothing of the refused file was kept
    good = tmp_path / "good.csv"
    good.write_text("ImagePath,Label\nCD/0.png,drop\n")
    load_data(TrainConfig(**{**config.to_dict(), "corrections": str(good)}))
    assert [d.label for d in record.read_decisions(folder)] == ["drop"]  # a file that applies joins the record
