"""Validation: every listed file read once (its hash, its stat, whether it decodes, its
thumbnail), then duplicates, damaged files, conflicting labels and class sizes, each found and
reported with counts and examples; unusable rows dropped with a warning, or an error with
--strict."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from trainer.data import layout
from trainer.data.images import FileState, ImageInfo, read_and_inspect
from trainer.data.report import Report
from trainer.data.rows import Row
from trainer.errors import ImageError, InputError, counted, listed
from trainer.progress import progress_bar

log = logging.getLogger("trainer")


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
    min_class_size: int = layout.MIN_CLASS_SIZE,
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
            "classes too small to split",
            f"{label!r} has {counted(counts[label], 'image')}, needs at least {min_class_size}",
        )
    kept = [row for row in distinct if row.label not in small]

    dropped = report.rows_read - len(kept)
    if strict and report.problems:
        raise InputError(f"--strict: {counted(dropped, 'unusable row')}: " + " | ".join(report.lines(2)))
    final = Counter(row.label for row in kept)
    needed = 1 if allow_one_class else 2
    if len(final) < needed:
        found = listed(f"{label!r} ({count})" for label, count in sorted(counts.items())) or "no usable images"
        raise InputError(
            f"need {'a class' if needed == 1 else 'at least two classes'} with {min_class_size}+ usable "
            f"images each, found {found}; " + ("; ".join(report.lines(1)) or "add images of another class")
        )
    return sorted(kept, key=lambda row: (row.label, str(row.path)))


def note_usable(report: Report, rows: list[Row], after: str = "") -> list[str]:
    """Notes on the images left to train or score on, added to the report and returned: how many
    of each class, and an imbalance. Said by the caller once nothing more changes the rows (a run
    says it after the review decisions, so the count is the sum of its splits); `after` names
    what changed them."""
    counts = Counter(row.label for row in rows)
    per_class = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
    notes = [f"{counted(len(rows), 'usable image')}{after}: {per_class}"]
    largest, smallest = max(counts.values(), default=0), min(counts.values(), default=0)
    if counts and largest >= 3 * smallest:
        notes.append(f"classes are imbalanced ({largest} vs {smallest} images); accuracy alone will flatter the model")
    report.notes.extend(notes)
    return notes


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
    for same_file in by_path.values():
        labels = {row.label for row in same_file}
        if len(labels) > 1:
            report.add("files listed with different labels", f"{same_file[0].written} as {sorted(labels)}")
            continue
        if len(same_file) > 1:
            report.add("duplicate rows", f"{_where(same_file[1])} repeats line {same_file[0].line}")
        unique.append(same_file[0])
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
            f"WARNING: {counted(len(animated), 'animated image')}, e.g. {animated[0]}: only the first frame is used"
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
