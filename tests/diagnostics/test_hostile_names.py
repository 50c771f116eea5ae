"""Names drawn and written as they are, as properties over names of every kind: the report's
HTML from a run folder that may come from elsewhere (every value escaped or formatted as the
number it must be), the review form's attributes, matplotlib text with `$` in it (plain text,
never mathtext) and caption fitting (a bounded number of measurements, whatever the length)."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trainer import runfolder
from trainer.diagnostics import pictures, report, review, sections

# Modest numbers of examples and deadlines a loaded 2-core machine keeps: the default suite stays quick.
PROPERTY = settings(max_examples=200, deadline=timedelta(seconds=5),
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "'><b>", "</textarea>", "&amp;", "&#13;",
           "javascript:alert(1)", "$\\frac{$", "a$b$c", '=HYPERLINK("http://x/?"&A2,"click")', "+1+1", "-1",
           "ünï cødé 裂缝", "line\rbreak", "a\u2028b", "\x00"]  # fmt: skip
TEXTS = st.one_of(st.text(), st.sampled_from(HOSTILE), st.builds(str.__add__, st.sampled_from(HOSTILE), st.text()))
VALUES = st.one_of(TEXTS, st.integers(), st.floats(allow_nan=False, allow_infinity=False))


class Page(HTMLParser):
    """A page's elements (tag and attribute names, in order), attributes and text."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.attributes, self.text = [], [], []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, tuple(name for name, _ in attrs)))
        self.attributes.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


@PROPERTY
@given(VALUES)
def test_a_figure_is_formatted_when_a_number_and_escaped_when_not(value):
    shown = sections.number(value, ".3f")
    assert not set(shown) & set("<>\"'")
    expected = format(value, ".3f") if isinstance(value, (int, float)) else str(value)
    assert Page(f"<p>{shown}</p>").text == ([expected] if expected else [])
    assert sections.number(None) == "?" and sections.number(True) == "True"


@PROPERTY
@given(st.lists(st.lists(VALUES, min_size=2, max_size=2), max_size=3), TEXTS)
def test_a_table_shows_its_cells_as_text(rows, name):
    page = Page(sections.table(rows, [name, "value"]))
    assert {tag for tag, _ in page.elements} <= {"table", "tr", "th", "td"}
    assert len(page.elements) == 1 + (1 + 2) * (len(rows) + 1)


def _run_folder(folder, value):
    """A run folder from elsewhere with `value` wherever a file holds a figure or a name."""
    text = str(value)
    labels = [f"A{text}", f"B{text}"]
    files = {
        "metrics.json": {"accuracy": value, "count": value, "log_loss": 0.1, "roc_auc": value, "labels": labels,
                         "training_seconds": value, "data": {"rows_read": value, "notes": [text]}},
        "decision.json": {"rule": text, "label": labels[0], "target_recall": value, "threshold": 0.5, "folds": value,
                          "epochs": value, "note": f"note {text}", "test": {"images": value, "recall": value}},
        "manifest.json": {"diagnostics": {"heatmaps": {"failed": text}},
                          "audit": {"flagged": {"label": 1}, "near_duplicate_groups": value, "features": text},
                          "data": {"corrections": {"relabelled": value, "dropped": value, "kept": value,
                                                   "skipped": value, "classes": {text: {"in": value}},
                                                   "new_classes": labels, "record": f"record {text}"}}},
        "exports.json": {"ok": True, "images": [text], "legs": [{"name": text, "max_difference": value,
                                                                 "tolerance": value, "top_class_agrees": True,
                                                                 "ok": True}],
                         "benchmark": {"images": value, "formats": [{"format": text, "file": text, "accuracy": value,
                                                                     "ms_per_image": {"1": value, "32": value}}]}},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")
    audit = [{"ImagePath": f"{text}.jpg", "Label": labels[0], "SuggestedLabel": labels[1], "Score": "0.9",
              "Reason": f"label: {text}", "Group": ""}]  # fmt: skip
    runfolder.write_audit(folder / "audit.csv", audit)
    return folder


@settings(PROPERTY, max_examples=100)
@given(VALUES)
@example("</script><script>alert(1)</script>")
def test_report_html_from_a_run_folder_from_elsewhere_runs_nothing(monkeypatch, tmp_path, value):
    """`trainer report` on a folder whose files hold markup where figures and names belong: the
    page has the same elements as with a plain figure, and shows the value as text. (The note on
    names the pictures' font cannot draw is left out: it is a paragraph more, rightly.)"""
    monkeypatch.setattr(pictures, "drawable", lambda text: True)
    plain = Page(report.render(_run_folder(tmp_path / "plain", 1), "run"))
    hostile = Page(report.render(_run_folder(tmp_path / "hostile", value), "run"))
    assert hostile.elements == plain.elements
    assert str(value).replace("\r", "") in "".join(hostile.text).replace("\r", "")


@PROPERTY
@given(st.lists(TEXTS, min_size=2, max_size=3, unique=True), st.lists(TEXTS, min_size=1, max_size=3))
def test_the_review_forms_attributes_and_choices_are_the_names(labels, paths):
    rows = [{"ImagePath": path, "Label": labels[0], "SuggestedLabel": labels[1], "Score": "0.5", "Reason": "label: x",
             "Group": ""} for path in paths]  # fmt: skip
    page = Page(review.form(rows, labels, {}))
    listed = [attributes for attributes in page.attributes if "data-path" in attributes]
    assert [(row["data-path"], row["data-label"], row["data-suggested"]) for row in listed] == [
        (path, labels[0], labels[1]) for path in paths]  # fmt: skip
    options = [attributes["value"] for attributes in page.attributes if set(attributes) == {"value"}]
    assert options == [*(["", "keep", *labels[1:], "drop"] * len(paths))]
    directions = [
        (box["data-from"], box["data-to"]) for box in page.attributes if box.get("class") == "review-direction"
    ]
    assert directions == [(labels[0], labels[1])]
    assert [tag for tag, _ in page.elements].count("script") == 1
    assert not [name for _, names in page.elements for name in names if name.startswith("on")]


# Class names, phases and titles with `$` (names pass trainer/names.py's rule: no control characters).
NAME_CHARACTERS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
DOLLARS = st.one_of(
    st.sampled_from(["$\\frac{$", "$a^$", "a$b$c", "$x$", "\\$", "$$", "$\\alpha$ and $"]),
    st.builds(lambda a, b, c: f"{a}${b}${c}", *(st.text(NAME_CHARACTERS, max_size=8) for _ in range(3))),
)


@pytest.fixture()
def drawn(monkeypatch):
    """Every figure a picture function makes, drawn on the Agg canvas instead of saved."""
    figures = []

    def draw(figure, path):
        figure.canvas.draw()
        figures.append(figure)
        return path

    monkeypatch.setattr(pictures, "_save", draw)
    yield figures
    import matplotlib.pyplot as plt

    plt.close("all")


def _texts(figure) -> list:
    from matplotlib.text import Text

    return [text for text in figure.findobj(Text) if text.get_text()]


@settings(PROPERTY, max_examples=10, deadline=timedelta(seconds=30))
@given(st.lists(DOLLARS, min_size=2, max_size=3, unique=True))
def test_names_with_dollars_draw_as_plain_text(drawn, tmp_path, names):
    """The confusion matrix's ticks, the operating point's title and labels, the learning
    curves' phases: each name drawn on an Agg canvas as it is (no mathtext), none failing."""
    import matplotlib.pyplot as plt

    plt.close("all")
    drawn.clear()
    matrix = [[index + column for column in range(len(names))] for index in range(len(names))]
    pictures.confusion_matrix(matrix, names, tmp_path / "matrix.png")
    curve = {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 0.8, 0.5]}
    point = {"label": names[0], "threshold": 0.5, "target_recall": 0.9, "out_of_fold_curve": curve,
             "out_of_fold": {"recall": 0.9, "precision": 0.8}}  # fmt: skip
    pictures.operating_point(point, tmp_path / "point.png")
    history = [{"phase": name, "epoch": 1, "loss": 1.0, "accuracy": 0.5} for name in names]
    pictures.learning_curves(history, tmp_path / "curves.png")
    matrix_figure, point_figure, curves_figure = drawn
    for figure in drawn:
        assert all(text.get_parse_math() is False for text in _texts(figure))
    axis = matrix_figure.axes[0]
    assert [text.get_text() for text in axis.get_xticklabels()] == names
    assert [text.get_text() for text in axis.get_yticklabels()] == names
    assert point_figure.axes[0].get_title().startswith(f"{names[0]} when P({names[0]}) >= 0.500")
    assert point_figure.axes[0].get_xlabel() == f"recall of {names[0]}"
    assert {text.get_text() for text in _texts(curves_figure)} >= set(names[1:])


def _linear_fit(measure, text: str, width: float) -> str:
    """The old fitting, a character at a time: the reference for what the result must be."""
    if measure(text) <= width:
        return text
    while text and measure(text + "...") > width:
        text = text[:-1]
    return text + "..."


class Ruler:
    """A stand-in for ImageDraw's textlength: each character's width from a table (some zero,
    as combining marks are), counting the calls and the characters measured."""

    def __init__(self, widths: dict[str, float]):
        self.widths, self.calls, self.measured = widths, 0, 0

    def textlength(self, text: str, font=None) -> float:
        self.calls += 1
        self.measured += len(text)
        return sum(self.widths.get(character, 7.0) for character in text)


CAPTIONS = st.one_of(st.text(max_size=300), st.text(min_size=1, max_size=4).map(lambda seed: seed * 25_000))


@PROPERTY
@given(CAPTIONS, st.dictionaries(st.characters(), st.sampled_from([0.0, 1.0, 4.0, 9.0, 30.0]), max_size=20),
       st.sampled_from([0, 5, 40, 292, 1000]))  # fmt: skip
def test_a_caption_is_fitted_in_a_bounded_number_of_measurements(caption, widths, width):
    ruler = Ruler(widths)
    result = pictures.fitted(ruler, caption, None, width)
    calls, measured = ruler.calls, ruler.measured
    if result == caption:
        assert ruler.textlength(caption) <= width
        return
    kept = result.removesuffix("...")
    assert result.endswith("...") and caption.startswith(kept) and len(kept) < len(caption)
    assert not kept or ruler.textlength(result) <= width  # it fits (a bare ellipsis may not)
    assert ruler.textlength(caption[: len(kept) + 1] + "...") > width  # and is the longest that does
    assert calls <= 2 * math.log2(len(caption) + 2) + 3
    assert measured <= len(caption) + 6 * (len(kept) + 4) * math.log2(len(kept) + 4)
    if len(caption) <= 300:
        assert result == _linear_fit(Ruler(widths).textlength, caption, width)


def test_a_100000_character_caption_is_fitted_with_the_pictures_font_in_a_few_measurements():
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    font, calls = pictures._font(14), []
    measure = draw.textlength
    draw.textlength = lambda text, font=None: calls.append(len(text)) or measure(text, font=font)
    caption = "true " + "crack $\\frac{$ " * 7_000
    result = pictures.fitted(draw, caption, font, 292)
    assert caption.startswith(result.removesuffix("...")) and measure(result, font=font) <= 292
    assert len(calls) <= 2 * math.log2(len(caption)) + 3 and sorted(calls)[-2] < 200
    for ordinary in ("true CD", "predicted UD 0.93", "IMG_20240101_123456_with_a_long_name_from_a_phone_camera.jpg"):
        assert pictures.fitted(draw, ordinary, font, 292) == _linear_fit(lambda t: measure(t, font=font), ordinary, 292)
