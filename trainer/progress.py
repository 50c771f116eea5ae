"""Progress bars for every long loop, on stderr so that stdout stays machine-readable."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    # Without a terminal (CI logs, Colab's `!` subshell) redraw rarely instead of flooding the log.
    interactive = sys.stderr.isatty()
    return iter(
        tqdm(
            items,
            total=total,
            desc=desc,
            file=sys.stderr,
            mininterval=0.1 if interactive else 5.0,
            leave=True,
            dynamic_ncols=True,
        )
    )
