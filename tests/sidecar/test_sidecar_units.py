"""The sidecar's pure decisions, each in isolation: recovery results, exporter choice, step list, conversion."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from step_tracer.sidecar import recovery
from step_tracer.sidecar.convert import Converter, parse_steps
from step_tracer.sidecar.service import drain_deadline
from step_tracer.sidecar.shipper import exporter_mode
from step_tracer.span import STATUS_ERROR, Event, Span

SECOND = 1_000_000_000


def started(timeout: object = None, start_ns: int = 100 * SECOND) -> Span:
    span = Span("build", "a" * 32, "b" * 16, "c" * 16, start_ns=start_ns, attributes={"tekton.step.index": 0})
    if timeout is not None:
        span.attributes["tekton.step.timeout"] = timeout  # type: ignore[assignment]
    return span


def test_recovery_is_a_timeout_once_the_timeout_has_passed() -> None:
    span = recovery.recover(started(2.5), noticed_ns=102 * SECOND + SECOND // 2)  # exactly at the timeout
    assert span.end_ns == 102 * SECOND + SECOND // 2
    assert span.attributes["cicd.pipeline.task.run.result"] == "timeout"
    assert span.attributes["error.type"] == "timeout"
    assert span.status_code == STATUS_ERROR


@pytest.mark.parametrize("timeout", [2.5, None, 0, -1, "10", True])
def test_recovery_is_end_not_observed_before_the_timeout_or_without_a_usable_one(timeout: object) -> None:
    span = recovery.recover(started(timeout), noticed_ns=102 * SECOND)
    assert span.end_ns == 102 * SECOND
    assert span.attributes["cicd.pipeline.task.run.result"] == "error"
    assert span.attributes["error.type"] == recovery.END_NOT_OBSERVED


def test_recovery_never_ends_before_the_start() -> None:
    assert recovery.recover(started(), noticed_ns=50 * SECOND).end_ns == 100 * SECOND


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "file"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "otlp"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, "none"),
    ],
)
def test_exporter_mode(env: dict[str, str], mode: str) -> None:
    warnings: list[str] = []
    assert exporter_mode(env, warnings.append) == mode
    assert len(warnings) == (1 if env.get("OTEL_TRACES_EXPORTER") in ("file", "zipkin") else 0)


def test_step_list_tolerates_partial_entries_and_reports_garbage_once() -> None:
    warnings: list[str] = []
    steps = parse_steps('[{"name":"a","image":"i","onError":"continue"}, {}, 7, {"image": "j"}]', warnings.append)
    assert [(s.name, s.image, s.on_error) for s in steps] == [
        ("a", "i", "continue"),
        ("", "", ""),
        ("", "", ""),
        ("", "j", ""),
    ]
    assert warnings == []
    assert parse_steps('{"a": 1}', warnings.append) == []
    assert parse_steps("[", warnings.append) == []
    assert len(warnings) == 2
    assert warnings[1].startswith("ignoring STEP_TRACER_STEPS: not a JSON list of steps (at character 1)")
    assert not any("Expecting" in w for w in warnings)  # json's wording, not ours
    assert parse_steps("  ", warnings.append) == []


@pytest.mark.parametrize(("text", "value"), [("", 10.0), ("2.5", 2.5), ("0", 10.0), ("-1", 10.0), ("soon", 10.0)])
def test_drain_deadline(text: str, value: float) -> None:
    assert drain_deadline({"STEP_TRACER_DRAIN_DEADLINE": text}) == value


def test_conversion_keeps_ids_times_events_status_and_shares_resources() -> None:
    converter = Converter("node-1", parse_steps('[{"image": "img"}]', print))
    span = Span(
        "build",
        "0" * 31 + "1",
        "0" * 15 + "2",
        "0" * 15 + "3",
        trace_state="k=v",
        kind=3,
        start_ns=5,
        end_ns=9,
        attributes={"tekton.step.index": 0, "list": ["a", "b"]},
        events=[Event("e", 7, {"x": 1})],
        status_code=STATUS_ERROR,
        status_message="exit code 1",
    )
    first = converter.readable({"service.name": "s"}, span)
    second = converter.readable({"service.name": "s"}, Span("other", "1" * 32, "2" * 16, start_ns=1, end_ns=2))
    assert first.resource is second.resource
    assert dict(first.resource.attributes) == {"service.name": "s", "k8s.node.name": "node-1"}
    context = first.get_span_context()
    assert context is not None
    assert (context.trace_id, context.span_id) == (1, 2)
    assert context.trace_state.to_header() == "k=v"
    assert first.parent is not None and first.parent.span_id == 3 and first.parent.is_remote
    assert (first.start_time, first.end_time, first.kind) == (5, 9, SpanKind.CLIENT)
    assert first.attributes is not None and first.attributes["tekton.step.image"] == "img"
    assert [(e.name, e.timestamp, dict(e.attributes or {})) for e in first.events] == [("e", 7, {"x": 1})]
    assert (first.status.status_code, first.status.description) == (StatusCode.ERROR, "exit code 1")
    assert second.parent is None


def test_conversion_rejects_invalid_ids() -> None:
    converter = Converter("", [])
    with pytest.raises(ValueError):
        converter.readable({}, Span("x", "0" * 32, "1" * 16))
    with pytest.raises(ValueError):
        converter.readable({}, Span("x", "zz" * 16, "1" * 16))
