"""The run's pictures: learning curves, the confusion matrix and the worst-classified test images.

Each function draws from what the run folder keeps (history.csv, metrics.json, predictions.csv)
with matplotlib's Agg backend, so `python -m trainer report` can redraw them without TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    """PNG under a temporary name, then renamed: a picture is whole or absent."""
    temporary = path.with_name(f".{path.name}.partial.png")
    # Fast zlib: the default level spends a second on the grid of photos for a few % of size.
    figure.savefig(temporary, dpi=DPI, pil_kwargs={"compress_level": 1})
    _pyplot().close(figure)
    os.replace(temporary, path)
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


def confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str = "test") -> Path:
    """Counts in each cell, coloured by the share of the true class (the row)."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=int)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axis = plt.subplots(figsize=(size + 1, size), layout="constrained")
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, label="share of the true class")
    ticks = np.arange(len(labels))
    axis.set_xticks(ticks, labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    axis.set_yticks(ticks, labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"confusion matrix ({title}, {counts.sum()} images)")
    for (row, column), count in np.ndenumerate(counts):
        axis.text(
            column, row, str(count), ha="center", va="center", color="white" if shares[row, column] > 0.5 else "black"
        )
    return _save(figure, path)


def worst_images(predictions: list[dict], path: Path, count: int = 16) -> Path:
    """The test images whose true label got the lowest probability: image, true label,
    prediction and its score. Mistakes have red titles."""
    plt = _pyplot()
    from PIL import Image, ImageOps

    worst = sorted(predictions, key=lambda p: p["true_probability"])[:count]
    columns = min(4, max(1, len(worst)))
    rows = max(1, -(-len(worst) // columns))
    # A fixed layout: the constrained layout engine costs more than drawing 16 photos.
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.85 / (3.3 * rows), wspace=0.05, hspace=0.3)
    for axis in axes.flat:
        axis.axis("off")
    for axis, item in zip(axes.flat, worst, strict=False):
        try:
            with Image.open(item["path"]) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
                image.thumbnail((256, 256))
                axis.imshow(np.asarray(image), interpolation="nearest")
        except (OSError, ValueError):
            axis.text(0.5, 0.5, "image not found", ha="center", va="center", transform=axis.transAxes)
        wrong = item["label"] != item["predicted"]
        axis.set_title(
            f"true {item['label']}\npredicted {item['predicted']} {item['score']:.2f}",
            color="firebrick" if wrong else "black",
            fontsize=9,
        )
    if not worst:
        axes[0, 0].text(0.5, 0.5, "no test images", ha="center", transform=axes[0, 0].transAxes)
    figure.suptitle("worst-classified test images (lowest probability for the true label)", y=0.998, va="top")
    return _save(figure, path)
