from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainer import images
from trainer.errors import ImageError
from trainer.images import inspect_image, load_image


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
