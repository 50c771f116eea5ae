"""The shipped Colab notebook: mounts Drive, runs the job in a form that fails the cell."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT


def test_notebook_mounts_drive_then_runs_the_job_and_fails_the_cell_on_error():
    notebook = json.loads((ROOT / "colab.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert 'drive.mount("/content/drive")' in code[0]
    job = next(cell for cell in code if "invoke setup" in cell)
    # The cell carries its data and its model's name, which the review cell shares.
    assert 'SOURCE = "concrete"\nNAME = ""\nsource, name = shlex.quote(SOURCE), shlex.quote(NAME)\n' in job
    assert "!pip install -q invoke==3.0.3 && invoke setup --source {source} train --name {name}" in job
    review = next(cell for cell in code if "review_cell" in cell)
    assert "review_cell(SOURCE, NAME)" in review
    assert "if _exit_code != 0:" in job and "raise RuntimeError" in job
    pinned = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("invoke==")]
    assert pinned == ["invoke==3.0.3"], "the notebook installs the pinned invoke"
    assert notebook["metadata"]["accelerator"] == "GPU"


def test_the_notebooks_words_count_its_cells():
    """The first lines say how many cells to run (it once said three above four); each code cell
    begins with its number, in order, as the other cells' comments refer to them ("cell 3")."""
    notebook = json.loads((ROOT / "colab.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    intro = "".join(notebook["cells"][0]["source"])
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    said = re.search(r"Run the (\w+) cells below", intro)
    assert said and said.group(1) == words[len(code)], (said and said.group(1), len(code))
    assert [cell.split(".", 1)[0] for cell in code] == [f"# {number}" for number in range(1, len(code) + 1)]
