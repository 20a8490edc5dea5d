"""`step-tracer webhook`: the command line of the admission webhook (see deploy/webhook/README.md)."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import ssl
import sys
import threading
from types import FrameType

import click

from step_tracer.inject.clioptions import injection_options
from step_tracer.inject.model import InjectOptions
from step_tracer.webhook.mutate import WebhookOptions
from step_tracer.webhook.server import WebhookServer
from step_tracer.webhook.tls import ReloadingContext

log = logging.getLogger("step_tracer.webhook")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Native sidecars (init containers with restartPolicy: Always) are on by default from Kubernetes 1.29, the same
# threshold Tekton uses for enable-kubernetes-sidecar (pkg/pod/pod.go, SidecarK8sMinorVersionCheck).
NATIVE_SIDECAR_MINOR = 29


def cluster_version(service_account_dir: str = SERVICE_ACCOUNT_DIR, timeout: float = 5.0) -> tuple[int, int] | None:
    """(major, minor) from the API server's /version, or None outside a cluster or when it cannot be read.

    /version is readable by every client (system:public-info-viewer), so the webhook needs no RBAC for it.
    """
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = int(os.environ.get("KUBERNETES_SERVICE_PORT", "443"))
    ca = os.path.join(service_account_dir, "ca.crt")
    try:
        context = ssl.create_default_context(cafile=ca if os.path.exists(ca) else None)
        headers = {"Accept": "application/json"}
        token_file = os.path.join(service_account_dir, "token")
        if os.path.exists(token_file):
            with open(token_file) as f:
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        conn = http.client.HTTPSConnection(f"[{host}]" if ":" in host else host, port, context=context, timeout=timeout)
        try:
            conn.request("GET", "/version", headers=headers)
            response = conn.getresponse()
            data = json.loads(response.read())
        finally:
            conn.close()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return _leading_int(data["major"]), _leading_int(data["minor"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("cannot read the Kubernetes version from https://%s:%d/version: %s", host, port, err)
        return None


def _leading_int(text: object) -> int:
    """Managed clusters report minors like "29+"."""
    digits = ""
    for c in str(text):
        if not c.isdigit():
            break
        digits += c
    return int(digits)


def use_native_sidecar(mode: str, version: tuple[int, int] | None) -> bool:
    """`auto`: native from Kubernetes 1.29, and when the version is unknown (the default is on, as documented)."""
    if mode != "auto":
        return mode == "always"
    if version is None:
        return True
    major, minor = version
    return major > 1 or (major == 1 and minor >= NATIVE_SIDECAR_MINOR)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cert", required=True, type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM).")
@click.option("--key", required=True, type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="0: any free port.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on (`::` for IPv6).")
@injection_options(registry=False)
@click.option(
    "--native-sidecar",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Run the sidecar as a Kubernetes native sidecar. auto: when the API server is 1.29 or newer (or unknown).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def webhook(
    cert: str,
    key: str,
    port: int,
    bind: str,
    options: InjectOptions,
    native_sidecar: str,
    log_level: str,
) -> None:
    """Serve the mutating admission webhook that traces every step of Tekton TaskRun pods.

    Answers AdmissionReview (admission.k8s.io/v1) for Pod CREATE on POST /mutate over HTTPS; GET /healthz and
    GET /metrics on the same port. Pods are never rejected: anything unexpected leaves the pod unchanged.
    The certificate and key are re-read when the files change.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    version = cluster_version() if native_sidecar == "auto" else None
    native = use_native_sidecar(native_sidecar, version)
    try:
        tls = ReloadingContext(cert, key)
    except ssl.SSLError:
        raise click.ClickException(
            f"--cert {cert} and --key {key}: not a PEM certificate and its matching private key"
        ) from None
    except OSError as err:
        raise click.ClickException(f"--cert {cert} or --key {key}: cannot read: {err.strerror}") from None
    try:
        server = WebhookServer((bind, port), tls, WebhookOptions(options, native))
    except OSError as err:
        raise click.ClickException(f"--bind {bind} --port {port}: cannot listen: {err.strerror}") from None

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = f"[{bind}]" if ":" in bind else bind
    seen = f"Kubernetes {version[0]}.{version[1]}" if version else "Kubernetes version not read"
    print(
        f"step-tracer webhook: listening on https://{where}:{server.port} "
        f"(sidecar: {'native' if native else 'container'}, {seen})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
