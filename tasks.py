"""From a bare runtime to a trained classifier: `invoke setup train`.

Each task is one step: it parses options (defaults in invoke.yaml, overridable by INVOKE_*
environment variables and flags), calls one function in scripts/ or trainer/, and prints the
outcome. The setup steps' tasks are made from their rows in scripts/registry.py, and `train`
takes every trainer option of trainer/config.py. A failed step ends the run with exit code 1
(2 when it refused the user's input) and one line that says what to do.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import shlex
import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit
from invoke import task as invoke_task

from scripts import registry
from scripts.check import in_colab, installed_version
from scripts.dataset import model_of, read_manifest, remember_model
from scripts.kinds import FLAG
from scripts.lock import acquire
from scripts.settings import TRUE, SettingError, check_flags, check_or_exit
from scripts.steps import Context, Result, StepFailed, run_step, table, write_report
from trainer.config import described, options
from trainer.errors import InputError, os_error_sentence

ROOT = Path(__file__).resolve().parent
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


def _keywords(function, flags: dict, context: bool = True):
    """Give `function` these keyword parameters (name: default), after invoke's context `c`:
    how a task takes flags that a table defines (a step's row, TrainConfig's fields)."""
    parameters = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)] if context else []
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value) for name, value in flags.items()
    ]
    function.__signature__ = inspect.Signature(parameters)
    return function


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    each setting from its flag when given (a yes/no flag left off: invoke.yaml's), else from config."""
    step = registry.step(name)
    flags = {key: None if value is False else value for key, value in flags.items()}
    try:
        return step.function, step.options(_conf(c, name), flags)
    except KeyError as missing:
        raise Exit(
            f"invoke: invoke.yaml has no {name}.{missing.args[0]}; restore it from the bundle's copy", code=2
        ) from None


def _exclusive(c, dry_run: bool) -> None:
    """Wait for any other invoke in this bundle to finish (dry runs change nothing, so need not)."""
    if dry_run:
        return
    try:
        acquire(ROOT, wait=float(_setting(c, "setup", "lock_wait")))
    except StepFailed as error:
        raise Exit(f"invoke: {error}", code=1) from None


def _run_one(c, name: str, dry_run: bool, **flags) -> Result:
    _exclusive(c, dry_run or registry.step(name).reads_only)
    function, options = _step_options(c, name, **flags)
    result = run_step(name, function, Context(dry_run=dry_run), **options)
    if result.status == "failed":
        raise Exit(f"{name} failed: {result.detail}", code=_failed_code(result))
    return result


def _failed_code(result: Result) -> int:
    """2 when the step refused the user's input (nothing changed), 1 when the machine failed it."""
    return 2 if result.refused else 1


def _flag_defaults(steps) -> dict:
    """Each step flag's default: off for a yes/no one, else None (both: invoke.yaml's value)."""
    return {key: False if step.settings[key].kind == FLAG else None for step in steps for key in step.flags()}


def _step_task(step: registry.Step):
    """A setup step's task, from its row in scripts/registry.py: its flags and --dry-run."""

    def run(c, dry_run=False, **flags):
        _run_one(c, step.name, dry_run, **flags)

    run.__name__ = run.__qualname__ = step.name
    run.__doc__ = step.doc
    _keywords(run, {**_flag_defaults([step]), "dry_run": False})
    return task(name=step.name, help={**step.flags(), "dry_run": step.dry_run})(run)


globals().update({step.name: _step_task(step) for step in registry.STEPS})


def setup(c, dry_run=False, report=None, **flags):  # its flags: every step's, from scripts/registry.py
    """Run check, apt, pins, libtensorflow, data and stage; print a summary table and write it as JSON."""
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


setup = task(
    help={
        "dry_run": "report what each step would do, change nothing",
        "report": "write the summary as JSON here (default runs/setup-report.json)",
        **registry.setup_flags(),
    }
)(_keywords(setup, {"dry_run": False, "report": None, **_flag_defaults(registry.STEPS)}))


TRAIN_FLAGS = {"name": None, "force": False, "publish": True, "dry_run": False}
TRAIN_HELP = {
    **{option.name: described(option) for option in options()},
    "folder": "image folder (default: what `invoke data` fetched)",
    "name": "the model's name, and its published folder's and record's; kept for the dataset fetched (default: the "
    "last one given for it, else the dataset's, e.g. ud-cd-classifier)",
    "force": "train even when the published model was trained from the same data, decisions, options and stack",
    "publish": "copy the run to the Drive folder afterwards (default on)",
    "dry_run": "print the trainer's options, run nothing",
}


def _train_options(c, flags: dict, name: str | None, training):
    """The checked TrainConfig (scripts/training.train_config), the folder its model is
    published to (None where that is not known: Colab without Drive) and the data step's manifest."""
    manifest = read_manifest(ROOT / _setting(c, "data", "dir"))
    try:
        with contextlib.chdir(ROOT):  # relative paths, as the trainer will read them
            config = training.train_config(_conf(c, "train"), flags, manifest, name)
    except training.NoData as error:
        raise Exit(f"train: {error}", code=1) from None
    except (SettingError, InputError) as error:
        raise Exit(f"train: {error}", code=2) from None
    published = _published_folder(c, config.model_name)
    if config.record is None:
        config = training.with_record(config, published, ROOT / _setting(c, "publish", "local_folder"), _say)
    return config, published, manifest


def _decide(c, config, published: Path | None, publish: bool, force: bool, training):
    """None when nothing is left to train (the published model is this one, or a finished run
    is, and is published now); else the options to train with (--output set to finish a run
    whose diagnostics were cut short)."""
    asked = None if force or _yes(_setting(c, "train", "force")) else training.request_of(config, ROOT, settle=True)
    if asked is None:
        return config
    request, decisions = asked
    _say(
        f"train: {decisions.described()}" + ("; `invoke decisions --clear` sets them aside" if decisions.chosen else "")
    )
    decision = training.decide(request, published if publish else None, ROOT / config.runs_dir)
    if decision.action != "train" and (said := training.keep_corrections(config, decisions, ROOT)):
        _say(f"train: {said}")
    if decision.action == "ok":
        _say(f"train: ok (the model in {decision.where} was trained from this data, these decisions, these options "
             "and this stack; --force retrains)")  # fmt: skip
        _tell(training, decision.where)
        return None
    if decision.action == "publish":
        if not publish:
            _say(f"train: ok ({decision.where} was trained from this data and these options; --no-publish)")
            _tell(training, decision.where)
            return None
        _say(f"train: {decision.where} was trained from this data and these options; publishing it")
        _publish(c, str(decision.where), None, dry_run=False, name=config.model_name)
        _tell(training, published or decision.where)
        return None
    if decision.action == "finish":
        # Killed during its diagnostics: the same options with that folder as --output finish them.
        _say(f"train: {decision.where} was trained from this data and these options; finishing its diagnostics")
        return training.finishing(config, decision.where)
    _say("train: training, since " + "; ".join(decision.reasons))
    return config


def _tell(training, folder: Path) -> None:
    lines = training.told(folder, in_colab())
    if lines:
        _say("\n".join(lines))


def train(c, *, name=None, force=False, publish=True, dry_run=False, **trainer_flags):
    """Train the classifier (options from invoke.yaml) unless the published model already is it; publish the run."""
    from scripts import training  # numpy and Pillow, which only training needs

    config, published, manifest = _train_options(c, trainer_flags, name, training)
    config = training.with_search(config, training.explicit(_conf(c, "train"), trainer_flags), _say)
    if publish and published is not None:
        _say(f"train: this data's model is {config.model_name}: published to {published} (the one before it is kept "
             f"as {published.name}.previous; other datasets' models are left alone)")  # fmt: skip
    if dry_run:
        print(f"$ python -m trainer train --config FILE, FILE holding: {training.as_flags(config)}")
        asked = training.request_of(config, ROOT)
        if asked is not None:
            _say(f"train: {asked[1].described()}")
        return
    _exclusive(c, dry_run)
    training.remember_dataset(config, manifest)
    chosen = name or trainer_flags.get("model_name")
    if chosen and manifest is not None and manifest.get("folder") == config.folder:
        remember_model(ROOT / _setting(c, "data", "dir"), config.model_name)  # the next plain `invoke train` means it
    if installed_version("tensorflow") is None:
        raise Exit("train: TensorFlow is not installed; run `invoke pins` (or `invoke setup`) first", code=1)
    config = _decide(c, config, published, publish, force, training)
    if config is None:
        return
    returncode, answer = training.run_trainer(training.comparing(config, published if publish else None), ROOT)
    run_dir = training.landed_run(answer, ROOT)
    if returncode != 0 and run_dir is None:
        raise Exit(f"train: {training.failure(returncode)}", code=training.exit_code(returncode))
    if publish:
        _publish(c, str(run_dir), None, dry_run=False, name=config.model_name)
    _tell(training, published if publish and published is not None else run_dir)
    if returncode != 0:
        # The model landed (and is published); a diagnostic (audit, heatmaps, exports, report) did not.
        raise Exit(f"train: {training.diagnostics_outcome(run_dir, returncode, publish)}",
                   code=training.exit_code(returncode))  # fmt: skip


train = task(
    help=TRAIN_HELP, auto_shortflags=False, optional=[option.name for option in options() if option.type == "bool"]
)(
    _keywords(train, {**{option.name: None for option in options()}, **TRAIN_FLAGS})
)  # every trainer option (trainer/config.py) is a flag: one left out is invoke.yaml's, else the trainer's default


def tune(c, *, budget="10m", name=None, **trainer_flags):
    """Search within a time budget for the options to train this dataset with; invoke train then trains the choice."""
    from scripts import training  # numpy and Pillow, which only training needs

    config, _, _ = _train_options(c, trainer_flags, name, training)
    _exclusive(c, False)
    if installed_version("tensorflow") is None:
        raise Exit("tune: TensorFlow is not installed; run `invoke pins` (or `invoke setup`) first", code=1)
    returncode = training.run_tuner(config, budget, ROOT)
    if returncode not in (0, 130):
        raise Exit(f"tune: {training.failure(returncode)}", code=training.exit_code(returncode))
    _say("tune: `invoke train` now trains what the search chose (an option you set wins over it, and it says so)"
         + ("; the same command resumes the search" if returncode else ""))  # fmt: skip
    if returncode:
        raise Exit("tune: stopped; the best so far is chosen", code=130)


tune = task(
    help={**{option.name: TRAIN_HELP[option.name] for option in options()}, "name": TRAIN_HELP["name"],
          "budget": "how long the search may take, featurizing included: 90s, 10m, 1h30m (default 10m); a resumed "
          "search has this budget again for the trials not yet done"},
    auto_shortflags=False, optional=[option.name for option in options() if option.type == "bool"],
)(_keywords(tune, {**{option.name: None for option in options()}, "budget": "10m", "name": None}))  # fmt: skip


def _yes(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE


def _published_folder(c, model: str) -> Path | None:
    """Where `invoke publish` puts this model, or None where that is not known (Colab without Drive)."""
    from scripts.publish import published_folder  # the Drive check, only when a task publishes

    return published_folder(_conf(c, "publish"), model)


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
        "name": "the model whose record to show (default: the dataset's, as invoke train names it)",
        "clear": "set every decision aside (kept in the record as cleared-<time>/, to restore by hand)",
        "export": "write the latest decision about each image to this CSV (a file --corrections reads)",
    }
)
def decisions(c, name=None, clear=False, export=None):
    """Show the dataset's record: its data, its published model, your review decisions; --clear sets them aside."""
    from scripts import decisions as record_of  # numpy and Pillow, through the corrections reader

    manifest = read_manifest(ROOT / _setting(c, "data", "dir")) or {}
    model = name or _conf(c, "train").get("model_name") or (model_of(manifest) if manifest else "ud-cd-classifier")
    folder = record_of.record_folder(_published_folder(c, model), model, ROOT / _setting(c, "publish", "local_folder"),
                                     lambda message: _say(f"decisions: {message}"))  # fmt: skip
    try:
        if clear:
            _exclusive(c, False)
            count, aside = record_of.clear(folder)
            _say(f"decisions: set {count} decision(s) aside in {aside}" if count else f"decisions: none in {folder}")
        if export:
            _say(f"decisions: {record_of.export(folder, Path(export))} decision(s) written to {export}")
        print("\n".join(record_of.summary(folder)))
    except InputError as error:
        raise Exit(f"decisions: {error}", code=2) from None
    except OSError as error:
        raise Exit(f"decisions: {os_error_sentence(error, doing='with')}", code=4) from None


@task(
    help={
        "quick": "small sizes and one repetition: shows the suite works (goals are not enforced)",
        "report": "also write the results as JSON to this file",
        "only": "comma list of figures: head_epoch, featurization, batched, train, rerun, validation, setup",
        "skip": "comma list of figures to leave out",
    }
)
def bench(c, quick=False, report=None, only=None, skip=None):
    """Measure the speed figures side by side (benchmarks/); exit 1 when a goal is missed."""
    command = [sys.executable, "-m", "benchmarks"]
    if quick:
        command.append("--quick")
    if report:
        command += ["--report", str(report)]
    if only:
        command += ["--only", *only.split(",")]
    if skip:
        command += ["--skip", *skip.split(",")]
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
