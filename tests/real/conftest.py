"""Fixtures that start real components, in one place: Tekton's binaries, the local images, the OTLP receiver."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.cluster import Cluster, Webhook, cluster_bin_dir, install_tekton_crds, register_webhook, start_webhook
from tests.real.cluster import start as start_cluster
from tests.real.cluster import stop as stop_cluster
from tests.real.controller import Controller
from tests.real.controller import start as start_controller
from tests.real.e2e import Rig
from tests.real.node import Node
from tests.real.otel import Collector, Jaeger, collector_config


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount namespaces, chroot)"
    if shutil.which("go") is None:
        return _go("Tekton's code (hack/build-tekton)")
    for tool in ("nsenter", "dpkg-query"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _unavailable(tests: str, reason: str | None) -> None:
    """Skip where a real component cannot run on this machine; in CI that is a failure, never a skip."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the {tests} tests cannot run in CI: {reason}")
    pytest.skip(reason)


def _go(what: str) -> str | None:
    return None if shutil.which("go") else f"needs Go to build {what}"


@pytest.fixture(scope="session")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Tekton's binaries built, the local images made and an OTLP receiver started, once per session."""
    _unavailable("real-Tekton", _missing())
    with Rig(tmp_path_factory.mktemp("real")) as rig:
        yield rig


TASKS = Path(__file__).with_name("tasks")


# --- a real control plane (tests/real/cluster.py): rootless, needs Go to build hack/cluster ---------------------------


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd + kube-apiserver on 127.0.0.1 with Tekton's CRDs installed, once per session."""
    _unavailable("control-plane", _go("kube-apiserver and etcd (hack/build-cluster)"))
    workdir = tmp_path_factory.mktemp("cluster")
    try:
        running = start_cluster(workdir, cluster_bin_dir())
        install_tekton_crds(running)
        yield running
    finally:
        stop_cluster(workdir)


@pytest.fixture(scope="session")
def cluster_webhook(cluster: Cluster) -> Webhook:
    """`step-tracer webhook` on 127.0.0.1, registered through deploy/webhook (stopped with the cluster)."""
    webhook = start_webhook(cluster.workdir)
    register_webhook(cluster, webhook)
    return webhook


# --- the real tracing backends (tests/real/otel.py): one Jaeger and one Collector per session ----------------------


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """Jaeger v2 (hack/build-otel) with in-memory storage on 127.0.0.1; its query API is the tests' eyes."""
    _unavailable("real-backend", _go("the Collector and Jaeger (hack/build-otel)"))
    server = Jaeger(tmp_path_factory.mktemp("jaeger"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[Collector]:
    """The Collector (hack/build-otel) with the tests' configuration (otel.collector_config): OTLP gRPC + HTTP in,
    to Jaeger and a file; its otlpjsonfile receiver reads `*.jsonl` under `spans_dir` into Jaeger."""
    work = tmp_path_factory.mktemp("otelcol")
    spans_dir = work / "step-tracer-files"
    spans_dir.mkdir()
    file_out = work / "collector-file-exporter.jsonl"
    spool_glob = str(spans_dir / "*.jsonl")
    config, grpc_port, http_port = collector_config(work, jaeger, spool_glob=spool_glob, file_out=file_out)
    server = Collector(work, config, {}, grpc_port, http_port, spans_dir=spans_dir, file_out=file_out)
    yield server
    server.stop()


# --- Tekton's controller on the control plane, and a node that runs its pods ---------------------------------------


@pytest.fixture(scope="session")
def tekton_controller(cluster: Cluster, collector: Collector) -> Controller:
    """Tekton's real controller (cmd/controller) on the cluster, tracing to the Collector; stopped with it."""
    return start_controller(cluster, collector.http_endpoint + "/v1/traces")


@pytest.fixture(scope="session")
def node(cluster: Cluster, rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A node of the cluster (node.py) that runs the pods of the namespaces a test adds to `namespaces` with the
    rig's images; other tests' pods on the shared cluster are stored, never run."""
    workdir = tmp_path_factory.mktemp("node")
    with Node(cluster, rig.images, workdir, default_image=rig.default, grace_seconds=5, namespaces=set()) as n:
        yield n
