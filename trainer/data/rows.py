"""The labelled image list, read: a CSV `ImagePath,Label` or a folder of class folders, as
plain rows. Data flows one way: `load_rows` (here) -> `validate` (trainer.data.validate) ->
`split` (trainer.data.split); each returns plain records, so that the tf.data pipeline,
evaluation and the run folder all see the same list.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath

from trainer.config import parse_merge
from trainer.data import layout
from trainer.data.report import Report
from trainer.errors import InputError
from trainer.names import check_class, shown

MAX_CSV_BYTES = 64 << 20  # SDNET2018's 56,000 rows are about 3 MB; pandas holds a few times the file
MAX_ROWS = 500_000  # five times the largest dataset this bundle is built for (a million took 56 s, 1.3 GB)

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Row:
    """One labelled image: where it was listed, the path as written, and the file it names."""

    line: int  # line number in the CSV (1 = header), 0 for folder listings
    written: str  # the path as the CSV or folder listing wrote it
    path: Path  # resolved, absolute
    label: str
    sha256: str = ""
    group: str = ""  # the CSV's Group cell: rows of one group stay in one split ("" when none)


def resolve_csv(folder: Path, file: str) -> Path:
    """The original app read `--folder Images --file training_data.csv` as Images/training_data.csv;
    an absolute path or one relative to the working directory works too."""
    candidates = [Path(file)] if Path(file).is_absolute() else [folder / file, Path(file)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(f"--file: CSV {file!r} not found in {folder} or the working directory")


def resolve_image_path(written: str, bases: list[Path]) -> Path:
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


def read_csv_rows(csv_path: Path, image_folder: Path, allow_outside: bool = False) -> tuple[list[Row], Report]:
    """Read `ImagePath,Label` rows (and `Group`, when the CSV has that column: rows of one group
    stay in one split). Paths are relative to the CSV's folder, as the original data writes
    them; the image folder is tried second. BOM, CRLF, extra columns and any header case are
    accepted. A row must name an image inside the image folder (links followed), unless
    allow_outside; the seed's `../Images/CD/x.jpg` from Images/training_data.csv is inside."""
    report = Report()
    frame, columns = _csv_frame(csv_path)
    bases, within = [csv_path.parent, image_folder], layout.Within(image_folder)
    rows = []
    for line, record in enumerate(frame.iloc[1:].itertuples(index=False), start=2):
        if not any(cell.strip() for cell in record):
            continue
        report.rows_read += 1
        written, label = record[columns["imagepath"]].strip(), record[columns["label"]].strip()
        if not written or not label:
            report.add("rows with an empty ImagePath or Label", f"line {line}")
            continue
        path = resolve_image_path(written, bases)
        if not allow_outside and not within(path):
            # Refused on its name alone: the message is the same whether such a file exists or not.
            raise InputError(
                f"{csv_path} line {line}: {shown(written, 120)} is outside the image folder {image_folder}; keep the "
                "images inside it, or pass --allow-outside-folder"
            )
        group = record[columns["group"]].strip() if "group" in columns else ""
        rows.append(Row(line, written, path, label, group=group))
    if report.rows_read == 0:
        raise InputError(f"{csv_path}: header only, no rows; add lines like 'CD/0001.jpg,CD'")
    return rows, report


def _csv_frame(csv_path: Path):
    """The CSV as a frame of text cells (the header its first row) and its columns by lower-case
    name; InputError for a file too large, unreadable, not UTF-8, empty, unparsable, without
    ImagePath and Label, or with more rows than MAX_ROWS."""
    try:
        if csv_path.stat().st_size > MAX_CSV_BYTES:
            raise InputError(f"{csv_path}: {csv_path.stat().st_size >> 20} MB, over the {MAX_CSV_BYTES >> 20} MB a "
                             "CSV of image paths may be; split the dataset")  # fmt: skip
        text = csv_path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise InputError(f"{csv_path}: cannot read ({error.strerror or error})") from None
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
    if len(frame) - 1 > MAX_ROWS:
        raise InputError(f"{csv_path}: {len(frame) - 1} rows, over the {MAX_ROWS} a dataset may list; split it")
    return frame, columns


def read_folder_rows(folder: Path, label_folder: str = "auto", allow_outside: bool = False) -> tuple[list[Row], Report]:
    """One subfolder per class: folder/CD/*.jpg, folder/UD/*.jpg; or nested, as SDNET2018's
    folder/D/CD/*.jpg, where trainer.data.layout decides (or --label-folder says) which level is
    the class."""
    report = Report()
    if not folder.is_dir():
        raise InputError(f"--folder: {folder} is not a folder")
    images, skipped = layout.images_below(folder, contained=not allow_outside)
    for item in skipped:
        report.add("skipped: not a regular file, or a folder already listed", item)
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
    folder: str | Path,
    file: str | None,
    label_folder: str = "auto",
    merge_labels: str | None = None,
    allow_outside: bool = False,
) -> tuple[list[Row], Report]:
    """The rows a CSV or class folders list, labels merged (--merge-labels) and held to the
    class-name rule (trainer/names.py): a bad name is one line naming the row that carries it."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"--folder: {folder} does not exist")
    mapping = parse_merge(merge_labels)
    csv_path = resolve_csv(folder, file) if file else None
    if csv_path is not None:
        rows, report = read_csv_rows(csv_path, folder, allow_outside)
    else:
        rows, report = read_folder_rows(folder, label_folder, allow_outside)
    _check_names(rows, csv_path, folder, mapping)
    if mapping:
        labels = layout.merged([row.label for row in rows], mapping)
        rows = [replace(row, label=label) for row, label in zip(rows, labels, strict=True)]
        report.notes.append("labels merged: " + ", ".join(f"{old} -> {new}" for old, new in sorted(mapping.items())))
    return rows, report


def _check_names(rows: list[Row], csv_path: Path | None, folder: Path, mapping: dict[str, str]) -> None:
    """Each label once, before merging (a name --merge-labels replaces need not pass: it is
    gone once the rows are merged), where the first row with it says."""
    first: dict[str, Row] = {}
    for row in rows:
        first.setdefault(row.label, row)
    for label, row in first.items():
        if label in mapping:
            continue
        check_class(label, f"{csv_path} line {row.line}" if csv_path is not None else f"--folder {folder}")
