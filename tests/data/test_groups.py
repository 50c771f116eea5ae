"""trainer/data/groups.py: near-duplicates found from validation's thumbnails by the audit's own
rule, kept in one split so that no group the audit lists spans two; groups a user names (a
Group column, --group-pattern), and a pattern that cannot hang the run."""

from __future__ import annotations

import csv
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CONCRETE
from trainer.config import TrainConfig
from trainer.data import groups
from trainer.data.load import load_data
from trainer.data.rows import SPLITS, load_rows
from trainer.data.split import split
from trainer.data.validate import validate
from trainer.diagnostics import audit
from trainer.errors import InputError
from trainer.fingerprint import data_digest


def planted(folder, per_class: int = 40, originals: int = 6):
    """`per_class` concrete photos of each class, and three copies of each of the first
    `originals` cracked ones in other bytes (re-encoded at quality 60, resized to 200 px,
    cropped by 8 px), two under the same label and one under the other: {original: copies}."""
    images = folder / "Images"
    for label in ("CD", "UD"):
        (images / label).mkdir(parents=True)
        for photo in sorted((CONCRETE / label).glob("*.jpg"))[:per_class]:
            shutil.copy(photo, images / label / photo.name)
    copies = {}
    for index, original in enumerate(sorted((images / "CD").glob("*.jpg"))[:originals]):
        made = [images / "CD" / f"copy-{index}-reencoded.jpg", images / "CD" / f"copy-{index}-resized.jpg",
                images / "UD" / f"copy-{index}-cropped.jpg"]  # fmt: skip
        with Image.open(original) as photo:
            photo.save(made[0], quality=60)
            photo.resize((200, 200)).save(made[1], quality=90)
            photo.crop((8, 8, photo.width, photo.height)).save(made[2], quality=90)
        copies[original.name] = {path.name for path in made}
    return images, copies


def found_groups(rows, linked) -> list[set[str]]:
    root = groups.components(len(rows), linked)
    members: dict[int, set[str]] = {}
    for index in np.unique(linked):
        members.setdefault(int(root[index]), set()).add(rows[index].path.name)
    return sorted(members.values(), key=sorted)


def test_near_duplicates_are_found_from_validations_thumbnails_alone_in_any_order(tmp_path):
    """The planted copies, each group whole and nothing else; found again with the files gone
    (no image is read twice) and with the rows in another order."""
    images, copies = planted(tmp_path)
    report_rows, report = load_rows(images, None)
    rows = validate(report_rows, report)
    shutil.rmtree(images)
    small = groups.unit_thumbnails([report.thumbnails[row.sha256] for row in rows])
    linked, correlations = groups.near_duplicate_pairs(small, [row.sha256 for row in rows])
    expected = sorted(({original, *made} for original, made in copies.items()), key=sorted)
    assert found_groups(rows, linked) == expected
    assert (correlations >= groups.SIMILAR_LAYOUT).all()
    shuffled = random.Random(0).sample(rows, len(rows))
    again, _ = groups.near_duplicate_pairs(groups.unit_thumbnails([report.thumbnails[row.sha256] for row in shuffled]),
                                           [row.sha256 for row in shuffled])  # fmt: skip
    assert found_groups(shuffled, again) == expected


def test_near_duplicates_keep_their_precision_where_many_images_look_alike(monkeypatch):
    """2,000 thumbnails of five layouts, each distinct image correlating about 0.9 with the
    others of its layout (as a large set of plain surfaces does), and 10 re-encoded copies: only
    the copies stand out from their neighbours. The bar alone takes hundreds of the distinct
    pairs."""
    rng = np.random.default_rng(0)
    layouts = audit._unit(rng.normal(0, 1, (5, 256)))
    noise = audit._unit(rng.normal(0, 1, (2_000, 256)))
    small = audit._unit(layouts[np.arange(2_000) % 5] + 0.33 * noise)
    copies = np.arange(10)
    small[1_990:] = audit._unit(small[copies] + 0.05 * audit._unit(rng.normal(0, 1, (10, 256))))
    linked, _ = groups.near_duplicate_pairs(small)
    assert sorted(map(tuple, linked.tolist())) == [(int(i), 1_990 + int(i)) for i in copies]
    monkeypatch.setattr(groups, "DISTINCT", np.inf)
    assert len(groups.near_duplicate_pairs(small)[0]) > 100


def spans(parts, report) -> list[set[str]]:
    """The splits each near-duplicate group the audit lists sits in."""
    rows = [row for name in SPLITS for row in parts[name]]
    names = [name for name in SPLITS for _ in parts[name]]
    labels = np.array([("CD", "UD").index(row.label) for row in rows])
    findings = audit.near_duplicates(audit.thumbnails_of(rows, report.thumbnails), labels, names,
                                     [row.sha256 for row in rows], seed=42)  # fmt: skip
    where: dict[int, set[str]] = {}
    for finding in findings:
        where.setdefault(finding.group, set()).add(names[finding.index])
    return list(where.values())


def test_no_group_the_audit_lists_spans_two_splits(tmp_path):
    """The run's own loading (validation, the groups, the split), then the audit's
    near-duplicates: every group it lists sits in one split. Split without the groups, the same
    rows put some of those groups across splits, so the check can fail."""
    images, copies = planted(tmp_path, originals=12)
    data = load_data(TrainConfig(folder=str(images), record="none"))
    listed = spans(data.parts, data.report)
    assert len(listed) == 12  # each group holds a copy under the other label
    assert all(len(where) == 1 for where in listed), listed
    rows = [row for name in SPLITS for row in data.parts[name]]
    plain = split(rows, 0.1, 0.1, 42)
    assert sum(len(where) > 1 for where in spans(plain, data.report)) >= 3


def test_a_validation_files_near_duplicates_are_kept_out_of_training(tmp_path):
    """As an identical copy of a --validation-file image is: the planted copies of the held-out
    originals, and nothing else."""
    images, copies = planted(tmp_path, originals=3)
    rows, report = load_rows(images, None)
    rows = validate(rows, report)
    held = [row for row in rows if row.path.name in copies]
    rest = [row for row in rows if row.path.name not in copies]
    twins = groups.held_out_twins(rest, held, report.thumbnails, 0)
    assert sorted(row.path.name for row in rest if row.sha256 in twins) == sorted(set().union(*copies.values()))


def test_a_grouping_is_part_of_what_a_model_is_trained_from():
    from trainer.fingerprint import compared_options, what_changed

    plain, grouped = TrainConfig(), TrainConfig(group_pattern=r"(\d+)-")
    old = {"data": "d", "options": compared_options(plain), "stack": {}, "code": "c"}
    new = {**old, "options": compared_options(grouped)}
    assert what_changed(old, new) == [r"--group-pattern (unset) -> (\d+)-"]


def test_a_csv_group_column_and_a_file_name_pattern_name_groups(tmp_path):
    images = tmp_path / "Images"
    for label in ("CD", "UD"):
        (images / label).mkdir(parents=True)
    for photo in [*sorted((CONCRETE / "CD").glob("*.jpg"))[:30], *sorted((CONCRETE / "UD").glob("*.jpg"))[:30]]:
        shutil.copy(photo, images / photo.parent.name / photo.name)
    rows, report = load_rows(images, None)
    rows = validate(rows, report)
    keys = groups.split_keys(rows, report.thumbnails, r"(\d+)-\d+\.jpg$", 0)
    assert {key for key, row in zip(keys, rows, strict=True) if row.path.name.startswith("7001-")} == {"7001"}
    photos = {row.path.name.split("-")[0] for row in rows}
    assert len(set(keys)) == len(photos)
    lines = ["ImagePath,Label,Group"] + [f"{row.written},{row.label},{row.path.name.split('-')[0]}" for row in rows]
    (images / "grouped.csv").write_text("\n".join(lines) + "\n")
    listed, report = load_rows(images, "grouped.csv")
    assert groups.split_keys(validate(listed, report), report.thumbnails, None, 0) == keys
    with pytest.raises(InputError, match=r"^--group-pattern and the CSV's Group column both name groups; use one"):
        groups.split_keys(listed, report.thumbnails, r"(\d+)-", 0)
    with pytest.raises(InputError) as refused:
        groups.named_keys(rows, r"(\d+)_(\d+)\.png$")
    assert str(refused.value) == (
        r"--group-pattern '(\\d+)_(\\d+)\\.png$' matches none of the 60 image paths (such as 'CD/7001-115.jpg'); it "
        "is searched in each path as listed"
    )


def test_a_group_column_moves_the_data_digest_and_nothing_else_does(tmp_path):
    images = tmp_path / "Images"
    (images / "CD").mkdir(parents=True)
    (images / "UD").mkdir(parents=True)
    for label in ("CD", "UD"):
        for photo in sorted((CONCRETE / label).glob("*.jpg"))[:3]:
            shutil.copy(photo, images / label / photo.name)
    plain = "ImagePath,Label\n" + "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in images.rglob("*.jpg"))
    (images / "plain.csv").write_text(plain)
    (images / "extra.csv").write_text(plain.replace("Label\n", "Label,Group\n").replace(".jpg,CD\n", ".jpg,CD,\n"))
    (images / "grouped.csv").write_text(plain.replace("Label\n", "Label,Group\n").replace("CD\n", "CD,a\n"))
    digests = {name: data_digest(TrainConfig(folder=str(images), file=f"{name}.csv")) for name in
               ("plain", "extra", "grouped")}  # fmt: skip
    assert digests["plain"] == digests["extra"] != digests["grouped"]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_pattern_that_backtracks_without_end_is_stopped_naming_the_path(monkeypatch, start):
    """(a+)+$ takes 2^n steps on n a's and a b: the worker is killed once one path has held it
    for STALL_SECONDS, in a forked worker and in a spawned one (beside another thread)."""
    monkeypatch.setattr(groups, "fork_is_safe", lambda: start == "fork")
    names = ["CD/7001-1.jpg", "a" * 40 + "b", "CD/7001-2.jpg"]
    started = time.monotonic()
    with pytest.raises(InputError) as refused:
        groups.pattern_keys(r"(a+)+$", names)
    assert time.monotonic() - started < groups.STALL_SECONDS + 10
    assert str(refused.value) == (
        rf"--group-pattern '(a+)+$' ran over 2 s on one path ('{'a' * 40}b'): a repeat inside a repeat backtracks "
        r"without end; write each part once, e.g. (\d+)-\d+\.jpg$"
    )
    assert groups.pattern_keys(r"(\d+)-(\d)", names) == ["7001/1", "", "7001/2"]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("(", r"--group-pattern: '\(' is not a regular expression \(missing \), unterminated subpattern"),
        (r"\d+-", r"--group-pattern: '\\\\d\+-' has no group; put the part that names the group in brackets"),
        ("(a)" * 400, r"--group-pattern: 1200 characters, over the 1000 a pattern may be"),
    ],
)
def test_a_bad_pattern_is_refused_before_any_work(pattern, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(group_pattern=pattern).check()


@pytest.mark.slow
def test_a_run_keeps_a_csv_groups_whole_and_refuses_groups_that_hold_a_class(tmp_path):
    """`python -m trainer train` on 80 concrete photos listed with a Group column (groups of four
    photos of a class): it trains, each group in one split. The shipped photos grouped by deck
    photo (--group-pattern; all uncracked crops are photo 7001's): the run stops in one line
    before anything is written."""
    from tests.conftest import run_module

    images = tmp_path / "Images"
    photos = [*sorted((CONCRETE / "CD").glob("*.jpg"))[:40], *sorted((CONCRETE / "UD").glob("*.jpg"))[:40]]
    for photo in photos:
        (images / photo.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, images / photo.parent.name / photo.name)
    by_four = [f"{p.parent.name}/{p.name},{p.parent.name},{p.parent.name}-{i // 4}" for i, p in enumerate(photos)]
    (images / "by-four.csv").write_text("ImagePath,Label,Group\n" + "\n".join(by_four) + "\n")
    fast = ["--backbone", "tiny", "--weights", "none", "--image-size", "64", "--batch-size", "8", "--epochs", "2",
            "--export", "none", "--no-audit", "--record", "none"]  # fmt: skip

    result = run_module("train", "--folder", images, "--file", "by-four.csv", *fast, "--output", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kept together in one split: 20 groups named by the CSV's Group column" in result.stderr + result.stdout
    group_of = {line.split(",")[0].split("/")[1]: line.rsplit(",", 1)[1] for line in by_four}
    splits: dict[str, set[str]] = {}
    with (tmp_path / "run" / "split.csv").open(newline="") as handle:
        for record in csv.DictReader(handle):
            splits.setdefault(group_of[Path(record["ImagePath"]).name], set()).add(record["Split"])
    assert len(splits) == 20 and all(len(where) == 1 for where in splits.values())
    assert {name for where in splits.values() for name in where} == set(SPLITS)

    refused = run_module("train", "--folder", CONCRETE, "--file", "training_data.csv", "--group-pattern", r"(\d+)-",
                         *fast, "--output", tmp_path / "deck")  # fmt: skip
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last == ("trainer: error: the groups cannot be stratified: class 'UD' has no validation or test image once "
                    "every group stays in one split (its largest group, group '7001', holds 200 of its 200 images); "
                    "name smaller groups, or train without them"), last  # fmt: skip
    assert not (tmp_path / "deck").exists()
