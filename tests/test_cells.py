"""trainer/cells.py and the CSV files people open in a spreadsheet, as properties over text of
every kind (formula prefixes, quotes, commas, unicode, control characters, 100,000 characters):
no written cell begins a formula unless it is a plain number, and every file kind's reader gets
back what its writer was given."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trainer import cells, names, runfolder
from trainer.data.corrections import COLUMNS, Correction, format_corrections, parse_corrections

# A modest number of examples, and a deadline that a loaded 2-core machine keeps (a 100,000
# character example takes a few milliseconds), so the default suite stays quick.
PROPERTY = settings(max_examples=200, deadline=timedelta(seconds=5))
HOSTILE = ['=HYPERLINK("http://x/?"&A2,"click")', "+1+1", "@SUM(2+2)", "=1+1", "\t=1", "\r=1", "-", "+", "@",
           "'", "''quoted", 'say "hi", then', "-1", "+1", "-0.5", "1e-3", "-inf", "ünï cødé 裂缝", "a\u2028b",
           "a\rb", "a\r\nb", "\x00", "$\\frac{$", "<script>alert(1)</script>"]  # fmt: skip
PREFIXES = st.sampled_from(["=", "+", "-", "@", "\t", "\r", "\n", "'", "''", '"', ",", " ", "\x00"])


def _long(seed: str) -> str:
    return (seed * (100_000 // len(seed) + 1))[:100_000]


TEXTS = st.one_of(
    st.text(),
    st.builds(str.__add__, PREFIXES, st.text()),
    st.from_regex(cells.NUMBER, fullmatch=True),
    st.sampled_from(HOSTILE),
    st.builds(str.__add__, PREFIXES, st.text(min_size=1, max_size=6).map(_long)),
)


def _unsafe(cell: str) -> bool:
    return cell.startswith(cells.FORMULA) and not cells.is_number(cell)


def _raw_cells(text: str) -> list[str]:
    return [cell for record in csv.reader(io.StringIO(text, newline="")) for cell in record]


def test_the_rule_on_the_cells_the_issue_names():
    assert [cells.escape(cell) for cell in ('=HYPERLINK("x")', "+1+1", "@SUM(2+2)", "\tx", "\rx", "-x")] == [
        "'=HYPERLINK(\"x\")", "'+1+1", "'@SUM(2+2)", "'\tx", "'\rx", "'-x"]  # fmt: skip
    assert [cells.escape(number) for number in ("-1", "+1", "-0.5", "1e-3", "+.5", "-2E+10")] == [
        "-1", "+1", "-0.5", "1e-3", "+.5", "-2E+10"]  # fmt: skip
    assert [cells.escape(cell) for cell in ("'", "'=x", "-inf", "-1+1", "-١", None, 0.5)] == [
        "''", "''=x", "'-inf", "'-1+1", "'-١", "", "0.5"]  # fmt: skip
    assert cells.unescape("''=x") == "'=x" and cells.unescape("'=x") == "=x" and cells.unescape("x'") == "x'"


@PROPERTY
@given(TEXTS)
def test_a_written_cell_begins_no_formula_and_reads_back(text):
    written = cells.escape(text)
    assert not _unsafe(written)
    assert written in (text, "'" + text)
    assert cells.unescape(written) == text


@PROPERTY
@given(st.lists(st.lists(TEXTS, min_size=1, max_size=4), max_size=4))
@example([["a\rb", "=x"], ["'", "-1"]])
def test_rows_round_trip_through_csv_writer_and_reader_and_through_line(rows):
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows([cells.escape(cell) for cell in row] for row in rows)
    assert list(cells.read_rows(io.StringIO(buffer.getvalue(), newline=""))) == rows
    text = "".join(cells.line(row) for row in rows)
    assert list(cells.read_rows(io.StringIO(text, newline=""))) == rows
    assert not [cell for cell in _raw_cells(text) if _unsafe(cell)]


@PROPERTY
@given(st.lists(st.tuples(TEXTS, TEXTS, TEXTS, TEXTS, TEXTS), max_size=4))
def test_audit_csv_reads_back_what_was_written(tmp_path_factory, records):
    path = tmp_path_factory.getbasetemp() / "audit.csv"
    wanted = [dict(zip(runfolder.AUDIT_COLUMNS, (path_, label, suggested, "0.9100", reason, group), strict=True))
              for path_, label, suggested, reason, group in records]  # fmt: skip
    runfolder.write_audit(path, wanted)
    assert runfolder.read_audit(path) == wanted
    assert not [cell for cell in _raw_cells(path.read_bytes().decode()) if _unsafe(cell)]


@PROPERTY
@given(st.lists(TEXTS, min_size=1, max_size=4, unique=True), st.lists(TEXTS, max_size=4), st.randoms())
def test_predictions_csv_reads_back_what_was_written_headers_too(tmp_path_factory, labels, paths, random):
    path = tmp_path_factory.getbasetemp() / "predictions.csv"
    true = [random.choice(labels) for _ in paths]
    probabilities = np.random.default_rng(random.getrandbits(32)).dirichlet(np.ones(len(labels)), size=len(paths))
    runfolder.write_predictions(path, labels, {"test": (paths, true, probabilities)})
    read = runfolder.read_predictions(path)
    assert [(row["path"], row["label"], row["predicted"]) for row in read] == [
        (image, label, labels[int(p.argmax())]) for image, label, p in zip(paths, true, probabilities, strict=True)]  # fmt: skip
    assert [row["true_probability"] for row in read] == [
        round(float(p[labels.index(label)]), 6) for label, p in zip(true, probabilities, strict=True)]  # fmt: skip
    assert not [cell for cell in _raw_cells(path.read_bytes().decode()) if _unsafe(cell)]


# parse_corrections trims each cell (a hand-edited file's spaces) and checks the class-name rule
# (trainer/names.py); the decisions it reads back are those.
STRIPPED = TEXTS.map(str.strip).filter(bool)
LABELS = st.one_of(STRIPPED.filter(lambda label: names.class_problem(label) is None),
                   st.sampled_from(["drop", "keep", "KEEP"]))  # fmt: skip


@PROPERTY
@given(st.lists(st.tuples(STRIPPED, LABELS, st.from_regex("[0-9a-f]{64}", fullmatch=True) | st.just(""),
                          TEXTS.map(str.strip), TEXTS.map(str.strip)), max_size=4))  # fmt: skip
def test_corrections_read_back_what_was_written(decisions):
    text = format_corrections([Correction(0, *decision) for decision in decisions])
    assert text.startswith(",".join(COLUMNS) + "\n")
    assert [(c.written, c.label, c.sha256, c.opinion, c.decided) for c in parse_corrections(text, "x.csv")] == decisions
    assert not [cell for cell in _raw_cells(text) if _unsafe(cell)]
