"""The run folder's core, written whole or not at all: the model and everything that says what
it is, how it was trained and how it scored (trainer.runfolder names each file). The diagnostics
(trainer.diagnostics) add to it afterwards."""

from __future__ import annotations

import io
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer import decision, device, memory, runfolder
from trainer.atomic import partial_folder, write_atomically
from trainer.config import TrainConfig, save_config
from trainer.data.corrections import format_corrections
from trainer.data.rows import SPLITS
from trainer.data.split import write_split
from trainer.errors import MachineError, os_error_sentence
from trainer.fingerprint import stack
from trainer.metrics import write_metrics

log = logging.getLogger("trainer")


@dataclass
class Decided:
    """What the run decided, beside what it was asked (config.json): decided.json."""

    backbone: str  # the backbone trained: --backbone, or what --backbone auto chose
    weights: str  # the weights used: imagenet, none, or a file
    labels: list[str]  # the classes, in the model's output order
    folder_resolved: str  # the image folder, resolved
    backbone_ranking: list[dict] | None = None  # --backbone auto: the candidates, best first
    fine_tune: dict | None = None  # --fine-tune-layers: the validation loss before and after, kept or not
    decision: str | None = None  # --target-recall: the rule (decision.json holds its record)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        values = asdict(self)
        values.update(values.pop("extra"))
        return {key: value for key, value in values.items() if value is not None}


def join_history(phases: dict) -> list[dict]:
    """history.csv's rows: each phase's epochs in turn (phases: name -> trainer.fit.loop.Phase)."""
    rows = []
    for phase, result in phases.items():
        keys = list(result.history)
        for index in range(len(result.history[keys[0]]) if keys else 0):
            rows.append({"phase": phase, "epoch": index + 1, **{key: result.history[key][index] for key in keys}})
    return rows


def manifest(data, policy, decided: Decided, cache: dict | None, seconds: float, phases: dict) -> dict:
    """manifest.json's core: versions, hardware, the device's policy, the data's fingerprint and
    counts, the mode and what the feature cache did, the training time and any resumption."""
    onednn, onednn_reason = device.onednn()
    return {
        "versions": stack(),
        "hardware": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "devices": [f"{d.kind}:{d.name}" if d.name else d.kind for d in device.visible_devices()],
        },
        "policy": {
            "strategy": policy.strategy,
            "replicas": policy.replicas,
            "mixed_precision": policy.mixed_precision,
            "xla": policy.xla,
            "reasons": policy.reasons,
            "onednn": onednn,
            "onednn_reason": onednn_reason,
        },
        "data": {
            "fingerprint": data.fingerprint(),
            "images": {name: len(data.parts[name]) for name in SPLITS},
            "hashes": "split.csv lists every image's SHA-256",
            # The decisions in force: how many were relabelled and dropped, per class (corrections.csv holds them)
            "corrections": None
            if data.corrections is None
            else {key: value for key, value in data.corrections.items() if key != "in_force"},
        },
        "memory": None if memory.tightest() is None else memory.tightest().to_dict(),
        "weights_used": decided.weights,
        # bottleneck: the head on cached features (then fine-tuning, if asked); whole: no
        # pretrained weights, the whole network on images.
        "mode": "whole" if cache is None else "bottleneck",
        "feature_cache_key": None if cache is None else cache["key"],
        "feature_cache": cache,
        "training_seconds": round(seconds, 2),
        "resumed_from_epoch": {name: phase.resumed_from for name, phase in phases.items() if phase.resumed_from},
    }


def write_run(run_dir: Path, config: TrainConfig, decided: Decided, model, data, results: tuple, history: list[dict],
              run_manifest: dict, operating: tuple = (None, None)) -> None:  # fmt: skip
    """The run folder's core, under a hidden partial name renamed into place: results, the
    metrics and probabilities by split; operating, the decision rule and its record
    (decision.json), with --target-recall."""
    metrics, probabilities = results
    rule, point = operating
    try:
        with partial_folder(run_dir) as partial:
            if point is not None:
                decision.write(partial, point)
            (partial / runfolder.MODEL).write_bytes(model_bytes(model))
            runfolder.write_labels(partial / runfolder.LABELS, data.labels)
            save_config(config, partial / runfolder.CONFIG)
            runfolder.write_json(partial / runfolder.DECIDED, decided.to_dict())
            write_split(data.parts, partial / runfolder.SPLIT)
            if data.corrections:
                write_atomically(partial / runfolder.CORRECTIONS, format_corrections(data.corrections["in_force"]))
            runfolder.write_history(partial / runfolder.HISTORY, history)
            runfolder.write_json(partial / runfolder.MANIFEST, run_manifest)
            write_metrics(
                {
                    **metrics["test"],
                    **{name: metrics[name] for name in ("validation", "train") if name in metrics},
                    "epochs_run": {row["phase"]: row["epoch"] for row in history},
                    "training_seconds": run_manifest["training_seconds"],
                    "data": data.report.to_dict(),
                },
                partial / runfolder.METRICS,
            )
            runfolder.write_predictions(
                partial / runfolder.PREDICTIONS,
                data.labels,
                {
                    name: (data.paths(name), [row.label for row in data.parts[name]], p)
                    for name, p in probabilities.items()
                },  # fmt: skip
                None if rule is None else rule.predict,
            )
            try:
                write_tensorboard(history, partial / "logs")
            except OSError as error:  # the logs are worth less than the model they describe
                shutil.rmtree(partial / "logs", ignore_errors=True)
                log.warning("WARNING: no TensorBoard logs (%s)", os_error_sentence(error, partial / "logs"))
    except OSError as error:
        # Nothing of the run folder is left (partial_folder removed it); the workspace keeps the
        # features and the checkpoints, so the rerun does not train again.
        raise MachineError(os_error_sentence(error, run_dir, where="--output or --runs-dir")) from None


def model_bytes(model) -> bytes:
    """The model in Keras's .keras format, made in memory: the file is then one plain write, and
    its weights never go to disk through h5py, which crashes the process (a segmentation fault)
    when a write fails with the disk full."""
    try:
        from keras.src.saving import saving_lib
    except ImportError:  # a Keras that moved it: through a temporary file, as Keras saves
        with tempfile.TemporaryDirectory() as scratch:
            model.save(Path(scratch) / "model.keras")
            return (Path(scratch) / "model.keras").read_bytes()
    buffer = io.BytesIO()
    saving_lib.save_model(model, buffer)
    return buffer.getvalue()


def write_tensorboard(history: list[dict], folder: Path) -> None:
    """TensorBoard scalars from the history, laid out as Keras's callback lays them out
    (logs/train, logs/validation, epoch_loss and epoch_accuracy): `tensorboard --logdir RUN/logs`.
    Written with TensorFlow's own summary op and the scalars plugin's metadata, as
    tf.summary.scalar does, but without the tensorboard package, which TensorFlow 2.21 no longer
    installs with it (a runtime without it still gets its logs)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    scalar = summary_pb2.SummaryMetadata()
    scalar.plugin_data.plugin_name = "scalars"
    writers = {"train": "", "validation": "val_"}
    for split, prefix in writers.items():
        writer = tf.summary.create_file_writer(str(folder / split))
        with writer.as_default():
            for step, row in enumerate(history, start=1):
                for metric in ("loss", "accuracy"):
                    if prefix + metric in row:
                        value = tf.constant(float(row[prefix + metric]), dtype=tf.float32)
                        tf.summary.write(f"epoch_{metric}", value, step=step, metadata=scalar)
        writer.close()
