"""A step whose wrapper wrote a `.start` but never an `.end`: SIGKILLed by Tekton's step timeout, OOM-killed,
or its container stopped. The sidecar still reports it, from the write-ahead record.
"""

from __future__ import annotations

from step_tracer.span import STATUS_ERROR, Span

RESULT = "cicd.pipeline.task.run.result"
END_NOT_OBSERVED = "step_end_not_observed"


def step_index(span: Span) -> int | None:
    value = span.attributes.get("tekton.step.index")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def step_timeout_ns(span: Span) -> int | None:
    value = span.attributes.get("tekton.step.timeout")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return int(value * 1e9)


def recover(span: Span, noticed_ns: int) -> Span:
    """Finish `span` (a start record) as the contract says: a `timeout` ending at start + the step timeout when
    that moment had passed by `noticed_ns`, else an `error` (`step_end_not_observed`) ending at `noticed_ns`."""
    timeout = step_timeout_ns(span)
    if timeout is not None and span.start_ns + timeout <= noticed_ns:
        span.end_ns = span.start_ns + timeout
        span.attributes[RESULT] = "timeout"
        span.attributes["error.type"] = "timeout"
        span.status_message = f"timed out after {timeout / 1e9:g}s (the step's end was not observed)"
    else:
        span.end_ns = max(noticed_ns, span.start_ns)
        span.attributes[RESULT] = "error"
        span.attributes["error.type"] = END_NOT_OBSERVED
        span.status_message = "the step's end was not observed (its wrapper was killed or its container stopped)"
    span.status_code = STATUS_ERROR
    return span
