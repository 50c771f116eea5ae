"""The benchmark suite runs and reports in the promised shape (its figures are measured in CI by
`invoke bench --quick`, and in full for BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.suite import Figure, spread
from tests.conftest import ROOT


def test_a_goal_is_met_or_missed_by_its_direction():
    assert Figure("f", ">= 1.6", 1.7, {}, {}).met
    assert not Figure("f", ">= 1.6", 1.5, {}, {}).met
    assert Figure("f", "<= 2", 1.28, {}, {}).met
    assert not Figure("f", "<= 2", 2.5, {}, {}).met
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}


def test_quick_validation_figure_writes_the_json_report(tmp_path):
    report = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "validation", "--report", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(report.read_text())
    (figure,) = document["figures"]
    assert figure["name"] == "parallel image validation vs a single-threaded Pillow loop"
    assert figure["goal"] == ">= 1.6" and isinstance(figure["met"], bool) and figure["ratio"] > 0
    assert figure["ours"]["seconds"]["n"] >= 3
    assert document["machine"]["cores"] >= 1 and document["machine"]["tensorflow"]
    assert "parallel image validation" in result.stdout
