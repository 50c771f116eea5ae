"""The package's shape, held: dependencies point one way (no import cycle, counting imports made
inside functions), no module borrows another's private names, the options sit at the bottom, and
a project import inside a function is there only to keep Keras out of a module's import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trainer"
# Imports of project modules that may sit inside a function, each with its reason.
LAZY = {("trainer.fit.loop", "trainer.fit.resume"): "resume subclasses a Keras callback, so importing it imports Keras"}
BOTTOM = {
    "trainer.config": {"trainer.errors", "trainer.backbones", "trainer.exports"},
    "trainer.backbones": set(),
    "trainer.exports": set(),
    "trainer.errors": set(),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(modules: dict[str, Path]):
    """(module, imported module, imported names, inside a function?) for every project import."""
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inner = {id(node) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
                 for node in ast.walk(function)}  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainer":
                for alias in node.names:
                    target = f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    yield name, target, alias.name, id(node) in inner
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "trainer":
                        yield name, alias.name, "", id(node) in inner


def test_no_import_cycle_counting_imports_inside_functions():
    modules = _modules()
    graph = {name: set() for name in modules}
    for source, target, _, _ in _imports(modules):
        if target in modules and target != source and source != "trainer.__main__":
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
    lazy = {(source, target) for source, target, _, inside in _imports(_modules()) if inside}
    assert lazy <= set(LAZY), f"move these to the top of their module, or say why in LAZY: {sorted(lazy - set(LAZY))}"


def test_the_run_reads_in_one_sitting():
    assert len((PACKAGE / "train.py").read_text().splitlines()) <= 300
