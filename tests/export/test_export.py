"""export(): real receivers, real sockets, real TLS, real files; broken collectors of every kind.

Every failure must cost the step at most the export deadline (+ a little) and exactly one stderr line.
"""

# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import gzip
import http.server
import io
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import step_tracer.export as export_module
from step_tracer import __version__
from step_tracer.export import ExportError, Outcome, export, files
from step_tracer.export.settings import Settings
from step_tracer.otlp import json_codec
from step_tracer.span import STATUS_ERROR, Batch, Event, Span
from tests.otlp_receiver import Blackhole, GrpcReceiver, HttpReceiver, ReceivedSpan, TlsCA

DEADLINE = 0.8
BOUND = DEADLINE + 1.0  # "returns within the deadline + 1 s"
ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
RESOURCE = {"service.name": "tekton-steps", "k8s.pod.name": "build-pod-1", "telemetry.sdk.name": "step-tracer"}


def full_span(name: str = "step-build", *, span_id: str = "00f067aa0ba902b7", sampled: bool = True) -> Span:
    return Span(
        name,
        TRACE_ID,
        span_id,
        "b7ad6b7169203331",
        trace_state="vendor=x,tekton=1",
        trace_flags=1 if sampled else 0,
        kind=1,
        start_ns=1_700_000_000_000_000_001,
        end_ns=1_700_000_001_500_000_002,
        attributes={
            "process.exit.code": 1,
            "process.cpu.time": 0.25,
            "cicd.pipeline.task.run.result": "failure",
            "error.type": "1",
            "step.tracer.oom": False,
            "process.command_args": ["make", "büild", "🚀"],
            "negative": -42,
            "big": 2**62,
        },
        events=[Event("signal", 1_700_000_001_000_000_000, {"signal.name": "SIGTERM", "n": 15})],
        status_code=STATUS_ERROR,
        status_message="exit code 1",
    )


def assert_same(received: ReceivedSpan, span: Span, resource: dict[str, Any]) -> None:
    assert received.name == span.name
    assert received.trace_id == span.trace_id
    assert received.span_id == span.span_id
    assert received.parent_span_id == span.parent_span_id
    assert received.trace_state == span.trace_state
    assert received.flags == span.trace_flags
    assert received.kind == span.kind
    assert received.start_ns == span.start_ns
    assert received.end_ns == span.end_ns
    assert received.attributes == {k: list(v) if isinstance(v, tuple) else v for k, v in span.attributes.items()}
    assert [(e.name, e.time_ns, e.attributes) for e in received.events] == [
        (e.name, e.time_ns, e.attributes) for e in span.events
    ]
    assert received.status_code == span.status_code
    assert received.status_message == span.status_message
    assert received.resource == resource
    assert received.scope_name == "step-tracer"
    assert received.scope_version == __version__
    assert received.links == []


def otlp(endpoint: str, protocol: str = "http/protobuf", **kwargs: Any) -> Settings:
    kwargs.setdefault("deadline", DEADLINE)
    return Settings(exporters=("otlp",), protocol=protocol, endpoint=endpoint, resource=RESOURCE, **kwargs)


def endpoint_of(receiver: HttpReceiver | GrpcReceiver) -> str:
    return receiver.traces_url if isinstance(receiver, HttpReceiver) else receiver.endpoint


class Run:
    def __init__(self, outcome: Outcome, err: str, elapsed: float) -> None:
        self.outcome = outcome
        self.err = err
        self.lines = err.splitlines()
        self.elapsed = elapsed

    def failed_once(self, *fragments: str) -> str:
        """The run failed, within the bound, with one step-tracer line containing every fragment."""
        assert not self.outcome.ok
        assert self.elapsed < BOUND, self.elapsed
        assert len(self.lines) == 1, self.lines
        line = self.lines[0]
        assert line.startswith("step-tracer: ")
        assert line.endswith("(the step's result is unchanged)")
        for fragment in fragments:
            assert fragment in line, line
        return line


def run(settings: Settings, spans: list[Span] | None = None) -> Run:
    err = io.StringIO()
    started = time.monotonic()
    outcome = export([Batch(RESOURCE, spans if spans is not None else [full_span()])], settings, err=err)
    return Run(outcome, err.getvalue(), time.monotonic() - started)


@pytest.fixture(params=["http/protobuf", "http/json", "grpc"])
def protocol(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def receiver(protocol: str) -> Iterator[HttpReceiver | GrpcReceiver]:
    with GrpcReceiver() if protocol == "grpc" else HttpReceiver() as started:
        yield started


# ---------------------------------------------------------------------------------------------------------
# Delivery


def test_delivery_field_by_field(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    spans = [full_span(), Span("root-step", "a" * 32, "c" * 16, start_ns=5, end_ns=6)]
    result = run(otlp(endpoint_of(receiver), protocol), spans)
    assert result.outcome.ok and not result.outcome.abandoned
    assert result.err == ""
    received = receiver.wait_for_spans(2)
    assert len(receiver.requests) == 1
    assert_same(received[0], spans[0], RESOURCE)
    assert_same(received[1], spans[1], RESOURCE)
    assert received[1].parent_span_id == ""


def test_content_types(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    assert run(otlp(endpoint_of(receiver), protocol)).outcome.ok
    (request,) = receiver.requests
    expected = {"http/protobuf": "application/x-protobuf", "http/json": "application/json"}
    assert request.content_type == expected.get(protocol, "application/grpc")


def test_headers_and_user_agent_are_delivered(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    headers = {"Authorization": "Bearer t0k3n", "X-Scope-OrgID": "tenant-1"}
    assert run(otlp(endpoint_of(receiver), protocol, headers=headers)).outcome.ok
    (request,) = receiver.requests
    assert request.headers["authorization"] == "Bearer t0k3n"
    assert request.headers["x-scope-orgid"] == "tenant-1"
    assert request.headers["user-agent"].startswith(f"step-tracer/{__version__}")


class _Relay:
    """A TCP relay that counts the bytes a client sends: gRPC servers hide the request encoding."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.sent = 0
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink, counted in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self._pump, args=(source, sink, counted), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with source, sink:
            while data := _recv(source):
                if counted:
                    self.sent += len(data)
                try:
                    sink.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_gzip_over_grpc_shrinks_what_goes_on_the_wire(grpc_receiver: GrpcReceiver, compression: str) -> None:
    relay = _Relay(grpc_receiver.port)
    try:
        span = Span("big", TRACE_ID, "1" * 16, attributes={"pad": "x" * 200_000})
        settings = otlp(f"http://127.0.0.1:{relay.port}", "grpc", compression=compression)
        assert run(settings, [span]).outcome.ok
    finally:
        relay.close()
    assert grpc_receiver.wait_for_spans(1)[0].attributes["pad"] == "x" * 200_000
    if compression == "gzip":
        assert relay.sent < 20_000
    else:
        assert relay.sent > 200_000


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_gzip_over_http(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    assert run(otlp(endpoint_of(receiver), protocol, compression="gzip")).outcome.ok
    assert_same(receiver.wait_for_spans(1)[0], full_span(), RESOURCE)
    (request,) = receiver.requests
    assert request.content_encoding == "gzip"
    assert request.body[:2] == b"\x1f\x8b"
    assert gzip.decompress(request.body)


def test_settings_from_env_reach_a_real_receiver(http_receiver: HttpReceiver) -> None:
    """The generic endpoint gets /v1/traces appended; the receiver answers 404 anywhere else."""
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint + "/",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=a%20b",
            "OTEL_SERVICE_NAME": "from-env",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        },
        pytest.fail,
    )
    assert settings.exporters == ("otlp",)
    err = io.StringIO()
    assert export([Batch(settings.resource, [full_span()])], settings, err=err).ok, err.getvalue()
    (span,) = http_receiver.wait_for_spans(1)
    assert span.resource["service.name"] == "from-env"
    assert http_receiver.requests[0].headers["x-tenant"] == "a b"


def test_endpoint_userinfo_becomes_basic_auth_and_is_kept_out_of_messages(http_receiver: HttpReceiver) -> None:
    url = http_receiver.traces_url.replace("http://", "http://ci:p%40ss@")
    assert run(otlp(url)).outcome.ok
    assert http_receiver.requests[0].headers["authorization"] == "Basic Y2k6cEBzcw=="  # ci:p@ss
    http_receiver.set_mode("error")
    line = run(otlp(url)).failed_once("HTTP 500")
    assert "p%40ss" not in line and "ci:" not in line


# ---------------------------------------------------------------------------------------------------------
# TLS


@pytest.fixture
def other_ca(tmp_path: Path) -> str:
    """A CA the receivers' certificates do not chain to."""
    return str(TlsCA(tmp_path / "other").write_ca_pem())


def test_tls_with_ca_http(tls_http_receiver: HttpReceiver, tls_ca: TlsCA) -> None:
    result = run(otlp(tls_http_receiver.traces_url, certificate=str(tls_ca.write_ca_pem())))
    assert result.outcome.ok, result.err
    assert_same(tls_http_receiver.wait_for_spans(1)[0], full_span(), RESOURCE)


def test_tls_falls_back_to_a_distribution_ca_bundle(
    tls_http_receiver: HttpReceiver, tls_ca: TlsCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step image whose CA bundle is not where our OpenSSL was built to look: the usual paths are tried."""
    from step_tracer.export.http import HttpTransport, _tls_context

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "absent.pem"))  # OpenSSL's default store: not here
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "absent"))
    bundle = str(tls_ca.write_ca_pem())
    settings = otlp(tls_http_receiver.traces_url)
    transport = HttpTransport(settings)
    transport.context = _tls_context(settings, (str(tmp_path / "missing.crt"), bundle))
    transport.send(b"", 10)  # an empty ExportTraceServiceRequest
    with pytest.raises(ExportError, match="certificate verification failed"):
        transport.context = _tls_context(settings, (str(tmp_path / "missing.crt"),))
        transport.send(b"", 10)


def test_tls_with_ca_grpc(tls_grpc_receiver: GrpcReceiver, tls_ca: TlsCA) -> None:
    result = run(otlp(tls_grpc_receiver.endpoint, "grpc", certificate=str(tls_ca.write_ca_pem())))
    assert result.outcome.ok, result.err
    assert_same(tls_grpc_receiver.wait_for_spans(1)[0], full_span(), RESOURCE)


def test_grpc_scheme_less_endpoint_uses_tls_unless_insecure(
    tls_grpc_receiver: GrpcReceiver, grpc_receiver: GrpcReceiver, tls_ca: TlsCA
) -> None:
    secure = otlp(tls_grpc_receiver.target, "grpc", certificate=str(tls_ca.write_ca_pem()))
    assert run(secure).outcome.ok
    assert run(otlp(grpc_receiver.target, "grpc", insecure=True)).outcome.ok
    assert len(tls_grpc_receiver.spans) == len(grpc_receiver.spans) == 1


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_mtls(transport: str, tls_ca: TlsCA, request: pytest.FixtureRequest) -> None:
    receiver: HttpReceiver | GrpcReceiver = request.getfixturevalue(f"mtls_{transport}_receiver")
    protocol = "grpc" if transport == "grpc" else "http/protobuf"
    chain, key = tls_ca.write_client_cert()
    ca = str(tls_ca.write_ca_pem())
    with_cert = otlp(
        endpoint_of(receiver), protocol, certificate=ca, client_certificate=str(chain), client_key=str(key)
    )
    result = run(with_cert)
    assert result.outcome.ok, result.err
    assert len(receiver.wait_for_spans(1)) == 1

    run(otlp(endpoint_of(receiver), protocol, certificate=ca)).failed_once(endpoint_of(receiver))
    assert len(receiver.spans) == 1


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_untrusted_server_certificate(
    transport: str, other_ca: str, tls_ca: TlsCA, request: pytest.FixtureRequest
) -> None:
    receiver: HttpReceiver | GrpcReceiver = request.getfixturevalue(f"tls_{transport}_receiver")
    protocol = "grpc" if transport == "grpc" else "http/protobuf"
    run(otlp(endpoint_of(receiver), protocol, certificate=other_ca)).failed_once(endpoint_of(receiver))
    assert receiver.spans == []


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_https_client_to_plain_server(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    url = endpoint_of(receiver).replace("http://", "https://")
    run(otlp(url, protocol)).failed_once(url)
    assert receiver.spans == []


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_missing_ca_file_is_reported(protocol: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    run(otlp("https://127.0.0.1:9/v1/traces", protocol, certificate=missing)).failed_once(missing)


# ---------------------------------------------------------------------------------------------------------
# Broken collectors


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_collector_down(protocol: str, dead_port: int) -> None:
    url = f"http://127.0.0.1:{dead_port}" + ("" if protocol == "grpc" else "/v1/traces")
    line = run(otlp(url, protocol)).failed_once(url)
    assert ("connection refused" if protocol != "grpc" else "UNAVAILABLE") in line


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_blackhole_collector(protocol: str, blackhole: Blackhole) -> None:
    url = blackhole.endpoint if protocol == "grpc" else blackhole.traces_url
    run(otlp(url, protocol)).failed_once(url)
    assert blackhole.connection_count >= 1


def test_receiver_that_hangs_after_reading(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    receiver.set_mode("hang")
    run(otlp(endpoint_of(receiver), protocol)).failed_once(endpoint_of(receiver))
    assert receiver.request_count >= 1


def test_server_error_is_not_retried(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    receiver.set_mode("error")
    result = run(otlp(endpoint_of(receiver), protocol))
    line = result.failed_once(endpoint_of(receiver), "receiver in error mode")
    assert ("gRPC INTERNAL" if protocol == "grpc" else "HTTP 500") in line
    assert receiver.request_count == 1


def test_unavailable_then_ok_is_delivered_by_backoff(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    receiver.set_mode("unavailable", count=2)
    result = run(otlp(endpoint_of(receiver), protocol, deadline=10.0))
    assert result.outcome.ok, result.err
    assert result.err == ""
    assert [r.outcome for r in receiver.requests] == ["unavailable", "unavailable", "ok"]
    assert_same(receiver.wait_for_spans(1)[0], full_span(), RESOURCE)


def test_retry_hint_is_honoured(protocol: str, receiver: HttpReceiver | GrpcReceiver) -> None:
    """A hint past the deadline ends the export at once; ordinary backoff would have tried again."""
    receiver.set_mode("unavailable", retry_after=30)
    result = run(otlp(endpoint_of(receiver), protocol, deadline=5.0))
    assert result.elapsed < 4.0, "gave up at once instead of waiting out the deadline"
    line = result.failed_once(endpoint_of(receiver), "no time left to retry")
    assert "503" in line or "UNAVAILABLE" in line
    assert receiver.request_count == 1


class _Trickle:
    """Answers 200 with a huge body, one byte at a time: socket timeouts never fire."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/traces"

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 999999\r\n\r\n")
            while not self.stopped.wait(0.05):
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def trickle() -> Iterator[_Trickle]:
    server = _Trickle()
    yield server
    server.close()


def test_trickling_collector_is_abandoned_at_the_deadline(trickle: _Trickle) -> None:
    result = run(otlp(trickle.url, timeout=30.0))
    result.failed_once(trickle.url, "deadline")
    assert result.outcome.abandoned


# ---------------------------------------------------------------------------------------------------------
# The deadline by an injected clock: values, not a hang that pytest-timeout would have to catch


class _Clock:
    """time.monotonic and time.sleep for the export module: time passes only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(export_module, "monotonic", fake)
    monkeypatch.setattr(export_module, "sleep", fake.sleep)
    return fake


def test_the_caller_stops_waiting_at_the_deadline_counted_from_the_export_start(
    clock: _Clock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The file write took 0.3 s of a 2 s deadline: the network thread gets the 1.7 s left, then is abandoned."""
    waits: list[float] = []

    class NeverDone:
        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            waits.append(timeout)
            clock.now += max(timeout, 0.0)
            return False

    job = export_module._Job()
    job.done = NeverDone()  # type: ignore[assignment]
    monkeypatch.setattr(export_module, "_start", lambda _batches, _settings: job)
    real_append = files.append_line

    def slow_append(path: str, line: str) -> None:
        clock.now += 0.3
        real_append(path, line)

    monkeypatch.setattr(files, "append_line", slow_append)
    settings = Settings(
        exporters=("file", "otlp"), file_path=str(tmp_path / "s.jsonl"), endpoint="http://x/v1/traces", deadline=2.0
    )
    started = clock.now
    result = run(settings)
    assert waits == [pytest.approx(1.7)]
    assert clock.now - started == pytest.approx(2.0)
    assert result.outcome.abandoned and not result.outcome.ok
    assert result.lines == [
        "step-tracer: span not exported to http://x/v1/traces: no answer within the 2 s export deadline"
        " (the step's result is unchanged)"
    ]


@pytest.mark.parametrize("attempt_takes", [0.01, 0.7])
def test_retries_fit_inside_the_deadline_by_the_clock(clock: _Clock, attempt_takes: float) -> None:
    """Every attempt's timeout ends ATTEMPT_MARGIN before the deadline, backoff never sleeps past it, and the
    thread has returned (not been abandoned) by then."""
    attempts: list[tuple[float, float]] = []  # (started at, timeout given)

    class Failing:
        def send(self, payload: bytes, timeout: float) -> None:
            attempts.append((clock.now, timeout))
            clock.now += min(attempt_takes, timeout)
            raise ExportError("connection refused", retryable=True)

        def close(self) -> None:
            pass

    deadline_at = clock.now + 2.0
    error = export_module._retry(export_module._Job(), Failing(), b"payload", 10.0, deadline_at)
    assert error is not None and error.endswith("no time left to retry)")
    assert len(attempts) >= 2, attempts  # it did retry inside the deadline
    for started, timeout in attempts:
        assert started + timeout <= deadline_at - export_module.ATTEMPT_MARGIN + 1e-9, (started, timeout)
    assert clock.now <= deadline_at - export_module.ATTEMPT_MARGIN


# ---------------------------------------------------------------------------------------------------------
# Partial success (no shared receiver speaks it: a small local one does)


class _PartialSuccess(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        response = trace_service_pb2.ExportTraceServiceResponse()
        response.partial_success.rejected_spans = 1
        response.partial_success.error_message = "span too old"
        if self.headers["Content-Type"] == "application/json":
            body, content_type = json_format.MessageToJson(response).encode(), "application/json"
        else:
            body, content_type = response.SerializeToString(), "application/x-protobuf"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_partial_success_is_reported_once(protocol: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PartialSuccess)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/traces"
        run(otlp(url, protocol)).failed_once("collector rejected 1 span: span too old")
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------------
# Sampling and odd input


def test_unsampled_spans_are_not_sent(http_receiver: HttpReceiver) -> None:
    spans = [full_span("kept"), full_span("dropped", span_id="1" * 16, sampled=False)]
    assert run(otlp(http_receiver.traces_url), spans).outcome.ok
    assert [s.name for s in http_receiver.spans] == ["kept"]

    http_receiver.clear()
    result = run(otlp(http_receiver.traces_url), [full_span("dropped", sampled=False)])
    assert result.outcome.ok and result.err == ""
    assert http_receiver.request_count == 0


def test_unsampled_spans_are_not_written_either(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    settings = Settings(exporters=("file",), file_path=str(path))
    assert run(settings, [full_span(sampled=False)]).outcome.ok
    assert not path.exists()


def test_bad_span_id_is_one_line_not_an_exception(http_receiver: HttpReceiver) -> None:
    run(otlp(http_receiver.traces_url), [Span("s", TRACE_ID, "not-hex!")]).failed_once(http_receiver.traces_url)
    assert http_receiver.request_count == 0


@pytest.mark.parametrize("settings", [Settings(disabled=True, exporters=("file",)), Settings(exporters=())])
def test_disabled_or_no_exporter_does_nothing(settings: Settings, tmp_path: Path) -> None:
    settings.file_path = str(tmp_path / "spans.jsonl")
    result = run(settings)
    assert result.outcome.ok and result.err == ""
    assert not (tmp_path / "spans.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------
# Files and console


def spans_in(path: Path) -> list[Span]:
    return [s for line in path.read_text().splitlines() for b in json_codec.decode(line) for s in b.spans]


def test_file_exporter_appends_lines_json_codec_reads(tmp_path: Path) -> None:
    path = tmp_path / "state" / "step-tracer" / "spans.jsonl"
    old = os.umask(0o027)
    try:
        first = run(Settings(exporters=("file",), file_path=str(path)), [full_span("one")])
        second = run(Settings(exporters=("file",), file_path=str(path)), [full_span("two", span_id="2" * 16)])
    finally:
        os.umask(old)
    assert first.outcome.ok and second.outcome.ok and first.err == second.err == ""
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    (batch,) = json_codec.decode(lines[0])
    assert batch.resource == RESOURCE
    (span,) = batch.spans
    expected = full_span("one")
    assert (span.name, span.trace_id, span.span_id, span.parent_span_id, span.trace_state) == (
        expected.name,
        expected.trace_id,
        expected.span_id,
        expected.parent_span_id,
        expected.trace_state,
    )
    assert (span.start_ns, span.end_ns, span.status_code, span.status_message) == (
        expected.start_ns,
        expected.end_ns,
        expected.status_code,
        expected.status_message,
    )
    assert span.attributes == expected.attributes
    assert [s.name for s in spans_in(path)] == ["one", "two"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o750


def test_parallel_writers_never_interleave_lines(tmp_path: Path) -> None:
    """Steps of parallel tasks can share one file: each export is one whole line."""
    path = tmp_path / "spans.jsonl"
    code = (
        "import sys, io; from step_tracer.export import export; from step_tracer.export.settings import Settings; "
        "from step_tracer.span import Batch, Span\n"
        "s = Settings(exporters=('file',), file_path=sys.argv[1])\n"
        "for i in range(60):\n"
        "    span = Span(f'w{sys.argv[2]}-{i}', 'a' * 32, 'b' * 16, attributes={'pad': 'x' * 20000})\n"
        "    assert export([Batch({}, [span])], s, err=sys.stderr).ok\n"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", code, str(path), str(n)], cwd=ROOT, stderr=subprocess.PIPE)
        for n in range(4)
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=60)
        assert writer.returncode == 0, stderr
    names = [s.name for s in spans_in(path)]
    assert sorted(names) == sorted(f"w{n}-{i}" for n in range(4) for i in range(60))


def test_console_exporter_writes_the_json_line_to_err_not_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    result = run(Settings(exporters=("console",)))
    assert result.outcome.ok
    (line,) = result.lines
    assert [s.name for b in json_codec.decode(line) for s in b.spans] == ["step-build"]
    assert capfd.readouterr().out == ""


def test_path_below_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = str(tmp_path / "file" / "sub" / "spans.jsonl")
    result = run(Settings(exporters=("file",), file_path=path))
    result.failed_once(f"not written to {path}", "Not a directory")


def test_path_that_is_a_directory(tmp_path: Path) -> None:
    run(Settings(exporters=("file",), file_path=str(tmp_path))).failed_once(str(tmp_path), "Is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        path = str(locked / "step-tracer" / "spans.jsonl")
        run(Settings(exporters=("file",), file_path=path)).failed_once(path, "Permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not os.path.ismount("/proc"), reason="needs procfs")
def test_directory_that_refuses_new_entries() -> None:
    """procfs refuses new directories even to root: the unwritable case every user can run."""
    path = "/proc/step-tracer-test/spans.jsonl"
    run(Settings(exporters=("file",), file_path=path)).failed_once(path)


def test_file_still_written_when_the_collector_is_down(tmp_path: Path, dead_port: int) -> None:
    path = tmp_path / "spans.jsonl"
    url = f"http://127.0.0.1:{dead_port}/v1/traces"
    settings = Settings(exporters=("file", "otlp"), file_path=str(path), endpoint=url, deadline=DEADLINE)
    run(settings).failed_once(url)
    assert [s.name for s in spans_in(path)] == ["step-build"]


# ---------------------------------------------------------------------------------------------------------
# The real stderr of a real process: gRPC core must not add lines of its own.

_CHILD = """
import os, sys
from step_tracer.export import export
from step_tracer.export.settings import Settings
from step_tracer.span import Batch, Span
settings = Settings(exporters=("otlp",), protocol=sys.argv[1], endpoint=sys.argv[2], certificate=sys.argv[3],
                    deadline=float(sys.argv[4]))
outcome = export([Batch({}, [Span("s", "1" * 32, "2" * 16)])], settings, err=sys.stderr)
sys.stdout.write(f"{outcome.ok} {outcome.abandoned}")
sys.stdout.flush()
os._exit(0)
"""


def child_export(protocol: str, endpoint: str, certificate: str = "") -> tuple[str, list[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "OTEL_"))}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, protocol, endpoint, certificate, str(DEADLINE)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout, result.stderr.splitlines(), time.monotonic() - started


def test_grpc_tls_failure_is_one_line_on_the_real_stderr(tls_grpc_receiver: GrpcReceiver, other_ca: str) -> None:
    stdout, lines, elapsed = child_export("grpc", tls_grpc_receiver.endpoint, other_ca)
    assert stdout.startswith("False"), (stdout, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("step-tracer: ") and tls_grpc_receiver.endpoint in lines[0]
    assert elapsed < BOUND + 3.0  # interpreter start-up and the grpc import come on top


def test_grpc_success_is_silent_on_the_real_stderr(grpc_receiver: GrpcReceiver) -> None:
    stdout, lines, _ = child_export("grpc", grpc_receiver.endpoint)
    assert (stdout, lines) == ("True False", [])
    assert len(grpc_receiver.wait_for_spans(1)) == 1
