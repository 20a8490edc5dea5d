"""`step-tracer sidecar`: the click command. The work lives in `service` (imported only when it runs) and the
readiness probe in `ready`."""

from __future__ import annotations

import os
import sys

import click

from step_tracer.sidecar import ready as ready_module
from step_tracer.sidecar.install import DEFAULT_SOURCE
from step_tracer.tekton import paths


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--spool",
    "spool_dir",
    metavar="DIR",
    default=lambda: paths.spool_dir(os.environ),
    show_default="$STEP_TRACER_SPOOL or /step-tracer/spool",
    help="The spool directory shared with the steps.",
)
@click.option("--ready", "check_ready", is_flag=True, help="Readiness probe: exit 0 iff the sidecar is ready.")
@click.option("--install-wrapper", "install_dir", metavar="DIR", help="Install the wrapper into DIR at start.")
@click.option(
    "--wrapper-source",
    metavar="DIR",
    envvar="STEP_TRACER_WRAPPER_SOURCE",
    default=DEFAULT_SOURCE,
    show_default=True,
    help="The wrapper tree to install (its entry point is DIR/step-tracer). Env: STEP_TRACER_WRAPPER_SOURCE.",
)
@click.option("--kube-api", metavar="URL", envvar="STEP_TRACER_KUBE_API", default="", hidden=True)
def sidecar(spool_dir: str, check_ready: bool, install_dir: str | None, wrapper_source: str, kube_api: str) -> None:
    """Ship the spans the steps of a Tekton pod spool, with the OpenTelemetry SDK.

    At start: makes the spool writable for every UID, installs the wrapper (--install-wrapper), reads a
    standalone TaskRun's span context from the Kubernetes API (needs `get` on taskruns.tekton.dev), then writes
    SPOOL/.ready. Then exports each finished step span (OTEL_EXPORTER_OTLP_* settings; protocol grpc or
    http/protobuf) and deletes it once the collector accepted it. On SIGTERM it ships what is left, reporting
    steps that never finished, within STEP_TRACER_DRAIN_DEADLINE seconds (default 10), writes what is still
    unshipped to stdout as OTLP JSON lines (see `step-tracer replay`), and exits 0.

    Records are untrusted (README, "Security model"): identity comes from the sidecar, and
    STEP_TRACER_MAX_RECORDS (10000), STEP_TRACER_RECORD_RATE (200/s) and STEP_TRACER_MAX_SPANS_PER_STEP (100)
    bound what one pod sends.

    Other environment: K8S_NODE_NAME (resource k8s.node.name), STEP_TRACER_STEPS (JSON list of the Task's steps:
    name, image, onError), STEP_TRACER_PODINFO (pod info directory), STEP_TRACER_DEBUG=1 (more detail).
    """
    if check_ready:
        sys.exit(ready_module.ready_main(["--spool", spool_dir]))
    from step_tracer.sidecar import service

    sys.exit(service.main(spool_dir, install_dir, wrapper_source, kube_api))
