"""The click command line for everything but the hot path of `step-tracer run` (see `step_tracer.__main__`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from step_tracer import __version__
from step_tracer.wrapper import options as run_options


class _LazyGroup(click.Group):
    """Subcommands whose modules are imported only when used: `step-tracer --help` need not load the OpenTelemetry
    SDK (sidecar), an HTTPS server (webhook) or a YAML library (inject)."""

    lazy = {
        "inject": "step_tracer.inject.cli:inject",
        "bundle": "step_tracer.bundle.cli:bundle",
        "sidecar": "step_tracer.sidecar.cli:sidecar",
        "webhook": "step_tracer.webhook.cli:webhook",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(n for n in self.lazy if self._load(n) is not None)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._load(cmd_name)

    def _load(self, name: str) -> click.Command | None:
        import importlib

        target = self.lazy.get(name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                return None  # not part of this build
            raise
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="step-tracer")
def cli() -> None:
    """One OpenTelemetry span per CI/CD step.

    Wrap a command with `step-tracer run -- CMD`, look at what was recorded with `step-tracer show`.
    """


def _run_params() -> list[click.Parameter]:
    params: list[click.Parameter] = []
    for flag, placeholder, repeatable, help_text in run_options.OPTIONS:
        if placeholder:
            params.append(click.Option([flag], multiple=repeatable, help=help_text, metavar=placeholder))
        else:
            params.append(click.Option([flag], is_flag=True, help=help_text))
    params.append(
        click.Argument(["command"], nargs=-1, type=click.UNPROCESSED, required=True, metavar="-- CMD [ARGS]...")
    )
    return params


def _run(command: tuple[str, ...], **values: Any) -> None:
    """Reached only when click parsed `run` itself (the fast path in __main__ takes every real invocation)."""
    from step_tracer.wrapper import entrypoint

    argv: list[str] = []
    for flag, placeholder, repeatable, _ in run_options.OPTIONS:
        value = values.get(flag.lstrip("-").replace("-", "_"))
        if not placeholder:
            argv += [flag] if value else []
            continue
        items = value if repeatable else [value]
        argv += [part for item in items or () if item is not None for part in (flag, item)]
    sys.exit(entrypoint.main([*argv, "--", *command]))


cli.add_command(
    click.Command(
        "run",
        callback=_run,
        params=_run_params(),
        context_settings={"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
        short_help="Run a command and record one span for it.",
        help="""Run CMD exactly as it would run unwrapped and record one span for it.

        The exit code, signals, stdin/stdout/stderr, working directory and environment are the command's own; the
        command additionally gets TRACEPARENT naming its span. The span is parented on TRACEPARENT when set, and
        exported per the OTEL_* environment variables (default without a collector: an OTLP JSON lines file, see
        `step-tracer show`). Arguments are not recorded unless --record-args is given.

        Durations are Go-style (90s, 1h30m, 500ms) or plain seconds. A bad option followed by `--` and the
        command does not stop the step: the command runs untraced, with one line on stderr.

        \b
        Examples:
          step-tracer run -- make test
          step-tracer run --timeout 10m --attr team=build -- ./build.sh --release
        """,
    )
)


@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--trace", "trace_id", metavar="ID", help="Show one trace (an id prefix is enough in a file).")
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Show the N most recent traces of the file.")
@click.option(
    "--from-jaeger",
    "jaeger_url",
    metavar="URL",
    help="Read the trace given by --trace from Jaeger's query service (http://HOST:16686) instead of a file.",
)
@click.option("--tree", is_flag=True, help="Print each trace as a tree with every resource figure, not a waterfall.")
@click.option(
    "--width", type=click.IntRange(min=60), metavar="COLUMNS", help="Fit the waterfall to this width (60 or more)."
)
def show(
    file: str | None,
    trace_id: str | None,
    last: int | None,
    jaeger_url: str | None,
    tree: bool,
    width: int | None,
) -> None:
    """Print recorded spans as a waterfall per trace: step, result, exit code, a bar on the trace's time axis.

    FILE defaults to where `step-tracer run` writes when no collector is configured
    (STEP_TRACER_FILE, else $XDG_STATE_HOME/step-tracer/spans.jsonl, else ~/.local/state/step-tracer/spans.jsonl).
    With --from-jaeger URL --trace ID the trace comes from Jaeger's HTTP API (GET URL/api/v3/traces/ID) instead.

    On a terminal the waterfall fits its width (COLUMNS wins) and is coloured unless NO_COLOR is set; otherwise
    it is plain text, 100 columns wide unless COLUMNS or --width says otherwise.
    """
    from step_tracer import show as show_module

    view = show_module.TREE if tree else show_module.WATERFALL
    color = show_module.use_color(sys.stdout, os.environ)
    columns = width or show_module.terminal_width(sys.stdout, os.environ)
    if jaeger_url is not None:
        if file is not None or last is not None:
            raise click.UsageError("--from-jaeger reads one trace from Jaeger: give --trace ID, not FILE or --last")
        if trace_id is None:
            raise click.UsageError("--from-jaeger needs --trace ID (the whole trace id)")
        code = show_module.show_jaeger(jaeger_url, trace_id, out=sys.stdout, color=color, view=view, width=columns)
        sys.exit(code)
    from step_tracer.export.settings import Settings

    path = file or Settings.from_env(os.environ, lambda _msg: None).file_path
    code = show_module.show(path, trace_id=trace_id, last=last, out=sys.stdout, color=color, view=view, width=columns)
    sys.exit(code)


@cli.command()
@click.argument("sources", nargs=-1, metavar="[FILES|-]")
def replay(sources: tuple[str, ...]) -> None:
    """Export spans the sidecar wrote to its log instead of exporting them.

    At its drain deadline the sidecar writes every span it could not ship to stdout as OTLP JSON lines. Give
    this the sidecar container's log (`kubectl logs POD -c step-tracer | step-tracer replay -`; `--timestamps`
    and `--prefix` lines are fine), CRI log files, or spool records; it exports them with the OTEL_* settings.
    Other lines are skipped and counted. At-least-once: a span the collector accepted just after the sidecar's
    deadline is sent again with the same ids. Exit 1 when a span could not be exported.
    """
    from step_tracer import replay as replay_module

    sys.exit(replay_module.replay(sources or ("-",), os.environ, sys.stderr))
