#!/usr/bin/env python3
"""The naive Keras way, the baseline for "the whole train": what the Keras transfer-learning
guide does without a feature cache. image_dataset_from_directory, the frozen backbone inside
the model, fit for N epochs, so every epoch runs every image through the backbone again.

    python benchmarks/naive_keras.py FOLDER --backbone NAME --weights FILE --image-size N --epochs N

FOLDER holds one subfolder per class. Prints the validation accuracy. Same backbone, weights,
preprocessing, image size, batch size and split fractions as the trainer's defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras
    from keras import layers

    from trainer.model import build_backbone, preprocessing

    size = (args.image_size, args.image_size)
    common = dict(image_size=size, batch_size=args.batch_size, seed=0, validation_split=0.2, label_mode="int")
    train = keras.utils.image_dataset_from_directory(args.folder, subset="training", **common)
    validation = keras.utils.image_dataset_from_directory(args.folder, subset="validation", **common)
    backbone = build_backbone(args.backbone, args.image_size, args.weights)
    backbone.trainable = False
    inputs = keras.Input((*size, 3))
    x = backbone(preprocessing(args.backbone)(inputs), training=False)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(len(train.class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.001), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train, validation_data=validation, epochs=args.epochs, verbose=0)
    print(f"validation accuracy {history.history['val_accuracy'][-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
