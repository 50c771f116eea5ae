"""docs/layout.md's recipe for a setup step, held: a step is its module, one row in
scripts/registry.py and its section in invoke.yaml. The test adds one to a copy of the bundle that
way and finds it everywhere: its own task with its help and flag, `invoke setup`'s flag handed to
it alone, its place in setup's table, the schema of invoke.yaml and the INVOKE_* variables."""

from __future__ import annotations

import pytest

from tests.conftest import bundle_copy, invoke

STEP = '''"""greet: a made-up step that writes a greeting file."""

from __future__ import annotations

from scripts.steps import Context, Result, changed, ok


def greet(ctx: Context, greeting: str = "hello", target: str = "greeting.txt") -> Result:
    path = ctx.root / target
    if path.is_file() and path.read_text() == greeting:
        return ok(f"{path.name} says {greeting}")
    if ctx.dry_run:
        return ctx.would(f"write {greeting} to {path.name}")
    path.write_text(greeting)
    return changed(f"{path.name} says {greeting}")
'''
ROW = """    Step("greet", greet.greet, "Write the greeting file.", {
        "greeting": Setting(TEXT, "what the file says"),
        "target": Setting(TEXT),
    }),
"""


@pytest.fixture()
def bundle(tmp_path):
    copy = bundle_copy(tmp_path)
    (copy / "scripts" / "greet.py").write_text(STEP)
    registry = copy / "scripts" / "registry.py"
    text = registry.read_text()
    text = text.replace("from scripts import apt, check, dataset, libtensorflow, pins, stage",
                        "from scripts import apt, check, dataset, greet, libtensorflow, pins, stage")  # fmt: skip
    text = text.replace('    Step("stage", stage.stage,', ROW + '    Step("stage", stage.stage,')
    registry.write_text(text)
    settings = copy / "invoke.yaml"
    settings.write_text(settings.read_text() + "\ngreet:\n  greeting: hello\n  target: greeting.txt\n")
    return copy


def test_a_step_added_as_one_row_is_a_task_a_flag_of_setup_and_a_section_of_the_settings(bundle):
    env = {"INVOKE_APT_PACKAGES": "", "INVOKE_LIBTENSORFLOW_PREFIX": str(bundle / "prefix")}
    listed = invoke(bundle, "--list")
    assert "greet" in listed.stdout and "Write the greeting file." in listed.stdout
    assert "what the file says" in invoke(bundle, "--help", "greet").stdout
    assert "--greeting=STRING" in invoke(bundle, "--help", "setup").stdout

    ran = invoke(bundle, "greet", "--greeting", "hi")
    assert ran.returncode == 0 and "greet: changed (greeting.txt says hi)" in ran.stderr, ran.stderr
    assert (bundle / "greeting.txt").read_text() == "hi"
    assert "greet: ok" in invoke(bundle, "greet", env={"INVOKE_GREET_GREETING": "hi"}).stderr

    # `invoke setup` runs it in the table's order (before stage) and hands it its flag alone.
    dry = invoke(bundle, "setup", "--dry-run", "--greeting", "hey", env=env)
    assert dry.returncode == 0, dry.stderr
    names = [line.split()[0] for line in dry.stdout.splitlines()[1:-1]]
    assert names[-2:] == ["greet", "stage"]
    assert "would write hey to greeting.txt (dry run)" in dry.stdout

    # invoke.yaml's section and the INVOKE_* variables are checked from the row.
    settings = bundle / "invoke.yaml"
    settings.write_text(settings.read_text().replace("  target: greeting.txt\n", "  targett: greeting.txt\n"))
    refused = invoke(bundle, "greet")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "invoke: invoke.yaml: greet.targett is not a setting (did you mean target?); greet has greeting, target"
    )
    settings.write_text(settings.read_text().replace("  targett: greeting.txt\n", "  target: greeting.txt\n"))
    unknown = invoke(bundle, "greet", env={"INVOKE_GREET_GRETING": "x"})
    assert unknown.returncode == 2 and "INVOKE_GREET_GRETING is not a setting" in unknown.stderr


def test_two_steps_may_not_take_a_flag_of_the_same_name(bundle):
    """A setting two steps share (the data step's and the C library's `source`) is a flag of one
    of them alone: `invoke setup --source` must have one owner."""
    registry = bundle / "scripts" / "registry.py"
    registry.write_text(registry.read_text().replace('"target": Setting(TEXT),', '"source": Setting(TEXT, "clash"),'))
    settings = bundle / "invoke.yaml"
    settings.write_text(settings.read_text().replace("  target: greeting.txt\n", "  source: x\n"))
    result = invoke(bundle, "--list")
    assert result.returncode != 0
    assert "--source is a flag of both data and greet; a flag belongs to one step" in result.stderr
