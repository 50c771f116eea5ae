"""trainer/config.py: an option is defined once, and every place that takes options is made from
that definition. The test adds a made-up option to a copy of the bundle, in that one place, and
finds it everywhere it should be."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import bundle_copy, documented_options, invoke

MADE_UP = '    sharpness: float = option(0.5, "a made-up option", within(0, 1), head=True)\n'


def test_the_command_line_without_flags_is_the_dataclass_defaults():
    """A yes/no option that defaults to on (--augment / --no-augment) must parse to True, not None."""
    from trainer.cli import train_config
    from trainer.config import TrainConfig

    parsed = train_config(["--folder", "Images"])
    assert parsed.to_dict() == TrainConfig().check().to_dict()
    assert parsed.augment is True and train_config(["--no-augment"]).augment is False


def _python(copy, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=copy, capture_output=True, text=True, timeout=300)


def test_an_option_added_in_one_place_is_everywhere(tmp_path):
    copy = bundle_copy(tmp_path)
    config = copy / "trainer" / "config.py"
    text = config.read_text(encoding="utf-8")
    anchor = text.index("    seed: int = option(")
    config.write_text(text[:anchor] + MADE_UP + text[anchor:], encoding="utf-8")

    # The trainer's command line: the flag with its help and default, and its range.
    shown = _python(copy, "-m", "trainer", "train", "--help")
    assert "--sharpness" in shown.stdout and "a made-up option (default 0.5)" in " ".join(shown.stdout.split())
    refused = _python(copy, "-m", "trainer", "train", "--sharpness", "2")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "trainer: error: --sharpness must be in [0, 1] (got 2.0)"

    # invoke: a flag of `invoke train`, an INVOKE_TRAIN_* variable, a key of invoke.yaml's train section.
    dry_run = ("train", "--dry-run", "--folder", "x")
    assert "--sharpness 0.25" in invoke(copy, *dry_run, "--sharpness", "0.25").stdout
    assert "--sharpness 0.75" in invoke(copy, *dry_run, env={"INVOKE_TRAIN_SHARPNESS": "0.75"}).stdout
    bad = invoke(copy, *dry_run, env={"INVOKE_TRAIN_SHARPNESS": "3"})
    assert bad.returncode == 2 and bad.stderr.strip() == "invoke: INVOKE_TRAIN_SHARPNESS must be in [0, 1] (got '3')"
    settings = copy / "invoke.yaml"
    original = settings.read_text(encoding="utf-8")
    settings.write_text(original.replace("train:\n", "train:\n  sharpness: 0.6\n"), encoding="utf-8")
    assert "--sharpness 0.6" in invoke(copy, *dry_run).stdout
    settings.write_text(original.replace("train:\n", "train:\n  sharpness: sharp\n"), encoding="utf-8")
    bad = invoke(copy, *dry_run)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "invoke: invoke.yaml: train.sharpness must be a number (got 'sharp')"

    # What the train step compares before retraining, and what the run's config.json records.
    compared = _python(
        copy,
        "-c",
        "import json; from trainer.cli import train_config; from trainer.fingerprint import compared_options; "
        "print(json.dumps([compared_options(train_config(['--sharpness', '0.3'])), train_config([]).to_dict()]))",
    )
    asked, defaults = json.loads(compared.stdout)
    assert asked["sharpness"] == 0.3 and defaults["sharpness"] == 0.5

    # A head option: what trainer/head.py reads, and what a run's options file carries to the trainer.
    heads = _python(
        copy, "-c", "from trainer.config import options; print([o.name for o in options() if o.metadata['head']])"
    )
    assert "'sharpness'" in heads.stdout
    handed = copy / "options.json"
    handed.write_text(json.dumps({"folder": "x", "sharpness": 0.2}))
    read = _python(
        copy, "-c", f"from trainer.config import TrainConfig; print(TrainConfig.from_file({str(handed)!r}).sharpness)"
    )
    assert read.stdout.strip() == "0.2"

    # The reference table in docs/ is rendered from the definition; its check sees the new row.
    table = _python(copy, "-c", "from trainer.config import reference; print(reference(), end='')").stdout
    assert "| `--sharpness` | `0.5` | in [0, 1] | a made-up option |" in table
    assert table != documented_options(copy)
