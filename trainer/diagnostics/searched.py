"""The search that chose this run's options (trainer/tune.py): every trial with its spread, the
choice, and the chosen options' test score beside the options as given, on the same test photos.

    search.json   the search's state as it was when this run trained (trainer/searchfile.py)

The state is copied into the run folder, so the report says what chose the model even after the
record's search moves on; everything drawn from it is formatted as a number or escaped (it is a
file from the record, which others may write).
"""

from __future__ import annotations

import html
from pathlib import Path

from trainer import runfolder, searchfile
from trainer.diagnostics.sections import figure, table
from trainer.errors import InputError, counted

SEARCH = "search.json"
SHOWN = 200  # trials listed in the report, best first


def copy(search: Path, run_dir: Path) -> dict:
    """Copy the search's state into the run folder; InputError when it is not a search's state."""
    state = searchfile.read(search)
    if state is None:
        raise InputError(f"--search: {search} is not there")
    runfolder.write_json(run_dir / SEARCH, state)
    return state


def tells(state: dict) -> str:
    chosen, test = state.get("chosen") or {}, state.get("test") or {}
    said = f"{counted(len(state.get('trials', [])), 'trial')}; chose {_options(chosen.get('options') or {}, state)}"
    if test.get("chosen") is not None and test.get("given") is not None:
        said += f"; test photos: chosen {figure(test['chosen'], '.3f')}, as given {figure(test['given'], '.3f')}"
    return said


def _options(options: dict, state: dict) -> str:
    base = state.get("binding", {}).get("space", {}).get("given", {})
    differ = [f"{name} {value}" for name, value in options.items() if base.get(name) != value]
    return ", ".join(differ) if differ else "the options as given"


def section(run_dir: Path) -> str:
    """The report's "Search" section, from search.json."""
    state = runfolder.read_json(run_dir / SEARCH)
    if not state:
        return "<p>No search chose this run's options.</p>"
    chosen, test = state.get("chosen") or {}, state.get("test") or {}
    trials = [trial for trial in state.get("trials", []) if isinstance(trial, dict)]
    ordered = sorted(trials, key=lambda trial: (trial.get("stage") != "deployed", -_number(trial.get("mean"))))
    rows = [
        [
            "chosen" if trial.get("id") == chosen.get("trial") else "",
            trial.get("stage"),
            _options(trial.get("options") or {}, state),
            f"{figure(trial.get('mean'), '.3f')} ± {figure(trial.get('se'), '.3f')}",
            figure(len(trial.get("scores") or [])),
            figure(trial.get("seconds"), ".1f"),
        ]
        for trial in ordered[:SHOWN]
    ]
    sessions = state.get("sessions") or []
    spent = sum(_number(session.get("seconds")) for session in sessions if isinstance(session, dict))
    planned = state.get("binding", {}).get("space", {}).get("trials")
    fast = sum(trial.get("stage") == "fast" for trial in trials)
    ran = (
        f"{figure(fast)} of its {figure(planned)} fast trials ran; "
        if isinstance(planned, int) and fast < planned
        else ""
    )
    said = (
        f"<p>This run's options were chosen by a search ({html.escape(ran)}{html.escape(figure(len(trials)))} trials in "
        f"{html.escape(figure(len(sessions)))} session(s), {html.escape(figure(spent, '.0f'))} s) on the training and "
        "validation images alone, by cross-validated accuracy: the fast trials with the converged head, the deployed "
        "ones with the head this run trains. The choice is the trial with fewest options changed from those given "
        "among the trials within one standard error of the best, so that noise is not chased.</p>"
    )
    if test.get("chosen") is not None:
        said += (
            f"<p>On the same {html.escape(figure(test.get('photos')))} test photos, each trained on every searched "
            f"image ({html.escape(str(test.get('stage')))} head): chosen {html.escape(figure(test.get('chosen'), '.3f'))}"
            + (
                f", the options as given {html.escape(figure(test.get('given'), '.3f'))}"
                if test.get("given") is not None
                else ""
            )
            + ". One test split's score has a standard error of about sqrt(p(1-p)/n).</p>"
        )
    return said + table(rows, ["", "stage", "options changed", "accuracy ± standard error", "folds", "seconds"])


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
