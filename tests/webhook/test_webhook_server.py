"""The webhook over real HTTPS: a real server on 127.0.0.1, real TLS (trustme), http.client with explicit contexts.

REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE are set on the dev machine; http.client with its own SSLContext ignores them.
"""

# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from step_tracer.webhook.cli import cluster_version, use_native_sidecar
from step_tracer.webhook.mutate import SIDECAR_CONTAINER, WebhookOptions
from step_tracer.webhook.server import MAX_BODY, WORKERS, Limits, Metrics, WebhookServer
from step_tracer.webhook.tls import ReloadingContext
from tests.webhook_pods import apply_patch, build_pod, review


def write_leaf(ca: trustme.CA, cert: Path, key: Path, *names: str) -> None:
    leaf = ca.issue_cert(*(names or ("127.0.0.1", "localhost")))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    return context


class Webhook:
    """A WebhookServer on an ephemeral port, serving from its own thread."""

    def __init__(self, tmp_path: Path, options: WebhookOptions | Any = None, limits: Limits | None = None) -> None:
        self.ca = trustme.CA()
        self.cert, self.key = tmp_path / "tls.crt", tmp_path / "tls.key"
        write_leaf(self.ca, self.cert, self.key)
        self.tls = ReloadingContext(str(self.cert), str(self.key))
        self.metrics = Metrics()
        self.server = WebhookServer(("127.0.0.1", 0), self.tls, options or WebhookOptions(), self.metrics, limits)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def connect(self, ca: trustme.CA | None = None) -> http.client.HTTPSConnection:
        context = client_context(ca or self.ca)
        return http.client.HTTPSConnection("127.0.0.1", self.server.port, context=context, timeout=10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Webhook]:
    server = Webhook(tmp_path)
    yield server
    server.close()


def post(conn: http.client.HTTPSConnection, body: bytes | dict[str, Any], path: str = "/mutate?timeout=2s") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    assert response.status == 200, (response.status, payload)
    assert response.getheader("Content-Type") == "application/json"
    return json.loads(payload)


def get(conn: http.client.HTTPSConnection, path: str) -> tuple[int, str]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read().decode()


def tekton_pod() -> dict[str, Any]:
    return build_pod(
        [
            {"name": "build", "image": "alpine", "script": "make\n"},
            {"name": "test", "image": "alpine", "command": ["make", "test"], "timeout": "10m"},
        ]
    )


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return patch


def metric(webhook: Webhook, name: str) -> float:
    status, text = get(webhook.connect(), "/metrics")
    assert status == 200
    found = re.search(rf"^step_tracer_webhook_{re.escape(name)} (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1))


def test_admission_review_round_trip(webhook: Webhook) -> None:
    pod = tekton_pod()
    answer = post(webhook.connect(), review(pod, uid="uid-1"))
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "uid-1" and answer["response"]["allowed"] is True
    patched = apply_patch(pod, patch_of(answer))
    assert [c["name"] for c in patched["spec"]["initContainers"]][-1] == SIDECAR_CONTAINER
    assert metric(webhook, "mutated_total") == 1
    assert metric(webhook, 'steps_total{state="wrapped"}') == 2


def test_many_reviews_on_one_kept_alive_connection(webhook: Webhook) -> None:
    conn = webhook.connect()
    for i in range(20):
        assert post(conn, review(tekton_pod(), uid=f"u{i}"))["response"]["uid"] == f"u{i}"
    assert metric(webhook, "reviews_total") == 20


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[1, 2]",
        b"null",
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": []}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}}',
        b'{"apiVersion": "v1", "kind": "Pod", "request": {"uid": "x"}}',
        b"[" * 100_000,
        "\udcff".encode("utf-8", "surrogatepass"),
    ],
    ids=["empty", "broken", "array", "null", "no-request", "request-list", "uid-int", "not-review", "deep", "bad-utf8"],
)
def test_malformed_reviews_are_answered_allowed_and_counted(webhook: Webhook, body: bytes) -> None:
    conn = webhook.connect()
    answer = post(conn, body)
    assert answer["response"]["allowed"] is True and "patch" not in answer["response"]
    assert "malformed" in answer["response"]["status"]["message"]
    # Same connection, still serving.
    assert post(conn, review(tekton_pod(), uid="after"))["response"]["uid"] == "after"
    assert metric(webhook, 'errors_total{kind="malformed"}') == 1


def test_a_review_with_a_uid_but_an_odd_request_echoes_the_uid(webhook: Webhook) -> None:
    doc = review(tekton_pod(), uid="odd")
    doc["request"]["object"] = "not a pod"
    answer = post(webhook.connect(), doc)
    assert answer["response"] == {"uid": "odd", "allowed": True}


@pytest.mark.parametrize(
    "change",
    [
        {"operation": "UPDATE"},
        {"kind": {"group": "", "version": "v1", "kind": "Service"}},
        {"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}},
        {"subResource": "ephemeralcontainers"},
    ],
)
def test_only_pod_creation_is_mutated(webhook: Webhook, change: dict[str, Any]) -> None:
    doc = review(tekton_pod())
    doc["request"].update(change)
    answer = post(webhook.connect(), doc)
    assert answer["response"] == {"uid": doc["request"]["uid"], "allowed": True}
    assert metric(webhook, 'skipped_total{reason="not-pod-create"}') == 1


def test_non_tekton_pods_are_untouched(webhook: Webhook) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team-a", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }
    answer = post(webhook.connect(), review(pod))
    assert answer["response"] == {"uid": review(pod)["request"]["uid"], "allowed": True}
    assert metric(webhook, 'skipped_total{reason="not-tekton"}') == 1


def test_a_mutated_pod_comes_back_unchanged(webhook: Webhook) -> None:
    conn = webhook.connect()
    pod = tekton_pod()
    once = apply_patch(pod, patch_of(post(conn, review(pod))))
    answer = post(conn, review(once, uid="second"))
    assert answer["response"] == {"uid": "second", "allowed": True}
    assert metric(webhook, 'skipped_total{reason="already-instrumented"}') == 1


class _BrokenOptions:
    """Options whose use fails: the stand-in for a bug in the mutation."""

    native_sidecar = True

    @property
    def inject(self) -> Any:
        raise RuntimeError("boom")


def test_an_internal_error_allows_the_pod_unchanged_and_is_counted(tmp_path: Path) -> None:
    server = Webhook(tmp_path, _BrokenOptions())
    try:
        answer = post(server.connect(), review(tekton_pod(), uid="u"))
        assert answer["response"]["allowed"] is True and answer["response"]["uid"] == "u"
        assert "patch" not in answer["response"]
        assert metric(server, 'errors_total{kind="internal"}') == 1
        assert metric(server, "mutated_total") == 0
    finally:
        server.close()


def test_http_level_errors(webhook: Webhook) -> None:
    conn = webhook.connect()
    assert get(conn, "/healthz") == (200, "ok\n")
    assert get(conn, "/mutate")[0] == 404
    conn.request("POST", "/other", body=b"{}")
    response = conn.getresponse()
    assert (response.status, response.read()) == (404, b"not found\n")
    conn.putrequest("POST", "/mutate")
    conn.putheader("Content-Length", str(64 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and response.getheader("Connection") == "close"
    response.read()
    raw = webhook.connect()
    raw.putrequest("POST", "/mutate", skip_accept_encoding=True)
    raw.endheaders()  # no Content-Length
    response = raw.getresponse()
    assert response.status == 411
    response.read()


def test_plain_http_and_silent_clients_do_not_stop_the_server(webhook: Webhook) -> None:
    plain = socket.create_connection(("127.0.0.1", webhook.server.port), timeout=10)
    plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        reply = plain.recv(100)
    except ConnectionResetError:
        reply = b""
    assert not reply.startswith(b"HTTP/")  # a TLS alert, a reset or nothing: never a plain answer
    plain.close()
    silent = socket.create_connection(("127.0.0.1", webhook.server.port), timeout=10)  # never says hello
    assert get(webhook.connect(), "/healthz") == (200, "ok\n")
    # Served while the silent client's handshake is still pending: its connection is neither answered nor closed.
    silent.setblocking(False)
    with pytest.raises(BlockingIOError):
        silent.recv(1)
    silent.close()
    deadline = time.monotonic() + 10
    while metric(webhook, 'errors_total{kind="tls"}') < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(webhook, 'errors_total{kind="tls"}') == 2
    assert get(webhook.connect(), "/healthz") == (200, "ok\n")


def test_certificate_rotation_without_restart(webhook: Webhook, tmp_path: Path) -> None:
    kept = webhook.connect()
    assert post(kept, review(tekton_pod(), uid="before"))["response"]["uid"] == "before"

    new_ca = trustme.CA()
    staged_cert, staged_key = tmp_path / "new.crt", tmp_path / "new.key"
    write_leaf(new_ca, staged_cert, staged_key)
    # As the kubelet updates a Secret volume: each file replaced atomically.
    os.replace(staged_cert, webhook.cert)
    os.replace(staged_key, webhook.key)

    assert post(webhook.connect(new_ca), review(tekton_pod(), uid="after"))["response"]["uid"] == "after"
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.connect(webhook.ca).request("GET", "/healthz")
    # A connection made before the rotation keeps working (its session is already keyed).
    assert post(kept, review(tekton_pod(), uid="kept"))["response"]["uid"] == "kept"
    assert metric_with(webhook, new_ca, "certificate_reloads_total") == 1


def test_a_half_written_rotation_keeps_the_old_certificate_until_the_pair_matches(webhook: Webhook) -> None:
    new_ca = trustme.CA()
    other = new_ca.issue_cert("127.0.0.1")
    webhook.cert.write_bytes(b"".join(blob.bytes() for blob in other.cert_chain_pems))  # key not yet written
    assert get(webhook.connect(), "/healthz") == (200, "ok\n")  # still the old pair
    webhook.key.write_bytes(other.private_key_pem.bytes())
    assert get(webhook.connect(new_ca), "/healthz") == (200, "ok\n")
    text = get(webhook.connect(new_ca), "/metrics")[1]
    assert "step_tracer_webhook_certificate_reload_failures_total 1" in text
    assert "step_tracer_webhook_certificate_reloads_total 1" in text


def metric_with(webhook: Webhook, ca: trustme.CA, name: str) -> float:
    status, text = get(webhook.connect(ca), "/metrics")
    found = re.search(rf"^step_tracer_webhook_{re.escape(name)} (\S+)$", text, re.M)
    assert status == 200 and found, text
    return float(found.group(1))


def test_the_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_leaf(ca, cert, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    launcher = str(Path(sys.executable).parent / "step-tracer")
    argv = [launcher, "webhook", "--cert", str(cert), "--key", str(key), "--port", "0", "--bind", "127.0.0.1"]
    proc = subprocess.Popen([*argv, "--native-sidecar", "never"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"listening on https://127\.0\.0\.1:(\d+) \(sidecar: container", line)
        assert found, line
        conn = http.client.HTTPSConnection("127.0.0.1", int(found.group(1)), context=client_context(ca), timeout=10)
        pod = tekton_pod()
        patched = apply_patch(pod, patch_of(post(conn, review(pod))))
        assert patched["spec"]["containers"][-1]["name"] == SIDECAR_CONTAINER
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_command_refuses_bad_options(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_leaf(ca, cert, key)
    launcher = str(Path(sys.executable).parent / "step-tracer")
    base = [launcher, "webhook", "--cert", str(cert), "--key", str(key), "--port", "0", "--bind", "127.0.0.1"]
    done = subprocess.run([*base, "--wrapper", "relative/path"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "absolute" in done.stderr
    done = subprocess.run([*base[:-1], "192.0.2.1"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (
        1,
        "step-tracer: --bind 192.0.2.1 --port 0: cannot listen: Cannot assign requested address\n",
    )
    key.write_text("not a key")
    done = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert (
        done.stderr
        == f"step-tracer: --cert {cert} and --key {key}: not a PEM certificate and its matching private key\n"
    )


class _VersionHandler(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str] = []
    minor = "29+"

    def do_GET(self) -> None:
        _VersionHandler.seen_auth.append(self.headers.get("Authorization", ""))
        body = json.dumps({"major": "1", "minor": self.minor, "gitVersion": "v1.29.3"}).encode()
        self.send_response(200 if self.path == "/version" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_auto_reads_the_cluster_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _VersionHandler.minor = "29+"  # managed clusters report minors like this
    ca = trustme.CA()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _VersionHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sa = tmp_path / "sa"
        sa.mkdir()
        (sa / "ca.crt").write_bytes(ca.cert_pem.bytes())
        (sa / "token").write_text("tok\n")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
        assert cluster_version(str(sa)) == (1, 29)
        assert _VersionHandler.seen_auth[-1] == "Bearer tok"
        _VersionHandler.minor = "28"
        assert cluster_version(str(sa)) == (1, 28)
        (sa / "ca.crt").write_bytes(trustme.CA().cert_pem.bytes())  # untrusted server: unknown version
        assert cluster_version(str(sa)) is None
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert cluster_version(str(sa)) is None
    assert [use_native_sidecar("auto", v) for v in [(1, 28), (1, 29), (2, 0), None]] == [False, True, True, True]
    assert use_native_sidecar("never", (1, 30)) is False and use_native_sidecar("always", (1, 20)) is True


DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "webhook"


def _manifests(*names: str) -> dict[str, dict[str, Any]]:
    from ruamel.yaml import YAML

    found: dict[str, dict[str, Any]] = {}
    for name in names:
        for doc in YAML(typ="safe").load_all((DEPLOY / name).read_text()):
            found[doc["kind"]] = doc
    return found


def test_the_manifests_agree_with_the_code_and_each_other() -> None:
    from step_tracer.webhook.cli import webhook as command
    from step_tracer.webhook.mutate import OPT_OUT_KEY, OPT_OUT_VALUES

    m = _manifests(
        "base/deployment.yaml", "base/mutatingwebhook.yaml", "base/rbac.yaml", "cert-manager/certificate.yaml"
    )
    hook = m["MutatingWebhookConfiguration"]["webhooks"][0]
    service, deployment, certificate = m["Service"], m["Deployment"], m["Certificate"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] <= 5 and hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    ref = hook["clientConfig"]["service"]
    assert ref["path"] == "/mutate"
    assert (ref["name"], ref["namespace"]) == (service["metadata"]["name"], service["metadata"]["namespace"])
    assert ref["port"] == service["spec"]["ports"][0]["port"]
    opt_out = [e for e in hook["objectSelector"]["matchExpressions"] if e["key"] == OPT_OUT_KEY]
    assert opt_out and set(opt_out[0]["values"]) == OPT_OUT_VALUES and opt_out[0]["operator"] == "NotIn"

    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:2] == ["step-tracer", "webhook"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in container["command"][2:])
    known = {p.name.replace("_", "-") for p in command.params if p.name}
    assert set(flags) <= known
    port = next(p for p in container["ports"] if p["name"] == service["spec"]["ports"][0]["targetPort"])
    assert port["containerPort"] == int(flags["port"])
    mount = container["volumeMounts"][0]
    assert flags["cert"].startswith(mount["mountPath"] + "/") and flags["key"].startswith(mount["mountPath"] + "/")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert f"{ref['name']}.{ref['namespace']}.svc" in certificate["spec"]["dnsNames"]
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["scheme"] == "HTTPS" and probe["httpGet"]["path"] == "/healthz"
    assert pod["serviceAccountName"] == m["ServiceAccount"]["metadata"]["name"]
    patch = (DEPLOY / "cert-manager" / "kustomization.yaml").read_text()
    certificate_ref = f"{certificate['metadata']['namespace']}/{certificate['metadata']['name']}"
    assert f"cert-manager.io/inject-ca-from: {certificate_ref}" in patch


# Attacks on the transport: each must be contained (bounded memory and threads) while valid reviews still pass.


def tls_socket(webhook: Webhook) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", webhook.server.port), timeout=30)
    return client_context(webhook.ca).wrap_socket(raw, server_hostname="127.0.0.1")


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's own timeout bounds the wait)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


def test_a_body_larger_than_any_pod_is_refused_unread(webhook: Webhook) -> None:
    sock = tls_socket(webhook)
    sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (15 << 20))
    # The start of the 15 MiB: answered without waiting for the rest, so the server may have closed already.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
        sock.sendall(b"{" * 65536)
    answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer
    assert f"at most {MAX_BODY}".encode() in answer
    assert post(webhook.connect(), review(tekton_pod(), uid="after"))["response"]["uid"] == "after"
    assert MAX_BODY >= 3 << 20  # the API server's own limit on a request body: any pod it admits fits


def test_a_pod_at_the_api_servers_limit_is_still_reviewed(webhook: Webhook) -> None:
    pod = tekton_pod()
    pod["metadata"]["annotations"]["big"] = "x" * ((3 << 20) - (64 << 10))
    answer = post(webhook.connect(), review(pod, uid="big"))
    assert answer["response"]["uid"] == "big" and answer["response"]["patch"]


def test_slowloris_and_idle_connections_are_closed_and_reviews_go_on(tmp_path: Path) -> None:
    server = Webhook(tmp_path, limits=Limits(request_timeout=0.5, idle_timeout=0.5, handshake_timeout=0.5))
    try:
        slow = tls_socket(server)
        slow.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
        idle = tls_socket(server)  # handshake done, no request
        silent = socket.create_connection(("127.0.0.1", server.server.port), timeout=30)  # no handshake
        answer = post(server.connect(), review(tekton_pod(), uid="during"))
        assert answer["response"]["uid"] == "during"
        assert closed_by_server(slow) == b"" and closed_by_server(idle) == b"" and closed_by_server(silent) == b""
        assert metric(server, 'errors_total{kind="timeout"}') == 1
        assert metric(server, 'errors_total{kind="idle"}') >= 1  # the idle one, maybe the review's connection too
        assert metric(server, 'errors_total{kind="tls"}') == 1
    finally:
        server.close()


def test_300_idle_tls_connections_make_no_threads_and_do_not_lock_out_the_api_server(webhook: Webhook) -> None:
    threads = threading.active_count()
    idle = [tls_socket(webhook) for _ in range(300)]
    try:
        assert threading.active_count() <= threads + WORKERS
        # Past the cap the connections that waited longest were closed, and a new client (the API server) is served.
        answer = post(webhook.connect(), review(tekton_pod(), uid="still"))
        assert answer["response"]["uid"] == "still"
        assert metric(webhook, 'errors_total{kind="evicted"}') >= 300 - webhook.server.limits.max_connections
        assert closed_by_server(idle[0]) == b""  # the oldest
        assert threading.active_count() <= threads + WORKERS
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST /mutate HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /mutate HTTP/1.1\r\nX: " + b"a" * (70 << 10) + b"\r\n\r\n", 431),
        (b"BREW /mutate HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"POST /mutate\r\n\r\n", 400),
        (b"POST /mutate HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    ],
    ids=["chunked", "huge-headers", "method", "request-line", "two-lengths"],
)
def test_odd_http_is_refused_with_one_status(webhook: Webhook, head: bytes, status: int) -> None:
    sock = tls_socket(webhook)
    sock.sendall(head)
    answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert post(webhook.connect(), review(tekton_pod(), uid="after"))["response"]["uid"] == "after"


def test_an_internal_error_is_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = Webhook(tmp_path, _BrokenOptions())
    try:
        post(server.connect(), review(tekton_pod(), uid="u"))
    finally:
        server.close()
    (record,) = [r for r in caplog.records if "failed; allowed unchanged" in r.getMessage()]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert "RuntimeError: boom at " in record.getMessage()
