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
