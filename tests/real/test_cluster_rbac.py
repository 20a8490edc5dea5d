"""The sidecar's TaskRun read (step_tracer.sidecar.kube) against a real kube-apiserver, with tekton/rbac.yaml
applied as shipped and a real ServiceAccount token (TokenRequest API), through the in-cluster configuration the
sidecar uses in a pod: the token, CA and namespace files at /var/run/secrets/kubernetes.io/serviceaccount (a tmpfs
over /run in a mount namespace of the lookup's own) and KUBERNETES_SERVICE_HOST/PORT.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from step_tracer.sidecar.taskrun import TaskRunSpan
from step_tracer.tekton import podinfo
from step_tracer.tekton.paths import STATUS_CONTEXT_FILE
from tests.real.cluster import (
    REPO,
    Cluster,
    apply,
    as_in_a_pod,
    load_documents,
    namespace,
    require_unshare,
    service_account_token,
)

# A trace of this run's own: when Tekton's real controller runs on the same cluster it reconciles these TaskRuns
# and exports spans under their span context to the session's Jaeger, which other tests read by trace id.
TRACEPARENT = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def taskrun(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    """A TaskRun stored through Tekton's CRD, its status.spanContext written through the status subresource as
    Tekton's controller writes it. When Tekton's real controller runs on the same cluster (tekton_controller, in
    test_cluster_tekton.py), it owns the status: its first reconcile may write its own span context over ours.
    The TaskRun is returned once its span context holds still, whoever wrote it."""
    from kubernetes import client

    objects = client.CustomObjectsApi(cluster.api_client())
    body = {
        "apiVersion": "tekton.dev/v1",
        "kind": "TaskRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"taskSpec": {"steps": [{"name": "build", "image": "busybox", "script": "true"}]}},
    }
    objects.create_namespaced_custom_object("tekton.dev", "v1", ns, "taskruns", body)
    status = {"status": {"spanContext": {"traceparent": TRACEPARENT}, "podName": f"{name}-pod"}}
    stored: dict[str, Any] = objects.patch_namespaced_custom_object_status(  # type: ignore[assignment]
        "tekton.dev", "v1", ns, "taskruns", name, status
    )
    assert "traceparent" in stored["status"]["spanContext"]  # kept by the CRD's schema
    deadline = time.monotonic() + 10
    while True:
        time.sleep(0.5)
        again: dict[str, Any] = objects.get_namespaced_custom_object(  # type: ignore[assignment]
            "tekton.dev", "v1", ns, "taskruns", name
        )
        context = again.get("status", {}).get("spanContext")
        if context and context == stored["status"].get("spanContext"):
            return again
        assert time.monotonic() < deadline, f"the span context of {ns}/{name} never held still"
        stored = again


def span_context(stored: dict[str, Any]) -> dict[str, str]:
    return dict(stored["status"]["spanContext"])


def token(cluster: Cluster, ns: str, service_account: str) -> str:
    if service_account != "default":
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": service_account, "namespace": ns}}
        apply(cluster.api_client(), [account])
    return service_account_token(cluster, ns, service_account)


def lookup(cluster: Cluster, tmp: Path, ns: str, name: str, bearer: str) -> tuple[int, str, Path]:
    """Run the sidecar's lookup as in a pod of `ns` with `bearer` mounted; (exit code, stderr, output file)."""
    output = tmp / STATUS_CONTEXT_FILE
    argv = [sys.executable, "-m", "step_tracer.sidecar.kube", "--output", str(output), "--namespace", ns]
    argv, env = as_in_a_pod(cluster, tmp, ns, bearer, [*argv, "--name", name])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    return proc.returncode, proc.stderr, output


@pytest.fixture(scope="module")
def bound_ns(cluster: Cluster) -> str:
    """A namespace with tekton/rbac.yaml applied as shipped (Role + RoleBinding to ServiceAccount `default`)."""
    ns = namespace(cluster.api_client(), "builds")
    apply(cluster.api_client(), load_documents(REPO / "tekton" / "rbac.yaml"), namespace=ns)
    return ns


@pytest.fixture(scope="module")
def unbound_ns(cluster: Cluster) -> str:
    return namespace(cluster.api_client(), "no-binding")


@pytest.fixture(autouse=True)
def _unshare_works() -> None:
    require_unshare()


def test_bound_service_account_reads_the_span_context(cluster: Cluster, bound_ns: str, tmp_path: Path) -> None:
    stored = taskrun(cluster, bound_ns, "standalone")
    code, stderr, output = lookup(cluster, tmp_path, bound_ns, "standalone", token(cluster, bound_ns, "default"))
    assert (code, stderr) == (0, "")
    assert json.loads(output.read_text()) == span_context(stored)


def forbidden(code: int, stderr: str, output: Path) -> None:
    """403 handled: exit 3, one line on stderr naming the fix, no context file (so ids derived from the UID)."""
    assert code == 3, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("step-tracer sidecar: not allowed") and "403" in lines[0], stderr
    assert "tekton/rbac.yaml" in lines[0]
    assert not output.exists()


def test_a_service_account_the_binding_does_not_name_is_refused(
    cluster: Cluster, bound_ns: str, tmp_path: Path
) -> None:
    stored = taskrun(cluster, bound_ns, "other-sa")
    code, stderr, output = lookup(cluster, tmp_path, bound_ns, "other-sa", token(cluster, bound_ns, "builder"))
    forbidden(code, stderr, output)
    # What the sidecar makes of it: with no context file in the spool, the pod's trace is the one derived from
    # the TaskRun's UID, and the TaskRun span is the sidecar's own.
    uid = stored["metadata"]["uid"]
    info = podinfo.PodInfo(labels={"tekton.dev/taskRun": "other-sa", "tekton.dev/taskRunUID": uid}, namespace=bound_ns)
    span = TaskRunSpan(info, str(output.parent), 1)
    assert span.pod_trace() == podinfo.derived_context(uid).trace_id == uid.replace("-", "")
    assert not span.tekton_owns


def test_a_namespace_without_the_binding_is_refused(cluster: Cluster, unbound_ns: str, tmp_path: Path) -> None:
    taskrun(cluster, unbound_ns, "standalone")
    forbidden(*lookup(cluster, tmp_path, unbound_ns, "standalone", token(cluster, unbound_ns, "default")))


def test_the_binding_does_not_reach_another_namespace(
    cluster: Cluster, bound_ns: str, unbound_ns: str, tmp_path: Path
) -> None:
    """A bound service account asking for a TaskRun in a namespace where it has no Role."""
    taskrun(cluster, unbound_ns, "elsewhere")
    forbidden(*lookup(cluster, tmp_path, unbound_ns, "elsewhere", token(cluster, bound_ns, "default")))
