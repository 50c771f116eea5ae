"""The trainer's options: one dataclass, commented defaults, checked before any work starts.

The defaults suit a Colab GPU (a T4 with 15 GB): ResNet-v2-50 is what the original ML.NET app
trained, 224 pixels is the size its ImageNet weights were trained at, and a batch of 32 keeps a
frozen ResNet-50 far inside the T4's memory. On a CPU, `--backbone tiny --image-size 64` trains
in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import InputError


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
    backbone: str = "resnet50_v2"  # see trainer.model.BACKBONES
    weights: str = "auto"  # auto | imagenet | none | path to a weights file
    image_size: int = 224  # pixels, square
    dropout: float = 0.2  # before the classification layer
    # Training
    epochs: int = 50  # upper bound; early stopping usually ends sooner
    batch_size: int = 32
    learning_rate: float = 1e-3  # Adam
    patience: int = 5  # epochs without a better validation loss before stopping
    cache_megabytes: int = 2048  # decoded images are kept in memory up to this size
    # Output
    output: str | None = None  # run folder; default runs/<time>-<backbone>
    runs_dir: str = "runs"
    model_name: str = "ud-cd-classifier"  # the model is also saved as <model_name>.keras

    def check(self) -> TrainConfig:
        """Raise InputError naming the first option that is out of range."""
        from trainer.model import BACKBONES  # the registry imports TensorFlow lazily

        def need(ok: bool, option: str, what: str, value: object) -> None:
            if not ok:
                raise InputError(f"--{option.replace('_', '-')} must be {what} (got {value!r})")

        need(self.backbone in BACKBONES, "backbone", "one of " + ", ".join(BACKBONES), self.backbone)
        need(32 <= self.image_size <= 1024, "image_size", "between 32 and 1024", self.image_size)
        spec = BACKBONES[self.backbone]
        need(
            self.image_size >= spec.min_size,
            "image_size",
            f"at least {spec.min_size} for {self.backbone}",
            self.image_size,
        )
        if self.weights == "imagenet" and spec.application is None:
            raise InputError(
                f"--weights imagenet: backbone {self.backbone} has no ImageNet weights; use none or a file"
            )
        need(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        need(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        need(self.learning_rate > 0, "learning_rate", "positive", self.learning_rate)
        need(self.patience >= 0, "patience", "0 or more", self.patience)
        need(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        need(self.cache_megabytes >= 0, "cache_megabytes", "0 or more", self.cache_megabytes)
        for option in ("validation_fraction", "test_fraction"):
            value = getattr(self, option)
            need(0 < value < 0.5, option, "between 0 and 0.5", value)
        need(bool(self.model_name.strip()) and "/" not in self.model_name, "model_name", "a file name", self.model_name)
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
