"""`python -m trainer`: the command layer. It parses options, calls one library function, and
turns expected mistakes into one line on stderr with exit code 2 (1 for anything else)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from trainer import device, runfolder
from trainer.config import TrainConfig, described, flag, options
from trainer.errors import CheckFailed, InputError

log = logging.getLogger("trainer")


class Parser(argparse.ArgumentParser):
    """Usage errors as one line that says where to look, like every other input error."""

    def error(self, message: str) -> None:
        raise InputError(f"{message} (see '{self.prog} --help')")


TYPES = {"str": str, "str | None": str, "int": int, "float": float, "bool": bool}


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, from its type, default and help (trainer/config.py)."""
    for option in options():
        kind = TYPES[option.type]
        if kind is bool:
            action = argparse.BooleanOptionalAction if option.default else "store_true"
            parser.add_argument(flag(option.name), action=action, default=option.default, help=described(option))
        else:
            parser.add_argument(flag(option.name), type=kind, default=option.default, help=described(option))


def get_args_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m trainer", description="Train, evaluate and use an image classifier.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    train = commands.add_parser("train", help="train a classifier on a folder or CSV of labelled images")
    add_train_options(train)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained run on labelled images")
    evaluate.add_argument("--model", required=True, help="run folder written by 'train'")
    evaluate.add_argument("--folder", help="images to evaluate on (default: the run's own test split)")
    evaluate.add_argument("--file", help="CSV with ImagePath,Label, found in --folder or the working directory")
    evaluate.add_argument("--strict", action="store_true", help="fail on any unusable row")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="label images: writes ImagePath,PredictedLabel,Score")
    predict.add_argument(
        "--model", required=True, help="run folder written by 'train', a .keras file, a SavedModel or a .tflite file"
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders of images, or a CSV")
    predict.add_argument("--output", help="CSV to write (default: standard output)")
    predict.add_argument("--batch-size", type=int, default=32)

    explain = commands.add_parser("explain", help="heatmaps of where the model looks in any images")
    explain.add_argument("--model", required=True, help="run folder written by 'train', or its .keras file")
    explain.add_argument("paths", nargs="+", metavar="IMAGE", help="image files or folders of images")
    explain.add_argument("--output", default="heatmaps", help="folder for NAME.heatmap.png (default heatmaps)")

    audit = commands.add_parser("audit", help="labels to check: unlikely labels, near-duplicates, outliers")
    audit.add_argument("--folder", required=True, help="image folder; without --file, one subfolder per class")
    audit.add_argument("--file", help="CSV with ImagePath,Label, found in --folder or the working directory")
    audit.add_argument(
        "--label-folder",
        default="auto",
        choices=("auto", "top", "leaf"),
        help="with class folders, which level names the class (as for train; default auto)",
    )
    audit.add_argument("--merge-labels", help="join labels into classes, NEW=OLD+OLD,... (as for train)")
    audit.add_argument("--workspace", default="workspace", help="the feature cache (default ./workspace)")
    audit.add_argument("--output", default="audit.csv", help="the list to write (default audit.csv)")
    audit.add_argument("--seed", type=int, default=0, help="for the held-out folds (default 0)")

    cache = commands.add_parser("cache", help="what the feature cache holds; drop what no dataset of yours uses")
    cache.add_argument(
        "--workspace", default="workspace", help="the workspace whose cache to read (default ./workspace)"
    )
    cache.add_argument("--keep-folder", help="drop every entry but this dataset's images (with --keep-file for a CSV)")
    cache.add_argument("--keep-file", help="the CSV of the dataset to keep, as train's --file")

    export = commands.add_parser("export", help="(re)write a run's exports and check them against Keras")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument(
        "--formats", default="all", help="all, or a comma list of saved_model, tflite, onnx (default all)"
    )
    export.add_argument("--no-check", dest="check", action="store_false", help="write without the parity check")
    export.add_argument(
        "--check-only", action="store_true", help="check the exports already in RUN_DIR without rewriting them"
    )
    export.add_argument(
        "--benchmark", action="store_true", help="also each format's test accuracy and latency at batch 1 and 32"
    )

    report = commands.add_parser("report", help="redraw a run's pictures and rewrite its report.html")
    report.add_argument("run_dir", metavar="RUN_DIR")

    demo = commands.add_parser("demo-data", help="write the synthetic CD/UD demo dataset")
    demo.add_argument("out_dir", metavar="OUT_DIR")
    demo.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--image-size", type=int, default=160, help="pixels (default 160)")
    return parser


def config_from(args: argparse.Namespace) -> TrainConfig:
    names = {field.name for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{key: value for key, value in vars(args).items() if key in names})


def train_config(argv: list[str]) -> TrainConfig:
    """The TrainConfig a `train` command line asks for (its arguments after `train`), checked;
    InputError as the command would report it."""
    return config_from(get_args_parser().parse_args(["train", *argv])).check()


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
    if args.command == "demo-data":
        from trainer.demo import make_demo_data

        csv_path = make_demo_data(args.out_dir, args.per_class, args.seed, args.image_size)
        print(csv_path)
        return 0
    if args.command == "train":
        from trainer import train
        from trainer.diagnostics import EXIT_DIAGNOSTICS, DiagnosticsFailed

        try:
            train.main(config_from(args))  # prints the run folder once its model is complete
        except DiagnosticsFailed as failure:
            print(f"trainer: warning: {failure}", file=sys.stderr)
            return EXIT_DIAGNOSTICS
        return 0
    if args.command == "report":
        from trainer.report import build

        print(build(args.run_dir))
        return 0
    if args.command == "cache":
        from trainer.features import summarize_caches

        for line in summarize_caches(args.workspace, args.keep_folder, args.keep_file):
            print(line)
        return 0
    if args.command == "export":
        from pathlib import Path

        from trainer.export import export_run, parse_formats

        formats = parse_formats(args.formats)
        if not formats:
            raise InputError("--formats none: nothing to export")
        if args.check_only and not args.check:
            raise InputError("--check-only and --no-check together do nothing")
        export_run(args.run_dir, formats, args.check, write=not args.check_only, benchmark=args.benchmark)
        if (Path(args.run_dir) / runfolder.REPORT).is_file():
            from trainer.report import build

            build(args.run_dir)
        print(Path(args.run_dir) / runfolder.EXPORTS)
        return 0
    if getattr(args, "batch_size", 1) < 1:
        raise InputError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.command == "evaluate":
        import json
        from pathlib import Path

        from trainer.evaluate import evaluate_run, summary_line, write_metrics

        metrics = evaluate_run(args.model, args.folder, args.file, args.strict, args.batch_size)
        log.info("%s", summary_line(metrics))
        if args.output:
            write_metrics(metrics, Path(args.output))
        print(json.dumps(metrics, indent=2))
        return 0
    if args.command == "audit":
        from pathlib import Path

        from trainer import data
        from trainer.audit import audit_splits, write_lists
        from trainer.predict import log_report

        rows, report = data.load_rows(args.folder, args.file, args.label_folder, args.merge_labels)
        rows = data.validate(rows, report)
        log_report(report)
        labels = sorted({row.label for row in rows})
        rows, findings, summary = audit_splits(
            {"all": rows}, labels, None, args.workspace, args.seed, report.thumbnails
        )
        write_lists(Path(args.output), rows, findings, labels)
        log.info(
            "audit of %d images: %s",
            summary["images"],
            ", ".join(f"{n} {kind}" for kind, n in summary["flagged"].items()),
        )
        print(args.output)
        return 0
    if args.command == "explain":
        from pathlib import Path

        from trainer.explain import explain_images
        from trainer.predict import collect_images, load_run

        rows = explain_images(load_run(args.model), collect_images(args.paths), Path(args.output))
        print("ImagePath,PredictedLabel,Score,Heatmap")
        for row in rows:
            print(f"{row['path']},{row['predicted']},{row['score']:.6f},{row['heatmap']}")
        return 0
    if args.command == "predict":
        from trainer.predict import load_run, predict_images

        counts = predict_images(load_run(args.model), args.paths, args.output, args.batch_size)
        return 1 if counts["errors"] else 0
    raise AssertionError(args.command)


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
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except InputError as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 2
    except CheckFailed as error:
        print(f"trainer: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("trainer: interrupted", file=sys.stderr)
        return 130
