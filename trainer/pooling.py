"""How a backbone's last feature map (h x w x K) becomes one vector per image (--pooling).

    avg      the mean over the map's locations (every backbone's own ending: K features)
    max      the largest value over the locations (K)
    gem      the generalized mean, (mean of max(x, eps)^p)^(1/p) with p = 3 fixed (K): between
             the mean (p = 1) and the maximum (p -> inf), as image retrieval uses it
             (Radenović et al. 2018)
    avgmax   the mean and the maximum side by side (2K)

Every backbone the trainer builds ends in a GlobalAveragePooling2D; `pooled` swaps that for the
pooling asked for, over the same layers (and so the same weights), and `all_poolings` gives
[avg | max | gem] from one pass, for a search that tries them all (trainer.features.extract's
extract_poolings). Generalized mean is the one layer Keras does not have: it is registered as
"trainer>GeneralizedMeanPooling", so a saved model holding it loads in safe mode wherever
`custom_objects()` is passed (trainer.predict, the diagnostics). Keras is imported when a
model is built, as everywhere in the trainer.
"""

from __future__ import annotations

import functools

from trainer.config import POOLINGS
from trainer.errors import InputError

NAMES = {"avg": "average", "max": "maximum", "gem": "generalized mean (p=3)", "avgmax": "average and maximum"}
GEM_POWER = 3.0
GEM_EPSILON = 1e-6  # the floor under each value: a power of a negative number has no real root


@functools.cache
def generalized_mean_layer() -> type:
    """The generalized-mean pooling layer class (defined and registered on first use)."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="trainer")
    class GeneralizedMeanPooling(keras.layers.Layer):
        """(mean over h, w of max(x, eps)^p)^(1/p), channels last. Computed in float32 under any
        policy: a cube of a half-precision feature overflows float16 past 40 (ResNet's reach
        that), and the result, at most the map's maximum, fits the policy's dtype again."""

        def __init__(self, power: float = GEM_POWER, epsilon: float = GEM_EPSILON, **kwargs):
            super().__init__(**kwargs)
            self.power, self.epsilon = float(power), float(epsilon)

        def call(self, inputs):
            x = ops.maximum(ops.cast(inputs, "float32"), self.epsilon)
            pooled = ops.power(ops.mean(ops.power(x, self.power), axis=(1, 2)), 1.0 / self.power)
            return ops.cast(pooled, self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], input_shape[-1])

        def get_config(self):
            return {**super().get_config(), "power": self.power, "epsilon": self.epsilon}

    return GeneralizedMeanPooling


def custom_objects() -> dict[str, type]:
    """What keras.models.load_model needs beside Keras's own layers to load any model the
    trainer saves (pass it as custom_objects=, safe mode stays on)."""
    layer = generalized_mean_layer()
    return {keras_name(layer): layer}


def keras_name(layer: type) -> str:
    import keras

    return keras.saving.get_registered_name(layer)


def feature_map(backbone):
    """The tensor the backbone's final average pooling pools; InputError when the backbone does
    not end in one (a --feature-layer whose output is already a vector)."""
    from keras import layers

    last = backbone.layers[-1]
    if not isinstance(last, layers.GlobalAveragePooling2D):
        raise InputError(
            f"--pooling: {backbone.name} ends in {last.name} ({type(last).__name__}), not a feature map's average "
            "pooling; use --pooling avg, or a --feature-layer with a feature map"
        )
    return last.input


def pool(tensor, pooling: str):
    """A feature map pooled one way (a new layer, named pooling_<way>)."""
    from keras import layers

    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="pooling_avg")(tensor)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="pooling_max")(tensor)
    if pooling == "gem":
        return generalized_mean_layer()(name="pooling_gem")(tensor)
    if pooling == "avgmax":
        average = layers.GlobalAveragePooling2D(name="pooling_avgmax_avg")(tensor)
        maximum = layers.GlobalMaxPooling2D(name="pooling_avgmax_max")(tensor)
        return layers.Concatenate(name="pooling_avgmax")([average, maximum])
    raise InputError(f"--pooling must be {', '.join(POOLINGS[:-1])} or {POOLINGS[-1]} (got {pooling!r})")


def pooled(backbone, pooling: str):
    """The backbone ending in `pooling` instead of its average pooling: a model over the same
    layers and weights. avg returns the backbone itself, so a run with the default builds
    exactly what it always did."""
    import keras

    if pooling == "avg":
        return backbone
    return keras.Model(backbone.input, pool(feature_map(backbone), pooling), name=f"{backbone.name}_{pooling}")


def all_poolings(backbone):
    """[avg | max | gem] side by side (3 x the backbone's width) from one pass over the same
    layers; columns(p, width) says where pooling p's features sit in its output."""
    import keras
    from keras import layers

    tensor = feature_map(backbone)
    ways = [pool(tensor, pooling) for pooling in ("avg", "max", "gem")]
    return keras.Model(backbone.input, layers.Concatenate(name="pooling_all")(ways), name=f"{backbone.name}_all")


def columns(pooling: str, width: int) -> slice:
    """Where pooling's features sit in all_poolings' output, for a backbone `width` wide (avgmax:
    the avg and max columns, which are next to each other)."""
    start, stop = {"avg": (0, 1), "max": (1, 2), "gem": (2, 3), "avgmax": (0, 2)}[pooling]
    return slice(start * width, stop * width)


def pooling_of(backbone) -> str | None:
    """Which of POOLINGS a backbone ends in, from its last layer (None: none of them)."""
    from keras import layers

    last = backbone.layers[-1]
    if isinstance(last, layers.GlobalAveragePooling2D):
        return "avg"
    if isinstance(last, layers.GlobalMaxPooling2D):
        return "max"
    if isinstance(last, generalized_mean_layer()):
        return "gem"
    if isinstance(last, layers.Concatenate) and last.name == "pooling_avgmax":
        return "avgmax"
    return None
