"""Where the model looks: class activation maps, exact for these models.

Every model this trainer makes ends the same way: backbone feature maps A (h x w x K), global
average pooling, an affine standardization (cached-feature heads) and one dense layer. All of it
after the feature maps is linear, so the logit of class c splits over the map's locations:

    logit_c = mean over (x, y) of M_c(x, y) + b_c,    M_c(x, y) = sum_k W_kc * (s_k A_k(x, y) + o_k)

M is the class activation map (CAM, Zhou et al. 2016), and here it is not an approximation: its
mean is the logit. Grad-CAM weights the maps by the pooled gradient of the class score, which for
this architecture is W_kc s_k / (h w): the same map up to a constant factor, found by
backpropagation instead of read from the weights. What is drawn is the evidence for class c
against the average class, M_c - mean over classes of M: a softmax ignores what all classes share,
so this is each location's share of the log-probability ratio. Its positive part is the heatmap.

That holds for average pooling, the default; a maximum or a generalized mean is not linear in
the map, so a model pooled otherwise (--pooling) has no such maps: `explain` says so in one line,
and the heatmaps diagnostic is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.atomic import replacing
from trainer.data.images import load_image
from trainer.diagnostics.pictures import Cell, captioned, contact_sheet
from trainer.errors import InputError
from trainer.pooling import NAMES, pooling_of


@dataclass
class Maps:
    """For n images: probabilities [n, classes], the logit maps [n, h, w, classes] (their mean
    over h and w plus `bias` is the logits) and the bias [classes]."""

    probabilities: np.ndarray
    logits: np.ndarray
    bias: np.ndarray

    def evidence(self, index: int, label: int) -> np.ndarray:
        """[h, w]: each location's evidence for `label` against the average class, at least 0."""
        maps = self.logits[index]
        return np.maximum(maps[..., label] - maps.mean(axis=-1), 0.0)


class ClassMaps:
    """Splits a trained model (pixels -> probabilities) at its backbone's pooling layer."""

    def __init__(self, model):
        import keras

        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        nested = [i for i, layer in enumerate(layers) if isinstance(layer, keras.Model)]
        if len(nested) != 1:
            raise InputError(f"{model.name}: expected one backbone inside the model, found {len(nested)}")
        backbone = layers[nested[0]]
        pool = backbone.layers[-1]
        pooling = pooling_of(backbone)
        if pooling != "avg":
            ending = NAMES[pooling] + " pooling" if pooling else type(pool).__name__
            raise InputError(f"{backbone.name}: ends in {ending}; class maps need average pooling (--pooling avg)")
        self.before = layers[: nested[0]]  # preprocessing
        self.feature_maps = keras.Model(backbone.inputs, pool.input)
        self.scale, self.offset = 1.0, 0.0
        for layer in layers[nested[0] + 1 :]:
            if isinstance(layer, keras.layers.Rescaling):
                self.scale, self.offset = np.asarray(layer.scale), np.asarray(layer.offset)
            elif isinstance(layer, keras.layers.Dense):
                self.kernel, self.bias = (np.asarray(weight, dtype=np.float64) for weight in layer.get_weights())
            elif not isinstance(layer, keras.layers.Dropout):
                raise InputError(
                    f"{model.name}: {layer.name} ({type(layer).__name__}) after the backbone is not linear"
                )
        self.model = model

    def __call__(self, pixels: np.ndarray) -> Maps:
        """pixels: float32 [n, size, size, 3], 0-255, as the model takes them."""
        x = pixels
        for layer in self.before:
            x = layer(x)
        features = np.asarray(self.feature_maps(x, training=False), dtype=np.float64)
        standardized = features * self.scale + self.offset
        logits = standardized @ self.kernel  # [n, h, w, classes]; the mean over h, w plus bias is the logit
        probabilities = np.asarray(self.model(pixels, training=False), dtype=np.float64)
        return Maps(probabilities, logits, self.bias)


def upsampled(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A coarse map resized to (width, height) bilinearly, as float32."""
    from PIL import Image

    return np.asarray(Image.fromarray(heat.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))


def overlay(photo, heat: np.ndarray, strength: float = 0.55):
    """The photo (a PIL image) with the heatmap over it: transparent where there is no evidence,
    the inferno colours where there is most."""
    from matplotlib import colormaps
    from PIL import Image

    fine = upsampled(heat, photo.size)
    top = fine.max()
    level = fine / top if top > 0 else fine
    colours = colormaps["inferno"](level)[..., :3] * 255
    alpha = (strength * np.sqrt(level))[..., None]
    base = np.asarray(photo.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - alpha) + colours * alpha).astype(np.uint8))


def explain_images(run, paths: list[Path], output: Path) -> list[dict]:
    """For each image: the predicted class, its probability and `output/<name>.heatmap.png`
    (the photo, and over it the evidence for the predicted class)."""
    from PIL import Image, ImageOps

    if run.model is None:
        raise InputError(f"--model: {run.path} is not a Keras model; explain needs the run folder or its .keras file")
    maps_of = ClassMaps(run.model)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        pixels = load_image(path, run.image_size)[None].astype(np.float32)
        maps = maps_of(pixels)
        predicted = int(maps.probabilities[0].argmax())
        with Image.open(path) as image:
            photo = ImageOps.exif_transpose(image).convert("RGB")
        target = output / f"{Path(path).stem}.heatmap.png"
        score = float(maps.probabilities[0, predicted])
        caption = [Path(path).name, f"predicted {run.labels[predicted]} {score:.2f}; bright: the evidence for it"]
        with replacing(target, suffix=".png") as temporary:
            captioned(overlay(photo, maps.evidence(0, predicted)), caption).save(temporary, format="PNG")
        results.append(
            {"path": str(path), "predicted": run.labels[predicted], "score": float(maps.probabilities[0, predicted]),
             "heatmap": str(target)}
        )  # fmt: skip
    return results


def heatmap_sheet(model, predictions: list[dict], labels: list[str], image_size: int, path: Path,
                  worst: int = 8, per_class: int = 2) -> Path:  # fmt: skip
    """The run's heatmaps.png: the `worst` test images (lowest probability for their label) and
    the `per_class` most confident correct ones of each class, each with the evidence for the
    class the model predicted over it."""
    from PIL import Image, ImageOps

    ranked = sorted(predictions, key=lambda p: p["true_probability"])
    chosen = ranked[:worst]
    for label in labels:
        right = [p for p in reversed(ranked) if p["label"] == label == p["predicted"] and p not in chosen]
        chosen += right[:per_class]
    maps_of = ClassMaps(model)

    def photo(item):
        pixels = load_image(item["path"], image_size)[None].astype(np.float32)
        maps = maps_of(pixels)
        with Image.open(item["path"]) as image:
            original = ImageOps.exif_transpose(image).convert("RGB")
        return overlay(original, maps.evidence(0, labels.index(item["predicted"])))

    cells = [
        Cell(
            (Path(item["path"]).name, f"true {item['label']}", f"predicted {item['predicted']} {item['score']:.2f}"),
            "firebrick" if item["label"] != item["predicted"] else "black",
            lambda item=item: photo(item),
        )
        for item in chosen
    ]
    subtitle = f"the {worst} worst test images, then the surest right ones; bright: evidence for the predicted class"
    return contact_sheet(cells, path, "where the model looks (class activation maps)", subtitle)
