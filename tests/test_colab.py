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

from tests.conftest import CONCRETE, IN_CI, ROOT, bundle_copy

PYTHON = ["env", "PYENV_VERSION=3.13.0", "python3.13"]
# The images rehearsed: today's (the 2026-08 snapshot, colab/constraints.txt as published) and
# the next one, built from it as Colab's first TensorFlow 2.21 image would be (TensorFlow 2.21
# needs protobuf >= 6.31.1 and h5py < 3.15; numpy stays). Each is a version override of the
# snapshot.
IMAGES = {
    "2026-08": {},
    "next-tf2.21": {"tensorflow": "2.21.0", "keras": "3.15.1", "protobuf": "6.33.6", "h5py": "3.14.0"},
}
# Colab's versions of what the bundle and the notebook touch (the versions come from the
# constraints), and the Jupyter pieces that run the notebook.
PREINSTALLED = [
    "tensorflow", "keras", "numpy", "pillow", "matplotlib", "tqdm", "pandas", "gdown", "protobuf",
    "scikit-learn", "h5py", "ml_dtypes", "requests", "ipython", "ipykernel", "nbclient", "nbformat",
    "jupyter_client", "matplotlib-inline",
]  # fmt: skip
# The trainer runs with its defaults (EfficientNet-Lite0 on ImageNet features fits a CPU), as a
# user gets it, but for the export benchmark's timings: every export is still written and checked
# against Keras and the C library, and the README's main job times each format on this stack
# (about 20 s a run here, four runs). The third run changes an option: on the next image,
# fine-tuning, so that the newest stack is held to it too.
TRAINER: dict[str, str] = {"INVOKE_TRAIN_EXPORT_BENCHMARK": "no"}
CHANGED = {
    "2026-08": ({"INVOKE_TRAIN_EPOCHS": "40"}, "--epochs 50 -> 40"),
    # The next image's one run (STORY) trains with these from the start.
    "next-tf2.21": ({"INVOKE_TRAIN_FINE_TUNE_LAYERS": "10", "INVOKE_TRAIN_FINE_TUNE_EPOCHS": "1"}, ""),
}  # fmt: skip

# What each image runs: today's the whole story (first run, a reset and the review's save, a
# changed option, a failing step); the next one what its packages can change: one first run that
# fine-tunes, with every export and the C library. The reset, the review's save, a retrain and a
# failing step are the notebook's and the bundle's, the same on both.
STORY = {"2026-08": "full", "next-tf2.21": "stack"}
# The job cell's NAME on each: a name of the user's, and none (the model named after Images.zip).
NAME = {"2026-08": "cracks-2026", "next-tf2.21": ""}

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


def image_constraints(image: str) -> str:
    """The image's package list as pip constraints: the snapshot with the image's overrides."""
    overrides = {name.lower(): version for name, version in IMAGES[image].items()}
    lines = []
    for line in (ROOT / "colab" / "constraints.txt").read_text().splitlines():
        name = line.split("==", 1)[0].strip().lower() if "==" in line and not line.startswith("#") else None
        lines.append(f"{name}=={overrides[name]}" if name in overrides else line)
    return "\n".join(lines) + "\n"


def colab_environment(image: str = "2026-08") -> Path:
    """A Python 3.13 virtual environment with the image's versions preinstalled. It is built once
    and kept while the constraints and the package list are the same; what an earlier rehearsal
    installed into it (invoke, onnx, ...) is uninstalled first, so each rehearsal starts from
    the image's package set, and anything else that moved means a rebuild."""
    environment = Path(f"/tmp/colab-rehearsal-{image}")
    constraints = image_constraints(image)
    stamp = hashlib.sha256(constraints.encode() + json.dumps(PREINSTALLED).encode()).hexdigest()
    marker = environment / "rehearsal.json"
    if marker.is_file() and json.loads(marker.read_text()).get("stamp") == stamp:
        baseline, now = json.loads(marker.read_text())["freeze"], _freeze(environment)
        added = sorted(set(now) - set(baseline))
        if added:
            subprocess.run([environment / "bin" / "python", "-m", "pip", "uninstall", "-q", "-y", *added], check=True)
        if _freeze(environment) == baseline:
            return environment
    shutil.rmtree(environment, ignore_errors=True)
    subprocess.run([*PYTHON, "-m", "venv", environment], check=True)
    (environment / "constraints.txt").write_text(constraints)
    pip = [environment / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "--constraint", environment / "constraints.txt", *PREINSTALLED], check=True)
    marker.write_text(json.dumps({"stamp": stamp, "freeze": _freeze(environment)}))
    return environment


def rehearse(environment: Path, out: Path, changed: dict[str, str], story: str = "full", name: str = "") -> dict:
    overlays = out / "overlays"
    for overlay in ("usr-local", "etc-upper", "etc-work"):
        (overlays / overlay).mkdir(parents=True)
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
    command += [json.dumps(TRAINER), json.dumps(changed), story]
    created = not Path("/content").exists()
    if created:
        Path("/content").mkdir()
    try:
        env = {**os.environ, "PYTHONPATH": str(stand_in), "REHEARSAL_NAME": name}
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


def _image_version(image: str, name: str) -> str:
    return IMAGES[image].get(name) or pins_module().read_freeze(ROOT / "colab" / "constraints.txt")[name]


def pins_module():
    from scripts import pins

    return pins


@pytest.mark.parametrize("image", list(IMAGES))
def test_the_notebook_on_a_colab_like_runtime(image, tmp_path):
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        _unavailable("needs root for a private mount namespace")
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        _unavailable("unshare -m does not work here")
    if subprocess.run([*PYTHON, "--version"], capture_output=True).returncode != 0:
        _unavailable("no Python 3.13 (PYENV_VERSION=3.13.0 python3.13)")
    if not CONCRETE.is_dir():
        _unavailable(f"{CONCRETE} is not here")
    option, reason = CHANGED[image]
    summary = rehearse(colab_environment(image), tmp_path, option, STORY[image], NAME[image])
    whole = STORY[image] == "full"
    first, after_reset, changed, failing = summary["runs"] if whole else (summary["runs"][0], None, None, None)
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
    tensorflow = _image_version(image, "tensorflow")
    assert f"TF_Version() = {tensorflow}" in next(s["detail"] for s in first["setup"] if s["name"] == "libtensorflow")
    # pins kept the image's own versions, and said so; the run used them, and every export
    # (ONNX through tf2onnx, the C library among them) agreed with Keras.
    pins_detail = next(step["detail"] for step in first["setup"] if step["name"] == "pins")
    for name in ("tensorflow", "keras", "protobuf", "numpy"):
        assert f"{name} {_image_version(image, name)}" in pins_detail, pins_detail
        assert first["versions"][name] == _image_version(image, name)
    assert first["exports"]["ok"] and len(first["exports"]["legs"]) == 5, first["exports"]
    assert ", Colab, Drive mounted" in next(step["detail"] for step in first["setup"] if step["name"] == "check")
    published = first["published"]
    assert {"model.keras", "report.html", "metrics.json", "published.json"} <= set(published)
    assert summary["images_in_zip"] == 400 and first["images_used"] == 400
    assert first["previous"] is None
    # The model is named by the job cell's NAME (empty: after Images.zip), and the review cell
    # finds it by the same SOURCE and NAME and shows its labels to check.
    model = NAME[image] or "images-classifier"
    assert f"train: this data's model is {model}: published to /content/drive/MyDrive/{model} " in _outputs(first)
    assert any("<table class='review'>" in cell["html"] for cell in first["cells"]), first["cells"][-1]

    if not whole:
        # The next image's one run fine-tuned, and every export agreed with Keras on its packages;
        # its search cell (BUDGET "35s") searched on them and left its choice in the record.
        assert first["phases"] == ["fine_tune", "head"], first["phases"]
        search = next(cell for cell in first["cells"] if "invoke tune" in cell["source"])
        assert not search["errors"] and "search: chose " in search["output"], search
        assert "tune: `invoke train` now trains what the search chose" in search["output"], search
        return
    _after_a_reset_the_review_is_saved_to_the_record(after_reset, published)

    # One option changed: it retrains with the review's decisions, publishes, and keeps the first
    # model as .previous.
    assert changed["error"] is None, _outputs(changed)
    since = next(line for line in _outputs(changed).splitlines() if line.startswith("train: training, since "))
    assert reason in since and "the review decisions in force changed" in since, since
    in_force = "train: 2 decisions in force (1 relabel, 1 keep) from the dataset's record "
    assert in_force + "/content/drive/MyDrive/cracks-2026-record" in _outputs(changed)
    assert (changed["corrections"]["relabelled"], changed["corrections"]["kept"]) == (1, 1)
    # The review cell, run again, shows what the record holds.
    assert any("holds 2 earlier decisions (1 relabelled, 1 kept)" in cell["html"] for cell in changed["cells"])
    assert changed["exports"]["ok"], changed["exports"]
    assert changed["previous"] == published and changed["published"] != published

    # A failing step fails its cell, so "Run all" stops there (a source refused: exit code 2).
    assert failing["error"] is not None and "invoke setup train failed (exit code 2)" in failing["error"]
    assert "setup failed at data: --source: /content/drive/MyDrive/Imagse.zip does not exist" in _outputs(failing)


def _after_a_reset_the_review_is_saved_to_the_record(after_reset: dict, published: dict) -> None:
    """After a reset: only the missing work, no training, the published model byte for byte. The
    review cell finds the model by the job cell's NAME and shows the audit's list as the form;
    its "Save to Drive" (called as the page would) adds the decisions to the dataset's record on
    Drive, which the next `invoke train` reads."""
    assert after_reset["error"] is None, _outputs(after_reset)
    reset_steps = {step["name"]: (step["status"], step["detail"]) for step in after_reset["setup"]}
    assert reset_steps["pins"][0] == "ok" and reset_steps["data"][0] == "changed"  # /content/bundle/data went
    # The library in /usr/local is kept (as the environment is); the env file in the bundle is rewritten.
    assert reset_steps["libtensorflow"] == ("changed", "wrote /content/bundle/libtensorflow.env")
    assert "train: ok (the model in /content/drive/MyDrive/cracks-2026 was trained" in _outputs(after_reset)
    assert after_reset["runs"] == []
    assert after_reset["published"] == published
    assert any("<table class='review'>" in cell["html"] for cell in after_reset["cells"])
    saved = "2 decisions added to the dataset's record /content/drive/MyDrive/cracks-2026-record"
    assert saved in after_reset["cells"][-1]["output"], after_reset["cells"][-1]
    assert len(after_reset["record"]) == 1


def test_a_package_outside_its_range_stops_pins_before_anything_changes(tmp_path):
    """The next image with an older gdown in front of its own (a runtime outside the range):
    `invoke pins`, as the notebook runs it, fails in one line naming the package, its range and
    what to do, and installs nothing, not even what the runtime lacks (onnx, ...)."""
    if subprocess.run([*PYTHON, "--version"], capture_output=True).returncode != 0:
        _unavailable("no Python 3.13 (PYENV_VERSION=3.13.0 python3.13)")
    environment = colab_environment("next-tf2.21")
    python = environment / "bin" / "python"
    # What the notebook's first command does before invoke runs.
    subprocess.run([python, "-m", "pip", "install", "-q", "invoke==3.0.3"], check=True)
    overlay = tmp_path / "older"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--target", overlay, "gdown==4.7.3"], check=True)
    bundle = bundle_copy(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(overlay)}
    env.pop("TRAINER_CI", None)
    before = _freeze_with(python, env)
    assert before["gdown"] == "4.7.3"
    result = subprocess.run([python, "-m", "invoke", "pins"], cwd=bundle, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "pins failed: outside the supported range: gdown 4.7.3 (supported: >=5.2,<7); switch the runtime to one in "
        "range (Colab: Runtime > Change runtime version), or run `invoke pins --exact`"
    )
    assert "$ " not in result.stderr  # no command ran
    assert _freeze_with(python, env) == before
    # --exact is the way out that the message names: the tested stack over the image's own.
    exact = subprocess.run([python, "-m", "invoke", "pins", "--exact", "--dry-run"], cwd=bundle, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert exact.returncode == 0, exact.stderr
    for requirement in ("tensorflow==2.20.0", "keras==3.13.2", "protobuf==5.29.6", "gdown==5.2.2", "onnx==1.22.0"):
        assert requirement in exact.stdout + exact.stderr, exact.stdout + exact.stderr


def _freeze_with(python: Path, env: dict) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "freeze", "--all"], env=env, capture_output=True, text=True, check=True)
    return dict(line.split("==", 1) for line in out.stdout.splitlines() if "==" in line)
