"""A small synthetic dataset in the original's layout: concrete-like textures, cracked or not.

    OUT/Images/CD/demo-cd-0001.jpg ...     cracked deck: thin, dark, jagged lines
    OUT/Images/UD/demo-ud-0001.jpg ...     uncracked deck: the same textures, stains, no cracks
    OUT/Images/training_data.csv           ImagePath,Label with ../Images/CD/... paths
    OUT/cracks/CD/demo-cd-0001.png ...     where the generator drew each crack (black on white)

It is the offline default that lets the main job run anywhere. The same seed gives the same
pixels; the folder is written under a temporary name and renamed, so it is whole or absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer.atomic import partial_folder
from trainer.errors import InputError

LABELS = ("CD", "UD")
DEFAULT_SIZE = 160


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Cement grey: a few octaves of smooth noise plus grain and aggregate specks."""
    base = rng.uniform(110, 175)
    field = np.zeros((size, size))
    for cells, weight in ((4, 18.0), (12, 10.0), (40, 6.0)):
        coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        field += weight * np.asarray(smooth)
    field += rng.normal(0, 7, (size, size))
    specks = rng.random((size, size)) < 0.004
    field[specks] += rng.choice([-45, 35], size=int(specks.sum()))
    gray = base + field
    tint = rng.uniform(-3, 3, 3)
    return np.clip(gray[..., None] + tint, 0, 255).astype(np.uint8)


def _crack(draws: list[ImageDraw.ImageDraw], rng: np.random.Generator, size: int) -> None:
    """A jagged random walk from one edge towards the opposite one, sometimes branching; drawn
    alike on each of `draws` (the image's marks, and the mask that records where cracks are)."""
    if rng.random() < 0.5:
        x, y, heading = 0.0, rng.uniform(0.2, 0.8) * size, 0.0
    else:
        x, y, heading = rng.uniform(0.2, 0.8) * size, 0.0, np.pi / 2
    heading += rng.normal(0, 0.3)
    points = [(x, y)]
    step = size / 24
    while 0 <= x <= size and 0 <= y <= size and len(points) < 80:
        heading += rng.normal(0, 0.18)
        x += step * np.cos(heading)
        y += step * np.sin(heading)
        points.append((x, y))
        if rng.random() < 0.04:
            branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
            bx, by = x, y
            branch = [(bx, by)]
            for _ in range(int(rng.integers(3, 9))):
                branch_heading += rng.normal(0, 0.3)
                bx += step * 0.8 * np.cos(branch_heading)
                by += step * 0.8 * np.sin(branch_heading)
                branch.append((bx, by))
            fill = int(rng.uniform(40, 80))
            for draw in draws:
                draw.line(branch, fill=fill, width=1)
    fill, width = int(rng.uniform(25, 70)), int(rng.integers(1, 4))
    for draw in draws:
        draw.line(points, fill=fill, width=width, joint="curve")


def _stain(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    """A soft blotch: the kind of dark mark that is not a crack."""
    cx, cy = rng.uniform(0, size, 2)
    rx, ry = rng.uniform(0.05, 0.2, 2) * size
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=int(rng.uniform(60, 110)))


def make_image(rng: np.random.Generator, label: str, size: int = DEFAULT_SIZE) -> Image.Image:
    return make_image_and_mask(rng, label, size)[0]


def make_image_and_mask(rng: np.random.Generator, label: str, size: int = DEFAULT_SIZE):
    """The image, and a mask of where its cracks are (black on white; all white for UD)."""
    pixels = _texture(rng, size)
    image = Image.fromarray(pixels)
    marks = Image.new("L", (size, size), 255)
    mask = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(marks)
    if rng.random() < 0.4:
        _stain(draw, rng, size)
        marks = marks.filter(ImageFilter.GaussianBlur(size / 20))
        draw = ImageDraw.Draw(marks)
    if label == "CD":
        for _ in range(int(rng.integers(1, 3))):
            _crack([draw, ImageDraw.Draw(mask)], rng, size)
    marks = marks.filter(ImageFilter.GaussianBlur(0.6))
    # Multiply: marks darken the texture in proportion, as a shadowed crack does.
    darkened = np.asarray(image, dtype=np.float32) * (np.asarray(marks, dtype=np.float32)[..., None] / 255.0)
    return Image.fromarray(darkened.astype(np.uint8)), mask


def make_demo_data(out_dir: str | Path, per_class: int = 60, seed: int = 0, image_size: int = DEFAULT_SIZE) -> Path:
    """Write the dataset; return the CSV's path. Reruns with the same settings do nothing."""
    if per_class < 3:
        raise InputError(f"--per-class must be at least 3 so that every split gets an image (got {per_class})")
    if image_size < 32:
        raise InputError(f"--image-size must be at least 32 (got {image_size})")
    out_dir = Path(out_dir)
    settings = {"per_class": per_class, "seed": seed, "image_size": image_size}
    marker = out_dir / "demo.json"
    csv_path = out_dir / "Images" / "training_data.csv"
    if marker.is_file() and csv_path.is_file():
        if json.loads(marker.read_text()) == settings:
            return csv_path
        raise InputError(f"{out_dir}: holds demo data made with other settings; remove it or choose another folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: exists and is not empty; choose an empty or new folder")

    with partial_folder(out_dir) as partial:
        rng = np.random.default_rng(seed)
        lines = ["ImagePath,Label"]
        for label in LABELS:
            (partial / "Images" / label).mkdir(parents=True)
            (partial / "cracks" / label).mkdir(parents=True)
            for index in range(1, per_class + 1):
                name = f"demo-{label.lower()}-{index:04d}.jpg"
                image, mask = make_image_and_mask(rng, label, image_size)
                image.save(partial / "Images" / label / name, quality=90)
                mask.save(partial / "cracks" / label / name.replace(".jpg", ".png"))
                lines.append(f"../Images/{label}/{name},{label}")
        (partial / "Images" / "training_data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (partial / "demo.json").write_text(json.dumps(settings) + "\n")
    return csv_path
