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

# Problems that cost nothing: the same file listed twice under the same label is read once. They
# stay in the report (and --strict still refuses them) but are logged as a note, not a warning:
# the seed's own CSV lists 600 rows for its 400 photos, and a warning on every run of the shipped
# data would teach users to skip warnings.
HARMLESS = ("duplicate rows",)


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

    def lines(self, examples: int = 3, harmless: bool = True) -> list[str]:
        out = []
        for kind, items in self.problems.items():
            if kind in HARMLESS and not harmless:
                continue
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
    for line in report.lines(harmless=False):
        log.warning("WARNING: %s", line)
    for kind in HARMLESS:
        if kind in report.problems:
            log.info("note: %s: %d (each file is read once)", kind, len(report.problems[kind]))
    for note in report.notes:
        log.info("%s", note)
