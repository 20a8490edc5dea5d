"""Which step of the pod this is, as Tekton's entrypoint knows it.

The patcher writes the step's name and index into the wrapper's options, but it cannot always know them: a
StepAction is patched once and referenced by any step of any Task (at any index, under any name, with any
timeout). Tekton's entrypoint, the wrapper's parent in every step container, is started with its step's own
paths and limits: `-step_metadata_dir /tekton/run/<index>/status` and `-timeout <duration>`; its `init`
subcommand links `/tekton/steps/<container name>` to that status directory. These are what a cluster really
runs, so they win over the options when present.

Imported by the wrapper on every Tekton step: stdlib C modules only.
"""

from __future__ import annotations

import os

RUN_PREFIX = "/tekton/run/"
STEPS_DIR = "/tekton/steps"
#: A command line is at most a few KiB; a bound keeps a strange /proc from costing the step anything.
MAX_CMDLINE = 1 << 16


class EntrypointStep:
    """What the entrypoint's command line and /tekton/steps say of this step."""

    __slots__ = ("container", "index", "timeout")

    def __init__(self, index: int, container: str | None, timeout: str | None) -> None:
        self.index = index
        self.container = container
        self.timeout = timeout


def _flag(args: list[str], name: str) -> str | None:
    """The value of Go flag `-name` / `--name` (`-name value` or `-name=value`) before the `--` separator."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        for dash in ("-", "--"):
            if arg == dash + name:
                return args[i + 1] if i + 1 < len(args) else None
            if arg.startswith(dash + name + "="):
                return arg[len(dash + name) + 1 :]
    return None


def read(ppid: int, proc: str = "/proc", steps_dir: str = STEPS_DIR) -> EntrypointStep | None:
    """This step as its parent entrypoint runs it; None when the parent is not Tekton's entrypoint."""
    try:
        fd = os.open(f"{proc}/{ppid}/cmdline", os.O_RDONLY | os.O_NONBLOCK)
        try:
            raw = os.read(fd, MAX_CMDLINE)
        finally:
            os.close(fd)
    except OSError:
        return None
    args = raw.decode("utf-8", "surrogateescape").split("\0")
    metadata = _flag(args, "step_metadata_dir")
    if not metadata or not metadata.startswith(RUN_PREFIX) or not metadata.endswith("/status"):
        return None
    digits = metadata[len(RUN_PREFIX) : -len("/status")]
    if not digits.isdigit() or len(digits) > 4:
        return None
    return EntrypointStep(int(digits), _container(steps_dir, metadata), _flag(args, "timeout"))


def _container(steps_dir: str, status_dir: str) -> str | None:
    """The container name whose /tekton/steps link points at `status_dir`."""
    try:
        entries = os.listdir(steps_dir)
    except OSError:
        return None
    for name in entries:
        if name.isdigit():
            continue
        try:
            if os.readlink(os.path.join(steps_dir, name)) == status_dir:
                return name
        except OSError:
            continue
    return None


def step_name(container: str, fallback: str) -> str:
    """The step name behind a container name: `step-NAME` -> NAME, `step-unnamed-I` -> "". `fallback` when
    the patcher's name gives the same container (the container name may be cut to 63 characters)."""
    from step_tracer.tekton.podinfo import container_name

    if fallback and container_name(fallback, None) == container:
        return fallback
    if container.startswith("step-unnamed-") and container[len("step-unnamed-") :].isdigit():
        return ""
    return container[len("step-") :] if container.startswith("step-") else container
