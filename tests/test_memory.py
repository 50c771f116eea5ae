"""trainer/memory.py: the memory the machine lets a run take, from every place that limits it
(cgroup v2 and v1 up the hierarchy, MemAvailable, RLIMIT_AS), the smallest winning; and a run
the kernel kills for memory, named as such by `invoke train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import INVOKE, ROOT, bundle_copy
from trainer import memory

CGROUP_V1 = """12:pids:/user.slice
4:memory:/outer/inner
0::/outer/inner
"""
MOUNTINFO = """35 31 0:32 / {v1} rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / {v2} rw,relatime - cgroup2 cgroup2 rw
"""


def _hierarchy(tmp_path: Path, files: dict[str, str]) -> tuple[str, str]:
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    return CGROUP_V1, MOUNTINFO.format(v1=tmp_path / "v1", v2=tmp_path / "v2")


def test_the_v1_limit_is_the_tightest_up_the_hierarchy(tmp_path):
    cgroup, mountinfo = _hierarchy(tmp_path, {
        "v1/memory.limit_in_bytes": "9223372036854771712\n",  # the root: no limit
        "v1/outer/memory.limit_in_bytes": str(1500 << 20), "v1/outer/memory.usage_in_bytes": str(500 << 20),
        "v1/outer/inner/memory.limit_in_bytes": str(4000 << 20), "v1/outer/inner/memory.usage_in_bytes": str(100 << 20),
    })  # fmt: skip
    folders = memory.cgroup_folders(cgroup, mountinfo)
    assert folders["v1"] == [tmp_path / "v1/outer/inner", tmp_path / "v1/outer", tmp_path / "v1"]
    limit = memory.cgroup_limit(folders["v1"], "memory.limit_in_bytes", "memory.usage_in_bytes", "cgroup v1")
    assert limit == memory.Limit(1000 << 20, "cgroup v1", 1500 << 20)


def test_the_v2_limit_reads_max_as_none(tmp_path):
    cgroup, mountinfo = _hierarchy(tmp_path, {
        "v2/memory.max": "max\n",
        "v2/outer/memory.max": "max\n",
        "v2/outer/inner/memory.max": str(2 << 30), "v2/outer/inner/memory.current": str(1 << 30),
    })  # fmt: skip
    folders = memory.cgroup_folders(cgroup, mountinfo)
    limit = memory.cgroup_limit(folders["v2"], "memory.max", "memory.current", "cgroup v2")
    assert limit == memory.Limit(1 << 30, "cgroup v2", 2 << 30)
    assert memory.cgroup_limit([tmp_path / "v2"], "memory.max", "memory.current", "cgroup v2") is None


def test_meminfo_and_the_address_space_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    2000000 kB\n")
    assert memory.mem_available(meminfo) == memory.Limit(2_048_000_000, "MemAvailable")
    script = "import resource; from trainer import memory; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); print(memory.tightest().source)"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() in ("RLIMIT_AS", "cgroup v1", "cgroup v2", "MemAvailable")


@pytest.fixture()
def memory_cgroup():
    """make(megabytes) -> a function that moves the calling process into a new cgroup v1 memory
    group with that limit (for preexec_fn); skipped where none can be made."""
    own = next((line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                if "memory" in line.split(":")[1].split(",")), None)  # fmt: skip
    base = Path("/sys/fs/cgroup/memory") / (own or "/").lstrip("/")
    made = []

    def make(megabytes: int):
        group = base / f"trainer-test-{os.getpid()}-{len(made)}"
        try:
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(megabytes << 20))
        except OSError as error:
            pytest.skip(f"cannot make a cgroup v1 memory group here ({error.strerror})")
        made.append(group)
        return lambda: (group / "cgroup.procs").write_text(str(os.getpid()))

    if own is None or not base.is_dir():
        pytest.skip("no cgroup v1 memory hierarchy here")
    yield make
    for group in made:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def test_a_real_v1_limit_is_what_the_trainer_plans_with(memory_cgroup):
    enter = memory_cgroup(1500)
    script = "from trainer import memory; limit = memory.tightest(); print(limit.source, limit.limit_bytes)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            preexec_fn=enter, check=True)  # fmt: skip
    assert result.stdout.split() == ["cgroup", "v1", str(1500 << 20)]


@pytest.mark.slow
def test_a_trainer_the_kernel_kills_for_memory_is_named_with_its_peak_and_what_to_lower(memory_cgroup, demo_dir,
                                                                                      tmp_path):  # fmt: skip
    """invoke and the trainer in a 600 MB group: TensorFlow alone takes more, the kernel's OOM
    killer ends the trainer with SIGKILL, and invoke says what that most likely was."""
    enter = memory_cgroup(600)
    copy = bundle_copy(tmp_path)
    train = [*INVOKE, "train", "--folder", str(demo_dir / "Images"), "--file", "training_data.csv", "--image-size",
             "64", "--no-publish"]  # fmt: skip
    result = subprocess.run(train, cwd=copy, capture_output=True, text=True, preexec_fn=enter, timeout=600,
                            env={**os.environ, "INVOKE_TRAIN_EXTRA": "--export none --no-audit"})  # fmt: skip
    assert result.returncode == 128 + 9, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train: the trainer was killed (signal SIGKILL), most likely for running out of memory")
    assert "this machine allows 0.6 GB (cgroup v1)" in last and "--batch-size 16" in last, last
