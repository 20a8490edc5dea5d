"""The span record every part of step-tracer passes around.

A plain slotted class rather than the SDK's ReadableSpan: the wrapper builds it on
the hot path, where importing the OpenTelemetry SDK would cost more than the step.
Codecs in `step_tracer.otlp` turn it into OTLP JSON or protobuf.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]
    Attributes = dict[str, AttributeValue]

# OTLP enum values (opentelemetry/proto/trace/v1/trace.proto).
KIND_INTERNAL = 1
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

SCOPE_NAME = "step-tracer"


class Event:
    __slots__ = ("attributes", "name", "time_ns")

    def __init__(self, name: str, time_ns: int, attributes: Attributes | None = None) -> None:
        self.name = name
        self.time_ns = time_ns
        self.attributes: Attributes = attributes if attributes is not None else {}

    def __repr__(self) -> str:
        return f"Event({self.name!r}, {self.time_ns}, {self.attributes!r})"


class Span:
    """One finished (or, for write-ahead records, started) span.

    Ids are lowercase hex: 32 digits for the trace, 16 for spans; `parent_span_id`
    is "" for a root span.
    """

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "kind",
        "name",
        "parent_span_id",
        "span_id",
        "start_ns",
        "status_code",
        "status_message",
        "trace_flags",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        name: str,
        trace_id: str,
        span_id: str,
        parent_span_id: str = "",
        *,
        trace_state: str = "",
        trace_flags: int = 1,
        kind: int = KIND_INTERNAL,
        start_ns: int = 0,
        end_ns: int = 0,
        attributes: Attributes | None = None,
        events: list[Event] | None = None,
        status_code: int = STATUS_UNSET,
        status_message: str = "",
    ) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.trace_state = trace_state
        self.trace_flags = trace_flags
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.attributes: Attributes = attributes if attributes is not None else {}
        self.events: list[Event] = events if events is not None else []
        self.status_code = status_code
        self.status_message = status_message

    @property
    def sampled(self) -> bool:
        return bool(self.trace_flags & 1)

    def __repr__(self) -> str:
        return (
            f"Span({self.name!r}, trace={self.trace_id}, span={self.span_id}, "
            f"parent={self.parent_span_id or '-'}, status={self.status_code})"
        )


class Batch:
    """Spans that share one resource: the unit the codecs and exporters take."""

    __slots__ = ("resource", "spans")

    def __init__(self, resource: Mapping[str, AttributeValue], spans: list[Span]) -> None:
        self.resource: Attributes = dict(resource)
        self.spans = spans
