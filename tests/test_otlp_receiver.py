"""The test receivers accept what the OpenTelemetry SDK's own OTLP exporters send, and misbehave on cue.

Every other export test trusts these receivers, so they are checked against an
independent client: the upstream OTLPSpanExporter for http/protobuf and gRPC.
"""

# googleapis-common-protos ships no type information.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from tests.otlp_receiver import (
    AttrValue,
    Blackhole,
    GrpcReceiver,
    HttpReceiver,
    ReceivedEvent,
    ReceivedLink,
    ReceivedSpan,
    TlsCA,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("clean_client_env")]

PARENT_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_SPAN_ID = 0xB7AD6B7169203331
LINK_TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
LINK_SPAN_ID = 0xEEE19B7EC3C1B174
ATTRIBUTES: dict[str, AttrValue] = {
    "str": "value",
    "empty": "",
    "bool": True,
    "false": False,
    "int": -42,
    "big_int": 2**62,
    "float": 1.5,
    "str_list": ["a", "b"],
    "bool_list": [True, False],
    "int_list": [1, 0, -3],
    "float_list": [0.5, 2.25],
}
# Long enough that a receiver which never answers is the only way to reach it.
CLIENT_PATIENCE = 30.0
BOUND = 10.0


def make_spans() -> Sequence[ReadableSpan]:
    """One finished span exercising every field the receiver flattens."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test", "k8s.pod.name": "pod-1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("receiver-test-scope", "1.2.3")
    remote_parent = SpanContext(
        PARENT_TRACE_ID,
        PARENT_SPAN_ID,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque")]),
    )
    linked = SpanContext(LINK_TRACE_ID, LINK_SPAN_ID, is_remote=False)
    with tracer.start_as_current_span(
        "step",
        context=set_span_in_context(NonRecordingSpan(remote_parent)),
        kind=SpanKind.CLIENT,
        attributes=ATTRIBUTES,
        links=[Link(linked, {"link.reason": "retry-of"})],
    ) as span:
        span.add_event("started", {"attempt": 1, "phase": "run"})
        span.set_status(Status(StatusCode.ERROR, "exit code 3"))
    provider.shutdown()
    return memory.get_finished_spans()


def typed(value: AttrValue) -> object:
    """Attribute value with its types spelled out, since True == 1 and 1 == 1.0 in Python."""
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def assert_round_trip(received: ReceivedSpan, sent: ReadableSpan) -> None:
    assert sent.context is not None
    assert received.name == "step"
    assert received.trace_id == f"{PARENT_TRACE_ID:032x}"
    assert received.span_id == f"{sent.context.span_id:016x}"
    assert received.parent_span_id == f"{PARENT_SPAN_ID:016x}"
    assert received.trace_state == "vendor=opaque"
    assert received.flags & 0x300 == 0x300  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | IS_REMOTE
    assert received.kind == 3  # SPAN_KIND_CLIENT
    assert (received.start_ns, received.end_ns) == (sent.start_time, sent.end_time)
    assert {key: typed(value) for key, value in received.attributes.items()} == {
        key: typed(value) for key, value in ATTRIBUTES.items()
    }
    assert received.events == [ReceivedEvent("started", sent.events[0].timestamp, {"attempt": 1, "phase": "run"})]
    assert received.links == [
        ReceivedLink(f"{LINK_TRACE_ID:032x}", f"{LINK_SPAN_ID:016x}", "", {"link.reason": "retry-of"})
    ]
    assert (received.status_code, received.status_message) == (2, "exit code 3")
    assert received.resource["service.name"] == "receiver-test"
    assert received.resource["k8s.pod.name"] == "pod-1"
    assert (received.scope_name, received.scope_version) == ("receiver-test-scope", "1.2.3")


def export(exporter: SpanExporter, spans: Sequence[ReadableSpan] | None = None) -> SpanExportResult:
    try:
        return exporter.export(make_spans() if spans is None else spans)
    finally:
        exporter.shutdown()


def bounded_export(exporter: SpanExporter) -> SpanExportResult:
    started = time.monotonic()
    result = export(exporter)
    assert time.monotonic() - started < BOUND
    return result


def post(url: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_PATIENCE) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


# -- round trips -----------------------------------------------------------------------


def test_http_protobuf_round_trip(http_receiver: HttpReceiver) -> None:
    sent = make_spans()
    exporter = HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=5, headers={"Authorization": "Bearer t0ken"})

    assert export(exporter, sent) is SpanExportResult.SUCCESS

    [received] = http_receiver.wait_for_spans(1)
    assert_round_trip(received, sent[0])
    [request] = http_receiver.requests
    assert (request.transport, request.outcome, request.content_type) == (
        "http",
        "ok",
        "application/x-protobuf",
    )
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.message == trace_service_pb2.ExportTraceServiceRequest.FromString(request.body)
    assert http_receiver.request_count == 1
    assert http_receiver.rejections == []


@pytest.mark.parametrize("compression", [HttpCompression.Gzip, HttpCompression.Deflate])
def test_http_compressed_bodies_are_decoded(http_receiver: HttpReceiver, compression: HttpCompression) -> None:
    exporter = HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=5, compression=compression)

    assert export(exporter) is SpanExportResult.SUCCESS

    [request] = http_receiver.requests
    assert request.content_encoding == compression.value
    assert request.body != request.message.SerializeToString()
    assert [span.name for span in http_receiver.wait_for_spans(1)] == ["step"]


def test_grpc_round_trip(grpc_receiver: GrpcReceiver) -> None:
    sent = make_spans()
    exporter = GrpcSpanExporter(
        endpoint=grpc_receiver.endpoint,
        insecure=True,
        timeout=5,
        headers={"x-tenant": "team-a"},
        compression=grpc.Compression.Gzip,
    )

    assert export(exporter, sent) is SpanExportResult.SUCCESS

    [received] = grpc_receiver.wait_for_spans(1)
    assert_round_trip(received, sent[0])
    [request] = grpc_receiver.requests
    assert (request.transport, request.outcome) == ("grpc", "ok")
    assert request.headers["x-tenant"] == "team-a"
    assert grpc_receiver.request_count == 1


JSON_REQUEST = {
    "resourceSpans": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-client"}}]},
            "scopeSpans": [
                {
                    "scope": {"name": "json-scope", "version": "0.1"},
                    "spans": [
                        {
                            "traceId": f"{LINK_TRACE_ID:032x}",
                            "spanId": f"{LINK_SPAN_ID:016x}",
                            "parentSpanId": f"{PARENT_SPAN_ID:016x}",
                            "name": "json-span",
                            "kind": 1,
                            "startTimeUnixNano": "1700000000000000000",
                            "endTimeUnixNano": "1700000001000000000",
                            "attributes": [
                                {"key": "process.exit.code", "value": {"intValue": "3"}},
                                {"key": "ok", "value": {"boolValue": False}},
                                {"key": "ratio", "value": {"doubleValue": 0.25}},
                                {
                                    "key": "args",
                                    "value": {"arrayValue": {"values": [{"stringValue": "-c"}]}},
                                },
                            ],
                            "status": {"code": 2, "message": "boom"},
                            "futureField": "receivers must ignore unknown fields",
                        }
                    ],
                }
            ],
        }
    ]
}


def test_http_json_with_hex_ids(http_receiver: HttpReceiver) -> None:
    status, content_type, body = post(http_receiver.traces_url, json.dumps(JSON_REQUEST).encode(), "application/json")

    assert (status, content_type, json.loads(body)) == (200, "application/json", {})
    [span] = http_receiver.wait_for_spans(1)
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        f"{LINK_TRACE_ID:032x}",
        f"{LINK_SPAN_ID:016x}",
        f"{PARENT_SPAN_ID:016x}",
    )
    assert (span.name, span.kind, span.start_ns, span.end_ns) == (
        "json-span",
        1,
        1_700_000_000_000_000_000,
        1_700_000_001_000_000_000,
    )
    assert {key: typed(value) for key, value in span.attributes.items()} == {
        "process.exit.code": ("int", 3),
        "ok": ("bool", False),
        "ratio": ("float", 0.25),
        "args": [("str", "-c")],
    }
    assert (span.status_code, span.status_message, span.resource) == (
        2,
        "boom",
        {"service.name": "json-client"},
    )
    assert (span.scope_name, span.scope_version) == ("json-scope", "0.1")


def test_http_json_with_base64_ids_is_rejected(http_receiver: HttpReceiver) -> None:
    """protobuf's own JSON mapping (base64 ids) is not OTLP/JSON; a codec emitting it must fail loudly."""
    doc = json.loads(json.dumps(JSON_REQUEST))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"] = base64.b64encode(LINK_TRACE_ID.to_bytes(16, "big")).decode()

    status, _, _ = post(http_receiver.traces_url, json.dumps(doc).encode(), "application/json")

    assert status == 400
    assert http_receiver.spans == []
    assert http_receiver.request_count == 1
    [reason] = http_receiver.rejections
    assert "traceId" in reason


def test_http_undecodable_protobuf_is_rejected(http_receiver: HttpReceiver) -> None:
    status, _, body = post(http_receiver.traces_url, b"\xff\xff\xff not protobuf", "application/x-protobuf")

    assert status == 400
    assert status_pb2.Status.FromString(body).code == 3  # INVALID_ARGUMENT, per the OTLP/HTTP spec
    assert http_receiver.spans == []
    [reason] = http_receiver.rejections
    assert reason.startswith("400 DecodeError")


def test_http_wrong_path_and_content_type_are_rejected(http_receiver: HttpReceiver) -> None:
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()

    assert post(http_receiver.endpoint + "/v1/trace", body, "application/x-protobuf")[0] == 404
    assert post(http_receiver.traces_url, body, "text/plain")[0] == 415

    assert http_receiver.request_count == 1
    assert len(http_receiver.rejections) == 2
    assert http_receiver.requests == []


# -- TLS -------------------------------------------------------------------------------


def test_tls_http_round_trip(tls_http_receiver: HttpReceiver, tls_ca: TlsCA) -> None:
    assert tls_http_receiver.traces_url.startswith("https://127.0.0.1:")
    exporter = HttpSpanExporter(
        endpoint=tls_http_receiver.traces_url, certificate_file=str(tls_ca.write_ca_pem()), timeout=5
    )

    assert export(exporter) is SpanExportResult.SUCCESS
    assert [span.name for span in tls_http_receiver.wait_for_spans(1)] == ["step"]


def test_tls_http_refuses_a_client_that_does_not_trust_the_ca(tls_http_receiver: HttpReceiver) -> None:
    exporter = HttpSpanExporter(endpoint=tls_http_receiver.traces_url, timeout=0.5)

    assert bounded_export(exporter) is SpanExportResult.FAILURE
    assert tls_http_receiver.request_count == 0


def test_mtls_http_needs_the_client_cert(mtls_http_receiver: HttpReceiver, tls_ca: TlsCA) -> None:
    ca = str(tls_ca.write_ca_pem())
    cert, key = tls_ca.write_client_cert()
    anonymous = HttpSpanExporter(endpoint=mtls_http_receiver.traces_url, certificate_file=ca, timeout=0.5)
    authenticated = HttpSpanExporter(
        endpoint=mtls_http_receiver.traces_url,
        certificate_file=ca,
        client_certificate_file=str(cert),
        client_key_file=str(key),
        timeout=5,
    )

    assert bounded_export(anonymous) is SpanExportResult.FAILURE
    assert mtls_http_receiver.request_count == 0
    assert export(authenticated) is SpanExportResult.SUCCESS
    assert [span.name for span in mtls_http_receiver.wait_for_spans(1)] == ["step"]


def test_tls_grpc_round_trip(tls_grpc_receiver: GrpcReceiver, tls_ca: TlsCA) -> None:
    assert tls_grpc_receiver.endpoint.startswith("https://127.0.0.1:")
    exporter = GrpcSpanExporter(endpoint=tls_grpc_receiver.endpoint, credentials=tls_ca.grpc_credentials(), timeout=5)

    assert export(exporter) is SpanExportResult.SUCCESS
    assert [span.name for span in tls_grpc_receiver.wait_for_spans(1)] == ["step"]


def test_mtls_grpc_needs_the_client_cert(mtls_grpc_receiver: GrpcReceiver, tls_ca: TlsCA) -> None:
    anonymous = GrpcSpanExporter(
        endpoint=mtls_grpc_receiver.endpoint, credentials=tls_ca.grpc_credentials(), timeout=0.5
    )
    authenticated = GrpcSpanExporter(
        endpoint=mtls_grpc_receiver.endpoint,
        credentials=tls_ca.grpc_credentials(client_cert=True),
        timeout=5,
    )

    assert bounded_export(anonymous) is SpanExportResult.FAILURE
    assert mtls_grpc_receiver.request_count == 0
    assert export(authenticated) is SpanExportResult.SUCCESS
    assert [span.name for span in mtls_grpc_receiver.wait_for_spans(1)] == ["step"]


# -- failure modes ---------------------------------------------------------------------


def test_http_error_mode_fails_the_export_and_keeps_nothing(http_receiver: HttpReceiver) -> None:
    http_receiver.set_mode("error")

    assert export(HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=5)) is SpanExportResult.FAILURE
    assert http_receiver.spans == []
    assert [request.outcome for request in http_receiver.requests] == ["error"]

    http_receiver.set_mode("ok")
    assert export(HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=5)) is SpanExportResult.SUCCESS
    assert len(http_receiver.wait_for_spans(1)) == 1


def test_grpc_error_mode_fails_the_export_and_keeps_nothing(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.set_mode("error")
    exporter = GrpcSpanExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=5)

    assert export(exporter) is SpanExportResult.FAILURE
    assert grpc_receiver.spans == []
    assert [request.outcome for request in grpc_receiver.requests] == ["error"]


def test_http_unavailable_for_the_first_requests_then_ok(http_receiver: HttpReceiver) -> None:
    """Retry-After is what fits three attempts into 1.5 s (the exporter's own backoff is 1 s, then 2 s)."""
    http_receiver.set_mode("unavailable", count=2, retry_after=0)

    assert export(HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=1.5)) is SpanExportResult.SUCCESS
    assert [request.outcome for request in http_receiver.requests] == ["unavailable", "unavailable", "ok"]
    assert len(http_receiver.wait_for_spans(1)) == 1
    assert http_receiver.mode == "ok"


def test_http_unavailable_without_count_stays_unavailable(http_receiver: HttpReceiver) -> None:
    http_receiver.set_mode("unavailable", retry_after=0)

    assert bounded_export(HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=1)) is SpanExportResult.FAILURE
    assert http_receiver.request_count >= 2
    assert http_receiver.spans == []
    assert http_receiver.mode == "unavailable"


def test_grpc_unavailable_for_the_first_requests_then_ok(grpc_receiver: GrpcReceiver) -> None:
    """As for HTTP, but the hint travels as a google.rpc.RetryInfo trailer."""
    grpc_receiver.set_mode("unavailable", count=2, retry_after=0)
    exporter = GrpcSpanExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=1.5)

    assert export(exporter) is SpanExportResult.SUCCESS
    assert [request.outcome for request in grpc_receiver.requests] == ["unavailable", "unavailable", "ok"]
    assert len(grpc_receiver.wait_for_spans(1)) == 1


def assert_stops_promptly(receiver: HttpReceiver | GrpcReceiver) -> None:
    started = time.monotonic()
    receiver.stop()
    assert time.monotonic() - started < BOUND


def test_http_hang_mode_times_the_exporter_out(http_receiver: HttpReceiver) -> None:
    http_receiver.set_mode("hang")

    assert bounded_export(HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=1)) is SpanExportResult.FAILURE
    assert http_receiver.wait_for_requests(1)[0].outcome == "hang"
    assert http_receiver.spans == []
    assert_stops_promptly(http_receiver)


def test_grpc_hang_mode_times_the_exporter_out(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.set_mode("hang")
    exporter = GrpcSpanExporter(endpoint=grpc_receiver.endpoint, insecure=True, timeout=1)

    assert bounded_export(exporter) is SpanExportResult.FAILURE
    assert grpc_receiver.wait_for_requests(1)[0].outcome == "hang"
    assert grpc_receiver.spans == []
    assert_stops_promptly(grpc_receiver)


def run_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Runs a blocking client call; the list gets its result or the exception it raised."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_http_stop_releases_a_hung_request(http_receiver: HttpReceiver) -> None:
    """A patient client gets its answer (a closed connection) from stop(), not from its own timeout."""
    http_receiver.set_mode("hang")
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()

    def call() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", http_receiver.port, timeout=CLIENT_PATIENCE)
        try:
            connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            return connection.getresponse().status
        finally:
            connection.close()

    thread, outcome = run_in_thread(call)
    http_receiver.wait_for_requests(1)
    assert_stops_promptly(http_receiver)
    thread.join(BOUND)

    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, (http.client.RemoteDisconnected, ConnectionError)), error


def test_grpc_stop_releases_a_hung_call(grpc_receiver: GrpcReceiver) -> None:
    grpc_receiver.set_mode("hang")
    channel = grpc.insecure_channel(grpc_receiver.target)
    stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]

    thread, outcome = run_in_thread(
        lambda: stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=CLIENT_PATIENCE)
    )
    try:
        grpc_receiver.wait_for_requests(1)
        assert_stops_promptly(grpc_receiver)
        thread.join(BOUND)
    finally:
        channel.close()

    assert not thread.is_alive()
    [error] = outcome
    assert isinstance(error, grpc.RpcError), error
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


# -- broken collectors -----------------------------------------------------------------


def test_blackhole_accepts_and_never_answers(blackhole: Blackhole) -> None:
    assert bounded_export(HttpSpanExporter(endpoint=blackhole.traces_url, timeout=1)) is SpanExportResult.FAILURE
    assert blackhole.wait_for_connections(1) >= 1


def test_dead_port_refuses_connections(dead_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", dead_port), timeout=BOUND).close()
    exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{dead_port}/v1/traces", timeout=0.5)

    assert bounded_export(exporter) is SpanExportResult.FAILURE


def test_wait_for_spans_reports_what_arrived(http_receiver: HttpReceiver) -> None:
    assert export(HttpSpanExporter(endpoint=http_receiver.traces_url, timeout=5)) is SpanExportResult.SUCCESS

    with pytest.raises(AssertionError, match=r"expected >= 2 span\(s\).*got 1: \['step'\]"):
        http_receiver.wait_for_spans(2, timeout=0.1)
