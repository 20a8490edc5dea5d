"""Tekton's real controller on a real API server, its pods run by a process kubelet (node.py) and instrumented by
our webhook through the API server's own admission: a PipelineRun created through the API runs to completion;
its outcome, TaskRun by TaskRun and step by step, is Tekton's outcome without step-tracer; one trace in a real
Jaeger from Tekton's own PipelineRun span down to every step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from step_tracer.inject.model import SIDECAR_NAME
from tests.real.cluster import REPO, Cluster, Webhook, apply, load_documents, namespace
from tests.real.conftest import TASKS
from tests.real.controller import Controller
from tests.real.e2e import OTLP_SECRET
from tests.real.node import Node
from tests.real.otel import Collector, Jaeger
from tests.real.pipelines import PipelineRunResult, check_traces, step_outcomes

pytestmark = pytest.mark.root

PIPELINE = TASKS / "pipeline-docker-build.yaml"


def otlp_secret(collector: Collector) -> dict[str, Any]:
    """deploy/collector/step-tracer-otlp.yaml, its endpoint pointed at the test's Collector."""
    (secret,) = load_documents(REPO / "deploy" / "collector" / "step-tracer-otlp.yaml")
    assert secret["metadata"]["name"] == OTLP_SECRET
    secret["stringData"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.http_endpoint
    return secret


def tekton_ns(cluster: Cluster, name: str, collector: Collector, traced: bool) -> str:
    """A namespace for Konflux-like builds: the OTLP Secret and tekton/rbac.yaml in both; opted in to the webhook
    (deploy/webhook's namespaceSelector) only when `traced`."""
    api = cluster.api_client()
    namespace(api, name, {"step-tracer.dev/inject": "enabled"} if traced else {})
    apply(api, [otlp_secret(collector), *load_documents(REPO / "tekton" / "rbac.yaml")], namespace=name)
    return name


def run_through_api(cluster: Cluster, node: Node, ns: str, claim_dir: Path, timeout: float = 600) -> PipelineRunResult:
    """PIPELINE's objects and a PipelineRun of it created through the API server (a PVC workspace, whose claim
    the node serves from `claim_dir`); waits for Tekton to call the PipelineRun done."""
    from kubernetes import dynamic

    api = cluster.api_client()
    claim = f"workspace-{ns}"
    node.claims[claim] = claim_dir
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    pipeline_run = {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": "docker-build-run"},
        "spec": {
            "pipelineRef": {"name": "docker-build-like"},
            "workspaces": [{"name": "workspace", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }
    apply(api, [*load_documents(PIPELINE), pvc, pipeline_run], namespace=ns)
    client = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    runs = client.resources.get(api_version="tekton.dev/v1", kind="PipelineRun")
    taskruns = client.resources.get(api_version="tekton.dev/v1", kind="TaskRun")
    deadline = time.monotonic() + timeout
    while True:
        pr = api.sanitize_for_serialization(runs.get(name="docker-build-run", namespace=ns).to_dict())
        result = PipelineRunResult(ns, pr, [])
        if result.succeeded != "Unknown":
            break
        assert not node.errors, node.errors
        assert time.monotonic() < deadline, f"PipelineRun in {ns} not done: {pr.get('status', {}).get('conditions')}"
        time.sleep(0.5)
    result.taskruns = [tr.to_dict() for tr in taskruns.get(namespace=ns).items]
    return result


def pods(cluster: Cluster, ns: str) -> list[Any]:
    from kubernetes import client

    return list(client.CoreV1Api(cluster.api_client()).list_namespaced_pod(ns).items)


@pytest.fixture(scope="module")
def on_cluster(
    cluster: Cluster,
    cluster_webhook: Webhook,
    tekton_controller: Controller,
    node: Node,
    collector: Collector,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, PipelineRunResult]:
    """The same PipelineRun in a namespace the webhook leaves alone and in one it instruments."""
    runs = {}
    for name, traced in (("plain", False), ("traced", True)):
        ns = tekton_ns(cluster, f"build-{name}", collector, traced)
        runs[name] = run_through_api(cluster, node, ns, tmp_path_factory.mktemp(f"claim-{name}"))
    assert tekton_controller.alive()
    return runs


def test_a_pipelinerun_through_the_api_has_tektons_outcome_with_and_without_step_tracer(
    cluster: Cluster, on_cluster: dict[str, PipelineRunResult]
) -> None:
    plain, traced = on_cluster["plain"], on_cluster["traced"]
    assert plain.succeeded == traced.succeeded == "True"
    assert step_outcomes(traced) == step_outcomes(plain)
    assert step_outcomes(traced)[("build-container", "push-sbom")] == (4, "Continued")

    def outcome(run: PipelineRunResult) -> dict[str, Any]:
        out = {}
        for tr in run.taskruns:
            (cond,) = tr["status"]["conditions"]
            results = {r["name"]: r["value"] for r in tr["status"].get("results") or []}
            out[tr["metadata"]["labels"]["tekton.dev/pipelineTask"]] = (cond["status"], cond["reason"], results)
        return out

    assert outcome(traced) == outcome(plain)
    assert set(outcome(plain)) == {"init", "clone-repository", "build-container", "sast-scan", "show-summary"}
    (plain_cond,) = plain.pipelinerun["status"]["conditions"]
    (traced_cond,) = traced.pipelinerun["status"]["conditions"]
    assert (traced_cond["reason"], traced_cond["message"]) == (plain_cond["reason"], plain_cond["message"])

    # Our webhook instrumented the traced namespace's pods, through the API server, and only those.
    def sidecars(ns: str) -> set[tuple[str, ...]]:
        names = [
            [c.name for c in p.spec.init_containers or [] if c.name.endswith(SIDECAR_NAME)] for p in pods(cluster, ns)
        ]
        return {tuple(n) for n in names}

    assert sidecars(plain.path) == {()}
    assert len(sidecars(traced.path)) == 1 and sidecars(traced.path) != {()}


def test_every_step_span_is_in_jaeger_under_tektons_own_pipelinerun_span(
    on_cluster: dict[str, PipelineRunResult], jaeger: Jaeger
) -> None:
    """Each TaskRun's step spans sit in the trace of the span context Tekton gave that TaskRun, under Tekton's
    createTaskRun span, under Tekton's PipelineRun span for this PipelineRun.

    Usually that is one trace. Tekton v1.15.1 can split a PipelineRun in two: its PipelineRun reconciler starts a
    root span whenever the PipelineRun it reads has no status.spanContext yet, and a reconcile that runs on a stale
    informer cache (the TaskRun it just created requeues the PipelineRun before the status write is seen) starts a
    second one; its status write then hits a conflict, and the generated reconciler's retry writes the whole
    computed status over the stored one. The TaskRuns created before keep the first trace, which stays whole (its
    own root and createTaskRun spans). A PipelineRun created with a `tekton.dev/pipelinerunSpanContext` annotation
    has no such race: every reconcile takes its context from there."""
    traced = on_cluster["traced"]
    traces = check_traces(traced, jaeger, single=False)
    stored = traced.pipelinerun["status"]["spanContext"]["traceparent"].split("-")[1]
    assert stored in traces
