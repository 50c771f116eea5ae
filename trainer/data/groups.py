"""Which images must stay in one split: near-duplicates, and the groups a user names.

A score on a test image whose twin the model trained on flatters it (on 542 handwritten digits,
"Test accuracy 1.000" while 7 near-duplicate groups spanned the test and training splits).
Identical bytes were already merged by validation; here:

- near-duplicates: the same picture in other bytes (re-encoded, resized, slightly cropped),
  found from the 16 x 16 luminance thumbnails validation made of every image as it decoded it,
  so no image is read again. One rule, `near_duplicate_pairs`, for the split and the label
  audit (trainer.diagnostics.audit), so that once the split has kept each group whole, no
  near-duplicate group the audit lists spans two splits. RULE below says what it is and why.
- named groups: a `Group` column in the CSV, or --group-pattern, a regular expression searched
  in each image's path as listed, the text of its groups the key (SDNET2018's `7004-112.jpg` is
  crop 112 of deck photo 7004: `(\\d+)-\\d+\\.jpg$` keeps a photo's crops together).

Python's `re` cannot be interrupted or given a timeout, and a pattern such as `(a+)+$` takes
2^n steps on a name of n a's and one b, so a pattern runs in a worker process that is killed
when one name has held it for STALL_SECONDS; the run then stops with one line naming the
pattern and the name. Refusing such patterns by their syntax would refuse useful ones and miss
others (`.*.*.*.*x` is polynomial, and slow enough on a long name), and a cap on the names'
length bounds nothing when the time is exponential.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import time
from collections.abc import Sequence

import numpy as np

from trainer.config import parse_group_pattern
from trainer.data.rows import Row
from trainer.data.validate import fork_is_safe
from trainer.errors import InputError
from trainer.names import shown
from trainer.neighbours import groups as components
from trainer.neighbours import nearest, pairs, similarity_of

log = logging.getLogger("trainer")

THUMBNAIL = 16
# RULE. Pooled CNN features alone cannot tell a copy from a similar photo: measured on the
# concrete photos, copies score 0.89-0.93 cosine while distinct photos of the same surface reach
# 0.925, and on the synthetic set a JPEG re-encode drops to 0.41. A 16 x 16 luminance thumbnail
# (mean removed, unit length; the "tiny image" descriptor) keeps the layout they share: a pair
# counts when its thumbnails correlate at SIMILAR_LAYOUT or more and the pair stands out from
# the images' other neighbours (the ratio test of feature matching: its thumbnail distance at
# most DISTINCT times the distance to the CANDIDATES-th nearest thumbnail of either image), or
# at IDENTICAL or more whatever the neighbours (a picture filed more than CANDIDATES times).
# With too few images for the ratio test, SAME_LAYOUT alone decides. Measured (2026-12-07) on
# the 400 concrete photos with four copied three ways: re-encodes and resizes correlate
# 0.95-0.98, 8-pixel crops 0.75-0.88 at ratios up to 0.33, and the closest distinct pair's
# ratio is 0.41; on 5,658 generated photos with 20 copied three ways, the 20 groups were found
# whole and no distinct pair (the closest at ratio 0.41). The ratio test is what holds at
# scale: the more images, the closer each one's nearest distinct image comes (at 56,058
# generated photos 99 distinct pairs cleared a bar of 0.9 alone). The audit's rule before
# 2026-12-07 also let features vouch for a pair below 0.9; the split comes before any feature,
# and on both sets above the thumbnails alone, with the ratio test, found every planted copy.
SAME_LAYOUT, SIMILAR_LAYOUT, DISTINCT, IDENTICAL = 0.9, 0.75, 0.35, 0.98
CANDIDATES = 10  # nearest thumbnails per image looked at
STALL_SECONDS = 2.0  # one name may hold --group-pattern this long
START_SECONDS = 60.0  # the pattern's worker process may take this long to start


def unit_thumbnails(thumbnails: Sequence[bytes]) -> np.ndarray:
    """[n, 256] float32: each 8-bit 16 x 16 thumbnail (trainer.data.images), mean removed, unit
    length; a missing one (b"") is zeros, which correlates with nothing."""
    size = THUMBNAIL * THUMBNAIL
    out = np.zeros((len(thumbnails), size), dtype=np.float32)
    for index, raw in enumerate(thumbnails):
        if len(raw) == size:
            vector = np.frombuffer(raw, dtype=np.uint8).astype(np.float32)
            out[index] = vector - vector.mean()
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def near_duplicate_pairs(small: np.ndarray, hashes: Sequence[str] | None = None,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The pairs that are the same picture (RULE): (pairs [m, 2] of indices into `small`, i < j,
    their thumbnail correlations). `small`: unit thumbnails; `hashes`: each image's content
    hash, which orders the search, so the same images give the same pairs whatever order they
    come in (the split sees them by label, the audit by split). Candidates are each image's
    CANDIDATES nearest thumbnails (trainer.neighbours: memory linear in the images)."""
    small = np.ascontiguousarray(small, dtype=np.float32)
    order = np.argsort(np.asarray(hashes), kind="stable") if hashes is not None else np.arange(len(small))
    by_layout, layout_nearest = nearest(small[order], CANDIDATES, seed)
    candidates = pairs(by_layout)
    if not len(candidates):
        return candidates, np.zeros(0, dtype=np.float32)
    layout = similarity_of(small[order], candidates)
    if by_layout.shape[1] < CANDIDATES:  # CANDIDATES images or fewer: no background to stand out from
        same = layout >= SAME_LAYOUT
    else:  # each image's background: its CANDIDATES-th nearest thumbnail
        background = layout_nearest[:, -1]
        nearer = np.maximum(background[candidates[:, 0]], background[candidates[:, 1]])
        stands_out = (1 - layout) <= DISTINCT * (1 - nearer)
        same = ((layout >= SIMILAR_LAYOUT) & stands_out) | (layout >= IDENTICAL)
    linked = order[candidates[same]]
    return np.sort(linked, axis=1), layout[same]


def named_keys(rows: list[Row], pattern: str | None) -> list[str]:
    """Each row's named group: --group-pattern's key for its path as listed when a pattern is
    given (a row it does not match is alone: ""), else the CSV's Group cell."""
    if pattern is None:
        return [row.group for row in rows]
    if any(row.group for row in rows):
        raise InputError("--group-pattern and the CSV's Group column both name groups; use one of them")
    keys = pattern_keys(pattern, [row.written.replace("\\", "/") for row in rows])
    if rows and not any(keys):
        raise InputError(f"--group-pattern {shown(pattern, 80)} matches none of the {len(rows)} image paths (such as "
                         f"{shown(rows[0].written, 80)}); it is searched in each path as listed")  # fmt: skip
    return keys


def split_keys(rows: list[Row], thumbnails: dict[str, bytes], pattern: str | None, seed: int) -> list:
    """A key per row for trainer.data.split: rows that are near-duplicates of each other or in
    one named group (and so on, transitively) share one; a named group's key is its name (the
    first in order, when near-duplicates join two), any other key an int. Says in the log what
    it kept together."""
    named = named_keys(rows, pattern)
    small = unit_thumbnails([thumbnails.get(row.sha256, b"") for row in rows])
    linked, _ = near_duplicate_pairs(small, [row.sha256 for row in rows], seed)
    first: dict[str, int] = {}
    chained = [(first.setdefault(key, index), index) for index, key in enumerate(named) if key]
    joined = np.array([*linked.tolist(), *(pair for pair in chained if pair[0] != pair[1])], dtype=np.int64)
    root = components(len(rows), joined.reshape(-1, 2))
    names: dict[int, str] = {}
    for index, key in enumerate(named):
        if key:
            names.setdefault(int(root[index]), key)
    duplicates = np.unique(linked)
    duplicate_groups = len(np.unique(components(len(rows), linked)[duplicates]))
    if duplicate_groups:
        log.info("kept together in one split: %d near-duplicate group%s (%d images)", duplicate_groups,
                 "" if duplicate_groups == 1 else "s", len(duplicates))  # fmt: skip
    if first:
        source = "--group-pattern" if pattern is not None else "the CSV's Group column"
        log.info("kept together in one split: %d group%s named by %s", len(first), "" if len(first) == 1 else "s",
                 source)  # fmt: skip
    return [names.get(int(root[index]), int(root[index])) for index in range(len(rows))]


def held_out_twins(rows: list[Row], held_out: list[Row], thumbnails: dict[str, bytes], seed: int) -> set[str]:
    """The content hashes of `rows` that are near-duplicates of a `held_out` row (a
    --validation-file's): as an identical copy is, such a twin is kept out of training."""
    both = [*rows, *held_out]
    small = unit_thumbnails([thumbnails.get(row.sha256, b"") for row in both])
    linked, _ = near_duplicate_pairs(small, [row.sha256 for row in both], seed)
    root = components(len(both), linked)
    held = {int(root[index]) for index in range(len(rows), len(both))}
    return {row.sha256 for index, row in enumerate(rows) if int(root[index]) in held}


def pattern_keys(pattern: str, names: list[str]) -> list[str]:
    """Each name's key under `pattern` (its groups' text, joined by "/"; "" where it does not
    match), computed in a worker process that is killed when one name holds it for
    STALL_SECONDS (see the module's docstring); InputError then, naming the name."""
    parse_group_pattern(pattern)
    context = multiprocessing.get_context("fork" if fork_is_safe() else "spawn")
    progress = context.Value("q", -1, lock=False)
    receiving, sending = context.Pipe(duplex=False)
    worker = context.Process(target=_keys_in_worker, args=(pattern, names, progress, sending), daemon=True)
    worker.start()
    sending.close()
    try:
        return _wait_for_keys(receiving, worker, progress, pattern, names)
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()
        receiving.close()


def _wait_for_keys(receiving, worker, progress, pattern: str, names: list[str]) -> list[str]:
    seen, since, limit = -1, time.monotonic(), START_SECONDS
    while True:
        if receiving.poll(0.05):
            try:
                return receiving.recv()
            except EOFError:
                break
        if not worker.is_alive() and not receiving.poll(0):
            break
        if progress.value != seen:
            seen, since, limit = progress.value, time.monotonic(), STALL_SECONDS
        elif time.monotonic() - since > limit:
            if seen < 0:
                raise InputError(f"--group-pattern: its worker process did not start in {START_SECONDS:.0f} s; retry")
            raise InputError(
                f"--group-pattern {shown(pattern, 80)} ran over {STALL_SECONDS:.0f} s on one path "
                f"({shown(names[seen], 80)}): a repeat inside a repeat backtracks without end; write each part "
                r"once, e.g. (\d+)-\d+\.jpg$"
            )
    raise InputError(f"--group-pattern {shown(pattern, 80)}: its worker process died (exit code {worker.exitcode})")


def _keys_in_worker(pattern: str, names: list[str], progress, sending) -> None:
    compiled = re.compile(pattern)
    keys = []
    for index, name in enumerate(names):
        progress.value = index
        found = compiled.search(name)
        keys.append("/".join(part or "" for part in found.groups()) if found else "")
    progress.value = len(names)
    sending.send(keys)
    sending.close()
