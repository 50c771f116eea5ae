"""The bottleneck cache: every image goes through the frozen backbone once; its pooled features
are stored on disk and reused by every later run with the same key.

    WORKSPACE/features/<key>/shard-<digest>.npz     sha256 (N,), features (N, D) float32, crc32 (N,)

The key covers what changes the features: backbone, image size, weights (a file's hash, or
"imagenet"), and the preprocessing version. Within a key, features are found by each image
file's content hash, so renamed or moved images still hit, and a new or edited image alone is
featurized. The cache is a store with an index, not a dict loaded whole: a run reads every
shard's keys (64 bytes an image), then only the feature rows it needs, straight into the one
array the run holds (trainer.features.extract), with each row checked against its own CRC-32. A
damaged shard or row is dropped and its images featurized again. Features are stored every
SHARD_SECONDS (and at the end), so a run killed halfway through a large dataset keeps most of
what it computed; a shard is written under a temporary name and renamed, so a kill never
leaves half of one under its real name. Shards are uncompressed zip files (numpy's .npz), so a
row is found at a fixed offset; shards written before the CRC column are read whole and checked
against the zip's own CRC. `python -m trainer cache` lists what a workspace holds and drops the
entries no dataset of yours uses any more.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from trainer.atomic import replacing
from trainer.data.rows import load_rows
from trainer.errors import counted, os_error_sentence
from trainer.fingerprint import file_states, weights_identity

log = logging.getLogger("trainer")

# Bump when the decoding or resizing of images changes: old features would no longer match.
PREPROCESSING = "pil-exif-rgb-bilinear-v1"
# Seconds of featurizing between shards: what a kill can cost. TRAINER_SHARD_SECONDS overrides
# it (a slow network disk may want fewer, larger writes; the fault tests want many).
SHARD_SECONDS = float(os.environ.get("TRAINER_SHARD_SECONDS") or 30.0)
READ_ROWS = 4096  # rows read from a shard at a time


def cache_key(backbone: str, image_size: int, weights: str, feature_layer: str | None = None,
              policy: object = "float32", pooling: str = "avg") -> str:  # fmt: skip
    """The cache folder's name. Features computed in float16 or bfloat16 differ from float32
    ones (by up to about 1e-2 of their scale: tests/features/test_bottleneck.py measures it), so the
    compute dtype is part of the key, and a head never trains on a mix of the two. A float32
    key is the same as before the dtype was added, so earlier caches stay valid; likewise the
    pooling (trainer/pooling.py) is in the key only when it is not avg, the pooling every key
    before it had."""
    compute = getattr(policy, "compute_dtype", None) or str(policy).removeprefix("mixed_")
    parts = [backbone, image_size, weights_identity(weights), feature_layer, PREPROCESSING]
    if compute != "float32":
        parts.append(compute)
    if pooling != "avg":
        parts.append(f"pooling={pooling}")
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]
    named = ("" if compute == "float32" else f"{compute}-") + ("" if pooling == "avg" else f"{pooling}-")
    return f"{backbone}-{image_size}-{named}{digest}"


class Damaged(ValueError):
    """A shard that cannot be read as written."""


def _row_checksums(features: np.ndarray) -> np.ndarray:
    return np.array([zlib.crc32(row.tobytes()) for row in features], dtype=np.uint32)


class Shard:
    """One shard file: its keys, and where its feature rows start inside the zip."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = data["sha256"]
                self.checksums = data["crc32"] if "crc32" in data.files else None
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("features.npy")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
            raise Damaged(str(error) or type(error).__name__) from None
        self.keys = (np.char.decode(keys, "ascii") if keys.dtype.kind == "S" else keys).tolist()
        self.stored = info.compress_type == zipfile.ZIP_STORED
        self.member_size = info.file_size
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            local = handle.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise Damaged("no local header for features.npy")
            name_length, extra_length = struct.unpack("<HH", local[26:30])
            handle.seek(info.header_offset + 30 + name_length + extra_length)
            self.member_start = handle.tell()
            try:
                version = np.lib.format.read_magic(handle)
                reader = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = reader(handle)
            except ValueError as error:
                raise Damaged(f"features.npy header: {error}") from None
            self.data_start = handle.tell()
        if len(shape) != 2 or shape[0] != len(self.keys) or fortran or dtype != np.dtype("<f4"):
            raise Damaged(f"features.npy is {dtype} {shape}, for {len(self.keys)} keys")
        if self.checksums is not None and len(self.checksums) != len(self.keys):
            raise Damaged("crc32 and sha256 of different lengths")
        self.width = shape[1]
        if self.member_size != self.data_start - self.member_start + shape[0] * shape[1] * 4:
            raise Damaged("features.npy is shorter or longer than its header says")

    def read(self, rows: np.ndarray, out: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Copy feature rows `rows` (sorted) into out[positions]; returns a mask of the rows
        whose CRC did not match (they are left unwritten)."""
        bad = np.zeros(len(rows), dtype=bool)
        if self.checksums is None or not self.stored:
            whole = self._whole()
            out[positions] = whole[rows]
            return bad
        row_bytes = self.width * 4
        with open(self.path, "rb") as handle:
            start = 0
            while start < len(rows):
                # A run of consecutive rows, at most READ_ROWS, is one read.
                stop = start + 1
                while stop < len(rows) and stop - start < READ_ROWS and rows[stop] == rows[stop - 1] + 1:
                    stop += 1
                handle.seek(self.data_start + int(rows[start]) * row_bytes)
                block = np.frombuffer(handle.read((stop - start) * row_bytes), dtype="<f4")
                if len(block) != (stop - start) * self.width:
                    raise Damaged("features.npy ends early")
                block = block.reshape(stop - start, self.width)
                for offset, row in enumerate(block):
                    if zlib.crc32(row.tobytes()) != self.checksums[rows[start + offset]]:
                        bad[start + offset] = True
                    else:
                        out[positions[start + offset]] = row
                start = stop
        return bad

    def _whole(self) -> np.ndarray:
        """Every row, checked against the zip's CRC (shards from before the per-row CRCs)."""
        with zipfile.ZipFile(self.path) as archive:
            try:
                raw = archive.read("features.npy")  # zipfile checks the member's CRC
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise Damaged(str(error)) from None
        offset = self.data_start - self.member_start
        return np.frombuffer(raw, dtype="<f4", offset=offset).reshape(len(self.keys), self.width)


class FeatureCache:
    """The shards of one cache key. `index` maps every stored key (an image's sha256, or
    "sha256:view") to its shard and row; it is read once and kept up to date by `add`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._index: dict[str, tuple[Shard, int]] | None = None
        self.refused = ""  # why shards are no longer stored, once a write was refused

    @property
    def index(self) -> dict[str, tuple[Shard, int]]:
        if self._index is None:
            self._index = {}
            if self.folder.is_dir():
                for leftover in self.folder.glob(".shard-*.partial-*.npz"):  # from a killed run
                    if not _alive(leftover.name.rsplit("-", 1)[-1].removesuffix(".npz")):
                        leftover.unlink(missing_ok=True)
                # Oldest first, so that a key stored twice (a damaged row featurized again) maps
                # to its newest copy.
                for path in sorted(self.folder.glob("shard-*.npz"), key=_written):
                    self._open(path)
        return self._index

    def _open(self, path: Path) -> None:
        try:
            shard = Shard(path)
        except Damaged as error:
            self._drop(path, error)
            return
        self._index.update((key, (shard, row)) for row, key in enumerate(shard.keys))

    def _drop(self, path: Path, reason) -> None:
        log.warning("WARNING: damaged feature cache shard %s (%s): removed, its images are featurized again",
                    path.name, reason)  # fmt: skip
        path.unlink(missing_ok=True)
        if self._index is not None:
            self._index = {key: place for key, place in self._index.items() if place[0].path != path}

    def read(self, keys: list[str], out: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Copy the features of keys[i] into out[positions[i]] where the cache has them; returns
        a mask of the keys it did not have (absent, or in a damaged shard or row)."""
        missing = np.ones(len(keys), dtype=bool)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        shards: dict[Path, Shard] = {}
        for number, key in enumerate(keys):
            place = self.index.get(key)
            if place is not None:
                shards[place[0].path] = place[0]
                by_shard.setdefault(place[0].path, []).append((place[1], number))
        for path, wanted in by_shard.items():
            wanted.sort()
            rows = np.array([row for row, _ in wanted])
            numbers = np.array([number for _, number in wanted])
            try:
                bad = shards[path].read(rows, out, positions[numbers])
            except (Damaged, OSError) as error:
                self._drop(path, error)
                continue
            if bad.any():
                log.warning("WARNING: feature cache shard %s: %s, featurized again", path.name,
                            counted(int(bad.sum()), "damaged row"))  # fmt: skip
            missing[numbers[~bad]] = False
        return missing

    def load(self) -> dict[str, np.ndarray]:
        """key -> feature vector for everything readable (small caches and tests)."""
        keys = list(self.index)
        if not keys:
            return {}
        width = next(iter(self.index.values()))[0].width
        out = np.zeros((len(keys), width), dtype=np.float32)
        missing = self.read(keys, out, np.arange(len(keys)))
        return {key: out[number] for number, key in enumerate(keys) if not missing[number]}

    def add(self, hashes: list[str], features: np.ndarray) -> Path:
        """Write one shard, atomically: a temporary name, then a rename. The shard is made in
        memory and written with one plain write, so a refused write is one OSError and leaves
        nothing behind (np.savez straight to a full disk left a half-closed zip and a second
        error at exit)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256("".join(sorted(hashes)).encode()).hexdigest()[:16]
        target = self.folder / f"shard-{digest}.npz"
        features = np.ascontiguousarray(features, dtype=np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, sha256=np.array(hashes, dtype="S"), features=features, crc32=_row_checksums(features))
        # Named by process: runs sharing a cache on Drive may store the same shard at once.
        with replacing(target, suffix=".npz", unique=True) as temporary:
            temporary.write_bytes(buffer.getvalue())
        if self._index is not None:
            self._open(target)
        return target

    def store(self, hashes: list[str], features: np.ndarray) -> None:
        """add, for a run that featurizes: a cache is worth having, not worth the run, so a
        write the machine refuses is said once and the run goes on with its features in memory
        (the next run featurizes those images again)."""
        if self.refused:
            return
        try:
            self.add(hashes, features)
        except OSError as error:
            self.refused = os_error_sentence(error, self.folder, where="--workspace")
            log.warning("WARNING: features are no longer stored in the cache (%s); this run goes on, and the next "
                        "one featurizes these images again", self.refused)  # fmt: skip

    def prune(self, keep) -> tuple[int, int]:
        """Drop every entry whose image (the sha256 before any ":view") is not in `keep`:
        shards rewritten without them, whole or not at all. Returns (entries kept, dropped)."""
        kept = dropped = 0
        self.index  # noqa: B018 - drops damaged shards and leftovers first
        for path in sorted(self.folder.glob("shard-*.npz")):
            try:
                shard = Shard(path)
            except Damaged as error:
                self._drop(path, error)
                continue
            wanted = [row for row, key in enumerate(shard.keys) if key.split(":", 1)[0] in keep]
            dropped += len(shard.keys) - len(wanted)
            kept += len(wanted)
            if len(wanted) == len(shard.keys):
                continue
            if wanted:
                out = np.zeros((len(wanted), shard.width), dtype=np.float32)
                bad = shard.read(np.array(wanted), out, np.arange(len(wanted)))
                good = [number for number in range(len(wanted)) if not bad[number]]
                self.add([shard.keys[wanted[number]] for number in good], out[good])
            path.unlink(missing_ok=True)
        self._index = None
        return kept, dropped


def summarize_caches(workspace, keep_folder: str | None = None, keep_file: str | None = None) -> list[str]:
    """`python -m trainer cache`: one line per cache key (entries, images, size); with
    keep_folder, every entry of an image not in that dataset is dropped first."""

    root = Path(workspace) / "features"
    if not root.is_dir():
        return [f"{root}: no feature cache here"]
    keep = None
    if keep_folder:
        rows, _ = load_rows(keep_folder, keep_file)
        keep = {state.sha256 for state in file_states([row.path for row in rows], None).values() if state}
    lines = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        cache = FeatureCache(folder)
        dropped = cache.prune(keep)[1] if keep is not None else 0
        keys = list(cache.index)
        size = sum(path.stat().st_size for path in folder.glob("shard-*.npz"))
        images = len({key.split(":", 1)[0] for key in keys})
        lines.append(f"{folder.name}: {len(keys)} entries of {images} images, {size / 1e6:.1f} MB"
                     + (f" ({dropped} dropped)" if keep is not None else ""))  # fmt: skip
    return lines


def _written(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:
        return 0, path.name


def _alive(pid: str) -> bool:
    """Is the process that named a temporary shard still running (another run sharing the cache)?"""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
