"""`step-tracer inject`: the click front of `inject_paths`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click

from step_tracer.inject.clioptions import injection_options
from step_tracer.inject.model import InjectOptions
from step_tracer.inject.runner import inject_paths


@click.command(short_help="Add the step-tracer wrapper and sidecar to Tekton Tasks, Pipelines and StepActions.")
@click.argument("paths", nargs=-1, metavar="[PATHS...|-]")
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    help="Write the patched documents to FILE (- for stdout) instead of rewriting the inputs in place.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; list every step that is not instrumented or whose instrumentation is stale (exit 1 if any).",
)
@click.option(
    "--diff", "--dry-run", "diff", is_flag=True, help="Change nothing; print a unified diff of what would change."
)
@injection_options()
@click.option("-v", "--verbose", is_flag=True, help="Also print info: lines (what was left alone and why).")
def inject(
    paths: tuple[str, ...],
    output: str | None,
    check: bool,
    diff: bool,
    options: InjectOptions,
    insecure: bool,
    verbose: bool,
) -> None:
    """Instrument Tekton resources so every step gets a span.

    PATHS are YAML or JSON files (multi-document streams and `kind: List` too), directories (searched for *.yaml,
    *.yml, *.json) or - for stdin. Files are rewritten in place, changing only the injected lines; stdin goes to
    stdout. Patching a patched file changes nothing; patching it after the Task changed brings what step-tracer
    added up to date. Steps that run their image's ENTRYPOINT are left alone and listed unless
    --resolve-entrypoints is given.

    \b
    Examples:
      step-tracer inject tasks/
      kustomize build . | step-tracer inject - > patched.yaml
      step-tracer inject --check tasks/        # CI gate: exit 1 when a step is not traced
    """
    if check and diff:
        raise click.UsageError("--check and --diff (--dry-run) do not go together")
    if not paths:
        raise click.UsageError("give files, directories or - for stdin")
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if output not in (None, "-"):
            try:
                out = stack.enter_context(Path(str(output)).open("w", encoding="utf-8"))
            except OSError as exc:
                raise OutputError(f"--output {output}: cannot write: {exc.strerror or type(exc).__name__}") from None
        code = inject_paths(
            list(paths),
            write=output is None and not check and not diff,
            out=out,
            check=check,
            diff=diff,
            options=options,
            err=sys.stderr,
            verbose=verbose,
            summary=True,
        )
    sys.exit(code)


class OutputError(click.ClickException):
    """An output that cannot be written: exit 2, as for an input that cannot be read."""

    exit_code = 2
