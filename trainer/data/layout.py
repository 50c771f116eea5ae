"""Which folder names an image's class, in a folder of class folders, and merging labels.

    Images/CD/x.jpg, Images/UD/y.jpg            one level: the folder is the class
    SDNET2018/D/CD/x.jpg, SDNET2018/P/UP/y.jpg  two levels, inner names unique: the inner folder
                                                (CD, UD, CP, UP, CW, UW), since each refines
                                                its parent (deck, pavement, wall)
    data/train/CD/x.jpg, data/val/CD/y.jpg      two levels, inner names repeated: ambiguous
                                                (splits over classes, or classes over batches?)

`--label-folder auto` takes the first two cases and refuses the third, and any mix of depths,
with one line that says what each choice would mean; `top` or `leaf` says it outright.
`--merge-labels cracked=CD+CP+CW,uncracked=UD+UP+UW` then joins labels (from folders or a CSV).
Standard library only: the data step counts a dataset's classes by the same rule.
"""

from __future__ import annotations

import os
import stat
from collections import Counter, defaultdict
from pathlib import Path

from trainer.errors import InputError, listed

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABEL_FOLDERS = ("auto", "top", "leaf")
# The fewest images a class needs to be split into training, validation and test; smaller ones
# are dropped with a warning (trainer.data.validate), and the data step refuses a source that
# would leave fewer than two classes (scripts/dataset.py).
MIN_CLASS_SIZE = 3


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


# What is never opened: reading a named pipe blocks forever (validation hung on one named
# zz-pipe.jpg), and a socket or device is no image either.
SPECIAL = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
           stat.S_IFBLK: "a block device"}  # fmt: skip


def special_kind(path: str | Path) -> str | None:
    """What a path is when it is neither a regular file nor a folder (after following links):
    'a named pipe', ..., 'a broken link'; None for a regular file or folder (or nothing there)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else None
    except OSError:
        return None
    return SPECIAL.get(stat.S_IFMT(mode))


LEAVES = "a link that leaves the folder, not followed: pass --allow-outside-folder to follow it"


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path`, links followed, lies in `folder` (links followed too). Decided on the
    names alone where nothing is there, so the answer never says whether a file exists."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


class Within:
    """inside(path, folder) for many paths of one folder, at about one stat a path: each
    folder's real path is found once, and a file's own only when it is a link (56,000 CSV rows
    in a few folders cost 56,000 lstat calls, not 56,000 walks up the tree)."""

    def __init__(self, folder: str | Path):
        self.top = Path(os.path.realpath(folder))
        self.folders: dict[str, bool] = {}

    def __call__(self, path: str | Path) -> bool:
        path = os.path.abspath(path)
        if os.path.islink(path):
            return Path(os.path.realpath(path)).is_relative_to(self.top)
        parent = os.path.dirname(path)
        if parent not in self.folders:
            self.folders[parent] = Path(os.path.realpath(parent)).is_relative_to(self.top)
        return self.folders[parent]


def walk_files(folder: Path, contained: bool = True) -> tuple[list[tuple[str, ...]], list[str]]:
    """Every regular file under `folder`, as its path's parts relative to it, sorted; and what
    was skipped, each with why. The one rule for a folder of files, shared by the trainer's
    class folders, predict's folders and the data step's copy:

    - hidden folders and files (a leading dot) are left out;
    - named pipes, sockets, devices and broken links are skipped with a warning, never opened;
    - links are followed, to files and to folders alike, but a folder already walked (a link
      back up the tree, or a second link to one folder) or one that holds `folder` is skipped
      with a warning, so a loop ends and no image is listed twice;
    - contained: a link that leads out of `folder` is skipped with a warning (the trainer's
      --allow-outside-folder follows it)."""
    found, skipped, seen = [], [], set()
    top = Path(os.path.realpath(folder))
    for directory, folders, names in os.walk(folder, followlinks=True):
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            folders[:] = []
            skipped.append(f"{directory} (a link to a folder already listed)")
            continue
        if directory != str(folder) and top.is_relative_to(os.path.realpath(directory)):
            folders[:] = []
            skipped.append(f"{directory} (a link to a folder that holds this one: a loop)")
            continue
        if contained and not inside(directory, top):
            folders[:] = []
            skipped.append(f"{directory} ({LEAVES})")
            continue
        seen.add((info.st_dev, info.st_ino))
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        relative = Path(directory).relative_to(folder).parts
        for name in sorted(names):
            if not name.startswith("."):
                _take(found, skipped, directory, relative, name, top if contained else None)
    return sorted(found), skipped


def _take(found: list, skipped: list, directory: str, relative: tuple, name: str, top: Path | None) -> None:
    """One file of walk_files: listed, or skipped with why."""
    path = os.path.join(directory, name)
    kind = special_kind(path)
    if kind is None and top is not None and os.path.islink(path) and not inside(path, top):
        kind = LEAVES  # (a file that is no link lies where its folder does, which was checked)
    if kind is None:
        found.append((*relative, name))
    else:
        skipped.append(f"{path} ({kind})")


def images_below(folder: Path, contained: bool = True) -> tuple[list[tuple[str, ...]], list[str]]:
    """Every image under the class folders of `folder` (images directly in `folder` are not in
    a class), by walk_files's rule; and what was skipped."""
    files, skipped = walk_files(folder, contained)
    return [parts for parts in files if len(parts) > 1 and is_image_name(parts[-1])], skipped


def choose_level(parts: list[tuple[str, ...]], where: str, label_folder: str = "auto") -> str:
    """ "top" or "leaf" for these image paths, or InputError naming what is ambiguous."""
    if label_folder not in LABEL_FOLDERS:
        raise InputError(f"--label-folder must be auto, top or leaf (got {label_folder!r})")
    depths = Counter(len(image) - 1 for image in parts)
    if label_folder != "auto" or set(depths) <= {1}:
        return "top" if label_folder == "auto" else label_folder
    tops = sorted({image[0] for image in parts})
    leaves = sorted({image[-2] for image in parts})
    example = lambda names: ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")  # noqa: E731
    choices = f"--label-folder top (classes {example(tops)}) or --label-folder leaf (classes {example(leaves)})"
    if len(depths) > 1:
        shallow, deep = (min(depths), max(depths))
        raise InputError(
            f"--folder {where}: images sit {shallow} and {deep} folder levels deep, so the class folder is not "
            f"clear; say {choices}"
        )
    parents = defaultdict(set)
    for image in parts:
        parents[image[-2]].add(image[:-2])
    repeated = sorted(name for name, above in parents.items() if len(above) > 1)
    if repeated:
        shared = "/".join(sorted(parents[repeated[0]])[0]) + "/" + repeated[0]
        raise InputError(
            f"--folder {where}: the inner folders' names repeat under different outer ones (e.g. {shared}), so the "
            f"class folder is not clear; say {choices}"
        )
    return "leaf"


def label_of(image: tuple[str, ...], level: str) -> str:
    return image[0] if level == "top" else image[-2]


def merged(labels: list[str], mapping: dict[str, str]) -> list[str]:
    """The labels after --merge-labels; an old label that no image carries is an error (a typo
    would otherwise leave a class unmerged without a word)."""
    unknown = sorted(set(mapping) - set(labels))
    if unknown:
        found = listed(sorted(set(labels)), 12)
        raise InputError(f"--merge-labels: no image is labelled {listed(map(repr, unknown))}; the labels are {found}")
    return [mapping.get(label, label) for label in labels]
