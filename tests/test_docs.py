"""The README and docs/ stay true to each other: every relative link and #anchor resolves."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT, documented_options

PAGES = sorted(
    [*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md"), *ROOT.glob("*/README.md"), *ROOT.glob("datasets/*/README.md")]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) < 8 * 1024, "move reference material to docs/"


def test_the_option_table_is_the_trainers_own():
    from trainer.config import reference

    assert documented_options(ROOT) == reference(), "paste trainer.config.reference() into docs/trainer.md"


TEST_REFERENCE = re.compile(r"tests/([\w/]+\.py)(?:::(\w+\*?))?")


def test_every_test_the_docs_name_exists():
    """RELIABILITY.md and the rest name the tests that show each promise; a renamed or moved test
    must take its references with it. (`…::name` shorthands after a full reference are not
    checked.)"""
    missing = []
    for page in PAGES:
        for path, name in TEST_REFERENCE.findall(page.read_text(encoding="utf-8")):
            source = ROOT / "tests" / path
            if not source.is_file():
                missing.append(f"{page.name}: tests/{path}")
            elif name and not re.search(rf"def {name.rstrip('*')}" + ("" if name.endswith("*") else r"\b"),
                                        source.read_text(encoding="utf-8")):  # fmt: skip
                missing.append(f"{page.name}: tests/{path}::{name}")
    assert not missing, "; ".join(missing)


def _main_job_run():
    import os
    from pathlib import Path

    from tests.conftest import IN_CI

    folder = os.environ.get("TRAINER_MAIN_JOB_RUN")
    if not folder:
        if IN_CI:
            pytest.fail("TRAINER_MAIN_JOB_RUN is not set; .ci/run sets it after the README's main job")
        pytest.skip("TRAINER_MAIN_JOB_RUN is not set (the README's main job's run folder)")
    return Path(folder)


def test_the_audit_counts_docs_trainer_md_quotes_are_the_main_jobs():
    """docs/trainer.md says how many labels the audit lists on the 400 concrete photos; the
    README's main job (run by .ci/run before the tests) is that run, so the sentence is held to it."""
    from collections import Counter

    from trainer import runfolder

    text = " ".join((ROOT / "docs" / "trainer.md").read_text().split())
    said = re.search(r"On the 400 concrete photos the audit lists (\d+): (\d+) `CD` and (\d+) `UD`", text)
    assert said, "docs/trainer.md no longer quotes the audit's counts on the concrete photos"
    rows = runfolder.read_audit(_main_job_run() / "audit.csv")
    labels = Counter(row["Label"] for row in rows if row["Reason"].startswith("label"))
    assert tuple(map(int, said.groups())) == (len(rows), labels["CD"], labels["UD"]), (len(rows), labels)


def test_the_accuracy_the_docs_quote_is_accuracy_mds_20_seed_figure():
    """One figure everywhere: the README and docs/trainer.md quote the default's 20-seed mean
    that ACCURACY.md decides on."""
    accuracy = (ROOT / "ACCURACY.md").read_text()
    figure = re.search(r"the default's 20-seed mean is (0\.\d+)", " ".join(accuracy.split())).group(1)
    for page in ("README.md", "docs/trainer.md"):
        text = " ".join((ROOT / page).read_text().split())
        quoted = set(re.findall(r"(0\.\d{3}) ± 0\.\d{3} test accuracy over (\d+) seeds", text))
        assert quoted == {(figure, "20")}, (page, quoted)


def test_the_layout_names_every_module():
    """docs/layout.md names each module of the trainer, the setup steps and the benchmarks."""
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    modules = [path for package in ("trainer", "scripts", "benchmarks") for path in (ROOT / package).rglob("*.py")]
    unnamed = sorted(str(path.relative_to(ROOT)) for path in modules
                     if path.name not in ("__init__.py", "__main__.py") and path.name not in layout)  # fmt: skip
    assert not unnamed, f"say in docs/layout.md what these are: {unnamed}"


def test_the_readmes_times_are_the_ones_ci_prints_beside_its_own():
    """The README's two times are CI's: .ci/run prints each measured figure beside the README's,
    so the two say the same figure (and the README says they are CI's idle machine's)."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    ci = (ROOT / ".ci" / "run").read_text()
    quoted = re.findall(r"On CI's fresh 2-core machine it takes (about \d+ minutes)", readme)
    quoted += re.findall(r"Run the tests \((about \d+ minutes) on CI's idle 2-core machine", readme)
    compared = re.findall(r"\(README: (about \d+ minutes)\)", ci)
    assert len(quoted) == 2 and quoted == compared, (quoted, compared)


def test_invoke_yamls_example_model_name_is_the_data_steps():
    """invoke.yaml's comment names the model a zip's data is published as (it once said `my`)."""
    from scripts.dataset import dataset_name

    comment = " ".join((ROOT / "invoke.yaml").read_text().split())
    said = re.search(r"`([\w.-]+)` for --source ([\w.-]+)", comment)
    assert said and dataset_name(said.group(2)) == said.group(1), said and said.groups()
