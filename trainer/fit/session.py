"""What every phase of a run shares, decided once: the options, the device's policy (mixed
precision, XLA, the distribution strategy), the global batch size, class weights, and where
checkpoints go."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainer import device
from trainer.config import TrainConfig
from trainer.fit.loop import Phase, class_weights, compile_and_fit

log = logging.getLogger("trainer")


@dataclass
class Session:
    config: TrainConfig
    strategy: object
    policy: device.Policy
    onednn: bool
    batch_size: int  # global: per replica times replicas
    jit_compile: bool  # XLA for Keras's training step; Keras turns it off under a strategy
    workspace: Path
    checkpoint_root: Path
    class_weights: dict[int, float] | None

    def fit(self, model, datasets: dict, *, phase: str, epochs: int, images: int, learning_rate=None,
            early_stopping: bool = True) -> Phase:  # fmt: skip
        """One phase (trainer.fit.loop.compile_and_fit) with this session's strategy, batch size,
        class weights and checkpoints."""
        steps = math.ceil(images / self.batch_size)
        return compile_and_fit(
            model,
            self.strategy,
            self.config,
            datasets,
            phase=phase,
            epochs=epochs,
            steps=steps,
            checkpoint_root=self.checkpoint_root,
            weights=self.class_weights,
            jit_compile=self.jit_compile,
            learning_rate=learning_rate,
            early_stopping=early_stopping,
        )

    @property
    def featurize_batch_size(self) -> int:
        return device.featurize_batch_size(self.batch_size, device.visible_devices(), self.onednn)


def start_session(config: TrainConfig, data, workspace: Path, options: dict) -> Session:
    """Seeds, determinism, the GPU policy and the distribution strategy, decided once for `data`
    (trainer.data.load.Data); `options`, the request's compared options, and the data's
    fingerprint key the checkpoints."""
    import keras
    import tensorflow as tf

    workers = device.workers_from_tf_config()
    # Collective ops must be configured before TensorFlow runs anything else.
    multi_worker = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else None
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = device.decide(device.visible_devices(), config.mixed_precision, config.xla, workers)
    onednn, onednn_reason = device.onednn()
    log.info("%s; %s", policy.describe(), onednn_reason)
    if policy.mixed_precision:
        keras.mixed_precision.set_global_policy(policy.mixed_precision)
    tf.config.optimizer.set_jit(policy.xla)
    checkpoint_root = workspace / "checkpoints" / resume_key(options, data.fingerprint())
    if not device.is_chief():
        kind, index = device.task()
        checkpoint_root = checkpoint_root.with_name(f"{checkpoint_root.name}-{kind}{index}")
    checkpoint_root = claim(checkpoint_root)
    return Session(
        config,
        multi_worker or device.make_strategy(policy),
        policy,
        onednn,
        device.global_batch_size(config.batch_size, policy),
        policy.xla and policy.replicas == 1,
        workspace,
        checkpoint_root,
        class_weights(config, data.y("train"), len(data.labels)),
    )


def resume_key(options: dict, fingerprint: str) -> str:
    """The same command on the same data gives the same key, wherever its files are: the
    request's compared options (no places; a weights file by its content) but --export, which
    does not change training."""
    kept = {name: value for name, value in options.items() if name != "export"}
    return hashlib.sha256(json.dumps([kept, fingerprint], sort_keys=True, default=str).encode()).hexdigest()[:16]


_claimed: dict[str, int] = {}  # lock file -> open descriptor, for the life of this process


def claim(folder: Path) -> Path:
    """`folder` for this process's checkpoints, held with an exclusive flock; when another live
    run holds it (the same command on the same data, started twice in one workspace), this run
    takes FOLDER-PID instead, so that it never resumes from a checkpoint the other is writing.
    The lock file is in the system's temporary folder (the workspace may be on Drive, whose FUSE
    mount does not promise flock), so it guards runs on this machine; the kernel drops it with
    its process, however that ends."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"trainer-checkpoints-{digest}.lock"
    if str(path) in _claimed:
        return folder
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        own = folder.with_name(f"{folder.name}-{os.getpid()}")
        log.warning("WARNING: another run (pid %s) is training the same data with the same options in this "
                    "workspace; this one keeps its checkpoints apart (%s) and does not resume from that run's",
                    holder, own.name)  # fmt: skip
        return own
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    _claimed[str(path)] = descriptor
    return folder
