"""The step contract: read the current state, compare it with the wanted state, act only on the
difference, and report one of ok / changed / skipped / failed, with the time it took.

A step is a function `step(ctx, **options) -> Result`. It returns `ok(...)` when nothing needed
doing, `changed(...)` when it acted (or, under --dry-run, would have), `skipped(...)` with the
reason, and raises `StepFailed(reason, todo)` when the wanted state cannot be reached.

A process can die at any instant (a Colab runtime is reset, a user presses stop), so a step
never reports `ok` from a marker alone. Its "done" record (the dataset's manifest, the C
library's stamp, the published record) is removed before anything changes and written last,
under a temporary name and renamed; the files it vouches for are written the same way; and the
`ok` check also stats them. What a killed run leaves (hidden `.NAME.partial*` entries) is
removed by the next run, which holds the bundle's lock (scripts/lock.py). A step checks its new
input (fetches, unpacks, verifies it beside the old state) before it drops that record, so a
refused source costs nothing. trainer/atomic.py holds the writes and swaps all of this uses.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer.atomic import write_atomically
from trainer.errors import is_machine_error, os_error_sentence

STATUSES = ("ok", "changed", "skipped", "failed")


@dataclass
class Result:
    name: str
    status: str
    detail: str
    seconds: float = 0.0
    refused: bool = False  # the user's input was refused (StepRefused): exit code 2, not 1


class StepFailed(Exception):
    """The wanted state cannot be reached: says why and what to do."""

    def __init__(self, reason: str, todo: str = ""):
        super().__init__(f"{reason}; {todo}" if todo else reason)
        self.reason = reason
        self.todo = todo


class StepRefused(StepFailed):
    """The user's input is refused (a source, a path, a setting) and nothing changed: the task
    exits with 2, as the trainer does for its input, where a failure of the machine exits with 1."""


def ok(detail: str) -> Result:
    return Result("", "ok", detail)


def changed(detail: str) -> Result:
    return Result("", "changed", detail)


def skipped(reason: str) -> Result:
    return Result("", "skipped", reason)


@dataclass
class Context:
    """What every step gets: the dry-run switch, the project root, and a command runner."""

    dry_run: bool = False
    root: Path = Path(__file__).resolve().parent.parent
    echo: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)

    def would(self, action: str) -> Result:
        return changed(f"would {action} (dry run)")

    def run(
        self,
        argv: Sequence[str],
        *,
        env: dict | None = None,
        capture: bool = False,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command from an argument list (never a shell string); a failure is StepFailed."""
        if self.dry_run:
            raise RuntimeError(f"bug: a step tried to run {argv[0]} under --dry-run")
        self.echo("$ " + shlex.join(map(str, argv)))
        pipe = subprocess.PIPE if capture else None
        try:
            process = subprocess.Popen(
                [str(a) for a in argv],
                env={**os.environ, **(env or {})},
                stdin=subprocess.PIPE if input is not None else None,
                stdout=pipe,
                stderr=pipe,
                text=True,
            )
        except FileNotFoundError:
            raise StepFailed(f"{argv[0]} is not installed", "install it, or run `invoke apt` first") from None
        try:
            stdout, stderr = communicate(process, input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise StepFailed(f"`{shlex.join(map(str, argv))}` took more than {timeout:.0f} s", "rerun it") from None
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check and result.returncode != 0:
            tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:] if capture else []
            raise StepFailed(
                f"`{shlex.join(map(str, argv))}` exited with {result.returncode}"
                + (": " + " / ".join(tail) if tail else ""),
                "read the output above",
            )
        return result


GRACE = 60.0  # seconds an interrupted child gets to stop by itself before it is terminated


def communicate(process: subprocess.Popen, input: str | None = None, timeout: float | None = None):
    """process.communicate, but Ctrl-C gives the child time to stop cleanly. A terminal's Ctrl-C
    (and Colab's "interrupt execution") signals the whole foreground process group, so the child
    got its own SIGINT and is stopping: subprocess.run would kill it 0.25 s later, before it
    could say so or tidy up. Here it gets GRACE seconds (one SIGINT is forwarded if it is still
    running after 2 s, in case it was not signalled), then SIGTERM, then SIGKILL; further Ctrl-Cs
    are ignored meanwhile. Then KeyboardInterrupt goes on up."""
    try:
        return process.communicate(input=input, timeout=timeout)
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for stop, wait in ((None, 2.0), (signal.SIGINT, GRACE), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                if stop is not None and process.poll() is None:
                    process.send_signal(stop)
                try:
                    process.communicate(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            signal.signal(signal.SIGINT, previous)
        raise


def died_of(returncode: int) -> str:
    """A child's exit code in words: 'exit code 2', or 'signal SIGKILL'."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def read(argv: Sequence[str], timeout: float = 20) -> str | None:
    """Read-only probe: a command's stdout, or None when it is missing or fails. Never acts."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (FileNotFoundError, PermissionError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def run_step(name: str, function: Callable[..., Result], ctx: Context, **options) -> Result:
    started = time.perf_counter()
    try:
        result = function(ctx, **options)
    except StepFailed as error:
        result = Result(name, "failed", str(error), refused=isinstance(error, StepRefused))
    except OSError as error:
        if not is_machine_error(error):
            raise
        result = Result(name, "failed", os_error_sentence(error, where="another folder"))
    result.name = name
    result.seconds = round(time.perf_counter() - started, 3)
    ctx.echo(f"{name}: {result.status}" + (f" ({result.detail})" if result.detail else ""))
    return result


def table(results: Sequence[Result]) -> str:
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'step':<{width}}  {'status':<8} {'seconds':>8}  detail"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.status:<8} {r.seconds:>8.2f}  {r.detail}")
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()))
    return "\n".join(lines)


def write_report(results: Sequence[Result], path: Path) -> None:
    """{"steps": [{"name", "status", "seconds", "detail"}]}, written whole or not at all."""
    write_atomically(path, json.dumps({"steps": [asdict(r) for r in results]}, indent=2) + "\n")


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def privileged(argv: Sequence[str]) -> list[str]:
    """Prefix sudo when not root and sudo can run without a password; StepFailed otherwise."""
    if is_root():
        return list(argv)
    if read(["sudo", "-n", "true"]) is not None:
        return ["sudo", "-n", *argv]
    raise StepFailed(f"{argv[0]} needs root", "rerun as root, or give this user passwordless sudo")
