"""`run-script`: the wrapper as the interpreter of a patched Tekton `script:` step.

The patcher puts one line in front of the script, `#!/step-tracer/bin/step-tracer run-script --tekton-step=...`,
so the kernel starts us with that line's options as ONE argument, then the script's path, then the step's args.
The rest of the file is the original script, its own `#!` line first (or Tekton's `#!/bin/sh` + `set -e`
preamble, which the patcher wrote for a script without one). We run that text unchanged: it goes into a memfd
that is executed as `/proc/self/fd/N`, so the kernel applies the script's own shebang, line numbers are the
original ones, and no shell is needed in the image. The one visible difference is `$0` (`/proc/self/fd/N`).
"""

from __future__ import annotations

import os

from step_tracer.wrapper import options

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)
if TYPE_CHECKING:
    from collections.abc import Sequence

ENTRY = "run-script"
# Tekton's preamble for a script without "#!" (pkg/pod/script.go); the patcher normally wrote it already.
TEKTON_PREAMBLE = b"#!/bin/sh\nset -e\n"


class ScriptError(Exception):
    """The script cannot be run as written (unreadable, no interpreter line...). `fallback` is an argv that runs
    it without us, when one exists."""

    def __init__(self, message: str, fallback: list[str] | None = None) -> None:
        super().__init__(message)
        self.fallback = fallback


def split_shebang_options(first: str) -> list[str]:
    """`run-script --a=1 --b=2` (Linux hands the whole rest of the `#!` line over as one argument)."""
    words = first.split()
    return words[1:] if words and words[0] == ENTRY else words


def body(text: bytes) -> bytes:
    """The original script: the file minus our `#!` line, with Tekton's preamble when it has no `#!` of its own."""
    _, newline, rest = text.partition(b"\n")
    if not newline:
        rest = b""
    return rest if rest.startswith(b"#!") else TEKTON_PREAMBLE + rest


def interpreter(script: bytes) -> list[str]:
    """The `#!` line of `script` as the kernel reads it: the interpreter and at most one argument."""
    line = script.split(b"\n", 1)[0][2:].strip().decode("utf-8", "surrogateescape")
    path, _, arg = line.replace("\t", " ").partition(" ")
    arg = arg.strip()
    return [path, arg] if arg else [path] if path else []


def program_name(interp: Sequence[str]) -> str:
    """What runs the script, for the span: `bash` for `#!/usr/bin/env bash` and for `#!/bin/bash -e`."""
    if not interp:
        return ""
    if os.path.basename(interp[0]) == "env" and len(interp) > 1:
        words = [w for w in interp[1].split() if not w.startswith("-")]
        return words[0] if words else "env"
    return interp[0]


def prepare(argv: Sequence[str]) -> options.RunOptions:
    """Options for `entrypoint` from the kernel's argv (without our own argv[0]); the returned command runs the
    script from a memfd. Raises options.UsageError or ScriptError."""
    if len(argv) < 2:
        raise options.UsageError("run-script is the interpreter line of a patched Tekton script, not a command")
    script_path, step_args = argv[1], list(argv[2:])
    try:
        with open(script_path, "rb") as f:
            text = f.read()
    except OSError as err:
        raise ScriptError(f"cannot read script {script_path}: {err.strerror}") from None
    script = body(text)
    interp = interpreter(script)
    fallback = [*interp, script_path, *step_args] if interp else None
    try:
        opts = options.parse([*split_shebang_options(argv[0]), "--", script_path, *step_args])
    except options.UsageError as err:
        raise ScriptError(str(err), fallback) from None
    if not interp:
        raise ScriptError(f"{script_path}: empty interpreter line", None)
    try:
        fd = os.memfd_create("tekton-script", 0)  # not CLOEXEC: the interpreter opens /proc/self/fd/N
        view = memoryview(script)
        while view:
            view = view[os.write(fd, view) :]
    except (OSError, AttributeError) as err:
        raise ScriptError(f"cannot stage the script in memory ({err})", fallback) from None
    opts.display_command = [script_path, *step_args]
    opts.program = program_name(interp)
    opts.command = [f"/proc/self/fd/{fd}", *step_args]
    return opts
