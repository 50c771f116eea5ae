"""data: the dataset unpacked under the data folder, counted per class, with a manifest that
tells `invoke train` where the images and the CSV are.

Sources: `concrete` (the 400 real photos the bundle ships in datasets/concrete, the default),
`demo` (the trainer's synthetic dataset, generated offline), a Google Drive file id or
share link (gdown), an http(s) URL, or a local zip or folder (such as one under the mounted
Drive). The manifest (`<data dir>/dataset.json`) records the source and its checksum, so a rerun
with the same source is a no-op and a new source replaces the old dataset whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from scripts.archives import download, extract_into, fetch
from scripts.steps import Context, Result, StepFailed, StepRefused, changed, ok
from trainer.atomic import partial_folder, remove_leftovers, replacing, sha256_of, write_atomically
from trainer.data.layout import MIN_CLASS_SIZE, choose_level, images_below, is_image_name, label_of, walk_files
from trainer.errors import InputError, listed

MANIFEST = "dataset.json"
SHIPPED = "concrete"
SHIPPED_FOLDER = Path(__file__).resolve().parent.parent / "datasets" / "concrete"
DRIVE_LINK = re.compile(r"drive\.google\.com/(?:file/d/|open\?id=|uc\?(?:.*&)?id=)([A-Za-z0-9_-]{10,})")
DRIVE_ID = re.compile(r"^(?:gdrive:)?([A-Za-z0-9_-]{25,})$")
DRIVE_DOWNLOAD = "https://drive.google.com/uc?id={id}"


def source_kind(source: str) -> tuple[str, str]:
    """('demo' | 'gdrive' | 'url' | 'local', the id, URL or path); `concrete` is the local folder
    of photos that ships with the bundle."""
    if source == "demo":
        return "demo", source
    if source == SHIPPED:
        return "local", str(SHIPPED_FOLDER)
    link = DRIVE_LINK.search(source)
    if link:
        return "gdrive", link.group(1)
    if source.startswith(("https://", "http://")):
        return "url", source
    bare = DRIVE_ID.match(source)
    if bare and not Path(source).exists():
        return "gdrive", bare.group(1)
    return "local", source


SHIPPED_NAME = "ud-cd-classifier"


def dataset_name(source: str) -> str:
    """The name a source's model is published under: the shipped photos keep the original
    workflow's `ud-cd-classifier`; another source is named after its file or folder (`my.zip`
    -> `my-classifier`, a Drive id -> `drive-<its first 8 characters>-classifier`), so that each
    dataset's model has its own folder and training on one never replaces another's; the
    suffix keeps it from ever being the data's own folder's name. `--name` overrides it."""
    if source == SHIPPED:
        return SHIPPED_NAME
    kind, value = source_kind(source)
    if kind == "demo":
        return "demo-classifier"
    if kind == "gdrive":
        return f"drive-{value[:8]}-classifier"
    stem = Path(value.split("?")[0].rstrip("/\\")).name
    for suffix in (".zip", ".tar.gz", ".tgz", ".tar"):
        stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-").lower() or "dataset") + "-classifier"


def count_images(folder: Path) -> dict[str, int]:
    """Images per class, by the trainer's own rule for class folders (trainer/data/layout.py: the
    folder one level down, or the inner one in SDNET2018's D/CD layout); where that rule finds
    the layout ambiguous, per folder path (the trainer then asks for --label-folder)."""
    images, _ = images_below(folder)
    try:
        level = choose_level(images, str(folder))
        counts = Counter(label_of(image, level) for image in images)
    except InputError:
        counts = Counter("/".join(image[:-1]) for image in images)
    loose = sum(1 for path in folder.iterdir() if path.is_file() and is_image_name(path.name))
    if loose:
        counts["."] += loose
    return dict(sorted(counts.items()))


def find_layout(root: Path, csv_name: str) -> tuple[Path, str | None]:
    """The folder the trainer gets as --folder, and the CSV inside it (or None for class folders).

    The original Images.zip unpacks to Images/CD, Images/UD with the CSV inside Images/; other
    archives put the CSV beside the folder or hold the class folders at the top.
    """
    csvs = sorted(root.rglob(csv_name)) or sorted(p for p in root.rglob("*.csv") if not p.name.startswith("."))
    if csvs:
        return csvs[0].parent, csvs[0].name
    folder = root
    while True:
        children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        files = [p for p in folder.iterdir() if p.is_file() and is_image_name(p.name)]
        # A lone folder that holds folders wraps the dataset (Images/CD, Images/UD); one that
        # holds the images is a class, and the folder above it the dataset (of one class).
        if len(children) == 1 and not files and any(p.is_dir() for p in children[0].iterdir()):
            folder = children[0]
            continue
        return folder, None


def trainers_counts(folder: Path, csv_name: str | None, unpacked: Path, source: str) -> dict[str, int]:
    """Images per class as the trainer will read them (trainer.data.rows: the CSV's columns and
    labels, or the class folders by its layout rule), each file once; StepRefused, naming what
    was found, where the trainer would refuse the data: so that a source the trainer cannot use
    never replaces a dataset it can. A layout the trainer asks --label-folder for is accepted,
    counted per folder path (that choice is the trainer's option)."""
    try:
        from trainer.data.rows import load_rows  # pandas, numpy and Pillow, only when there is new data
    except ImportError as error:
        raise StepFailed(
            f"checking the data needs {error.name}, which is not installed", "run `invoke pins` first"
        ) from None
    keep = "the previous dataset is kept"
    try:
        rows, _ = load_rows(folder, csv_name)
    except InputError as error:
        if csv_name is None and "--label-folder" in str(error):
            return count_images(folder)
        if csv_name is None and "no images in class subfolders" in str(error):
            raise StepRefused(
                f"no images found in {source}",
                f"the source must hold image files, in class folders or with a CSV; {keep}",
            ) from None
        said = str(error).replace(str(unpacked), source).replace("--folder: ", "").replace("--file: ", "")
        raise StepRefused(f"{source}: {said}", keep) from None
    first_label: dict[Path, str] = {}
    for row in rows:
        if row.path.is_file():
            first_label.setdefault(row.path, row.label)
    counts = dict(sorted(Counter(first_label.values()).items()))
    if sum(count >= MIN_CLASS_SIZE for count in counts.values()) < 2:
        found = listed([f"{label} ({count})" for label, count in counts.items()], 12) or "none"
        where = f"the CSV {csv_name}" if csv_name else "class folders"
        raise StepRefused(
            f"{source}: the trainer needs at least two classes of {MIN_CLASS_SIZE}+ images; classes found in {where}: "
            f"{found}",
            f"{keep}; lay images out as FOLDER/<class>/<image> or give a CSV ImagePath,Label",
        )
    return counts


def expected_counts(text: str | None) -> dict[str, int]:
    """'CD=200,UD=200' -> {'CD': 200, 'UD': 200}."""
    if not text:
        return {}
    wanted = {}
    for part in text.split(","):
        label, _, number = part.partition("=")
        if not label.strip() or not number.strip().isdigit():
            raise StepRefused(f"--expect: {part!r} is not LABEL=COUNT", "write it like CD=200,UD=200")
        wanted[label.strip()] = int(number)
    return wanted


def tree_state(folder: Path) -> str:
    """Every file's relative path, size and modification time, digested: a stat per file, no
    reading, and different once a file is added, removed, truncated or rewritten."""
    entries = []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            entries.append(f"{os.path.relpath(path, folder)}\0{info.st_size}\0{info.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{len(entries)} files, {digest}"


def read_manifest(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def model_of(manifest: dict) -> str:
    """The model's name for this dataset: the one `invoke train --name` last gave it, else its
    own (dataset_name)."""
    return manifest.get("model") or manifest.get("name") or dataset_name(manifest.get("source", SHIPPED))


def remember_model(data_dir: Path, name: str) -> None:
    """`invoke train --name NAME` on the data step's dataset: the name is kept in its manifest,
    so that the next plain `invoke train` (and `invoke decisions`) means the same model and
    record. Fetching another dataset writes a new manifest, and the name goes with the old one."""
    manifest = read_manifest(data_dir)
    if manifest is not None and manifest.get("model") != name:
        write_atomically(data_dir / MANIFEST, json.dumps({**manifest, "model": name}, indent=2) + "\n")


def _fetch_gdrive(file_id: str, destination: Path, ctx: Context, url_template: str) -> Path:
    """Download a shared Drive file with gdown, whole or not at all.

    Colab has gdown 5.2.2; 6.x removed `fuzzy=`, `id=`-only calls' old behaviour and the md5
    arguments, so the one call both accept is `download(url=..., output=...)`. When Drive
    refuses (not shared, quota used up), both raise FileURLRetrievalError; on other failures
    5.x may return None where 6.x raises DownloadError (FileURLRetrievalError's parent)."""
    try:
        import gdown
        from gdown.exceptions import FileURLRetrievalError
    except ImportError:
        raise StepFailed("gdown is not installed", "run `invoke pins` first") from None
    with replacing(destination) as temporary:
        try:
            result = gdown.download(url=url_template.format(id=file_id), output=str(temporary), quiet=False)
        except FileURLRetrievalError as error:
            if "too many users" in str(error).lower():
                raise StepFailed(
                    f"Google Drive refused file {file_id}: its download quota is used up for now",
                    "retry in a day, or copy the zip into your Drive and pass its /content/drive path",
                ) from None
            raise StepRefused(
                f"Google Drive refused file {file_id} (not shared with 'Anyone with the link')",
                "share it that way, or copy the zip into your Drive and pass its /content/drive path",
            ) from None
        except Exception as error:  # noqa: BLE001 - 6.x's DownloadError, and requests' errors under both
            # requests nests the cause a few levels deep; its errno line is what a person needs.
            errno_line = re.search(r"\[Errno -?\d+\] [^'\")]+", str(error))
            lines = str(error).strip().splitlines() or [""]
            reason = f"{type(error).__name__}: {errno_line.group(0) if errno_line else lines[0]}".rstrip(": ")
            raise StepFailed(
                f"Google Drive download of {file_id} failed ({reason})", "check the network; retry"
            ) from None
        if result is None or not temporary.is_file():
            raise StepRefused(f"Google Drive download of {file_id} produced no file", "check the id and its sharing")
    return destination


def _obtain(kind: str, value: str, downloads: Path, ctx: Context, sha256: str | None, url_template: str) -> Path:
    """The source as a local file or folder; a remote one is fetched once and reused while it
    matches its recorded checksum (see archives.fetch)."""
    if kind == "local":
        path = Path(value).expanduser()
        if not path.exists():
            raise StepRefused(f"--source: {path} does not exist", "check the path; is Drive mounted?")
        if sha256 and path.is_file() and sha256_of(path) != sha256:
            raise StepRefused(f"--source: {path} does not match --sha256", "check the file or the checksum")
        return path
    name = Path(value).name if kind == "url" else f"{value}.zip"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name.split("?")[0]).lstrip(".") or "download"
    if kind == "url":
        get = lambda target: download(value, target, echo=ctx.echo)  # noqa: E731
    else:
        get = lambda target: _fetch_gdrive(value, target, ctx, url_template)  # noqa: E731
    return fetch(downloads / name, get, sha256, echo=lambda message: ctx.echo(f"data: {message}"), what=value)


def dataset(
    ctx: Context,
    source: str = SHIPPED,
    data_dir: str = "data",
    sha256: str | None = None,
    expect: str | None = None,
    csv: str = "training_data.csv",
    demo_per_class: int = 60,
    demo_seed: int = 0,
    gdrive_url: str = DRIVE_DOWNLOAD,
) -> Result:
    data_path = (ctx.root / data_dir).resolve() if not Path(data_dir).is_absolute() else Path(data_dir)
    kind, value = source_kind(source)
    wanted_counts = expected_counts(expect)
    settings = {"source": source, "sha256": sha256}
    if kind == "demo":
        settings.update(per_class=demo_per_class, seed=demo_seed)
    elif kind == "local" and Path(value).expanduser().exists():
        # A zip or folder replaced in place (a new Images.zip on Drive) is a new dataset.
        settings["source_state"] = _source_state(Path(value).expanduser())
    unpacked = data_path / "dataset"
    manifest = read_manifest(data_path)
    same_source = bool(manifest) and {key: manifest.get(key) for key in settings} == settings
    # The model's name `invoke train --name` gave this dataset stays with it when it is unpacked again.
    kept = {"model": manifest["model"]} if same_source and manifest.get("model") else {}
    if same_source:
        if unpacked.is_dir() and manifest.get("tree") == tree_state(unpacked):
            _check_counts(manifest["counts"], wanted_counts)
            return ok(f"{_describe(manifest)} from {source}")
        ctx.echo(f"data: {unpacked} changed since it was unpacked; unpacking it again")
    if ctx.dry_run:
        return ctx.would(f"fetch {kind} source {source} into {data_path}")

    data_path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(data_path, ".dataset.", ".demo.", ".copy.", f".{MANIFEST}.")
    remove_leftovers(data_path / "downloads", ".")
    # The new dataset is fetched, unpacked and counted beside the old one, which keeps its
    # record until then: a source refused at any point (missing, unsafe, no images, counts
    # that differ from --expect) leaves the previous dataset recorded and in place.
    obtained = None if kind == "demo" else _obtain(kind, value, data_path / "downloads", ctx, sha256, gdrive_url)
    with partial_folder(unpacked, replace=True) as partial:
        if obtained is None:
            _make_demo(partial, demo_per_class, demo_seed)
        elif obtained.is_dir():
            copy_folder(obtained, partial, ctx)
        else:
            extract_into(obtained, partial)
        folder, csv_name = find_layout(partial, csv)
        counts = trainers_counts(folder, csv_name, partial, source)
        _check_counts(counts, wanted_counts)
        # The manifest says "done": it goes just before the new folder replaces the old one and
        # comes back last, so a run killed in between leaves none, and the rerun does the work.
        (data_path / MANIFEST).unlink(missing_ok=True)
    folder = unpacked / folder.relative_to(partial)
    manifest = {**settings, "name": dataset_name(source), "folder": str(folder), "file": csv_name, "counts": counts,
                "tree": tree_state(unpacked), **kept}  # fmt: skip
    write_atomically(data_path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return changed(f"{_describe(manifest)} from {source}")


def copy_folder(source: Path, target: Path, ctx: Context) -> None:
    """A local folder's regular files copied, by the trainer's rule for folders
    (trainer.data.layout.walk_files: links followed, loops and pipes, sockets and devices
    skipped with a warning, never opened)."""
    files, skipped = walk_files(source)
    for item in skipped:
        ctx.echo(f"data: WARNING: skipped {item}")
    for parts in files:
        (target / Path(*parts)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.joinpath(*parts), target.joinpath(*parts))


def _source_state(path: Path) -> str:
    """A local source's files by path, size and time (a stat each, nothing read)."""
    if path.is_dir():
        return tree_state(path)
    info = path.stat()
    return f"{info.st_size} bytes, {info.st_mtime_ns}"


def _make_demo(folder: Path, per_class: int, seed: int) -> None:
    try:
        from trainer.data.demo import make_demo_data  # numpy and Pillow, only when there is work to do
    except ImportError as error:
        raise StepFailed(
            f"the demo data needs {error.name}, which is not installed", "run `invoke pins` first"
        ) from None
    make_demo_data(folder, per_class=per_class, seed=seed)


def _describe(manifest: dict) -> str:
    counts = ", ".join(f"{label} {count}" for label, count in manifest["counts"].items())
    csv_part = f", CSV {manifest['file']}" if manifest.get("file") else ""
    return f"{sum(manifest['counts'].values())} images ({counts}) in {manifest['folder']}{csv_part}"


def _check_counts(counts: dict[str, int], wanted: dict[str, int]) -> None:
    wrong = [
        f"{label} {counts.get(label, 0)} (expected {number})"
        for label, number in wanted.items()
        if counts.get(label, 0) != number
    ]
    if wrong:
        found = listed([f"{label} {count}" for label, count in counts.items()], 12)
        raise StepRefused(
            f"image counts differ: {listed(wrong)}; classes found: {found}", "check the source, or fix --expect"
        )
