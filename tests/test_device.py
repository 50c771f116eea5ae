"""GPU and distribution decisions, as a table: no GPU here, so the logic is tested on its own."""

from __future__ import annotations

import json

import pytest

from trainer.device import Device, decide, global_batch_size, is_chief, workers_from_tf_config
from trainer.errors import InputError

CPU = Device("CPU")
T4 = Device("GPU", "Tesla T4", (7, 5))
K80 = Device("GPU", "Tesla K80", (3, 7))
A100 = Device("GPU", "NVIDIA A100-SXM4-40GB", (8, 0))
TPU = Device("TPU", "TPU_0")


@pytest.mark.parametrize(
    "devices, workers, strategy, replicas, mixed, xla",
    [
        ([CPU], 0, "default", 1, None, False),
        ([CPU, T4], 0, "default", 1, "mixed_float16", True),
        ([CPU, K80], 0, "default", 1, None, True),  # no tensor cores: float16 would only add casts
        ([CPU, A100, A100, A100, A100], 0, "mirrored", 4, "mixed_float16", True),
        ([CPU, T4, K80], 0, "mirrored", 2, None, True),  # mixed only when every GPU gains
        ([CPU] + [TPU] * 8, 0, "tpu", 8, "mixed_bfloat16", False),
        ([CPU], 2, "multi_worker", 2, None, False),
    ],
)
def test_policy_from_hardware(devices, workers, strategy, replicas, mixed, xla):
    policy = decide(devices, workers=workers)
    assert (policy.strategy, policy.replicas, policy.mixed_precision, policy.xla) == (strategy, replicas, mixed, xla)
    assert policy.describe().startswith(f"strategy {strategy} ")


def test_overrides_win():
    assert decide([CPU], mixed_precision="on").mixed_precision == "mixed_bfloat16"
    assert decide([CPU, T4], mixed_precision="off", xla="off").mixed_precision is None
    assert decide([CPU, T4], xla="off").xla is False
    assert decide([CPU], xla="on").xla is True
    assert "mixed precision forced off" in decide([CPU, T4], mixed_precision="off").reasons
    # A policy named outright applies on any device: a CPU runs what a T4 or a TPU would.
    assert decide([CPU], mixed_precision="float16").mixed_precision == "mixed_float16"
    assert decide([CPU, T4], mixed_precision="bfloat16").mixed_precision == "mixed_bfloat16"
    assert decide([CPU, K80], mixed_precision="float16").mixed_precision == "mixed_float16"


def test_batch_size_is_per_replica():
    assert global_batch_size(32, decide([CPU, T4, T4])) == 64
    assert global_batch_size(32, decide([CPU])) == 32


def test_tf_config_workers_and_chief():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    first = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})}
    second = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})}
    assert workers_from_tf_config(first) == 2
    assert workers_from_tf_config({}) == 0
    assert is_chief(first) and not is_chief(second) and is_chief({})
    with_chief = {"cluster": {**cluster, "chief": ["127.0.0.1:3"]}, "task": {"type": "worker", "index": 0}}
    assert not is_chief({"TF_CONFIG": json.dumps(with_chief)})
    with pytest.raises(InputError, match="TF_CONFIG is not JSON with a 'cluster' entry"):
        workers_from_tf_config({"TF_CONFIG": "{not json"})


def test_featurization_batch_is_small_on_a_cpu_and_the_training_batch_on_accelerators():
    from trainer.device import Device, featurize_batch_size

    assert featurize_batch_size(32, [Device("CPU")]) == 8
    assert featurize_batch_size(32, [Device("CPU")], onednn=True) == 16
    assert featurize_batch_size(4, [Device("CPU")]) == 4
    assert featurize_batch_size(4, [Device("CPU")], onednn=True) == 4
    assert featurize_batch_size(64, [Device("CPU"), Device("GPU", "Tesla T4", (7, 5))]) == 64
    assert featurize_batch_size(128, [Device("CPU"), Device("TPU")]) == 128


def test_onednn_is_turned_on_for_x86_cpus_before_tensorflow_is_imported_and_the_user_decides_first():
    from trainer.device import choose_onednn

    environ: dict = {}
    on, reason = choose_onednn(environ, "x86_64", imported=False)
    assert on is True and environ == {"TF_ENABLE_ONEDNN_OPTS": "1"} and "oneDNN on" in reason
    for value, expected in (("0", False), ("false", False), ("1", True), ("TRUE", True)):
        environ = {"TF_ENABLE_ONEDNN_OPTS": value}
        on, reason = choose_onednn(environ, "x86_64", imported=False)
        assert on is expected and environ == {"TF_ENABLE_ONEDNN_OPTS": value}
        assert f"TF_ENABLE_ONEDNN_OPTS={value} was set" in reason
    environ = {}
    assert choose_onednn(environ, "aarch64", imported=False)[0] is None and environ == {}
    # Too late once TensorFlow is imported: the variable would change nothing, so it is not set.
    on, reason = choose_onednn(environ, "x86_64", imported=True)
    assert on is None and environ == {} and "imported before" in reason
