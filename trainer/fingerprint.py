"""What a model is trained from, as one record: the data's content, the resolved options, the
pinned stack and the trainer's code. The trainer stores it in the run's manifest.json; `invoke
train` computes it before training (no TensorFlow import, a read of every image file) and
trains nothing when the published model's record is the same.

A Colab runtime reset wipes everything but Drive, and GPU quota is scarce: rerunning the
notebook must not retrain an identical model.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from trainer.atomic import sha256_of
from trainer.config import TrainConfig
from trainer.config import options as config_options

# Options that say where things go, not what is trained.
# The packages whose versions change the model or its exports.
STACK = ("tensorflow", "keras", "numpy", "pillow", "protobuf", "onnx", "tf2onnx", "onnxruntime")
CODE = Path(__file__).resolve().parent


def data_digest(config: TrainConfig) -> str:
    """Every row as listed (path as written, label) with its file's content hash, in order; a
    missing or unreadable file counts as such, so fixing it changes the digest."""
    from trainer.data import load_rows

    rows, _ = load_rows(config.folder, config.file, config.label_folder, config.merge_labels)
    digest = hashlib.sha256()
    for row in rows:
        try:
            content = sha256_of(row.path)
        except OSError:
            content = "unreadable"
        digest.update(json.dumps([row.written, row.label, content]).encode())
    if config.validation_file:
        digest.update(
            b"validation:"
            + data_digest(
                TrainConfig(folder=config.folder, file=config.validation_file, merge_labels=config.merge_labels)
            ).encode()
        )
    return digest.hexdigest()


def code_digest() -> str:
    digest = hashlib.sha256()
    for source in sorted(CODE.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def stack() -> dict[str, str | None]:
    versions = {}
    for name in STACK:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def training_request(config: TrainConfig) -> dict:
    """{"data", "options", "stack", "code"}: each part compared on its own, so that a rerun can
    say what changed."""
    return {"data": data_digest(config), "options": compared_options(config), "stack": stack(), "code": code_digest()}


def compared_options(config: TrainConfig) -> dict:
    """The options that make the model: every one but the places (trainer/config.py)."""
    from trainer.features import weights_identity

    options = {option.name: getattr(config, option.name) for option in config_options() if not option.metadata["place"]}
    if options["weights"] not in ("auto", "imagenet", "none"):
        options["weights"] = weights_identity(options["weights"])  # the file's content, not its path
    return options


def request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]


def what_changed(old: dict | None, new: dict) -> list[str]:
    """Short reasons a model trained from `old` is not the one `new` asks for."""
    if not old:
        return ["no record of what the published model was trained from"]
    reasons = []
    if old.get("data") != new["data"]:
        reasons.append("the data changed")
    before, after = old.get("options") or {}, new["options"]
    changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    reasons += [f"--{key.replace('_', '-')} {before.get(key)!r} -> {after.get(key)!r}" for key in changed]
    moved = sorted(name for name in new["stack"] if (old.get("stack") or {}).get(name) != new["stack"][name])
    reasons += [f"{name} {(old.get('stack') or {}).get(name)} -> {new['stack'][name]}" for name in moved]
    if old.get("code") != new["code"]:
        reasons.append("the trainer's code changed")
    return reasons
