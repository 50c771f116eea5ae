"""From a bare runtime to a trained classifier: `invoke setup train`.

Each task is one step: it parses options (defaults in invoke.yaml, overridable by INVOKE_*
environment variables and flags), calls one function in scripts/ or trainer/, and prints the
outcome. A failed step ends the run with exit code 1 and one line that says what to do.
"""

from __future__ import annotations

import functools
import inspect
import shlex
import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit
from invoke import task as invoke_task

from scripts import registry
from scripts.settings import FALSE, TRUE, SettingError, check_flags, check_or_exit
from scripts.steps import Context, Result, communicate, run_step, table, write_report
from trainer.config import described, flag, options

ROOT = Path(__file__).resolve().parent
CORRECTIONS = "corrections.csv"  # NAME-corrections.csv beside the published NAME/ is used by invoke train
check_or_exit(ROOT)  # invoke.yaml and INVOKE_* checked before invoke reads them (scripts/settings.py)
SETUP_STEPS = registry.SETUP_STEPS


# What an interrupted task leaves, for the one line it ends with.
AFTER_INTERRUPT = {
    "train": "training resumes from its last checkpoint and keeps the features already cached",
    "publish": "the published model is still the one before it, whole",
    "setup": "each step keeps what it finished, and nothing half-done counts as done",
}


def task(*args, **kwargs):
    """invoke's @task, where Ctrl-C (a terminal's, or Colab's "interrupt execution") ends the
    task with one line and exit code 130 instead of invoke's silent exit 1. A child the task
    runs gets time to stop by itself first (scripts/steps.communicate)."""

    def decorate(body):
        @functools.wraps(body)
        def run(*given, **options):
            try:
                return body(*given, **options)
            except KeyboardInterrupt:
                name = body.__name__
                left = AFTER_INTERRUPT.get(name, "nothing half-done counts as done")
                raise Exit(f"{name}: interrupted; {left}; rerun `invoke {name}` to finish", code=130) from None

        return invoke_task(*args, **kwargs)(run)

    return decorate


def _conf(c, section: str) -> dict:
    return dict(c.config.get(section, {}))


def _setting(c, section: str, key: str):
    """A bundle setting: invoke.yaml holds its default, and nothing else does."""
    try:
        return c.config[section][key]
    except KeyError:
        raise Exit(f"invoke: invoke.yaml has no {section}.{key}; restore it from the bundle's copy", code=2) from None


def _step_options(c, name: str, **flags) -> tuple:
    """The function behind a setup step and its options, from its row in scripts/registry.py:
    each setting from its flag when given, else from config."""
    step = registry.step(name)
    try:
        return step.function, step.options(_conf(c, name), flags)
    except KeyError as missing:
        raise Exit(
            f"invoke: invoke.yaml has no {name}.{missing.args[0]}; restore it from the bundle's copy", code=2
        ) from None


def _exclusive(c, dry_run: bool) -> None:
    """Wait for any other invoke in this bundle to finish (dry runs change nothing, so need not)."""
    from scripts.lock import acquire
    from scripts.steps import StepFailed

    if dry_run:
        return
    try:
        acquire(ROOT, wait=float(_setting(c, "setup", "lock_wait")))
    except StepFailed as error:
        raise Exit(f"invoke: {error}", code=1) from None


def _run_one(c, name: str, dry_run: bool, **flags) -> Result:
    _exclusive(c, dry_run or name == "check")  # check only reads
    function, options = _step_options(c, name, **flags)
    result = run_step(name, function, Context(dry_run=dry_run), **options)
    if result.status == "failed":
        raise Exit(f"{name} failed: {result.detail}", code=_failed_code(result))
    return result


def _failed_code(result: Result) -> int:
    """2 when the step refused the user's input (nothing changed), 1 when the machine failed it."""
    return 2 if result.refused else 1


@task(help={**registry.step("check").flags(), "dry_run": "change nothing"})
def check(c, require_gpu=False, dry_run=False):
    """Report the machine: OS, CPU, memory, Python, GPU, CUDA, TensorFlow, Colab, Drive."""
    _run_one(c, "check", dry_run, require_gpu=require_gpu or None)  # a flag left off: invoke.yaml's


@task(help={"dry_run": "say what would be installed, install nothing"})
def apt(c, dry_run=False):
    """Install the configured Debian packages that dpkg says are missing."""
    _run_one(c, "apt", dry_run)


@task(help={**registry.step("pins").flags(), "dry_run": "say what would be installed, change nothing"})
def pins(c, exact=False, dry_run=False):
    """Keep the runtime's packages in supported.txt's ranges; install what is missing at requirements.txt's versions."""
    _run_one(c, "pins", dry_run, exact=exact or None)


@task(help={**registry.step("libtensorflow").flags(), "dry_run": "change nothing"})
def libtensorflow(c, prefix=None, dry_run=False):
    """Install the pinned TensorFlow C library under a prefix, register it, and verify it."""
    _run_one(c, "libtensorflow", dry_run, prefix=prefix)


@task(help={**registry.step("data").flags(), "dry_run": "change nothing"})
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
        **registry.setup_flags(),
    }
)
def setup(c, dry_run=False, report=None, require_gpu=False, source=None, sha256=None, expect=None, exact=False,
          prefix=None):  # fmt: skip
    """Run check, apt, pins, libtensorflow, data and stage; print a summary table and write it as JSON."""
    flags = {"require_gpu": require_gpu or None, "source": source, "sha256": sha256, "expect": expect, "exact": exact or None,
             "prefix": prefix}  # fmt: skip
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
    report_path = Path(report or _setting(c, "setup", "report"))
    if not dry_run:
        write_report(results, report_path if report_path.is_absolute() else ROOT / report_path)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise Exit(f"setup failed at {failed[0].name}: {failed[0].detail}", code=_failed_code(failed[0]))


def _trainer_value(option, given, configured):
    """A flag given on the command line, else invoke.yaml's value (INVOKE_TRAIN_*), else None:
    the trainer's default. A yes/no option given alone (`--strict`) is True."""
    value = configured if given is None else given
    if value in ("", None):
        return None
    if option.type == "bool" and not isinstance(value, bool) and str(value).strip().lower() not in TRUE + FALSE:
        raise Exit(f"train: {flag(option.name)} must be yes or no (got {value!r})", code=2)
    return _yes(value) if option.type == "bool" else value


def _train_command(c, flags: dict, name: str | None = None) -> list[str]:
    """`python -m trainer train` with the options from invoke.yaml, overridden by flags. The
    model is named by --name (or --model-name), else after the dataset the data step fetched."""
    from scripts.dataset import dataset_name, read_manifest

    conf = _conf(c, "train")
    values = {
        option.name: _trainer_value(option, flags.get(option.name), conf.get(option.name)) for option in options()
    }
    values["model_name"] = name or values["model_name"]
    if not values["folder"]:
        manifest = read_manifest(ROOT / _setting(c, "data", "dir"))
        if manifest is None:
            raise Exit("train: no dataset yet; run `invoke data` (or `invoke setup`) first, or pass --folder", code=1)
        values["folder"] = manifest["folder"]
        values["file"] = values["file"] or manifest.get("file")
        values["model_name"] = values["model_name"] or manifest.get("name") or dataset_name(manifest["source"])
    command = [sys.executable, "-m", "trainer", "train"]
    for option in options():
        value = values[option.name]
        if option.type == "bool":
            if value is not None and value != option.default:
                command.append(flag(option.name) if value else "--no-" + flag(option.name)[2:])
        elif value not in (None, ""):
            command += [flag(option.name), str(value)]
    command += shlex.split(conf.get("extra") or "")
    return command


def _with_trainer_options(function):
    """`invoke train` takes every trainer option (trainer/config.py) as a flag; one left out
    means invoke.yaml's value, and an empty one there the trainer's default."""
    own = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value) for name, value in TRAIN_FLAGS.items()
    ]
    trainer = [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None) for option in options()]
    context = inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    function.__signature__ = inspect.Signature([context, *trainer, *own])
    return function


TRAIN_FLAGS = {"name": None, "force": False, "publish": True, "dry_run": False}
TRAIN_HELP = {
    **{option.name: described(option) for option in options()},
    "folder": "image folder (default: what `invoke data` fetched)",
    "name": "the model's name, and its published folder's (default: the dataset's, e.g. ud-cd-classifier)",
    "force": "train even when the published model was trained from the same data, options and stack",
    "publish": "copy the run to the Drive folder afterwards (default on)",
    "dry_run": "print the trainer command, run nothing",
}


@task(help=TRAIN_HELP, auto_shortflags=False, optional=[option.name for option in options() if option.type == "bool"])
@_with_trainer_options
def train(c, *, name=None, force=False, publish=True, dry_run=False, **trainer_flags):
    """Train the classifier (options from invoke.yaml) unless the published model already is it; publish the run."""
    from scripts import training
    from scripts.check import installed_version

    command = _train_command(c, trainer_flags, name)
    model = _model_name(command)
    published = _published_folder(c, model) if publish else None
    reviewed = None if published is None else published.with_name(f"{published.name}-{CORRECTIONS}")
    if "--corrections" not in command and reviewed is not None and reviewed.is_file():
        # What the review form saved beside the published model (colab.ipynb's review cell).
        command += ["--corrections", str(reviewed)]
        print(f"train: with the corrections in {reviewed} (the review form's; delete the file to train without)",
              file=sys.stderr, flush=True)  # fmt: skip
    print("$ " + shlex.join(command), flush=True)
    if published is not None:
        print(f"train: this data's model is {model}: published to {published} (the one before it is kept as "
              f"{published.name}.previous; other datasets' models are left alone)", file=sys.stderr, flush=True)  # fmt: skip
    if dry_run:
        return
    _exclusive(c, dry_run)
    if installed_version("tensorflow") is None:
        raise Exit("train: TensorFlow is not installed; run `invoke pins` (or `invoke setup`) first", code=1)
    asked = None if force or _yes(_setting(c, "train", "force")) else training.request_of(command[4:], ROOT)
    if asked is not None:
        config, request = asked
        decision = training.decide(request, published, ROOT / config.runs_dir)
        if decision.action == "ok":
            print(f"train: ok (the model in {decision.where} was trained from this data, these options and this "
                  "stack; --force retrains)", file=sys.stderr, flush=True)  # fmt: skip
            return
        if decision.action == "publish":
            print(f"train: {decision.where} was trained from this data and these options; publishing it",
                  file=sys.stderr, flush=True)  # fmt: skip
            _publish(c, str(decision.where), None, dry_run=False, name=model)
            return
        if decision.action == "finish":
            # Killed during its diagnostics: the same trainer command on that folder finishes them.
            print(f"train: {decision.where} was trained from this data and these options; finishing its diagnostics",
                  file=sys.stderr, flush=True)  # fmt: skip
            command += ["--output", str(decision.where)]
        else:
            print("train: training, since " + "; ".join(decision.reasons), file=sys.stderr, flush=True)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stdout, _ = communicate(process)
    run_dir = training.landed_run(stdout, ROOT)
    if process.returncode != 0 and run_dir is None:
        raise Exit(f"train: {training.failure(process.returncode)}", code=training.exit_code(process.returncode))
    if publish:
        _publish(c, str(run_dir), None, dry_run=False, name=model)
    if process.returncode != 0:
        # The model landed and is published; a diagnostic (audit, heatmaps, exports, report) did not.
        raise Exit(f"train: {training.diagnostics_outcome(run_dir, process.returncode, publish)}",
                   code=training.exit_code(process.returncode))  # fmt: skip


def _yes(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE


def _model_name(command: list[str]) -> str:
    """The --model-name a trainer command gives, else the trainer's default."""
    if "--model-name" in command:
        return command[command.index("--model-name") + 1]
    return next(option.default for option in options() if option.name == "model_name")


def _published_folder(c, model: str) -> Path | None:
    """Where `invoke publish` puts this model, or None where that is not known (Colab without Drive)."""
    from scripts.publish import default_destination
    from scripts.steps import StepFailed

    if _setting(c, "publish", "to"):
        return Path(_setting(c, "publish", "to"))
    try:
        folder = _setting(c, "publish", "folder") or model
        return default_destination(Context(), folder, _setting(c, "publish", "local_folder"))
    except StepFailed:
        return None


@task(
    help={
        "run": "run folder to publish (default: the latest under runs/)",
        "to": "the folder to publish into (default: MyDrive/NAME when Drive is mounted, else published/NAME)",
        "name": "NAME (default: the run's model name: ud-cd-classifier for the shipped photos, else the dataset's)",
        "dry_run": "change nothing",
    }
)
def publish(c, run=None, to=None, name=None, dry_run=False):
    """Copy a run to the Drive folder: temporary name, hash check, rename; the previous one is kept."""
    _publish(c, run, to, dry_run, name)


def _publish(c, run, to, dry_run: bool, name: str | None = None) -> None:
    from scripts.publish import publish as publish_run

    _exclusive(c, dry_run)
    result = run_step(
        "publish",
        publish_run,
        Context(dry_run=dry_run),
        run=run,
        to=to or _setting(c, "publish", "to") or None,
        folder=_setting(c, "publish", "folder") or name,
        local_folder=_setting(c, "publish", "local_folder"),
    )
    if result.status == "failed":
        raise Exit(f"publish failed: {result.detail}", code=_failed_code(result))


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


# invoke reads an INVOKE_TRAIN_* variable only for a key its configuration already has: every
# trainer option is one, empty (a yes/no option: its default), so invoke.yaml need not list them.
ns = Collection.from_module(
    sys.modules[__name__],
    config={"train": {option.name: option.default if option.type == "bool" else "" for option in options()}},
)


# Unknown flags are refused here, before invoke parses them, with the task's nearest flag and
# exit code 2 (invoke's own refusal names none and exits 1); only when invoke is the program.
if Path(sys.argv[0]).name in ("invoke", "inv") or Path(sys.argv[0]).parent.name == "invoke":
    try:
        check_flags({name: ns.tasks[name] for name in ns.task_names}, sys.argv[1:])
    except SettingError as error:
        print(f"invoke: {error}", file=sys.stderr)
        raise SystemExit(2) from None
