"""What a model is trained from, as one record: the data's content, the resolved options, the
pinned stack and the trainer's code. The trainer stores it in the run's manifest.json; `invoke
train` computes it before training (no TensorFlow import; each image file's hash from a stat
cache, so an unchanged dataset is not read again) and trains nothing when the published model's
record is the same.

A Colab runtime reset wipes everything but Drive, and GPU quota is scarce: rerunning the
notebook must not retrain an identical model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from trainer import places, record
from trainer.atomic import sha256_of, write_atomically
from trainer.config import TrainConfig
from trainer.config import options as config_options
from trainer.data.images import FileState, stat_of
from trainer.data.rows import load_rows

# Options that say where things go, not what is trained.
# The packages whose versions change the model or its exports.
STACK = ("tensorflow", "keras", "numpy", "pillow", "protobuf", "h5py", "ml_dtypes", "onnx", "tf2onnx", "onnxruntime")
CODE = Path(__file__).resolve().parent


def data_digest(config: TrainConfig, files: dict | None = None, listed: tuple | None = None) -> str:
    """Every row as listed (path as written, label) with its file's content hash, in order; a
    missing or unreadable file counts as such, so fixing it changes the digest. `files`: each
    file's FileState as validation read it (the trainer: no file is read twice); without it
    (`invoke train`'s decision) the hashes come from the stat cache, reading only what changed.
    `listed`: (rows, validation rows) as load_rows returned them, so the listing is not read
    again; without it the folder or CSV is listed here."""
    rows, files = _listed_rows(config, files, listed)
    digest = hashlib.sha256()
    for row in rows:
        state = files[row.path]
        cells = [row.written, row.label, state.sha256 if state else "unreadable"]
        digest.update(json.dumps([*cells, row.group] if row.group else cells).encode())  # a Group cell moves the split
    if config.validation_file:
        validation = TrainConfig(folder=config.folder, file=config.validation_file, merge_labels=config.merge_labels,
                                 runs_dir=config.runs_dir, allow_outside_folder=config.allow_outside_folder)  # fmt: skip
        digest.update(b"validation:" + data_digest(validation, files, listed and (listed[1], None)).encode())
    return digest.hexdigest()


def _listed_rows(config: TrainConfig, files: dict | None, listed: tuple | None) -> tuple[list, dict]:
    """The rows as listed and every listed file's FileState (see data_digest)."""
    if listed is not None:
        rows = listed[0]
    else:
        rows, _ = load_rows(config.folder, config.file, config.label_folder, config.merge_labels,
                            config.allow_outside_folder)  # fmt: skip
    if files is None or any(row.path not in files for row in rows):
        files = {**(files or {}), **file_states([row.path for row in rows], stat_cache(config))}
    return rows, files


def listing(config: TrainConfig) -> tuple[tuple, dict]:
    """The data as listed, (rows, validation rows or None), and every listed file's FileState
    from the stat cache: what invoke's decision computes once and hands to data_digest and
    decisions_in_force, as the trainer hands them what validation read."""
    rows, files = _listed_rows(config, None, None)
    validation = None
    if config.validation_file:
        held = TrainConfig(folder=config.folder, file=config.validation_file, merge_labels=config.merge_labels,
                           label_folder=config.label_folder, runs_dir=config.runs_dir,
                           allow_outside_folder=config.allow_outside_folder)  # fmt: skip
        validation, files = _listed_rows(held, files, None)
    return (rows, validation), files


def decisions_in_force(config: TrainConfig, files: dict | None = None, listed: tuple | None = None) -> record.InForce:
    """The decisions in force for the data as listed, validation file included (the dataset's
    record and --corrections: trainer/record.py), read only: what invoke says before training,
    and what the request holds."""
    if listed is None or files is None:
        listed, files = listing(config)
    rows = [*listed[0], *(listed[1] or [])]
    hashed = [replace(row, sha256=files[row.path].sha256) for row in rows if files.get(row.path)]
    return record.gather(places.record(config), config.corrections, hashed, [Path(config.folder)])


def decisions_digest(decisions: record.InForce) -> str | None:
    """The label changes in force, by content (a keep changes nothing): None when there are none."""
    changes = decisions.changes()
    if not changes:
        return None
    return hashlib.sha256(json.dumps(changes).encode()).hexdigest()


def weights_identity(weights: str) -> str:
    """A weights file by its content, so that moving it changes nothing; imagenet and none as
    they are."""
    if weights in ("imagenet", "none"):
        return weights
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "file-" + digest.hexdigest()[:16]


STAT_CACHE = ".file-hashes.json"


def stat_cache(config: TrainConfig) -> Path:
    """Where the content hashes of the last dataset are kept by path and stat: the runs folder."""
    return Path(config.runs_dir) / STAT_CACHE


def file_states(paths: list[Path], cache: Path | None) -> dict:
    """Each path's FileState: from `cache` where the file's size, modification and change times
    and inode are as recorded, else read and hashed (and recorded). A stat that differs is a
    miss, and a miss only costs a read, so the cache can never make a changed file look the same
    (a file changed between its stat and its read is recorded under the older stat)."""

    try:
        known = json.loads(cache.read_text()) if cache is not None else {}
    except (OSError, ValueError):
        known = {}
    out, fresh = {}, {}
    for path in dict.fromkeys(paths):
        stat, entry = stat_of(path), known.get(str(path))
        if stat is not None and entry and tuple(entry[:4]) == stat:
            out[path] = FileState(*stat, entry[4])
            continue
        try:
            content = sha256_of(path)
        except OSError:
            content = None
        out[path] = FileState(*stat, content) if stat is not None and content is not None else None
        fresh[path] = out[path]
    if cache is not None and (fresh or len(known) != len(out)):
        remember(out, cache)
    return out


def remember(files: dict, cache: Path) -> None:
    """Record these FileStates as the stat cache (what cannot be written is simply not cached)."""

    entries = {str(path): [s.size, s.mtime_ns, s.ctime_ns, s.inode, s.sha256] for path, s in files.items() if s}
    with contextlib.suppress(OSError):  # a read-only runs folder: nothing is cached
        write_atomically(cache, json.dumps(entries))


def code_digest() -> str:
    digest = hashlib.sha256()
    for source in sorted(CODE.rglob("*.py")):
        digest.update(str(source.relative_to(CODE)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def stack() -> dict[str, str | None]:
    """The exact versions a run uses (supported.txt lets a runtime keep its own within ranges),
    and Python's: a moved runtime image retrains, and says which package moved."""
    import platform

    versions = {}
    for name in STACK:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {**versions, "python": platform.python_version()}


def training_request(config: TrainConfig, files: dict | None = None, listed: tuple | None = None) -> dict:
    """{"data", "options", "stack", "code"}: each part compared on its own, so that a rerun can
    say what changed. `files`, `listed`: as for data_digest."""
    if listed is None or files is None:
        listed, files = listing(config)
    return {
        "data": data_digest(config, files, listed),
        "corrections": decisions_digest(decisions_in_force(config, files, listed)),
        "options": compared_options(config),
        "stack": stack(),
        "code": code_digest(),
    }


def compared_options(config: TrainConfig) -> dict:
    """The options that make the model: every one but the places (trainer/config.py)."""
    options = {option.name: getattr(config, option.name) for option in config_options() if not option.metadata["place"]}
    if options["weights"] not in ("auto", "imagenet", "none"):
        options["weights"] = weights_identity(options["weights"])  # the file's content, not its path
    return options


def request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _shown(value) -> str:
    """An option's value as a user writes it: `CD=0.95`, `0.001`, `yes`; unset as `(unset)`."""
    if value is None or value == "":
        return "(unset)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def what_changed(old: dict | None, new: dict) -> list[str]:
    """Short reasons a model trained from `old` is not the one `new` asks for."""
    if not old:
        return ["no record of what the published model was trained from"]
    reasons = []
    if old.get("data") != new["data"]:
        reasons.append("the data changed")
    if old.get("corrections") != new.get("corrections"):
        reasons.append("the review decisions in force changed" if new.get("corrections")
                       else "no review decision is in force any more")  # fmt: skip
    before, after = old.get("options") or {}, new["options"]
    changed = sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key))
    reasons += [f"--{key.replace('_', '-')} {_shown(before.get(key))} -> {_shown(after.get(key))}" for key in changed]
    moved = sorted(name for name in new["stack"] if (old.get("stack") or {}).get(name) != new["stack"][name])
    reasons += [f"{name} {(old.get('stack') or {}).get(name)} -> {new['stack'][name]}" for name in moved]
    if old.get("code") != new["code"]:
        reasons.append("the trainer's code changed")
    return reasons
