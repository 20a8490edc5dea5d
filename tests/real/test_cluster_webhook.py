"""Our admission webhook called by a real kube-apiserver (tests/real/cluster.py), registered through
deploy/webhook, on Pods Tekton's own reconciler builds (hack/tekton's tekton-pod), with the real PodSecurity
admission as the judge of what we inject.

What differs from a cluster install, and why: the MutatingWebhookConfiguration's `clientConfig.service` becomes
`url: https://127.0.0.1:PORT/mutate` (the webhook runs as a process here, not behind a Service), and its `caBundle`
is set by the test the way cert-manager's CA injector sets it (see cluster.webhook_objects).
"""

from __future__ import annotations

import copy
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.real import tekton
from tests.real.cluster import (
    DEPLOY_WEBHOOK,
    WEBHOOK_NAMESPACE,
    Cluster,
    Webhook,
    apply,
    as_in_a_pod,
    issue_webhook_certificate,
    kustomize,
    namespace,
    require_unshare,
    service_account_token,
    start_webhook,
    wait_port_closed,
    webhook_objects,
)

TASKS = Path(__file__).with_name("tasks")
RESTRICTED_TASK = TASKS / "restricted.yaml"
INJECTED = "step-tracer.dev/injected"
WRAPPER = "/step-tracer/bin/step-tracer"
OUR_VOLUMES = {"step-tracer-bin", "step-tracer-spool", "step-tracer-podinfo"}
SIDECAR = "sidecar-step-tracer"
# The webhook configuration's own timeoutSeconds, read from what we ship.
TIMEOUT = next(o for o in kustomize(DEPLOY_WEBHOOK) if o["kind"] == "MutatingWebhookConfiguration")["webhooks"][0][
    "timeoutSeconds"
]
# Beyond the webhook's timeout: the API server's own work for a create on 2 busy cores.
SLACK = 15.0


def tekton_pod(namespace: str, name: str, files: tuple[Path, ...] = (RESTRICTED_TASK,)) -> dict[str, Any]:
    """The Pod Tekton's TaskRun reconciler creates for TaskRun `name`, with set-security-context=true (Tekton's
    own init containers restricted-compliant), ready to be created through the API server."""
    pod = tekton.build_pod(files, name=name, namespace=namespace, feature_flags={"set-security-context": "true"})
    pod.pop("status", None)
    pod["metadata"].pop("creationTimestamp", None)
    return pod


def plain_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "busybox", "command": ["sleep", "1000"]}]},
    }


def create_pod(cluster: Cluster, ns: str, pod: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """(the Pod as the API server stored it, seconds the create took)."""
    from kubernetes import client

    api_client = cluster.api_client()
    started = time.monotonic()
    stored = client.CoreV1Api(api_client).create_namespaced_pod(ns, pod)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    result: dict[str, Any] = api_client.sanitize_for_serialization(stored)
    return result, elapsed


def dry_run(cluster: Cluster, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    """The Pod as admission would store it, nothing stored (webhooks with sideEffects: None are called)."""
    from kubernetes import client

    api_client = cluster.api_client()
    stored = client.CoreV1Api(api_client).create_namespaced_pod(ns, pod, dry_run="All")  # type: ignore[arg-type]
    result: dict[str, Any] = api_client.sanitize_for_serialization(stored)
    return result


def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """A new webhook configuration reaches the API server's admission through an informer, not at once: poll
    with dry-run creates until it is in effect."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.2)


def injected(pod: dict[str, Any]) -> bool:
    spec = pod["spec"]
    names = {v["name"] for v in spec.get("volumes") or []}
    return (
        INJECTED in (pod["metadata"].get("annotations") or {})
        or bool(names & OUR_VOLUMES)
        or any(c["name"] == SIDECAR for c in [*spec.get("initContainers", []), *spec["containers"]])
        or any(WRAPPER in (c.get("args") or []) for c in spec["containers"])
    )


@pytest.fixture(scope="module")
def traced_ns(cluster: Cluster, cluster_webhook: Webhook) -> str:
    ns = namespace(cluster.api_client(), "traced", {"step-tracer.dev/inject": "enabled"})
    probe = tekton_pod(ns, "probe")
    until("deploy/webhook in effect", lambda: injected(dry_run(cluster, ns, probe)))
    return ns


def test_deploy_webhook_is_stored_as_shipped_but_for_url_and_ca(cluster: Cluster, cluster_webhook: Webhook) -> None:
    from kubernetes import client

    api_client = cluster.api_client()
    hooks = client.AdmissionregistrationV1Api(api_client).read_mutating_webhook_configuration("step-tracer")
    stored = api_client.sanitize_for_serialization(hooks)["webhooks"][0]
    shipped = webhook_objects(cluster_webhook.port, cluster_webhook.ca_pem)
    expected = next(o for o in shipped if o["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    for key, value in expected.items():
        assert stored[key] == value, key
    assert stored["clientConfig"]["url"] == f"https://127.0.0.1:{cluster_webhook.port}/mutate"
    # Every object of deploy/webhook/base is there (the Deployment too: stored, though nothing runs it here).
    from kubernetes import dynamic

    dyn = dynamic.DynamicClient(api_client)  # type: ignore[no-untyped-call]
    for obj in shipped:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        ns = obj["metadata"].get("namespace") if resource.namespaced else None
        assert resource.get(name=obj["metadata"]["name"], namespace=ns).metadata.uid


def test_a_tekton_pod_is_stored_instrumented(cluster: Cluster, traced_ns: str) -> None:
    pod, _ = create_pod(cluster, traced_ns, tekton_pod(traced_ns, "build-1"))
    spec = pod["spec"]
    assert pod["metadata"]["annotations"][INJECTED].startswith("steps 2/2, sidecar native"), pod["metadata"]
    assert {v["name"] for v in spec["volumes"]} >= OUR_VOLUMES
    sidecar = next(c for c in spec["initContainers"] if c["name"] == SIDECAR)
    assert sidecar["restartPolicy"] == "Always"
    for step in spec["containers"]:
        assert step["args"][step["args"].index("-entrypoint") + 1] == WRAPPER, step["args"]
        assert {m["name"] for m in step["volumeMounts"]} >= OUR_VOLUMES, step["name"]
    # Tekton's own parts are still there, in Tekton's order, before ours.
    assert [c["name"] for c in spec["initContainers"]] == ["prepare", "place-scripts", SIDECAR]


def test_a_pod_that_is_not_tektons_is_left_alone(cluster: Cluster, traced_ns: str) -> None:
    pod, _ = create_pod(cluster, traced_ns, plain_pod("web"))
    assert not injected(pod), pod


@pytest.mark.parametrize("value", ["false", "off"])
def test_a_pod_opted_out_by_label_is_not_sent_to_the_webhook(cluster: Cluster, traced_ns: str, value: str) -> None:
    """The shipped objectSelector (the API server filters; the webhook is not called)."""
    pod = tekton_pod(traced_ns, f"opted-out-{value}")
    pod["metadata"]["labels"]["step-tracer.dev/inject"] = value
    stored, _ = create_pod(cluster, traced_ns, pod)
    assert not injected(stored)


@pytest.mark.usefixtures("traced_ns")  # the webhook configuration is in effect
def test_a_tekton_pod_in_a_namespace_not_opted_in_is_left_alone(cluster: Cluster) -> None:
    """The shipped namespaceSelector: step-tracer.dev/inject=enabled on the namespace."""
    ns = namespace(cluster.api_client(), "not-traced")
    stored, _ = create_pod(cluster, ns, tekton_pod(ns, "build"))
    assert not injected(stored)


def test_an_instrumented_pod_is_not_instrumented_again(cluster: Cluster, traced_ns: str) -> None:
    first, _ = create_pod(cluster, traced_ns, tekton_pod(traced_ns, "build-2"))
    again = copy.deepcopy(first)
    again["metadata"] = {
        "name": "build-2-again",
        "labels": first["metadata"]["labels"],
        "annotations": first["metadata"]["annotations"],
    }
    second, _ = create_pod(cluster, traced_ns, again)
    for key in ("initContainers", "containers", "volumes"):
        assert second["spec"][key] == first["spec"][key], key
    assert second["metadata"]["annotations"] == first["metadata"]["annotations"]


@pytest.fixture(scope="module")
def restricted_ns(cluster: Cluster, traced_ns: str) -> str:
    labels = {"step-tracer.dev/inject": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}
    return namespace(cluster.api_client(), "restricted", labels)


def test_restricted_namespace_admits_an_instrumented_compliant_pod(cluster: Cluster, restricted_ns: str) -> None:
    """PodSecurity is a validating plugin: it judges the Pod after our webhook mutated it."""
    pod, _ = create_pod(cluster, restricted_ns, tekton_pod(restricted_ns, "build-1"))
    assert INJECTED in pod["metadata"]["annotations"]
    assert any(c["name"] == SIDECAR for c in pod["spec"]["initContainers"])


def test_restricted_namespace_admits_when_only_the_pod_says_run_as_non_root(
    cluster: Cluster, restricted_ns: str
) -> None:
    """runAsNonRoot and seccomp at pod level only (a TaskRun podTemplate): our sidecar inherits nothing it needs."""
    pod = tekton_pod(restricted_ns, "build-2")
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    for container in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        context = container.get("securityContext") or {}
        context.pop("runAsNonRoot", None)
        context.pop("seccompProfile", None)
    stored, _ = create_pod(cluster, restricted_ns, pod)
    assert INJECTED in stored["metadata"]["annotations"]


def test_restricted_namespace_is_really_enforced(cluster: Cluster, restricted_ns: str) -> None:
    """The judge is awake: the same Tekton pod without its security contexts is refused."""
    from kubernetes.client.exceptions import ApiException

    pod = tekton_pod(restricted_ns, "build-3")
    for container in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        container.pop("securityContext", None)
    with pytest.raises(ApiException) as refused:
        create_pod(cluster, restricted_ns, pod)
    assert refused.value.status == 403 and "restricted" in str(refused.value.body)


# --- a webhook that is down, hangs or answers garbage: the Pod is created, uninstrumented, in time ---------------


class BrokenWebhook:
    """An HTTPS server on 127.0.0.1 that reads each request and then hangs (until closed) or answers garbage."""

    def __init__(self, workdir: Path, mode: str) -> None:
        self.ca_pem, cert, key = issue_webhook_certificate(workdir)
        self.mode = mode
        self.requests = 0
        self.closed = threading.Event()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, raw: socket.socket) -> None:
        """Every request on the connection (the API server keeps it alive), read whole, then hang or garble."""
        raw.settimeout(10)
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    size = int(length.group(1)) if length else 0
                    while len(data) < size:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    data = data[size:]
                    self.requests += 1
                    if self.mode == "hang":
                        self.closed.wait(60)
                        return
                    body = b"{this is not an AdmissionReview"
                    answer = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    conn.sendall(answer.encode() + body)
        except OSError:
            return
        finally:
            raw.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        self.thread.join(5)


def broken_configuration(api_client: Any, label: str, port: int, ca_pem: bytes) -> str:
    """deploy/webhook's configuration as shipped, under another name and for namespaces labelled `label`."""
    hooks = next(o for o in webhook_objects(port, ca_pem) if o["kind"] == "MutatingWebhookConfiguration")
    hooks["metadata"]["name"] = f"step-tracer-{label}"
    hooks["webhooks"][0]["namespaceSelector"] = {"matchLabels": {"step-tracer.dev/test": label}}
    apply(api_client, [hooks])
    return namespace(api_client, label, {"step-tracer.dev/test": label})


def test_a_stopped_webhook_lets_the_pod_through(cluster: Cluster, tmp_path: Path) -> None:
    webhook = start_webhook(tmp_path)
    try:
        ns = broken_configuration(cluster.api_client(), "stopped", webhook.port, webhook.ca_pem)
        before = tekton_pod(ns, "before")
        until("the webhook instruments pods before it stops", lambda: injected(dry_run(cluster, ns, before)))
    finally:
        webhook.process.terminate()
        webhook.process.wait(10)
    wait_port_closed(webhook.port)
    pod, elapsed = create_pod(cluster, ns, tekton_pod(ns, "after"))
    assert not injected(pod)
    assert elapsed < TIMEOUT + SLACK


@pytest.mark.parametrize("mode", ["hang", "garbage"])
def test_a_hung_or_garbled_webhook_lets_the_pod_through(cluster: Cluster, tmp_path: Path, mode: str) -> None:
    broken = BrokenWebhook(tmp_path, mode)
    try:
        ns = broken_configuration(cluster.api_client(), mode, broken.port, broken.ca_pem)
        pod = tekton_pod(ns, "build")
        until("the API server calls the broken webhook", lambda: bool(dry_run(cluster, ns, pod) and broken.requests))
        broken.requests = 0
        pod, elapsed = create_pod(cluster, ns, pod)
    finally:
        broken.close()
    assert broken.requests >= 1  # the API server did call it
    assert not injected(pod)
    assert elapsed < TIMEOUT + SLACK
    if mode == "hang":
        assert elapsed >= TIMEOUT * 0.9  # it waited for the configured timeout, no longer than the slack


def test_tekton_manifests_we_ship_are_valid_objects(cluster: Cluster, traced_ns: str) -> None:
    """tekton/*.yaml Tasks and Pipeline, stored through Tekton's CRDs (their openAPI schemas prune and validate)."""
    from tests.real.cluster import REPO, load_documents

    files = sorted((REPO / "tekton").glob("*.yaml"))
    objects = [d for f in files for d in load_documents(f) if d["apiVersion"].startswith("tekton.dev/")]
    assert {o["kind"] for o in objects} >= {"Task", "Pipeline"}
    stored = apply(cluster.api_client(), objects, namespace=traced_ns)
    for obj, got in zip(objects, stored, strict=True):
        # Nothing we wrote was pruned as unknown by the CRD's structural schema.
        assert got.to_dict()["spec"] == obj["spec"], obj["metadata"]["name"]


def test_native_sidecar_auto_reads_the_real_version_with_deploy_webhooks_account(
    cluster: Cluster, cluster_webhook: Webhook, tmp_path: Path
) -> None:
    """deploy/webhook/base/rbac.yaml says the webhook needs no RBAC for `--native-sidecar auto`: its
    ServiceAccount (no binding) reads /version through the in-cluster configuration, as in its pod."""
    require_unshare()
    bearer = service_account_token(cluster, WEBHOOK_NAMESPACE, "step-tracer-webhook")
    webhook = start_webhook(
        tmp_path, native="auto", wrap=lambda argv: as_in_a_pod(cluster, tmp_path, WEBHOOK_NAMESPACE, bearer, argv)
    )
    try:
        started = next(line for line in webhook.log.read_text().splitlines() if "listening on" in line)
    finally:
        # Its stop is not what this test is about (tests/webhook checks it): on 2 busy cores it can take a while.
        webhook.process.terminate()
        try:
            webhook.process.wait(60)
        except subprocess.TimeoutExpired:
            webhook.process.kill()
            webhook.process.wait(10)
    major, minor = kube_version(cluster)
    assert started.endswith(f"(sidecar: native, Kubernetes {major}.{minor})"), started


def kube_version(cluster: Cluster) -> tuple[str, str]:
    import json

    status, body = cluster.get("/version")
    assert status == 200
    data = json.loads(body)
    return data["major"], data["minor"]
