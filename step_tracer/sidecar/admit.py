"""What a spool record may say, and how much a pod may send: the sidecar's checks on untrusted input.

A step is the tenant's code and shares the spool with the sidecar, which exports with the platform's
credentials. So a record only proposes a span: the sidecar decides its identity (resource, pod attributes,
step image/onError from its own pod info and STEP_TRACER_STEPS), checks that it is a step of this pod or a
child span of one, bounds everything else, and counts it against the pod's quotas (README, "Security model").
Every problem raises `Rejected`, which costs that record only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from step_tracer.span import Event, Span
from step_tracer.tekton import podinfo

if TYPE_CHECKING:
    from step_tracer.sidecar.convert import StepInfo
    from step_tracer.span import Attributes, AttributeValue

#: Defaults of the pod's quotas, each overridable by its environment variable (README, "Security model").
DEFAULT_MAX_RECORDS = 10_000  # STEP_TRACER_MAX_RECORDS: records read per pod (a real step writes 2 or 3)
DEFAULT_RECORD_RATE = 200.0  # STEP_TRACER_RECORD_RATE: records read per second, after a burst of 4 seconds' worth
DEFAULT_SPANS_PER_STEP = 100  # STEP_TRACER_MAX_SPANS_PER_STEP: a step's span and its child spans shipped

MAX_NAME = 256
MAX_KEY = 256
MAX_STRING = 4096
MAX_ARRAY = 128
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
MAX_EVENT_ATTRIBUTES = 32
MAX_STATUS_MESSAGE = 1024
MAX_TRACE_STATE = 512
#: Times a record may claim: not older than a week, not later than an hour from now.
PAST_NS = 7 * 86400 * 10**9
FUTURE_NS = 3600 * 10**9
_INT64 = (-(2**63), 2**63 - 1)
_HEX = frozenset("0123456789abcdef")

FOREIGN_TRACE = "tekton.trace.foreign"
#: Span attributes only the sidecar sets: a record's values are replaced (or removed) rather than trusted.
SIDECAR_ATTRIBUTES = frozenset(
    {target for _label, target in podinfo.LABEL_ATTRIBUTES}
    | {"cicd.pipeline.task.name", "tekton.step.image", "tekton.step.on_error", FOREIGN_TRACE}
)


class Rejected(ValueError):
    """This record is not shipped; the message says why (one line)."""


class Orphan(Rejected):
    """Not a step span, and its parent is no step span seen yet (the parent's record may come later in a pass)."""


class Limits:
    __slots__ = ("burst", "rate", "records", "spans_per_step")

    def __init__(
        self,
        records: int = DEFAULT_MAX_RECORDS,
        rate: float = DEFAULT_RECORD_RATE,
        spans_per_step: int = DEFAULT_SPANS_PER_STEP,
    ) -> None:
        self.records = records
        self.rate = rate
        self.burst = max(rate * 4, 1.0)
        self.spans_per_step = spans_per_step

    @classmethod
    def from_env(cls, env: Mapping[str, str], warn: Callable[[str], None]) -> Limits:
        return cls(
            int(positive_number(env, "STEP_TRACER_MAX_RECORDS", DEFAULT_MAX_RECORDS, warn)),
            positive_number(env, "STEP_TRACER_RECORD_RATE", DEFAULT_RECORD_RATE, warn),
            int(positive_number(env, "STEP_TRACER_MAX_SPANS_PER_STEP", DEFAULT_SPANS_PER_STEP, warn)),
        )


def positive_number(
    env: Mapping[str, str], name: str, default: float, warn: Callable[[str], None], unit: str = ""
) -> float:
    """A finite positive number from the environment; anything else costs one line and gives `default`."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
        if not 0 < value < float("inf"):
            raise ValueError
    except ValueError:
        warn(f"ignoring {name}={text!r}: expected a positive number{unit}; using {default:g}")
        return default
    return value


class TokenBucket:
    """`rate` tokens a second up to `burst`; the clock is injectable so tests need not sleep."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait_time(self) -> float:
        """Seconds until `take` can succeed."""
        self._refill()
        return max((1 - self.tokens) / self.rate, 0.0)


class Admission:
    """Turns a record's span into the span the sidecar ships, with the resource the sidecar decides."""

    def __init__(
        self,
        steps: list[StepInfo],
        pod_trace: str,
        pod_attributes: Attributes,
        resource: Attributes,
        limits: Limits,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.steps = steps
        self.pod_trace = pod_trace
        self.pod_attributes = dict(pod_attributes)
        self.resource = dict(resource)
        self.limits = limits
        self.clock_ns = clock_ns
        self.step_spans: dict[str, int] = {}  # span id of an admitted step span -> its step index
        self.shipped: dict[int, int] = {}  # step index (-1: not a known step) -> spans charged
        self.charged: set[str] = set()  # record keys already counted, so a retried export is not counted twice

    def step_of(self, span: Span) -> int:
        """The step `span` belongs to (-1 when the pod's steps are unknown and it names none).

        With STEP_TRACER_STEPS: a step span's index and name must be one of them; any other span must be the
        child of a step span the sidecar has already seen."""
        index = span.attributes.get("tekton.step.index")
        if index is not None:
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise Rejected(f"tekton.step.index {str(index)[:40]!r} is not a step index")
            if self.steps:
                name = span.attributes.get("tekton.step.name")
                # A patched StepAction's wrapper says its own name and index 0: it is the step that runs it.
                refs = [i for i, step in enumerate(self.steps) if step.ref and step.ref == name]
                if refs and (index >= len(self.steps) or self.steps[index].name != name):
                    index = refs[0]
                elif index >= len(self.steps):
                    raise Rejected(f"tekton.step.index {index} is not a step of this pod ({len(self.steps)} steps)")
                elif self.steps[index].name and isinstance(name, str) and name and name != self.steps[index].name:
                    raise Rejected(f"step {index} is {self.steps[index].name!r}, not {name[:80]!r}")
            self.step_spans.setdefault(span.span_id, index)
            return index
        parent = self.step_spans.get(span.parent_span_id)
        if parent is not None:
            return parent
        if self.steps:
            raise Orphan("neither a step of this pod nor a child span of one")
        return -1

    def admit(self, key: str, span: Span) -> tuple[Attributes, Span]:
        """(resource, span) to ship for the record `key`, or Rejected. Counts it against its step's quota."""
        clean = normalise(span, self.clock_ns())
        step = self.step_of(clean)
        if key not in self.charged:
            count = self.shipped.get(step, 0)
            if count >= self.limits.spans_per_step:
                raise Rejected(f"over the quota of {self.limits.spans_per_step} spans for step {step}")
            self.shipped[step] = count + 1
            self.charged.add(key)
        for name in SIDECAR_ATTRIBUTES:
            clean.attributes.pop(name, None)
        clean.attributes.update(self.pod_attributes)
        if self.pod_trace and clean.trace_id != self.pod_trace:
            clean.attributes[FOREIGN_TRACE] = True
        resource = dict(self.resource)
        if step >= 0:
            name = self.steps[step].name if step < len(self.steps) else ""
            claimed = clean.attributes.get("tekton.step.name")
            if not name and isinstance(claimed, str) and clean.attributes.get("tekton.step.index") == step:
                name = claimed
            resource["k8s.container.name"] = podinfo.container_name(name, step)
        return resource, clean


def _hex_id(value: object, digits: int, what: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise Rejected(f"{what} is not a string")
    if empty and value == "":
        return value
    if len(value) != digits or not _HEX.issuperset(value) or value.strip("0") == "":
        raise Rejected(f"{what} {value[:40]!r} is not {digits} hex digits")
    return value


def _time(value: object, low: int, high: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Rejected(f"{what} {str(value)[:40]} is not a time between a week ago and an hour from now")
    return value


def _string(value: object, limit: int) -> str:
    return (value if isinstance(value, str) else str(value))[:limit]


def _value(value: object) -> AttributeValue | None:
    """An attribute value OTLP can carry, bounded; None to drop it."""
    if isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else None
    if isinstance(value, str):
        return value[:MAX_STRING]
    if isinstance(value, (list, tuple)):
        items = list(value[:MAX_ARRAY])
        kinds = {type(item) for item in items}
        if len(kinds) > 1 or not kinds <= {str, bool, int, float}:
            return None
        if kinds == {str}:
            return [item[:MAX_STRING] for item in items]
        if kinds == {int} and not all(_INT64[0] <= item <= _INT64[1] for item in items):
            return None
        return items
    return None


def attributes(items: object, limit: int) -> Attributes:
    """At most `limit` well-typed attributes with bounded keys and values; the rest are dropped."""
    result: Attributes = {}
    if not isinstance(items, Mapping):
        return result
    for key, value in items.items():
        if len(result) >= limit:
            break
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            continue
        clean = _value(value)
        if clean is not None:
            result[key] = clean
    return result


def normalise(span: Span, now_ns: int, past_ns: int = PAST_NS) -> Span:
    """A copy of `span` that any exporter can encode: ids and times checked (Rejected), strings, attributes and
    events bounded, enums and trace state valid. A start record (end 0) keeps its end 0."""
    if not isinstance(span.name, str):
        raise Rejected(f"span name is a {type(span.name).__name__}, not a string")
    trace_id = _hex_id(span.trace_id, 32, "trace id")
    span_id = _hex_id(span.span_id, 16, "span id")
    parent = _hex_id(span.parent_span_id, 16, "parent span id", empty=True)
    low, high = max(now_ns - past_ns, 1), now_ns + FUTURE_NS
    start = _time(span.start_ns, low, high, "start")
    end = span.end_ns
    if end != 0:
        end = _time(end, start, high, "end")
    state = span.trace_state if isinstance(span.trace_state, str) else ""
    if len(state) > MAX_TRACE_STATE or not all(" " <= c <= "~" for c in state):
        state = ""
    clean = Span(
        span.name[:MAX_NAME],
        trace_id,
        span_id,
        parent,
        trace_state=state,
        trace_flags=span.trace_flags & 0xFF if isinstance(span.trace_flags, int) else 1,
        kind=span.kind if isinstance(span.kind, int) and 1 <= span.kind <= 5 else 1,
        start_ns=start,
        end_ns=end,
        attributes=attributes(span.attributes, MAX_ATTRIBUTES),
        status_code=span.status_code if span.status_code in (0, 1, 2) else 0,
        status_message=_string(span.status_message or "", MAX_STATUS_MESSAGE),
    )
    last = end or high
    for event in list(span.events)[:MAX_EVENTS] if isinstance(span.events, list) else []:
        if not isinstance(event, Event) or not isinstance(event.name, str):
            continue
        at = event.time_ns if isinstance(event.time_ns, int) and start <= event.time_ns <= last else start
        clean.events.append(Event(event.name[:MAX_NAME], at, attributes(event.attributes, MAX_EVENT_ATTRIBUTES)))
    return clean
