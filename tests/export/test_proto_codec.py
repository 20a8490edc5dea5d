"""The hand-written protobuf encoder, checked by decoding its output with opentelemetry-proto."""

# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from step_tracer import __version__
from step_tracer.otlp import json_codec, proto_codec
from step_tracer.span import STATUS_ERROR, STATUS_OK, Batch, Event, Span
from tests.otlp_receiver import parse_otlp_json

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
PARENT_ID = "00f067aa0ba902b7"


def decode(data: bytes) -> Any:
    return trace_service_pb2.ExportTraceServiceRequest.FromString(data)


def any_value(value: common_pb2.AnyValue) -> object:
    kind = value.WhichOneof("value")
    assert kind is not None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    return (kind, getattr(value, kind))


def attributes(pairs: Any) -> dict[str, object]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def only_span(request: Any) -> Any:
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    (span,) = scope_spans.spans
    return span


def full_span() -> Span:
    return Span(
        "git-clone: step-clone",
        TRACE_ID,
        SPAN_ID,
        PARENT_ID,
        trace_state="vendor=abc,other=x-y",
        trace_flags=0x01,
        kind=3,
        start_ns=1_700_000_000_123_456_789,
        end_ns=1_700_000_012_987_654_321,
        attributes={"process.exit.code": 2, "cicd.pipeline.task.run.result": "failure"},
        events=[
            Event("exception", 1_700_000_005_000_000_001, {"exception.message": "boom", "n": 3}),
            Event("killed", 1_700_000_006_000_000_000),
        ],
        status_code=STATUS_ERROR,
        status_message="exit code 2",
    )


def test_every_span_field_survives_the_round_trip() -> None:
    span = full_span()
    request = decode(proto_codec.encode([Batch({"service.name": "svc", "k8s.pod.name": "p"}, [span])]))

    (resource_spans,) = request.resource_spans
    assert attributes(resource_spans.resource.attributes) == {
        "service.name": ("string_value", "svc"),
        "k8s.pod.name": ("string_value", "p"),
    }
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "step-tracer"
    assert scope_spans.scope.version == __version__
    (pb,) = scope_spans.spans
    assert pb.trace_id == bytes.fromhex(TRACE_ID)
    assert pb.span_id == bytes.fromhex(SPAN_ID)
    assert pb.parent_span_id == bytes.fromhex(PARENT_ID)
    assert pb.trace_state == "vendor=abc,other=x-y"
    assert pb.flags == 1
    assert pb.name == "git-clone: step-clone"
    assert pb.kind == 3
    assert pb.start_time_unix_nano == 1_700_000_000_123_456_789
    assert pb.end_time_unix_nano == 1_700_000_012_987_654_321
    assert attributes(pb.attributes) == {
        "process.exit.code": ("int_value", 2),
        "cicd.pipeline.task.run.result": ("string_value", "failure"),
    }
    assert [(e.name, e.time_unix_nano, attributes(e.attributes)) for e in pb.events] == [
        (
            "exception",
            1_700_000_005_000_000_001,
            {"exception.message": ("string_value", "boom"), "n": ("int_value", 3)},
        ),
        ("killed", 1_700_000_006_000_000_000, {}),
    ]
    assert pb.status.code == STATUS_ERROR
    assert pb.status.message == "exit code 2"
    assert not pb.links
    assert pb.dropped_attributes_count == pb.dropped_events_count == 0


def test_root_span_has_no_parent_and_defaults_stay_empty() -> None:
    span = Span("root", TRACE_ID, SPAN_ID, trace_flags=0, status_code=STATUS_OK)
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    assert pb.parent_span_id == b""
    assert pb.trace_state == ""
    assert pb.flags == 0
    assert pb.kind == 1
    assert pb.start_time_unix_nano == pb.end_time_unix_nano == 0
    assert pb.status.code == STATUS_OK
    assert pb.status.message == ""
    assert not pb.attributes and not pb.events


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("string_value", "")),
        ("plain", ("string_value", "plain")),
        (True, ("bool_value", True)),
        (False, ("bool_value", False)),
        (0, ("int_value", 0)),
        (1, ("int_value", 1)),
        (127, ("int_value", 127)),
        (128, ("int_value", 128)),
        (300, ("int_value", 300)),
        (-1, ("int_value", -1)),
        (-300, ("int_value", -300)),
        (2**31, ("int_value", 2**31)),
        (2**63 - 1, ("int_value", 2**63 - 1)),
        (-(2**63), ("int_value", -(2**63))),
        (0.0, ("double_value", 0.0)),
        (-1.5, ("double_value", -1.5)),
        (1e308, ("double_value", 1e308)),
        (5e-324, ("double_value", 5e-324)),
        (math.inf, ("double_value", math.inf)),
        (-math.inf, ("double_value", -math.inf)),
        (["a", "", "ü"], [("string_value", "a"), ("string_value", ""), ("string_value", "ü")]),
        ([1, -2, 2**40], [("int_value", 1), ("int_value", -2), ("int_value", 2**40)]),
        ([0.5, -0.25], [("double_value", 0.5), ("double_value", -0.25)]),
        ([True, False], [("bool_value", True), ("bool_value", False)]),
        ((7, 8), [("int_value", 7), ("int_value", 8)]),
        ([], []),
    ],
)
def test_any_value_types(value: object, expected: object) -> None:
    span = Span("s", TRACE_ID, SPAN_ID, attributes={"v": value})  # type: ignore[dict-item]
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    assert attributes(pb.attributes) == {"v": expected}


def test_nan_stays_nan() -> None:
    span = Span("s", TRACE_ID, SPAN_ID, attributes={"v": math.nan})
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    assert math.isnan(pb.attributes[0].value.double_value)


def test_negative_int_is_ten_byte_twos_complement_varint() -> None:
    """int64 (not sint64): -1 must be 0xff..ff 0x01, the encoding every protobuf runtime produces."""
    encoded = proto_codec.encode([Batch({"n": -1}, [])])
    assert b"\x18" + b"\xff" * 9 + b"\x01" in encoded
    assert decode(encoded).resource_spans[0].resource.attributes[0].value.int_value == -1


def test_ints_beyond_int64_become_decimal_strings_instead_of_wrapping() -> None:
    span = Span("s", TRACE_ID, SPAN_ID, attributes={"big": 2**64 + 5, "small": -(2**63) - 1})
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    assert attributes(pb.attributes) == {
        "big": ("string_value", str(2**64 + 5)),
        "small": ("string_value", str(-(2**63) - 1)),
    }


def test_unicode_everywhere() -> None:
    text = "Ünïcødé ✓ 日本語 🚀 e\u0301 \x00 \u2028"
    span = Span(
        text,
        TRACE_ID,
        SPAN_ID,
        trace_state="k=" + "v",
        attributes={text: text, "list": [text, "🚀"]},
        events=[Event(text, 1, {text: text})],
        status_message=text,
    )
    request = decode(proto_codec.encode([Batch({"service.name": text}, [span])]))
    pb = only_span(request)
    assert pb.name == text
    assert pb.status.message == text
    assert attributes(pb.attributes) == {
        text: ("string_value", text),
        "list": [("string_value", text), ("string_value", "🚀")],
    }
    assert pb.events[0].name == text
    assert attributes(pb.events[0].attributes) == {text: ("string_value", text)}
    assert attributes(request.resource_spans[0].resource.attributes) == {"service.name": ("string_value", text)}


def test_lone_surrogates_become_replacement_characters() -> None:
    """argv bytes that are not UTF-8 arrive as surrogate escapes; the wire needs valid UTF-8."""
    span = Span("make \udcff", TRACE_ID, SPAN_ID, attributes={"arg": "a\udc80b"})
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    assert pb.name == "make \ufffd"
    assert attributes(pb.attributes) == {"arg": ("string_value", "a\ufffdb")}


def test_many_attributes_and_long_values_need_multibyte_lengths() -> None:
    many = {f"attr.{i}": (i if i % 3 == 0 else f"value-{i}" * (i % 7)) for i in range(2000)}
    long_text = "x" * 70_000  # length varint of three bytes
    span = Span("s", TRACE_ID, SPAN_ID, attributes={**many, "long": long_text})
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    decoded = attributes(pb.attributes)
    assert len(decoded) == 2001
    assert decoded["long"] == ("string_value", long_text)
    for key, value in many.items():
        kind = "int_value" if isinstance(value, int) else "string_value"
        assert decoded[key] == (kind, value)


def test_extreme_timestamps_use_all_64_bits() -> None:
    span = Span("s", TRACE_ID, SPAN_ID, start_ns=0, end_ns=2**64 - 1, events=[Event("e", 2**63)])
    pb = only_span(decode(proto_codec.encode([Batch({}, [span])])))
    assert pb.start_time_unix_nano == 0
    assert pb.end_time_unix_nano == 2**64 - 1
    assert pb.events[0].time_unix_nano == 2**63


def test_flags_are_a_fixed32_of_the_trace_flags_byte() -> None:
    span = Span("s", TRACE_ID, SPAN_ID, trace_flags=0x1FF)
    encoded = proto_codec.encode([Batch({}, [span])])
    assert b"\x85\x01" + struct.pack("<I", 0xFF) in encoded
    assert only_span(decode(encoded)).flags == 0xFF


def test_several_batches_and_spans_keep_their_grouping_and_order() -> None:
    first = [Span(f"a{i}", TRACE_ID, f"{i + 1:016x}", SPAN_ID) for i in range(3)]
    second = [Span("b0", "f" * 32, "e" * 16)]
    request = decode(proto_codec.encode([Batch({"service.name": "a"}, first), Batch({"service.name": "b"}, second)]))
    assert [
        (attributes(rs.resource.attributes)["service.name"], [s.name for ss in rs.scope_spans for s in ss.spans])
        for rs in request.resource_spans
    ] == [(("string_value", "a"), ["a0", "a1", "a2"]), (("string_value", "b"), ["b0"])]
    assert [s.span_id.hex() for s in request.resource_spans[0].scope_spans[0].spans] == [
        "0000000000000001",
        "0000000000000002",
        "0000000000000003",
    ]


def test_empty_request_is_empty_bytes() -> None:
    assert proto_codec.encode([]) == b""
    assert decode(b"") == trace_service_pb2.ExportTraceServiceRequest()


def test_same_message_as_the_json_codec() -> None:
    """Both codecs describe one request: parsing either yields an identical protobuf message."""
    batches = [
        Batch({"service.name": "svc", "n": -7, "f": 0.25, "l": ["x", "y"]}, [full_span()]),
        Batch({}, [Span("root", TRACE_ID, "1" * 16, attributes={"b": True, "ints": [1, 2**62]})]),
    ]
    from_proto = decode(proto_codec.encode(batches))
    from_json = parse_otlp_json(json_codec.encode(batches).encode())
    assert from_proto == from_json


def test_bad_hex_id_raises_value_error() -> None:
    with pytest.raises(ValueError):
        proto_codec.encode([Batch({}, [Span("s", "not-hex", SPAN_ID)])])


def test_read_fields_reads_what_protobuf_writes() -> None:
    response = trace_service_pb2.ExportTraceServiceResponse()
    response.partial_success.rejected_spans = 3
    response.partial_success.error_message = "too old"
    ((field, inner),) = list(proto_codec.read_fields(response.SerializeToString()))
    assert field == 1
    assert isinstance(inner, bytes)
    assert dict(proto_codec.read_fields(inner)) == {1: 3, 2: b"too old"}
    fixed = list(proto_codec.read_fields(b"\x09" + (2**64 - 1).to_bytes(8, "little") + b"\x15\x01\x00\x00\x00"))
    assert fixed == [(1, 2**64 - 1), (2, 1)]


@pytest.mark.parametrize("data", [b"\x0a\x05abc", b"\x08", b"\x08\xff", b"\x09\x00", b"\x0b", b"\x80" * 11])
def test_read_fields_rejects_truncated_or_unknown_input(data: bytes) -> None:
    with pytest.raises(ValueError):
        list(proto_codec.read_fields(data))
