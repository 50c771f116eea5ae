"""check: a report of the machine. Reads only; never imports TensorFlow or google.colab."""

from __future__ import annotations

import os
import platform
import re
import shutil
from importlib import metadata
from pathlib import Path

from scripts.steps import Context, Result, StepFailed, ok, read

DRIVE_MOUNT = Path("/content/drive")

GPU_ADVICE = (
    "in Colab choose Runtime > Change runtime type > a GPU (T4 or better), save, "
    "then rerun the cell; elsewhere install the NVIDIA driver"
)


def in_colab(environ: dict | None = None) -> bool:
    """Colab's kernel sets COLAB_* variables (COLAB_RELEASE_TAG, COLAB_GPU, ...)."""
    environ = os.environ if environ is None else environ
    return any(key.startswith("COLAB_") for key in environ) or Path("/opt/colab").is_dir()


def drive_folder(mount: Path = DRIVE_MOUNT) -> Path | None:
    """The mounted Drive's own folder (MyDrive), or None when Drive is not mounted."""
    my_drive = mount / "MyDrive"
    return my_drive if my_drive.is_dir() else None


def gpus() -> list[dict]:
    out = read(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if not out:
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3:
            found.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return found


def cuda_version() -> str | None:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    out = read([nvcc, "--version"]) if nvcc else None
    match = re.search(r"release ([\d.]+)", out or "")
    return match.group(1) if match else None


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_report() -> dict:
    return {
        "os": _os_name(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "gpus": gpus(),
        "cuda": cuda_version(),
        "tensorflow": installed_version("tensorflow"),
        "colab": in_colab(),
        "drive_mounted": drive_folder() is not None,
    }


def describe(report: dict) -> str:
    gpu = ", ".join(f"{g['name']} ({g['memory']}, driver {g['driver']})" for g in report["gpus"]) or "no GPU"
    return (
        f"{report['os']}, {report['cpu_count']} CPUs, {report['memory_gib']} GiB, Python {report['python']}, "
        f"{gpu}, CUDA {report['cuda'] or 'none'}, TensorFlow {report['tensorflow'] or 'not installed'}, "
        f"{'Colab' if report['colab'] else 'not Colab'}, Drive {'mounted' if report['drive_mounted'] else 'not mounted'}"
    )


def check(ctx: Context, require_gpu: bool = False) -> Result:
    report = machine_report()
    if require_gpu and not report["gpus"]:
        raise StepFailed("no GPU on this machine (nvidia-smi found none)", GPU_ADVICE)
    return ok(describe(report))
