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
from collections import Counter, defaultdict
from pathlib import Path

from trainer.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABEL_FOLDERS = ("auto", "top", "leaf")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def images_below(folder: Path) -> list[tuple[str, ...]]:
    """Every image under the class folders of `folder`, as its path's parts relative to it
    (images directly in `folder` are not in a class, and hidden folders are skipped), sorted."""
    found = []
    for directory, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        relative = Path(directory).relative_to(folder).parts
        if relative:
            found += [(*relative, name) for name in names if is_image_name(name)]
    return sorted(found)


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
        found = ", ".join(sorted(set(labels))[:12])
        raise InputError(
            f"--merge-labels: no image is labelled {', '.join(map(repr, unknown))}; the labels are {found}"
        )
    return [mapping.get(label, label) for label in labels]
