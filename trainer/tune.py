"""`python -m trainer tune` (and `invoke tune`): a search within a time budget, over what the
cached features make cheap, grown from --backbone auto's ranking (trainer/choose.py).

Two stages, on at most SEARCH_IMAGES of the training and validation images (the test split is
never seen by a trial):

1. fast: each feature set (a backbone at a size: every candidate at its own size and at
   --image-size) is featurized once, every pooling from the one backbone pass, into the
   content-keyed cache the training run then reads; then each (pooling, --head-c, class weights)
   is scored by the converged head (trainer.head, seconds a trial) over FOLDS-fold cross-validation
   repeated REPEATS times;
2. deployed: the few best (FINALISTS, after the one-standard-error rule) and the options as given
   are scored again with the head the run deploys (Keras, tens of seconds a fold), with and
   without the views (--feature-augment) and the refit (--head-refit), over KERAS_FOLDS folds.

A trial's score is its folds' mean accuracy and the spread its standard error (the folds'
standard deviation over the square root of their number). The choice follows the one-standard-
error rule: of the trials within one standard error of the best, the one with fewest options
changed from those given (then the best score). Deployed trials are chosen among when any ran;
else fast ones, with the views and the refit as given.

The budget covers everything, featurizing included: each step's time is estimated before it
starts (from what this search measured, else from a probe) and a step that would end past the
budget is not started, so the search stops within it save for a step that took longer than
estimated. Each run of the command has its own budget; a resumed search spends it on the trials
not yet done. Ctrl-C ends the search with the best so far chosen and recorded. The state
(trainer/searchfile.py) is written after every trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer import device, searchfile
from trainer.choose import candidates
from trainer.config import TrainConfig, flag
from trainer.data.groups import split_keys
from trainer.data.load import load_data
from trainer.efficientnet_lite import VARIANTS
from trainer.errors import InputError, counted
from trainer.features.cache import FeatureCache, cache_key
from trainer.features.extract import Stopped
from trainer.features.poolings import extract_poolings
from trainer.features.views import VIEWS
from trainer.fit.loop import class_weights
from trainer.head import converged_out_of_fold, deployed_fold_scores, standardized
from trainer.places import record, workspace

log = logging.getLogger("trainer")

SEARCH_IMAGES = 3000  # training and validation images the trials see, at most (the same share of each class)
TEST_IMAGES = 2000  # test images the chosen and the given options are scored on, at most
FOLDS, REPEATS = 5, 2
KERAS_FOLDS = 3
FINALISTS = 2
HEAD_CS = (0.005, 0.02, 0.1)
POOLINGS = ("avg", "max", "gem", "avgmax")
CLASS_WEIGHTS = ("auto", "balanced", "none")
VIEWS_TRIED = ("dihedral", "none")
# Seconds per image to featurize before anything is measured: EfficientNet-Lite0 at 224 px on two
# CPU cores (about 72 images/s), scaled by each candidate's pixels and depth. A GPU is faster, so
# the first estimate errs long; a probe of PROBE_IMAGES then measures.
PRIOR_SECONDS_PER_IMAGE = 1 / 72
DEPTH = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.35, "efficientnet_lite2": 1.6}
PROBE_IMAGES = 32
LOAD_SECONDS = 8.0  # building a backbone (and once, converting it for ONNX Runtime) before the first image


@dataclass(frozen=True)
class Trial:
    stage: str  # "fast" or "deployed"
    options: dict  # searchfile.SEARCHED -> value

    @property
    def id(self) -> str:
        return self.stage + " " + json.dumps(self.options, sort_keys=True)

    @property
    def feature_set(self) -> tuple[str, int]:
        return self.options["backbone"], self.options["image_size"]


class Budget:
    """Seconds from now; a step may start when its estimate ends within them."""

    def __init__(self, seconds: float):
        self.seconds, self.started = float(seconds), time.monotonic()
        self.share = 1.0  # of the seconds the current stage may reach (the fast stage leaves room)
        self.reserve = 0.0  # seconds kept for scoring the choice on the test photos

    def spent(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.spent()

    def allows(self, estimate: float) -> bool:
        """A step may start: it would end within the stage's share, less the reserve."""
        return self.spent() + estimate <= self.seconds * self.share - self.reserve

    def fits(self, estimate: float) -> bool:
        """A step under way may go on: its next part would end within the budget, less the reserve."""
        return self.spent() + estimate <= self.seconds - self.reserve


class Abandoned(Exception):
    """A trial stopped between folds: its next fold would have ended past the budget."""


def parse_budget(text: str) -> float:
    """--budget: 90s, 10m, 1h, 1h30m or plain seconds -> seconds; InputError otherwise."""

    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not match or not any(match.groups()):
        raise InputError(f"--budget: {text!r} is not a time; e.g. --budget 10m, 90s or 1h30m")
    hours, minutes, seconds = (float(part or 0) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 10:
        raise InputError(f"--budget: {text!r} is under 10 seconds; a search needs at least one featurizing")
    return total


def native_size(backbone: str) -> int:

    return VARIANTS[backbone].native_size if backbone in VARIANTS else 299 if backbone == "inception_v3" else 224


def given(config: TrainConfig) -> dict:
    """The searched options as given: what `train` would do without a search."""
    return {name: getattr(config, name) for name in searchfile.SEARCHED}


def changed(options: dict, base: dict) -> int:
    return sum(options[name] != base[name] for name in searchfile.SEARCHED)


def fast_trials(config: TrainConfig, backbones: list[str], weight_choices: list[str]) -> list[Trial]:
    """Every fast trial, in the order they run: the given feature set first (the given options its
    first trial), then each candidate's, cheapest first; within one, the given values first."""
    base = given(config)
    sets = [(base["backbone"], base["image_size"])]
    for backbone in sorted(backbones, key=lambda name: DEPTH.get(name, 2.0)):
        for size in (native_size(backbone), config.image_size):
            if (backbone, size) not in sets:
                sets.append((backbone, size))
    first = lambda values, value: [value, *(v for v in values if v != value)]  # noqa: E731
    trials = []
    for backbone, size in sets:
        for pooling in first(POOLINGS, base["pooling"]):
            for c in first(sorted({*HEAD_CS, base["head_c"]}), base["head_c"]):
                for weights in first(weight_choices, base["class_weights"]):
                    options = {**base, "backbone": backbone, "image_size": size, "pooling": pooling, "head_c": c,
                               "class_weights": weights}  # fmt: skip
                    trials.append(Trial("fast", options))
    return trials


def deployed_trials(finalists: list[dict], base: dict) -> list[Trial]:
    """The given options and each finalist, with the views as given and as VIEWS_TRIED, and
    (the given and the best finalist) without the refit: the given options first."""
    trials = []
    for number, options in enumerate([base, *(o for o in finalists if o != base)]):
        for views in [options["feature_augment"], *(v for v in VIEWS_TRIED if v != options["feature_augment"])]:
            trials.append(Trial("deployed", {**options, "feature_augment": views}))
        if number < 2:
            trials.append(Trial("deployed", {**options, "head_refit": not options["head_refit"]}))
    return list({trial.id: trial for trial in trials}.values())


def one_standard_error(results: list[dict], base: dict) -> dict:
    """Of the results within one standard error of the best mean, the one with fewest options
    changed from `base`, then the best mean, then the first run. Each result: options, mean, se."""
    best = max(results, key=lambda result: result["mean"])
    close = [result for result in results if result["mean"] >= best["mean"] - best["se"]]
    return min(close, key=lambda result: (changed(result["options"], base), -result["mean"], results.index(result)))


def spread(scores: list[float]) -> tuple[float, float]:
    """(mean, standard error) of fold scores."""
    values = np.asarray(scores, dtype=float)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), se


def described(options: dict, base: dict) -> str:
    """The options that differ from `base`, as flags; 'as given' when none do."""

    differ = [f"{flag(name)} {value}" for name, value in options.items() if base.get(name) != value]
    return " ".join(differ) if differ else "the options as given"


def binding(config: TrainConfig, data, space: dict) -> dict:
    """What a search is bound to: a state bound to anything else is not continued."""
    return {
        "data": data.fingerprint(),
        "split": {name: getattr(config, name) for name in searchfile.SPLIT_OPTIONS},
        "space": space,
    }


def minutes(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def search_config(config: TrainConfig, options: dict) -> TrainConfig:
    return dataclasses.replace(config, **options)


# ---------------------------------------------------------------------------------------------
# The search


class Search:
    """One search over one dataset: its images, folds and features, its state, its budget."""

    def __init__(self, config: TrainConfig, data, workspace: Path, state_path: Path, budget: Budget):

        self.config, self.data, self.workspace, self.path, self.budget = config, data, workspace, state_path, budget
        self.rows = sample(data.parts["train"] + data.parts["validation"], data.labels, SEARCH_IMAGES)
        self.test = sample(data.parts["test"], data.labels, TEST_IMAGES)
        index = {label: number for number, label in enumerate(data.labels)}
        self.labels = np.array([index[row.label] for row in self.rows])
        self.test_labels = np.array([index[row.label] for row in self.test])
        keys = [str(key) for key in split_keys(self.rows, data.report.thumbnails, config.group_pattern, config.seed)]
        self.fast_splits = [split for repeat in range(REPEATS) for split in folds(self.labels, keys, FOLDS, repeat)]
        self.deployed_splits = folds(self.labels, keys, KERAS_FOLDS, 0)
        backbones = [name for name, _ in candidates(config.candidates, accelerated())]
        # Class weights that weigh the same here are one trial (on balanced classes all three are).
        effect, weight_choices = {}, []
        for choice in [config.class_weights, *CLASS_WEIGHTS]:
            weighed = class_weights(dataclasses.replace(config, class_weights=choice), self.labels, len(data.labels),
                                    quiet=True)  # fmt: skip
            same = weighed is None or len(set(weighed.values())) == 1  # equal weights are no weights
            said = "equal" if same else json.dumps(weighed, sort_keys=True)
            if said not in effect:
                effect[said] = choice
                weight_choices.append(choice)
        self.base = given(config)
        self.fast = fast_trials(config, backbones, weight_choices)
        space = {"backbones": backbones, "images": len(self.rows), "folds": [FOLDS, REPEATS, KERAS_FOLDS],
                 "trials": len(self.fast), "given": self.base}  # fmt: skip
        self.state = self._bound(binding(config, data, space))
        self.features: dict = {}  # (backbone, size) -> {pooling: [n, D]} of self.rows
        self.test_features: dict = {}  # (backbone, size, pooling) -> [t, D] of self.test
        self.views: dict = {}  # (backbone, size, pooling, views) -> [V, n, D] of self.rows
        self.scaled: dict = {}  # the last (backbone, size, pooling, images) -> the converged head's input
        self.done = {trial["id"]: trial for trial in self.state["trials"]}
        self.planned = {"fast": len(self.fast)}  # trials in each stage, for the progress lines

    def _bound(self, bound: dict) -> dict:
        """The state to continue: the file's when it is bound to this search, else a new one
        (a file bound to other data or options is kept beside, as search-<time>.json)."""
        state = searchfile.read(self.path)
        if state is not None and state.get("binding") != bound:
            what = [part for part in ("data", "split", "space") if state["binding"].get(part) != bound[part]]
            aside = self.path.with_name(f"search-{time.strftime('%Y%m%d-%H%M%S')}.json")
            self.path.rename(aside)
            log.info("search: %s was bound to other %s; kept as %s, and this search starts anew", self.path,
                     " and ".join(what), aside.name)  # fmt: skip
            state = None
        if state is None:
            return {"version": searchfile.VERSION, "binding": bound, "trials": [], "running": None, "sessions": [],
                    "rates": {}, "chosen": None}  # fmt: skip
        if state["trials"]:
            log.info("search: resuming %s: %s done earlier; this run has a budget of its own, %s, for the rest",
                     self.path, counted(len(state["trials"]), "trial"), minutes(self.budget.seconds))  # fmt: skip
        if state.get("running"):
            log.info("search: the trial a stop cut short runs again: %s", state["running"])
        return state

    def save(self) -> None:
        searchfile.write(self.path, self.state)

    # -- features, each feature set once, within the budget

    def _rate(self, backbone: str, size: int) -> float:
        """Seconds per image to featurize: measured by this search (the state keeps it), else
        the prior, scaled by pixels and depth from what was measured for another set."""
        rates = self.state["rates"]
        if f"{backbone}@{size}" in rates:
            return rates[f"{backbone}@{size}"]
        cost = lambda name, pixels: DEPTH.get(name, 2.0) * (pixels / 224) ** 2  # noqa: E731
        for key, rate in rates.items():
            name, pixels = key.rsplit("@", 1)
            return rate * cost(backbone, size) / cost(name, int(pixels))
        return PRIOR_SECONDS_PER_IMAGE * cost(backbone, size)

    def pooled(self, backbone: str, size: int, views: str = "none", pooling: str = "avg") -> dict | None:
        """{pooling: features of self.rows} for one feature set, and with `views` other than
        none, the views of self.rows (self.views); featurized where the cache lacks them, when the
        estimate fits the budget; None when it does not. The test photos are featurized only for
        the two feature sets scored on them (tested)."""

        other = VIEWS[views][1:]
        key = (backbone, size, pooling, views)
        if (backbone, size) in self.features and (not other or key in self.views):
            return self.features[(backbone, size)]
        parts = [(self.rows, ("id",))] + ([(self.rows, other)] if other else [])
        poolings = POOLINGS if not other else (pooling,)
        features = self._featurized(backbone, size, poolings, parts, f" with {views} views" if other else "")
        if features is None:
            return None
        images = len(self.rows)
        # Copies: the arrays extract_poolings returns are views of one array holding every pooling.
        own = {p: np.ascontiguousarray(f[:images]) for p, f in features.items()}
        self.features.setdefault((backbone, size), {}).update(own)
        if other:
            rest = np.ascontiguousarray(features[pooling][images:])
            self.views[key] = rest.reshape(len(other), len(self.rows), -1)
        return self.features[(backbone, size)]

    def tested(self, backbone: str, size: int, pooling: str) -> np.ndarray | None:
        """The test photos' features for one feature set and pooling (None: no time for them)."""
        if (backbone, size, pooling) not in self.test_features:
            features = self._featurized(backbone, size, (pooling,), [(self.test, ("id",))], " (the test photos)")
            if features is None:
                return None
            self.test_features[(backbone, size, pooling)] = np.ascontiguousarray(features[pooling])
        return self.test_features[(backbone, size, pooling)]

    def _featurized(self, backbone: str, size: int, poolings: tuple, parts: list, what: str) -> dict | None:
        """extract_poolings within the budget: None when its estimate does not fit, or when it
        reaches the budget (what it featurized then stays in the cache)."""
        lacking = self._lacking(backbone, size, poolings, parts)
        estimate = lacking * self._rate(backbone, size) + (LOAD_SECONDS if lacking else 0.0)
        if not self.budget.allows(estimate):
            log.info("search: %s at %d px%s would take about %s to featurize (%s); %s left: not featurized",
                     backbone, size, what, minutes(estimate), counted(lacking, "image view"),
                     minutes(self.budget.left()))  # fmt: skip
            return None
        started = time.monotonic()
        try:
            features, made = extract_poolings(backbone, size, "auto", parts, self.workspace, poolings,
                                              stop=lambda: not self.budget.fits(0.0))  # fmt: skip
        except Stopped as stopped:
            log.info("search: featurizing %s at %d px reached the budget: %s", backbone, size, stopped)
            return None
        if made["weights"] == "none":  # as --backbone auto: random features say nothing of a backbone
            log.info("search: %s has no pretrained weights here; not searched", backbone)
            return None
        if lacking:  # the pass's time less the backbone's loading (at most most of it), per image view
            took = time.monotonic() - started
            self.state["rates"][f"{backbone}@{size}"] = round(max(took - LOAD_SECONDS, took / 4) / lacking, 5)
        return features

    def _lacking(self, backbone: str, size: int, poolings, parts) -> int:
        """Image views (one image seen one way) some requested pooling's cache lacks."""

        wanted = [row.sha256 if view == "id" else f"{row.sha256}:{view}" for rows, views in parts for view in views
                  for row in rows]  # fmt: skip
        present = None
        for pooling in poolings:
            folder = Path(self.workspace) / "features" / cache_key(backbone, size, "imagenet", None, "float32", pooling)
            keys = set(FeatureCache(folder).index) if folder.is_dir() else set()
            present = keys if present is None else present & keys
        return sum(key not in present for key in dict.fromkeys(wanted))

    # -- trials

    def run_trial(self, trial: Trial) -> dict | None:
        """Score one trial (its features featurized first if need be), record it and return its
        result; None when the budget leaves no room for it."""
        options = trial.options
        features = self.pooled(*trial.feature_set, options["feature_augment"] if trial.stage == "deployed" else "none",
                               options["pooling"])  # fmt: skip
        if features is None:
            return None
        estimate = self._estimate(trial)
        if not self.budget.allows(estimate):
            log.info("search: the next %s trial would take about %s; %s left", trial.stage, minutes(estimate),
                     minutes(self.budget.left()))  # fmt: skip
            return None
        self.state["running"] = trial.id
        self.save()
        started = time.monotonic()

        def guard(folds_done: int) -> None:
            if folds_done and not self.budget.fits((time.monotonic() - started) / folds_done):
                raise Abandoned

        try:
            scores = self.scores(trial, features[options["pooling"]], guard=guard)
        except Abandoned:
            self.state["running"] = None
            self.save()
            log.info("search: a %s trial stopped after %s: its next fold would end past the budget", trial.stage,
                     minutes(time.monotonic() - started))  # fmt: skip
            return None
        mean, se = spread(scores)
        result = {"id": trial.id, "stage": trial.stage, "options": options, "scores": [round(s, 5) for s in scores],
                  "mean": round(mean, 5), "se": round(se, 5), "seconds": round(time.monotonic() - started, 2)}  # fmt: skip
        self.state["trials"].append(result)
        self.state["running"] = None
        self.done[trial.id] = result
        self.save()
        self._tell(result)
        return result

    def scores(self, trial: Trial, features: np.ndarray, splits=None, labels=None, guard=None) -> list[float]:
        """Each split's accuracy on its held-out images (`features`: self.rows then self.test;
        `splits` index into them, the trial's stage's folds by default). `guard(folds done)` is
        called before each fold (it raises Abandoned to stop)."""

        config = search_config(self.config, trial.options)
        classes, labels = len(self.data.labels), self.labels if labels is None else labels
        own = features[: len(labels)]
        if trial.stage == "fast":
            scaled = self._scaled(trial, own)
            scores = []
            for train, held_out in splits or self.fast_splits:
                if guard is not None:
                    guard(len(scores))
                probabilities = converged_out_of_fold(own, labels, classes, config, scaled=scaled,
                                                      splits=[(train, held_out)])  # fmt: skip
                scores.append(float((probabilities[held_out].argmax(axis=1) == labels[held_out]).mean()))
            return scores
        key = (*trial.feature_set, trial.options["pooling"], trial.options["feature_augment"])
        views = self.views.get(key, np.zeros((0, len(self.rows), own.shape[1]), dtype=own.dtype))
        return deployed_fold_scores(guard, config, own, views, labels, classes, splits or self.deployed_splits,
                                    config.batch_size)  # fmt: skip

    def _scaled(self, trial: Trial, own: np.ndarray) -> np.ndarray:
        """The converged head's input for these features, made once for every fast trial of one
        feature set and pooling (their C and class weights differ, their input does not)."""
        key = (*trial.feature_set, trial.options["pooling"], len(own))
        if key not in self.scaled:
            scaled = standardized(own)
            if len(scaled) < scaled.shape[1]:
                # Fewer images than features: an L2-penalized linear head's weights lie in the span of
                # the images' features, so fitting their coordinates in that span (n x n instead of
                # n x D) solves the same problem exactly, several times faster.
                u, s, _ = np.linalg.svd(scaled, full_matrices=False)
                scaled = u * s
            self.scaled = {key: scaled}  # one at a time: the trials run feature set by feature set
        return self.scaled[key]

    def _estimate(self, trial: Trial) -> float:
        """Seconds the trial will take: the mean of the same stage's trials so far (scaled by
        the views for a deployed one), else a guess that errs long."""

        same = [r for r in self.state["trials"] if r["stage"] == trial.stage]
        if trial.stage == "fast":
            return float(np.mean([r["seconds"] for r in same])) if same else 0.2 * len(self.fast_splits)
        if not same:  # about 3 s a head on a CPU (compiling and early stopping), two a fold with the refit
            return 3.0 * KERAS_FOLDS * (2 if trial.options["head_refit"] else 1)
        views = len(VIEWS[trial.options["feature_augment"]])
        # A head's time is mostly its setting up on small data and its rows on large: scale by the
        # views only past the views measured, and by the heads a fold trains.
        return max(
            r["seconds"]
            * max(1.0, views / len(VIEWS[r["options"]["feature_augment"]]))
            * (1 + trial.options["head_refit"])
            / (1 + r["options"]["head_refit"])
            for r in same
        )

    # -- the stages, the choice, the test photos

    def run(self, deployed_stage: bool = True) -> dict:
        """Search until done, out of budget or stopped (Ctrl-C); choose; score the choice and the
        options as given on the test photos (not when stopped). Returns the state.
        deployed_stage: False stops after the fast trials (benchmarks/search.py)."""
        ended = "done"
        try:
            # The options as given first, whatever the share: every other trial is measured against them.
            share = 0.6 if deployed_stage and not self._deployed_done() else 1.0
            first = self.fast[0].id in self.done or self.run_trial(self.fast[0]) is not None
            if not first or not self._stage(self.fast, share=share):
                ended = "budget"
            self._keep_for_the_test("fast")
            if deployed_stage and self.fast[0].id in self.done and not self._deployed():
                ended = "budget"
        except KeyboardInterrupt:
            ended = "interrupted"
            log.info("search: stopped; choosing from the %s done", counted(len(self.state["trials"]), "trial"))
        if not self.state["trials"]:
            raise InputError(
                f"search: the budget of {minutes(self.budget.seconds)} left no time for the first trial (featurizing "
                f"{counted(len(self.rows), 'image')} included); give a larger --budget (what was "
                "featurized is cached: the next search starts from there)"
            )
        self.choose()
        if ended != "interrupted":
            self.budget.reserve, self.budget.share = 0.0, 1.0
            self.test_scores()
        self.state["sessions"].append({"ended": ended, "seconds": round(self.budget.spent(), 1),
                                       "budget": self.budget.seconds, "when": time.strftime("%Y-%m-%d %H:%M:%S")})  # fmt: skip
        self.save()
        return self.state

    def _deployed(self) -> bool:
        """The deployed stage; False when the budget left some of it undone. It starts with the
        options as given: without them, its trials would have nothing to be measured against."""
        deployed = deployed_trials(self._finalists(), self.base)
        self.planned["deployed"] = len(deployed)
        self.budget.share = 1.0
        if deployed[0].id not in self.done and self.run_trial(deployed[0]) is None:
            log.info("search: no time for the deployed trials; choosing among the fast ones")
            return False
        self._keep_for_the_test("deployed")
        return self._stage(deployed, share=1.0)

    def _keep_for_the_test(self, stage: str) -> None:
        """Reserve the time to score two options on the test photos with `stage`'s head: two of
        its trials' folds (each a head trained on every searched image)."""
        same = [r for r in self.state["trials"] if r["stage"] == stage]
        if same:
            self.budget.reserve = 2 * max(r["seconds"] / len(r["scores"]) for r in same)

    def _deployed_done(self) -> bool:
        return any(result["stage"] == "deployed" for result in self.state["trials"])

    def _stage(self, trials: list[Trial], share: float) -> bool:
        """Run the trials not yet done, in order, within `share` of the budget. False when the
        budget left some undone."""
        self.budget.share, refused, complete = share, set(), True
        for trial in trials:
            if trial.id in self.done:
                continue
            if trial.feature_set in refused:
                complete = False
                continue
            result = self.run_trial(trial)
            if result is None:
                complete = False
                if trial.stage == "deployed":
                    continue  # a trial with fewer views may still fit
                if trial.feature_set not in self.features:
                    refused.add(trial.feature_set)
                    continue
                break
        return complete

    def _tell(self, result: dict) -> None:
        same = [r for r in self.state["trials"] if r["stage"] == result["stage"]]
        best = max(same, key=lambda r: r["mean"])
        log.info("search: %s trial %d of %d, %s: %.3f +- %.3f in %.1f s; best %.3f (%s); %s left", result["stage"],
                 len(same), self.planned.get(result["stage"], len(same)), described(result["options"], self.base), result["mean"], result["se"],
                 result["seconds"], best["mean"], described(best["options"], self.base), minutes(self.budget.left()))  # fmt: skip

    def _finalists(self) -> list[dict]:
        """The fast stage's choice and the best of the rest by mean: FINALISTS in all."""
        fast = [r for r in self.state["trials"] if r["stage"] == "fast"]
        if not fast:
            return []
        chosen = one_standard_error(fast, self.base)
        rest = sorted((r for r in fast if r is not chosen), key=lambda r: -r["mean"])
        return [r["options"] for r in [chosen, *rest][:FINALISTS]]

    def choose(self) -> dict:
        """The one-standard-error choice among the deployed trials when any ran, else the fast."""
        deployed = [r for r in self.state["trials"] if r["stage"] == "deployed"]
        if Trial("deployed", self.base).id not in self.done:
            deployed = []  # chosen against the options as given, or not at all
        results = deployed or [r for r in self.state["trials"] if r["stage"] == "fast"]
        chosen = one_standard_error(results, self.base)
        self.state["chosen"] = {"options": chosen["options"], "trial": chosen["id"], "stage": chosen["stage"],
                                "mean": chosen["mean"], "se": chosen["se"], "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "among": len(results)}  # fmt: skip
        log.info("search: chose %s: %.3f +- %.3f over its folds (%s trials; one standard error toward the options "
                 "as given)", described(chosen["options"], self.base), chosen["mean"], chosen["se"], chosen["stage"])  # fmt: skip
        return chosen

    def test_scores(self, stage: str | None = None) -> dict:
        """The chosen options' and the given options' accuracy on the same test photos, each head
        (the chosen trial's stage's, or `stage`'s) trained on every searched image: recorded in
        the state, never chosen on. Returns {which: accuracy, "seconds": {which: seconds}}."""
        chosen = self.state["chosen"]
        stage = stage or chosen["stage"]
        scored, seconds = {}, {}
        for which, options in (("chosen", chosen["options"]), ("given", self.base)):
            if which == "given" and options == chosen["options"] and "chosen" in scored:
                scored["given"], seconds["given"] = scored["chosen"], seconds["chosen"]
                continue
            trial = Trial(stage, options)
            same = [r["seconds"] / len(r["scores"]) for r in self.state["trials"] if r["stage"] == stage]
            if same and not self.budget.fits(max(same)):
                log.info("search: no time left to score the %s options on the test photos", which)
                continue
            features = self.pooled(*trial.feature_set, options["feature_augment"] if stage == "deployed" else "none",
                                   options["pooling"])  # fmt: skip
            test = None if features is None else self.tested(*trial.feature_set, options["pooling"])
            if test is None:
                log.info("search: no time left to score the %s options on the test photos", which)
                continue
            everything = np.arange(len(self.rows))
            tested = len(self.rows) + np.arange(len(self.test))
            labels = np.concatenate([self.labels, self.test_labels])
            started = time.monotonic()
            both = np.concatenate([features[options["pooling"]], test])
            [score] = self.scores(trial, both, [(everything, tested)], labels)
            scored[which], seconds[which] = round(score, 5), round(time.monotonic() - started, 2)
        self.state["test"] = {**scored, "photos": len(self.test), "stage": stage}
        if scored:
            log.info("search: on %s: %s", counted(len(self.test), "test photo"),
                     ", ".join(f"{which} {score:.3f}" for which, score in scored.items()))  # fmt: skip
        return {**scored, "seconds": seconds}


def sample(rows, labels: list[str], size: int) -> list:
    """At most `size` rows, each class's share as in `rows` (at least 5 of each, or all it has):
    the smallest SHA-256 of each class, a fixed pseudo-random choice."""
    by_label = {label: sorted((r for r in rows if r.label == label), key=lambda r: r.sha256) for label in labels}
    if len(rows) <= size:
        return [row for label in labels for row in by_label[label]]
    return [
        row for label in labels for row in by_label[label][: max(5, round(size * len(by_label[label]) / len(rows)))]
    ]


def folds(labels: np.ndarray, keys: list[str], count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each key's images together (the split's groups: near-duplicates,
    --group-pattern, a Group column), shuffled by `seed`: `count`, fewer when a class is smaller."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(labels)
    splits = max(2, min(count, int(counts[counts > 0].min())))
    groups = np.unique(np.array(keys), return_inverse=True)[1]
    if len(set(groups.tolist())) == len(labels):
        splitter = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels
        )
    else:
        splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed).split(
            np.zeros(len(labels)), labels, groups
        )
    return [(np.asarray(train), np.asarray(held)) for train, held in splitter]


def accelerated() -> bool:

    return any(d.kind in ("GPU", "TPU") for d in device.visible_devices())


def tune(config: TrainConfig, budget_seconds: float) -> tuple[dict, Path]:
    """Search for `config`'s dataset within the budget: (the state, where it is kept)."""

    config = config.check()
    if config.backbone == "auto":
        raise InputError("tune: --backbone auto ranks backbones; tune searches them itself: name the one you train now")
    if config.feature_layer or config.weights not in ("auto", "imagenet"):
        raise InputError(
            "tune searches the candidates' ImageNet features at their last layer: drop --feature-layer and --weights "
            "to search"
        )
    if config.fine_tune_layers or config.target_recall:
        log.info("search: --fine-tune-layers and --target-recall are not searched: training applies them to the "
                 "chosen head as to any other")  # fmt: skip
    folder = record(config) or workspace(config)
    data = load_data(config)
    search = Search(config, data, workspace(config), folder / searchfile.STATE, Budget(budget_seconds))
    return search.run(), search.path
