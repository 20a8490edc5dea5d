"""Real OTLP trace receivers (HTTP and gRPC) and broken-collector stand-ins for the test suite.

step-tracer has to be proven against what a collector does on the wire, not against a
mock of its own exporter: these receivers speak real HTTP/1.1 (optionally TLS/mTLS) and
real gRPC, decode with opentelemetry-proto, and misbehave on demand the way collectors do
in production (500s, 503s with retry hints, accepting a request and never answering).
"""

# protobuf and googleapis-common-protos ship no type information (types-protobuf is not a dependency).
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import contextlib
import gzip
import http.server
import json
import selectors
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, NamedTuple, Self, Union
from urllib.parse import urlsplit

import grpc
import trustme
from google.protobuf import duration_pb2, json_format
from google.protobuf import message as protobuf_message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

Mode = Literal["ok", "error", "unavailable", "hang"]
MODES: tuple[Mode, ...] = ("ok", "error", "unavailable", "hang")

AttrValue = Union[  # noqa: UP007 (a recursive alias needs the string forward references)
    str, bool, int, float, bytes, None, list["AttrValue"], dict[str, "AttrValue"]
]

TRACES_PATH = "/v1/traces"
_STOP_JOIN_TIMEOUT = 5.0
_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"
_GRPC_INVALID_ARGUMENT = 3
_GRPC_INTERNAL = 13
_GRPC_UNAVAILABLE = 14


class ReceivedEvent(NamedTuple):
    name: str
    time_ns: int
    attributes: dict[str, AttrValue]


class ReceivedLink(NamedTuple):
    trace_id: str
    span_id: str
    trace_state: str
    attributes: dict[str, AttrValue]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it, flattened out of its resource/scope nesting.

    Ids are lowercase hex ("" for an absent parent), enums are the raw OTLP ints, so
    tests compare against the wire format rather than against SDK objects.
    """

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    flags: int
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, AttrValue]
    events: list[ReceivedEvent]
    status_code: int
    status_message: str
    resource: dict[str, AttrValue]
    scope_name: str
    scope_version: str
    links: list[ReceivedLink] = field(default_factory=list)


@dataclass(frozen=True)
class ReceivedRequest:
    """One decoded export request and what the receiver did with it.

    `headers` has lowercase keys (gRPC metadata for the gRPC receiver; binary `-bin`
    values base64-encoded as on the wire). `body` is the payload as it arrived (still
    compressed for HTTP). Only requests with outcome "ok" contribute spans.
    """

    transport: Literal["http", "grpc"]
    outcome: Mode
    headers: dict[str, str]
    content_type: str
    content_encoding: str
    body: bytes
    message: trace_service_pb2.ExportTraceServiceRequest


@dataclass(frozen=True)
class ServerTls:
    """PEM material for a receiver; setting `client_ca_pem` makes client certificates mandatory (mTLS)."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes | None = None


class TlsCA:
    """A throwaway CA with a server cert for 127.0.0.1/localhost and a client cert.

    Nothing is downloaded or shared between runs: trustme mints everything in memory and
    the `write_*` helpers put PEM files under `directory` for clients that want paths.
    """

    CLIENT_IDENTITY: ClassVar[str] = "step-tracer-client.test"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client_cert = self.ca.issue_cert(self.CLIENT_IDENTITY)

    @property
    def ca_pem(self) -> bytes:
        data: bytes = self.ca.cert_pem.bytes()
        return data

    def server_tls(self, *, require_client_cert: bool = False) -> ServerTls:
        return ServerTls(
            cert_chain_pem=_chain(self.server_cert),
            private_key_pem=self.server_cert.private_key_pem.bytes(),
            client_ca_pem=self.ca_pem if require_client_cert else None,
        )

    def write_ca_pem(self) -> Path:
        return self._write("ca.pem", self.ca_pem)

    def write_server_cert(self) -> tuple[Path, Path]:
        """Returns (certificate chain, private key)."""
        return (
            self._write("server.pem", _chain(self.server_cert)),
            self._write("server.key", self.server_cert.private_key_pem.bytes()),
        )

    def write_client_cert(self) -> tuple[Path, Path]:
        """Returns (certificate chain, private key)."""
        return (
            self._write("client.pem", _chain(self.client_cert)),
            self._write("client.key", self.client_cert.private_key_pem.bytes()),
        )

    def grpc_credentials(self, *, client_cert: bool = False) -> grpc.ChannelCredentials:
        """Channel credentials trusting this CA, optionally presenting the client cert."""
        if not client_cert:
            return grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.client_cert.private_key_pem.bytes(),
            certificate_chain=_chain(self.client_cert),
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return path


def _chain(leaf: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


def free_port() -> int:
    """A port that was free a moment ago and has nothing listening: a collector that is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _any_value(value: common_pb2.AnyValue) -> AttrValue:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    result: AttrValue = getattr(value, kind)
    return result


def _attributes(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, AttrValue]:
    return {pair.key: _any_value(pair.value) for pair in pairs}


def flatten(message: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """The spans of one request, each carrying its resource and scope."""
    spans: list[ReceivedSpan] = []
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        trace_state=span.trace_state,
                        flags=span.flags,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=[
                            ReceivedEvent(event.name, event.time_unix_nano, _attributes(event.attributes))
                            for event in span.events
                        ],
                        status_code=span.status.code,
                        status_message=span.status.message,
                        resource=dict(resource),
                        scope_name=scope_spans.scope.name,
                        scope_version=scope_spans.scope.version,
                        links=[
                            ReceivedLink(
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                link.trace_state,
                                _attributes(link.attributes),
                            )
                            for link in span.links
                        ],
                    )
                )
    return spans


def _hex_id_to_base64(obj: dict[str, Any], key: str, length: int, *, optional: bool) -> None:
    """OTLP/JSON carries ids as hex, protobuf's JSON mapping expects base64: translate, strictly.

    Strict on purpose: a 32-digit hex id is also valid base64, so a lenient receiver would
    silently accept a codec that base64-encodes ids.
    """
    if key not in obj:
        if optional:
            return
        raise ValueError(f"missing {key}")
    value = obj[key]
    if not isinstance(value, str) or (value == "" and not optional):
        raise ValueError(f"{key} must be a hex string, got {value!r}")
    if value == "":
        return
    if len(value) != length * 2:
        raise ValueError(f"{key} must be {length * 2} hex digits, got {value!r}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{key} is not hex: {value!r}") from None
    obj[key] = base64.b64encode(raw).decode("ascii")


def parse_otlp_json(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """Decode an OTLP/JSON ExportTraceServiceRequest (lowerCamelCase keys, hex ids)."""
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError("top level must be an object")
    for resource_spans in doc.get("resourceSpans") or []:
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                _hex_id_to_base64(span, "traceId", 16, optional=False)
                _hex_id_to_base64(span, "spanId", 8, optional=False)
                _hex_id_to_base64(span, "parentSpanId", 8, optional=True)
                for link in span.get("links") or []:
                    _hex_id_to_base64(link, "traceId", 16, optional=False)
                    _hex_id_to_base64(link, "spanId", 8, optional=False)
    message = trace_service_pb2.ExportTraceServiceRequest()
    json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    return message


class Receiver:
    """Shared recording and mode logic; subclasses only move bytes.

    Every decoded request is kept (whatever its outcome); spans are recorded only for
    requests that were acknowledged, because a collector that answered 500 kept nothing.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._mode: Mode = "ok"
        self._mode_count: int | None = None
        self._retry_after: float | None = None
        self._stopped = False
        self._request_count = 0
        self._requests: list[ReceivedRequest] = []
        self._spans: list[ReceivedSpan] = []
        self._rejections: list[str] = []
        self._connection_errors: list[str] = []
        self._busy = 0

    # -- configuration ---------------------------------------------------------------

    def set_mode(self, mode: Mode, *, count: int | None = None, retry_after: float | None = None) -> None:
        """Answer the next requests with `mode`; after `count` of them (if given) go back to "ok".

        `retry_after` (seconds) is sent with "unavailable" as Retry-After (HTTP) or a
        google.rpc.RetryInfo trailer (gRPC), which OTLP exporters honour instead of
        their exponential backoff; 0 makes retry tests fast.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        with self._cond:
            self._mode = mode
            self._mode_count = count
            self._retry_after = retry_after

    @property
    def mode(self) -> Mode:
        with self._cond:
            return self._mode

    # -- observations ----------------------------------------------------------------

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return list(self._spans)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every decoded request, including ones answered with an error or left hanging."""
        with self._cond:
            return list(self._requests)

    @property
    def accepted_requests(self) -> list[ReceivedRequest]:
        with self._cond:
            return [request for request in self._requests if request.outcome == "ok"]

    @property
    def request_count(self) -> int:
        """Export requests that reached the handler, decodable or not."""
        with self._cond:
            return self._request_count

    @property
    def rejections(self) -> list[str]:
        """Why requests were refused before decoding (wrong path, content type, bad payload)."""
        with self._cond:
            return list(self._rejections)

    @property
    def connection_errors(self) -> list[str]:
        """Transport failures seen while running (e.g. a TLS handshake without a client cert)."""
        with self._cond:
            return list(self._connection_errors)

    def spans_named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    def clear(self) -> None:
        with self._cond:
            self._request_count = 0
            self._requests.clear()
            self._spans.clear()
            self._rejections.clear()
            self._connection_errors.clear()

    def wait_for_spans(self, n: int = 1, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Block until at least `n` spans were accepted; fail the test with what did arrive."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._spans) >= n, timeout):
                raise AssertionError(
                    f"expected >= {n} span(s) within {timeout}s, got {len(self._spans)}: "
                    f"{[span.name for span in self._spans]}; requests={self._request_count}, "
                    f"outcomes={[request.outcome for request in self._requests]}, "
                    f"rejections={self._rejections}, connection_errors={self._connection_errors}"
                )
            return list(self._spans)

    def wait_for_requests(self, n: int = 1, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until `n` export requests arrived (in any mode); returns the decoded ones."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._request_count >= n, timeout):
                raise AssertionError(
                    f"expected >= {n} request(s) within {timeout}s, got {self._request_count}; "
                    f"rejections={self._rejections}, connection_errors={self._connection_errors}"
                )
            return list(self._requests)

    # -- used by the transports ------------------------------------------------------

    def _arrived(self) -> None:
        with self._cond:
            self._request_count += 1
            self._cond.notify_all()

    def _reject(self, reason: str) -> None:
        with self._cond:
            self._rejections.append(reason)
            self._cond.notify_all()

    def _connection_error(self, reason: str) -> None:
        with self._cond:
            if not self._stopped:
                self._connection_errors.append(reason)

    def _admit(
        self,
        transport: Literal["http", "grpc"],
        headers: dict[str, str],
        content_type: str,
        content_encoding: str,
        body: bytes,
        message: trace_service_pb2.ExportTraceServiceRequest,
    ) -> tuple[Mode, float | None]:
        """Pick this request's outcome and record it in one step, so counted modes are exact."""
        with self._cond:
            outcome = self._mode
            retry_after = self._retry_after
            if self._mode_count is not None:
                self._mode_count -= 1
                if self._mode_count == 0:
                    self._mode, self._mode_count, self._retry_after = "ok", None, None
            self._requests.append(
                ReceivedRequest(transport, outcome, headers, content_type, content_encoding, body, message)
            )
            if outcome == "ok":
                self._spans.extend(flatten(message))
            self._cond.notify_all()
            return outcome, retry_after

    def _hang(self, released: Callable[[], bool] | None = None) -> None:
        """Park a handler until the receiver stops (or `released` says the call is gone)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or (released is not None and released()))

    def _release_all(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @contextlib.contextmanager
    def _handling(self) -> Iterator[None]:
        with self._cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def _wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)

    def _stuck(self) -> AssertionError:
        """Teardown fails loudly instead of hanging when a handler ignores stop()."""
        with self._cond:
            busy = self._busy
        return AssertionError(f"{busy} export handler(s) still running {_STOP_JOIN_TIMEOUT}s after stop()")

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------
# OTLP/HTTP


class _HttpServer(http.server.ThreadingHTTPServer):
    """Tracks every connection so stop() can cut idle keep-alive and hung ones loose."""

    def __init__(self, receiver: HttpReceiver, ssl_context: ssl.SSLContext | None) -> None:
        self.receiver = receiver
        self.ssl_context = ssl_context
        self._conn_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", 0), _HttpHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN, which can stall on a slow resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = host
        self.server_port = port

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the handler thread, so a client that stalls in it
            # cannot block the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="otlp-http-receiver-conn",
            daemon=True,
        )
        with self._conn_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.receiver._connection_error(f"{type(exc).__name__}: {exc}")

    def cut_connections(self) -> list[threading.Thread]:
        with self._conn_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            # The plain-socket shutdown: SSLSocket.shutdown would tear down the SSL
            # object under a thread that may be reading from it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return [thread for _, thread in connections]


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        with self.server.receiver._handling():
            self._export()

    def _export(self) -> None:
        receiver = self.server.receiver
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        if path != TRACES_PATH:
            receiver._reject(f"404 POST {self.path}")
            self._reply(404, b"not found\n", "text/plain")
            return
        receiver._arrived()
        headers = {key.lower(): value for key, value in self.headers.items()}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        encoding = headers.get("content-encoding", "").strip().lower()
        is_json = content_type == "application/json"
        if content_type not in ("application/x-protobuf", "application/json"):
            receiver._reject(f"415 content-type {content_type!r}")
            self._reply_status(415, _GRPC_INVALID_ARGUMENT, f"unsupported content type {content_type!r}", is_json=False)
            return
        try:
            payload = _decompress(body, encoding)
            if is_json:
                message = parse_otlp_json(payload)
            else:
                message = trace_service_pb2.ExportTraceServiceRequest()
                message.ParseFromString(payload)
        except (ValueError, OSError, EOFError, zlib.error, json_format.ParseError, protobuf_message.DecodeError) as exc:
            receiver._reject(f"400 {type(exc).__name__}: {exc}")
            self._reply_status(400, _GRPC_INVALID_ARGUMENT, f"cannot decode request: {exc}", is_json=is_json)
            return
        outcome, retry_after = receiver._admit("http", headers, content_type, encoding, body, message)
        if outcome == "ok":
            response = trace_service_pb2.ExportTraceServiceResponse()
            if is_json:
                self._reply(200, json_format.MessageToJson(response).encode(), "application/json")
            else:
                self._reply(200, response.SerializeToString(), "application/x-protobuf")
        elif outcome == "error":
            self._reply_status(500, _GRPC_INTERNAL, "receiver in error mode", is_json=is_json)
        elif outcome == "unavailable":
            extra = [] if retry_after is None else [("Retry-After", f"{retry_after:g}")]
            self._reply_status(503, _GRPC_UNAVAILABLE, "receiver unavailable", is_json=is_json, extra=extra)
        else:
            receiver._hang()
            self.close_connection = True

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            self.server.receiver._reject("411 no Content-Length")
            self._reply(411, b"length required\n", "text/plain")
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _reply_status(
        self,
        code: int,
        grpc_code: int,
        message: str,
        *,
        is_json: bool,
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Error bodies are google.rpc.Status, as the OTLP/HTTP spec requires."""
        status = status_pb2.Status(code=grpc_code, message=message)
        if is_json:
            self._reply(code, json_format.MessageToJson(status).encode(), "application/json", extra)
        else:
            self._reply(code, status.SerializeToString(), "application/x-protobuf", extra)

    def _reply(self, code: int, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def _server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain only takes paths.
    with tempfile.TemporaryDirectory(prefix="otlp-receiver-") as directory:
        path = Path(directory, "server.pem")
        path.write_bytes(tls.private_key_pem + tls.cert_chain_pem)
        context.load_cert_chain(path)
    if tls.client_ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=tls.client_ca_pem.decode("ascii"))
    context.set_alpn_protocols(["http/1.1"])
    return context


class HttpReceiver(Receiver):
    """OTLP/HTTP on 127.0.0.1:<ephemeral>, POST /v1/traces, protobuf or JSON, gzip/deflate."""

    def __init__(self, tls: ServerTls | None = None) -> None:
        super().__init__()
        self.tls = tls
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    def start(self) -> Self:
        if self._server is not None:
            return self
        context = _server_ssl_context(self.tls) if self.tls is not None else None
        self._server = _HttpServer(self, context)
        self._port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-http-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung handlers, close every connection and wait (bounded) for the threads."""
        self._release_all()
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        thread.join(_STOP_JOIN_TIMEOUT)
        handlers = server.cut_connections()
        idle = self._wait_idle(_STOP_JOIN_TIMEOUT)
        if idle:
            for handler in handlers:
                handler.join(_STOP_JOIN_TIMEOUT)
        server.server_close()
        if not idle:
            raise self._stuck()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("receiver not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """Base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        """Signal URL, as in OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""
        return self.endpoint + TRACES_PATH


# ---------------------------------------------------------------------------------------
# OTLP/gRPC


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: GrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        return self._receiver._export(request, context)


def _metadata_value(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


class GrpcReceiver(Receiver):
    """OTLP/gRPC TraceService on 127.0.0.1:<ephemeral>, optionally TLS or mTLS."""

    def __init__(self, tls: ServerTls | None = None, max_workers: int = 16) -> None:
        super().__init__()
        self.tls = tls
        self._max_workers = max_workers
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._port = 0

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="otlp-grpc-receiver")
        server = grpc.server(self._executor, options=[("grpc.so_reuseport", 0)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)  # type: ignore[no-untyped-call]
        if self.tls is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.private_key_pem, self.tls.cert_chain_pem)],
                root_certificates=self.tls.client_ca_pem,
                require_client_auth=self.tls.client_ca_pem is not None,
            )
            port = server.add_secure_port("127.0.0.1:0", credentials)
        if not port:
            raise RuntimeError("gRPC receiver could not bind 127.0.0.1:0")
        self._port = int(port)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Release hung handlers, abort in-flight RPCs and wait (bounded) for the workers."""
        self._release_all()
        server, executor = self._server, self._executor
        if server is None or executor is None:
            return
        self._server = self._executor = None
        server.stop(grace=None).wait(_STOP_JOIN_TIMEOUT)
        idle = self._wait_idle(_STOP_JOIN_TIMEOUT)
        executor.shutdown(wait=idle, cancel_futures=True)
        if not idle:
            raise self._stuck()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("receiver not started")
        return self._port

    @property
    def target(self) -> str:
        """host:port, for grpc.insecure_channel / grpc.secure_channel."""
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """As in OTEL_EXPORTER_OTLP_ENDPOINT; the scheme tells the SDK exporter whether to use TLS."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.target}"

    def _export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._handling():
            return self._answer(request, context)

    def _answer(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._arrived()
        headers = {key.lower(): _metadata_value(value) for key, value in context.invocation_metadata()}
        outcome, retry_after = self._admit(
            "grpc",
            headers,
            "application/grpc",
            headers.get("grpc-encoding", ""),
            request.SerializeToString(),
            request,
        )
        if outcome == "ok":
            return trace_service_pb2.ExportTraceServiceResponse()
        if outcome == "error":
            context.abort(grpc.StatusCode.INTERNAL, "receiver in error mode")
        if outcome == "unavailable":
            if retry_after is not None:
                delay = duration_pb2.Duration()
                delay.FromNanoseconds(int(retry_after * 1e9))
                info = error_details_pb2.RetryInfo(retry_delay=delay)
                context.set_trailing_metadata(((_RETRY_INFO_KEY, info.SerializeToString()),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "receiver unavailable")
        call_over = False

        def on_call_over() -> None:
            # grpc runs termination callbacks outside its own locks, so taking ours is safe.
            nonlocal call_over
            with self._cond:
                call_over = True
                self._cond.notify_all()

        if context.add_callback(on_call_over):
            self._hang(lambda: call_over)
        context.abort(grpc.StatusCode.UNAVAILABLE, "receiver stopped")
        raise AssertionError("unreachable: context.abort raises")


# ---------------------------------------------------------------------------------------
# Broken collectors


class Blackhole:
    """Accepts TCP connections and never reads or answers: a collector wedged after accept()."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._cond = threading.Condition()
        self._connections: list[socket.socket] = []
        self._count = 0
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otlp-blackhole", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_r:
                    return
                try:
                    conn, _address = self._listener.accept()
                except OSError:
                    continue
                with self._cond:
                    self._connections.append(conn)
                    self._count += 1
                    self._cond.notify_all()

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.endpoint + TRACES_PATH

    @property
    def connection_count(self) -> int:
        with self._cond:
            return self._count

    def wait_for_connections(self, n: int = 1, timeout: float = 10.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: self._count >= n, timeout):
                raise AssertionError(f"expected >= {n} connection(s) within {timeout}s, got {self._count}")
            return self._count

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(_STOP_JOIN_TIMEOUT)
        with self._cond:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = [
    "MODES",
    "TRACES_PATH",
    "AttrValue",
    "Blackhole",
    "GrpcReceiver",
    "HttpReceiver",
    "Mode",
    "ReceivedEvent",
    "ReceivedLink",
    "ReceivedRequest",
    "ReceivedSpan",
    "Receiver",
    "ServerTls",
    "TlsCA",
    "flatten",
    "free_port",
    "parse_otlp_json",
]
