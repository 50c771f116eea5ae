"""Progress bars for every long loop, on stderr so that stdout stays machine-readable."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


class Bar(tqdm):
    """tqdm without its monitor thread, which would outlive the bar and make every later fork
    unsafe (validation forks its workers only in a process with no other thread); our loops
    update often enough that the monitor's forced refreshes are not missed."""

    monitor_interval = 0


def progress_bar(items: Iterable[T] | None = None, *, total: int | None = None, desc: str = "") -> tqdm:
    """A tqdm bar; without a terminal (CI logs, Colab's `!` subshell) it redraws rarely
    instead of flooding the log. Call update(n) yourself when there are no items to iterate."""
    interactive = sys.stderr.isatty()
    return Bar(
        items,
        total=total,
        desc=desc,
        file=sys.stderr,
        mininterval=0.1 if interactive else 5.0,
        leave=True,
        dynamic_ncols=True,
    )


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    return iter(progress_bar(items, total=total, desc=desc))
