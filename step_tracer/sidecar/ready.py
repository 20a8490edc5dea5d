"""`step-tracer sidecar --ready --spool DIR`: the readiness probe, run by the kubelet every second.

Nothing but `os` (and the path constants) here: the probe must not import click or the OpenTelemetry SDK.
"""

from __future__ import annotations

import os

from step_tracer.tekton import paths


def spool_from_args(argv: list[str]) -> str | None:
    """The --spool value of `argv` (STEP_TRACER_SPOOL or the pod default when absent); None if malformed."""
    spool = paths.spool_dir(os.environ)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--spool":
            if i + 1 >= len(argv):
                return None
            spool = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--spool="):
            spool = arg[len("--spool=") :]
        elif arg != "--ready":
            return None
        i += 1
    return spool


def ready_main(argv: list[str]) -> int:
    """0 iff the sidecar has written `<spool>/.ready`; 1 when not (yet); 2 on bad arguments.

    `argv` is what follows `sidecar` on the command line, e.g. ["--ready", "--spool", "/step-tracer/spool"].
    """
    spool = spool_from_args(argv)
    if spool is None:
        os.write(2, b"usage: step-tracer sidecar --ready [--spool DIR]\n")
        return 2
    return 0 if os.path.exists(os.path.join(spool, paths.READY_FILE)) else 1
