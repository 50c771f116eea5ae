"""The views of an image that keep its label where the subject has no up, down, left or right
(a crack in a deck seen from above): --feature-augment. Each is featurized once and cached."""

from __future__ import annotations

import numpy as np

# A view's name says what is done to the image, in order: t transposes it, v flips its rows,
# h flips its columns.
VIEWS = {
    "none": ("id",),
    "flips": ("id", "h", "v", "vh"),
    "dihedral": ("id", "h", "v", "vh", "t", "th", "tv", "tvh"),
}


def view_of(images: np.ndarray, view: str) -> np.ndarray:
    """A batch of images (N, H, W, C) seen as `view` (a numpy view of the same pixels)."""
    for step in view if view != "id" else "":
        if step == "t":
            images = np.swapaxes(images, 1, 2)
        elif step == "v":
            images = images[:, ::-1]
        elif step == "h":
            images = images[:, :, ::-1]
        else:
            raise ValueError(f"unknown view step {step!r} in {view!r}")
    return images
