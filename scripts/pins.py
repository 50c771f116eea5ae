"""pins: installed versions equal requirements.txt. Compared through importlib.metadata (no
imports of the packages themselves); only mismatches are reinstalled, then verified."""

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


def installed_versions(names) -> dict[str, str | None]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def plan(pins: dict[str, str], installed: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(packages to uninstall first, requirements to install). A mismatched TensorFlow is
    uninstalled before the new one goes in, as pip's in-place upgrade of it can leave files of
    both versions behind."""
    install = [f"{name}=={version}" for name, version in pins.items() if installed.get(name) != version]
    uninstall = [
        name for name in pins if _normal(name) == "tensorflow" and installed.get(name) not in (None, pins[name])
    ]
    return uninstall, install


def pins(ctx: Context, requirements: str = "requirements.txt") -> Result:
    wanted = read_pins(ctx.root / requirements)
    uninstall, install = plan(wanted, installed_versions(wanted))
    if not install:
        return ok(f"{len(wanted)} pins match {requirements}")
    if ctx.dry_run:
        return ctx.would(
            "install " + " ".join(install) + (f" after uninstalling {' '.join(uninstall)}" if uninstall else "")
        )
    pip = [sys.executable, "-m", "pip"]
    if uninstall:
        ctx.run([*pip, "uninstall", "-y", *uninstall])
    ctx.run([*pip, "install", "--disable-pip-version-check", "--progress-bar", "off", *install])
    _, still = plan(wanted, installed_versions(wanted))
    if still:
        raise StepFailed(f"after pip install, still not as pinned: {' '.join(still)}", "read pip's output above")
    return changed("installed " + " ".join(install))
