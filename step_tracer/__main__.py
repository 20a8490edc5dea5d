"""Command dispatch: the wrapper (`run`, `run-script`) and the sidecar's readiness probe skip click; everything
else (and `--help`) goes to click."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] and args[0].startswith("run-script"):
        from step_tracer.wrapper import entrypoint

        return entrypoint.main_script(args)
    if args[:1] == ["run"]:
        from step_tracer.wrapper import entrypoint, options

        if not options.wants_help(args[1:]):
            return entrypoint.main(args[1:])
    if args[:1] == ["sidecar"] and "--ready" in args:
        from step_tracer.sidecar import ready  # the kubelet runs the probe every second

        if ready.spool_from_args(args[1:]) is not None:
            return ready.ready_main(args[1:])
    from step_tracer.cli import cli

    try:
        cli.main(args, prog_name="step-tracer")  # standalone: click reports usage errors itself (exit 2)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        sys.stderr.write(f"{exc.code}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
