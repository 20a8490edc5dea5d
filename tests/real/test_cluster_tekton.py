"""Tekton's real controller on a real API server, its pods run by a process kubelet (node.py): PipelineRuns created
through the API run to completion unpatched, instrumented by our webhook through the API server's own admission,
and patched by `step-tracer inject`; their outcome, TaskRun by TaskRun and step by step, is Tekton's outcome
without step-tracer; each step's span is in a real Jaeger under Tekton's own PipelineRun span."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from step_tracer.inject.model import SIDECAR_NAME
from tests.real.cluster import REPO, Cluster, Webhook, apply, load_documents, namespace
from tests.real.conftest import TASKS
from tests.real.controller import Controller
from tests.real.e2e import OTLP_SECRET, RESULT_ATTR, inject
from tests.real.node import Node
from tests.real.otel import Collector, Jaeger
from tests.real.pipelines import SPAN_CONTEXT, PipelineRunResult, check_traces, step_outcomes

# The module's fixture starts the control plane, Tekton, the backends and runs 14 PipelineRuns: minutes, not seconds.
pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]

PIPELINE = TASKS / "pipeline-docker-build.yaml"


def otlp_secret(collector: Collector) -> dict[str, Any]:
    """deploy/collector/step-tracer-otlp.yaml, its endpoint pointed at the test's Collector."""
    (secret,) = load_documents(REPO / "deploy" / "collector" / "step-tracer-otlp.yaml")
    assert secret["metadata"]["name"] == OTLP_SECRET
    secret["stringData"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.http_endpoint
    return secret


def tekton_ns(cluster: Cluster, node: Node, name: str, collector: Collector, traced: bool) -> str:
    """A namespace for Konflux-like builds whose pods `node` runs: the OTLP Secret and tekton/rbac.yaml in both;
    opted in to the webhook (deploy/webhook's namespaceSelector) only when `traced`."""
    assert node.namespaces is not None
    node.namespaces.add(name)
    api = cluster.api_client()
    namespace(api, name, {"step-tracer.dev/inject": "enabled"} if traced else {})
    apply(api, [otlp_secret(collector), *load_documents(REPO / "tekton" / "rbac.yaml")], namespace=name)
    return name


def pipeline_run(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": {"name": name}, "spec": spec}


def one_task(task: str, **spec: Any) -> dict[str, Any]:
    """A PipelineRun of TASK alone (Konflux runs every TaskRun in a PipelineRun)."""
    workspaces = spec.pop("workspaces", [])
    pipeline = {"tasks": [{"name": task, "taskRef": {"name": task}, "workspaces": workspaces}]}
    pipeline["workspaces"] = [{"name": w["workspace"]} for w in workspaces]
    run_workspaces = [{"name": w["workspace"], "emptyDir": {}} for w in workspaces]
    return pipeline_run(task, {"pipelineSpec": pipeline, "workspaces": run_workspaces, **spec})


def run_through_api(
    cluster: Cluster, node: Node, ns: str, objects: list[dict[str, Any]], timeout: float = 600
) -> dict[str, PipelineRunResult]:
    """`objects` created through the API server in `ns`; once Tekton calls every PipelineRun among them done,
    each with its TaskRuns."""
    from kubernetes import dynamic

    api = cluster.api_client()
    apply(api, objects, namespace=ns)
    names = [o["metadata"]["name"] for o in objects if o["kind"] == "PipelineRun"]
    client = dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    runs = client.resources.get(api_version="tekton.dev/v1", kind="PipelineRun")
    taskruns = client.resources.get(api_version="tekton.dev/v1", kind="TaskRun")
    deadline = time.monotonic() + timeout
    done: dict[str, PipelineRunResult] = {}
    while len(done) < len(names):
        for name in set(names) - set(done):
            result = PipelineRunResult(ns, runs.get(name=name, namespace=ns).to_dict(), [])
            if result.succeeded != "Unknown":
                done[name] = result
        assert not node.errors, node.errors
        assert time.monotonic() < deadline, f"PipelineRuns in {ns} not done: {sorted(set(names) - set(done))}"
        time.sleep(0.5)
    for tr in taskruns.get(namespace=ns).items:
        tr = tr.to_dict()
        run = done.get(tr["metadata"]["labels"].get("tekton.dev/pipelineRun", ""))
        if run is not None:
            run.taskruns.append(tr)
    return done


def docker_build(node: Node, ns: str, claim_dir: Path) -> list[dict[str, Any]]:
    """A PipelineRun of PIPELINE's Pipeline on a PVC workspace, whose claim the node serves from `claim_dir`."""
    claim = f"workspace-{ns}"
    node.claims[claim] = claim_dir
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    spec = {
        "pipelineRef": {"name": "docker-build-like"},
        "workspaces": [{"name": "workspace", "persistentVolumeClaim": {"claimName": claim}}],
    }
    return [pvc, pipeline_run("docker-build-run", spec)]


def outcome(run: PipelineRunResult) -> dict[str, Any]:
    """What Tekton says of each TaskRun: its condition's status and reason, and its results."""
    out = {}
    for tr in run.taskruns:
        (cond,) = tr["status"]["conditions"]
        results = {r["name"]: r["value"] for r in tr["status"].get("results") or []}
        out[tr["metadata"]["labels"]["tekton.dev/pipelineTask"]] = (cond["status"], cond["reason"], results)
    return out


def pods(cluster: Cluster, ns: str, selector: str = "") -> list[dict[str, Any]]:
    """The pods of `ns` as the API server holds them (JSON)."""
    from kubernetes import client

    api = cluster.api_client()
    found = client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector).items
    return [api.sanitize_for_serialization(p) for p in found]


PATHS = ("unpatched", "webhook", "inject")
TRACED = PATHS[1:]
BEHAVIOURS = TASKS / "behaviours.yaml"
SCENARIOS = TASKS / "scenarios.yaml"
BEHAVIOUR_RUNS = (
    one_task("results-and-continue"),
    one_task("fails-then-skips"),
    one_task("times-out"),
    one_task("killed-by-signal"),
    one_task("images-and-users", workspaces=[{"name": "out", "workspace": "out"}]),
)
#: The Tasks the PipelineRuns here name (of BEHAVIOURS and SCENARIOS).
TASK_NAMES = {r["metadata"]["name"] for r in BEHAVIOUR_RUNS} | {"one-long-step"}
#: A PipelineRun Tekton times out mid-step: the TaskRun reconciler deletes the pod, which the node stops.
TIMED_OUT = one_task("one-long-step", timeouts={"pipeline": "20s"})


@pytest.fixture(scope="module")
def on_cluster(
    cluster: Cluster,
    cluster_webhook: Webhook,
    tekton_controller: Controller,
    node: Node,
    collector: Collector,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, PipelineRunResult]]:
    """The same PipelineRuns, all at once, per path: `unpatched` (a namespace the webhook leaves alone),
    `webhook` (one it instruments, through the API server's admission) and `inject` (left alone by the webhook,
    its Pipeline and Tasks patched by `step-tracer inject` before they are applied)."""
    files = [PIPELINE, BEHAVIOURS, SCENARIOS]
    runs = {}
    for path in PATHS:
        ns = tekton_ns(cluster, node, f"build-{path}", collector, traced=path == "webhook")
        patched = inject(files, tmp_path_factory.mktemp("patched") / "out") if path == "inject" else files
        definitions = [
            d for f in patched for d in load_documents(f) if d["kind"] != "Task" or d["metadata"]["name"] in TASK_NAMES
        ]
        claim = tmp_path_factory.mktemp(f"claim-{path}")
        objects = [*definitions, *docker_build(node, ns, claim), *BEHAVIOUR_RUNS, TIMED_OUT]
        runs[path] = run_through_api(cluster, node, ns, objects)
    assert tekton_controller.alive()
    return runs


Runs = dict[str, dict[str, PipelineRunResult]]


@pytest.mark.parametrize("path", TRACED)
def test_a_pipelinerun_through_the_api_has_tektons_outcome_with_and_without_step_tracer(
    on_cluster: Runs, path: str
) -> None:
    plain, traced = on_cluster["unpatched"]["docker-build-run"], on_cluster[path]["docker-build-run"]
    assert plain.succeeded == traced.succeeded == "True"
    assert step_outcomes(traced) == step_outcomes(plain)
    assert step_outcomes(traced)[("build-container", "push-sbom")] == (4, "Continued")
    assert outcome(traced) == outcome(plain)
    assert set(outcome(plain)) == {"init", "clone-repository", "build-container", "sast-scan", "show-summary"}
    (plain_cond,) = plain.pipelinerun["status"]["conditions"]
    (traced_cond,) = traced.pipelinerun["status"]["conditions"]
    assert (traced_cond["reason"], traced_cond["message"]) == (plain_cond["reason"], plain_cond["message"])


def test_the_webhook_instruments_through_the_api_server_only_the_namespace_that_opted_in(
    cluster: Cluster, on_cluster: Runs
) -> None:
    def sidecars(path: str) -> set[tuple[str, ...]]:
        init = [p["spec"].get("initContainers") or [] for p in pods(cluster, f"build-{path}")]
        return {tuple(c["name"] for c in containers if c["name"].endswith(SIDECAR_NAME)) for containers in init}

    assert sidecars("unpatched") == sidecars("inject") == {()}
    assert len(sidecars("webhook")) == 1 and sidecars("webhook") != {()}


@pytest.mark.parametrize("path", TRACED)
@pytest.mark.parametrize("run", [r["metadata"]["name"] for r in BEHAVIOUR_RUNS])
def test_behaviours_through_the_api_have_tektons_outcome_and_one_span_per_step(
    on_cluster: Runs, jaeger: Jaeger, run: str, path: str
) -> None:
    """Results and onError, a StepAction and a classic sidecar (stopped by Tekton's controller swapping its
    image for nop, through the API), a failure that skips the rest, a step timeout, signal deaths, a shell-less
    image, Python, UID 65532 on a workspace."""
    plain, traced = on_cluster["unpatched"][run], on_cluster[path][run]
    assert (traced.succeeded, step_outcomes(traced), outcome(traced)) == (
        plain.succeeded,
        step_outcomes(plain),
        outcome(plain),
    )
    check_traces(traced, jaeger)


@pytest.mark.parametrize("path", PATHS)
def test_tektons_controller_stops_a_classic_sidecar_through_the_api(
    cluster: Cluster, on_cluster: Runs, path: str
) -> None:
    """Tekton's StopSidecars, for real: once the steps end, the controller updates the pod, the sidecar's image
    becomes nop; the node kills the container and starts it again from nop, and the pod ends. The sidecar keeps
    its `command` (sleep), which the nop image does not have: the new container fails to start, and the pod ends
    Failed, as on a real node. Tekton has recorded the TaskRun from the steps by then."""
    deadline = time.monotonic() + 60
    while True:
        (pod,) = pods(cluster, f"build-{path}", "tekton.dev/pipelineRun=results-and-continue")
        if pod["status"]["phase"] in ("Succeeded", "Failed") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (sidecar,) = [c for c in pod["spec"]["containers"] if c["name"] == "sidecar-sleeper"]
    assert sidecar["image"] == "tekton/nop"
    (status,) = [c for c in pod["status"]["containerStatuses"] if c["name"] == "sidecar-sleeper"]
    assert (status["image"], status["restartCount"]) == ("tekton/nop", 1)
    assert (status["state"]["terminated"]["reason"], status["state"]["terminated"]["exitCode"]) == ("StartError", 128)
    assert pod["status"]["phase"] == "Failed"


@pytest.mark.parametrize("path", TRACED)
def test_a_pipelinerun_tekton_times_out_mid_step(on_cluster: Runs, jaeger: Jaeger, path: str) -> None:
    """Tekton's controller cancels the TaskRun when the PipelineRun's timeout passes and deletes its pod; the node
    stops it (SIGTERM, then SIGKILL after the grace period). The verdict is Tekton's own either way, and the step
    cut short still has its one span, ended by the pod's deletion, under Tekton's createTaskRun span."""
    name = TIMED_OUT["metadata"]["name"]
    plain, traced = on_cluster["unpatched"][name], on_cluster[path][name]
    assert outcome(traced) == outcome(plain)
    # Tekton's PipelineRun reconciler cancels the TaskRuns of a PipelineRun past its timeout.
    assert outcome(traced)[name][:2] == ("False", "TaskRunCancelled")
    assert step_outcomes(traced) == step_outcomes(plain)
    (tr,) = traced.taskruns
    _, trace, parent, _ = json.loads(tr["metadata"]["annotations"][SPAN_CONTEXT])["traceparent"].split("-")
    deadline = time.monotonic() + 60
    while not (spans := [s for s in jaeger.trace(trace) if "tekton.step.name" in s.attributes]):
        assert time.monotonic() < deadline, "no step span of the timed-out TaskRun in Jaeger"
        time.sleep(0.5)
    (span,) = spans
    assert (span.name, span.parent_span_id) == ("long", parent)
    assert span.attributes[RESULT_ATTR] == "cancellation"


@pytest.mark.parametrize("path", TRACED)
def test_every_step_span_is_in_jaeger_under_tektons_own_pipelinerun_span(
    on_cluster: Runs, jaeger: Jaeger, path: str
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
    traced = on_cluster[path]["docker-build-run"]
    traces = check_traces(traced, jaeger, single=False)
    stored = traced.pipelinerun["status"]["spanContext"]["traceparent"].split("-")[1]
    assert stored in traces
