"""pins: the runtime's own packages kept as they are when their versions are supported; what the
bundle adds installed at exact versions. Compared through importlib.metadata (no imports of the
packages themselves).

Two files say what is wanted:

- `requirements.txt`, the exact stack: one version of every package. A fresh machine and CI get
  it, and `invoke pins --exact` reproduces it anywhere.
- `supported.txt`, the ranges: for each package a runtime may already have (Colab preinstalls
  TensorFlow, Keras, numpy, protobuf, ...), the versions the bundle works with.

Package by package of requirements.txt:

- one with a range, installed in it: kept as it is, and named with its version in the step's
  detail. Reinstalling a package under a running runtime (numpy above all) breaks what was
  compiled against it, and Colab moves its image about twice a year;
- one with a range, not installed (a fresh machine): the exact version;
- one with a range, installed outside it: the step fails before anything changes, in one line
  (the package, its range, what to do);
- one without a range (the bundle's own: invoke, onnx, ...): the exact version, when what is
  installed differs.

pip runs with every installed distribution at its live version as a constraint, so nothing
already there moves (pip refuses instead of moving it), and, for what is not installed, the
tested snapshot's versions (colab/constraints.txt), so a fresh machine resolves the stack CI
tested. pip downloads every wheel before it removes any installed file, and puts the old files
back if an install fails: nothing is uninstalled before its replacement is on disk.

A pip install killed halfway can leave a package's metadata without the rest of its files (a
wheel's own METADATA and RECORD are unpacked like any other file). pip writes `INSTALLER` into
the `.dist-info` folder only once every file is in place, so a folder without it is counted as
broken (two stats per pin, not a read of every file) and is reinstalled over itself with
`--ignore-installed --no-deps`, at its own version when that is supported."""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from scripts.steps import Context, Result, StepFailed, changed, ok

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")
RANGE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*([<>=!~].*)$")
BROKEN = "broken"  # the installed version when a pip install of it was cut short
MOVE_RUNTIME = (
    "switch the runtime to one in range (Colab: Runtime > Change runtime version), or run `invoke pins --exact`"
)


def _packaging():
    """`packaging` (specifiers and versions): the package when installed, else pip's own copy,
    which every environment that can run pip has."""
    try:
        from packaging import specifiers, version
    except ImportError:
        from pip._vendor.packaging import specifiers, version  # type: ignore[no-redef]
    return specifiers, version


def _entries(path: Path):
    """(line number, text) of each line that is more than a comment, the comment cut off."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            yield number, text


def read_pins(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line; anything else is an error."""
    if not path.is_file():
        raise StepFailed(f"{path} not found", "run from the bundle's folder")
    pins = {}
    for number, text in _entries(path):
        match = PIN.match(text)
        if not match:
            raise StepFailed(f"{path}:{number}: {text!r} is not an exact pin", "write it as name==version")
        pins[match.group(1)] = match.group(2)
    return pins


def read_ranges(path: Path) -> dict[str, str]:
    """name -> specifier (e.g. ">=2.20,<2.22") for every line of a ranges file."""
    if not path.is_file():
        raise StepFailed(f"{path} not found", "restore it from the bundle, or set pins.supported to ''")
    specifiers, _ = _packaging()
    ranges = {}
    for number, text in _entries(path):
        match = RANGE.match(text)
        spec = re.sub(r"\s+", "", match.group(2)) if match else ""
        try:
            specifiers.SpecifierSet(spec or "!")
        except specifiers.InvalidSpecifier:
            raise StepFailed(f"{path}:{number}: {text!r} is not a range", "write it as name>=X,<Y") from None
        ranges[_normal(match.group(1))] = spec
    return ranges


def in_range(version: str, specifier: str) -> bool:
    specifiers, versions = _packaging()
    try:
        return versions.Version(version) in specifiers.SpecifierSet(specifier, prereleases=True)
    except versions.InvalidVersion:
        return False


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a `pip freeze` list or a constraints
    file; comments and `name @ url` lines are left out."""
    versions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.split("#", 1)[0])
        if match:
            versions[match.group(1)] = match.group(2)
    return versions


def differences(pins: dict[str, str], preinstalled: dict[str, str]) -> list[str]:
    """The pins whose package the list holds at another version: what pip would move."""
    listed = {_normal(name): version for name, version in preinstalled.items()}
    return [
        f"{name}=={version} (the list has {listed[_normal(name)]})"
        for name, version in pins.items()
        if _normal(name) in listed and listed[_normal(name)] != version
    ]


def _complete(distribution) -> bool:
    folder = Path(str(getattr(distribution, "_path", "")))
    return folder.suffix != ".dist-info" or all((folder / name).is_file() for name in ("INSTALLER", "RECORD"))


def installed_versions(names) -> dict[str, str | None]:
    """name -> installed version, None when absent, BROKEN:version when half-installed."""
    found = {}
    for name in names:
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = distribution.version if _complete(distribution) else f"{BROKEN}:{distribution.version}"
    return found


def live_versions() -> dict[str, str]:
    """Every installed distribution: normalized name -> version (the first on sys.path wins, as
    for imports)."""
    found: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"] if distribution.metadata else None
        if name and distribution.version:
            found.setdefault(_normal(name), distribution.version)
    return found


@dataclass
class Plan:
    kept: dict[str, str] = field(default_factory=dict)  # supported versions left as they are
    install: list[str] = field(default_factory=list)  # name==version requirements
    repair: list[str] = field(default_factory=list)  # half-installed, reinstalled over themselves
    outside: list[str] = field(default_factory=list)  # "name X (supported: SPEC)"


def plan(pins: dict[str, str], installed: dict[str, str | None], ranges: dict[str, str] | None = None) -> Plan:
    """What to do for each pin. `ranges` None: --exact, every pin at its version."""
    out = Plan()
    for name, version in pins.items():
        have = installed.get(name)
        broken = have is not None and have.startswith(BROKEN)
        have_version = have.split(":", 1)[1] if broken else have
        spec = None if ranges is None else ranges.get(_normal(name))
        if spec is None:  # exact: the bundle's own package, or --exact
            if broken:
                out.repair.append(f"{name}=={version}")
            elif have != version:
                out.install.append(f"{name}=={version}")
        elif have is None:
            out.install.append(f"{name}=={version}")
        elif not in_range(have_version, spec):
            out.outside.append(f"{name} {have_version} (supported: {spec})")
        elif broken:
            out.repair.append(f"{name}=={have_version}")
        else:
            out.kept[name] = have
    return out


def constraints_text(live: dict[str, str], snapshot: dict[str, str], changing: set[str]) -> str:
    """pip constraints: each installed distribution at its live version, and the snapshot's
    version of what is not installed; nothing for the packages being installed (their
    requirement lines say the version)."""
    _, versions = _packaging()

    def valid(version: str) -> bool:  # pip refuses a constraints file with a non-PEP 440 version in it
        try:
            return bool(versions.Version(version))
        except versions.InvalidVersion:
            return False

    wanted = {_normal(name): version for name, version in snapshot.items()}
    wanted.update({name: version for name, version in live.items() if valid(version)})
    for name in changing:
        wanted.pop(_normal(name), None)
    return "".join(f"{name}=={version}\n" for name, version in sorted(wanted.items()))


def pins(
    ctx: Context,
    requirements: str = "requirements.txt",
    constraints: str = "colab/constraints.txt",
    supported: str = "supported.txt",
    exact: bool = False,
) -> Result:
    wanted = read_pins(ctx.root / requirements)
    ranges = None if exact or not supported else read_ranges(ctx.root / supported)
    snapshot = _snapshot(ctx.root / constraints, wanted) if constraints else {}
    todo = plan(wanted, installed_versions(wanted), ranges)
    if todo.outside:
        raise StepFailed(f"outside the supported range: {', '.join(todo.outside)}", MOVE_RUNTIME)
    kept = f"kept {', '.join(f'{name} {version}' for name, version in todo.kept.items())}" if todo.kept else ""
    if not todo.install and not todo.repair:
        wants = requirements if ranges is None else f"{requirements} and {supported}"
        return ok(f"{len(wanted)} packages as {wants} want them" + (f"; {kept}" if kept else ""))

    def says(install_verb: str, reinstall_verb: str) -> str:
        parts = [f"{install_verb} " + " ".join(todo.install)] if todo.install else []
        parts += [f"{reinstall_verb} the half-installed " + " ".join(todo.repair)] if todo.repair else []
        return ", ".join(parts + ([kept] if kept else []))

    if ctx.dry_run:
        return ctx.would(says("install", "reinstall"))
    changing = {requirement.split("==", 1)[0] for requirement in todo.install + todo.repair}
    before = live_versions()
    live = {} if exact else before
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as work:
        held = Path(work) / "constraints.txt"
        held.write_text(constraints_text(live, snapshot, changing))
        options = ["--disable-pip-version-check", "--progress-bar", "off", "--constraint", str(held)]
        if todo.repair:
            ctx.run([*pip, "install", *options, "--ignore-installed", "--no-deps", *todo.repair])
        if todo.install:
            ctx.run([*pip, "install", *options, *todo.install])
    after = plan(wanted, installed_versions(wanted), ranges)
    if after.install or after.repair or after.outside:
        still = after.install + after.repair + after.outside
        raise StepFailed(f"after pip install, still not as wanted: {' '.join(still)}", "read pip's output above")
    now, ours = live_versions(), {_normal(name) for name in changing}
    moved = [f"{name} {version} -> {now.get(name)}" for name, version in sorted(before.items())
             if name not in ours and now.get(name) != version]  # fmt: skip
    if moved and not exact:
        raise StepFailed(f"pip moved preinstalled packages: {', '.join(moved)}", "this is a bug in the pins; report it")
    return changed(says("installed", "reinstalled"))


def _snapshot(path: Path, wanted: dict[str, str]) -> dict[str, str]:
    """The tested snapshot's versions (what a fresh machine resolves to), checked against the
    pins first: pip's own message for a pin that contradicts a constraint is a page of resolver
    output."""
    if not path.is_file():
        raise StepFailed(f"{path} not found", "restore it from the bundle, or set pins.constraints to ''")
    listed = read_freeze(path)
    conflicts = differences(wanted, listed)
    if conflicts:
        raise StepFailed(
            f"pins differ from {path.name}: {', '.join(conflicts)}", "make them equal, or set pins.constraints to ''"
        )
    return listed
