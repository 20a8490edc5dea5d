"""W3C Trace Context for environment carriers (TRACEPARENT / TRACESTATE).

Parsed by hand: this runs before every wrapped step, where `re` alone would cost more than the rest.
"""

from __future__ import annotations

import os

_HEX = frozenset("0123456789abcdef")


class SpanContext:
    __slots__ = ("span_id", "trace_flags", "trace_id", "trace_state")

    def __init__(self, trace_id: str, span_id: str, trace_flags: int = 1, trace_state: str = "") -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags
        self.trace_state = trace_state

    @property
    def sampled(self) -> bool:
        return bool(self.trace_flags & 1)

    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.trace_flags:02x}"


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text) and text.strip("0") != ""


def parse_traceparent(value: str, tracestate: str = "") -> SpanContext | None:
    """The remote parent named by a `traceparent` value, or None when it is malformed.

    Follows the W3C rules: version "ff" is invalid, all-zero ids are invalid, a future version may carry more
    fields after the fourth, version 00 may not.
    """
    value = value.strip()
    if len(value) < 55:
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    if not (len(version) == 2 and _HEX.issuperset(version)) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if not (_is_hex(trace_id, 32) and _is_hex(span_id, 16) and _HEX.issuperset(flags)):
        return None
    return SpanContext(trace_id, span_id, int(flags, 16), tracestate.strip())


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()
