"""report.html's pieces: a table and a picture, which every section is made of, and the sections
of the diagnostics that have one (each row of trainer.diagnostics.table names its own). A section
is a function from the run folder to HTML: it reads the files the diagnostic left, and says so
when there are none.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from trainer import runfolder
from trainer.diagnostics import review
from trainer.errors import counted
from trainer.runfolder import read_json


def figure(value, spec: str = "") -> str:
    """A figure from a run folder's file as text: formatted by spec when it is the number it must
    be, as it is when it is anything else (a folder from elsewhere may hold anything), ? for none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "?" if value is None else str(value)


def number(value, spec: str = "") -> str:
    """A figure as HTML, escaped."""
    return html.escape(figure(value, spec))


def table(rows: list[list], header: list[str] | None = None) -> str:
    def cell(value, tag="td") -> str:
        if isinstance(value, float):
            value = f"{value:.4f}"
        return f"<{tag}>{html.escape('' if value is None else str(value))}</{tag}>"

    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def picture(path: Path, title: str) -> str:
    """A PNG embedded as a data: URL, so that the page can be mailed or downloaded alone."""
    if not path.is_file():
        return f"<p>{html.escape(title)}: not drawn.</p>"
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f"<figure><img src='data:image/png;base64,{encoded}' alt='{html.escape(title)}'>"
        f"<figcaption>{html.escape(title)} ({html.escape(path.name)})</figcaption></figure>"
    )


# ---------------------------------------------------------------------------------------------
# The diagnostics' sections


def audit_section(run_dir: Path) -> str:
    """The label audit's list, as a review form (trainer.diagnostics.review)."""
    path = run_dir / runfolder.AUDIT
    if not path.is_file():
        return "<p>No label audit in this run (--no-audit).</p>"
    rows = runfolder.read_audit(path)
    summary = read_json(run_dir / runfolder.MANIFEST).get("audit") or {}
    flagged = summary.get("flagged", {})
    counts = ", ".join(counted(count, kind) for kind, count in flagged.items()) or counted(len(rows), "image")
    groups = summary.get("near_duplicate_groups")
    full = path.with_name(runfolder.AUDIT_FULL)
    listed = (
        f" It lists the likeliest 500 of each kind; <code>{runfolder.AUDIT_FULL}</code> has all "
        f"{number(sum(flagged.values()))}."
        if full.is_file()
        else ""
    )
    intro = (
        f"<p>{html.escape(counted(sum(flagged.values()) or len(rows), 'image'))} to look at ({html.escape(counts)}"
        + (f"; the near-duplicates in {html.escape(counted(groups, 'group'))}" if groups else "")
        + f"), from {html.escape(summary.get('features', 'pretrained features'))}: "
        "a label that held-out heads find unlikely, an image nearly identical to one under another label or in another "
        f"split, or one unlike all others. The list is <code>{runfolder.AUDIT}</code>.{listed}</p>"
    )
    labels = read_json(run_dir / runfolder.METRICS).get("labels", [])
    return intro + review.run_form(run_dir, rows, labels)


def exports_section(run_dir: Path) -> str:
    """exports.json: each leg of the parity check, and the benchmark when it was measured."""
    exports = read_json(run_dir / runfolder.EXPORTS)
    if not exports:
        return "<p>No exports written (run <code>python -m trainer export RUN_DIR</code>).</p>"
    rows = [
        [
            leg["name"],
            leg.get("file", ""),
            leg["max_difference"],
            leg["tolerance"],
            leg["top_class_agrees"],
            ("yes" if leg["ok"] else "NO") + ("" if leg.get("enforced", True) else " (reported only)"),
            leg.get("detail", ""),
        ]
        for leg in exports.get("legs", [])
    ]
    verdict = "every leg agrees" if exports.get("ok") else "SOME LEGS DISAGREE"
    return (
        f"<p>{len(exports.get('images', []))} test images through each runtime: {verdict}.</p>"
        + table(rows, ["runtime", "file", "max |p - p_keras|", "tolerance", "same top class", "ok", "detail"])
        + _export_benchmark(exports.get("benchmark"))
    )


def _export_benchmark(benchmark: dict | None) -> str:
    """Each format's test accuracy and latency (export.benchmark_exports), when measured."""
    if not benchmark or not benchmark.get("formats"):
        return ""
    rows = []
    for entry in benchmark["formats"]:
        if "error" in entry:
            rows.append([entry["format"], entry["file"], "-", "-", "-", entry["error"]])
            continue
        latency = entry["ms_per_image"]
        rows.append([entry["format"], entry["file"], figure(entry["accuracy"], ".3f"), figure(latency["1"], ".2f"),
                     figure(latency["32"], ".2f"), ""])  # fmt: skip
    return (
        f"<h3>Each format on this machine</h3><p>Test accuracy on {number(benchmark['images'])} test images (the run's "
        "decision rule applied) and the median milliseconds per image at batch 1 and batch 32, after one untimed "
        "call (Keras: predict_on_batch; the C library: TF_SessionRun in its own process).</p>"
        + table(rows, ["format", "file", "test accuracy", "ms/image, batch 1", "ms/image, batch 32", "error"])
    )
