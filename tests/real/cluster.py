"""A real Kubernetes control plane on 127.0.0.1: etcd and kube-apiserver (hack/build-cluster), Tekton's CRDs, and
our webhook as a local process registered the way deploy/webhook registers it.

Used by tests/real/conftest.py (session fixture `cluster`) and hack/kube-up / hack/kube-down. Every process is
started in its own session and its pid written to DIR/pids, so the same code serves a fixture torn down at the
end of the session and a cluster left running in the background for a person. Rootless: nothing here needs root.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.real.gobuild import built

REPO = Path(__file__).resolve().parents[2]
DEPLOY_WEBHOOK = REPO / "deploy" / "webhook" / "base"
WEBHOOK_NAMESPACE = "step-tracer-system"
PIDS = "pids"
READY_TIMEOUT = 180.0  # a cold kube-apiserver on 2 busy cores installs its bootstrap objects in 10 to 60 s


def cluster_bin_dir() -> Path:
    return built("cluster")


def module_dir(hack_module: str, module: str) -> Path:
    """Where Go's module cache holds `module` at the version hack/HACK_MODULE's go.mod pins."""
    out = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", module],
        cwd=REPO / "hack" / hack_module,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(out)


def tekton_crd_files() -> list[Path]:
    """Tekton's CRDs from the github.com/tektoncd/pipeline module hack/tekton pins (its `config/300-crds`)."""
    return sorted((module_dir("tekton", "github.com/tektoncd/pipeline") / "config" / "300-crds").glob("*.yaml"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def spawn(argv: Sequence[str], log: Path, pids: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in its own session (it outlives hack/kube-up), its output in `log`, its pid in `pids`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    with pids.open("a") as f:
        f.write(f"{proc.pid} {Path(argv[0]).name}\n")
    return proc


def stop(workdir: Path, timeout: float = 10.0) -> None:
    """Stop what `start` and `start_webhook` wrote to WORKDIR/pids, newest first: SIGTERM, then SIGKILL."""
    pids_file = workdir / PIDS
    if not pids_file.exists():
        return
    pids = [int(line.split()[0]) for line in pids_file.read_text().splitlines() if line.strip()]
    for pid in reversed(pids):
        _terminate(pid, timeout)
    pids_file.unlink()


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # our child (the fixture): reap it
        except ChildProcessError:  # not our child (hack/kube-down): poll
            done = 0
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        if done:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@dataclass
class Cluster:
    """A running etcd + kube-apiserver; the admin kubeconfig is `kubeconfig`, the API server's CA `ca_file`."""

    workdir: Path
    url: str
    kubeconfig: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def load(cls, workdir: Path) -> Cluster:
        """The cluster `start(workdir, ...)` left running (hack/kube-up), from its kubeconfig and certificates."""
        config = yaml.safe_load((workdir / "kubeconfig").read_text())
        pki = workdir / "pki"
        url = config["clusters"][0]["cluster"]["server"]
        return cls(workdir, url, workdir / "kubeconfig", pki / "ca.crt", pki / "admin.crt", pki / "admin.key")

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def user_kubeconfig(self, user: str, group: str | None = None) -> Path:
        """A kubeconfig for USER (in GROUP) with a client certificate from the cluster's CA, as kubelets and
        kube-scheduler authenticate: the Node authorizer knows a node as `system:node:NAME` in `system:nodes`."""
        pki = self.workdir / "pki"
        ca = trustme.CA.from_pem(self.ca_file.read_bytes(), (pki / "ca.key").read_bytes())
        stem = re.sub(r"[^A-Za-z0-9_.-]", "-", user)
        leaf = ca.issue_cert(stem, common_name=user, organization_name=group)  # the name that counts is the CN
        cert = write_file(pki / f"{stem}.crt", b"".join(b.bytes() for b in leaf.cert_chain_pems))
        key = write_file(pki / f"{stem}.key", leaf.private_key_pem.bytes())
        return write_file(
            self.workdir / f"kubeconfig-{stem}", _cert_kubeconfig(self.url, self.ca_file, cert, key).encode()
        )

    def client_for(self, kubeconfig: Path) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET a path as the admin over plain http.client (readiness, before any client library is set up)."""
        host, _, port = self.url.removeprefix("https://").partition(":")
        conn = http.client.HTTPSConnection(host, int(port), context=self.ssl_context(), timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def start(workdir: Path, bin_dir: Path) -> Cluster:
    """Certificates, service-account keys, etcd and kube-apiserver on 127.0.0.1; returns once /readyz says ok."""
    workdir.mkdir(parents=True, exist_ok=True)
    pids, pki = workdir / PIDS, workdir / "pki"
    pki.mkdir(exist_ok=True)
    ca = trustme.CA(organization_name="step-tracer test cluster")
    ca_file = write_file(pki / "ca.crt", ca.cert_pem.bytes(), 0o644)
    write_file(pki / "ca.key", ca.private_key_pem.bytes())  # for user_kubeconfig: nodes and the scheduler
    serving = ca.issue_cert("127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc")
    serving.private_key_and_cert_chain_pem.write_to_path(str(pki / "apiserver.pem"))
    # The admin: a client certificate in system:masters (the API server's own bootstrap group), as kubeadm's.
    admin = ca.issue_cert("kubernetes-admin", common_name="kubernetes-admin", organization_name="system:masters")
    cert_file = write_file(pki / "admin.crt", b"".join(b.bytes() for b in admin.cert_chain_pems))
    key_file = write_file(pki / "admin.key", admin.private_key_pem.bytes())
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_file(
        pki / "sa.key",
        sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    write_file(
        pki / "sa.pub",
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )

    client_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    spawn(
        [
            str(bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--log-level=warn",
            # A throwaway store: fsync only costs time on a shared CI disk.
            "--unsafe-no-fsync",
        ],
        workdir / "etcd.log",
        pids,
    )
    spawn(
        [
            str(bin_dir / "kube-apiserver"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.pem'}",
            f"--tls-private-key-file={pki / 'apiserver.pem'}",
            f"--client-ca-file={ca_file}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=MutatingAdmissionWebhook,PodSecurity",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            # No kubelet or proxy will ever reach the `kubernetes` Service; its Endpoints would be 127.0.0.1.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ],
        workdir / "kube-apiserver.log",
        pids,
    )
    url = f"https://127.0.0.1:{api_port}"
    kubeconfig = write_file(workdir / "kubeconfig", _cert_kubeconfig(url, ca_file, cert_file, key_file).encode())
    cluster = Cluster(workdir, url, kubeconfig, ca_file, cert_file, key_file)
    _wait_ready(cluster, workdir)
    return cluster


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_text(url: str, ca_file: Path, user: Mapping[str, str]) -> str:
    """A kubeconfig for the API server at `url` whose one user is `user` (client certificate data, or a token)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": url, "certificate-authority-data": _b64(ca_file)}}],
            "users": [{"name": "user", "user": dict(user)}],
            "contexts": [{"name": "user@local", "context": {"cluster": "local", "user": "user"}}],
            "current-context": "user@local",
        }
    )


def _cert_kubeconfig(url: str, ca_file: Path, cert_file: Path, key_file: Path) -> str:
    return kubeconfig_text(
        url, ca_file, {"client-certificate-data": _b64(cert_file), "client-key-data": _b64(key_file)}
    )


def _wait_ready(cluster: Cluster, workdir: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = cluster.get("/readyz")
            if status == 200:
                return
            last = f"HTTP {status}: {body.decode(errors='replace')[-500:]}"
        except (OSError, http.client.HTTPException) as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.5)
    logs = "".join(f"\n--- {name}\n{tail(workdir / name)}" for name in ("etcd.log", "kube-apiserver.log"))
    raise RuntimeError(f"kube-apiserver not ready within {READY_TIMEOUT:g}s ({last}){logs}")


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""


# --- applying manifests -------------------------------------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k DIRECTORY` applies: the real kustomize (hack/manifests, built by
    hack/build-cluster), generators, name suffixes and patches included."""
    out = subprocess.run(
        [str(cluster_bin_dir() / "kustomize"), "build", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def cert_manager_crd_files() -> list[Path]:
    """cert-manager's CRDs from the module hack/manifests pins (its `deploy/crds`)."""
    return sorted((module_dir("manifests", "github.com/cert-manager/cert-manager") / "deploy" / "crds").glob("*.yaml"))


def apply(
    api_client: Any, objects: Iterable[Mapping[str, Any]], namespace: str | None = None, *, dry_run: bool = False
) -> list[Any]:
    """Create each object (server-side apply would hide what a create refuses); already existing ones are
    replaced. Returns what the API server stored, or with `dry_run` would have stored: admitted and validated
    (schemas, admission webhooks) but not persisted."""
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException

    client = dynamic.DynamicClient(api_client)  # type: ignore[no-untyped-call]
    extra = {"dry_run": "All"} if dry_run else {}
    stored = []
    for obj in objects:
        resource = _resource(client, obj["apiVersion"], obj["kind"])
        ns = obj.get("metadata", {}).get("namespace") or namespace if resource.namespaced else None
        try:
            stored.append(resource.create(body=dict(obj), namespace=ns, **extra))
        except ApiException as err:
            if err.status != 409:
                raise
            name = obj["metadata"]["name"]
            current = resource.get(name=name, namespace=ns)
            body = dict(obj)
            body["metadata"] = {**obj["metadata"], "resourceVersion": current.metadata.resourceVersion}
            stored.append(resource.replace(body=body, namespace=ns, **extra))
    return stored


def _resource(client: Any, api_version: str, kind: str) -> Any:
    """The API resource for (apiVersion, kind), discovering again while a new CRD is not yet served."""
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    deadline = time.monotonic() + 30
    while True:
        try:
            return client.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            client.resources.invalidate_cache()


def install_crds(cluster: Cluster, files: Iterable[Path]) -> list[str]:
    """CRDs applied and waited for until Established; returns their names."""
    from kubernetes import client

    api_client = cluster.api_client()
    crds = [doc for path in files for doc in load_documents(path)]
    apply(api_client, crds)
    extensions = client.ApiextensionsV1Api(api_client)
    names = [crd["metadata"]["name"] for crd in crds]
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            status = extensions.read_custom_resource_definition(name).status
            conditions = (status.conditions if status else None) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established within 60s: {conditions}")
            time.sleep(0.2)
    return names


def install_tekton_crds(cluster: Cluster) -> list[str]:
    """Tekton's CRDs (tekton_crd_files)."""
    return install_crds(cluster, tekton_crd_files())


# --- our webhook, as a process on 127.0.0.1 -----------------------------------------------------------------------


@dataclass
class Webhook:
    """`step-tracer webhook` running on 127.0.0.1 with a serving certificate from its own CA."""

    port: int
    ca_pem: bytes
    cert_file: Path
    key_file: Path
    process: subprocess.Popen[bytes]
    log: Path


def issue_webhook_certificate(workdir: Path) -> tuple[bytes, Path, Path]:
    """(CA PEM, cert file, key file): what cert-manager's self-signed Issuer and Certificate in
    deploy/webhook/cert-manager make, for the Service's names plus 127.0.0.1 where the process listens here."""
    ca = trustme.CA(organization_name="step-tracer-webhook-ca")
    leaf = ca.issue_cert(
        "127.0.0.1",
        f"step-tracer-webhook.{WEBHOOK_NAMESPACE}.svc",
        f"step-tracer-webhook.{WEBHOOK_NAMESPACE}.svc.cluster.local",
    )
    pki = workdir / "webhook-pki"
    pki.mkdir(parents=True, exist_ok=True)
    cert = write_file(pki / "tls.crt", b"".join(b.bytes() for b in leaf.cert_chain_pems), 0o644)
    key = write_file(pki / "tls.key", leaf.private_key_pem.bytes())
    return ca.cert_pem.bytes(), cert, key


def webhook_command() -> list[str]:
    """The installed launcher next to this interpreter (as users run it), else `python -m step_tracer`."""
    launcher = Path(sys.executable).with_name("step-tracer")
    return [str(launcher)] if launcher.exists() else [sys.executable, "-m", "step_tracer"]


def start_webhook(
    workdir: Path,
    native: str = "always",
    wrap: Callable[[list[str]], tuple[list[str], dict[str, str]]] | None = None,
) -> Webhook:
    """`step-tracer webhook` on 127.0.0.1 (any free port: the port is read from its start-up line).

    `native` defaults to always: the API server is 1.37, and `auto` reads /version through the in-cluster
    configuration, which a process outside a pod has only when `wrap` (as_in_a_pod) gives it one."""
    ca_pem, cert, key = issue_webhook_certificate(workdir)
    log = workdir / "webhook.log"
    log.write_bytes(b"")
    argv = [*webhook_command(), "webhook", f"--cert={cert}", f"--key={key}", "--bind=127.0.0.1", "--port=0"]
    argv.append(f"--native-sidecar={native}")
    env = None
    if wrap is not None:
        argv, env = wrap(argv)
    proc = spawn(argv, log, workdir / PIDS, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(rb"listening on https://127\.0\.0\.1:(\d+)", log.read_bytes())
        if found:
            return Webhook(int(found.group(1)), ca_pem, cert, key, proc, log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"step-tracer webhook did not start: {tail(log)}")


def webhook_objects(port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """deploy/webhook/base as kustomize renders it, changed in the two ways a local process needs:

    - `caBundle` set to the serving certificate's CA, as cert-manager's CA injector does (cert-manager/);
    - `clientConfig.service` (step-tracer-webhook.step-tracer-system:443) becomes
      `url: https://127.0.0.1:PORT/mutate`: the Service has no endpoints without a kubelet and a kube-proxy, and
      the API server reaches the webhook process on this machine's loopback instead. The path is kept.
    Everything else (rules, selectors, failurePolicy, timeout, the Deployment and RBAC) is applied as shipped.
    """
    objects = kustomize(DEPLOY_WEBHOOK)
    for obj in objects:
        if obj["kind"] != "MutatingWebhookConfiguration":
            continue
        for hook in obj["webhooks"]:
            service = hook["clientConfig"].pop("service")
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{service.get('path', '/')}"
            hook["clientConfig"]["caBundle"] = base64.b64encode(ca_pem).decode()
    return objects


def tls_secret(cert_file: Path, key_file: Path) -> dict[str, Any]:
    """Secret step-tracer-webhook-tls as cert-manager writes it (the Deployment mounts it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "step-tracer-webhook-tls", "namespace": WEBHOOK_NAMESPACE},
        "data": {
            "tls.crt": base64.b64encode(cert_file.read_bytes()).decode(),
            "tls.key": base64.b64encode(key_file.read_bytes()).decode(),
        },
    }


def register_webhook(cluster: Cluster, webhook: Webhook) -> list[Any]:
    """Apply deploy/webhook (see `webhook_objects`) and the serving certificate's Secret."""
    api_client = cluster.api_client()
    stored = apply(api_client, webhook_objects(webhook.port, webhook.ca_pem))
    stored += apply(api_client, [tls_secret(webhook.cert_file, webhook.key_file)])
    return stored


def wait_port_closed(port: int) -> None:
    """After the webhook stopped: its port refuses connections (no half-closed listener left)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} still accepts connections")


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def as_in_a_pod(
    cluster: Cluster, tmp: Path, ns: str, bearer: str, argv: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) running `argv` as a container of a pod in `ns` sees the API server: the token, CA and namespace
    at /var/run/secrets/kubernetes.io/serviceaccount (a tmpfs over /run in a user and mount namespace of its own,
    so nothing on the host changes and no root is needed) and KUBERNETES_SERVICE_HOST/PORT."""
    secrets = tmp / "serviceaccount"
    secrets.mkdir(exist_ok=True)
    write_file(secrets / "token", bearer.encode())
    write_file(secrets / "namespace", ns.encode(), 0o644)
    write_file(secrets / "ca.crt", cluster.ca_file.read_bytes(), 0o644)
    run = os.path.realpath("/var/run")  # /run on Debian: mount over the real directory
    sa_dir = SERVICE_ACCOUNT_DIR.replace("/var/run", run, 1)
    script = f'mount -t tmpfs tmpfs {run} && mkdir -p {sa_dir} && cp "$1"/* {sa_dir}/ && shift && exec "$@"'
    host, _, port = cluster.url.removeprefix("https://").partition(":")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "STEP_TRACER_"))}
    env.update(KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port)
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(secrets), *argv], env


def require_unshare() -> None:
    """Skip (fail in CI) where user and mount namespaces cannot be made: as_in_a_pod needs them."""
    import pytest

    probe = subprocess.run(["unshare", "--map-root-user", "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"unshare (user and mount namespaces) does not work: {probe.stderr!r}")
        pytest.skip("needs unshare --map-root-user --mount (user namespaces)")


def service_account_token(cluster: Cluster, ns: str, service_account: str, expiration: int = 600) -> str:
    """A token of `ns/service_account` from the TokenRequest API, as the kubelet mounts one in a pod."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration)
    )
    answer = core.create_namespaced_service_account_token(service_account, ns, request)
    assert answer.status is not None
    return str(answer.status.token)


def summary(cluster: Cluster, webhook: Webhook | None) -> str:
    lines = [f"kube-apiserver {cluster.url}", f"kubeconfig     {cluster.kubeconfig}"]
    if webhook is not None:
        lines.append(f"webhook        https://127.0.0.1:{webhook.port}/mutate (log {webhook.log})")
    return "\n".join(lines)


def namespace(api_client: Any, name: str, labels: Mapping[str, str] | None = None) -> str:
    """A namespace with what kube-controller-manager would add (none runs here): its `default` ServiceAccount
    (the ServiceAccount admission plugin refuses pods whose service account does not exist) and the
    `kube-root-ca.crt` ConfigMap (every pod's projected service account volume reads it)."""
    ca = api_client.configuration.ssl_ca_cert
    apply(
        api_client,
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}},
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "namespace": name},
                "data": {"ca.crt": Path(ca).read_text() if ca else ""},
            },
        ],
    )
    return name
