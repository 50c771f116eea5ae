"""The invoke tasks as a user runs them: real `invoke` processes on a copy of the bundle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import INVOKE, ROOT, bundle_copy, invoke, snapshot

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def test_every_task_has_a_docstring_and_is_in_the_readme():
    import tasks

    readme = (ROOT / "README.md").read_text()
    collection = [obj for obj in vars(tasks).values() if obj.__class__.__name__ == "Task"]
    assert {t.name for t in collection} >= {
        "check",
        "apt",
        "pins",
        "libtensorflow",
        "data",
        "stage",
        "setup",
        "train",
        "publish",
    }
    for t in collection:
        assert t.__doc__ and t.__doc__.strip(), f"task {t.name} has no docstring"
        assert f"invoke {t.name}" in readme, f"the README does not show `invoke {t.name}`"


def test_dry_run_changes_nothing(tmp_path):
    copy = bundle_copy(tmp_path)
    script = copy / "scripts" / "tool.sh"
    script.write_text("#!/bin/sh\necho tool\n")
    script.chmod(0o644)  # as Drive leaves it
    run = copy / "runs" / "20261125-120000-tiny"
    run.mkdir(parents=True)
    (run / "model.keras").write_text("a model")
    prefix, data, drive = tmp_path / "prefix", tmp_path / "data", tmp_path / "drive"
    env = {"INVOKE_LIBTENSORFLOW_PREFIX": str(prefix), "INVOKE_DATA_DIR": str(data), "INVOKE_APT_PACKAGES": ""}
    system = [Path("/etc/ld.so.conf.d"), Path("/usr/local/lib")]
    before = snapshot(copy, prefix, data, drive, *system)
    result = invoke(copy, "setup", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert snapshot(copy, prefix, data, drive, *system) == before
    assert "would chmod scripts/tool.sh 644->755 (dry run)" in result.stdout
    assert "would fetch local source concrete" in result.stdout
    for step in ("data", "stage", "libtensorflow", "pins", "apt"):
        assert invoke(copy, step, "--dry-run", env=env).returncode == 0
    published = invoke(copy, "publish", "--dry-run", "--to", str(drive), env=env)
    assert "would copy" in published.stderr and published.returncode == 0
    trained = invoke(copy, "train", "--dry-run", "--folder", str(data), env=env)
    assert "python -m trainer train --config FILE, FILE holding: --folder" in trained.stdout and trained.returncode == 0
    assert snapshot(copy, prefix, data, drive, *system) == before


def test_train_before_data_says_what_to_run_first(tmp_path):
    copy = bundle_copy(tmp_path)
    result = invoke(copy, "train", env={"INVOKE_DATA_DIR": str(tmp_path / "empty")})
    assert result.returncode == 1
    assert "train: no dataset yet; run `invoke data` (or `invoke setup`) first, or pass --folder" in result.stderr


def test_refused_source_ends_setup_with_one_line_and_exit_2(tmp_path):
    copy = bundle_copy(tmp_path)
    env = {
        "INVOKE_DATA_SOURCE": str(tmp_path / "missing.zip"),
        "INVOKE_APT_PACKAGES": "",
        "INVOKE_LIBTENSORFLOW_PREFIX": str(tmp_path / "p"),
    }
    result = invoke(copy, "setup", "--dry-run", env=env)
    assert result.returncode == 0  # a dry run does not look at the source yet
    result = invoke(copy, "data", env=env)
    assert result.returncode == 2  # the user's input refused, as the trainer's exit code for it
    assert result.stderr.strip().splitlines()[-1].startswith("data failed: --source: ")
    assert "missing.zip does not exist; check the path; is Drive mounted?" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="installs into /usr/local and registers with ldconfig")
def test_libtensorflow_then_plain_gcc_builds_and_prints_the_installed_version(tmp_path):
    from importlib import metadata

    result = invoke(ROOT, "libtensorflow")
    assert result.returncode == 0, result.stderr
    shutil.copy(ROOT / "scripts" / "hello_tf.c", tmp_path / "hello.c")  # the program docs/setup.md shows
    clean = {
        k: v for k, v in os.environ.items() if k not in ("LIBRARY_PATH", "LD_LIBRARY_PATH", "C_INCLUDE_PATH", "CPATH")
    }
    subprocess.run(["gcc", "hello.c", "-o", "hello", "-ltensorflow"], cwd=tmp_path, env=clean, check=True)
    printed = subprocess.run(["./hello"], cwd=tmp_path, env=clean, capture_output=True, text=True, check=True).stdout
    assert printed.strip() == metadata.version("tensorflow")


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="the real setup installs packages and the C library")
def test_second_setup_changes_nothing_imports_no_tensorflow_and_needs_no_network(tmp_path):
    first = invoke(ROOT, "setup", "--report", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stdout + first.stderr
    # The second run: in a network namespace with no interfaces when the machine allows one,
    # so any network I/O would fail; -X importtime lists every module imported.
    command = [*INVOKE, "setup", "--report", str(tmp_path / "second.json")]
    isolated = (
        shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    )
    if isolated:
        command = ["unshare", "-n", *command]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    import json

    steps = json.loads((tmp_path / "second.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["check", "apt", "pins", "libtensorflow", "data", "stage"]
    assert [s["status"] for s in steps if s["status"] == "changed"] == []
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in second.stderr.splitlines() if line.startswith("import time:")
    }
    assert "invoke" in imported  # the import log is real
    assert not {name for name in imported if name.split(".")[0] in ("tensorflow", "keras", "numpy", "PIL", "gdown")}
    print("network isolated:", bool(isolated))


def test_yes_no_flags_are_bare_flags():
    """`invoke check --require-gpu` as docs/setup.md writes it (it once asked for a value)."""
    from scripts.check import gpus

    result = invoke(ROOT, "check", "--require-gpu")
    if gpus():
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("check failed: no GPU on this machine")
    dry = invoke(ROOT, "pins", "--exact", "--dry-run")
    assert dry.returncode == 0 and "pins: ok (" in dry.stdout + dry.stderr, dry.stderr
