"""A search stopped the ways the world stops it (a kill, Ctrl-C) and its choice trained: real
searches on 120 of the shipped concrete photos with EfficientNet-Lite0's ImageNet features."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CONCRETE, ROOT, run_module
from trainer.config import TrainConfig
from trainer.data.load import load_data
from trainer.tune import Budget, Search, Trial, one_standard_error, spread

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CONCRETE.is_dir(), reason="datasets/concrete is not here")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One feature cache for the module's searches: each featurizes only what the others did not."""
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A CSV of 60 cracked and 60 uncracked photos, beside the shipped ones."""
    folder = tmp_path_factory.mktemp("subset")
    rows = ["ImagePath,Label"]
    for label in ("CD", "UD"):
        rows += [f"{path},{label}" for path in sorted((CONCRETE / label).glob("*.jpg"))[:60]]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def tune_args(photos: Path, workspace: Path, record: Path, budget: str) -> list:
    return ["tune", "--folder", photos, "--file", "labels.csv", "--allow-outside-folder", "--candidates",
            "efficientnet_lite0", "--workspace", workspace, "--record", record, "--budget", budget]  # fmt: skip


def start(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def wait_for(path: Path, test, timeout: float = 300) -> dict:
    """The state once test(state) holds (read as a reader on Drive would: whole files only)."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        try:
            state = json.loads(path.read_text())
            if test(state):
                return state
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path}: never reached the state waited for")


def test_a_killed_search_resumes_and_chooses_as_an_uninterrupted_one(photos, workspace, tmp_path, trainer_log):
    """Killed in the middle of a deployed trial (the longest), then run again: the cut trial runs
    again, and each trial scores what a search that was never stopped scores (recomputed here,
    in this process, from the same cached features), so the choice is the same."""
    record = tmp_path / "cut"
    process = start(tune_args(photos, workspace, record, "90s"))
    cut = wait_for(record / "search.json", lambda state: (state.get("running") or "").startswith("deployed"))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    resumed = run_module(*tune_args(photos, workspace, record, "45s"), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"search: resuming {record / 'search.json'}: {len(cut['trials'])} trial" in resumed.stderr
    assert f"search: the trial a stop cut short runs again: {cut['running']}" in resumed.stderr
    state = json.loads((record / "search.json").read_text())
    assert cut["running"] in {trial["id"] for trial in state["trials"]} and state["running"] is None
    assert [trial["id"] for trial in state["trials"]][: len(cut["trials"])] == [t["id"] for t in cut["trials"]]
    # The same trials scored afresh, as an uninterrupted search would score them.
    config = TrainConfig(folder=str(photos), file="labels.csv", allow_outside_folder=True, record=str(record),
                         candidates="efficientnet_lite0", workspace=str(workspace))  # fmt: skip
    fresh = Search(config, load_data(config), workspace, tmp_path / "fresh.json", Budget(1e9))
    again = []
    for trial in state["trials"]:
        options = trial["options"]
        trial_now = Trial(trial["stage"], options)
        views = options["feature_augment"] if trial["stage"] == "deployed" else "none"
        features = fresh.pooled(*trial_now.feature_set, views, options["pooling"])
        scores = fresh.scores(trial_now, features[options["pooling"]])
        if trial["stage"] == "fast":
            assert [round(score, 5) for score in scores] == trial["scores"], trial["id"]
        else:
            assert scores == pytest.approx(trial["scores"], abs=0.02), trial["id"]
        mean, se = spread(scores)
        again.append({**trial, "scores": scores, "mean": mean, "se": se})
    base = state["binding"]["space"]["given"]
    assert one_standard_error(again, base)["options"] == one_standard_error(state["trials"], base)["options"]
    # Another split is another search: the state is set aside, never continued.
    other = dataclasses.replace(config, seed=7)
    Search(other, load_data(other), workspace, record / "search.json", Budget(1e9))
    assert "was bound to other data and split; kept as search-" in "\n".join(r.getMessage() for r in trainer_log)
    assert len(list(record.glob("search-*.json"))) == 1 and not (record / "search.json").exists()


def test_ctrl_c_ends_a_search_with_the_best_so_far_recorded(photos, workspace, tmp_path):
    record = tmp_path / "record"
    process = start(tune_args(photos, workspace, record, "5m"))
    wait_for(record / "search.json", lambda state: len(state["trials"]) >= 3)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    state = json.loads((record / "search.json").read_text())
    assert state["sessions"][-1]["ended"] == "interrupted" and state["chosen"]["trial"]
    assert "search: stopped; choosing from the" in err and "chosen:" in out


def test_a_choice_is_trained_and_shown_and_a_flag_given_wins(photos, workspace, tmp_path):
    """`train --search`: the search's choice for every option not given, the flag given over it,
    both said; the report's search section with every trial."""
    record = tmp_path / "record"
    searched = run_module(*tune_args(photos, workspace, record, "20s"), timeout=400)
    assert searched.returncode == 0, searched.stderr[-3000:]
    state = json.loads((record / "search.json").read_text())
    state["chosen"]["options"].update(pooling="max", feature_augment="none", head_c=0.1)  # as if it had chosen so
    (record / "search.json").write_text(json.dumps(state))
    run = tmp_path / "run"
    result = run_module("train", "--folder", photos, "--file", "labels.csv", "--allow-outside-folder", "--search",
                        record / "search.json", "--pooling", "avg", "--export", "none", "--no-audit",
                        "--workspace", workspace, "--output", run, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert (config["pooling"], config["feature_augment"], config["head_c"]) == ("avg", "none", 0.1)
    assert "search: pooling avg as set wins over the search's max" in result.stderr
    assert f"search: training what {record / 'search.json'} chose" in result.stderr
    copied = json.loads((run / "search.json").read_text())
    assert copied["trials"] == state["trials"]
    report = (run / "report.html").read_text()
    assert "The search that chose the options" in report and report.count(" ± ") >= len(state["trials"])
