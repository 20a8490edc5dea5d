"""OTLP/gRPC transport on grpcio alone: our protobuf bytes go out as-is, no SDK, no generated classes.

The only module that imports grpc, and it is imported only when the protocol is grpc: grpcio costs tens of
milliseconds to import even without protobuf.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from step_tracer import __version__
from step_tracer.export import ExportError, one_line, partial_success

if TYPE_CHECKING:
    from step_tracer.export.settings import Settings

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# Retryable per the OTLP spec (RESOURCE_EXHAUSTED strictly only with RetryInfo; retried regardless here).
RETRYABLE = frozenset(
    (
        "CANCELLED",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNAVAILABLE",
        "DATA_LOSS",
    )
)
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class GrpcTransport:
    """One channel to the collector for all attempts. Raises ExportError when credentials cannot be loaded."""

    def __init__(self, settings: Settings) -> None:
        # gRPC core logs connection failures to fd 2 itself; we report each failure once, in our own words.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        try:
            import grpc
        except ImportError as exc:
            raise ExportError("grpcio is not installed (needed for OTEL_EXPORTER_OTLP_PROTOCOL=grpc)") from exc
        self._grpc = grpc
        target, secure = settings.grpc_target()
        options = [
            ("grpc.primary_user_agent", f"step-tracer/{__version__}"),
            ("grpc.enable_retries", 0),  # retries are ours, bounded by the export deadline
        ]
        self._compression = grpc.Compression.Gzip if settings.compression == "gzip" else None
        self._metadata = tuple((name.lower(), value) for name, value in settings.headers.items())
        if secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(settings.certificate, "CA certificate"),
                private_key=_read(settings.client_key, "client key"),
                certificate_chain=_read(settings.client_certificate, "client certificate"),
            )
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._export = self._channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    def send(self, payload: bytes, timeout: float) -> None:
        try:
            reply = self._export(payload, timeout=timeout, metadata=self._metadata, compression=self._compression)
        except self._grpc.RpcError as exc:
            raise _error(exc, timeout) from None
        except ValueError as exc:  # grpc refuses metadata it cannot send (e.g. non-ASCII values)
            raise ExportError(f"gRPC refused the request: {one_line(str(exc))}") from None
        rejected = partial_success(reply) if isinstance(reply, bytes) else None
        if rejected:
            raise ExportError(rejected, False)

    def close(self) -> None:
        self._channel.close()


def _read(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ExportError(f"cannot load {what} {path}: {exc.strerror or exc}") from None


def _error(exc: Any, timeout: float) -> ExportError:
    """ExportError for a failed call; `exc` is a grpc.RpcError that is also a grpc.Call."""
    code = exc.code()
    name = getattr(code, "name", str(code))
    details = one_line(_root_cause(exc.details() or ""))
    if name == "DEADLINE_EXCEEDED":
        message = f"no answer within {timeout:.1f} s (gRPC DEADLINE_EXCEEDED)"
    else:
        message = f"gRPC {name}" + (f": {details}" if details else "")
    if name not in RETRYABLE:
        return ExportError(message, False)
    return ExportError(message, True, _retry_delay(exc.trailing_metadata() or ()))


def _root_cause(details: str) -> str:
    """Drop gRPC core's "failed to connect to all addresses; last error: UNKNOWN: ipv4:1.2.3.4:4317: " framing."""
    head, sep, rest = details.partition("last error: ")
    if not sep or not head.startswith("failed to connect"):
        return details
    for prefix in ("ipv4:", "ipv6:", "unix:", "dns:"):
        start = rest.find(prefix)
        if start != -1:
            end = rest.find(": ", start)  # addresses contain ':' but never ': '
            if end != -1:
                return rest[end + 2 :]
    return rest


def _retry_delay(metadata: Any) -> float | None:
    """google.rpc.RetryInfo.retry_delay in seconds, from either trailer servers use for it.

    "google.rpc.retryinfo-bin" holds a RetryInfo (what opentelemetry-python reads); "grpc-status-details-bin"
    a google.rpc.Status whose details (field 3) are Any messages (what Go servers send).
    """
    from step_tracer.otlp.proto_codec import read_fields

    try:
        for key, value in metadata:
            if not isinstance(value, bytes):
                continue
            if key == "google.rpc.retryinfo-bin":
                return _duration(value)
            if key == "grpc-status-details-bin":
                for field, detail in read_fields(value):
                    if field == 3 and isinstance(detail, bytes):
                        any_fields = dict(read_fields(detail))  # google.protobuf.Any: type_url 1, value 2
                        info = any_fields.get(2)
                        if any_fields.get(1) == _RETRY_INFO.encode() and isinstance(info, bytes):
                            return _duration(info)
    except ValueError:
        return None
    return None


def _duration(retry_info: bytes) -> float | None:
    """RetryInfo.retry_delay (field 1), a google.protobuf.Duration (seconds 1, nanos 2)."""
    from step_tracer.otlp.proto_codec import read_fields

    for field, value in read_fields(retry_info):
        if field == 1 and isinstance(value, bytes):
            parts = dict(read_fields(value))
            seconds, nanos = parts.get(1, 0), parts.get(2, 0)
            if isinstance(seconds, int) and isinstance(nanos, int) and seconds < 1 << 63:
                return seconds + nanos / 1e9
    return 0.0
