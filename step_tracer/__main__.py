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
    return _click_main(args)


def _click_main(args: list[str]) -> int:
    """click, with every error one line on stderr: click's usage errors come as three (usage, hint, error), and a
    bug of ours must not show the user a traceback."""
    import click

    from step_tracer.cli import cli

    try:
        result = cli.main(args, prog_name="step-tracer", standalone_mode=False)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        sys.stderr.write(f"{exc.code}\n")
        return 1
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx is not None else "step-tracer"
        if where == "step-tracer" and args[:1] and (args[0] in cli.commands or args[0] in getattr(cli, "lazy", {})):
            where = f"step-tracer {args[0]}"  # click blames the group for some of a subcommand's option errors
        message = " ".join(err.format_message().split())
        sys.stderr.write(f"step-tracer: {message} (see {where} --help)\n")
        return err.exit_code
    except click.ClickException as err:
        sys.stderr.write(f"step-tracer: {' '.join(err.format_message().split())}\n")
        return err.exit_code
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("step-tracer: interrupted\n")
        return 130
    except Exception as err:  # the last resort: one line saying where, never the traceback
        from step_tracer import problem

        sys.stderr.write(f"step-tracer: {problem.describe(err)}\n")
        return 70  # EX_SOFTWARE
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
