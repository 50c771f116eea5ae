"""The Colab rehearsal: `colab.ipynb` as shipped, run by a real Jupyter kernel on Python 3.13
with Colab's package versions, a stand-in `google.colab.drive`, the bundle and Images.zip on a
stand-in Drive, then a runtime reset, a changed option and a failing step
(tests/colab_rehearsal.py drives it).

It runs in a private mount namespace (`unshare -m`, root only): /content is a fresh tmpfs,
/usr/local an empty folder and /etc an overlay, so neither the fake Drive nor the C library the
notebook installs and registers is seen by any other process, and nothing is left behind (an
empty /content made as the mount point is removed). The apt step is the exception: Debian's
packages go to /usr, as on any machine where `invoke setup` runs (CI's main job installs them
first). The Python 3.13
environment is built once under /tmp and kept (as a restarted Colab runtime keeps its packages),
rebuilt when colab/constraints.txt changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CONCRETE, IN_CI, ROOT

PYTHON = ["env", "PYENV_VERSION=3.13.0", "python3.13"]
ENVIRONMENT = Path("/tmp/colab-rehearsal-venv")
# Colab's versions of what the bundle and the notebook touch (the versions come from the
# constraints), and the Jupyter pieces that run the notebook.
PREINSTALLED = [
    "tensorflow", "keras", "numpy", "pillow", "matplotlib", "tqdm", "pandas", "gdown", "protobuf",
    "scikit-learn", "h5py", "ml_dtypes", "requests", "ipython", "ipykernel", "nbclient", "nbformat",
    "jupyter_client", "matplotlib-inline",
]  # fmt: skip
# The trainer runs with its defaults (EfficientNet-Lite0 on ImageNet features fits a CPU), as a
# user gets it; the third run changes one option.
TRAINER: dict[str, str] = {}
CHANGED = {"INVOKE_TRAIN_EPOCHS": "40"}

pytestmark = [pytest.mark.slow, pytest.mark.colab]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"the Colab rehearsal cannot run: {reason}")
    pytest.skip(reason)


def _freeze(environment: Path) -> dict[str, str]:
    out = subprocess.run(
        [environment / "bin" / "python", "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("==", 1) for line in out.splitlines() if "==" in line)


def colab_environment() -> Path:
    """A Python 3.13 virtual environment with Colab's versions preinstalled. It is built once and
    kept while the constraints and the package list are the same; what an earlier rehearsal
    installed into it (invoke, onnx, ...) is uninstalled first, so each rehearsal starts from
    Colab's package set, and anything else that moved means a rebuild."""
    constraints = ROOT / "colab" / "constraints.txt"
    stamp = hashlib.sha256(constraints.read_bytes() + json.dumps(PREINSTALLED).encode()).hexdigest()
    marker = ENVIRONMENT / "rehearsal.json"
    if marker.is_file() and json.loads(marker.read_text()).get("stamp") == stamp:
        baseline, now = json.loads(marker.read_text())["freeze"], _freeze(ENVIRONMENT)
        added = sorted(set(now) - set(baseline))
        if added:
            subprocess.run([ENVIRONMENT / "bin" / "python", "-m", "pip", "uninstall", "-q", "-y", *added], check=True)
        if _freeze(ENVIRONMENT) == baseline:
            return ENVIRONMENT
    shutil.rmtree(ENVIRONMENT, ignore_errors=True)
    subprocess.run([*PYTHON, "-m", "venv", ENVIRONMENT], check=True)
    pip = [ENVIRONMENT / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "--constraint", constraints, *PREINSTALLED], check=True)
    marker.write_text(json.dumps({"stamp": stamp, "freeze": _freeze(ENVIRONMENT)}))
    return ENVIRONMENT


def rehearse(environment: Path, out: Path) -> dict:
    overlays = out / "overlays"
    for name in ("usr-local", "etc-upper", "etc-work"):
        (overlays / name).mkdir(parents=True)
    # /usr/local starts empty, as on a fresh Colab runtime (the rehearsal's Python is elsewhere),
    # so the C library is installed there and registered with ldconfig, whose cache is in /etc.
    script = f"""set -e
mount -t tmpfs -o size=8g,mode=755 tmpfs /content
mount --bind {overlays}/usr-local /usr/local
mount -t overlay overlay -o lowerdir=/etc,upperdir={overlays}/etc-upper,workdir={overlays}/etc-work /etc
cd /content
exec "$@"
"""
    stand_in = ROOT / "tests" / "colab_stand_in"
    command = ["unshare", "-m", "--propagation", "private", "bash", "-c", script, "rehearsal"]
    command += [environment / "bin" / "python", ROOT / "tests" / "colab_rehearsal.py", ROOT, CONCRETE, out]
    command += [json.dumps(TRAINER), json.dumps(CHANGED)]
    created = not Path("/content").exists()
    if created:
        Path("/content").mkdir()
    try:
        env = {**os.environ, "PYTHONPATH": str(stand_in)}
        env.pop("TRAINER_CI", None)
        result = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env, timeout=3600)
    finally:
        if created:
            Path("/content").rmdir()
    (out / "driver.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return json.loads((out / "summary.json").read_text())


def _outputs(run: dict) -> str:
    return "".join(cell["output"] + "".join(cell["errors"]) for cell in run["cells"])


def test_the_notebook_on_a_colab_like_runtime(tmp_path):
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        _unavailable("needs root for a private mount namespace")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        _unavailable("unshare -m does not work here")
    if subprocess.run([*PYTHON, "--version"], capture_output=True).returncode != 0:
        _unavailable("no Python 3.13 (PYENV_VERSION=3.13.0 python3.13)")
    if not CONCRETE.is_dir():
        _unavailable(f"{CONCRETE} is not here")
    summary = rehearse(colab_environment(), tmp_path)
    first, after_reset, changed, failing = summary["runs"]
    print(json.dumps({"python": summary["python"], "installed": summary["installed"]}, indent=2))
    for run in summary["runs"]:
        print(f"--- {run['name']}: {run['error'] or 'every cell ran'}")
        for step in run["setup"] or []:
            print(f"{step['name']:<14} {step['status']:<8} {step['seconds']:>7.2f}  {step['detail']}")
        print(
            "\n".join(line for line in _outputs(run).splitlines() if line.startswith(("train:", "publish:", "test:")))
        )

    assert summary["python"].startswith("3.13.")
    # Nothing Colab preinstalls moved; what pins added is what Colab lacks (and their own needs).
    assert summary["preinstalled_moved"] == {}
    assert {"invoke", "onnx", "tf2onnx", "onnxruntime"} <= set(summary["installed"])

    # The first run: every cell ran, the model and report landed where the README says, from the
    # 400 photos of the zip.
    assert first["error"] is None, _outputs(first)
    steps = {step["name"]: step["status"] for step in first["setup"]}
    assert steps["check"] == "ok" and steps["apt"] in ("ok", "changed")
    assert [steps[name] for name in ("pins", "libtensorflow", "data", "stage")] == ["changed"] * 4
    assert "TF_Version() = 2.20.0" in next(step["detail"] for step in first["setup"] if step["name"] == "libtensorflow")
    assert ", Colab, Drive mounted" in next(step["detail"] for step in first["setup"] if step["name"] == "check")
    published = first["published"]
    assert {"model.keras", "report.html", "metrics.json", "published.json"} <= set(published)
    assert summary["images_in_zip"] == 400 and first["images_used"] == 400
    assert first["previous"] is None

    # After a reset: only the missing work, no training, the published model byte for byte.
    assert after_reset["error"] is None, _outputs(after_reset)
    reset_steps = {step["name"]: (step["status"], step["detail"]) for step in after_reset["setup"]}
    assert reset_steps["pins"][0] == "ok" and reset_steps["data"][0] == "changed"  # /content/bundle/data went
    # The library in /usr/local is kept (as the environment is); the env file in the bundle is rewritten.
    assert reset_steps["libtensorflow"] == ("changed", "wrote /content/bundle/libtensorflow.env")
    assert "train: ok (the model in /content/drive/MyDrive/ud-cd-classifier was trained" in _outputs(after_reset)
    assert after_reset["runs"] == []
    assert after_reset["published"] == published

    # One option changed: it retrains, publishes, and keeps the first model as .previous.
    assert changed["error"] is None, _outputs(changed)
    assert "train: training, since --epochs 50 -> 40" in _outputs(changed)
    assert changed["previous"] == published and changed["published"] != published

    # A failing step fails its cell, so "Run all" stops there.
    assert failing["error"] is not None and "invoke setup train failed (exit code 1)" in failing["error"]
    assert "setup failed at data: --source: /content/drive/MyDrive/Imagse.zip does not exist" in _outputs(failing)
