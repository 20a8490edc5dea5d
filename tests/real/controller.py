"""Tekton's real controller (`cmd/controller`, built by hack/build-tekton) on the real control plane (cluster.py).

Installed as Tekton's release installs it, from the pinned module's own `config/` files: the namespace, service
accounts, roles and bindings, and the ConfigMaps; Tekton's `config-tracing` is replaced by ours
(deploy/collector/config-tracing.yaml) with its endpoint pointed at the test's OTLP receiver, and the
feature flag `coschedule` is `disabled` (see config_objects). The controller runs
as a process with a token of its own service account (`tekton-pipelines-controller`, so Tekton's RBAC is what
allows or refuses it), with the Deployment's arguments and environment.

Not applied: the Deployments and Services (no controller-manager or kube-proxy runs here; the process stands in
for the Deployment's pod) and Tekton's own admission webhooks (500-webhooks.yaml: defaulting and validation of
Tekton's objects, which need Tekton's webhook reachable as a Service). The tests create only v1 objects, which
the CRDs store as v1, so no conversion webhook is called; the reconcilers apply Tekton's defaults themselves.

Network: the controller's probe (:8080), metrics (:9090) and profiling (:8008) servers listen on every interface.
It runs in a network namespace of its own, where those ports are private, and reaches the API server and the OTLP
receiver on the machine's 127.0.0.1 through socat over Unix sockets, at the same ports (so the kubeconfig and
config-tracing name the real addresses).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.real.cluster import (
    PIDS,
    REPO,
    Cluster,
    apply,
    kubeconfig_text,
    load_documents,
    module_dir,
    spawn,
    tail,
    write_file,
)
from tests.real.gobuild import built

NAMESPACE = "tekton-pipelines"
SERVICE_ACCOUNT = "tekton-pipelines-controller"
#: Tekton's config/ files applied here (see the module docstring for what is left out, and why).
CONFIG_FILES = (
    "100-namespace/100-namespace.yaml",
    "200-serviceaccount.yaml",
    "200-clusterrole.yaml",
    "200-role.yaml",
    "201-clusterrolebinding.yaml",
    "201-rolebinding.yaml",
    "clusterrole-aggregate-edit.yaml",
    "clusterrole-aggregate-view.yaml",
    "config-defaults.yaml",
    "config-events.yaml",
    "config-feature-flags.yaml",
    "config-info.yaml",
    "config-leader-election-controller.yaml",
    "config-logging.yaml",
    "config-observability.yaml",
    "config-registry-cert.yaml",
    "config-spire.yaml",
    "config-wait-exponential-backoff.yaml",
)
CONFIG_TRACING = REPO / "deploy" / "collector" / "config-tracing.yaml"
#: The images the controller names in the pods it makes; tests/real/images.py maps them to local root filesystems.
IMAGES = {
    "-entrypoint-image": "tekton/entrypoint",
    "-nop-image": "tekton/nop",
    "-sidecarlogresults-image": "tekton/sidecarlogresults",
    "-workingdirinit-image": "tekton/workingdirinit",
    "-shell-image": "tekton/shell",
    "-shell-image-win": "tekton/shell-win",
}
#: config/controller.yaml's environment (SYSTEM_NAMESPACE from its fieldRef).
ENV = {
    "SYSTEM_NAMESPACE": NAMESPACE,
    "KUBERNETES_MIN_VERSION": "v1.28.0",
    "CONFIG_DEFAULTS_NAME": "config-defaults",
    "CONFIG_LOGGING_NAME": "config-logging",
    "CONFIG_OBSERVABILITY_NAME": "config-observability",
    "CONFIG_FEATURE_FLAGS_NAME": "feature-flags",
    "CONFIG_LEADERELECTION_NAME": "config-leader-election-controller",
    "CONFIG_SPIRE": "config-spire",
    "METRICS_DOMAIN": "tekton.dev/pipeline",
    # Tekton's span batches leave every 5 s by default; the tests read them back sooner.
    "OTEL_BSP_SCHEDULE_DELAY": "200",
}


def config_objects(tracing_endpoint: str) -> list[dict[str, Any]]:
    """Tekton's config/ objects (CONFIG_FILES) and our config-tracing with its endpoint set."""
    config = module_dir("tekton", "github.com/tektoncd/pipeline") / "config"
    objects = [doc for name in CONFIG_FILES for doc in load_documents(config / name)]
    for obj in objects:
        if obj["metadata"]["name"] == "feature-flags":
            # The affinity assistant is a StatefulSet; no controller-manager runs here to make its pod, and the
            # one-node scheduler (node.py) would bind the TaskRuns' pods regardless of their affinity to it.
            obj["data"]["coschedule"] = "disabled"
    for tracing in load_documents(CONFIG_TRACING):
        tracing["data"]["endpoint"] = tracing_endpoint
        objects.append(tracing)
    return objects


@dataclass
class Controller:
    """The running controller: its process and log."""

    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None


def install(cluster: Cluster, tracing_endpoint: str) -> None:
    apply(cluster.api_client(), config_objects(tracing_endpoint))


def _forward(workdir: Path, pids: Path, name: str, port: int) -> list[str]:
    """Start the outer half of a forward (a Unix socket in `workdir` to 127.0.0.1:PORT on this machine, its pid
    in `pids`); returns the inner half's command (127.0.0.1:PORT in the namespace to that socket)."""
    sock = workdir / f"{name}.sock"
    sock.unlink(missing_ok=True)
    spawn(
        ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:127.0.0.1:{port}"],
        workdir / f"forward-{name}.log",
        pids,
    )
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"socat did not make {sock}: {tail(workdir / f'forward-{name}.log')}")
        time.sleep(0.02)
    # The inner socat dies with the controller (setpriv --pdeathsig): the controller is its parent after exec.
    inner = ["setpriv", "--pdeathsig", "KILL", "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"]
    return [*inner, f"UNIX-CONNECT:{sock}"]


def in_own_network(workdir: Path, pids: Path, ports: dict[str, int], argv: Sequence[str]) -> list[str]:
    """`argv` run in a new network namespace (loopback only) where 127.0.0.1:PORT for each of `ports` reaches
    the same port on this machine."""
    inner = []
    for name, port in ports.items():
        command = _forward(workdir, pids, name, port)
        inner.append(" ".join(_quote(a) for a in command) + " &")
    script = " ".join(["ip link set lo up &&", *inner, 'exec "$@"'])
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--net", "sh", "-c", script, "sh", *argv]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def start(cluster: Cluster, tracing_endpoint: str, *, threads: int = 2) -> Controller:
    """Install Tekton's configuration and start its controller; returns once it holds its leases and runs."""
    from tests.real.cluster import service_account_token

    install(cluster, tracing_endpoint)
    workdir = cluster.workdir / "tekton-controller"
    workdir.mkdir(exist_ok=True)
    token = service_account_token(cluster, NAMESPACE, SERVICE_ACCOUNT, expiration=24 * 3600)
    # A bearer token, as the in-cluster configuration the Deployment's pod would use.
    kubeconfig = write_file(
        workdir / "kubeconfig", kubeconfig_text(cluster.url, cluster.ca_file, {"token": token}).encode()
    )
    binary = built("tekton") / "controller"
    args = [str(binary), f"-kubeconfig={kubeconfig}", f"-threads-per-controller={threads}"]
    for flag, image in IMAGES.items():
        args += [flag, image]
    ports = {"api": int(urlsplit(cluster.url).port or 443)}
    otlp = urlsplit(tracing_endpoint)
    if otlp.hostname in ("127.0.0.1", "localhost") and otlp.port:
        ports["otlp"] = otlp.port
    argv = in_own_network(workdir, cluster.workdir / PIDS, ports, args)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "OTEL_", "STEP_TRACER_"))}
    env.update(ENV)
    log = workdir / "controller.log"
    process = spawn(argv, log, cluster.workdir / PIDS, env)
    controller = Controller(process, log)
    _wait_leader(controller)
    return controller


def _wait_leader(controller: Controller, timeout: float = 120.0) -> None:
    """Knative's controllers log 'Starting controller and N workers' once they lead their buckets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = controller.log.read_text(errors="replace")
        if text.count("Starting controller and") >= 2:  # the TaskRun and PipelineRun reconcilers
            return
        if not controller.alive():
            break
        time.sleep(0.2)
    raise RuntimeError(f"Tekton's controller did not start: {tail(controller.log)}")
