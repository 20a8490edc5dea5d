"""Command-line options for what the patcher adds to a pod, shared by `inject`, `bundle patch` and `webhook`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from step_tracer.inject.model import DEFAULT_OTLP_SECRET, DEFAULT_SIDECAR_IMAGE, DEFAULT_WRAPPER, InjectOptions


def injection_options(*, registry: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options `inject`, `bundle patch` and `webhook` share, handed to the command as one
    `options: InjectOptions`. With `registry` also --resolve-entrypoints and --insecure (passed on as `insecure`,
    which also decides how bundles are pulled and pushed)."""
    return functools.partial(_decorate, registry=registry)


def _decorate(command: Callable[..., None], *, registry: bool) -> Callable[..., None]:
    @functools.wraps(command)
    def run(
        *args: Any,
        wrapper: str,
        sidecar_image: str,
        otlp_secret: str,
        otlp_configmap: str,
        resolve_entrypoints: bool = False,
        insecure: bool = False,
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
        if registry:
            kwargs["insecure"] = insecure
        command(*args, options=options, **kwargs)

    decorated: Callable[..., None] = run
    for option in reversed(_POD_OPTIONS + (_REGISTRY_OPTIONS if registry else ())):
        decorated = option(decorated)
    return decorated


_POD_OPTIONS = (
    click.option(
        "--wrapper", default=DEFAULT_WRAPPER, show_default=True, help="The wrapper's path in step containers."
    ),
    click.option(
        "--sidecar-image",
        default=DEFAULT_SIDECAR_IMAGE,
        metavar="IMAGE",
        help="Image of the sidecar, best pinned by digest (REPO:TAG@sha256:...) [default: "
        "quay.io/step-tracer/step-tracer:0.1.0 pinned to a placeholder digest until it is published].",
    ),
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
)
_REGISTRY_OPTIONS = (
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
