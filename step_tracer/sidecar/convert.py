"""Spool records to OpenTelemetry SDK spans, plus what only the sidecar knows (node name, step image/onError)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from step_tracer import __version__
from step_tracer.span import SCOPE_NAME, Span

if TYPE_CHECKING:
    from step_tracer.span import AttributeValue

# OTLP's enum starts with UNSPECIFIED=0, INTERNAL=1; the SDK's SpanKind starts with INTERNAL=0.
_KINDS = {
    1: SpanKind.INTERNAL,
    2: SpanKind.SERVER,
    3: SpanKind.CLIENT,
    4: SpanKind.PRODUCER,
    5: SpanKind.CONSUMER,
}
_SCOPE = InstrumentationScope(SCOPE_NAME, __version__)


class StepInfo:
    """Per step index, from the patcher's STEP_TRACER_STEPS: what a step's wrapper cannot see about itself."""

    __slots__ = ("image", "name", "on_error", "ref")

    def __init__(self, name: str, image: str, on_error: str, ref: str = "") -> None:
        self.name = name
        self.image = image
        self.on_error = on_error
        self.ref = ref  # the StepAction a `ref` step runs: its wrapper reports that name, at index 0


def parse_steps(text: str, warn: Callable[[str], None]) -> list[StepInfo]:
    """STEP_TRACER_STEPS = JSON list of {"name", "image", "onError"}; a bad value costs one line, not the sidecar."""
    if not text.strip():
        return []
    try:
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("not a JSON list")
    except ValueError as err:  # json's own text ("Expecting property name ...") means nothing to a Task author
        at = f" (at character {err.pos})" if isinstance(err, json.JSONDecodeError) else ""
        warn(
            f"ignoring STEP_TRACER_STEPS: not a JSON list of steps{at}; "
            "spans lack tekton.step.image and tekton.step.on_error"
        )
        return []
    steps = []
    for item in items:
        entry = item if isinstance(item, dict) else {}
        steps.append(
            StepInfo(
                str(entry.get("name") or ""),
                str(entry.get("image") or ""),
                str(entry.get("onError") or ""),
                str(entry.get("ref") or ""),
            )
        )
    return steps


class Converter:
    """Builds ReadableSpans; Resource objects are shared between records with equal attributes so the encoder
    groups their spans under one resource."""

    def __init__(self, node_name: str, steps: list[StepInfo]) -> None:
        self.node_name = node_name
        self.steps = steps
        self._resources: dict[tuple[tuple[str, str], ...], Resource] = {}

    def step_info(self, span: Span) -> StepInfo | None:
        index = span.attributes.get("tekton.step.index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.steps):
            return self.steps[index]
        return None

    def enrich(self, span: Span) -> None:
        info = self.step_info(span)
        if info is None:
            return
        if info.image:
            span.attributes["tekton.step.image"] = info.image
        if info.on_error:
            span.attributes["tekton.step.on_error"] = info.on_error

    def resource(self, attributes: Mapping[str, AttributeValue]) -> Resource:
        merged = dict(attributes)
        if self.node_name:
            merged["k8s.node.name"] = self.node_name
        key = tuple(sorted((k, repr(v)) for k, v in merged.items()))
        found = self._resources.get(key)
        if found is None:
            if len(self._resources) > 256:  # one pod has a few containers; never let this grow unbounded
                self._resources.clear()
            found = self._resources[key] = Resource(merged)
        return found

    def readable(self, resource: Mapping[str, AttributeValue], span: Span) -> ReadableSpan:
        """Raises ValueError for ids that are not hex."""
        self.enrich(span)
        trace_id = int(span.trace_id, 16)
        flags = TraceFlags(span.trace_flags & 0xFF)
        state = TraceState.from_header([span.trace_state]) if span.trace_state else None
        context = SpanContext(trace_id, int(span.span_id, 16), is_remote=False, trace_flags=flags, trace_state=state)
        parent = None
        if span.parent_span_id:
            parent = SpanContext(
                trace_id, int(span.parent_span_id, 16), is_remote=True, trace_flags=flags, trace_state=state
            )
        if not (context.is_valid and (parent is None or parent.is_valid)):
            raise ValueError(f"invalid ids in {span!r}")
        status_code = StatusCode(span.status_code) if span.status_code in (0, 1, 2) else StatusCode.UNSET
        status = Status(status_code, span.status_message or None if status_code is StatusCode.ERROR else None)
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=parent,
            resource=self.resource(resource),
            attributes=dict(span.attributes),
            events=[Event(e.name, dict(e.attributes), e.time_ns) for e in span.events],
            kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
            instrumentation_scope=_SCOPE,
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
        )
