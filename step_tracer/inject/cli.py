"""`step-tracer inject`: the click front of `inject_paths`."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from step_tracer.inject.model import DEFAULT_OTLP_SECRET, DEFAULT_SIDECAR_IMAGE, DEFAULT_WRAPPER, InjectOptions
from step_tracer.inject.runner import inject_paths


def injection_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `inject` and `bundle patch` share, handed to the command as one `options: InjectOptions`
    (plus `insecure`, which also decides how bundles are pulled and pushed)."""

    @functools.wraps(command)
    def run(
        *args: Any,
        wrapper: str,
        sidecar_image: str,
        otlp_secret: str,
        otlp_configmap: str,
        resolve_entrypoints: bool,
        insecure: bool,
        **kwargs: Any,
    ) -> None:
        resolve = None
        if resolve_entrypoints:
            try:
                from step_tracer.bundle.resolve import make_resolver
            except ImportError as err:
                raise click.ClickException(f"--resolve-entrypoints is not available in this build: {err}") from None
            resolve = make_resolver(insecure=insecure)
        try:
            options = InjectOptions(
                wrapper=wrapper,
                sidecar_image=sidecar_image,
                otlp_secret=otlp_secret,
                otlp_configmap=otlp_configmap,
                resolve_entrypoints=resolve_entrypoints,
                resolve=resolve,
            )
        except ValueError as err:
            raise click.UsageError(str(err)) from None
        command(*args, options=options, insecure=insecure, **kwargs)

    decorated: Callable[..., None] = run
    for option in reversed(_SHARED_OPTIONS):
        decorated = option(decorated)
    return decorated


_SHARED_OPTIONS = (
    click.option(
        "--wrapper", default=DEFAULT_WRAPPER, show_default=True, help="The wrapper's path in step containers."
    ),
    click.option("--sidecar-image", default=DEFAULT_SIDECAR_IMAGE, show_default=True, help="Image of the sidecar."),
    click.option(
        "--otlp-secret",
        default=DEFAULT_OTLP_SECRET,
        show_default=True,
        help="Secret (optional) whose keys become the sidecar's OTEL_* environment.",
    ),
    click.option(
        "--otlp-configmap",
        default="",
        metavar="NAME",
        help="ConfigMap (optional) with non-secret OTEL_* settings for the sidecar; the Secret's keys win.",
    ),
    click.option(
        "--resolve-entrypoints",
        is_flag=True,
        help="Look up the ENTRYPOINT of steps with neither command nor script in their image's registry (docker "
        "config auth) and wrap them; without it such steps are left alone.",
    ),
    click.option(
        "--insecure",
        "--plain-http",
        "insecure",
        is_flag=True,
        help="Talk plain HTTP to registries (always the case for localhost and 127.0.0.1).",
    ),
)


@click.command(short_help="Add the step-tracer wrapper and sidecar to Tekton Tasks, Pipelines and StepActions.")
@click.argument("paths", nargs=-1, metavar="[PATHS...|-]")
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    help="Write the patched documents to FILE (- for stdout) instead of rewriting the inputs in place.",
)
@click.option("--check", is_flag=True, help="Change nothing; list every step that is not instrumented (exit 1 if any).")
@click.option("--diff", is_flag=True, help="Change nothing; print a unified diff of what would change.")
@injection_options
@click.option("-v", "--verbose", is_flag=True, help="Also print informational notes.")
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
    stdout. Patching a patched file changes nothing. Steps that run their image's ENTRYPOINT are left alone and
    listed unless --resolve-entrypoints is given.

    \b
    Examples:
      step-tracer inject tasks/
      kustomize build . | step-tracer inject - > patched.yaml
      step-tracer inject --check tasks/        # CI gate: exit 1 when a step is not traced
    """
    if check and diff:
        raise click.UsageError("--check and --diff do not go together")
    if not paths:
        raise click.UsageError("give files, directories or - for stdin")
    with contextlib.ExitStack() as stack:
        out = sys.stdout
        if output not in (None, "-"):
            out = stack.enter_context(Path(str(output)).open("w", encoding="utf-8"))
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
