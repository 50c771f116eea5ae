"""The TensorFlow C library follows the installed TensorFlow both ways: installing one version
removes the files of any other version the step installed under that prefix before ldconfig
runs, since ldconfig points libtensorflow.so.2 at the highest-numbered file of that name."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from scripts.libtensorflow import libtensorflow
from scripts.steps import Context
from tests.conftest import ROOT
from tests.test_refused_input import VERSION, other_version_tarball

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="the step verifies with gcc")


def _loader_picks(prefix) -> str:
    """What ldconfig makes of the prefix's lib folder: the file libtensorflow.so.2 then names."""
    subprocess.run(["ldconfig", "-n", str(prefix / "lib")], check=True)
    return os.path.realpath(prefix / "lib" / "libtensorflow.so.2").rsplit("/", 1)[-1]


@pytest.mark.slow  # the wheel's library is a 1 GB copy
def test_an_upgrade_and_a_downgrade_both_end_with_the_library_of_the_installed_tensorflow(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("ldconfig -n needs root here")
    prefix, newer = tmp_path / "prefix", "2.99.0"
    tarball = other_version_tarball(tmp_path / f"libtensorflow-cpu-linux-x86_64-{newer}.tar.gz", newer)
    settings = {"prefix": str(prefix), "env_file": str(tmp_path / "tf.env"), "ldconfig": "no"}
    context = Context(root=ROOT, echo=lambda message: None)
    # The wheel's version, then a newer one (a runtime that moved up), then the wheel's again.
    for source, version in (("wheel", VERSION), (str(tarball), newer), ("wheel", VERSION)):
        result = libtensorflow(context, source=source, version=version, **settings)
        assert result.status == "changed", result.detail
        assert _loader_picks(prefix) == f"libtensorflow.so.{version}"
        libraries = sorted(path.name for path in (prefix / "lib").glob("libtensorflow.so.*.*"))
        assert libraries == [f"libtensorflow.so.{version}"], libraries
    assert "removed" in result.detail and "not registered with ldconfig (libtensorflow.ldconfig: no)" in result.detail


def test_a_prefix_the_loader_cannot_search_is_refused_before_anything_is_written(tmp_path):
    prefix = tmp_path / "a;b"
    result_context = Context(root=ROOT, echo=lambda message: None)
    from scripts.steps import StepFailed

    with pytest.raises(StepFailed, match="splits LD_LIBRARY_PATH at ':' and ';'"):
        libtensorflow(result_context, prefix=str(prefix), ldconfig="no", env_file=str(tmp_path / "tf.env"))
    assert not prefix.exists()
