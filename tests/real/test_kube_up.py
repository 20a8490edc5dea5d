"""hack/kube-up --tekton and hack/kube-node as a person runs them: a control plane with Tekton's controller in the
background, a node in the foreground, a TaskRun created with the admin kubeconfig; the step's span reaches the
OTLP receiver the person named, in the trace Tekton started for the TaskRun (read by the sidecar through the API
server with tekton/rbac.yaml's permission); kube-down leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.otlp_receiver import HttpReceiver
from tests.real.cluster import PIDS, REPO, Cluster, apply, load_documents, namespace
from tests.real.e2e import OTLP_SECRET

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]

TASKRUN = {
    "apiVersion": "tekton.dev/v1",
    "kind": "TaskRun",
    "metadata": {"name": "hello"},
    "spec": {"taskSpec": {"steps": [{"name": "hello", "image": "busybox", "script": "echo hello from a person"}]}},
}


def script(name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "hack" / name), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def taskrun_done(cluster: Cluster, ns: str, name: str, timeout: float = 180) -> dict[str, Any]:
    from kubernetes import client

    objects = client.CustomObjectsApi(cluster.api_client())
    deadline = time.monotonic() + timeout
    while True:
        tr: dict[str, Any] = objects.get_namespaced_custom_object(  # type: ignore[assignment]
            "tekton.dev", "v1", ns, "taskruns", name
        )
        conditions = tr.get("status", {}).get("conditions") or [{}]
        if conditions[0].get("status") in ("True", "False"):
            return tr
        assert time.monotonic() < deadline, f"TaskRun {ns}/{name} not done: {conditions}"
        time.sleep(0.5)


def test_kube_up_with_tekton_and_a_node_runs_a_traced_taskrun(tmp_path: Path) -> None:
    state = tmp_path / "kube"
    receiver = HttpReceiver().start()
    node: subprocess.Popen[str] | None = None
    try:
        up = script("kube-up", "--tekton", f"--tracing-endpoint=http://127.0.0.1:{receiver.port}/v1/traces", str(state))
        assert up.returncode == 0, up.stderr
        assert "Tekton         controller" in up.stdout and "hack/kube-node" in up.stdout
        node = subprocess.Popen(
            [sys.executable, str(REPO / "hack" / "kube-node"), str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        cluster = Cluster.load(state)
        api = cluster.api_client()
        ns = namespace(api, "demo", {"step-tracer.dev/inject": "enabled"})
        (secret,) = load_documents(REPO / "deploy" / "collector" / "step-tracer-otlp.yaml")
        secret["stringData"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}"
        apply(api, [secret, *load_documents(REPO / "tekton" / "rbac.yaml"), TASKRUN], namespace=ns)
        assert secret["metadata"]["name"] == OTLP_SECRET

        tr = taskrun_done(cluster, ns, "hello")
        assert tr["status"]["conditions"][0]["reason"] == "Succeeded", tr["status"]
        deadline = time.monotonic() + 60
        while not (steps := [s for s in receiver.spans if s.attributes.get("tekton.step.name") == "hello"]):
            assert time.monotonic() < deadline, "no step span at the person's receiver"
            time.sleep(0.5)
        (step,) = steps
        # Under the span Tekton started for the TaskRun (status.spanContext, as the sidecar read it at its start;
        # Tekton may replace it later, see test_cluster_tekton.py, so the span is found by its id, not the status).
        tekton = {
            s.span_id: s
            for s in receiver.spans
            if s.resource.get("service.name") == "taskrun-reconciler" and s.attributes.get("taskrun") == "hello"
        }
        assert step.parent_span_id in tekton, "under Tekton's own TaskRun span"
        assert (step.trace_id, tekton[step.parent_span_id].name) == (
            tekton[step.parent_span_id].trace_id,
            "TaskRun:Reconciler",
        )

        node.send_signal(signal.SIGINT)
        out, _ = node.communicate(timeout=60)
        assert node.returncode == 0, out
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        down = script("kube-down", str(state), timeout=120)
        receiver.stop()
    assert down.returncode == 0, down.stderr
    assert not (state / PIDS).exists()
    leftovers = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True, check=False).stdout.split()
    assert [pid for pid in leftovers if int(pid) != os.getpid()] == [], "processes of the cluster still running"
