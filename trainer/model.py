"""The networks: backbones built (with their weights), cut or wrapped as feature extractors, and
the one model builder.

Every model takes raw pixels (float32, 0-255, shape (size, size, 3)) and returns class
probabilities; the backbone's own preprocessing is a layer inside the model, so the saved model
needs nothing else to run.
"""

from __future__ import annotations

import logging

import numpy as np

from trainer import efficientnet_lite
from trainer.backbones import BACKBONES, CAFFE_MEAN_BGR
from trainer.errors import InputError

log = logging.getLogger("trainer")


def preprocessing(name: str):
    """The backbone's input preprocessing as a built-in, serializable layer."""
    from keras import layers

    spec = BACKBONES[name]
    if not spec.caffe:
        return layers.Rescaling(spec.scale, spec.offset, name="preprocess")
    # RGB -> BGR and the mean subtracted, as a frozen 1x1 convolution: no custom layer to
    # register, so the saved model loads anywhere Keras does.
    kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        kernel[0, 0, rgb, bgr] = 1.0
    bias = -np.array(CAFFE_MEAN_BGR, dtype=np.float32)
    layer = layers.Conv2D(3, 1, name="preprocess", trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, bias])
    return layer


def _tiny_backbone(input_shape: tuple[int, int, int]):
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = inputs
    for filters in (16, 32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # Group normalization, not batch normalization: small datasets give a handful of steps
        # per epoch, too few for batch statistics to settle, and a BN model that scores 1.0 in
        # training then predicts one class at inference. GN behaves the same in both modes.
        x = layers.GroupNormalization(groups=8)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    outputs = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name="tiny")


def build_backbone(name: str, image_size: int, weights: str | None):
    """The feature extractor, pooled to one vector per image. weights: None, 'imagenet' or a path."""
    import keras

    spec = BACKBONES[name]
    input_shape = (image_size, image_size, 3)
    if spec.application is None:
        if name.startswith("efficientnet_lite"):
            base = efficientnet_lite.build(input_shape, name=name)
            if weights == "imagenet":
                efficientnet_lite.load_imagenet(base)
        else:
            base = _tiny_backbone(input_shape)
        if weights and weights != "imagenet":
            base.load_weights(weights)
        return base
    application = getattr(keras.applications, spec.application)
    return application(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")


def cut_backbone(backbone, layer_name: str):
    """The backbone up to one of its layers, average-pooled: features from an earlier depth.
    Earlier layers carry more texture and less object-category information, which can suit
    surfaces such as concrete better (fastai calls this cutting the body)."""
    import keras
    from keras import layers

    names = [layer.name for layer in backbone.layers]
    if layer_name not in names:
        likely = [n for n in names if n.endswith(("pool", "_out", "add", "concat"))][-6:] or names[-6:]
        raise InputError(f"--feature-layer: {backbone.name} has no layer {layer_name!r}; e.g. {', '.join(likely)}")
    output = backbone.get_layer(layer_name).output
    if len(output.shape) == 4:
        output = layers.GlobalAveragePooling2D(name="feature_pool")(output)
    return keras.Model(backbone.input, output, name=f"{backbone.name}_to_{layer_name}")


def load_backbone(name: str, image_size: int, weights: str) -> tuple[object, str]:
    """Build the backbone with the requested weights; return it and the weights actually used.

    `auto` means ImageNet weights when Keras has them cached or can download them, otherwise
    none, with a warning that says what that costs.
    """
    spec = BACKBONES[name]  # TrainConfig.check has held image_size against spec.min_size
    if weights == "none":
        return build_backbone(name, image_size, None), "none"
    if weights in ("auto", "imagenet") and spec.imagenet_offline:
        return build_backbone(name, image_size, "imagenet"), "imagenet"  # InputError if the package is missing
    if weights in ("auto", "imagenet") and spec.application is None:
        if weights == "imagenet":
            raise InputError(f"--weights imagenet: backbone {name} has no ImageNet weights; use none or a file")
        log.info("backbone %s has no pretrained weights: training from scratch", name)
        return build_backbone(name, image_size, None), "none"
    if weights in ("auto", "imagenet"):
        try:
            return build_backbone(name, image_size, "imagenet"), "imagenet"
        except Exception as error:  # Keras raises a bare Exception for a failed download
            reason = str(error).split(" -- ")[-1][:200]
            if weights == "imagenet":
                raise InputError(
                    f"--weights imagenet: could not get ImageNet weights for {name} ({reason}); "
                    "connect to the internet, or pass --weights none or a local weights file"
                ) from None
            log.warning(
                "WARNING: no ImageNet weights for %s (%s): training the whole network from scratch, "
                "which needs far more data and time; pass --weights PATH to use a local file",
                name,
                reason,
            )
            return build_backbone(name, image_size, None), "none"
    try:
        return build_backbone(name, image_size, weights), weights
    except (ValueError, OSError, KeyError) as error:
        raise InputError(f"--weights: {weights} does not fit backbone {name} at {image_size}px ({error})") from None


def make_model(backbone, backbone_name: str, num_classes: int, pretrained: bool, dropout: float, head=None):
    """Pixels in, probabilities out. A pretrained backbone is frozen and runs in inference mode,
    so only the head (feature standardization, dropout, softmax) learns; without pretrained
    weights the whole network trains. head: the trained make_head model, whose standardization
    and classifier the pretrained model takes over."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    x = preprocessing(backbone_name)(inputs)
    backbone.trainable = not pretrained
    x = backbone(x, training=False) if pretrained else backbone(x)
    if pretrained:
        x = copy_layer(head.get_layer("feature_norm"))(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    regularizer = head.get_layer("probabilities").kernel_regularizer if pretrained else None
    classifier = layers.Dense(
        num_classes, activation="softmax", name="probabilities", dtype="float32", kernel_regularizer=regularizer
    )
    outputs = classifier(x)
    model = keras.Model(inputs, outputs, name=f"{backbone_name}_classifier")
    if pretrained:
        classifier.set_weights(head.get_layer("probabilities").get_weights())
    return model


def float32_copy(model):
    """The same model and weights computing in float32: what is saved and exported after
    training under a mixed-precision policy.

    Mixed precision keeps every variable in float32 and only computes in float16 or bfloat16,
    so nothing is lost; the copy runs on a CPU with no policy set (float16 arithmetic there is
    slow, and TFLite's converter rejects half-precision ops), and every export of it matches
    Keras to float32 precision. Rebuilt from the model's configuration with each layer's dtype
    policy set to float32, nested models included, then given the trained weights."""
    import keras

    def to_float32(node):
        if isinstance(node, dict):
            if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "name" in node.get("config", {}):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {key: to_float32(value) for key, value in node.items()}
        if isinstance(node, list):
            return [to_float32(value) for value in node]
        return node

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # for layers whose config names no dtype
    try:
        copy = type(model).from_config(to_float32(model.get_config()))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def copy_layer(layer):
    """A new layer with the same configuration (and so the same constants)."""
    return type(layer).from_config(layer.get_config())


def feature_extractor(backbone, backbone_name: str):
    """Pixels in, pooled backbone features out, in inference mode."""
    import keras

    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    outputs = backbone(preprocessing(backbone_name)(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{backbone_name}_features")


def unfreeze_top(backbone, layers_to_train: int) -> int:
    """Make the top N layers with weights trainable, batch normalization excepted (its statistics
    stay as learned; the backbone is called with training=False, so they stay in inference
    mode). Returns how many layers were unfrozen."""
    from keras import layers

    backbone.trainable = True
    with_weights = [layer for layer in backbone.layers if layer.weights]
    chosen = set(id(layer) for layer in with_weights[-layers_to_train:]) if layers_to_train else set()
    count = 0
    for layer in backbone.layers:
        train = id(layer) in chosen and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = train
        count += train
    return count
