"""The HTTPS side of the webhook: AdmissionReview in, AdmissionReview out, never a rejection.

Endpoints: `POST /mutate` (admission.k8s.io/v1 AdmissionReview), `GET /healthz`, `GET /metrics` (Prometheus text).
Every review that can be read is answered `allowed: true`; an internal error or a review we do not understand
gets `allowed: true` without a patch and is counted. The API server keeps connections alive, so the TLS handshake
is paid once per connection. Nothing a client sends can make the server hold unbounded memory or threads (see
WebhookServer for the bounds); every error is one log line.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from step_tracer.webhook.mutate import Mutation, WebhookOptions, mutate
from step_tracer.webhook.tls import ReloadingContext

log = logging.getLogger(__name__)

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
# The API server refuses request bodies over 3 MiB (apiserver MaxRequestBodyBytes), so no pod it admits is larger;
# the review adds the envelope (uid, kind, userInfo with its groups, options). Larger bodies are refused unread.
MAX_BODY = (3 << 20) + (256 << 10)
MAX_HEADER_BYTES = 64 << 10
# Reviews decoded and mutated at once: each holds a body and its decoded JSON (several times its size), and the
# Deployment's memory limit is 128 MiB. A review takes ~2 ms, so two workers answer ~1000 reviews a second.
WORKERS = 2
# Open connections. The API servers keep a few each; past this, the one waiting longest on its client is closed.
# Each costs asyncio's 256 KiB TLS read buffer: 64 of them are 16 MiB of the Deployment's 128 MiB.
MAX_CONNECTIONS = 64
HANDSHAKE_TIMEOUT = 5.0
# A request must arrive whole within this of its first byte: slow senders (slowloris) are closed.
REQUEST_TIMEOUT = 10.0
# An idle kept-alive connection is closed after this; longer than Go's 90 s idle timeout (the API server's
# client), so the client closes first and never sends a review into a connection we are closing.
IDLE_TIMEOUT = 120.0
LATENCY_WINDOW = 4096
SERVER_NAME = "step-tracer-webhook"


class Metrics:
    """Counters and the review-time quantiles over the last LATENCY_WINDOW reviews."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reviews = 0
        self.mutated = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter(
            {"internal": 0, "malformed": 0, "tls": 0, "refused": 0, "evicted": 0, "timeout": 0, "idle": 0}
        )
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
                f"# HELP {p}errors_total Internal errors and bad reviews (allowed unchanged), failed handshakes, "
                "connections refused or closed by a bound (refused, evicted, timeout, idle).",
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
    except Exception as err:
        metrics.error("internal")
        log.error("mutating pod %s failed; allowed unchanged: %s", _pod_name(request), _one_line(err))
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


def _one_line(err: BaseException) -> str:
    """The error and where it was raised, in one log line (a traceback would be many)."""
    frame = err.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = f" at {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}" if frame is not None else ""
    return f"{type(err).__name__}: {err}{where}"


def _is_pod(kind: Any) -> bool:
    return isinstance(kind, dict) and (kind.get("group"), kind.get("version"), kind.get("kind")) == ("", "v1", "Pod")


def _pod_name(request: dict[str, Any]) -> str:
    pod = request.get("object")
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") or request.get("name") or meta.get("generateName") or "?"
    return f"{request.get('namespace') or meta.get('namespace') or '?'}/{name}"


@dataclass(frozen=True)
class Limits:
    """The server's bounds (module constants by default; tests shorten the timeouts instead of sleeping)."""

    max_connections: int = MAX_CONNECTIONS
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    version: str


class _HttpError(Exception):
    """An answer that ends the connection: `code` and a one-line reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout"}
_REASONS |= {411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large"}
_REASONS |= {501: "Not Implemented", 503: "Service Unavailable"}


class WebhookServer:
    """HTTPS on one asyncio loop (the thread that calls serve_forever) plus WORKERS threads for the reviews.

    Connections cost a coroutine, not a thread: 300 idle clients make no threads. Bounded everywhere a client
    could make us hold something: MAX_CONNECTIONS open (past it the connection waiting longest on its client is
    closed, or, when all are mid-request, the new one), the TLS handshake within HANDSHAKE_TIMEOUT, idle
    kept-alive connections closed after IDLE_TIMEOUT, each request (headers and body) whole within
    REQUEST_TIMEOUT of its first byte (slowloris), headers up to MAX_HEADER_BYTES, bodies up to MAX_BODY (a
    larger Content-Length is answered 413 without reading the body), at most WORKERS bodies held at a time.
    The certificate is taken from `tls` for every new connection (rotation without restart).
    """

    def __init__(
        self,
        address: tuple[str, int],
        tls: ReloadingContext,
        options: WebhookOptions,
        metrics: Metrics | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.tls = tls
        self.options = options
        self.metrics = metrics or Metrics()
        self.limits = limits or Limits()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.connections = 0  # open connections (the loop's thread only)
        self._waiting: dict[int, asyncio.StreamWriter] = {}  # waiting on their client, longest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopped = threading.Event()
        self._stopped.set()
        self._workers = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="webhook-review")

    @property
    def port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown() (from another thread). `poll_interval` is accepted for socketserver's API."""
        self._stopped.clear()
        try:
            asyncio.run(self._serve())
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever and wait for it to return."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._stopped.wait()

    def server_close(self) -> None:
        self.socket.close()
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._bodies = asyncio.Semaphore(WORKERS)
        server = await asyncio.start_server(self._connection, sock=self.socket, limit=MAX_HEADER_BYTES)
        try:
            await self._stop.wait()
        finally:
            server.close()
            self._loop = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self.connections >= self.limits.max_connections and not self._evict_one():
            self.metrics.error("refused")
            log.warning("connection from %s refused: %d connections open, all busy", peer, self.connections)
            writer.transport.abort()
            return
        self.connections += 1
        key = id(writer)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._waiting[key] = writer
            try:
                await writer.start_tls(self.tls.context(), ssl_handshake_timeout=self.limits.handshake_timeout)
            except OSError as err:  # ssl.SSLError, ConnectionError and TimeoutError included
                self.metrics.error("tls")
                log.debug("TLS handshake with %s failed: %s", peer, err or type(err).__name__)
                return
            await self._requests(reader, writer, peer, key)
        except asyncio.CancelledError:
            pass  # shutting down: the connection just closes
        finally:
            self._waiting.pop(key, None)
            self.connections -= 1
            writer.transport.abort()

    def _evict_one(self) -> bool:
        """Make room by closing the connection that has waited longest on its client (handshake or next request).

        Idle kept-alive connections are cheap but capped; an attacker holding them all must not lock the API
        server out, and an API server whose idle connection is closed just opens a new one.
        """
        for key, writer in self._waiting.items():
            del self._waiting[key]
            self.metrics.error("evicted")
            writer.transport.abort()
            return True
        return False

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Any, key: int) -> None:
        """Kept-alive requests on one connection, until the client closes, asks to, or breaks a bound."""
        while True:
            self._waiting[key] = writer
            try:
                first = await asyncio.wait_for(reader.read(1), self.limits.idle_timeout)
            except TimeoutError:
                self.metrics.error("idle")
                log.debug("idle connection from %s closed after %.0f s", peer, self.limits.idle_timeout)
                return
            except (OSError, asyncio.IncompleteReadError):
                return
            finally:
                self._waiting.pop(key, None)
            if not first:
                return  # closed by the client (or evicted)
            try:
                keep = await asyncio.wait_for(self._one(first, reader, writer), self.limits.request_timeout)
            except TimeoutError:
                self.metrics.error("timeout")
                limit = self.limits.request_timeout
                log.warning("connection from %s closed: no whole request within %.0f s", peer, limit)
                return
            except _HttpError as err:
                log.warning("request from %s refused (HTTP %d): %s", peer, err.code, err)
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(self._send(writer, err.code, f"{err}\n".encode(), close=True), 5)
                return
            except (OSError, asyncio.IncompleteReadError) as err:
                log.debug("connection from %s ended: %s", peer, err or type(err).__name__)
                return
            if not keep:
                return

    async def _one(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read and answer one request (its first byte read); False when the connection should close."""
        request = await _read_head(first, reader)
        close = request.headers.get("connection", "").lower() == "close" or request.version == "HTTP/1.0"
        path = request.path.partition("?")[0]
        if request.method == "GET":
            if path == "/healthz":
                await self._send(writer, 200, b"ok\n", close=close)
            elif path == "/metrics":
                text = self.metrics.render(self.tls).encode()
                await self._send(writer, 200, text, "text/plain; version=0.0.4; charset=utf-8", close=close)
            else:
                await self._send(writer, 404, b"not found\n", close=close)
            return not close
        if request.method != "POST":
            raise _HttpError(405, f"method {request.method} not allowed")
        if "transfer-encoding" in request.headers:
            raise _HttpError(411, "Content-Length required (no chunked bodies)")
        try:
            length = int(request.headers["content-length"])
        except (KeyError, ValueError):
            raise _HttpError(411, "Content-Length required") from None
        if length < 0 or length > MAX_BODY:
            raise _HttpError(413, f"request too large: {length} bytes, at most {MAX_BODY}")
        async with self._bodies:
            body = await reader.readexactly(length)
            if path != "/mutate":  # the API server appends ?timeout=...
                await self._send(writer, 404, b"not found\n", close=close)
                return not close
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self._workers, self._review, body)
            del body
        await self._send(writer, 200, out, "application/json", close=close)
        return not close

    def _review(self, body: bytes) -> bytes:
        start = time.perf_counter()
        out = json.dumps(review(body, self.options, self.metrics), separators=(",", ":")).encode()
        self.metrics.observe(time.perf_counter() - start)
        return out

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        close: bool = False,
    ) -> None:
        head = [
            f"HTTP/1.1 {code} {_REASONS.get(code, '')}",
            f"Server: {SERVER_NAME}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(["Connection: close"] if close else []),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


async def _read_head(first: bytes, reader: asyncio.StreamReader) -> _Request:
    """The request line and headers."""
    try:
        raw = first + await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _HttpError(431, f"request headers larger than {MAX_HEADER_BYTES} bytes") from None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "transfer-encoding"):
            raise _HttpError(400, f"repeated {name} header")
        headers[key] = value.strip()
    return _Request(parts[0], parts[1], headers, parts[2])
