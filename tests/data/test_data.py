from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from trainer.data import rows as reading
from trainer.data import split as splitting
from trainer.data import validate as validation
from trainer.errors import InputError


def make_images(folder: Path, counts: dict[str, int], size: int = 16) -> dict[str, list[Path]]:
    """Distinct small PNGs per label: folder/<label>/<label>-<i>.png."""
    made = {}
    for label_index, (label, count) in enumerate(counts.items()):
        (folder / label).mkdir(parents=True, exist_ok=True)
        made[label] = []
        for i in range(count):
            path = folder / label / f"{label}-{i}.png"
            Image.new("RGB", (size, size), (label_index * 60, i * 7 % 256, 100)).save(path)
            made[label].append(path)
    return made


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture()
def images(tmp_path) -> Path:
    make_images(tmp_path / "Images", {"CD": 4, "UD": 4})
    return tmp_path / "Images"


def _rows_for(folder: Path, prefix: str = "../Images/") -> str:
    lines = [f"{prefix}{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    return "\n".join(lines)


def test_csv_paths_relative_to_the_csv_folder_as_in_the_original(images):
    csv = write_csv(images / "training_data.csv", "ImagePath,Label\n" + _rows_for(images))
    rows, report = reading.load_rows(images, "training_data.csv")
    assert len(rows) == 8 and report.rows_read == 8
    assert all(row.path.is_file() for row in rows)
    assert rows[0].path.is_absolute()
    assert csv.parent == images


def test_csv_quirks_bom_crlf_extra_columns_header_case(images):
    body = "\r\n".join(f"{line},extra" for line in _rows_for(images).splitlines())
    write_csv(images / "quirky.csv", "\ufeffimagepath , LABEL ,Notes\r\n" + body + "\r\n")
    rows, _ = reading.load_rows(images, "quirky.csv")
    assert Counter(row.label for row in rows) == {"CD": 4, "UD": 4}
    assert all(row.path.is_file() for row in rows)


def test_absolute_and_windows_paths(images, tmp_path):
    cd = sorted((images / "CD").iterdir())
    text = "ImagePath,Label\n"
    text += f"{cd[0]},CD\n"  # absolute
    text += f"..\\Images\\CD\\{cd[1].name},CD\n"  # Windows relative
    text += f"C:\\Users\\me\\data\\Images\\CD\\{cd[2].name},CD\n"  # Windows absolute from elsewhere
    write_csv(tmp_path / "list.csv", text)
    rows, _ = reading.load_rows(images, str(tmp_path / "list.csv"))
    assert [row.path for row in rows] == cd[:3]


def test_folder_per_class_without_csv(images):
    rows, report = reading.load_rows(images, None)
    assert Counter(row.label for row in rows) == {"CD": 4, "UD": 4}


def test_missing_column_names_the_columns_found(images):
    write_csv(images / "bad.csv", "Path,Class\nCD/x.png,CD\n")
    with pytest.raises(InputError, match=r"bad.csv: no ImagePath and Label column \(found 'Path', 'Class'\)"):
        reading.load_rows(images, "bad.csv")


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("ImagePath,Label\n", "header only, no rows"),
    ],
)
def test_empty_and_header_only_csv(images, text, message):
    write_csv(images / "x.csv", text)
    with pytest.raises(InputError, match=message):
        reading.load_rows(images, "x.csv")


def test_semicolon_delimited_csv_is_read(images):
    write_csv(images / "semi.csv", "ImagePath;Label\n" + _rows_for(images).replace(",", ";"))
    rows, _ = reading.load_rows(images, "semi.csv")
    assert len(rows) == 8


def test_tab_quotes_text_like_values_and_short_rows(images):
    """Tabs as delimiter; a quoted path holding the delimiter; "NA" and "1e3" stay text; a row
    with a missing cell is reported by its line, not read as NaN."""
    cd = sorted((images / "CD").iterdir())
    odd = cd[0].with_name("a\tb.png")
    cd[0].rename(odd)
    text = f'ImagePath\tLabel\n"CD/{odd.name}"\tNA\nCD/{cd[1].name}\t1e3\n\nCD/{cd[2].name}\n'
    write_csv(images / "tabs.csv", text)
    rows, report = reading.load_rows(images, "tabs.csv")
    assert [(row.path, row.label, row.line) for row in rows] == [(odd, "NA", 2), (cd[1], "1e3", 3)]
    assert report.rows_read == 3 and report.problems == {"rows with an empty ImagePath or Label": ["line 5"]}


def test_a_row_with_too_many_cells_is_one_line_naming_it(images):
    write_csv(images / "wide.csv", "ImagePath,Label\nCD/a,b.png,CD\n")
    with pytest.raises(
        InputError, match=r"wide.csv: Expected 2 fields in line 2, saw 3; quote an ImagePath that holds ','"
    ):
        reading.load_rows(images, "wide.csv")


def test_non_utf8_csv_is_an_error_that_says_what_to_do(images):
    write_csv(images / "latin.csv", "ImagePath,Label\nCD/caf\u00e9.png,CD\n", encoding="utf-16")
    with pytest.raises(InputError, match="not UTF-8 text .* save it as UTF-8"):
        reading.load_rows(images, "latin.csv")


def test_csv_not_found(images):
    with pytest.raises(InputError, match="--file: CSV 'nope.csv' not found"):
        reading.load_rows(images, "nope.csv")


def test_validation_finds_every_problem_and_keeps_the_rest(images):
    cd = sorted((images / "CD").iterdir())
    ud = sorted((images / "UD").iterdir())
    (images / "CD" / "copy.png").write_bytes(cd[0].read_bytes())  # identical content, new path
    (images / "CD" / "broken.png").write_bytes(b"\x89PNG not really")
    lines = ["ImagePath,Label"]
    lines += [f"CD/{p.name},CD" for p in cd]
    lines += [f"UD/{p.name},ud " for p in ud[:2]] + [f"UD/{p.name},UD" for p in ud[2:]]  # case, space
    lines += [f"CD/{cd[0].name},CD"]  # duplicate row
    lines += ["CD/copy.png,CD", "CD/broken.png,CD", "CD/gone.png,CD", ",CD"]
    write_csv(images / "list.csv", "\n".join(lines) + "\n")
    rows, report = reading.load_rows(images, "list.csv")
    kept = validation.validate(rows, report)
    problems = {kind: len(items) for kind, items in report.problems.items()}
    assert problems == {
        "rows with an empty ImagePath or Label": 1,
        "labels differing only in case or whitespace": 1,
        "duplicate rows": 1,
        "missing files": 1,
        "unreadable or corrupt images": 1,
        "identical content under different paths": 1,
    }
    assert Counter(row.label for row in kept) == {"CD": 4, "UD": 4}
    assert "12 rows hold 11 distinct images" in report.notes
    assert any("gone.png" in example for example in report.problems["missing files"])


def test_strict_turns_dropped_rows_into_an_error(images):
    cd = sorted((images / "CD").iterdir())
    write_csv(images / "l.csv", "ImagePath,Label\n" + _rows_for(images) + f"\n../Images/CD/{cd[0].name},CD\n")
    rows, report = reading.load_rows(images, "l.csv")
    with pytest.raises(InputError, match=r"--strict: 1 unusable row: duplicate rows: 1"):
        validation.validate(rows, report, strict=True)


def test_same_file_with_two_labels_is_dropped(images):
    cd = sorted((images / "CD").iterdir())
    write_csv(images / "l.csv", "ImagePath,Label\n" + _rows_for(images) + f"\n../Images/CD/{cd[0].name},UD\n")
    rows, report = reading.load_rows(images, "l.csv")
    kept = validation.validate(rows, report)
    assert "files listed with different labels" in report.problems
    assert cd[0] not in {row.path for row in kept}


def test_single_class_is_an_error(tmp_path):
    make_images(tmp_path / "one", {"CD": 5})
    rows, report = reading.load_rows(tmp_path / "one", None)
    with pytest.raises(InputError, match=r"need at least two classes with 3\+ usable images each, found 'CD' \(5\)"):
        validation.validate(rows, report)


def test_class_too_small_to_split_is_dropped_with_a_warning(tmp_path):
    make_images(tmp_path / "d", {"CD": 5, "UD": 5, "XX": 2})
    rows, report = reading.load_rows(tmp_path / "d", None)
    kept = validation.validate(rows, report)
    assert report.problems["classes too small to split"] == ["'XX' has 2 images, needs at least 3"]
    assert {row.label for row in kept} == {"CD", "UD"}


def test_imbalance_is_noted(tmp_path):
    make_images(tmp_path / "d", {"CD": 12, "UD": 3})
    rows, report = reading.load_rows(tmp_path / "d", None)
    notes = validation.note_usable(report, validation.validate(rows, report))
    imbalance = "classes are imbalanced (12 vs 3 images); accuracy alone will flatter the model"
    assert notes == ["15 usable images: CD 12, UD 3", imbalance] and report.notes[-2:] == notes


def test_split_is_stratified_seeded_and_covers_every_class(tmp_path):
    make_images(tmp_path / "d", {"CD": 40, "UD": 10, "ZZ": 3})
    rows, report = reading.load_rows(tmp_path / "d", None)
    rows = validation.validate(rows, report)
    parts = splitting.split(rows, 0.1, 0.1, seed=7)
    assert sum(map(len, parts.values())) == 53
    for name in reading.SPLITS:
        assert {row.label for row in parts[name]} == {"CD", "UD", "ZZ"}
    assert Counter(row.label for row in parts["test"]) == {"CD": 4, "UD": 1, "ZZ": 1}
    again = splitting.split(list(reversed(rows)), 0.1, 0.1, seed=7)
    assert [r.path for r in again["test"]] == [r.path for r in parts["test"]]
    other = splitting.split(rows, 0.1, 0.1, seed=8)
    assert [r.path for r in other["test"]] != [r.path for r in parts["test"]]


def test_split_round_trips_through_split_csv(tmp_path):
    make_images(tmp_path / "d", {"CD": 5, "UD": 5})
    rows, report = reading.load_rows(tmp_path / "d", None)
    parts = splitting.split(validation.validate(rows, report), 0.2, 0.2, seed=0)
    splitting.write_split(parts, tmp_path / "split.csv")
    loaded = splitting.read_split(tmp_path / "split.csv")
    for name in reading.SPLITS:
        assert [(r.path, r.label, r.sha256) for r in loaded[name]] == [(r.path, r.label, r.sha256) for r in parts[name]]


def _tree(root: Path, layout: dict[str, int]) -> Path:
    """Tiny distinct PNGs: {"D/CD": 3, ...} -> root/D/CD/0.png ..."""
    for number, (folder, count) in enumerate(sorted(layout.items())):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (number * 20, i * 10, 7)).save(root / folder / f"{i}.png")
    return root


SDNET = {"D/CD": 3, "D/UD": 9, "P/CP": 3, "P/UP": 9, "W/CW": 3, "W/UW": 9}  # SDNET2018's shape, about 25% cracked


def test_sdnet2018s_nested_folders_give_the_inner_classes_and_merge_on_request(tmp_path):
    root = _tree(tmp_path / "SDNET2018", SDNET)
    rows, report = reading.load_rows(root, None)
    assert Counter(row.label for row in rows) == {"CD": 3, "UD": 9, "CP": 3, "UP": 9, "CW": 3, "UW": 9}
    assert rows[0].written == "D/CD/0.png" and "classes from the inner folders" in report.notes[0]
    merged, report = reading.load_rows(root, None, merge_labels="cracked=CD+CP+CW,uncracked=UD+UP+UW")
    assert Counter(row.label for row in merged) == {"cracked": 9, "uncracked": 27}
    surfaces, _ = reading.load_rows(root, None, label_folder="top")
    assert Counter(row.label for row in surfaces) == {"D": 12, "P": 12, "W": 12}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"train/CD": 3, "train/UD": 3, "val/CD": 3, "val/UD": 3}, "inner folders' names repeat under different outer ones (e.g. train/CD)"),
        ({"CD": 3, "CD/old": 3, "UD": 3}, "images sit 1 and 2 folder levels deep"),
    ],
)  # fmt: skip
def test_an_ambiguous_folder_layout_is_one_line_saying_what_to_choose(tmp_path, layout, message):
    root = _tree(tmp_path / "photos", layout)
    with pytest.raises(InputError) as raised:
        reading.load_rows(root, None)
    text = str(raised.value)
    assert message in text and "--label-folder top (classes" in text and "--label-folder leaf (classes" in text
    assert "\n" not in text
    assert {row.label for row in reading.load_rows(root, None, label_folder="top")[0]} <= {"train", "val", "CD", "UD"}


@pytest.mark.parametrize(
    ("merge", "message"),
    [
        ("cracked=CD+XX", "--merge-labels: no image is labelled 'XX'; the labels are CD, CP, CW, UD, UP, UW"),
        ("cracked", "--merge-labels: 'cracked' is not NEW=OLD+OLD"),
        ("a=CD,b=CD", "--merge-labels: 'CD' is merged twice ('a' and 'b')"),
    ],
)
def test_a_bad_merge_is_one_line_naming_it(tmp_path, merge, message):
    root = _tree(tmp_path / "SDNET2018", SDNET)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        reading.load_rows(root, None, merge_labels=merge)


def test_the_data_step_counts_classes_by_the_trainers_rule(tmp_path):
    from scripts.dataset import count_images

    assert count_images(_tree(tmp_path / "SDNET2018", SDNET)) == {"CD": 3, "CP": 3, "CW": 3, "UD": 9, "UP": 9, "UW": 9}
    ambiguous = _tree(tmp_path / "split", {"train/CD": 2, "val/CD": 1})
    assert count_images(ambiguous) == {"train/CD": 2, "val/CD": 1}


# ---------------------------------------------------------------------------------------------
# How validation spreads its work


def test_the_inspection_plan_forks_only_when_it_pays_and_is_safe(monkeypatch):
    monkeypatch.setattr(validation, "fork_is_safe", lambda: True)
    assert validation.inspection_plan(1000, 1) == ("loop", 1)
    assert validation.inspection_plan(1, 4) == ("loop", 1)
    assert validation.inspection_plan(validation.PROCESSES_FROM - 1, 2) == ("threads", 2)
    assert validation.inspection_plan(validation.PROCESSES_FROM, 2) == ("processes", 2)
    monkeypatch.setattr(validation, "fork_is_safe", lambda: False)
    assert validation.inspection_plan(10_000, 2) == ("threads", 2)


def test_forking_is_safe_in_a_fresh_process_and_not_beside_another_thread(monkeypatch):
    import subprocess
    import sys
    import threading

    fresh = subprocess.run(
        [sys.executable, "-c", "from trainer import train; from trainer.data import validate; print(validate.fork_is_safe())"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert fresh.stdout.strip() == "True"  # as when the trainer validates: TensorFlow not yet imported
    started, release = threading.Event(), threading.Event()
    other = threading.Thread(target=lambda: (started.set(), release.wait()))
    other.start()
    started.wait()
    try:  # another thread alive: a fork could copy a lock it holds
        assert not validation.fork_is_safe()
    finally:
        release.set()
        other.join()
    monkeypatch.setattr(validation.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert not validation.fork_is_safe()


def _inspect(paths, workers, monkeypatch, how):
    monkeypatch.setattr(validation, "inspection_plan", lambda count, _: (how, workers))
    return validation._inspect_all(paths, workers)


def test_processes_threads_and_a_loop_learn_the_same_of_every_file(tmp_path, monkeypatch):
    made = make_images(tmp_path, {"a": 150, "b": 150}, size=24)
    paths = [path for label in made.values() for path in label]
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    paths += [tmp_path / "a" / "broken.png", tmp_path / "a" / "gone.png"]
    results = {how: _inspect(paths, 2, monkeypatch, how) for how in ("processes", "threads", "loop")}
    as_text = {how: [(state, str(found)) for state, found in found_all] for how, found_all in results.items()}
    assert as_text["processes"] == as_text["threads"] == as_text["loop"]
    assert len(results["processes"]) == len(paths)
    assert results["processes"][0][1].thumbnail  # the audit's thumbnail came back from the worker
    assert "Pillow can read" in str(results["processes"][-2][1]) and "not found" in str(results["processes"][-1][1])


PARENT = os.getpid()
CHECK = validation._inspect_chunk


def dies_in_a_child(chunk):  # module level: the pool pickles it by name
    if os.getpid() != PARENT:
        os._exit(9)  # as a decoder's crash or the OOM killer would end it
    return CHECK(chunk)


def test_a_worker_process_that_dies_costs_a_warning_not_the_run(tmp_path, monkeypatch, trainer_log):
    made = make_images(tmp_path, {"a": 70, "b": 70})
    paths = [path for label in made.values() for path in label]
    monkeypatch.setattr(validation, "_inspect_chunk", dies_in_a_child)
    found = _inspect(paths, 2, monkeypatch, "processes")
    assert [state.sha256 for state, _ in found] == [CHECK([path])[0][0].sha256 for path in paths]
    assert [record.getMessage() for record in trainer_log] == [
        "WARNING: a validation worker process died; checking the images again on threads"
    ]
