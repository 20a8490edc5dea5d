"""OTLP protobuf: ExportTraceServiceRequest bytes for OTLP/HTTP and gRPC, written by hand.

The protobuf runtime plus the generated opentelemetry-proto classes cost more to import than a wrapped step
may take, and a request is a handful of nested length-delimited messages, so it is built directly.
Field numbers follow opentelemetry/proto/{collector/trace,trace,common,resource}/v1/*.proto; tests decode
the output with opentelemetry-proto. `read_fields` is the matching minimal reader for the small replies a
collector sends back (partial success, google.rpc.Status, RetryInfo).
"""

from __future__ import annotations

from _struct import pack as _pack

from step_tracer import __version__
from step_tracer.span import SCOPE_NAME, Batch, Event, Span

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs a step ~20 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from step_tracer.span import AttributeValue

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

# Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. A tag byte is (field << 3) | wire type.
_ANY_STRING = b"\x0a"
_ANY_BOOL = b"\x10"
_ANY_INT = b"\x18"
_ANY_DOUBLE = b"\x21"
_ANY_ARRAY = b"\x2a"
_SPAN_TRACE_ID = b"\x0a"
_SPAN_SPAN_ID = b"\x12"
_SPAN_TRACE_STATE = b"\x1a"
_SPAN_PARENT_ID = b"\x22"
_SPAN_NAME = b"\x2a"
_SPAN_KIND = b"\x30"
_SPAN_START = b"\x39"
_SPAN_END = b"\x41"
_SPAN_ATTRIBUTES = b"\x4a"
_SPAN_EVENTS = b"\x5a"
_SPAN_STATUS = b"\x7a"
_SPAN_FLAGS = b"\x85\x01"  # field 16, fixed32: two tag bytes
_EVENT_TIME = b"\x09"
_EVENT_NAME = b"\x12"
_EVENT_ATTRIBUTES = b"\x1a"
_STATUS_MESSAGE = b"\x12"
_STATUS_CODE = b"\x18"
_FIELD1 = b"\x0a"  # length-delimited field 1: KeyValue.key, ArrayValue.values, Resource.attributes, ...
_FIELD2 = b"\x12"  # length-delimited field 2: KeyValue.value, ScopeSpans.spans, scope version, ...


def _varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement (ten bytes), as int64 requires."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _text(tag: bytes, text: str) -> bytes:
    """UTF-8; lone surrogates (undecodable argv bytes) become U+FFFD: collectors reject invalid UTF-8."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
    return _field(tag, data)


def _any(value: object) -> bytes:
    """AnyValue. Integers outside int64 become their decimal string rather than silently wrapping."""
    if isinstance(value, bool):
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return _ANY_INT + _varint(value)
        return _text(_ANY_STRING, str(value))
    if isinstance(value, float):
        return _ANY_DOUBLE + _pack("<d", value)
    if isinstance(value, (list, tuple)):
        return _field(_ANY_ARRAY, b"".join(_field(_FIELD1, _any(v)) for v in value))
    return _text(_ANY_STRING, str(value))


def _attributes(tag: bytes, attributes: Mapping[str, AttributeValue]) -> bytes:
    return b"".join(
        _field(tag, _text(_FIELD1, key) + _field(_FIELD2, _any(value))) for key, value in attributes.items()
    )


def _event(event: Event) -> bytes:
    return (
        _EVENT_TIME + event.time_ns.to_bytes(8, "little")
        + _text(_EVENT_NAME, event.name)
        + _attributes(_EVENT_ATTRIBUTES, event.attributes)
    )  # fmt: skip


def _span(span: Span) -> bytes:
    parts = [
        _field(_SPAN_TRACE_ID, bytes.fromhex(span.trace_id)),
        _field(_SPAN_SPAN_ID, bytes.fromhex(span.span_id)),
    ]
    if span.trace_state:
        parts.append(_text(_SPAN_TRACE_STATE, span.trace_state))
    if span.parent_span_id:
        parts.append(_field(_SPAN_PARENT_ID, bytes.fromhex(span.parent_span_id)))
    parts += [
        _text(_SPAN_NAME, span.name),
        _SPAN_KIND + _varint(span.kind),
        _SPAN_START + span.start_ns.to_bytes(8, "little"),
        _SPAN_END + span.end_ns.to_bytes(8, "little"),
        _attributes(_SPAN_ATTRIBUTES, span.attributes),
    ]
    parts += [_field(_SPAN_EVENTS, _event(e)) for e in span.events]
    status = _STATUS_CODE + _varint(span.status_code)
    if span.status_message:
        status = _text(_STATUS_MESSAGE, span.status_message) + status
    parts.append(_field(_SPAN_STATUS, status))
    parts.append(_SPAN_FLAGS + (span.trace_flags & 0xFF).to_bytes(4, "little"))
    return b"".join(parts)


def encode(batches: Iterable[Batch]) -> bytes:
    """One serialized ExportTraceServiceRequest. Raises ValueError when an id is not hex."""
    scope = _field(_FIELD1, _text(_FIELD1, SCOPE_NAME) + _text(_FIELD2, __version__))
    return b"".join(
        _field(
            _FIELD1,
            _field(_FIELD1, _attributes(_FIELD1, b.resource))
            + _field(_FIELD2, scope + b"".join(_field(_FIELD2, _span(s)) for s in b.spans)),
        )
        for b in batches
    )


def read_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: ints for varint/fixed fields, bytes for length-delimited.

    Raises ValueError on truncated or malformed input. Enough to read a collector's reply without protobuf.
    """
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield field, value
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > end:
                raise ValueError("truncated length-delimited field")
            yield field, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise ValueError("truncated fixed-width field")
            yield field, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
