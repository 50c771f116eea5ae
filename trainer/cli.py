"""`python -m trainer`: the command layer. One small function per command parses nothing and
decides nothing: it calls the library and prints what the command promises on stdout. Expected
mistakes become one line on stderr with exit code 2 (1 for a check that fails, 3 for a run whose
model landed but a diagnostic did not)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer import device, runfolder, searchfile
from trainer import result as run_result
from trainer.config import TrainConfig, parse_formats
from trainer.data.demo import make_demo_data
from trainer.data.load import load_unsplit
from trainer.diagnostics.audit import audit_data
from trainer.diagnostics.explain import explain_images
from trainer.diagnostics.runner import DiagnosticsFailed, redo
from trainer.errors import (
    EXIT_CHECK,
    EXIT_DIAGNOSTICS,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_MACHINE,
    CheckFailed,
    InputError,
    MachineError,
    counted,
    is_machine_error,
    os_error_sentence,
)
from trainer.evaluate import evaluate_run
from trainer.export.formats import graphs_in
from trainer.features.cache import summarize_caches
from trainer.flags import Parser, add_train_options, given
from trainer.metrics import summary_line, write_metrics
from trainer.places import workspace
from trainer.predict import collect_images, load_run, predict_images
from trainer.train import main as train_main
from trainer.tune import described, parse_budget
from trainer.tune import tune as search_within

log = logging.getLogger("trainer")


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The options a command line gives, over its --config file's when it has one; with --search
    on the command line, the search's choice under every option the command line gives."""
    base = TrainConfig.from_file(args.config).to_dict() if getattr(args, "config", None) else {}
    flags = given(args)
    values = {**base, **flags}
    if flags.get("search"):
        state = searchfile.read(Path(flags["search"]))
        if state is None:
            raise InputError(f"--search: {flags['search']} is not there; run `python -m trainer tune` first")
        values, said = searchfile.applied(TrainConfig(**values).to_dict(), set(flags), state, flags["search"])
        for line in said:
            log.info("%s", line)
    return TrainConfig(**values)


def train_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig a `train` command line asks for (its arguments after `train`), checked;
    InputError as the command would report it."""
    return config_from(get_args_parser().parse_args(["train", *argv])).check()


# ---------------------------------------------------------------------------------------------
# The commands: each calls the library and prints what it promises


def train(args) -> int:

    try:
        run_dir = train_main(config_from(args), args.result)  # prints the run folder once its model is complete
    except DiagnosticsFailed as failure:
        _tell(failure.run_dir, args.result)
        print(f"trainer: warning: {failure}", file=sys.stderr)
        return EXIT_DIAGNOSTICS
    _tell(run_dir, args.result)
    return 0


def _tell(run_dir: Path, result: str | None) -> None:
    """The run's last lines, for a person; a caller that asked for --result (invoke train) tells
    its own, with the published paths."""
    if result is None and (run_dir / runfolder.METRICS).is_file():
        review = "the report's review form, then train again with --corrections corrections.csv"
        print("\n".join(run_result.summary(run_result.answer(run_dir, "done"), review=review)), file=sys.stderr)


def evaluate(args) -> int:

    _check_batch_size(args)
    metrics = evaluate_run(args.model, args.folder, args.file, args.strict, args.batch_size)
    log.info("%s", summary_line(metrics))
    if args.output:
        write_metrics(metrics, Path(args.output))
    print(json.dumps(metrics, indent=2))
    return 0


def predict(args) -> int:

    _check_batch_size(args)
    counts = predict_images(load_run(args.model, trust_graph=args.trust_graph), args.paths, args.output,
                            args.batch_size, args.allow_outside_folder)  # fmt: skip
    return 1 if counts["errors"] else 0


def explain(args) -> int:

    rows = explain_images(load_run(args.model), collect_images(args.paths), Path(args.output))
    print("ImagePath,PredictedLabel,Score,Heatmap")
    for row in rows:
        print(f"{row['path']},{row['predicted']},{row['score']:.6f},{row['heatmap']}")
    return 0


def audit(args) -> int:

    config = config_from(args).check()
    summary = audit_data(load_unsplit(config), None, workspace(config), Path(args.output), config)
    log.info("audit of %s: %s", counted(summary["images"], "image"),
             ", ".join(counted(n, kind) for kind, n in summary["flagged"].items()))  # fmt: skip
    print(args.output)
    return 0


def tune(args) -> int:

    state, path = search_within(config_from(args), parse_budget(args.budget))
    chosen = state["chosen"]
    base = state["binding"]["space"]["given"]  # the options as given, as the search recorded them
    print(f"search: {path}")
    print(f"chosen: {described(chosen['options'], base)} ({chosen['mean']:.3f} +- {chosen['se']:.3f})")
    if "test" in state and state["test"].get("chosen") is not None:
        test = state["test"]
        given_score = f", the options as given {test['given']:.3f}" if test.get("given") is not None else ""
        print(f"test photos ({test['photos']}): chosen {test['chosen']:.3f}{given_score}")
    print(f"train it: python -m trainer train --search {path} (with the options given here), or invoke train")
    return EXIT_INTERRUPTED if state["sessions"][-1]["ended"] == "interrupted" else 0


def cache(args) -> int:

    for line in summarize_caches(args.workspace, args.keep_folder, args.keep_file):
        print(line)
    return 0


def export(args) -> int:

    formats = parse_formats(args.formats)
    if not formats:
        raise InputError("--formats none: nothing to export")
    if args.check_only and not args.check:
        raise InputError("--check-only and --no-check together do nothing")
    if args.check_only and not args.trust_graph:
        graphs = graphs_in(Path(args.run_dir), formats)
        if graphs:
            raise InputError(f"--check-only would run the TensorFlow graph stored in {graphs[0]}, which can read and "
                             "write files on this machine; pass --trust-graph if you or this bundle made it, or leave "
                             "--check-only out (the exports are then written again from model.keras, safe-mode "
                             "loaded, and checked)")  # fmt: skip
    redo(args.run_dir, ("exports", "report"), formats=formats, check=args.check, write=not args.check_only,
         benchmark=args.benchmark)  # fmt: skip
    print(Path(args.run_dir) / runfolder.EXPORTS)
    return 0


def report(args) -> int:

    redo(args.run_dir, ("report",))
    print(Path(args.run_dir) / runfolder.REPORT)
    return 0


def demo_data(args) -> int:

    print(make_demo_data(args.out_dir, args.per_class, args.seed, args.image_size))
    return 0


def _check_batch_size(args) -> None:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1 (got {args.batch_size})")


# ---------------------------------------------------------------------------------------------
# The parser: each command's name, help, arguments and function


def arg(*names: str, **settings) -> tuple:
    return names, settings


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: tuple = ()
    train_options: tuple[str, ...] | None = ()  # TrainConfig options it takes too (None: all)


MODEL_HELP = "run folder written by 'train'"
TRUST_HELP = (
    "run the TensorFlow graph a SavedModel, or a .tflite file with TensorFlow operations, carries: it can "
    "read and write files, so only for a model you or this bundle made (RELIABILITY.md's trust model)"
)
CSV_HELP = "CSV with ImagePath,Label, found in --folder or the working directory"
COMMANDS = (
    Command("train", "train a classifier on a folder or CSV of labelled images", train, (
        arg("--config", metavar="FILE", help="options as JSON (a run's config.json, or what invoke train hands "
            "over); flags given beside it win"),
        arg("--result", metavar="FILE", help="write what the run did here as JSON (trainer/result.py): the run "
            "folder, the model, the headline figures, what it decided, the diagnostics' outcome"),
    ), train_options=None),
    Command("evaluate", "metrics of a trained run on labelled images", evaluate, (
        arg("--model", required=True, help=MODEL_HELP),
        arg("--folder", help="images to evaluate on (default: the run's own test split)"),
        arg("--file", help=CSV_HELP),
        arg("--strict", action="store_true", help="fail on any unusable row"),
        arg("--batch-size", type=int, default=32),
        arg("--output", help="also write the metrics to this JSON file"),
    )),
    Command("predict", "label images: writes ImagePath,PredictedLabel,Score", predict, (
        arg("--model", required=True, help=f"{MODEL_HELP}, a .keras file, a SavedModel or a .tflite file"),
        arg("paths", nargs="+", metavar="PATH", help="image files, folders of images, or a CSV"),
        arg("--output", help="CSV to write (default: standard output)"),
        arg("--batch-size", type=int, default=32),
        arg("--trust-graph", action="store_true", help=TRUST_HELP),
        arg("--allow-outside-folder", action="store_true",
            help="let a CSV's rows, and links in a folder, name images outside the CSV's or the folder's own folder"),
    )),
    Command("explain", "heatmaps of where the model looks in any images", explain, (
        arg("--model", required=True, help=f"{MODEL_HELP}, or its .keras file"),
        arg("paths", nargs="+", metavar="IMAGE", help="image files or folders of images"),
        arg("--output", default="heatmaps", help="folder for NAME.heatmap.png (default heatmaps)"),
    )),
    Command("audit", "labels to check: unlikely labels, near-duplicates, outliers", audit, (
        arg("--output", default="audit.csv", help="the list to write (default audit.csv)"),
    ), train_options=("folder", "file", "label_folder", "merge_labels", "corrections", "record", "model_name", "seed",
                      "head_c", "class_weights", "workspace")),
    Command("tune", "search within a time budget for the options to train with (trainer/tune.py)", tune, (
        arg("--budget", default="10m", help="how long the search may take, featurizing included: 90s, 10m, 1h30m "
            "(default 10m); a resumed search has this budget again for the trials not yet done"),
        arg("--config", metavar="FILE", help="options as JSON, as train's --config; flags given beside it win"),
    ), train_options=None),
    Command("cache", "what the feature cache holds; drop what no dataset of yours uses", cache, (
        arg("--workspace", default="workspace", help="the workspace whose cache to read (default ./workspace)"),
        arg("--keep-folder", help="drop every entry but this dataset's images (with --keep-file for a CSV)"),
        arg("--keep-file", help="the CSV of the dataset to keep, as train's --file"),
    )),
    Command("export", "(re)write a run's exports and check them against Keras", export, (
        arg("run_dir", metavar="RUN_DIR"),
        arg("--formats", default="all",
            help=f"all, or a comma list of {', '.join(parse_formats('all'))} (default all)"),
        arg("--no-check", dest="check", action="store_false", help="write without the parity check"),
        arg("--check-only", action="store_true", help="check the exports already in RUN_DIR without rewriting them"),
        arg("--benchmark", action="store_true", help="also each format's test accuracy and latency at batch 1 and 32"),
        arg("--trust-graph", action="store_true", help=TRUST_HELP),
    )),
    Command("report", "redraw a run's pictures and rewrite its report.html", report, (arg("run_dir", metavar="RUN_DIR"),)),
    Command("demo-data", "write the synthetic CD/UD demo dataset", demo_data, (
        arg("out_dir", metavar="OUT_DIR"),
        arg("--per-class", type=int, default=60, help="images per class (default 60)"),
        arg("--seed", type=int, default=0),
        arg("--image-size", type=int, default=160, help="pixels (default 160)"),
    )),
)  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m trainer", description="Train, evaluate and use an image classifier.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    parser.commands = {}
    for command in COMMANDS:
        sub = parser.commands[command.name] = commands.add_parser(command.name, help=command.help)
        sub.set_defaults(run=command.run)
        for names, settings in command.arguments:
            sub.add_argument(*names, **settings)
        if command.train_options != ():
            add_train_options(sub, command.train_options)
    return parser


def _legacy(argv: list[str]) -> list[str]:
    """The original ML.NET app was run as `--train --folder Images --file training_data.csv`."""
    if argv and argv[0] in ("--train", "-t"):
        return ["train", *argv[1:]]
    return argv


def run(argv: list[str]) -> int:
    args = get_args_parser().parse_args(_legacy(argv))
    if args.command is None:
        get_args_parser().print_help()
        return 2
    return args.run(args)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now, so that redirections (and tests) see the log."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ logging is noise for users; on a machine without an NVIDIA device its
    # "failed call to cuInit" error is expected, so hide errors there too.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/dev/nvidiactl") else "3")
    device.onednn()  # before TensorFlow is imported: it reads the choice once
    if not any(isinstance(handler, _StderrHandler) for handler in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    # TensorFlow's Python warnings (tf.function retracing when predict meets a new batch shape,
    # which the operating point's folds do) say nothing a user can act on.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    previous = interrupt_once()
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except InputError as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return EXIT_INPUT
    except CheckFailed as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return EXIT_CHECK
    except MachineError as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return EXIT_MACHINE
    except OSError as error:
        if not is_machine_error(error):
            raise
        print(f"trainer: error: {os_error_sentence(error, doing='at')}", file=sys.stderr)
        return EXIT_MACHINE
    except KeyboardInterrupt:
        print("trainer: interrupted; nothing half-written is kept, and the same command resumes", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def interrupt_once():
    """Ctrl-C stops the command once: the first SIGINT raises KeyboardInterrupt where the
    command is, and later ones (a terminal and `invoke` may both send one) are ignored while it
    cleans up, so that cleanup itself is never cut short. Returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(number, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, stop)
