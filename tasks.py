"""From a bare runtime to a trained classifier: `invoke setup train`.

Each task is one step: it parses options (defaults in invoke.yaml, overridable by INVOKE_*
environment variables and flags), calls one function in scripts/ or trainer/, and prints the
outcome. A failed step ends the run with exit code 1 and one line that says what to do.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from invoke import Exit, task

from scripts.settings import check_or_exit
from scripts.steps import Context, Result, run_step, table, write_report

ROOT = Path(__file__).resolve().parent
check_or_exit(ROOT)  # invoke.yaml and INVOKE_* checked before invoke reads them (scripts/settings.py)
SETUP_STEPS = ("check", "apt", "pins", "libtensorflow", "data", "stage")


def _conf(c, section: str) -> dict:
    return dict(c.config.get(section, {}))


def _pick(flag, configured):
    """A flag given on the command line wins over the configured value."""
    return configured if flag is None else flag


def _step_options(c, name: str, **flags) -> tuple:
    """The function behind a setup step and its options, resolved from config and flags."""
    from scripts import apt, check, dataset, libtensorflow, pins, stage

    conf = _conf(c, name)
    if name == "check":
        return check.check, {"require_gpu": bool(_pick(flags.get("require_gpu"), conf.get("require_gpu", False)))}
    if name == "apt":
        packages = conf.get("packages") or ""
        return apt.apt, {"packages": packages.split() if isinstance(packages, str) else list(packages)}
    if name == "pins":
        return pins.pins, {
            "requirements": conf.get("requirements", "requirements.txt"),
            "constraints": conf.get("constraints", "colab/constraints.txt"),
        }
    if name == "libtensorflow":
        return libtensorflow.libtensorflow, {
            "prefix": _pick(flags.get("prefix"), conf.get("prefix", "auto")),
            "source": conf.get("source", "wheel"),
            "sha256": conf.get("sha256") or None,
            "env_file": conf.get("env_file", "libtensorflow.env"),
            "ldconfig": conf.get("ldconfig", "auto"),
        }
    if name == "data":
        return dataset.dataset, {
            "source": _pick(flags.get("source"), conf.get("source") or "concrete"),
            "data_dir": conf.get("dir", "data"),
            "sha256": _pick(flags.get("sha256"), conf.get("sha256")) or None,
            "expect": _pick(flags.get("expect"), conf.get("expect")) or None,
            "csv": conf.get("csv", "training_data.csv"),
            "demo_per_class": int(conf.get("demo_per_class", 60)),
        }
    if name == "stage":
        return stage.stage, {}
    raise Exit(f"unknown step {name}")


def _exclusive(c, dry_run: bool) -> None:
    """Wait for any other invoke in this bundle to finish (dry runs change nothing, so need not)."""
    from scripts.lock import acquire
    from scripts.steps import StepFailed

    if dry_run:
        return
    try:
        acquire(ROOT, wait=float(_conf(c, "setup").get("lock_wait", 3600)))
    except StepFailed as error:
        raise Exit(f"invoke: {error}", code=1) from None


def _run_one(c, name: str, dry_run: bool, **flags) -> Result:
    _exclusive(c, dry_run or name == "check")  # check only reads
    function, options = _step_options(c, name, **flags)
    result = run_step(name, function, Context(dry_run=dry_run), **options)
    if result.status == "failed":
        raise Exit(f"{name} failed: {result.detail}", code=1)
    return result


@task(help={"require_gpu": "make 'no GPU' an error", "dry_run": "change nothing"})
def check(c, require_gpu=None, dry_run=False):
    """Report the machine: OS, CPU, memory, Python, GPU, CUDA, TensorFlow, Colab, Drive."""
    _run_one(c, "check", dry_run, require_gpu=require_gpu)


@task(help={"dry_run": "say what would be installed, install nothing"})
def apt(c, dry_run=False):
    """Install the configured Debian packages that dpkg says are missing."""
    _run_one(c, "apt", dry_run)


@task(help={"dry_run": "say what would be reinstalled, change nothing"})
def pins(c, dry_run=False):
    """Make installed Python packages equal requirements.txt, reinstalling only mismatches."""
    _run_one(c, "pins", dry_run)


@task(
    help={
        "prefix": "install under this folder (default: /usr/local as root, else ~/.local)",
        "dry_run": "change nothing",
    }
)
def libtensorflow(c, prefix=None, dry_run=False):
    """Install the pinned TensorFlow C library under a prefix, register it, and verify it."""
    _run_one(c, "libtensorflow", dry_run, prefix=prefix)


@task(
    help={
        "source": "concrete (the shipped photos), demo, a Google Drive id or link, an http(s) URL, or a local zip or folder",
        "sha256": "expected SHA-256 of the downloaded or local file",
        "expect": "expected images per class, e.g. CD=200,UD=200",
        "dry_run": "change nothing",
    }
)
def data(c, source=None, sha256=None, expect=None, dry_run=False):
    """Fetch and unpack the dataset into the data folder and count the images per class."""
    _run_one(c, "data", dry_run, source=source, sha256=sha256, expect=expect)


@task(help={"dry_run": "change nothing"})
def stage(c, dry_run=False):
    """Restore the executable bit on the bundle's own scripts (Drive drops it)."""
    _run_one(c, "stage", dry_run)


@task(
    help={
        "dry_run": "report what each step would do, change nothing",
        "report": "write the summary as JSON here (default runs/setup-report.json)",
        "require_gpu": "make 'no GPU' an error",
        "source": "dataset source for the data step (concrete, demo, Drive id or link, URL, local zip or folder)",
        "sha256": "expected SHA-256 of the dataset file",
        "expect": "expected images per class, e.g. CD=200,UD=200",
        "prefix": "prefix for the TensorFlow C library",
    }
)
def setup(c, dry_run=False, report=None, require_gpu=None, source=None, sha256=None, expect=None, prefix=None):
    """Run check, apt, pins, libtensorflow, data and stage; print a summary table and write it as JSON."""
    flags = {"require_gpu": require_gpu, "source": source, "sha256": sha256, "expect": expect, "prefix": prefix}
    _exclusive(c, dry_run)
    ctx = Context(dry_run=dry_run)
    results = []
    for name in SETUP_STEPS:
        if results and results[-1].status == "failed":
            results.append(Result(name, "skipped", "an earlier step failed"))
            continue
        function, options = _step_options(c, name, **flags)
        results.append(run_step(name, function, ctx, **options))
    print(table(results))
    report_path = Path(report or _conf(c, "setup").get("report", "runs/setup-report.json"))
    if not dry_run:
        write_report(results, report_path if report_path.is_absolute() else ROOT / report_path)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise Exit(f"setup failed at {failed[0].name}: {failed[0].detail}", code=1)


def _train_command(c, **flags) -> list[str]:
    """`python -m trainer train` with the options from invoke.yaml, overridden by flags."""
    from scripts.dataset import read_manifest

    conf = {**_conf(c, "train"), **{key: value for key, value in flags.items() if value is not None}}
    if not conf.get("folder"):
        manifest = read_manifest(ROOT / _conf(c, "data").get("dir", "data"))
        if manifest is None:
            raise Exit("train: no dataset yet; run `invoke data` (or `invoke setup`) first, or pass --folder", code=1)
        conf["folder"] = manifest["folder"]
        conf["file"] = conf.get("file") or manifest.get("file")
    command = [sys.executable, "-m", "trainer", "train"]
    for key in ("folder", "file", "backbone", "weights", "image_size", "epochs", "batch_size", "output", "model_name"):
        if conf.get(key) not in (None, ""):
            command += [f"--{key.replace('_', '-')}", str(conf[key])]
    command += shlex.split(conf.get("extra") or "")
    return command


@task(
    help={
        "folder": "image folder (default: what `invoke data` fetched)",
        "file": "CSV ImagePath,Label inside the folder",
        "backbone": "resnet50_v2, resnet101_v2, inception_v3, mobilenet_v2, efficientnet_b0 or tiny",
        "weights": "auto, imagenet, none or a weights file",
        "image_size": "square input size in pixels",
        "epochs": "maximum epochs",
        "output": "run folder to create",
        "force": "train even when the published model was trained from the same data, options and stack",
        "publish": "copy the run to the Drive folder afterwards (default on)",
        "dry_run": "print the trainer command, run nothing",
    }
)
def train(
    c,
    folder=None,
    file=None,
    backbone=None,
    weights=None,
    image_size=None,
    epochs=None,
    output=None,
    force=False,
    publish=True,
    dry_run=False,
):
    """Train the classifier (options from invoke.yaml) unless the published model already is it; publish the run."""
    from scripts import training
    from scripts.check import installed_version

    command = _train_command(
        c,
        folder=folder,
        file=file,
        backbone=backbone,
        weights=weights,
        image_size=image_size,
        epochs=epochs,
        output=output,
    )
    print("$ " + shlex.join(command), flush=True)
    if dry_run:
        return
    _exclusive(c, dry_run)
    if installed_version("tensorflow") is None:
        raise Exit("train: TensorFlow is not installed; run `invoke pins` (or `invoke setup`) first", code=1)
    asked = None if force or _conf(c, "train").get("force") else training.request_of(command[4:], ROOT)
    if asked is not None:
        config, request = asked
        decision = training.decide(request, _published_folder(c) if publish else None, ROOT / config.runs_dir)
        if decision.action == "ok":
            print(f"train: ok (the model in {decision.where} was trained from this data, these options and this "
                  "stack; --force retrains)", file=sys.stderr, flush=True)  # fmt: skip
            return
        if decision.action == "publish":
            print(f"train: {decision.where} was trained from this data and these options; publishing it",
                  file=sys.stderr, flush=True)  # fmt: skip
            _publish(c, str(decision.where), None, dry_run=False)
            return
        print("train: training, since " + "; ".join(decision.reasons), file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise Exit(f"train: the trainer exited with {result.returncode}; see its message above", code=result.returncode)
    run_dir = result.stdout.strip().splitlines()[-1]
    if publish:
        _publish(c, run_dir, None, dry_run=False)


def _published_folder(c) -> Path | None:
    """Where `invoke publish` puts the model, or None where that is not known (Colab without Drive)."""
    from scripts.publish import default_destination
    from scripts.steps import StepFailed

    conf = _conf(c, "publish")
    if conf.get("to"):
        return Path(conf["to"])
    try:
        return default_destination(
            Context(), conf.get("folder") or "ud-cd-classifier", conf.get("local_folder") or "published"
        )
    except StepFailed:
        return None


@task(
    help={
        "run": "run folder to publish (default: the latest under runs/)",
        "to": "the folder to publish into (default: MyDrive/ud-cd-classifier when Drive is mounted, else published/ud-cd-classifier)",
        "dry_run": "change nothing",
    }
)
def publish(c, run=None, to=None, dry_run=False):
    """Copy a run to the Drive folder: temporary name, hash check, rename; the previous one is kept."""
    _publish(c, run, to, dry_run)


def _publish(c, run, to, dry_run: bool) -> None:
    from scripts.publish import publish as publish_run

    _exclusive(c, dry_run)
    conf = _conf(c, "publish")
    options = {
        "run": run,
        "to": to or conf.get("to") or None,
        "folder": conf.get("folder") or "ud-cd-classifier",
        "local_folder": conf.get("local_folder") or "published",
    }
    result = run_step("publish", publish_run, Context(dry_run=dry_run), **options)
    if result.status == "failed":
        raise Exit(f"publish failed: {result.detail}", code=1)


@task(
    help={
        "quick": "small sizes and one repetition: shows the suite works (goals are not enforced)",
        "report": "also write the results as JSON to this file",
        "only": "comma list of figures: head_epoch, featurization, batched, train, rerun, validation, setup",
    }
)
def bench(c, quick=False, report=None, only=None):
    """Measure the speed figures side by side (benchmarks/); exit 1 when a goal is missed."""
    command = [sys.executable, "-m", "benchmarks"]
    if quick:
        command.append("--quick")
    if report:
        command += ["--report", str(report)]
    if only:
        command += ["--only", *only.split(",")]
    print("$ " + shlex.join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise Exit(f"bench: exited with {result.returncode}", code=result.returncode)
