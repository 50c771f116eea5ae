"""trainer/tune.py and trainer/searchfile.py: a search within a time budget, its choice by the
one-standard-error rule, its state replayed after a stop, and its choice as a training request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer import searchfile
from trainer.config import TrainConfig
from trainer.errors import InputError
from trainer.tune import Trial, deployed_trials, fast_trials, folds, given, one_standard_error, parse_budget, spread


def test_budgets_are_read_as_a_person_writes_them():
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget("1h30m") == 5400
    assert parse_budget("45") == 45
    for wrong in ("", "ten minutes", "5s", "-3m"):
        with pytest.raises(InputError, match="--budget"):
            parse_budget(wrong)


def test_one_standard_error_prefers_the_options_as_given_when_the_best_is_within_noise():
    base = given(TrainConfig())
    other = {**base, "pooling": "max", "head_c": 0.1}
    one = {**base, "pooling": "gem"}
    results = [
        {"options": base, "mean": 0.850, "se": 0.02},
        {"options": other, "mean": 0.866, "se": 0.02},  # the best, two options changed
        {"options": one, "mean": 0.860, "se": 0.02},
    ]
    assert one_standard_error(results, base)["options"] == base
    # Beyond one standard error of the best, the given options are no longer in the running:
    # of those within it, the one with fewer changes wins over the best.
    results[0]["mean"] = 0.80
    assert one_standard_error(results, base)["options"] == one
    results[2]["mean"] = 0.80
    assert one_standard_error(results, base)["options"] == other


def test_the_spread_is_the_standard_error_of_the_fold_scores():
    mean, se = spread([0.8, 0.9, 0.85, 0.95])
    assert mean == pytest.approx(0.875) and se == pytest.approx(np.std([0.8, 0.9, 0.85, 0.95], ddof=1) / 2)


def test_trials_run_the_given_options_first_and_each_feature_set_once():
    config = TrainConfig(pooling="avg", head_c=0.02)
    trials = fast_trials(config, ["efficientnet_lite2", "efficientnet_lite0", "efficientnet_lite1"], ["auto"])
    assert trials[0].options == given(config)
    sets = list(dict.fromkeys(trial.feature_set for trial in trials))
    assert sets == [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite1", 224),
                    ("efficientnet_lite2", 260), ("efficientnet_lite2", 224)]  # fmt: skip
    assert len(trials) == len(sets) * 4 * 3 and len({trial.id for trial in trials}) == len(trials)
    deployed = deployed_trials([{**given(config), "pooling": "max"}], given(config))
    assert deployed[0] == Trial("deployed", given(config))
    assert {trial.options["feature_augment"] for trial in deployed} == {"dihedral", "none"}
    assert any(not trial.options["head_refit"] for trial in deployed)


def test_folds_keep_each_group_together_and_every_class_in_every_fold():
    labels = np.array([0] * 20 + [1] * 20)
    keys = [str(i // 2) for i in range(40)]  # pairs of near-duplicates
    for train, held in folds(labels, keys, 5, seed=0):
        assert not {keys[i] for i in train} & {keys[i] for i in held}
        assert set(labels[held]) == {0, 1}
    assert len(folds(labels, [str(i) for i in range(40)], 5, seed=0)) == 5


def test_a_choice_is_taken_under_the_options_the_user_set_and_that_is_said():
    config = TrainConfig()
    state = {"binding": {"split": {name: getattr(config, name) for name in searchfile.SPLIT_OPTIONS},
                         "space": {"given": given(config)}},
             "chosen": {"options": {**given(config), "pooling": "max", "head_c": 0.1}}}  # fmt: skip
    values, said = searchfile.applied({**config.to_dict(), "head_c": 0.005}, {"head_c"}, state, "the search")
    assert values["pooling"] == "max" and values["head_c"] == 0.005
    assert said[0].startswith("search: training what the search chose")
    assert "search: head_c 0.005 as set wins over the search's 0.1" in said
    # Chosen on another split: its photos may be today's test photos, so it is not taken.
    values, said = searchfile.applied({**config.to_dict(), "seed": 7}, set(), state, "the search")
    assert values["pooling"] == "avg" and "not taken" in said[0] and "seed" in said[0]


def test_a_state_file_from_elsewhere_is_refused_in_one_line(tmp_path):
    path = tmp_path / "search.json"
    assert searchfile.read(path) is None
    for content in ("{", "[]", json.dumps({"version": 1, "trials": {}})):
        path.write_text(content)
        with pytest.raises(InputError, match="not a search's state"):
            searchfile.read(path)
    state = {"version": 1, "trials": [], "chosen": {"options": {"backbone": "x", "exec": "rm -rf /"}}}
    path.write_text(json.dumps(state))
    with pytest.raises(InputError, match="does not choose"):
        searchfile.choice(searchfile.read(path))
    state["chosen"]["options"] = {"head_c": float("nan")}
    with pytest.raises(InputError, match="not an option's value"):
        searchfile.choice(state)


def test_a_short_search_keeps_its_budget_and_records_every_trial(tmp_path, demo_dir):
    """A real search on the small demo set (24 photos): EfficientNet-Lite0's ImageNet features,
    every pooling from one pass, the fast trials, then the deployed head if there is time, within 30 s."""
    from tests.conftest import run_module

    record = tmp_path / "record"
    result = run_module("tune", "--folder", demo_dir / "Images", "--file", "training_data.csv", "--candidates", "efficientnet_lite0", "--budget", "30s",
                        "--workspace", tmp_path / "ws", "--record", record, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((record / "search.json").read_text())
    session = state["sessions"][-1]
    assert session["ended"] in ("done", "budget") and session["seconds"] <= 30 * 1.1, session
    trials = state["trials"]
    assert trials[0]["options"] == given(TrainConfig()) | {} and trials[0]["stage"] == "fast"
    assert len({trial["id"] for trial in trials}) == len(trials) and len(trials) >= 4
    for trial in trials:
        assert len(trial["scores"]) == (10 if trial["stage"] == "fast" else 3) and 0 <= trial["mean"] <= 1
    assert {trial["options"]["pooling"] for trial in trials if trial["stage"] == "fast"} >= {"avg", "max"}
    chosen = state["chosen"]
    assert chosen["trial"] in {trial["id"] for trial in trials}
    assert state["running"] is None and state["binding"]["split"]["seed"] == 42
    assert "search: fast trial 1 of" in result.stderr and " left" in result.stderr
    assert (
        f"search: {record / 'search.json'}" in result.stdout
        and "train it: python -m trainer train --search" in result.stdout
    )
    # Every pooling's own cache now holds the photos: a training run with --pooling max reuses them.
    assert sorted(path.name.split("-")[2] for path in (tmp_path / "ws" / "features").iterdir() if "-224-" in path.name) \
        == sorted(["all", "avgmax", "gem", "max", path_avg_part(tmp_path / "ws")])  # fmt: skip


def path_avg_part(workspace) -> str:
    """The third dash-separated part of the average pooling's cache folder (its digest)."""
    from trainer.features.cache import cache_key

    return cache_key("efficientnet_lite0", 224, "imagenet").split("-")[2]


def test_invoke_train_takes_the_records_choice_under_what_the_user_set(tmp_path):
    """scripts/training.with_search: the record's search.json for each option not set in
    invoke.yaml, INVOKE_TRAIN_*, train.extra or a flag; what is set wins, and both are said."""
    from scripts import training

    record = tmp_path / "record"
    config = TrainConfig(folder=str(tmp_path), record=str(record))
    said: list[str] = []
    assert training.with_search(config, set(), said.append) == config and not said  # no search yet
    state = {"version": 1, "trials": [], "binding": {"split": {n: getattr(config, n) for n in searchfile.SPLIT_OPTIONS},
                                                     "space": {"given": given(config)}},
             "chosen": {"options": {**given(config), "pooling": "gem", "head_c": 0.1}, "when": "2026-12-07 10:00:00"}}  # fmt: skip
    searchfile.write(record / "search.json", state)
    conf = {"head_c": 0.005, "extra": "--feature-augment none"}
    chosen_by_user = training.explicit(conf, {"epochs": None, "pooling": None})
    assert chosen_by_user == {"head_c", "feature_augment"}
    trained = training.with_search(TrainConfig(**{**config.to_dict(), "head_c": 0.005}), chosen_by_user, said.append)
    assert (trained.pooling, trained.head_c, trained.search) == ("gem", 0.005, str(record / "search.json"))
    assert said[0] == "train: search: training what the search of 2026-12-07 10:00:00 chose: head_c 0.1, pooling gem"
    assert "train: search: head_c 0.005 as set wins over the search's 0.1" in said
    # A damaged state costs the training nothing: it is said, and the options stay as set.
    (record / "search.json").write_text("{")
    said.clear()
    assert training.with_search(config, set(), said.append) == config
    assert said and "WARNING" in said[0] and "training without the search's choice" in said[0]
