"""The Colab rehearsal's driver: runs `colab.ipynb` as shipped, through a real Jupyter kernel,
on a Colab-like runtime, the way a user meets it: first run, runtime reset, a changed option, a
failing step. tests/test_colab.py starts it with a Python 3.13 environment holding Colab's
package versions, in a private mount namespace where /content is a fresh tmpfs, /usr/local an
empty folder and /etc an overlay, so nothing of it reaches the machine.

    python colab_rehearsal.py BUNDLE IMAGES OUT TRAINER CHANGED [STORY]

BUNDLE is the project folder, IMAGES the concrete photos' Images folder (CD/, UD/ and the CSV),
OUT a folder outside /content for the summary (summary.json) and the executed notebooks,
TRAINER the INVOKE_TRAIN_* variables of every run (JSON), CHANGED those of the third run. STORY
is `full` (the default: first run, reset and review, changed option, failing step) or `stack`:
one first run with CHANGED's options, what a new image's packages can change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CONTENT = Path("/content")
MY_DRIVE = CONTENT / "drive" / "MyDrive"
BUNDLE_ON_DRIVE = MY_DRIVE / "ud-cd-classifier-bundle"  # the notebook's BUNDLE
# The job cell's NAME: one of the user's (as docs/colab.md suggests), or "" as shipped (the model
# named after Images.zip). tests/test_colab.py rehearses one image with each.
NAME = os.environ.get("REHEARSAL_NAME", "cracks-2026")
PUBLISHED = MY_DRIVE / (NAME or "images-classifier")
RECORD = PUBLISHED.with_name(f"{PUBLISHED.name}-record")  # the dataset's record, beside it
# Left out when the bundle is not a git checkout: what runs here leave behind.
LEFT_OUT = ("runs", "data", "published", "workspace", ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache",
            "libtensorflow.env")  # fmt: skip

# What a Colab GPU runtime's kernel has in its environment (the variables the bundle or its
# packages could read); the release tag names the image colab/constraints.txt comes from.
COLAB_ENVIRONMENT = {
    "COLAB_RELEASE_TAG": "release-colab-20260819-060046-RC00",
    "COLAB_BACKEND_VERSION": "next",
    "COLAB_GPU": "1",
    "COLAB_JUPYTER_IP": "172.28.0.12",
    "COLAB_KERNEL_MANAGER_PROXY_HOST": "172.28.0.12",
    "CLOUDSDK_CONFIG": "/content/.config",
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    "HOME": "/root",
}


def bundle_files(bundle: Path) -> list[Path]:
    """What a user has of the bundle: the files a commit holds (tracked, or new and not ignored),
    never what a run here left (runs/, data/, libtensorflow.env, ...)."""
    listed = subprocess.run(
        ["git", "-C", str(bundle), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        return [Path(name) for name in listed.stdout.decode().split("\0") if name and (bundle / name).is_file()]
    return [
        path.relative_to(bundle)
        for path in bundle.rglob("*")
        if path.is_file() and not set(path.relative_to(bundle).parts) & set(LEFT_OUT)
    ]


def copy_as_drive_does(bundle: Path, target: Path) -> None:
    """The bundle as a user copies it to Drive: its files, no executable bit (Drive keeps none)."""
    for relative in bundle_files(bundle):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle / relative, destination)
        destination.chmod(0o644)


def images_zip(images: Path, target: Path) -> int:
    """Images.zip in the original layout: Images/CD, Images/UD, Images/training_data.csv."""
    count = 0
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(images.rglob("*")):
            if path.is_file():
                archive.write(path, Path("Images") / path.relative_to(images))
                count += path.suffix.lower() == ".jpg"
    return count


def tree(folder: Path) -> dict[str, str] | None:
    if not folder.is_dir():
        return None
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def freeze() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True)
    return dict(line.split("==", 1) for line in out.stdout.splitlines() if "==" in line)


def reset_runtime() -> None:
    """A runtime reset: everything under /content goes, except the mounted Drive."""
    for entry in CONTENT.iterdir():
        if entry.name != "drive":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


# What the review form's "Save to Drive" does in Colab (the page calls the kernel function the
# review cell registered): here a cell calls it with what the page would send, relabelling the
# audit's first image and keeping its second.
SAVE_FROM_THE_FORM = f"""
from pathlib import Path
from google.colab import output
from trainer import runfolder
from trainer.diagnostics import review
published = Path({str(PUBLISHED)!r})
rows = runfolder.read_audit(published / "audit.csv")
sha = review.hashes(published)
first, second = rows[0], rows[1]
other = next(label for label in (published / "labels.txt").read_text().split() if label != first["Label"])
lines = ["ImagePath,Label,Sha256,Opinion",
         f"{{first['ImagePath']}},{{other}},{{sha[first['ImagePath']]}},{{review.opinion(first)}}",
         f"{{second['ImagePath']}},keep,{{sha[second['ImagePath']]}},{{review.opinion(second)}}"]
print(output.call(review.SAVE_CALLBACK, "\\n".join(lines) + "\\n"))
"""


def run_notebook(notebook: Path, name: str, out: Path, source: str, after: str | None = None,
                 budget: str = "", **variables: str) -> dict:  # fmt: skip
    """Execute every cell in a new kernel with /content as its folder, as Colab does, with the
    job cell's SOURCE line set to `source`, as a user edits it; `after`, a cell run last;
    `budget`, the search cell's BUDGET (empty, as shipped: no search)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    saved = dict(os.environ)
    os.environ.update(variables)
    document = nbformat.read(notebook, as_version=4)
    # The job cell: the code cell that sets SOURCE (the first cell's text quotes the line too).
    job = next(cell for cell in document.cells if cell.cell_type == "code" and 'SOURCE = "concrete"' in cell.source)
    job.source = job.source.replace('SOURCE = "concrete"', f"SOURCE = {json.dumps(source)}")
    if NAME:
        job.source = job.source.replace('NAME = ""', f"NAME = {json.dumps(NAME)}")
    if budget:
        search = next(cell for cell in document.cells if cell.cell_type == "code" and 'BUDGET = ""' in cell.source)
        search.source = search.source.replace('BUDGET = ""', f"BUDGET = {json.dumps(budget)}")
    if after:
        document.cells.append(nbformat.v4.new_code_cell(after))
    client = NotebookClient(
        document, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(CONTENT)}}
    )
    error = None
    try:
        client.execute()
    except CellExecutionError as failure:
        error = str(failure).strip().splitlines()[-1]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(document, out / f"{name}.ipynb")
    cells = []
    for cell in document.cells:
        if cell.cell_type != "code":
            continue
        text = "".join(output.get("text", "") for output in cell.get("outputs", []) if output.output_type == "stream")
        errors = [f"{o.ename}: {o.evalue}" for o in cell.get("outputs", []) if o.output_type == "error"]
        shown = "".join(o.get("data", {}).get("text/html", "") for o in cell.get("outputs", [])
                        if o.output_type == "display_data")  # fmt: skip
        cells.append({"source": cell.source, "output": text, "errors": errors, "html": shown})
    report = CONTENT / "bundle" / "runs" / "setup-report.json"
    split = PUBLISHED / "split.csv"
    exports = json.loads((PUBLISHED / "exports.json").read_text()) if (PUBLISHED / "exports.json").is_file() else None
    history = PUBLISHED / "history.csv"
    return {
        "name": name,
        "error": error,
        "cells": cells,
        "setup": json.loads(report.read_text())["steps"] if report.is_file() else None,
        "published": tree(PUBLISHED),
        "images_used": len(split.read_text().splitlines()) - 1 if split.is_file() else None,
        "previous": tree(PUBLISHED.with_name(PUBLISHED.name + ".previous")),
        "exports": exports and {"ok": exports["ok"], "legs": {leg["name"]: leg["ok"] for leg in exports["legs"]}},
        "phases": sorted({line.split(",", 1)[0] for line in history.read_text().splitlines()[1:]})
        if history.is_file()
        else [],
        "corrections": json.loads((PUBLISHED / "manifest.json").read_text())["data"].get("corrections")
        if (PUBLISHED / "manifest.json").is_file()
        else None,
        "record": sorted(path.name for path in (RECORD / "decisions").glob("*.csv"))
        if (RECORD / "decisions").is_dir()
        else [],
        "versions": json.loads((PUBLISHED / "manifest.json").read_text())["versions"]
        if (PUBLISHED / "manifest.json").is_file()
        else None,
        "runs": sorted(p.name for p in (CONTENT / "bundle" / "runs").iterdir() if p.is_dir())
        if (CONTENT / "bundle" / "runs").is_dir()
        else [],
    }


def main(bundle: Path, images: Path, out: Path, trainer: dict[str, str], changed: dict[str, str],
         story: str = "full") -> None:  # fmt: skip
    if any(CONTENT.iterdir()):
        raise SystemExit(f"{CONTENT} is not empty: the rehearsal needs a fresh runtime")
    MY_DRIVE.mkdir(parents=True)
    copy_as_drive_does(bundle, BUNDLE_ON_DRIVE)
    zipped = images_zip(images, MY_DRIVE / "Images.zip")
    os.environ.update(COLAB_ENVIRONMENT)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.update(trainer)
    notebook = BUNDLE_ON_DRIVE / "colab.ipynb"
    source = str(MY_DRIVE / "Images.zip")
    before = freeze()
    if story == "stack":
        runs = [run_notebook(notebook, "1-first", out, source, budget="35s", **changed)]
    else:
        runs = [run_notebook(notebook, "1-first", out, source)]
        reset_runtime()
        runs.append(run_notebook(notebook, "2-after-reset", out, source, after=SAVE_FROM_THE_FORM))
        runs.append(run_notebook(notebook, "3-option-changed", out, source, **changed))
        reset_runtime()
        runs.append(run_notebook(notebook, "4-failing-step", out, str(MY_DRIVE / "Imagse.zip")))
    after = freeze()
    summary = {
        "python": sys.version.split()[0],
        "images_in_zip": zipped,
        "changed_option": changed,
        "preinstalled_moved": {
            name: [version, after.get(name)] for name, version in before.items() if after.get(name) != version
        },
        "installed": {name: version for name, version in after.items() if name not in before},
        "runs": runs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), json.loads(sys.argv[5]),
         *sys.argv[6:7])  # fmt: skip
