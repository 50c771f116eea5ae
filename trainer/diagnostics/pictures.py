"""The run's pictures: learning curves, the confusion matrix and the worst-classified test images.

Each function draws from what the run folder keeps (history.csv, metrics.json, predictions.csv),
the charts with matplotlib's Agg backend and the photos with Pillow, so `python -m trainer report`
can redraw them without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.atomic import replacing

DPI = 100
# Every picture's text in one font, the one matplotlib ships (so it is there wherever matplotlib
# is): DejaVu Sans covers Latin, Greek and Cyrillic. A class name in a script it lacks (CJK,
# say) draws as boxes; the report says so (drawable) instead of matplotlib warning per glyph.
FONT_NAME = "DejaVu Sans"


def font_file() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def drawable(text: str) -> bool:
    """Whether the pictures' font has a glyph for every character of text."""
    from matplotlib.ft2font import FT2Font

    face = FT2Font(str(font_file()))
    return all(character.isspace() or face.get_char_index(ord(character)) for character in text)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.truetype(str(font_file()), size)
    except OSError:
        return ImageFont.load_default(size)


def _pyplot():
    import logging
    import warnings

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # A missing glyph is said once, in the report (drawable), not as a warning per character.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    plt.rcParams["font.family"] = FONT_NAME
    # Class and file names are drawn as they are: with mathtext on, a `$` in one made `a$b$c`
    # draw as mathematics and `$\frac{$` fail the report. Every Text made after this takes it.
    plt.rcParams["text.parse_math"] = False
    return plt


def _save(figure, path: Path) -> Path:
    """PNG under a temporary name, then renamed: a picture is whole or absent."""
    with replacing(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=DPI)
    _pyplot().close(figure)
    return path


def learning_curves(history: list[dict], path: Path) -> Path:
    """Loss and accuracy per epoch, training solid and validation dashed; phases (head,
    fine-tuning) follow one another on one epoch axis, separated by a vertical line."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    epochs = np.arange(1, len(history) + 1)
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style, name in ((metric, "-", "training"), (f"val_{metric}", "--", "validation")):
            values = [row.get(key, np.nan) for row in history]
            if not np.all(np.isnan(np.asarray(values, dtype=float))):
                axis.plot(epochs, values, style, marker="o", markersize=3, label=name)
        for index in range(1, len(history)):
            if history[index]["phase"] != history[index - 1]["phase"]:
                axis.axvline(index + 0.5, color="grey", linewidth=0.8)
                axis.text(index + 0.6, 0.98, history[index]["phase"], transform=axis.get_xaxis_transform(), va="top")
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    if not history:
        for axis in axes:
            axis.text(0.5, 0.5, "no epochs recorded", ha="center", transform=axis.transAxes)
    return _save(figure, path)


def operating_point(point: dict, path: Path) -> Path:
    """Precision against recall of the operating point's class, on the out-of-fold probabilities
    the threshold was chosen on and on the test split, with the chosen threshold's point on each."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5), layout="constrained")
    label = point["label"]
    for key, where, style, offset in (
        ("out_of_fold", "training and validation, out of fold", "-", -14),
        ("test", "test split", "--", 8),
    ):
        curve = point.get(f"{key}_curve") or {}
        if curve.get("recall"):
            line = axis.plot(curve["recall"], curve["precision"], style, label=where)[0]
            at = point.get(key) or {}
            if at.get("recall") is not None and at.get("precision") is not None:
                axis.plot([at["recall"]], [at["precision"]], "o", color=line.get_color(), markersize=8)
                axis.annotate(f"recall {at['recall']:.3f}, precision {at['precision']:.3f}",
                              (at["recall"], at["precision"]), textcoords="offset points", xytext=(-8, offset),
                              ha="right", fontsize=8, color=line.get_color())  # fmt: skip
    axis.axvline(point["target_recall"], color="grey", linewidth=0.8, linestyle=":")
    axis.set_xlabel(f"recall of {label}")
    axis.set_ylabel(f"precision of {label}")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_title(f"{label} when P({label}) >= {point['threshold']:.3f} (target recall {point['target_recall']:g})")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    return _save(figure, path)


SHOWN_CLASSES = 20  # past this many classes the picture shows the most confused ones


def most_confused(counts: np.ndarray, keep: int = SHOWN_CLASSES) -> np.ndarray:
    """The indices of the `keep` classes most involved in mistakes (the images of theirs taken
    for another class, and the images of others taken for them), in their label order; every
    class when there are no more than `keep`."""
    if len(counts) <= keep:
        return np.arange(len(counts))
    wrong = counts.sum(axis=1) + counts.sum(axis=0) - 2 * np.diag(counts)
    return np.sort(np.argsort(-wrong, kind="stable")[:keep])


def confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str = "test") -> Path:
    """Counts in each cell, coloured by the share of the true class (the row). Past
    SHOWN_CLASSES classes, the SHOWN_CLASSES most confused, so the picture stays readable and
    its cost fixed whatever the number of classes (one text per cell at 200 classes took 141 s
    and 5.9 GB); metrics.json keeps the whole matrix."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=int)
    chosen = most_confused(counts)
    shown = counts[np.ix_(chosen, chosen)]
    names = [labels[index] for index in chosen]
    columns = list(names)
    if len(chosen) < len(labels):  # where the rest of each row went, so that every row adds up
        shown = np.column_stack([shown, counts[chosen].sum(axis=1) - shown.sum(axis=1)])
        columns.append("(other classes)")
    shown_shares = shown / np.maximum(counts[chosen].sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(names) + 2.5)
    figure, axis = plt.subplots(figsize=(size + 1, size), layout="constrained")
    image = axis.imshow(shown_shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, label="share of the true class")
    rotate = len(columns) > 4
    axis.set_xticks(np.arange(len(columns)), columns, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    axis.set_yticks(np.arange(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    which = "" if len(chosen) == len(labels) else f"; the {len(chosen)} most confused of {len(labels)} classes"
    axis.set_title(f"confusion matrix ({title}, {counts.sum()} images{which})")
    for (row, column), count in np.ndenumerate(shown):
        colour = "white" if shown_shares[row, column] > 0.5 else "black"
        axis.text(column, row, str(count), ha="center", va="center", color=colour)
    return _save(figure, path)


PHOTO = 256  # the longest side of each photo on the sheet
CAPTION = 62  # three caption lines above each photo
CELL = (300, 348)  # one test image: its caption and photo, with a margin
HEADER = 48


def fitted(draw, text: str, font, width: float) -> str:
    """text, shortened with an ellipsis until it fits width pixels: its longest prefix that fits
    with the ellipsis, found by doubling the prefix's length and then halving the gap, so that
    text is measured whole once and then O(log n) times on prefixes at most twice the one that
    fits. (Trimming a character at a time and measuring the rest took 3.5 s at 4,000 characters,
    and a 100,000-character label never finished.)"""
    if draw.textlength(text, font=font) <= width:
        return text

    def fits(length: int) -> bool:
        return draw.textlength(text[:length] + "...", font=font) <= width

    fitting, too_long = 0, 1  # the longest length known to fit (0 when none does), and one that does not
    while too_long <= len(text) and fits(too_long):
        fitting, too_long = too_long, 2 * too_long
    too_long = min(too_long, len(text) + 1)
    while too_long - fitting > 1:
        middle = (fitting + too_long) // 2
        fitting, too_long = (middle, too_long) if fits(middle) else (fitting, middle)
    return text[:fitting] + "..."


def worst_images(predictions: list[dict], path: Path, count: int = 16) -> Path:
    """The test images whose true label got the lowest probability: image, true label,
    prediction and its score. Mistakes have red captions."""
    from PIL import Image, ImageOps

    def photo(item):
        with Image.open(item["path"]) as image:
            return ImageOps.exif_transpose(image).convert("RGB")

    worst = sorted(predictions, key=lambda p: p["true_probability"])[:count]
    cells = [
        Cell(
            (Path(item["path"]).name, f"true {item['label']}", f"predicted {item['predicted']} {item['score']:.2f}"),
            "firebrick" if item["label"] != item["predicted"] else "black",
            lambda item=item: photo(item),
        )
        for item in worst
    ]
    return contact_sheet(cells, path, "worst-classified test images", "lowest probability for the true label")


@dataclass
class Cell:
    """One photo on a contact sheet: three caption lines (its file name, then two in colour), and
    how to get the photo (a PIL image; OSError or ValueError when it cannot be read)."""

    lines: tuple[str, str, str]
    colour: str
    photo: Callable


def contact_sheet(cells: list[Cell], path: Path, title: str, subtitle: str) -> Path:
    """Photos with captions, up to 4 columns, pasted with Pillow: a matplotlib grid of 16
    photos costs half a second, nearly all of it in axes the photos do not need."""
    from PIL import Image, ImageDraw

    columns = min(4, max(1, len(cells)))
    rows = max(1, -(-len(cells) // columns))
    width, height = CELL
    sheet = Image.new("RGB", (columns * width, HEADER + rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    big, caption = _font(16), _font(14)
    middle = columns * width / 2
    draw.text((middle, 6), fitted(draw, title, big, sheet.width - 8), "black", big, "ma")
    draw.text((middle, 28), fitted(draw, subtitle, caption, sheet.width - 8), "dimgray", caption, "ma")
    for index, cell in enumerate(cells):
        left, top = (index % columns) * width, HEADER + (index // columns) * height
        for number, line in enumerate(cell.lines):
            text = fitted(draw, line, caption, width - 8)
            colour = "dimgray" if number == 0 else cell.colour
            draw.text((left + width / 2, top + 4 + 18 * number), text, colour, caption, "ma")
        try:
            photo = cell.photo()
            photo.thumbnail((PHOTO, PHOTO))
            sheet.paste(photo, (left + (width - photo.width) // 2, top + CAPTION + (PHOTO - photo.height) // 2))
        except (OSError, ValueError):
            draw.text((left + width / 2, top + CAPTION + PHOTO / 2), "image not found", "dimgray", caption, "mm")
    if not cells:
        draw.text((middle, HEADER + height / 2), "no test images", "dimgray", caption, "mm")
    with replacing(path, suffix=".png") as temporary:
        # zlib level 1: a third of the default level's time (0.07 s vs 0.23 s here) for a 15% larger file.
        sheet.save(temporary, format="PNG", compress_level=1)
    return path


def captioned(photo, lines: list[str]):
    """The photo with a white band above it holding one line of text each (what `explain`
    writes: the file, the predicted class and its score)."""
    from PIL import Image, ImageDraw

    font = _font(14)
    band = 8 + 18 * len(lines)
    width = max(photo.width, 240)
    framed = Image.new("RGB", (width, photo.height + band), "white")
    framed.paste(photo, ((width - photo.width) // 2, band))
    draw = ImageDraw.Draw(framed)
    for number, line in enumerate(lines):
        draw.text((width / 2, 4 + 18 * number), fitted(draw, line, font, width - 8), "black", font, "ma")
    return framed
