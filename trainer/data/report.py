"""The data report: what reading and validation found, each problem with a count and a few
examples, and notes. It goes to the log as the run starts, to metrics.json's `data`, and to the
report's Data section."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.images import FileState
from trainer.errors import listed

log = logging.getLogger("trainer")


@dataclass
class Report:
    """What validation found: each problem with a count and a few examples."""

    rows_read: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[Path, FileState | None] = field(default_factory=dict)  # every listed file, as validation read it
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # sha256 -> 16 x 16 luminance, 8-bit

    def add(self, kind: str, example: str) -> None:
        self.problems.setdefault(kind, []).append(example)

    def lines(self, examples: int = 3) -> list[str]:
        out = []
        for kind, items in self.problems.items():
            shown = listed(items, examples, "; ")
            out.append(f"{kind}: {len(items)} ({shown})")
        return out

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "problems": {kind: {"count": len(v), "examples": v[:5]} for kind, v in self.problems.items()},
            "notes": self.notes,
        }


def log_report(report: Report) -> None:
    """Each problem as a warning line, each note as an information line."""
    for line in report.lines():
        log.warning("WARNING: %s", line)
    for note in report.notes:
        log.info("%s", note)
