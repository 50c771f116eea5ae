from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainer.data import images
from trainer.data.images import inspect_image, load_image
from trainer.errors import ImageError


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "mode, suffix",
    [("L", ".png"), ("P", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("I;16", ".png"), ("LA", ".png"), ("1", ".bmp")],
)
def test_every_mode_becomes_rgb(tmp_path, mode, suffix):
    path = _save(Image.new(mode, (40, 30)), tmp_path / f"img{suffix}")
    pixels = load_image(path, 32)
    assert pixels.shape == (32, 32, 3)
    assert pixels.dtype == np.uint8
    assert inspect_image(path).mode == Image.open(path).mode


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    array = np.full((8, 8), 32768, dtype=np.uint16)  # half of the 16-bit range
    path = _save(Image.fromarray(array), tmp_path / "grey16.png")
    value = load_image(path, 8)[0, 0, 0]
    assert 120 <= value <= 135


def test_transparency_is_composited_over_white(tmp_path):
    path = _save(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), tmp_path / "clear.png")
    assert load_image(path, 8).min() == 255


def test_exif_orientation_is_honoured(tmp_path):
    # A 40x20 image whose left half is black, stored with "rotate 90 CW" (orientation 6): the
    # upright picture is 20 wide and 40 tall with the black half on top.
    image = Image.new("RGB", (40, 20), "white")
    image.paste((0, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = load_image(path, 40)
    assert upright[:15].mean() < 60  # top is dark
    assert upright[25:].mean() > 200  # bottom is light


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(Image.new("L", (300, 300)), tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 200 * 200)
    with pytest.raises(ImageError, match=r"big.png: 300x300 pixels is over the 40,000-pixel limit"):
        inspect_image(path)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, 32)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"empty file \(0 bytes\)"),
        (b"this is not an image", "not an image Pillow can read"),
    ],
)
def test_unusable_files(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        inspect_image(path)


def test_truncated_jpeg_is_corrupt(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    path = _save(Image.fromarray(noise), tmp_path / "cut.jpg", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        inspect_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        inspect_image(tmp_path / "nowhere.jpg")


def test_hash_is_of_the_file_bytes(tmp_path):
    path = _save(Image.new("RGB", (10, 10), "red"), tmp_path / "red.png")
    import hashlib

    assert inspect_image(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Damaged files, as half-copied Drive folders and bad disks make them: every cut and every
# flipped byte is a dropped row with a reason, never a traceback.


def _encoded_files() -> dict[str, bytes]:
    """Real encoders' output for one photo-like picture (a gradient under noise, 48 x 40)."""
    import io

    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 200, 48)[None, :, None] + np.linspace(0, 40, 40)[:, None, None]
    picture = Image.fromarray(np.clip(ramp + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(np.uint8))
    turned = picture.rotate(90, expand=False)
    files = {}
    for name, (format, options) in {
        "baseline.jpg": ("JPEG", {"quality": 85}),
        "progressive.jpg": ("JPEG", {"progressive": True}),
        "image.png": ("PNG", {}),
        "animated.png": ("PNG", {"save_all": True, "append_images": [turned]}),
        "animated.gif": ("GIF", {"save_all": True, "append_images": [turned]}),
        "lossy.webp": ("WEBP", {"quality": 80}),
        "lossless.webp": ("WEBP", {"lossless": True}),
    }.items():
        buffer = io.BytesIO()
        picture.save(buffer, format, **options)
        files[name] = buffer.getvalue()
    return files


def _damaged(data: bytes, every_length: bool, flips: int, rng) -> list[bytes]:
    """The file cut at every length through its headers (the first 400 bytes) and then at
    intervals (or at every length), plus copies with 1 to 8 random bytes overwritten."""
    lengths = range(1, len(data)) if every_length else [*range(1, min(400, len(data))), *range(400, len(data), 37)]
    copies = [data[:length] for length in lengths]
    for _ in range(flips):
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            damaged[int(rng.integers(len(damaged)))] = int(rng.integers(256))
        copies.append(bytes(damaged))
    return copies


def _fuzz_validation(folder, every_length: bool, flips: int) -> None:
    from trainer.data.rows import load_rows
    from trainer.data.validate import validate
    from trainer.errors import InputError

    rng = np.random.default_rng(0)
    lines, total = ["ImagePath,Label"], 0
    for name, original in _encoded_files().items():
        for number, content in enumerate(_damaged(original, every_length, flips, rng)):
            path = folder / f"{number}-{name}"
            path.write_bytes(content)
            lines.append(f"{path.name},{'JPEG' if name.endswith('.jpg') else 'other'}")
            total += 1
    (folder / "damaged.csv").write_text("\n".join(lines) + "\n")

    rows, report = load_rows(folder, "damaged.csv")
    kept = validate(rows, report)
    corrupt = report.problems.get("unreadable or corrupt images", [])
    duplicates = report.problems.get("identical content under different paths", [])
    assert len(kept) + len(corrupt) + len(duplicates) == total
    assert len(corrupt) > total // 2  # most cuts and many flips are damage a decoder notices
    assert all("corrupt or truncated" in line or "not an image" in line for line in corrupt), corrupt[:5]
    # What validation keeps, training reads, at any size.
    for row in kept:
        for size in (32, 224):
            assert load_image(row.path, size).shape == (size, size, 3)

    rows, report = load_rows(folder, "damaged.csv")
    with pytest.raises(InputError, match=r"^--strict: \d+ unusable rows?: unreadable or corrupt images: "):
        validate(rows, report, strict=True)


def test_every_cut_and_some_flipped_bytes_of_every_format_are_dropped_rows(tmp_path):
    _fuzz_validation(tmp_path, every_length=False, flips=60)


@pytest.mark.slow
@pytest.mark.extended  # the default suite's fuzz of 3,700 files takes the same paths (30 s)
def test_every_cut_and_many_flipped_bytes_of_every_format_are_dropped_rows(tmp_path):
    _fuzz_validation(tmp_path, every_length=True, flips=600)
