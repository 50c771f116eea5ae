"""pins: installed versions equal requirements.txt. Compared through importlib.metadata (no
imports of the packages themselves); only mismatches are reinstalled, then verified.

A pip install killed halfway can leave a package's metadata without the rest of its files (a
wheel's own METADATA and RECORD are unpacked like any other file). pip writes `INSTALLER` into
the `.dist-info` folder only once every file is in place, so a folder without it is counted as
broken (two stats per pin, not a read of every file) and is reinstalled over itself with
`--ignore-installed --no-deps`.

Colab preinstalls most of the stack, and reinstalling one of its packages under a running
runtime (numpy above all) breaks the packages compiled against it. So the pins equal Colab's
versions where Colab has the package, and whatever pip installs goes in under Colab's list as
constraints (colab/constraints.txt): a dependency pulled in (protobuf for onnx, say) keeps
Colab's version instead of moving under TensorFlow."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from scripts.steps import Context, Result, StepFailed, changed, ok

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def read_pins(path: Path) -> dict[str, str]:
    """name -> version for every `name==version` line; anything else is an error."""
    if not path.is_file():
        raise StepFailed(f"{path} not found", "run from the bundle's folder")
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = PIN.match(text)
        if not match:
            raise StepFailed(f"{path}:{number}: {text!r} is not an exact pin", "write it as name==version")
        pins[match.group(1)] = match.group(2)
    return pins


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


BROKEN = "broken"  # the installed version when a pip install of it was cut short


def _complete(distribution) -> bool:
    folder = Path(str(getattr(distribution, "_path", "")))
    return folder.suffix != ".dist-info" or all((folder / name).is_file() for name in ("INSTALLER", "RECORD"))


def installed_versions(names) -> dict[str, str | None]:
    found = {}
    for name in names:
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = distribution.version if _complete(distribution) else BROKEN
    return found


def plan(pins: dict[str, str], installed: dict[str, str | None]) -> tuple[list[str], list[str], list[str]]:
    """(packages to uninstall first, requirements to install, broken ones to reinstall over
    themselves). A mismatched TensorFlow is uninstalled before the new one goes in, as pip's
    in-place upgrade of it can leave files of both versions behind."""
    install = [f"{name}=={version}" for name, version in pins.items() if installed.get(name) not in (version, BROKEN)]
    repair = [f"{name}=={version}" for name, version in pins.items() if installed.get(name) == BROKEN]
    uninstall = [
        name for name in pins if _normal(name) == "tensorflow" and installed.get(name) not in (None, BROKEN, pins[name])
    ]
    return uninstall, install, repair


def pins(ctx: Context, requirements: str = "requirements.txt", constraints: str = "colab/constraints.txt") -> Result:
    wanted = read_pins(ctx.root / requirements)
    constraint = ["--constraint", str(_constraints_file(ctx.root / constraints, wanted))] if constraints else []
    uninstall, install, repair = plan(wanted, installed_versions(wanted))
    if not install and not repair:
        return ok(f"{len(wanted)} pins match {requirements}")

    def says(install_verb: str, reinstall_verb: str) -> str:
        parts = [f"{install_verb} " + " ".join(install)] if install else []
        return ", ".join(parts + ([f"{reinstall_verb} the half-installed " + " ".join(repair)] if repair else []))

    if ctx.dry_run:
        return ctx.would(
            says("install", "reinstall") + (f" after uninstalling {' '.join(uninstall)}" if uninstall else "")
        )
    pip = [sys.executable, "-m", "pip"]
    options = ["--disable-pip-version-check", "--progress-bar", "off", *constraint]
    if uninstall:
        ctx.run([*pip, "uninstall", "-y", *uninstall])
    if repair:
        ctx.run([*pip, "install", *options, "--ignore-installed", "--no-deps", *repair])
    if install:
        ctx.run([*pip, "install", *options, *install])
    _, still, broken = plan(wanted, installed_versions(wanted))
    if still or broken:
        raise StepFailed(
            f"after pip install, still not as pinned: {' '.join(still + broken)}", "read pip's output above"
        )
    return changed(says("installed", "reinstalled"))


def _constraints_file(path: Path, wanted: dict[str, str]) -> Path:
    """Colab's list as pip constraints, checked against the pins first (pip's own message for a
    pin that contradicts a constraint is a page of resolver output)."""
    if not path.is_file():
        raise StepFailed(f"{path} not found", "restore it from the bundle, or set pins.constraints to ''")
    conflicts = differences(wanted, read_freeze(path))
    if conflicts:
        raise StepFailed(
            f"pins differ from {path.name}: {', '.join(conflicts)}", "make them equal, or set pins.constraints to ''"
        )
    return path
