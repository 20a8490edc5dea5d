"""Command dispatch: `run` goes straight to the wrapper; everything else (and `run --help`) goes to click."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["run"]:
        from step_tracer.wrapper import entrypoint, options

        if not options.wants_help(args[1:]):
            return entrypoint.main(args[1:])
    from step_tracer.cli import cli

    return int(cli.main(args, prog_name="step-tracer", standalone_mode=False) or 0)


if __name__ == "__main__":
    sys.exit(main())
