"""The HTTPS side of the webhook: AdmissionReview in, AdmissionReview out, never a rejection.

Endpoints: `POST /mutate` (admission.k8s.io/v1 AdmissionReview), `GET /healthz`, `GET /metrics` (Prometheus text).
Every review that can be read is answered `allowed: true`; an internal error or a review we do not understand
gets `allowed: true` without a patch and is counted. The API server keeps connections alive, so the TLS handshake
is paid once per connection, in that connection's thread (a slow client cannot stall the accept loop).
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any

from step_tracer.webhook.mutate import Mutation, WebhookOptions, mutate
from step_tracer.webhook.tls import ReloadingContext

log = logging.getLogger(__name__)

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
MAX_BODY = 16 << 20  # a pod is at most ~1.5 MiB in etcd; a review carries it (and maybe oldObject) as JSON
HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 60.0
LATENCY_WINDOW = 4096


class Metrics:
    """Counters and the review-time quantiles over the last LATENCY_WINDOW reviews."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reviews = 0
        self.mutated = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter({"internal": 0, "malformed": 0, "tls": 0})
        self.steps: collections.Counter[str] = collections.Counter({"wrapped": 0, "already": 0, "unwrapped": 0})
        self._durations: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._duration_sum = 0.0
        self._duration_count = 0

    def review(self) -> None:
        with self._lock:
            self.reviews += 1

    def skip(self, reason: str) -> None:
        with self._lock:
            self.skipped[reason] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def record(self, mutation: Mutation) -> None:
        with self._lock:
            if mutation.patch:
                self.mutated += 1
            else:
                self.skipped[mutation.skipped] += 1
            self.steps.update(s.state for s in mutation.steps)

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._durations.append(seconds)
            self._duration_sum += seconds
            self._duration_count += 1

    def render(self, tls: ReloadingContext | None = None) -> str:
        p = "step_tracer_webhook_"
        with self._lock:
            window = sorted(self._durations)
            lines = [
                f"# HELP {p}reviews_total AdmissionReviews received on /mutate.",
                f"# TYPE {p}reviews_total counter",
                f"{p}reviews_total {self.reviews}",
                f"# HELP {p}mutated_total Pods patched.",
                f"# TYPE {p}mutated_total counter",
                f"{p}mutated_total {self.mutated}",
                f"# HELP {p}skipped_total Reviews allowed without a patch, by reason.",
                f"# TYPE {p}skipped_total counter",
                *(f'{p}skipped_total{{reason="{k}"}} {v}' for k, v in sorted(self.skipped.items())),
                f"# HELP {p}errors_total Internal errors and bad reviews (allowed unchanged), failed handshakes.",
                f"# TYPE {p}errors_total counter",
                *(f'{p}errors_total{{kind="{k}"}} {v}' for k, v in sorted(self.errors.items())),
                f"# HELP {p}steps_total Step containers seen in patched pods, by outcome.",
                f"# TYPE {p}steps_total counter",
                *(f'{p}steps_total{{state="{k}"}} {v}' for k, v in sorted(self.steps.items())),
                f"# HELP {p}review_seconds Time to answer one review (decode, mutate, encode).",
                f"# TYPE {p}review_seconds summary",
                *(f'{p}review_seconds{{quantile="{q}"}} {_quantile(window, q):.6f}' for q in (0.5, 0.9, 0.99)),
                f"{p}review_seconds_sum {self._duration_sum:.6f}",
                f"{p}review_seconds_count {self._duration_count}",
            ]
        if tls is not None:
            lines += [
                f"# HELP {p}certificate_reloads_total Serving certificate reloads after the files changed.",
                f"# TYPE {p}certificate_reloads_total counter",
                f"{p}certificate_reloads_total {tls.reloads}",
                f"{p}certificate_reload_failures_total {tls.failures}",
            ]
        return "\n".join(lines) + "\n"


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def review(body: bytes, options: WebhookOptions, metrics: Metrics) -> dict[str, Any]:
    """The AdmissionReview to send back for `body`. Always allowed; never raises."""
    metrics.review()
    api_version, uid = REVIEW_VERSIONS[0], ""
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("apiVersion") in REVIEW_VERSIONS:
            api_version = doc["apiVersion"]
        request = doc.get("request")
        if not isinstance(request, dict):
            raise ValueError("no request")
        if isinstance(request.get("uid"), str):
            uid = request["uid"]
        if doc.get("kind") != "AdmissionReview" or doc.get("apiVersion") not in REVIEW_VERSIONS or not uid:
            raise ValueError("not an admission.k8s.io AdmissionReview with a request uid")
    except (ValueError, RecursionError) as err:
        metrics.error("malformed")
        log.warning("malformed AdmissionReview (allowed unchanged): %s", err)
        return _answer(api_version, uid, message=f"step-tracer: malformed AdmissionReview: {err}")

    if (
        request.get("operation") != "CREATE"
        or not _is_pod(request.get("kind"))
        or request.get("subResource")
        or not isinstance(request.get("object"), dict)
    ):
        metrics.skip("not-pod-create")
        return _answer(api_version, uid)
    pod = request["object"]
    try:
        mutation = mutate(pod, options)
        answer = _answer(api_version, uid, patch=mutation.patch)
    except Exception:
        metrics.error("internal")
        log.exception("mutating pod %s failed; allowed unchanged", _pod_name(request))
        return _answer(api_version, uid, message="step-tracer: internal error, pod left unchanged")
    metrics.record(mutation)
    if mutation.patch:
        wrapped = sum(s.state == "wrapped" for s in mutation.steps)
        log.info(
            "instrumented pod %s: %d/%d steps wrapped, %s sidecar",
            _pod_name(request),
            wrapped,
            len(mutation.steps),
            "native" if mutation.native_sidecar else "container",
        )
        for s in mutation.steps:
            if s.state == "unwrapped":
                log.info("pod %s: %s not wrapped: %s", _pod_name(request), s.container, s.reason)
    else:
        log.debug("pod %s left alone: %s", _pod_name(request), mutation.skipped)
    return answer


def _answer(
    api_version: str, uid: str, *, patch: list[dict[str, Any]] | None = None, message: str = ""
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if message:
        response["status"] = {"message": message}
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def _is_pod(kind: Any) -> bool:
    return isinstance(kind, dict) and (kind.get("group"), kind.get("version"), kind.get("kind")) == ("", "v1", "Pod")


def _pod_name(request: dict[str, Any]) -> str:
    pod = request.get("object")
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") or request.get("name") or meta.get("generateName") or "?"
    return f"{request.get('namespace') or meta.get('namespace') or '?'}/{name}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the API server reuses its connections
    server_version = "step-tracer-webhook"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: WebhookServer

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._send(411, b"Content-Length required\n")
            return
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(413, b"request too large\n")
            return
        body = self.rfile.read(length)  # read even when unwanted: the connection stays usable
        if len(body) < length:
            self.close_connection = True
            return
        if self.path.partition("?")[0] != "/mutate":  # the API server appends ?timeout=...
            self._send(404, b"not found\n")
            return
        start = time.perf_counter()
        out = json.dumps(review(body, self.server.options, self.server.metrics), separators=(",", ":")).encode()
        self.server.metrics.observe(time.perf_counter() - start)
        self._send(200, out, "application/json")

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/metrics":
            text = self.server.metrics.render(self.server.tls)
            self._send(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class WebhookServer(ThreadingHTTPServer):
    """One thread per connection; TLS is set up in that thread with the context current at accept time."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        tls: ReloadingContext,
        options: WebhookOptions,
        metrics: Metrics | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.tls = tls
        self.options = options
        self.metrics = metrics or Metrics()
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip we do not need.
        TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = self.tls.context().wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as err:
            self.metrics.error("tls")
            log.debug("TLS handshake with %s failed: %s", client_address, err)
            return
        try:
            _Handler(conn, client_address, self)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-request; the review itself never raises.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)
