"""The labelled image list: read it (CSV or class folders), validate it, split it.

Data flows one way: `load_rows` -> `validate` -> `split`. Each stage returns plain records so
that the tf.data pipeline, evaluation and the run folder all see the same list.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath

import numpy as np

from trainer import layout
from trainer.errors import ImageError, InputError
from trainer.images import FileState, ImageInfo, read_and_inspect
from trainer.progress import progress_bar

log = logging.getLogger("trainer")

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Row:
    """One labelled image: where it was listed, the path as written, and the file it names."""

    line: int  # line number in the CSV (1 = header), 0 for folder listings
    written: str  # the path as the CSV or folder listing wrote it
    path: Path  # resolved, absolute
    label: str
    sha256: str = ""


@dataclass
class Report:
    """What validation found: each problem with a count and a few examples."""

    rows_read: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[Path, FileState | None] = field(default_factory=dict)  # every listed file, as validation read it
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # sha256 -> 16 x 16 luminance, 8-bit

    def add(self, kind: str, example: str) -> None:
        self.problems.setdefault(kind, []).append(example)

    def lines(self, examples: int = 3) -> list[str]:
        out = []
        for kind, items in self.problems.items():
            shown = "; ".join(items[:examples]) + ("; ..." if len(items) > examples else "")
            out.append(f"{kind}: {len(items)} ({shown})")
        return out

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "problems": {kind: {"count": len(v), "examples": v[:5]} for kind, v in self.problems.items()},
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_csv(folder: Path, file: str) -> Path:
    """The original app read `--folder Images --file training_data.csv` as Images/training_data.csv;
    an absolute path or one relative to the working directory works too."""
    candidates = [Path(file)] if Path(file).is_absolute() else [folder / file, Path(file)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(f"--file: CSV {file!r} not found in {folder} or the working directory")


def _resolve_image_path(written: str, bases: list[Path]) -> Path:
    """Relative paths resolve against the CSV's folder first, then the image folder. A Windows
    path (..\\Images\\CD\\x.jpg, or C:\\data\\CD\\x.jpg written on another machine) is matched by
    its trailing parts, longest first."""
    text = written.strip()
    if "\\" in text or PureWindowsPath(text).drive:
        windows = PureWindowsPath(text)
        parts = windows.parts[1:] if windows.anchor else windows.parts
        tails = [parts[i:] for i in range(len(parts))] if windows.anchor else [parts]
        relatives = [Path(*tail) for tail in tails if tail]
    elif Path(text).is_absolute():
        return Path(text)
    else:
        relatives = [Path(text)]
    candidates = [Path(os.path.normpath(base / rel)) for rel in relatives for base in bases]
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def read_csv_rows(csv_path: Path, image_folder: Path) -> tuple[list[Row], Report]:
    """Read `ImagePath,Label` rows. Paths are relative to the CSV's folder, as the original data
    writes them; the image folder is tried second. BOM, CRLF, extra columns and any header case
    are accepted."""
    report = Report()
    try:
        raw = csv_path.read_bytes()
    except OSError as error:
        raise InputError(f"{csv_path}: cannot read ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{csv_path}: not UTF-8 text (byte {error.start}); save it as UTF-8 CSV and retry") from None
    if not text.strip():
        raise InputError(f"{csv_path}: empty file; expected a header 'ImagePath,Label' and rows")
    first_line = text.splitlines()[0]
    delimiter = "," if "," in first_line else next((c for c in (";", "\t", "|") if c in first_line), ",")
    import pandas as pd

    try:
        # Every cell as text ("NA" or "1e3" is a name, not a value); the header read as a row, so
        # that a row with more cells than it is an error rather than an index column; blank
        # lines kept, so that a row's position is its line in the file.
        frame = pd.read_csv(
            io.StringIO(text), sep=delimiter, header=None, dtype=str, keep_default_na=False, skip_blank_lines=False
        ).fillna("")
    except pd.errors.ParserError as error:
        detail = str(error).strip().removeprefix("Error tokenizing data. C error: ")
        raise InputError(f"{csv_path}: {detail}; quote an ImagePath that holds {delimiter!r}") from None
    header = [str(name).strip() for name in frame.iloc[0]]
    columns = {name.lower(): index for index, name in enumerate(header)}
    missing = [name for name in ("imagepath", "label") if name not in columns]
    if missing:
        found = ", ".join(repr(name) for name in header) or "none"
        wanted = " and ".join({"imagepath": "ImagePath", "label": "Label"}[m] for m in missing)
        raise InputError(f"{csv_path}: no {wanted} column (found {found}); the header must be ImagePath,Label")
    bases = [csv_path.parent, image_folder]
    rows = []
    for line, record in enumerate(frame.iloc[1:].itertuples(index=False), start=2):
        if not any(cell.strip() for cell in record):
            continue
        report.rows_read += 1
        written, label = record[columns["imagepath"]].strip(), record[columns["label"]].strip()
        if not written or not label:
            report.add("rows with an empty ImagePath or Label", f"line {line}")
            continue
        rows.append(Row(line, written, _resolve_image_path(written, bases), label))
    if report.rows_read == 0:
        raise InputError(f"{csv_path}: header only, no rows; add lines like 'CD/0001.jpg,CD'")
    return rows, report


def read_folder_rows(folder: Path, label_folder: str = "auto") -> tuple[list[Row], Report]:
    """One subfolder per class: folder/CD/*.jpg, folder/UD/*.jpg; or nested, as SDNET2018's
    folder/D/CD/*.jpg, where trainer.layout decides (or --label-folder says) which level is
    the class."""
    report = Report()
    if not folder.is_dir():
        raise InputError(f"--folder: {folder} is not a folder")
    images = layout.images_below(folder)
    if not images:
        raise InputError(
            f"--folder: no images in class subfolders of {folder}; "
            "give --file CSV or lay images out as FOLDER/<label>/<image>"
        )
    level = layout.choose_level(images, str(folder), label_folder)
    rows = [
        Row(0, "/".join(image), (folder / Path(*image)).absolute(), layout.label_of(image, level)) for image in images
    ]
    report.rows_read = len(rows)
    if level == "leaf" and len(images[0]) > 2:
        report.notes.append(f"classes from the inner folders ({', '.join(sorted({row.label for row in rows}))})")
    return rows, report


def load_rows(
    folder: str | Path, file: str | None, label_folder: str = "auto", merge_labels: str | None = None
) -> tuple[list[Row], Report]:
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"--folder: {folder} does not exist")
    mapping = layout.parse_merge(merge_labels)
    rows, report = read_csv_rows(resolve_csv(folder, file), folder) if file else read_folder_rows(folder, label_folder)
    if mapping:
        labels = layout.merged([row.label for row in rows], mapping)
        rows = [replace(row, label=label) for row, label in zip(rows, labels, strict=True)]
        report.notes.append("labels merged: " + ", ".join(f"{old} -> {new}" for old, new in sorted(mapping.items())))
    return rows, report


# ---------------------------------------------------------------------------------------------
# Validation


def _inspect_chunk(paths: list[Path]) -> list[tuple[FileState | None, ImageInfo | ImageError]]:
    return [read_and_inspect(path) for path in paths]


PROCESSES_FROM = 128  # images: below this, starting worker processes costs more than they save


def usable_cpus() -> int:
    """The CPUs this process may run on (a container or taskset may allow fewer than exist)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def fork_is_safe() -> bool:
    """Whether worker processes may be forked from here: only where fork exists and this process
    runs no other Python thread. A forked child keeps just the forking thread, so a lock another
    thread held (TensorFlow's, a progress bar's monitor) would stay locked in it forever. The
    trainer validates before it imports TensorFlow, so its runs qualify; evaluate, after loading
    a model, does not and keeps to threads."""
    return "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1


def inspection_plan(count: int, workers: int | None = None) -> tuple[str, int]:
    """How validation spreads `count` files: ("processes" | "threads" | "loop", workers).

    Pillow parses a JPEG's markers and runs exif_transpose in Python, holding the GIL for about
    70% of the check of a 256 px photo (cProfile: the decoder itself is 30%), so two threads
    gave 0.86-1.07x over one, and forked processes 1.65-1.76x over a plain loop at 400 and 4,000
    images (BENCHMARKS.md). Threads remain where forking is not safe."""
    workers = workers or usable_cpus()
    if workers <= 1 or count < 2:
        return "loop", 1
    if count >= PROCESSES_FROM and fork_is_safe():
        return "processes", workers
    return "threads", workers


def _inspect_all(paths: list[Path], workers: int | None, chunk: int = 16) -> list[tuple]:
    """Read and inspect every image, in chunks (one task per image costs more in futures and
    locks than a 256 px image costs to check), on one forked process per CPU where that is safe,
    else one thread per CPU (Pillow releases the GIL while it decodes and hashlib while it
    hashes). Each result: (FileState or None, ImageInfo or ImageError), in the order of paths."""
    how, workers = inspection_plan(len(paths), workers)
    if how == "processes":
        chunk = max(chunk, min(256, len(paths) // (workers * 4)))  # fewer, larger messages
    chunks = [paths[start : start + chunk] for start in range(0, len(paths), chunk)]
    if how == "loop":
        return _gather(map(_inspect_chunk, chunks), len(paths))
    if how == "processes":
        try:
            # The pool forks every worker before it starts its own threads, and before the bar.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                return _gather(pool.map(_inspect_chunk, chunks), len(paths))
        except BrokenProcessPool:
            log.warning("WARNING: a validation worker process died; checking the images again on threads")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _gather(pool.map(_inspect_chunk, chunks), len(paths))


def _gather(done: Iterator[list[tuple]], total: int) -> list[tuple]:
    results: list[tuple] = []
    bar = progress_bar(total=total, desc="validate images")
    for part in done:
        results += part
        bar.update(len(part))
    bar.close()
    return results


def _where(row: Row) -> str:
    return f"line {row.line}: {row.written}" if row.line else row.written


def validate(
    rows: list[Row],
    report: Report,
    *,
    strict: bool = False,
    min_class_size: int = 3,
    allow_one_class: bool = False,
    workers: int | None = None,
) -> list[Row]:
    """Drop what cannot be trained on and report why; with strict, any such row is an error.

    The order of the checks matters: duplicate rows first (they are harmless), then files, then
    content, then labels, then class sizes, so that each row is blamed for its first problem.
    """
    # Every listed file is read once, here: its hash and stat (the run's data fingerprint and
    # invoke's stat cache), whether it decodes, and its thumbnail (the label audit's).
    paths = list(dict.fromkeys(row.path for row in rows))
    inspected = dict(zip(paths, _inspect_all(paths, workers), strict=True))
    report.files = {path: state for path, (state, _) in inspected.items()}
    rows = _one_spelling_per_label(rows, report)
    unique = _one_row_per_file(rows, report)
    distinct = _one_copy_per_content(_readable(unique, report, {path: found for path, (_, found) in inspected.items()}),
                                      report)  # fmt: skip
    counts = Counter(row.label for row in distinct)
    small = {label for label, count in counts.items() if count < min_class_size}
    for label in sorted(small):
        report.add(
            "classes too small to split", f"{label!r} has {counts[label]} image(s), needs at least {min_class_size}"
        )
    kept = [row for row in distinct if row.label not in small]

    dropped = report.rows_read - len(kept)
    if strict and report.problems:
        raise InputError(f"--strict: {dropped} unusable row(s): " + " | ".join(report.lines(2)))
    final = Counter(row.label for row in kept)
    needed = 1 if allow_one_class else 2
    if len(final) < needed:
        found = ", ".join(f"{label!r} ({count})" for label, count in sorted(counts.items())) or "no usable images"
        raise InputError(
            f"need {'a class' if needed == 1 else 'at least two classes'} with {min_class_size}+ usable "
            f"images each, found {found}; " + ("; ".join(report.lines(1)) or "add images of another class")
        )
    report.notes.append(
        f"{len(kept)} usable images: " + ", ".join(f"{label} {count}" for label, count in sorted(final.items()))
    )
    largest, smallest = max(final.values()), min(final.values())
    if largest >= 3 * smallest:
        report.notes.append(
            f"classes are imbalanced ({largest} vs {smallest} images); accuracy alone will flatter the model"
        )
    return sorted(kept, key=lambda row: (row.label, str(row.path)))


def _one_spelling_per_label(rows: list[Row], report: Report) -> list[Row]:
    """Labels that differ only in case or whitespace are one class, spelled as most rows spell it."""
    spellings: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        spellings[" ".join(row.label.split()).casefold()][row.label] += 1
    canonical = {}
    for variants in spellings.values():
        chosen = min(variants, key=lambda spelling: (-variants[spelling], spelling))  # ties: "CD" before "cd"
        for variant in variants:
            canonical[variant] = chosen
        if len(variants) > 1:
            report.add("labels differing only in case or whitespace", " = ".join(repr(v) for v in variants))
    return [replace(row, label=canonical[row.label]) for row in rows]


def _one_row_per_file(rows: list[Row], report: Report) -> list[Row]:
    """The same file listed twice with the same label is a duplicate row; with different labels
    it is a contradiction, and every row of that file goes."""
    by_path: dict[Path, list[Row]] = defaultdict(list)
    for row in rows:
        by_path[row.path].append(row)
    unique = []
    for listed in by_path.values():
        labels = {row.label for row in listed}
        if len(labels) > 1:
            report.add("files listed with different labels", f"{listed[0].written} as {sorted(labels)}")
            continue
        if len(listed) > 1:
            report.add("duplicate rows", f"{_where(listed[1])} repeats line {listed[0].line}")
        unique.append(listed[0])
    if len(unique) < len(rows):
        report.notes.append(f"{len(rows)} rows hold {len(unique)} distinct images")
    return unique


def _readable(rows: list[Row], report: Report, inspected: dict[Path, ImageInfo | ImageError]) -> list[Row]:
    """The rows whose file decodes, each with its content's SHA-256 (and its thumbnail kept in
    report.thumbnails)."""
    readable, animated = [], []
    for row in rows:
        result = inspected[row.path]
        if isinstance(result, ImageError):
            kind = "missing files" if "file not found" in str(result) else "unreadable or corrupt images"
            report.add(kind, f"{_where(row)} ({str(result).split(': ', 1)[-1]})")
        else:
            readable.append(replace(row, sha256=result.sha256))
            report.thumbnails[result.sha256] = result.thumbnail
            if result.frames > 1:
                animated.append(f"{row.written} ({result.frames} frames)")
    if animated:
        report.notes.append(
            f"WARNING: {len(animated)} animated image(s), e.g. {animated[0]}: only the first frame is used"
        )
    return readable


def _one_copy_per_content(rows: list[Row], report: Report) -> list[Row]:
    """Identical bytes under different paths would leak between the splits; keep the first copy."""
    by_content: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_content[row.sha256].append(row)
    distinct = []
    for copies in by_content.values():
        if len({row.label for row in copies}) > 1:
            pair = " vs ".join(f"{row.written} ({row.label})" for row in copies[:2])
            report.add("identical images with different labels", pair)
            continue
        for extra in copies[1:]:
            report.add("identical content under different paths", f"{extra.written} = {copies[0].written}")
        distinct.append(copies[0])
    return distinct


# ---------------------------------------------------------------------------------------------
# Split


def split(rows: list[Row], validation_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Row]]:
    """Stratified and seeded: every class gets at least one image in each split."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: (row.label, str(row.path))):
        by_label[row.label].append(row)
    parts: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        members = by_label[label]
        order = rng.permutation(len(members))
        n = len(members)
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(n * validation_fraction)) if validation_fraction > 0 else 0
        n_test = min(n_test, n - 2) if n_val else min(n_test, n - 1)
        n_val = min(n_val, n - n_test - 1)
        shuffled = [members[i] for i in order]
        parts["test"] += shuffled[:n_test]
        parts["validation"] += shuffled[n_test : n_test + n_val]
        parts["train"] += shuffled[n_test + n_val :]
    return parts


def write_split(parts: dict[str, list[Row]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImagePath", "Label", "Split", "Sha256"])
        for name in SPLITS:
            for row in parts[name]:
                writer.writerow([str(row.path), row.label, name, row.sha256])


def read_split(path: Path) -> dict[str, list[Row]]:
    parts: dict[str, list[Row]] = {name: [] for name in SPLITS}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            parts[record["Split"]].append(
                Row(line, record["ImagePath"], Path(record["ImagePath"]), record["Label"], record["Sha256"])
            )
    return parts
