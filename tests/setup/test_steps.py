"""Setup steps as tables of (given state, options) -> planned action, plus the real thing where
it runs here: dpkg-query, a compiled shared library, a local Drive folder."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from scripts import apt, check, pins, publish, stage
from scripts.libtensorflow import set_soname
from scripts.steps import Context, Result, StepFailed, run_step, table, write_report
from tests.conftest import ROOT


def test_run_step_times_reports_and_turns_failures_into_a_result():
    def good(ctx):
        return Result("", "ok", "fine")

    def bad(ctx):
        raise StepFailed("the disk is full", "free some space")

    ctx = Context(echo=lambda message: None)
    results = [run_step("good", good, ctx), run_step("bad", bad, ctx)]
    assert [(r.name, r.status) for r in results] == [("good", "ok"), ("bad", "failed")]
    assert results[1].detail == "the disk is full; free some space"
    assert all(r.seconds >= 0 for r in results)
    assert table(results).splitlines()[-1] == "1 ok, 0 changed, 0 skipped, 1 failed"


def test_report_json_shape(tmp_path):
    write_report([Result("check", "ok", "x", 0.5)], tmp_path / "r" / "report.json")
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == {
        "steps": [{"name": "check", "status": "ok", "detail": "x", "seconds": 0.5, "refused": False}]
    }


def test_dry_run_context_refuses_to_run_commands():
    with pytest.raises(RuntimeError, match="under --dry-run"):
        Context(dry_run=True).run(["true"])


# check ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, expected",
    [({"COLAB_RELEASE_TAG": "release-colab_20261101"}, True), ({"COLAB_GPU": "1"}, True), ({"HOME": "/root"}, False)],
)
def test_colab_is_detected_from_its_environment(environ, expected, monkeypatch):
    monkeypatch.setattr(check.Path, "is_dir", lambda self: False)
    assert check.in_colab(environ) is expected


def test_check_reports_the_machine_and_require_gpu_says_how_to_get_one(monkeypatch):
    result = check.check(Context())
    assert result.status == "ok"
    assert "Python" in result.detail and "CPUs" in result.detail
    monkeypatch.setattr(check, "gpus", lambda: [])
    with pytest.raises(StepFailed, match=r"no GPU on this machine.*Runtime > Change runtime type"):
        check.check(Context(), require_gpu=True)


def test_check_reads_tensorflow_version_without_importing_it():
    code = "import sys; from scripts.check import machine_report; r = machine_report(); print(r['tensorflow'], 'tensorflow' in sys.modules)"
    out = subprocess.run(
        [os.sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    version, imported = out.stdout.split()
    assert imported == "False"
    assert version == pins.read_pins(Path(__file__).resolve().parents[2] / "requirements.txt")["tensorflow"]


# apt ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wanted, installed, missing",
    [
        (["gcc", "libc6-dev"], {"gcc", "libc6-dev"}, []),
        (["gcc", "libgdiplus"], {"gcc"}, ["libgdiplus"]),
        (["a", "b"], set(), ["a", "b"]),
    ],
)
def test_apt_plan(wanted, installed, missing):
    assert apt.plan(wanted, installed) == missing


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")
def test_apt_with_real_dpkg_query():
    ctx = Context(dry_run=True, echo=lambda message: None)
    assert apt.apt(ctx, ["dpkg"]).status == "ok"
    result = apt.apt(ctx, ["dpkg", "no-such-package-xyz"])
    assert (result.status, result.detail) == ("changed", "would install no-such-package-xyz (dry run)")
    assert apt.apt(ctx, []).status == "skipped"


# pins -----------------------------------------------------------------------------------------


RANGES = {"tensorflow": ">=2.20,<2.22", "gdown": ">=5.2,<7"}
PINNED = {"tensorflow": "2.20.0", "gdown": "5.2.2", "onnx": "1.22.0"}


@pytest.mark.parametrize(
    "installed, kept, install, repair, outside",
    [
        # Colab's 2026-08 image: everything kept; the bundle's own package installed.
        ({"tensorflow": "2.20.0", "gdown": "5.2.2", "onnx": None}, ["tensorflow", "gdown"], ["onnx==1.22.0"], [], []),
        # The next image: in range, so kept as it is, not moved back to the pins.
        ({"tensorflow": "2.21.0", "gdown": "6.5.1", "onnx": "1.22.0"}, ["tensorflow", "gdown"], [], [], []),
        # A fresh machine: the exact stack.
        (
            {"tensorflow": None, "gdown": None, "onnx": None},
            [],
            ["tensorflow==2.20.0", "gdown==5.2.2", "onnx==1.22.0"],
            [],
            [],
        ),  # fmt: skip
        # The bundle's own package at another version: its exact version.
        (
            {"tensorflow": "2.20.0", "gdown": "5.2.2", "onnx": "1.23.0"},
            ["tensorflow", "gdown"],
            ["onnx==1.22.0"],
            [],
            [],
        ),  # fmt: skip
        # An older image: refused, nothing planned around it.
        (
            {"tensorflow": "2.19.0", "gdown": "5.2.2", "onnx": None},
            ["gdown"],
            ["onnx==1.22.0"],
            [],
            ["tensorflow 2.19.0 (supported: >=2.20,<2.22)"],
        ),  # fmt: skip
        # Half-installed: reinstalled over itself at its own version when that is supported.
        (
            {"tensorflow": "broken:2.21.0", "gdown": "5.2.2", "onnx": "broken:1.22.0"},
            ["gdown"],
            [],
            ["tensorflow==2.21.0", "onnx==1.22.0"],
            [],
        ),  # fmt: skip
    ],
)
def test_pins_plan(installed, kept, install, repair, outside):
    planned = pins.plan(PINNED, installed, RANGES)
    assert (list(planned.kept), planned.install, planned.repair, planned.outside) == (kept, install, repair, outside)


def test_exact_pins_plan_every_version_as_pinned():
    planned = pins.plan(PINNED, {"tensorflow": "2.21.0", "gdown": "5.2.2", "onnx": "broken:1.22.0"}, None)
    assert (planned.kept, planned.install, planned.repair) == ({}, ["tensorflow==2.20.0"], ["onnx==1.22.0"])


def test_installed_packages_are_held_at_their_own_versions_and_the_rest_at_the_snapshots():
    text = pins.constraints_text({"protobuf": "6.33.6", "invoke": "3.0.3"}, {"protobuf": "5.29.6", "h5py": "3.16.0",
                                 "onnx": "1.22.0"}, {"onnx"})  # fmt: skip
    assert text == "h5py==3.16.0\ninvoke==3.0.3\nprotobuf==6.33.6\n"
    # A version pip cannot read would make it refuse the whole file: left out.
    assert pins.constraints_text({"odd": "1.0-beta_x", "six": "1.17.0"}, {}, set()) == "six==1.17.0\n"


def test_ranges_file(tmp_path):
    (tmp_path / "s.txt").write_text("# comment\nTensorFlow >= 2.20, < 2.22  # why\n\nnumpy==2.1.3\n")
    assert pins.read_ranges(tmp_path / "s.txt") == {"tensorflow": ">=2.20,<2.22", "numpy": "==2.1.3"}
    (tmp_path / "s.txt").write_text("keras>=3.13\ngdown 5\n")
    with pytest.raises(StepFailed, match=r"s.txt:2: 'gdown 5' is not a range; write it as name>=X,<Y"):
        pins.read_ranges(tmp_path / "s.txt")


def test_every_tested_stack_lies_in_the_supported_ranges():
    """The exact stack, the snapshot it came from and the next image the rehearsal builds: each
    version of a ranged package inside its range, and the ranges cover what Colab preinstalls."""
    from tests.test_colab import IMAGES

    ranges = pins.read_ranges(ROOT / "supported.txt")
    exact = pins.read_pins(ROOT / "requirements.txt")
    snapshot = {
        pins._normal(name): version for name, version in pins.read_freeze(ROOT / "colab" / "constraints.txt").items()
    }
    stacks = {"requirements.txt": exact, "colab/constraints.txt": snapshot}
    stacks |= {f"image {name}": {**snapshot, **overrides} for name, overrides in IMAGES.items()}
    for stack, versions in stacks.items():
        versions = {pins._normal(name): version for name, version in versions.items()}
        outside = [
            f"{name} {versions[name]}" for name, spec in ranges.items() if not pins.in_range(versions[name], spec)
        ]
        assert outside == [], stack
    assert {pins._normal(name) for name in exact if pins._normal(name) in snapshot} == set(ranges)


def test_a_package_outside_its_range_fails_pins_before_pip_runs(tmp_path, monkeypatch):
    from importlib import metadata

    (tmp_path / "requirements.txt").write_text(f"numpy=={metadata.version('numpy')}\n")
    (tmp_path / "supported.txt").write_text("numpy>=2.99,<3  # above what is installed\n")
    ran = []
    ctx = Context(root=tmp_path, echo=lambda message: None)
    monkeypatch.setattr(ctx, "run", lambda *args, **options: ran.append(args))
    with pytest.raises(StepFailed) as refused:
        pins.pins(ctx, constraints="")
    assert str(refused.value) == (
        f"outside the supported range: numpy {metadata.version('numpy')} (supported: >=2.99,<3); "
        "switch the runtime to one in range (Colab: Runtime > Change runtime version), or run `invoke pins --exact`"
    )
    assert ran == []


def test_pins_file_must_be_exact(tmp_path):
    (tmp_path / "r.txt").write_text("# comment\nkeras==3.13.2  # why\n\nnumpy>=2\n")
    with pytest.raises(StepFailed, match=r"r.txt:4: 'numpy>=2' is not an exact pin"):
        pins.read_pins(tmp_path / "r.txt")


def test_every_pin_of_a_package_colab_preinstalls_is_colabs_version():
    colab = pins.read_freeze(ROOT / "colab" / "constraints.txt")
    assert len(colab) > 600 and colab["tensorflow"] == "2.20.0"  # the whole list, not a subset
    for requirements in ("requirements.txt", "requirements-dev.txt"):
        assert pins.differences(pins.read_freeze(ROOT / requirements), colab) == [], requirements
    # What the bundle relies on being there is in the list, so the pins above were compared.
    runtime = pins.read_pins(ROOT / "requirements.txt")
    on_colab = {name for name in runtime if pins._normal(name) in {pins._normal(n) for n in colab}}
    assert on_colab >= {"tensorflow", "keras", "numpy", "protobuf", "pillow", "tqdm", "gdown", "matplotlib"}
    assert not {"invoke", "onnx", "tf2onnx", "onnxruntime"} & on_colab


def test_a_pin_that_contradicts_colab_is_refused_before_pip_runs(tmp_path):
    (tmp_path / "requirements.txt").write_text("numpy==2.4.6\n")
    (tmp_path / "supported.txt").write_text("numpy>=2.1,<3\n")
    (tmp_path / "colab").mkdir()
    (tmp_path / "colab" / "constraints.txt").write_text("numpy==2.1.3\npandas==2.2.3\n")
    with pytest.raises(StepFailed) as refused:
        pins.pins(Context(root=tmp_path, echo=lambda message: None))
    assert str(refused.value) == (
        "pins differ from constraints.txt: numpy==2.4.6 (the list has 2.1.3); "
        "make them equal, or set pins.constraints to ''"
    )


def test_pins_match_here():
    # CI installs requirements.txt before the tests, so the step must find nothing to do, and
    # names the runtime's versions it keeps.
    result = pins.pins(Context(dry_run=True))
    assert result.status == "ok" and "kept tensorflow " in result.detail
    assert pins.pins(Context(dry_run=True), exact=True).status == "ok"


# stage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, wanted", [(0o644, 0o755), (0o600, 0o700), (0o666, 0o755), (0o777, 0o755), (0o755, 0o755)]
)
def test_stage_mode(mode, wanted):
    assert stage.wanted_mode(mode) == wanted


def test_stage_restores_exec_bits_on_scripts_only(tmp_path):
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    module = tmp_path / "scripts" / "lib.py"
    module.write_text("x = 1\n")
    module.chmod(0o644)
    ctx = Context(root=tmp_path, echo=lambda message: None)
    assert stage.stage(Context(root=tmp_path, dry_run=True)).detail == "would chmod scripts/run.sh 644->755 (dry run)"
    assert stat.S_IMODE(script.stat().st_mode) == 0o644
    assert stage.stage(ctx).status == "changed"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert stat.S_IMODE(module.stat().st_mode) == 0o644
    assert stage.stage(ctx).status == "ok"


# publish --------------------------------------------------------------------------------------


def _fake_run(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.keras").write_text(content)
    (folder / "labels.txt").write_text("CD\nUD\n")
    return folder


def test_publish_copies_verifies_and_keeps_the_previous_version(tmp_path):
    ctx = Context(root=tmp_path, echo=lambda message: None)
    first = _fake_run(tmp_path / "runs" / "a", "model A")
    drive = tmp_path / "drive"
    drive.mkdir()
    to = str(drive / "ud-cd-classifier")
    result = publish.publish(ctx, run=str(first), to=to)
    assert result.status == "changed"
    assert (drive / "ud-cd-classifier" / "model.keras").read_text() == "model A"
    record = json.loads((drive / "ud-cd-classifier" / "published.json").read_text())
    assert set(record["files"]) == {"model.keras", "labels.txt"}
    assert publish.publish(ctx, run=str(first), to=to).status == "ok"
    second = _fake_run(tmp_path / "runs" / "b", "model B")
    assert publish.publish(ctx, to=to).status == "changed"  # the latest run by default
    assert (drive / "ud-cd-classifier" / "model.keras").read_text() == "model B"
    assert (drive / "ud-cd-classifier.previous" / "model.keras").read_text() == "model A"
    # Beside them, the dataset's record says which run is published (trainer/record.py).
    assert sorted(p.name for p in drive.iterdir()) == ["ud-cd-classifier", "ud-cd-classifier-record",
                                                       "ud-cd-classifier.previous"]  # fmt: skip
    published = json.loads((drive / "ud-cd-classifier-record" / "record.json").read_text())["published"]
    assert (published["run"], published["folder"]) == ("b", to)
    assert second.is_dir()


def test_publish_where_a_file_or_nothing_stands_fails_and_creates_nothing(tmp_path):
    ctx = Context(root=tmp_path, echo=lambda message: None)
    run = _fake_run(tmp_path / "runs" / "a", "model A")
    blocker = tmp_path / "drive"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StepFailed, match=r"drive is not a folder; .*the run stays in .*rerun `invoke publish`"):
        publish.publish(ctx, run=str(run), to=str(blocker / "models"))
    unmounted = tmp_path / "content" / "drive" / "MyDrive"
    with pytest.raises(StepFailed, match=r"MyDrive does not exist \(is Google Drive mounted\?\); mount Drive"):
        publish.publish(ctx, run=str(run), to=str(unmounted / "models"))
    assert not (tmp_path / "content").exists(), "publishing must not create a folder where Drive would be mounted"
    assert (run / "model.keras").read_text() == "model A"


def test_publish_without_runs_says_what_to_run(tmp_path):
    with pytest.raises(StepFailed, match="no trained run .*run `invoke train` first"):
        publish.publish(Context(root=tmp_path), to=str(tmp_path / "d"))


def test_publish_goes_where_the_readme_says(tmp_path, monkeypatch):
    """MyDrive/ud-cd-classifier/ with Drive mounted (the previous model beside it), else
    published/ud-cd-classifier/ in the bundle: invoke.yaml's publish settings."""
    from invoke.vendor import yaml

    places = yaml.safe_load((ROOT / "invoke.yaml").read_text())["publish"]
    places = {"folder": places["folder"], "local_folder": places["local_folder"]}
    ctx = Context(root=tmp_path / "bundle", echo=lambda message: None)
    _fake_run(tmp_path / "bundle" / "runs" / "a", "model A")
    monkeypatch.setattr(publish, "drive_folder", lambda: None)
    assert publish.publish(ctx, **places).status == "changed"
    assert (tmp_path / "bundle" / "published" / "ud-cd-classifier" / "model.keras").read_text() == "model A"
    my_drive = tmp_path / "content" / "drive" / "MyDrive"
    my_drive.mkdir(parents=True)
    monkeypatch.setattr(publish, "drive_folder", lambda: my_drive)
    assert publish.publish(ctx, **places).status == "changed"
    _fake_run(tmp_path / "bundle" / "runs" / "b", "model B")
    assert publish.publish(ctx, **places).status == "changed"
    assert sorted(p.name for p in my_drive.iterdir()) == ["ud-cd-classifier", "ud-cd-classifier-record",
                                                          "ud-cd-classifier.previous"]  # fmt: skip
    assert (my_drive / "ud-cd-classifier" / "model.keras").read_text() == "model B"
    assert (my_drive / "ud-cd-classifier.previous" / "model.keras").read_text() == "model A"


def test_publish_on_colab_without_drive_says_how_to_mount(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "drive_folder", lambda: None)
    monkeypatch.setattr(publish, "in_colab", lambda: True)
    _fake_run(tmp_path / "runs" / "a", "m")
    with pytest.raises(StepFailed, match=r"Google Drive is not mounted.*drive.mount"):
        publish.publish(Context(root=tmp_path), folder="models", local_folder="published")


# libtensorflow --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_set_soname_rewrites_a_real_shared_library(tmp_path):
    (tmp_path / "f.c").write_text("int answer(void) { return 42; }\n")
    library = tmp_path / "libanswer_cc.so.2"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libanswer_cc.so.2", str(tmp_path / "f.c"), "-o", str(library)],
        check=True,
    )
    assert set_soname(library, "libanswer.so.2") == "libanswer_cc.so.2"
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
    assert "Library soname: [libanswer.so.2]" in dynamic
    with pytest.raises(StepFailed, match="is longer than"):
        set_soname(library, "libanswer_much_longer.so.2")


def test_a_prefix_with_a_line_break_is_refused_before_anything_is_written(tmp_path):
    from scripts.libtensorflow import libtensorflow

    prefix = tmp_path / "two\nlines"
    with pytest.raises(StepFailed, match="a folder name with a line break cannot go in ld.so.conf"):
        libtensorflow(Context(root=tmp_path, echo=lambda message: None), prefix=str(prefix))
    assert list(tmp_path.iterdir()) == []


def test_setup_hands_each_flag_to_the_step_that_owns_it_alone():
    """`invoke setup --source X --sha256 Y` is the data step's source and checksum; the C
    library's own source and sha256 stay as invoke.yaml says."""
    from scripts import registry

    configured = {
        "prefix": "auto",
        "source": "wheel",
        "sha256": "",
        "env_file": "libtensorflow.env",
        "ldconfig": "auto",
    }
    flags = {"source": "my.zip", "sha256": "abc", "prefix": "/opt/tf", "expect": None}
    options = registry.step("libtensorflow").options(configured, flags)
    assert (options["source"], options["sha256"], options["prefix"]) == ("wheel", None, "/opt/tf")
    data = {"source": "concrete", "dir": "data", "sha256": "", "expect": "", "csv": "training_data.csv",
            "demo_per_class": 60}  # fmt: skip
    options = registry.step("data").options(data, flags)
    assert (options["source"], options["sha256"], options["expect"], options["data_dir"]) == (
        "my.zip",
        "abc",
        None,
        "data",
    )


def test_each_datasets_model_publishes_to_its_own_folder_and_a_users_folder_is_never_swapped(tmp_path, monkeypatch):
    """publish.folder empty (invoke.yaml's default): the folder is the run's model name, so the
    shipped photos' model and a zip's live side by side; a folder of that name that is not a
    published model (the user's own) is refused, untouched."""
    monkeypatch.setattr(publish, "drive_folder", lambda: None)
    ctx = Context(root=tmp_path, echo=lambda message: None)
    for name, content in (("ud-cd-classifier", "concrete model"), ("images-classifier", "zip model")):
        run = _fake_run(tmp_path / "runs" / name, content)
        (run / "config.json").write_text(json.dumps({"model_name": name}))
        assert publish.publish(ctx, run=str(run), folder="", local_folder="published").status == "changed"
    assert (tmp_path / "published" / "ud-cd-classifier" / "model.keras").read_text() == "concrete model"
    assert (tmp_path / "published" / "images-classifier" / "model.keras").read_text() == "zip model"
    mine = tmp_path / "published" / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_text("not a model")
    with pytest.raises(StepFailed, match=r"photos exists and is not a published model .*pass --name"):
        publish.publish(
            ctx, run=str(tmp_path / "runs" / "images-classifier"), folder="photos", local_folder="published"
        )
    assert sorted(p.name for p in mine.iterdir()) == ["holiday.jpg"]
    assert not (tmp_path / "published" / "photos.previous").exists()
