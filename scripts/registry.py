"""Every setup step, once: its function, its task's one-line help, and its settings. The checked
schema of invoke.yaml's sections (scripts.settings), the INVOKE_* variables, each step's task
(tasks.py makes one per row) with its flags and help, `invoke setup`'s flags and the order it
runs the steps in, and the options each step's function is called with are all made from this
table.

A setting: its kind (as scripts.settings checks it), the step function's parameter when that is
not the key, the flag help when the step's task (and `invoke setup`) takes it as a flag too, and
whether an empty value means None to the function. A flag belongs to one step: `invoke setup`
hands each flag to the step whose flag it is, and no two steps may have a flag of the same name
(two steps may share a setting's name, as the data step's and the C library's `source` do, but
only one of them takes it as a flag; the other reads invoke.yaml alone).

To add a step: write its module (the step contract is scripts.steps), add a row here and its
section (each setting's default) to invoke.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scripts import apt, check, dataset, libtensorflow, pins, stage
from scripts.kinds import FLAG, TEXT, WORDS, SettingError, check_value, whole


@dataclass(frozen=True)
class Setting:
    kind: object
    flag: str = ""  # help for --KEY on the step's task and on `invoke setup`; "" when not a flag
    param: str = ""  # the function's parameter, when not the key
    empty_is_none: bool = False


@dataclass(frozen=True)
class Step:
    name: str
    function: Callable
    doc: str  # the task's one-line help
    settings: dict[str, Setting] = field(default_factory=dict)
    dry_run: str = "change nothing"  # the help of the task's --dry-run
    reads_only: bool = False  # runs beside another invoke in the bundle (it takes no lock)

    def options(self, configured: dict, flags: dict) -> dict:
        """The function's keyword arguments: each setting from its flag when it is one of this
        step's flags and given (`invoke setup` hands every step all the flags: --source is the
        data step's, not the C library's), else from the configuration (invoke.yaml under
        INVOKE_* variables), checked by its kind. A setting the configuration lacks raises
        KeyError naming it."""
        out = {}
        for key, setting in self.settings.items():
            given = flags.get(key) if setting.flag else None
            value = configured[key] if given is None else given
            value = check_value(f"{self.name}.{key}", setting.kind, value)
            if setting.kind == WORDS and isinstance(value, str):
                value = value.split()
            if setting.empty_is_none and value in ("", None):
                value = None
            out[setting.param or key] = value
        return out

    def flags(self) -> dict[str, str]:
        """The step's flags and their help."""
        return {key: setting.flag for key, setting in self.settings.items() if setting.flag}


STEPS = (
    Step("check", check.check, "Report the machine: OS, CPU, memory, Python, GPU, CUDA, TensorFlow, Colab, Drive.",
         {"require_gpu": Setting(FLAG, "make 'no GPU' an error")}, reads_only=True),
    Step("apt", apt.apt, "Install the configured Debian packages that dpkg says are missing.",
         {"packages": Setting(WORDS)}, dry_run="say what would be installed, install nothing"),
    Step("pins", pins.pins, "Keep the runtime's packages in supported.txt's ranges; install what is missing at "
         "requirements.txt's versions.", {
        "requirements": Setting(TEXT),
        "supported": Setting(TEXT),
        "constraints": Setting(TEXT),
        "exact": Setting(FLAG, "install requirements.txt's exact stack, over the runtime's own versions "
                               "(default: keep them in range)"),
    }, dry_run="say what would be installed, change nothing"),
    Step("libtensorflow", libtensorflow.libtensorflow, "Install the pinned TensorFlow C library under a prefix, "
         "register it, and verify it.", {
        "prefix": Setting(TEXT, "install under this folder (default: /usr/local as root, else ~/.local)"),
        "source": Setting(TEXT),
        "sha256": Setting(TEXT, empty_is_none=True),
        "env_file": Setting(TEXT),
        "ldconfig": Setting(TEXT),
    }),
    Step("data", dataset.dataset, "Fetch and unpack the dataset into the data folder and count the images per class.", {
        "source": Setting(TEXT, "concrete (the shipped photos), demo, a Google Drive id or link, an http(s) URL, "
                                "or a local zip or folder"),
        "dir": Setting(TEXT, param="data_dir"),
        "sha256": Setting(TEXT, "expected SHA-256 of the downloaded or local file", empty_is_none=True),
        "expect": Setting(TEXT, "expected images per class, e.g. CD=200,UD=200", empty_is_none=True),
        "csv": Setting(TEXT),
        "demo_per_class": Setting(whole(3)),
    }),
    Step("stage", stage.stage, "Restore the executable bit on the bundle's own scripts (Drive drops it)."),
)  # fmt: skip
SETUP_STEPS = tuple(step.name for step in STEPS)


def step(name: str) -> Step:
    return next(candidate for candidate in STEPS if candidate.name == name)


def setup_flags(steps: tuple[Step, ...] = STEPS) -> dict[str, str]:
    """Every step's flags, which `invoke setup` takes and hands to the step that owns each;
    SettingError when two steps take a flag of the same name (whose would it be?)."""
    owners: dict[str, str] = {}
    for candidate in steps:
        for key in candidate.flags():
            if key in owners:
                raise SettingError(f"scripts/registry.py: --{key.replace('_', '-')} is a flag of both {owners[key]} "
                                   f"and {candidate.name}; a flag belongs to one step")  # fmt: skip
            owners[key] = candidate.name
    return {key: text for candidate in steps for key, text in candidate.flags().items()}


__all__ = ["STEPS", "SETUP_STEPS", "Setting", "SettingError", "Step", "setup_flags", "step"]
