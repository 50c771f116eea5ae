"""libtensorflow: the TensorFlow C library of the installed TensorFlow's version under a prefix.

Wanted state: PREFIX/include/tensorflow/c/*.h, PREFIX/lib/libtensorflow.so.2 and
PREFIX/lib/libtensorflow_framework.so.2 with the usual symlinks (.so -> .so.2 -> .so.X.Y.Z),
PREFIX/lib known to the dynamic loader (ldconfig), an env file with LIBRARY_PATH,
LD_LIBRARY_PATH and C_INCLUDE_PATH, and a small C program that prints TF_Version() equal to the
installed TensorFlow's version (the pin's, for a tarball).

Sources: `wheel` (default: the installed TensorFlow wheel ships the C API; offline and
version-matched), a local tarball, or an official tarball URL, which needs a pinned --sha256.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import tempfile
from importlib import metadata
from pathlib import Path

from scripts.archives import download, extract_into, fetch
from scripts.check import in_colab
from scripts.pins import in_range, read_pins, read_ranges
from scripts.steps import (
    Context,
    Result,
    StepFailed,
    changed,
    is_root,
    ok,
    privileged,
    read,
)
from trainer.atomic import link_or_copy, remove_leftovers, sha256_of, temporary_name, write_atomically

STAMP = "share/libtensorflow/install.json"
LDCONF = Path("/etc/ld.so.conf.d/libtensorflow.conf")
LIBRARIES = ("libtensorflow", "libtensorflow_framework")
HELLO_C = Path(__file__).with_name("hello_tf.c")  # the check program, shipped for users to build too
# The C headers ship beside C++ ones in the wheel; these are the C API's public entry points,
# and whatever they include is copied with them.
HEADER_ROOTS = re.compile(
    r"^(c_api|c_api_experimental|c_api_macros|tf_(attrtype|buffer|datatype|file_statistics|status|tensor|tstring)"
    r"|env|kernels|logging|ops)\.h$"
)
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


# ---------------------------------------------------------------------------------------------
# Reading the current state


def pinned_version(ctx: Context, requirements: str = "requirements.txt") -> str:

    pins = read_pins(ctx.root / requirements)
    if "tensorflow" not in pins:
        raise StepFailed(f"{requirements} pins no tensorflow", "add tensorflow==X.Y.Z or pass --version")
    return pins["tensorflow"]


def wanted_version(ctx: Context, source: str) -> str:
    """The C library's version: the installed TensorFlow's for the wheel (whichever version in
    supported.txt's range the runtime has, so that the C and Python sides agree), the pin's
    for a tarball."""
    if source != "wheel":
        return pinned_version(ctx)

    installed = _tensorflow().version
    supported = read_ranges(ctx.root / "supported.txt").get("tensorflow")
    if supported and not in_range(installed, supported):
        raise StepFailed(f"the installed TensorFlow is {installed}, outside {supported}", "run `invoke pins` first")
    return installed


def env_lines(prefix: Path) -> dict[str, str]:
    lib, include = str(prefix / "lib"), str(prefix / "include")
    return {"LIBRARY_PATH": lib, "LD_LIBRARY_PATH": lib, "C_INCLUDE_PATH": include}


def env_file_text(prefix: Path) -> str:
    """Shell lines that prepend the prefix's folders; the paths are quoted for the shell, so a
    prefix with spaces, quotes or `$(...)` in its name is a name and never a command."""
    lines = ["# Written by `invoke libtensorflow`: source it before building against the C library."]
    for key, value in env_lines(prefix).items():
        lines.append(f'export {key}={shlex.quote(value)}"${{{key}:+:${key}}}"')
    return "\n".join(lines) + "\n"


def installed_state(prefix: Path) -> dict | None:
    try:
        return json.loads((prefix / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _files_present(prefix: Path, recorded: dict) -> bool:
    """Every file the install recorded is there with the size it had (a stat each, no reading)."""
    lib = prefix / "lib"
    needed = [prefix / "include/tensorflow/c/c_api.h"]
    for name in LIBRARIES:
        needed += [lib / f"{name}.so", lib / f"{name}.so.2"]
    if not all(path.exists() for path in needed) or not isinstance(recorded, dict):
        return False
    for relative, size in recorded.items():
        path = prefix / relative
        if size is None and not path.is_symlink():
            return False
        if size is not None and (not path.is_file() or path.stat().st_size != size):
            return False
    return True


def loader_knows(prefix: Path) -> bool:
    cache = read(["ldconfig", "-p"]) or ""
    return f"{prefix / 'lib' / 'libtensorflow.so.2'}" in cache


# ---------------------------------------------------------------------------------------------
# Building the files


def set_soname(path: Path, new: str) -> str:
    """Rewrite an ELF64 library's DT_SONAME in place (the new name must not be longer); returns
    the old name. The wheel's C library is called libtensorflow_cc.so.2; programs linked with
    -ltensorflow must record libtensorflow.so.2, as with the official tarball."""
    with path.open("r+b") as handle:
        header = handle.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise StepFailed(f"{path}: not a 64-bit little-endian ELF library", "use the tarball source")
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
        segments = [struct.unpack_from("<IIQQQQQQ", table, i * phentsize) for i in range(phnum)]
        dynamic = next((s for s in segments if s[0] == 2), None)
        if dynamic is None:
            raise StepFailed(f"{path}: no dynamic section", "use the tarball source")
        handle.seek(dynamic[2])
        entries = handle.read(dynamic[5])
        tags = {}
        for offset in range(0, len(entries), 16):
            tag, value = struct.unpack_from("<qQ", entries, offset)
            if tag == 0:
                break
            tags.setdefault(tag, value)
        strtab, soname = tags.get(5), tags.get(14)
        if strtab is None or soname is None:
            raise StepFailed(f"{path}: no SONAME to rewrite", "use the tarball source")
        load = next(s for s in segments if s[0] == 1 and s[3] <= strtab < s[3] + s[5])
        position = strtab - load[3] + load[2] + soname
        handle.seek(position)
        old = handle.read(256).split(b"\0", 1)[0]
        if len(new) > len(old):
            raise StepFailed(f"{path}: new soname {new} is longer than {old.decode()}", "use the tarball source")
        handle.seek(position)
        handle.write(new.encode() + b"\0" * (len(old) - len(new) + 1))
        return old.decode()


def _tensorflow():
    """The installed TensorFlow distribution (the wheel the C library comes from)."""
    try:
        return metadata.distribution("tensorflow")
    except metadata.PackageNotFoundError:
        raise StepFailed(
            "TensorFlow is not installed, so its wheel cannot supply the C library", "run `invoke pins` first"
        ) from None


def _wheel_dir(version: str) -> Path:
    distribution = _tensorflow()
    if distribution.version != version:
        raise StepFailed(
            f"the installed TensorFlow is {distribution.version}, not {version}", "run `invoke pins` first"
        )
    package = Path(distribution.locate_file("tensorflow"))
    if not (package / "libtensorflow_cc.so.2").is_file():
        raise StepFailed(f"{package} has no libtensorflow_cc.so.2", "use --source with an official tarball")
    return package


def _header_closure(include: Path) -> list[Path]:
    roots = [
        p
        for folder in ("tensorflow/c", "tensorflow/c/eager")
        for p in (include / folder).glob("*.h")
        if HEADER_ROOTS.match(p.name)
    ]
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        header = todo.pop()
        if header in seen:
            continue
        seen.add(header)
        for name in INCLUDE.findall(header.read_text(errors="replace")):
            candidate = include / name
            if candidate.is_file():
                todo.append(candidate)
    return sorted(seen)


def gather_from_wheel(version: str, partial: Path) -> None:
    package = _wheel_dir(version)
    include = package / "include"
    for header in _header_closure(include):
        target = partial / "include" / header.relative_to(include)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(header, target)
    lib = partial / "lib"
    lib.mkdir(parents=True)
    # The C library is copied (its SONAME is rewritten); the framework is hard-linked when the
    # prefix shares a filesystem with the wheel, which survives pip uninstalling the wheel.
    shutil.copyfile(package / "libtensorflow_cc.so.2", lib / f"libtensorflow.so.{version}")
    set_soname(lib / f"libtensorflow.so.{version}", "libtensorflow.so.2")
    link_or_copy(package / "libtensorflow_framework.so.2", lib / f"libtensorflow_framework.so.{version}")
    for name in LIBRARIES:
        (lib / f"{name}.so.{version}").chmod(0o755)
        os.symlink(f"{name}.so.{version}", lib / f"{name}.so.2")
        os.symlink(f"{name}.so.2", lib / f"{name}.so")


def gather_from_tarball(tarball: Path, partial: Path) -> None:
    extract_into(tarball, partial)
    if not (partial / "include/tensorflow/c/c_api.h").is_file() or not (partial / "lib/libtensorflow.so.2").exists():
        raise StepFailed(
            f"{tarball}: no include/tensorflow/c/c_api.h or lib/libtensorflow.so.2 inside",
            "use an official libtensorflow tarball",
        )


def install_tree(partial: Path, prefix: Path) -> dict[str, int | None]:
    """Move the gathered files into the prefix, each under a temporary name and renamed, so a reader
    never sees half a file. Returns the installed paths, relative to the prefix, with their
    sizes (None for a symlink)."""
    installed: dict[str, int | None] = {}
    for source in sorted(partial.rglob("*")):
        if source.is_dir() and not source.is_symlink():
            continue
        relative = source.relative_to(partial)
        target = prefix / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_name(target)
        if temporary.exists() or temporary.is_symlink():
            temporary.unlink()
        if source.is_symlink():
            os.symlink(os.readlink(source), temporary)
            installed[str(relative)] = None
        else:
            installed[str(relative)] = source.stat().st_size
            if target.exists() and os.path.samefile(source, target):
                # Hard links to one file (the wheel's framework, linked by an earlier run):
                # rename(2) between them does nothing and would leave the temporary name.
                source.unlink()
                continue
            os.replace(source, temporary)
        os.replace(temporary, target)
    return installed


def remove_stale(prefix: Path, recorded, installed: dict) -> int:
    """Remove the files an earlier install recorded under the prefix that this one did not
    install (another version's library and headers); returns how many went."""
    if not isinstance(recorded, dict):
        return 0
    removed = 0
    for relative in sorted(set(recorded) - set(installed)):
        path = prefix / relative
        if path.is_relative_to(prefix) and (path.is_file() or path.is_symlink()):
            path.unlink()
            removed += 1
    return removed


def verify(prefix: Path, version: str, ctx: Context) -> str:
    """Compile and run a program that prints TF_Version(), with no -I or -L flags."""
    with tempfile.TemporaryDirectory() as work:
        env = {
            key: f"{value}:{os.environ[key]}" if os.environ.get(key) else value
            for key, value in env_lines(prefix).items()
        }
        ctx.run(["gcc", str(HELLO_C), "-o", str(Path(work) / "hello_tf"), "-ltensorflow"], env=env, capture=True)
        printed = ctx.run([str(Path(work) / "hello_tf")], env=env, capture=True).stdout.strip()
    if printed != version:
        raise StepFailed(f"the C library reports TF_Version() {printed!r}, not {version}", "check --source")
    return printed


# ---------------------------------------------------------------------------------------------
# The step


def install(
    ctx: Context, prefix_path: Path, source: str, sha256: str | None, version: str, register: bool
) -> list[str]:
    """Gather the library beside the prefix, verify it there, move it in, register it with the
    loader, verify it again where it now is, and record it; returns what was done."""
    prefix_path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(prefix_path, ".libtensorflow.partial-")
    remove_leftovers(prefix_path / "lib", ".libtensorflow")
    # The new library is gathered and verified on its own before anything in the prefix
    # changes: a refused source (a missing, unsafe or damaged tarball, a checksum that
    # differs, a library of another version) leaves the installed one recorded and in place.
    with tempfile.TemporaryDirectory(
        prefix=".libtensorflow.partial-", dir=prefix_path, ignore_cleanup_errors=True
    ) as gathered:
        partial = Path(gathered)
        if source == "wheel":
            gather_from_wheel(version, partial)
        else:
            gather_from_tarball(_tarball(ctx, source, sha256, prefix_path), partial)
        verify(partial, version, ctx)
        # The stamp says "done": it goes before the prefix changes and comes back last
        # (see scripts/steps.py).
        before = installed_state(prefix_path) or {}
        (prefix_path / STAMP).unlink(missing_ok=True)
        files = install_tree(partial, prefix_path)
    actions = [f"installed {len(files)} files"]
    # Another version's files go before ldconfig runs: ldconfig points libtensorflow.so.2 at the
    # highest-numbered file of that name, so a 2.21 library left beside 2.20's would win again.
    stale = remove_stale(prefix_path, before.get("files"), files)
    if stale:
        actions.append(f"removed {stale} files of TensorFlow {before.get('version', 'another version')}")
    if register:
        if not _ldconfig_searches(prefix_path / "lib"):
            ctx.run(privileged(["tee", str(LDCONF)]), input=f"{prefix_path / 'lib'}\n", capture=True)
            actions.append(f"added {LDCONF}")
        ctx.run(privileged(["ldconfig"]))
        actions.append("ran ldconfig")
    printed = verify(prefix_path, version, ctx)
    actions.append(f"TF_Version() = {printed}")
    write_atomically(
        prefix_path / STAMP, json.dumps({"version": version, "source": source, "files": files}, indent=2) + "\n"
    )
    return actions


def libtensorflow(
    ctx: Context,
    prefix: str = "auto",
    source: str = "wheel",
    sha256: str | None = None,
    version: str | None = None,
    env_file: str = "libtensorflow.env",
    ldconfig: str = "auto",
) -> Result:
    if "\n" in prefix:
        raise StepFailed("--prefix: a folder name with a line break cannot go in ld.so.conf", "pick another folder")
    if prefix == "auto":
        # /usr/local where we may write there (root, as on Colab), else the user's own ~/.local.
        prefix = "/usr/local" if os.access("/usr/local", os.W_OK) else str(Path.home() / ".local")
    register = _wants_ldconfig(ldconfig)
    prefix_path = Path(prefix).expanduser().resolve()
    if not register and any(separator in str(prefix_path) for separator in ":;"):
        raise StepFailed(
            f"--prefix: the loader splits LD_LIBRARY_PATH at ':' and ';', so {prefix_path / 'lib'} could not be found "
            "through it",
            "pick a prefix without them, or let ldconfig register it (as root, libtensorflow.ldconfig: auto)",
        )
    version = version or wanted_version(ctx, source)
    env_path = ctx.root / env_file if not Path(env_file).is_absolute() else Path(env_file)
    state = installed_state(prefix_path)
    wanted = {"version": version, "source": source}
    is_current = (
        state is not None
        and {key: state.get(key) for key in wanted} == wanted
        and _files_present(prefix_path, state.get("files"))
        and (not register or loader_knows(prefix_path))
    )
    env_ok = env_path.is_file() and env_path.read_text() == env_file_text(prefix_path)
    notebook = "\n".join(f"%env {key}={value}" for key, value in env_lines(prefix_path).items())
    if is_current and env_ok:
        return ok(f"TensorFlow C library {version} in {prefix_path}")
    if ctx.dry_run:
        return ctx.would(f"install the TensorFlow C library {version} from {source} into {prefix_path}")
    existing = next(folder for folder in (prefix_path, *prefix_path.parents) if folder.exists())
    if not os.access(existing, os.W_OK):
        raise StepFailed(f"{prefix_path} is not writable", "rerun as root, or pass --prefix to a folder of yours")

    actions = [] if is_current else install(ctx, prefix_path, source, sha256, version, register)
    if not env_ok:
        write_atomically(env_path, env_file_text(prefix_path))
        actions.append(f"wrote {env_path}")
    if not register:
        why = "libtensorflow.ldconfig: no" if _setting_says_no(ldconfig) else "no root"
        actions.append(f"not registered with ldconfig ({why}): source the env file")
    if in_colab():  # a notebook's own cells do not see a subshell's environment; elsewhere the env file does
        ctx.echo("in a notebook:\n" + notebook)
    return changed(", ".join(actions))


def _setting_says_no(setting: str | bool) -> bool:
    return str(setting).strip().lower() in ("no", "false", "off", "0")


def _wants_ldconfig(setting: str | bool) -> bool:
    """auto: register with the loader when we may (root, or passwordless sudo); yes or no force it."""
    text = str(setting).strip().lower()
    if text in ("yes", "true", "on", "1"):
        return True
    if text in ("no", "false", "off", "0"):
        return False
    return is_root() or read(["sudo", "-n", "true"]) is not None


def _tarball(ctx: Context, source: str, sha256: str | None, prefix: Path) -> Path:
    """A local tarball as it is; a URL fetched once into PREFIX/share/libtensorflow and reused
    while it matches sha256 (required: none is published officially, so the user pins one)."""
    if source.startswith(("https://", "http://")):
        if not sha256:
            raise StepFailed("a libtensorflow URL needs --sha256", "pin the tarball's checksum")
        target = prefix / "share/libtensorflow" / Path(source.split("?")[0]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target.parent, ".")
        return fetch(target, lambda path: download(source, path, echo=ctx.echo), sha256, echo=ctx.echo, what=source)
    tarball = Path(source).expanduser()
    if not tarball.is_file():
        raise StepFailed(f"--source: {tarball} not found", "pass wheel, a tarball path or a URL")
    if sha256 and sha256_of(tarball) != sha256:
        raise StepFailed(f"{tarball} does not match --sha256", "fix the checksum, or fetch the tarball again")
    return tarball


def _ldconfig_searches(lib: Path) -> bool:
    """Is lib among the loader's configured directories (Debian lists /usr/local/lib)?"""
    configured = []
    for conf in [Path("/etc/ld.so.conf"), *sorted(Path("/etc/ld.so.conf.d").glob("*.conf"))]:
        try:
            configured += [line.strip() for line in conf.read_text().splitlines() if line.strip().startswith("/")]
        except OSError:
            continue
    return str(lib) in configured
