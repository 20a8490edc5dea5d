"""A node of the real control plane (cluster.py): a scheduler of one node and a process kubelet on the API.

- It registers its Node (Ready, with capacity) as a kubelet does, with a client certificate of
  `system:node:NAME` in `system:nodes`: the Node authorizer decides what it may read (only the Secrets and
  ConfigMaps its own pods reference) and write (its pods' status).
- The scheduler's part binds each unscheduled pod (of the namespaces it is given) to the node through
  `pods/binding`, as kube-scheduler's DefaultBinder does, as `system:kube-scheduler` (RBAC's bootstrap role).
- The kubelet's part watches the pods bound to the node (`spec.nodeName=NAME`) and runs each with PodRunner
  (podrunner.py). Tekton's controller makes its own moves through the API server (the ready annotation, the
  sidecars' image swap); the watch hands each changed pod to the runner. The pod's status is patched whenever it
  changes. A pod given a deletion timestamp is stopped (SIGTERM, then SIGKILL after its grace period) and then
  removed, as the kubelet finishes a deletion.
- Secrets and ConfigMaps come from the API server; projected service account tokens from TokenRequest, bound to
  the pod; KUBERNETES_SERVICE_HOST/PORT name the API server's real address (the `kubernetes` Service's cluster IP
  has no kube-proxy behind it here).
A pod that cannot run here (an unknown volume type, a missing Secret) is reported as the kubelet reports it:
Pending, its containers waiting with reason CreateContainerConfigError.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.real.cluster import Cluster
from tests.real.podrunner import Image, PodError, PodRunner

NODE_NAME = "step-tracer-node"
STATUS_POLL = 0.1


def _referenced(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The Secrets and ConfigMaps a pod's env and volumes name."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    spec = pod.get("spec") or {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for source in c.get("envFrom") or []:
            if "secretRef" in source:
                secrets.add(source["secretRef"]["name"])
            if "configMapRef" in source:
                config_maps.add(source["configMapRef"]["name"])
        for var in c.get("env") or []:
            ref = var.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
            if "configMapKeyRef" in ref:
                config_maps.add(ref["configMapKeyRef"]["name"])
    for v in spec.get("volumes") or []:
        for s in v["projected"]["sources"] if "projected" in v else [v]:
            if "secret" in s:
                secrets.add(s["secret"].get("secretName") or s["secret"].get("name", ""))
            if "configMap" in s:
                config_maps.add(s["configMap"]["name"])
    return secrets, config_maps


class Node:
    """Runs every pod the API server puts on node NAME until `stop()`."""

    def __init__(
        self,
        cluster: Cluster,
        images: Mapping[str, Image],
        workdir: Path,
        *,
        default_image: Image | None = None,
        name: str = NODE_NAME,
        claims: Mapping[str, Path] | None = None,
        grace_seconds: float | None = None,
        claims_dir: Path | None = None,
        namespaces: set[str] | None = None,
    ) -> None:
        from kubernetes import client

        self.name = name
        self.images = images
        self.default_image = default_image
        self.workdir = workdir
        #: claim name -> the directory that serves it; a test may add claims while the node runs.
        self.claims: dict[str, Path] = dict(claims or {})
        #: where a claim not in `claims` gets a directory of its own (NAMESPACE-CLAIM), shared by the pods that
        #: mount it; None: such a volume lives only as long as its pod.
        self.claims_dir = claims_dir
        #: the namespaces whose pods the scheduler part binds here (a test may add some while the node runs);
        #: None: every namespace. Pods elsewhere are stored and never run (other tests' pods, on a shared cluster).
        self.namespaces = namespaces
        self.grace_seconds = grace_seconds
        self.cluster = cluster
        self.kubelet = client.CoreV1Api(
            cluster.client_for(cluster.user_kubeconfig(f"system:node:{name}", "system:nodes"))
        )
        self.scheduler = client.CoreV1Api(cluster.client_for(cluster.user_kubeconfig("system:kube-scheduler")))
        url = urlsplit(cluster.url)
        self.service_env = {
            "KUBERNETES_SERVICE_HOST": str(url.hostname),
            "KUBERNETES_SERVICE_PORT": str(url.port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(url.port),
            "KUBERNETES_PORT": f"tcp://{url.hostname}:{url.port}",
        }
        self.runners: dict[str, PodRunner] = {}  # by pod UID
        self._started: set[str] = set()
        self._latest: dict[str, dict[str, Any]] = {}  # changes seen while a runner is being made
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> Node:
        self._register()
        for target in (self._schedule, self._watch):
            t = threading.Thread(
                target=self._forever, args=(target,), daemon=True, name=f"{self.name}-{target.__name__}"
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for runner in list(self.runners.values()):
            runner.delete()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _forever(self, loop: Callable[[], None]) -> None:
        """Run a watch loop again after the API server closes it, until stop()."""
        while not self._stopping.is_set():
            try:
                loop()
            except Exception as err:  # a kubelet keeps going; the error is kept for the test
                if self._stopping.is_set():
                    return
                self.errors.append(err)
                time.sleep(0.5)

    def _register(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        capacity = {"cpu": "2", "memory": "24Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        node = client.V1Node(
            metadata=client.V1ObjectMeta(
                name=self.name,
                labels={
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            )
        )
        with contextlib.suppress(ApiException):
            self.kubelet.create_node(node)
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "process kubelet (tests/real/node.py)",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        status = {"capacity": capacity, "allocatable": capacity, "conditions": [ready]}
        self.kubelet.patch_node_status(self.name, {"status": status})

    # --- the scheduler's part ------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        w = watch.Watch()  # type: ignore[no-untyped-call]
        for event in w.stream(  # type: ignore[no-untyped-call]
            self.scheduler.list_pod_for_all_namespaces, field_selector="spec.nodeName=", timeout_seconds=5
        ):
            if self._stopping.is_set():
                w.stop()  # type: ignore[no-untyped-call]
                return
            pod = event["object"]
            if event["type"] != "ADDED" or pod.metadata.deletion_timestamp is not None:
                continue
            if self.namespaces is not None and pod.metadata.namespace not in self.namespaces:
                continue
            binding = client.V1Binding(
                metadata=client.V1ObjectMeta(name=pod.metadata.name),
                target=client.V1ObjectReference(api_version="v1", kind="Node", name=self.name),
            )
            # The client cannot read the Status the API server answers with; the request is what matters. A watch
            # started again may list a pod bound a moment ago: the API server then answers 409, already bound.
            try:
                self.scheduler.create_namespaced_pod_binding(
                    pod.metadata.name, pod.metadata.namespace, binding, _preload_content=False
                )
            except ApiException as err:
                if err.status not in (404, 409):  # deleted meanwhile, or bound already
                    raise

    # --- the kubelet's part --------------------------------------------------------------------------------------

    def _watch(self) -> None:
        from kubernetes import watch

        w = watch.Watch()  # type: ignore[no-untyped-call]
        api = self.kubelet.api_client
        for event in w.stream(  # type: ignore[no-untyped-call]
            self.kubelet.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.name}", timeout_seconds=5
        ):
            if self._stopping.is_set():
                w.stop()  # type: ignore[no-untyped-call]
                return
            pod: dict[str, Any] = api.sanitize_for_serialization(event["object"])
            uid = pod["metadata"]["uid"]
            gone = event["type"] == "DELETED" or bool(pod["metadata"].get("deletionTimestamp"))
            with self._lock:
                if uid not in self._started:
                    ended = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                    if not gone and not ended:
                        self._started.add(uid)
                        threading.Thread(target=self._run, args=(pod,), daemon=True, name=f"pod-{uid}").start()
                    continue
                runner = self.runners.get(uid)
                if runner is None:
                    self._latest[uid] = pod
                    continue
            self._hand(runner, pod, gone)

    @staticmethod
    def _hand(runner: PodRunner, pod: dict[str, Any], gone: bool) -> None:
        if gone:
            runner.delete()
        else:
            runner.update(pod)

    def _read(self, kind: str, ns: str, names: set[str]) -> dict[str, dict[str, str]]:
        """Secrets or ConfigMaps by name; the Node authorizer may need a moment to learn that a just-bound pod
        references one (403 until then); a missing one is left out (the runner reports it unless optional)."""
        import base64

        from kubernetes.client.exceptions import ApiException

        read = self.kubelet.read_namespaced_secret if kind == "secret" else self.kubelet.read_namespaced_config_map
        found: dict[str, dict[str, str]] = {}
        for name in names:
            deadline = time.monotonic() + 10
            while True:
                try:
                    obj = read(name, ns)
                    break
                except ApiException as err:
                    if err.status == 403 and time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    if err.status in (403, 404):
                        obj = None
                        break
                    raise
            if obj is None:
                continue
            if kind == "secret":
                found[name] = {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
            else:
                found[name] = {k: str(v) for k, v in (obj.data or {}).items()}
        return found

    def _token(self, pod: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], str]:
        from kubernetes import client

        meta, spec = pod["metadata"], pod["spec"]

        def token(source: Mapping[str, Any]) -> str:
            audiences = [source["audience"]] if source.get("audience") else []
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=audiences,
                    expiration_seconds=int(source.get("expirationSeconds", 3607)),
                    bound_object_ref=client.V1BoundObjectReference(
                        api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
                    ),
                )
            )
            answer = self.kubelet.create_namespaced_service_account_token(
                spec.get("serviceAccountName") or "default", meta["namespace"], request
            )
            assert answer.status is not None
            return str(answer.status.token)

        return token

    def _run(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            for v in pod["spec"].get("volumes") or []:
                claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in self.claims and self.claims_dir is not None:
                    self.claims[claim] = self.claims_dir / f"{ns}-{claim}"
                    self.claims[claim].mkdir(parents=True, exist_ok=True)
            secret_names, config_map_names = _referenced(pod)
            runner = PodRunner(
                pod,
                self.images,
                self.workdir / ns / name,
                default_image=self.default_image,
                node_name=self.name,
                secrets=self._read("secret", ns, secret_names),
                config_maps=self._read("configmap", ns, config_map_names),
                grace_seconds=self.grace_seconds,
                claims=self.claims,
                tekton_moves=False,
                service_env=self.service_env,
                tokens=self._token(pod),
            )
        except Exception as err:
            self.errors.append(err)
            return
        with self._lock:
            self.runners[uid] = runner
            latest = self._latest.pop(uid, None)
        if latest is not None:
            self._hand(runner, latest, bool(latest["metadata"].get("deletionTimestamp")))
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                runner.run(timeout=1800)
            except BaseException as err:  # reported as the pod's status below
                failure.append(err)
            finally:
                done.set()

        threading.Thread(target=run, daemon=True, name=f"run-{uid}").start()
        last: Any = None
        while True:
            finished = done.wait(STATUS_POLL)
            status = self._status(runner, failure)
            if status != last:
                try:
                    self.kubelet.patch_namespaced_pod_status(name, ns, {"status": status})
                    last = status
                except Exception as err:  # deleted meanwhile, or the API server is away
                    if finished and getattr(err, "status", None) != 404:  # a pod gone is no status to write
                        self.errors.append(err)
            if finished:
                break
        if runner.deleted:
            with contextlib.suppress(Exception):
                self.kubelet.delete_namespaced_pod(name, ns, grace_period_seconds=0)

    @staticmethod
    def _status(runner: PodRunner, failure: list[BaseException]) -> dict[str, Any]:
        status: dict[str, Any] = runner.pod_with_status()["status"]
        if failure and isinstance(failure[0], PodError):
            status["phase"] = "Pending"
            for s in status["containerStatuses"] + status["initContainerStatuses"]:
                if "terminated" not in s["state"]:
                    s["state"] = {"waiting": {"reason": "CreateContainerConfigError", "message": str(failure[0])}}
        elif failure:
            status["phase"] = "Failed"
            status["message"] = f"{type(failure[0]).__name__}: {failure[0]}"
        return status
