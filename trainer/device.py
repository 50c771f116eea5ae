"""Hardware decisions, kept apart from TensorFlow so that they are plain functions to test:
mixed precision, XLA, oneDNN, and the tf.distribute strategy with the batch size it implies.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field

from trainer.errors import InputError


@dataclass(frozen=True)
class Device:
    kind: str  # "CPU", "GPU" or "TPU"
    name: str = ""
    compute_capability: tuple[int, int] | None = None  # GPUs only


@dataclass(frozen=True)
class Policy:
    mixed_precision: str | None  # None, "mixed_float16" or "mixed_bfloat16"
    xla: bool
    strategy: str  # "default", "mirrored", "tpu" or "multi_worker"
    replicas: int
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"strategy {self.strategy} ({self.replicas} replica{'s' if self.replicas != 1 else ''}), "
            f"mixed precision {self.mixed_precision or 'off'}, XLA {'on' if self.xla else 'off'}: "
            + "; ".join(self.reasons)
        )


def workers_from_tf_config(environ: dict | None = None) -> int:
    """How many workers TF_CONFIG names (0 when it is unset). A malformed TF_CONFIG is an error."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        return 0
    try:
        cluster = json.loads(text)["cluster"]
    except (ValueError, KeyError, TypeError):
        raise InputError(
            "TF_CONFIG is not JSON with a 'cluster' entry; see tf.distribute's multi-worker guide"
        ) from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def decide(devices: list[Device], mixed_precision: str = "auto", xla: str = "auto", workers: int = 0) -> Policy:
    """Choose from the hardware, then apply the user's overrides ("on" / "off"; TrainConfig
    checked their values)."""
    reasons = []
    tpus = [d for d in devices if d.kind == "TPU"]
    gpus = [d for d in devices if d.kind == "GPU"]
    if workers > 1:
        strategy, replicas = "multi_worker", workers
        reasons.append(f"TF_CONFIG names {workers} workers")
    elif tpus:
        strategy, replicas = "tpu", len(tpus)
        reasons.append(f"{len(tpus)} TPU cores")
    elif len(gpus) > 1:
        strategy, replicas = "mirrored", len(gpus)
        reasons.append(f"{len(gpus)} GPUs")
    else:
        strategy, replicas = "default", 1
        reasons.append(f"one device ({gpus[0].name or 'GPU'})" if gpus else "CPU only")

    # Float16 pays where tensor cores exist (compute capability 7.0 and up: V100, T4, A100, L4);
    # on older GPUs and on CPUs it only adds casts. TPUs compute in bfloat16 natively.
    if tpus:
        auto_mixed = "mixed_bfloat16"
    elif gpus and all((d.compute_capability or (0, 0)) >= (7, 0) for d in gpus):
        auto_mixed = "mixed_float16"
    else:
        auto_mixed = None
    if mixed_precision == "auto":
        chosen_mixed = auto_mixed
        reasons.append("mixed precision " + ("for tensor cores" if auto_mixed else "off: no tensor cores"))
    elif mixed_precision == "on":
        chosen_mixed = "mixed_bfloat16" if tpus or not gpus else "mixed_float16"
        reasons.append("mixed precision forced on")
    elif mixed_precision in ("float16", "bfloat16"):
        # Named outright, so that a CPU can run the policy a GPU or TPU would choose.
        chosen_mixed = f"mixed_{mixed_precision}"
        reasons.append(f"mixed precision {mixed_precision} as asked")
    else:
        chosen_mixed = None
        reasons.append("mixed precision forced off")

    # XLA fuses kernels on GPUs; on CPUs its compile time is rarely repaid for small models, and
    # TPUs compile with XLA whatever the setting.
    if xla == "auto":
        chosen_xla = bool(gpus) and not tpus
        reasons.append("XLA " + ("on for the GPU" if chosen_xla else "off: no GPU"))
    else:
        chosen_xla = xla == "on"
        reasons.append(f"XLA forced {xla}")
    return Policy(chosen_mixed, chosen_xla, strategy, replicas, reasons)


def global_batch_size(per_replica: int, policy: Policy) -> int:
    """--batch-size is per device, as on one GPU; a strategy with N replicas feeds N at once."""
    return per_replica * policy.replicas


# Images per featurization call on a CPU, with TensorFlow's oneDNN kernels and without.
# Measured on 2 cores (AVX2) with ResNet-50 v2 at 224 px, images per second by batch size:
#   oneDNN on:  1: 13.7, 16: 22.6, 32: 22.3, 64: 22.4
#   oneDNN off: 1: 16.6, 2: 18.9, 4: 20.2, 8: 19.9, 16: 17.8
# Without oneDNN, a large batch's activations overflow the caches a small one stays in.
CPU_FEATURIZE_BATCH = {True: 16, False: 8}
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def featurize_batch_size(batch_size: int, devices: list[Device], onednn: bool | None = None) -> int:
    """Images per call when featurizing. An accelerator takes the training batch (it wants
    large batches); a CPU the batch measured fastest for its kernels (CPU_FEATURIZE_BATCH)."""
    if any(device.kind in ("GPU", "TPU") for device in devices):
        return batch_size
    return max(1, min(batch_size, CPU_FEATURIZE_BATCH[bool(onednn)]))


def choose_onednn(environ: dict | None = None, machine: str | None = None, imported: bool | None = None):
    """Turn on TensorFlow's oneDNN CPU kernels on x86-64 unless TF_ENABLE_ONEDNN_OPTS says
    otherwise; returns (on, reason), on None where TensorFlow decides. TensorFlow reads the
    variable once, at import, so this runs before it.

    TensorFlow turns oneDNN on by itself only on CPUs with AVX-512 VNNI or BF16 or AMX. On a
    2-core AVX2 CPU it was measured faster with it: a fine-tuning step of ResNet-50 v2 (batch
    32, 224 px) 2.17 s against 3.17 s, featurizing 22.6 images/s against 20.2 at each one's
    best batch size, the tiny backbone's whole `train` on the demo data 33 s against 46 s. One
    image per call is slower with it (13.7 against 16.6 images/s); the trainer batches."""
    environ = os.environ if environ is None else environ
    value = environ.get(ONEDNN_VARIABLE, "").strip()
    if value:
        on = value.lower() in ("1", "true")
        return on, f"oneDNN {'on' if on else 'off'}: {ONEDNN_VARIABLE}={value} was set"
    if imported if imported is not None else "tensorflow" in sys.modules:
        return None, "oneDNN as TensorFlow chose: it was imported before the trainer could choose"
    machine = machine or platform.machine()
    if machine.lower() not in ("x86_64", "amd64"):
        return None, f"oneDNN as TensorFlow chooses on {machine}"
    environ[ONEDNN_VARIABLE] = "1"
    return True, "oneDNN on: faster for batched CPU work (TensorFlow's default only on AVX-512 VNNI/BF16 CPUs)"


_onednn: tuple[bool | None, str] | None = None


def onednn() -> tuple[bool | None, str]:
    """This process's oneDNN choice: made on the first call (before TensorFlow is imported, by
    the command layer), then the same answer."""
    global _onednn
    if _onednn is None:
        _onednn = choose_onednn()
    return _onednn


def visible_devices() -> list[Device]:
    """The devices TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    devices = [Device("CPU")]
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        devices.append(Device("GPU", details.get("device_name", gpu.name), details.get("compute_capability")))
    devices += [Device("TPU", tpu.name) for tpu in tf.config.list_logical_devices("TPU")]
    return devices


def make_strategy(policy: Policy):
    import tensorflow as tf

    if policy.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if policy.strategy == "mirrored":
        return tf.distribute.MirroredStrategy()
    if policy.strategy == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def task(environ: dict | None = None) -> tuple[str, int]:
    """This process's (type, index) in TF_CONFIG; ("worker", 0) without one."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not text:
        return "worker", 0
    entry = json.loads(text).get("task", {})
    return entry.get("type", "worker"), int(entry.get("index", 0))


def is_chief(environ: dict | None = None) -> bool:
    """In a multi-worker run only the chief (the 'chief' task, or worker 0 when there is none)
    writes the run folder."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    kind, index = task(environ)
    if kind == "chief":
        return True
    has_chief = bool(text) and "chief" in json.loads(text).get("cluster", {})
    return kind == "worker" and index == 0 and not has_chief
