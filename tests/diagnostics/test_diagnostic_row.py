"""A diagnostic is one row of trainer/diagnostics/table.py: a row added here (its function lists
the run folder's files, its section shows the model's size) runs after the model has landed, is
recorded in manifest.json, and has its section in report.html under its title."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import train_args
from trainer.diagnostics import table

SIZES = "sizes.json"


def _sizes(finished: table.Finished) -> None:
    sizes = {path.name: path.stat().st_size for path in sorted(finished.run_dir.iterdir()) if path.is_file()}
    (finished.run_dir / SIZES).write_text(json.dumps(sizes))


def _sizes_section(run_dir: Path) -> str:
    sizes = json.loads((run_dir / SIZES).read_text())
    return f"<p>model.keras is {sizes['model.keras']} bytes.</p>"


ROW = table.Diagnostic("sizes", "File sizes", lambda config: True, _sizes, lambda: (SIZES,), section=_sizes_section)


def test_a_diagnostic_added_as_one_row_runs_after_the_model_and_has_its_section(cli, demo_dir, tmp_path, monkeypatch):
    from trainer.diagnostics.runner import redo
    from trainer.errors import CheckFailed

    monkeypatch.setattr(table, "DIAGNOSTICS", (*table.DIAGNOSTICS, ROW))
    run = tmp_path / "run"
    code, _, err = cli(*train_args(demo_dir / "Images", output=run, workspace=tmp_path / "ws", export="none"))
    assert code == 0, err
    states = json.loads((run / "manifest.json").read_text())["diagnostics"]
    assert list(states.items()) == [
        ("compare", "skipped"), ("search", "skipped"), ("audit", "skipped"), ("heatmaps", "ok"), ("exports", "skipped"), ("sizes", "ok"),
        ("report", "ok"),
    ]  # fmt: skip
    sizes = json.loads((run / SIZES).read_text())
    assert sizes["model.keras"] == (run / "model.keras").stat().st_size and "manifest.json" in sizes
    assert "heatmaps.png" in sizes and "report.html" not in sizes  # after the rows above it, before the report
    page = (run / "report.html").read_text()
    assert f"<h2>File sizes</h2>\n<p>model.keras is {sizes['model.keras']} bytes.</p>" in page

    monkeypatch.setenv("TRAINER_FAIL_DIAGNOSTIC", "sizes")
    with pytest.raises(CheckFailed):
        redo(run, ("sizes", "report"))
    assert json.loads((run / "manifest.json").read_text())["diagnostics"]["sizes"] == {
        "failed": "TRAINER_FAIL_DIAGNOSTIC=sizes: injected failure"
    }
    page = (run / "report.html").read_text()
    assert "<li><b>File sizes</b> (sizes): TRAINER_FAIL_DIAGNOSTIC=sizes: injected failure</li>" in page
