"""The bundle's shape, held in every layer (trainer/, scripts/, tasks.py, benchmarks/):
dependencies point one way (no import cycle, counting imports made inside functions), no module
borrows another's private names, a project import inside a function is there only for a listed
reason, the options sit at the bottom of the trainer, the setup layer reaches into the trainer
only through a short list of modules, and no function is over 60 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "scripts", "benchmarks")
# Imports of project modules that sit inside a function, each with its reason.
LAZY = {
    ("trainer.fit.loop", "trainer.fit.resume"): "resume subclasses a Keras callback, so importing it imports Keras",
    ("scripts.dataset", "trainer.data.rows"): "pandas, numpy and Pillow, only when a new dataset is checked",
    ("scripts.dataset", "trainer.data.demo"): "numpy and Pillow, only when the demo data is made",
    ("scripts.decisions", "trainer.diagnostics.review"): "the review form, only in the notebook's review cell",
    ("tasks", "scripts.training"): "numpy and Pillow (the data's hashes, the decisions): only the train task",
    ("tasks", "scripts.publish"): "the dataset's record it writes reads with numpy and Pillow: only when publishing",
    ("tasks", "scripts.decisions"): "the decisions' reader needs numpy and Pillow: only `invoke decisions`",
}
# invoke runs tasks.py's imports for every command (`invoke check`, `invoke --list`): the rest
# of the project at the top of it must not import TensorFlow, Keras, numpy or Pillow.
BOTTOM = {
    "trainer.config": {"trainer.errors", "trainer.backbones", "trainer.exports", "trainer.names"},
    "trainer.backbones": set(),
    "trainer.exports": set(),
    "trainer.names": {"trainer.errors"},
    "trainer.errors": set(),
}
# What the setup layer (scripts/, tasks.py) may take from the trainer: its public face.
TRAINER_FOR_SETUP = {
    "trainer.atomic": "whole-or-nothing writes and swaps",
    "trainer.config": "the options",
    "trainer.errors": "the errors and their sentences",
    "trainer.flags": "the options as flags (invoke.yaml's train.extra)",
    "trainer.fingerprint": "what a model is trained from, for the decision to train",
    "trainer.record": "the dataset's record",
    "trainer.result": "the trainer's answer",
    "trainer.runfolder": "the files of a run folder",
    "trainer.memory": "the machine's memory limit, for a trainer killed for memory",
    "trainer.names": "the rule for class and model names",
    "trainer.data.layout": "the class-folder rule, which the data step counts by",
    "trainer.data.rows": "the data read as the trainer reads it, before a new dataset replaces the old",
    "trainer.data.demo": "the demo data",
    "trainer.diagnostics.review": "the review form, for the notebook's review cell",
    "trainer.searchfile": "a search's choice, which invoke train trains under the options the user sets",
}
LONGEST = 60


def _modules() -> dict[str, Path]:
    found = {"tasks": ROOT / "tasks.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _inner(tree: ast.AST) -> set[int]:
    return {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(function)}  # fmt: skip


def _imports(modules: dict[str, Path]):
    """(module, imported module, imported name, inside a function?) for every project import."""
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = _inner(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    yield name, target, alias.name, id(node) in inner
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in PACKAGES:
                        yield name, alias.name, "", id(node) in inner


def test_no_import_cycle_counting_imports_inside_functions():
    modules = _modules()
    graph = {name: set() for name in modules}
    for source, target, _, _ in _imports(modules):
        if target in modules and target != source and not source.endswith("__main__"):
            graph[source].add(target)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for following in sorted(graph[node]):
            if state.get(following) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(following) :], following]))
            if following not in state:
                visit(following, [*path, following])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_module_imports_another_modules_private_names():
    borrowed = [f"{source} takes {target}.{name}" for source, target, name, _ in _imports(_modules())
                if name.startswith("_") and target != source]  # fmt: skip
    assert not borrowed


def test_the_options_import_no_stage():
    for source, target, _, _ in _imports(_modules()):
        if source in BOTTOM:
            assert target in BOTTOM[source], f"{source} imports {target}: the options must sit below every stage"


def test_project_imports_inside_functions_are_only_the_documented_ones():
    """In the bundle's code (the benchmarks' workers import inside functions by design: each
    measures what an import or a fresh process costs)."""
    lazy = {(source, target) for source, target, _, inside in _imports(_modules())
            if inside and not source.startswith("benchmarks.")}  # fmt: skip
    assert lazy <= set(LAZY), f"move these to the top of their module, or say why in LAZY: {sorted(lazy - set(LAZY))}"
    assert set(LAZY) <= lazy, f"no longer inside a function, drop them from LAZY: {sorted(set(LAZY) - lazy)}"


def test_the_setup_layer_takes_only_the_trainers_public_face():
    taken = {(source, target) for source, target, _, _ in _imports(_modules())
             if (source == "tasks" or source.startswith("scripts.")) and target.startswith("trainer")}  # fmt: skip
    outside = sorted(f"{source} -> {target}" for source, target in taken if target not in TRAINER_FOR_SETUP)
    assert not outside, f"import these through a module of TRAINER_FOR_SETUP, or add one with its reason: {outside}"
    assert "trainer.cli" not in TRAINER_FOR_SETUP  # nothing parses another layer's command line


def test_no_function_is_over_60_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= LONGEST:
                long.append(f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, f"split these into named steps: {long}"


def test_the_heads_options_are_read_in_head_py_alone():
    """Every head (the deployed one, the operating point's, the audit's, the ranking's) is made in
    trainer/head.py, so an option marked head=True is read there and nowhere else."""
    from trainer.config import options

    head = {option.name for option in options() if option.metadata["head"]}
    assert head >= {"head_c", "head_refit"}
    readers = {
        name
        for name, path in _modules().items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr in head
    }
    assert readers <= {"trainer.head", "trainer.config"}, readers


def test_the_run_reads_in_one_sitting():
    assert len((ROOT / "trainer" / "train.py").read_text().splitlines()) <= 300


def test_invokes_start_imports_nothing_heavy():
    """What tasks.py imports at its top (every invoke command pays for it) stays light."""
    import subprocess
    import sys

    probe = "import sys, tasks; print(sorted(m for m in ('numpy', 'PIL', 'pandas', 'tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
