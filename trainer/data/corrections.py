"""Label corrections as data: a CSV `ImagePath,Label[,Sha256]` whose Label is a class, a new
class name, or `drop`, applied to a run's rows after the split (`--corrections FILE`, for
`train` and `audit`; the report's review form writes one).

Each line names an image of the dataset by its content hash (the Sha256 column the form
writes) or by its path, matched the way the data's own CSV paths are (relative to the
corrections file's folder or the image folder, `../Images/...`, Windows separators), and when
that path is a file elsewhere, by its content: so a corrections file survives the data being
moved or unpacked again. A line that names no image of the dataset is an error, never silently
skipped.

The split is made from the labels as given, then corrected: a relabelled image stays in its
split under its new label and a dropped one leaves it, so the test split of a run with
corrections is the run without's test split minus the dropped images, and the two test scores
are over the same photos (scored against the corrected labels).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from trainer.atomic import sha256_of
from trainer.data.layout import MIN_CLASS_SIZE
from trainer.data.rows import Row, resolve_image_path
from trainer.errors import InputError, listed

DROP = "drop"
FILE = "corrections.csv"  # its copy in the run folder


@dataclass(frozen=True)
class Correction:
    line: int
    written: str
    label: str  # a class, a new class, or DROP
    sha256: str = ""


def read_corrections(path: str | Path) -> list[Correction]:
    """The file's corrections, each line checked; InputError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise InputError(f"--corrections: cannot read {path} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise InputError(f"--corrections: {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    return parse_corrections(text, path)


def parse_corrections(text: str, path: str | Path) -> list[Correction]:
    """The corrections in `text` (a CSV), each line checked; `path` names it in errors."""
    records = list(csv.reader(io.StringIO(text)))
    if not records:
        raise InputError(f"--corrections: {path} is empty; expected a header ImagePath,Label and rows")
    header = [name.strip().lower() for name in records[0]]
    if "imagepath" not in header or "label" not in header:
        found = ", ".join(repr(name) for name in records[0]) or "none"
        raise InputError(f"--corrections: {path}: the header must be ImagePath,Label[,Sha256] (found {found})")
    at = {name: header.index(name) for name in ("imagepath", "label", "sha256") if name in header}
    out = []
    for line, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        cells = {name: record[index].strip() if index < len(record) else "" for name, index in at.items()}
        written, label = cells["imagepath"], cells["label"]
        if not written or not label:
            raise InputError(f"--corrections: {path} line {line}: needs an ImagePath and a Label (a class or {DROP})")
        out.append(Correction(line, written, label, cells.get("sha256", "").lower()))
    return out


def digest(path: str | Path | None) -> str | None:
    """The corrections as content (each line's path, label and hash, in order), for the record of
    what a model is trained from: the same corrections in another file are the same."""
    if path is None:
        return None
    hashed = hashlib.sha256()
    for correction in read_corrections(path):
        hashed.update(f"{correction.written}\0{correction.label}\0{correction.sha256}\n".encode())
    return hashed.hexdigest()


def _matcher(rows: list[Row], bases: list[Path]):
    by_sha = {row.sha256: row for row in rows if row.sha256}
    by_path = {str(row.path): row for row in rows}
    by_written = {row.written: row for row in rows}

    def match(correction: Correction) -> Row | None:
        if correction.sha256 and correction.sha256 in by_sha:
            return by_sha[correction.sha256]
        resolved = resolve_image_path(correction.written, bases)
        found = by_path.get(str(resolved)) or by_written.get(correction.written)
        if found is None and resolved.is_file():
            try:
                found = by_sha.get(sha256_of(resolved))
            except OSError:
                found = None
        return found

    return match


def apply(parts: dict[str, list[Row]], path: str | Path, image_folder: str | Path) -> tuple[dict, dict]:
    """The parts with the corrections applied, and their summary for the manifest and report:
    {"file", "lines", "relabelled", "dropped", "unchanged", "classes": {label: {"in", "out",
    "dropped"}}, "new_classes"}. InputError for a line that names no image of the dataset, or for
    corrections that leave a class with fewer than MIN_CLASS_SIZE images or fewer than two."""
    path = Path(path)
    corrections = read_corrections(path)
    rows = [row for part in parts.values() for row in part]
    match = _matcher(rows, [path.parent, Path(image_folder)])
    wanted: dict[Path, tuple[Correction, Row]] = {}
    for correction in corrections:
        row = match(correction)
        if row is None:
            raise InputError(
                f"--corrections: {path} line {correction.line}: {correction.written} names no image of this dataset "
                "(by path or by content); fix the path or remove the line"
            )
        wanted[row.path] = (correction, row)  # a later line about the same image wins
    given = {row.label for row in rows}
    classes: dict[str, Counter] = {}
    counts = Counter()
    out = {}
    for name, part in parts.items():
        kept = []
        for row in part:
            correction = wanted.get(row.path, (None, None))[0]
            if correction is None or correction.label == row.label:
                counts["unchanged" if correction else "untouched"] += 1
                kept.append(row)
            elif correction.label.lower() == DROP:
                counts["dropped"] += 1
                classes.setdefault(row.label, Counter())["dropped"] += 1
            else:
                counts["relabelled"] += 1
                classes.setdefault(row.label, Counter())["out"] += 1
                classes.setdefault(correction.label, Counter())["in"] += 1
                kept.append(replace(row, label=correction.label))
        out[name] = kept
    sizes = Counter(row.label for part in out.values() for row in part)
    small = sorted(label for label, count in sizes.items() if count < MIN_CLASS_SIZE)
    if small:
        raise InputError(
            f"--corrections: {path} leaves {listed(f'{label!r} ({sizes[label]})' for label in small)} with fewer "
            f"than {MIN_CLASS_SIZE} images; relabel more images to it or drop it"
        )
    if len(sizes) < 2:
        raise InputError(f"--corrections: {path} leaves fewer than two classes")
    summary = {
        "file": str(path),
        "lines": len(corrections),
        "relabelled": counts["relabelled"],
        "dropped": counts["dropped"],
        "unchanged": counts["unchanged"],
        "classes": {label: dict(sorted(tally.items())) for label, tally in sorted(classes.items())},
        "new_classes": sorted(set(sizes) - given),
    }
    return out, summary


def described(summary: dict) -> str:
    """'12 relabelled, 3 dropped (CD: 9 out, 2 dropped; UD: 9 in, ...)'"""
    per_class = "; ".join(
        f"{label}: " + ", ".join(f"{count} {kind}" for kind, count in tally.items())
        for label, tally in summary["classes"].items()
    )
    new = f"; new classes {', '.join(summary['new_classes'])}" if summary["new_classes"] else ""
    return (
        f"{summary['relabelled']} relabelled, {summary['dropped']} dropped"
        + (f" ({per_class})" if per_class else "")
        + new
    )
