"""Label decisions as data: a CSV `ImagePath,Label[,Sha256,Opinion,Decided]` whose Label is a
class, a new class name, `drop` or `keep`, applied to a run's rows after the split. The report's
review form writes one; the dataset's record (trainer/record.py) keeps every decision in this
form; `--corrections FILE` adds one to it.

Each line names an image of the dataset by its content hash (the Sha256 column the form
writes) or by its path, matched the way the data's own CSV paths are (relative to the
corrections file's folder or the image folder, `../Images/...`, Windows separators), and when
that path is a file elsewhere, by its content: so a decision survives the data being moved or
unpacked again. In a file given with --corrections, a line that names no image of the dataset is
an error, never silently skipped; the record's decisions about images no longer in the data are
skipped and counted (trainer/record.py).

The split is made from the labels as given, then corrected: a relabelled image stays in its
split under its new label and a dropped one leaves it, so the test split of a run with
corrections is the run without's test split minus the dropped images, and the two test scores
are over the same photos (scored against the corrected labels).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from trainer import cells
from trainer.atomic import sha256_of
from trainer.data.layout import MIN_CLASS_SIZE
from trainer.data.rows import Row, resolve_image_path
from trainer.errors import InputError, listed
from trainer.names import check_class

MAX_BYTES = 16 << 20  # a decision a line: over 100,000 of them, more than any review makes
DROP = "drop"
KEEP = "keep"  # a decision that changes nothing: the image was looked at and its label is right
FILE = "corrections.csv"  # its copy in the run folder
COLUMNS = ("ImagePath", "Label", "Sha256", "Opinion", "Decided")


@dataclass(frozen=True)
class Correction:
    """One decision about one image."""

    line: int
    written: str  # the image's path as the file wrote it
    label: str  # a class, a new class, DROP or KEEP
    sha256: str = ""
    opinion: str = ""  # the audit's view when it was decided ("label:UD"): trainer/record.py
    decided: str = ""  # when (UTC, ISO 8601): the latest decision about an image wins
    file: str = ""  # the file it came from, for messages

    @property
    def kind(self) -> str:
        """keep, drop or relabel (a keep or a label the image already has changes nothing)."""
        return self.label.lower() if self.label.lower() in (KEEP, DROP) else "relabel"


def read_corrections(path: str | Path, what: str = "--corrections") -> list[Correction]:
    """The file's corrections, each line checked; InputError naming `what`, the file and line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(f"{what}: {path} is {path.stat().st_size >> 20} MB, over the {MAX_BYTES >> 20} MB a "
                             "corrections file may be (a decision a line); give the decisions that matter")  # fmt: skip
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise InputError(f"{what}: cannot read {path} ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise InputError(f"{what}: {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    return parse_corrections(text, path, what)


def parse_corrections(text: str, path: str | Path, what: str = "--corrections") -> list[Correction]:
    """The corrections in `text` (a CSV), each line checked; `what` and `path` name it in errors."""
    records = list(cells.read_rows(io.StringIO(text)))
    if not records:
        raise InputError(f"{what}: {path} is empty; expected a header ImagePath,Label and rows")
    header = [name.strip().lower() for name in records[0]]
    if "imagepath" not in header or "label" not in header:
        found = ", ".join(repr(name) for name in records[0]) or "none"
        raise InputError(f"{what}: {path}: the header must be ImagePath,Label[,Sha256] (found {found})")
    at = {name.lower(): header.index(name.lower()) for name in COLUMNS if name.lower() in header}
    out = []
    for line, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        values = {name: record[index].strip() if index < len(record) else "" for name, index in at.items()}
        written, label = values["imagepath"], values["label"]
        if not written or not label:
            raise InputError(f"{what}: {path} line {line}: needs an ImagePath and a Label (a class, {DROP} or {KEEP})")
        if label.lower() not in (DROP, KEEP):
            check_class(label, f"{what}: {path} line {line}")
        out.append(Correction(line, written, label, values.get("sha256", "").lower(), values.get("opinion", ""),
                              values.get("decided", ""), Path(path).name))  # fmt: skip
    return out


def format_corrections(decisions: list[Correction]) -> str:
    """The decisions as a CSV that parse_corrections reads back, every column, each cell safe to
    open in a spreadsheet (trainer/cells.py)."""
    rows = [[each.written, each.label, each.sha256, each.opinion, each.decided] for each in decisions]
    return "".join(cells.line(row) for row in [COLUMNS, *rows])


def matcher(rows: list[Row], bases: list[Path], hash_decides: bool = False):
    """A function from a correction to the row it names, or None. hash_decides: a correction
    that carries a content hash names that content or nothing, never whatever photo now has its
    path (the dataset's record: another version of a zip reuses file names)."""
    by_sha = {row.sha256: row for row in rows if row.sha256}
    by_path = {str(row.path): row for row in rows}
    by_written = {row.written: row for row in rows}

    def match(correction: Correction) -> Row | None:
        if correction.sha256 and correction.sha256 in by_sha:
            return by_sha[correction.sha256]
        if correction.sha256 and hash_decides:
            return None
        resolved = resolve_image_path(correction.written, bases)
        found = by_path.get(str(resolved)) or by_written.get(correction.written)
        if found is None and resolved.is_file():
            try:
                found = by_sha.get(sha256_of(resolved))
            except OSError:
                found = None
        return found

    return match


def match_strictly(corrections: list[Correction], rows: list[Row], bases: list[Path], path: Path) -> list[Correction]:
    """Each correction of an explicit file with its image's content hash; InputError for a line
    that names no image of the dataset."""
    match, out = matcher(rows, bases), []
    for correction in corrections:
        row = match(correction)
        if row is None:
            raise InputError(
                f"--corrections: {path} line {correction.line}: {correction.written} names no image of this dataset "
                "(by path or by content); fix the path or remove the line"
            )
        out.append(replace(correction, sha256=row.sha256 or correction.sha256))
    return out


def apply(parts: dict[str, list[Row]], chosen: dict[Path, Correction], where: str) -> tuple[dict, dict]:
    """The parts with the chosen decisions applied (one per image, by its path), and their
    summary for the manifest and report: {"relabelled", "dropped", "kept", "classes": {label:
    {"in", "out", "dropped"}}, "new_classes"}. InputError naming `where` for decisions that leave a
    class with fewer than MIN_CLASS_SIZE images or fewer than two classes."""
    given = {row.label for part in parts.values() for row in part}
    classes: dict[str, Counter] = {}
    counts = Counter()
    out = {}
    for name, part in parts.items():
        kept = []
        for row in part:
            correction = chosen.get(row.path)
            if correction is None or correction.kind == KEEP or correction.label == row.label:
                counts["kept" if correction else "untouched"] += 1
                kept.append(row)
            elif correction.kind == DROP:
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
            f"{where} leaves {listed(f'{label!r} ({sizes[label]})' for label in small)} with fewer "
            f"than {MIN_CLASS_SIZE} images; relabel more images to it or drop it"
        )
    if len(sizes) < 2:
        raise InputError(f"{where} leaves fewer than two classes")
    summary = {
        "relabelled": counts["relabelled"],
        "dropped": counts["dropped"],
        "kept": counts["kept"],
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
