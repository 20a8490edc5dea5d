"""OTLP JSON (the protobuf JSON mapping of ExportTraceServiceRequest), one request per line.

This is the format the OpenTelemetry Collector's `otlpjsonfile` receiver reads and its `file` exporter writes:
ids as lowercase hex, 64-bit integers and timestamps as decimal strings, enums as numbers.
"""

from __future__ import annotations

from _json import encode_basestring as _quote

from step_tracer import __version__
from step_tracer.span import SCOPE_NAME, Batch, Event, Span

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~20 ms here)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from step_tracer.span import AttributeValue


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return '{"boolValue":' + ("true" if value else "false") + "}"
    if isinstance(value, int):
        return '{"intValue":"' + str(value) + '"}'
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            text = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
            return '{"doubleValue":"' + text + '"}'
        return '{"doubleValue":' + repr(value) + "}"
    if isinstance(value, (list, tuple)):
        return '{"arrayValue":{"values":[' + ",".join(_scalar(v) for v in value) + "]}}"
    return '{"stringValue":' + _quote(str(value)) + "}"


def _attributes(attributes: Mapping[str, AttributeValue]) -> str:
    return ",".join('{"key":' + _quote(k) + ',"value":' + _scalar(v) + "}" for k, v in attributes.items())


def _event(event: Event) -> str:
    return (
        '{"timeUnixNano":"' + str(event.time_ns) + '","name":' + _quote(event.name)
        + ',"attributes":[' + _attributes(event.attributes) + "]}"
    )  # fmt: skip


def _span(span: Span) -> str:
    parts = [
        '"traceId":"' + span.trace_id + '"',
        '"spanId":"' + span.span_id + '"',
    ]
    if span.trace_state:
        parts.append('"traceState":' + _quote(span.trace_state))
    if span.parent_span_id:
        parts.append('"parentSpanId":"' + span.parent_span_id + '"')
    parts += [
        '"flags":' + str(span.trace_flags & 0xFF),
        '"name":' + _quote(span.name),
        '"kind":' + str(span.kind),
        '"startTimeUnixNano":"' + str(span.start_ns) + '"',
        '"endTimeUnixNano":"' + str(span.end_ns) + '"',
        '"attributes":[' + _attributes(span.attributes) + "]",
    ]
    if span.events:
        parts.append('"events":[' + ",".join(_event(e) for e in span.events) + "]")
    status = '"code":' + str(span.status_code)
    if span.status_message:
        status += ',"message":' + _quote(span.status_message)
    parts.append('"status":{' + status + "}")
    return "{" + ",".join(parts) + "}"


def encode(batches: Iterable[Batch]) -> str:
    """One ExportTraceServiceRequest as a single JSON line (no trailing newline)."""
    scope = '{"name":"' + SCOPE_NAME + '","version":"' + __version__ + '"}'
    resource_spans = [
        '{"resource":{"attributes":[' + _attributes(b.resource) + ']},"scopeSpans":[{"scope":' + scope
        + ',"spans":[' + ",".join(_span(s) for s in b.spans) + "]}]}"
        for b in batches
    ]  # fmt: skip
    return '{"resourceSpans":[' + ",".join(resource_spans) + "]}"


def _value(any_value: Mapping[str, object]) -> AttributeValue:
    if "stringValue" in any_value:
        return str(any_value["stringValue"])
    if "boolValue" in any_value:
        return bool(any_value["boolValue"])
    if "intValue" in any_value:
        return int(str(any_value["intValue"]))
    if "doubleValue" in any_value:
        return float(str(any_value["doubleValue"]))
    if "arrayValue" in any_value:
        array = any_value["arrayValue"]
        values = array.get("values", []) if isinstance(array, dict) else []
        return [_value(v) for v in values]  # type: ignore[return-value]
    return ""


def _decode_attributes(items: object) -> dict[str, AttributeValue]:
    if not isinstance(items, list):
        return {}
    return {str(kv["key"]): _value(kv.get("value", {})) for kv in items}


def _hex(value: object) -> str:
    return str(value or "").lower()


def decode(line: str) -> list[Batch]:
    """Parse one OTLP JSON request line back into batches. Raises ValueError on malformed input."""
    import json

    try:
        request = json.loads(line)
    except RecursionError:  # nesting deeper than the interpreter's recursion limit: never a real request
        raise ValueError("not an OTLP JSON trace request: nested too deeply") from None
    except ValueError as err:
        raise ValueError(f"not an OTLP JSON trace request: {err}") from err
    return decode_request(request)


def _enum(value: object, names: Mapping[str, int]) -> int:
    """A protobuf enum as the JSON mapping allows it: its number, or its name (which parsers must accept)."""
    if isinstance(value, str):
        return names[value] if value in names else int(value)
    if isinstance(value, (int, float)):
        return int(value)
    raise ValueError(f"not an enum value: {value!r}")


_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def decode_request(request: object) -> list[Batch]:
    """Batches from an already parsed OTLP JSON request (a TracesData object has the same shape).

    Raises ValueError on anything else; a Jaeger api_v3 answer's `result` is such an object.
    """
    try:
        batches = []
        for rs in request.get("resourceSpans", []):  # type: ignore[attr-defined]
            resource = _decode_attributes(rs.get("resource", {}).get("attributes"))
            spans = []
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    status = s.get("status", {})
                    spans.append(
                        Span(
                            s.get("name", ""),
                            _hex(s.get("traceId")),
                            _hex(s.get("spanId")),
                            _hex(s.get("parentSpanId")),
                            trace_state=s.get("traceState", ""),
                            trace_flags=int(s.get("flags", 1)) & 0xFF,
                            kind=_enum(s.get("kind", 1), _KINDS),
                            start_ns=int(s.get("startTimeUnixNano", 0)),
                            end_ns=int(s.get("endTimeUnixNano", 0)),
                            attributes=_decode_attributes(s.get("attributes")),
                            events=[
                                Event(
                                    e.get("name", ""),
                                    int(e.get("timeUnixNano", 0)),
                                    _decode_attributes(e.get("attributes")),
                                )
                                for e in s.get("events", [])
                            ],
                            status_code=_enum(status.get("code", 0), _STATUS_CODES),
                            status_message=status.get("message", ""),
                        )
                    )
            batches.append(Batch(resource, spans))
    except RecursionError:  # nesting deeper than the interpreter's recursion limit: never a real request
        raise ValueError("not an OTLP JSON trace request: nested too deeply") from None
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not an OTLP JSON trace request: {err}") from err
    return batches
