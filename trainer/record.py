"""The dataset's record: what the user decided for one dataset, kept in one place beside its
published model and read by every entry point (`invoke train`, the notebook's review cell,
`python -m trainer train` and `audit`), so that a rerun, a runtime reset or the plain
`invoke setup train` never undoes it.

    <model>-record/      beside the published <model>/ (MyDrive/ with Drive mounted, else published/)
      record.json          the dataset's name and source, and what its published model was trained from
      decisions/           one CSV per review saved or --corrections file added, never rewritten:
                           ImagePath,Label,Sha256,Opinion,Decided (trainer.data.corrections reads it)
      cleared-<time>/      decisions set aside by `invoke decisions --clear`; move the files back to restore

A decision names its image by content hash (and, for people, by path) and is a class (relabel),
`drop` or `keep`. The latest decision about an image wins (by its Decided time, then by file
name and line), except that a keep confirms the relabel or drop in force rather than undoing it:
the form shows each photo under the label in force, so "keep" means that label is right (to undo
a relabel, relabel back). A keep changes no label, so it is no part of what a model is trained
from; it is remembered so that a review does not list the photo again while the audit's opinion
of it (the Opinion column: why it was listed and what label it suggested) stays what it was. A
decision that carries a content hash names that content alone: another photo that comes to have
its path (a new version of a zip reuses file names) is not it.

No lock reaches across machines (two Colab sessions on one Drive), so no decision is ever
rewritten in place: each save is a new file under a name no other writer picks, written whole
(temporary name, renamed), and a reader merges them all by content hash: two writers at once
lose nothing. record.json holds no decision; it is merged on write (read, update, write whole).
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer.atomic import replacing, write_atomically
from trainer.data.corrections import (
    DROP,
    KEEP,
    MAX_BYTES,
    Correction,
    format_corrections,
    match_strictly,
    matcher,
    parse_corrections,
    read_corrections,
)
from trainer.data.rows import Row
from trainer.errors import InputError, counted

SUFFIX = "-record"
DECISIONS = "decisions"
INFO = "record.json"
LEGACY = "-corrections.csv"  # what the review cell saved beside the published model before the record
MAX_FILE_BYTES = MAX_BYTES  # one decisions file: as much as a corrections file may hold


def beside(published: Path) -> Path:
    """The record of the model published in `published`: <published>-record beside it."""
    return published.with_name(f"{published.name}{SUFFIX}")


def now() -> str:
    """A decision's time: UTC, to the microsecond, so that decisions sort by it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def key(decision: Correction) -> str:
    """Which image a decision is about, as far as the decision alone says."""
    return decision.sha256 or f"path:{decision.written}"


# ---------------------------------------------------------------------------------------------
# Reading and writing decisions


def read_decisions(folder: Path, settle: bool = False) -> list[Correction]:
    """Every decision the record holds, oldest first, a legacy <model>-corrections.csv beside it
    included (settle: taken into the record first, as every path that writes does: settle()).
    InputError naming a damaged file."""
    legacy = settle_legacy(folder) if settle else _legacy_decisions(folder)
    files = sorted((folder / DECISIONS).glob("[!.]*.csv")) if (folder / DECISIONS).is_dir() else []
    found = [*legacy]
    for path in files:
        found += _read_file(path)
    return sorted(found, key=_order)


def _order(decision: Correction) -> tuple:
    return decision.decided, decision.file, decision.line


def _read_file(path: Path) -> list[Correction]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(
                f"the dataset's record: {path} is over {MAX_FILE_BYTES >> 20} MB; move it out of {path.parent}"
            )
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(
            f"the dataset's record: {path} is not UTF-8 text; fix it or move it out of {path.parent}"
        ) from None
    except OSError as error:
        raise InputError(f"the dataset's record: cannot read {path} ({error.strerror or error})") from None
    try:
        return parse_corrections(text, path, what="the dataset's record")
    except InputError as error:
        raise InputError(f"{error}; fix that file or move it out of {path.parent}") from None


def latest(decisions: list[Correction]) -> dict[str, Correction]:
    """The latest decision about each image (by key), from decisions oldest first."""
    return {key(decision): decision for decision in decisions}


def _news(old: Correction | None, new: Correction) -> bool:
    """Whether `new` changes what the record says of its image: a first decision, another
    label, or a keep under another opinion of the audit's."""
    if old is None or old.label != new.label:
        return True
    return new.kind == KEEP and new.opinion != old.opinion


def add(folder: Path, decisions: list[Correction], stamp: str | None = None) -> list[Correction]:
    """Add to the record the decisions that change what it says (so adding a file twice adds
    nothing the second time), as one new file; returns them, stamped with their time."""
    current = latest(read_decisions(folder, settle=True))
    stamp = stamp or now()
    fresh = {}
    for decision in decisions:
        decision = replace(decision, decided=decision.decided or stamp)
        if _news(fresh.get(key(decision)) or current.get(key(decision)), decision):
            fresh[key(decision)] = decision
    if fresh:
        _write_file(folder, list(fresh.values()), stamp)
    return list(fresh.values())


def _write_file(folder: Path, decisions: list[Correction], stamp: str) -> Path:
    """A new decisions file under a name no other writer picks (its time and a random token)."""
    name = f"{stamp.replace(':', '').replace('.', '-')}-{secrets.token_hex(4)}.csv"
    target = folder / DECISIONS / name
    for attempt in range(2):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomically(target, format_corrections(decisions))
            return target
        except FileNotFoundError:
            if attempt:  # the folder went away under us twice (a --clear at that moment)
                raise
    return target


def clear(folder: Path) -> tuple[int, Path | None]:
    """Set every decision aside (decisions/ renamed to cleared-<time>/, whole): (how many, where)."""
    decisions = read_decisions(folder, settle=True)
    if not decisions:
        return 0, None
    if not (folder / DECISIONS).is_dir():  # a legacy file that could not be taken in
        raise InputError(f"the dataset's record {folder} cannot be written; make it writable and rerun")
    aside = folder / f"cleared-{now().replace(':', '').replace('.', '-')}"
    os.replace(folder / DECISIONS, aside)
    return len(decisions), aside


def export(folder: Path, target: Path) -> int:
    """The latest decision about each image the record names (in the data or not), written to
    `target` as a corrections file (the form --corrections reads); returns how many."""
    decisions = sorted(latest(read_decisions(folder)).values(), key=_order)
    write_atomically(target, format_corrections(decisions))
    return len(decisions)


def _legacy_file(folder: Path) -> Path:
    return folder.with_name(folder.name.removesuffix(SUFFIX) + LEGACY)


def _legacy_decisions(folder: Path) -> list[Correction]:
    legacy = _legacy_file(folder)
    if not legacy.is_file():
        return []
    stamp = datetime.datetime.fromtimestamp(legacy.stat().st_mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    what = f"{legacy.name} (the review cell's file before the dataset's record)"
    return [replace(decision, decided=stamp) for decision in read_corrections(legacy, what)]


def settle_legacy(folder: Path) -> list[Correction]:
    """<model>-corrections.csv, which the review cell saved beside the published model before
    the record existed: the first time a run that writes reads the record, its decisions become
    a file of the record (decided when the file was last written) and it is removed. Where the
    record cannot be written they are returned, to be read all the same."""
    decisions = _legacy_decisions(folder)
    if not decisions:
        return []
    try:
        _write_file(folder, decisions, decisions[0].decided)
        _legacy_file(folder).unlink()
    except OSError:
        return decisions
    return []


# ---------------------------------------------------------------------------------------------
# The dataset's facts: record.json


def read_info(folder: Path) -> dict:
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise InputError(f"the dataset's record: {folder / INFO} is damaged ({error}); delete it (it holds no "
                         "decision) and rerun") from None  # fmt: skip
    return info if isinstance(info, dict) else {}


def update_info(folder: Path, values: dict) -> dict:
    """Merge `values` into record.json (read, update, write whole, under a temporary name of
    its own: two runtimes may write at once); returns what it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    merged = {**read_info(folder), **values}
    with replacing(folder / INFO, unique=True) as temporary:
        temporary.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return merged


# ---------------------------------------------------------------------------------------------
# The decisions in force for a dataset


@dataclass
class InForce:
    """The record's decisions (and an explicit file's) about one dataset's images."""

    where: str  # the record's folder, or "" without one
    chosen: dict[Path, Correction] = field(default_factory=dict)  # the decision in force per image of this data
    images: dict[Path, Row] = field(default_factory=dict)  # the image each chosen decision is about
    confirmed: dict[Path, Correction] = field(default_factory=dict)  # keeps that confirm a relabel or drop in force
    skipped: int = 0  # images the decisions name that are not in this data
    file: str = ""  # --corrections FILE, when given
    given: list[Correction] = field(default_factory=list)  # its decisions, matched and stamped

    def changes(self) -> list[tuple[str, str]]:
        """(content hash, new label or drop) for each decision that changes an image's label:
        what a model is trained from (a keep, or a label the image has already, is not)."""
        out = set()
        for path, decision in self.chosen.items():
            sha, label = self.images[path].sha256, self.images[path].label
            if decision.kind == DROP:
                out.add((sha, DROP))
            elif decision.kind == "relabel" and decision.label != label:
                out.add((sha, decision.label))
        return sorted(out)

    def decisions(self) -> list[Correction]:
        """The decisions in force and the keeps that confirm them, oldest first: what a run keeps
        as its corrections.csv, which reads back (--corrections) to the same."""
        return sorted([*self.chosen.values(), *self.confirmed.values()], key=_order)

    def kind(self, path: Path) -> str:
        """relabel, drop or keep, as the decision in force about `path` works on its image (a
        relabel to the label it has is a keep)."""
        decision = self.chosen[path]
        same = decision.kind == "relabel" and decision.label == self.images[path].label
        return KEEP if same else decision.kind

    def described(self) -> str:
        kinds = [self.kind(path) for path in self.chosen]
        counts = ", ".join(counted(kinds.count(kind), kind) for kind in ("relabel", DROP, KEEP) if kinds.count(kind))
        said = f"{counted(len(kinds), 'decision')} in force ({counts})" if kinds else "no decision in force"
        where = f" from the dataset's record {self.where}" if self.where else ""
        file = f" and {self.file}" if self.file and self.where else f" from {self.file}" if self.file else ""
        skipped = (f"; {counted(self.skipped, 'names an image', 'name images')} no longer in the data (skipped)"
                   if self.skipped else "")  # fmt: skip
        return f"{said}{where}{file}{skipped}"


def in_force(
    decisions: list[Correction], rows: list[Row], bases: list[Path], where: str = "", file: str = ""
) -> InForce:
    """The decision in force about each image of `rows` (content hashes filled in), from
    decisions oldest first: the latest, except that a keep confirms a relabel or a drop in force
    rather than undoing it (a keep says the label shown is right, and the form shows the label
    in force; to undo a relabel, relabel back). A decision that carries a content hash names that
    content alone; decisions about images not in `rows` are counted, not applied."""
    match = matcher(rows, bases, hash_decides=True)
    result = InForce(where, file=file)
    missing = set()
    for decision in sorted(decisions, key=_order):
        row = match(decision)
        if row is None:
            missing.add(key(decision))
            continue
        earlier = result.chosen.get(row.path)
        if decision.kind == KEEP and earlier is not None and earlier.kind != KEEP:
            result.confirmed[row.path] = decision
            continue
        result.chosen[row.path], result.images[row.path] = decision, row
        result.confirmed.pop(row.path, None)
    result.skipped = len(missing)
    return result


def gather(folder: Path | None, file: str | None, rows: list[Row], bases: list[Path], settle: bool = False) -> InForce:
    """The decisions in force for `rows`: the record's in `folder` (None: without one), then
    those of an explicit --corrections `file` as the latest, matched strictly (a line naming no
    image is an InputError) and kept in the result's `given` for keep_given, which the trainer
    calls once they have applied cleanly. settle: the caller writes the record (settle_legacy)."""
    decisions = read_decisions(folder, settle) if folder is not None else []
    given = []
    if file:
        # An explicit file is decided now, whatever times it carries (a run's corrections.csv does).
        stamp = now()
        given = [replace(decision, decided=stamp) for decision in
                 match_strictly(read_corrections(file), rows, [Path(file).parent, *bases], Path(file))]  # fmt: skip
        decisions = sorted([*decisions, *given], key=_order)
    result = in_force(decisions, rows, bases, str(folder) if folder is not None else "", file or "")
    result.given = given
    return result


def keep_given(folder: Path | None, decisions: InForce) -> list[Correction]:
    """An explicit --corrections file's decisions added to the record (what it did not say
    already). OSError when the record cannot be written: the caller says so."""
    if folder is None or not decisions.given:
        return []
    return add(folder, decisions.given, decisions.given[0].decided)
