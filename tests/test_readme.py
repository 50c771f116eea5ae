"""The README's two commands are the ones CI runs, verbatim."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def _block_after(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", readme, re.S)
    assert match, f"README has no ```bash block after <!-- {marker} -->"
    return match.group(1)


def test_ci_runs_the_readme_commands_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for marker in ("main-job", "tests"):
        command = _block_after(marker)
        assert command in ci, f"README's {marker} command is not a line of .ci/run: {command}"


def test_every_trainer_command_is_in_the_readme():
    from trainer.cli import get_args_parser

    readme = (ROOT / "README.md").read_text()
    commands = get_args_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert f"python -m trainer {name}" in readme
